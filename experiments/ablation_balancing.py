"""Ablation: SMOTE vs. class weights vs. oversampling vs. none for one member.

Every arm is the CPU-profile member (ResNet50 from scratch, 64 px) with the same seed,
split and epochs; only ``balancing`` differs. Each arm is scored on the patient-grouped
validation split and on the official test split (threshold chosen on validation).

    python experiments/ablation_balancing.py --data ../shared/data/chest_xray --out runs/ablation \
        [--epochs 4] [--max-train-images 1500]

Writes ``figures/ablation_balancing/``: results.csv/.md, comparisons.csv (paired DeLong
and McNemar tests on the test split, each arm against ``none`` and against ``class_weight``,
Holm-adjusted), auc.png/pdf and provenance.json (command, machine, training time per arm).
Re-running with the same arguments trains nothing: members and predictions are cached in
``--out``.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd
import yaml
from statsmodels.stats.multitest import multipletests

from pneumoxai import __version__
from pneumoxai import config as cfg
from pneumoxai import pipeline
from pneumoxai.figures import OKABE_ITO, save_figure, style
from pneumoxai.metrics import choose_threshold, compare, evaluate
from pneumoxai.run_folder import RunFolder

from _provenance import machine  # experiments/, on sys.path when run as a script

METHODS = ("class_weight", "smote", "oversample", "none")
HERE = Path(__file__).resolve().parent


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/chest_xray")
    parser.add_argument("--out", default="runs/ablation")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--max-train-images", type=int, default=None,
                        help="train every arm on the same random subset of the train split (the 2-core budget)")
    parser.add_argument("--figures", default=str(HERE.parent / "figures" / "ablation_balancing"))
    args = parser.parse_args(argv)

    raw = yaml.safe_load((HERE / "configs" / "cpu64.yaml").read_text())
    raw["defaults"]["epochs_frozen"] = args.epochs
    raw["defaults"]["max_train_images"] = args.max_train_images
    raw["members"] = [{"name": f"bal_{method}", "seed": 0, "balancing": method} for method in METHODS]
    config = cfg.parse_config(raw)
    run = RunFolder(args.out)
    started = time.perf_counter()
    with run.lock():
        summary = pipeline.train_stage(run, config, args.data, verbose=2)
        P_val, val_rows = pipeline.member_predictions(run, config, "val")
        P_test, test_rows = pipeline.member_predictions(run, config, "test")
    rows = []
    thresholds, cards = {}, {}
    for method in METHODS:
        name = f"bal_{method}"
        threshold = thresholds[method] = choose_threshold(val_rows["label"], P_val[name], method="youden")
        card = cards[method] = json.loads((run.member_dir(name) / "card.json").read_text())
        for split, P, frame in (("val", P_val, val_rows), ("test", P_test, test_rows)):
            result = evaluate(frame["label"], P[name], threshold=threshold, n_boot=1000,
                              groups=frame["patient_id"].to_numpy())
            rows.append({"balancing": method, "split": split, "threshold": threshold,
                         "n_train": card["n_train"], "seconds_per_epoch": card["seconds_per_epoch"],
                         **{m: result[m] for m in ("roc_auc", "accuracy", "recall", "specificity", "f1")},
                         "roc_auc_low": result["ci"]["roc_auc"][0], "roc_auc_high": result["ci"]["roc_auc"][1]})
    table = pd.DataFrame(rows)
    # Every balancing arm against none, and the alternatives against the CPU profile's choice.
    pairs = [(a, "none") for a in METHODS if a != "none"] + [(a, "class_weight") for a in ("smote", "oversample")]
    tests = []
    for a, b in pairs:
        result = compare(test_rows["label"], P_test[f"bal_{a}"], P_test[f"bal_{b}"],
                         threshold=(thresholds[a], thresholds[b]))
        tests.append({"arm": a, "against": b, **{k: result[k] for k in (
            "auc_a", "auc_b", "auc_diff", "auc_diff_ci", "auc_p", "n_only_a_wrong", "n_only_b_wrong", "mcnemar_p")}})
    comparisons = pd.DataFrame(tests)
    comparisons["auc_diff_ci"] = comparisons["auc_diff_ci"].map(lambda ci: f"[{ci[0]:.4f}, {ci[1]:.4f}]")
    comparisons["auc_p_holm"] = multipletests(comparisons["auc_p"], method="holm")[1]
    out = Path(args.figures)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "results.csv", index=False)
    (out / "results.md").write_text(table.round(4).to_string(index=False) + "\n")
    comparisons.to_csv(out / "comparisons.csv", index=False)
    with style():
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        for offset, (split, color) in enumerate((("val", OKABE_ITO[0]), ("test", OKABE_ITO[1]))):
            part = table[table["split"] == split].reset_index(drop=True)
            x = part.index + (offset - 0.5) * 0.35
            ax.errorbar(x, part["roc_auc"], yerr=[part["roc_auc"] - part["roc_auc_low"],
                                                   part["roc_auc_high"] - part["roc_auc"]],
                        fmt="o", color=color, capsize=3, label=f"{split} split")
        ax.set_xticks(range(len(METHODS)), METHODS)
        ax.set_ylabel("ROC AUC (95% CI, patient bootstrap)")
        subset = f", {args.max_train_images} train images" if args.max_train_images else ""
        ax.set_title(f"Class balancing ablation (ResNet50 from scratch, 64 px, {args.epochs} epochs{subset})")
        ax.legend()
        save_figure(fig, out / "auc")
        plt.close(fig)
    elapsed = time.perf_counter() - started
    provenance = {
        "command": "python experiments/ablation_balancing.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "config": "experiments/configs/cpu64.yaml (then cpu.yaml) with epochs_frozen, max_train_images and members replaced",
        "pneumoxai": __version__,
        "machine": machine(),
        "seconds_this_invocation": round(elapsed, 1),
        "arms": {method: {"n_train": card["n_train"], "train_seconds": round(card["train_seconds"], 1),
                          "epochs_run": card["epochs_run"], "seconds_per_epoch": round(card["seconds_per_epoch"], 1)}
                 for method, card in cards.items()},
    }
    (out / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    print(table.round(4).to_string(index=False))
    print(comparisons.round(4).to_string(index=False))
    print(f"ablation finished in {elapsed:.0f} s; training summary:\n{summary}")


if __name__ == "__main__":
    main()
