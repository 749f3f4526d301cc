"""Metric vs. number of members: soft voting vs. stacking.

Pools every member trained on the same patient-grouped split (the CPU-profile run and
the balancing-ablation run by default), orders them greedily by validation AUC gain of
soft voting, and scores soft voting and stacking (fitted on validation) on the test
split for each ensemble size. Predictions come from the runs' caches.

    python experiments/ensemble_size.py --runs runs/cpu runs/ablation

Writes ``figures/ensemble_size/`` (curve.csv, curve.png/pdf).
"""

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from pneumoxai import pipeline
from pneumoxai.config import parse_config
from pneumoxai.ensemble import SoftVoting, Stacking, ensemble_size_curve
from pneumoxai.figures import OKABE_ITO, save_figure, style
from pneumoxai.metrics import evaluate
from pneumoxai.run_folder import RunFolder

HERE = Path(__file__).resolve().parent


def pooled_predictions(run_dirs):
    """Validation and test member probabilities pooled over run folders with one split."""
    pools, manifests = {"val": [], "test": []}, set()
    rows = {}
    for run_dir in run_dirs:
        run = RunFolder(run_dir)
        manifests.add(json.loads(run.path("run.json").read_text())["manifest_hash"])
        config = parse_config(json.loads(run.path("config.json").read_text()))
        for role in pools:
            P, frame = pipeline.member_predictions(run, config, role, progress=False)
            # Runs reuse member names (r50_s0 in every CPU run); the folder tells them apart.
            pools[role].append(P.add_prefix(f"{Path(run_dir).name}/") if len(run_dirs) > 1 else P)
            rows[role] = frame
    if len(manifests) != 1:
        raise SystemExit("The runs were made on different splits; their members cannot be pooled.")
    return {role: pd.concat(parts, axis=1) for role, parts in pools.items()}, rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=["runs/cpu", "runs/ablation"])
    parser.add_argument("--figures", default=str(HERE.parent / "figures" / "ensemble_size"))
    args = parser.parse_args(argv)
    P, rows = pooled_predictions(args.runs)
    y_val, y_test = rows["val"]["label"].to_numpy(), rows["test"]["label"].to_numpy()
    order = ensemble_size_curve(P["val"], y_val, combiner="soft", metric="roc_auc")["added"].tolist()
    records = []
    for k in range(1, len(order) + 1):
        chosen = order[:k]
        soft = SoftVoting().fit(P["val"][chosen], y_val).predict_proba(P["test"][chosen])[:, 1]
        record = {"n_members": k, "added": chosen[-1],
                  "soft_voting_auc": evaluate(y_test, soft, n_boot=0)["roc_auc"]}
        if k > 1:
            stack = Stacking(features="logit", cv=5).fit(P["val"][chosen], y_val, groups=rows["val"]["patient_id"])
            p_stack = stack.predict_proba(P["test"][chosen])[:, 1]
            record["stacking_auc"] = evaluate(y_test, p_stack, n_boot=0)["roc_auc"]
        record["best_single_auc"] = max(evaluate(y_test, P["test"][name], n_boot=0)["roc_auc"] for name in chosen)
        records.append(record)
    curve = pd.DataFrame(records)
    out = Path(args.figures)
    out.mkdir(parents=True, exist_ok=True)
    curve.to_csv(out / "curve.csv", index=False)
    with style():
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.8))
        ax.plot(curve["n_members"], curve["soft_voting_auc"], "o-", color=OKABE_ITO[0], label="soft voting")
        ax.plot(curve["n_members"], curve["stacking_auc"], "s--", color=OKABE_ITO[1], label="stacking (logistic)")
        ax.plot(curve["n_members"], curve["best_single_auc"], ":", color=OKABE_ITO[7], label="best single member")
        ax.set_xlabel("members (greedy order by validation AUC)")
        ax.set_ylabel("test ROC AUC")
        ax.set_xticks(curve["n_members"])
        ax.set_title("Ensemble size, ResNet50 members from scratch (64 px)")
        ax.legend()
        save_figure(fig, out / "curve")
        plt.close(fig)
    print(curve.round(4).to_string(index=False))
    return np.asarray(curve["soft_voting_auc"])


if __name__ == "__main__":
    main()
