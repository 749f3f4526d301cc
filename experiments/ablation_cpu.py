"""Ablation of the CPU profile's levers: ResNet50 members from scratch at 128 px on 2 cores.

    python experiments/ablation_cpu.py --data ../shared/data/chest_xray --out runs/ablation_cpu \
        [--arms base128 noflip ...] [--max-train-images 1600] [--epochs 4]

Every arm is one member (ResNet50, weights=None, the 64 px profile's recipe from cpu64.yaml,
at 128 px) with one lever changed. Arms train on a random subset (``--max-train-images``, the same subset for
every arm) or all of the patient-grouped training split (``data.split_by_patient``,
val_fraction 0.2, seed 0) and are scored on that validation split and on the official
624-image test split: ROC AUC with patient-bootstrap 95% intervals, and accuracy,
specificity and recall at the Youden threshold chosen on validation, at 0.5, and at the
threshold of best expected accuracy at a deployment prevalence given by
``--deployment-prevalence`` (metrics.prevalence_threshold). Snapshot arms
(``snapshots > 1``) also score every snapshot member, their soft-voting mean, the DeLong
test of the ensemble against its best member, and the members' diversity; ``--ensemble`` scores the
same for finished arms taken as independent members (e.g. ``noflip noflip+seed1 noflip+seed2``).

Writes ``figures/ablation_cpu/``: results.csv/.md (one row per arm, split and model),
diversity.csv and provenance.json (command, CPU model and flags, load average, seconds
per epoch and per arm), each atomically. Finished arms are kept in ``--out`` and skipped
when the script is run again; an arm killed mid-training resumes from its last epoch.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from pneumoxai import __version__, data, ensemble, metrics, models  # noqa: E402
from pneumoxai.config import parse_config  # noqa: E402

from _provenance import cpu, machine, write_atomic  # noqa: E402 (experiments/, on sys.path as a script)

HERE = Path(__file__).resolve().parent
# arm -> (lever, member options changed from the base recipe)
ARMS = {
    "base128": ("cpu.yaml recipe at 128 px (plateau LR, flips)", {}),
    "noflip": ("no horizontal flips", {"augment": {"rotation": 0.03, "flip": False, "contrast": 0.1}}),
    "standardize": ("per-image contrast standardisation in the model", {"input_norm": "standardize"}),
    "crop": ("random-resized crops (zoom in up to 15%)", {"random_crop": 0.15}),
    "cosine_ls_wd": ("one cosine cycle, label smoothing 0.1, AdamW 1e-4",
                     {"schedule": "cosine", "label_smoothing": 0.1, "weight_decay": 1e-4}),
    "onecycle": ("one-cycle LR", {"schedule": "onecycle"}),
    "progressive": ("progressive sizes 96 -> 128", {"progressive_sizes": [96, 128]}),
    "fixres": ("train at 96 then 112 px, predict at 128 px (FixRes)", {"progressive_sizes": [96, 112]}),
    "fp32": ("float32 instead of native bfloat16", {"precision": "float32"}),
    # Independent members: the same recipe from another initialisation, augmentation and batch order.
    "seed1": ("seed 1", {"seed": 1}),
    "seed2": ("seed 2", {"seed": 2}),
}


def base_member(size, epochs, batch_size):
    raw = yaml.safe_load((HERE / "configs" / "cpu64.yaml").read_text())
    member = dict(raw["defaults"], name="arm", image_size=size, epochs_frozen=epochs, epochs_finetune=0,
                  precision="auto", batch_size=batch_size)
    return member


def parse_arm(spec):
    """``name`` from ARMS, or ``name+name`` to combine levers, optionally ``:snapN`` for N cosine snapshots."""
    name, _, snap = spec.partition(":snap")
    options, levers = {}, []
    for part in name.split("+"):
        if part not in ARMS:
            raise SystemExit(f"unknown arm {part!r}; arms: {sorted(ARMS)}")
        levers.append(ARMS[part][0])
        options.update(ARMS[part][1])
    if snap:
        options.update({"schedule": "cosine", "snapshots": int(snap)})
        levers.append(f"{snap} cosine snapshots")
    return "; ".join(levers), options


def load_split(frame, size, cache):
    """Images of ``frame`` at ``size`` px, cached as .npy in the output folder (decoding is slow)."""
    path = cache / f"{manifest(frame)}_{size}.npy"
    if path.is_file():
        return np.load(path)
    images = data.load_images(frame, size=size)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npy")
    np.save(tmp, images)
    os.replace(tmp, path)
    return images


def manifest(frame):
    return data.manifest_hash(frame, content=False)[:12]


def score(y, p, groups, threshold, n_boot):
    result = metrics.evaluate(y, p, threshold=threshold, n_boot=n_boot, groups=groups)
    return {"threshold": threshold, "roc_auc": result["roc_auc"],
            "roc_auc_low": result["ci"]["roc_auc"][0] if n_boot else np.nan,
            "roc_auc_high": result["ci"]["roc_auc"][1] if n_boot else np.nan,
            **{m: result[m] for m in ("accuracy", "specificity", "recall", "balanced_accuracy")}}


def rows_for(arm, lever, scope, model_name, P, frames, deployment_prevalence, n_boot):
    """Rows of one model: each split x each threshold rule (Youden on val, 0.5, deployment prevalence)."""
    y_val, p_val = frames["val"]["label"].to_numpy(), P["val"]
    rules = {"youden_val": metrics.choose_threshold(y_val, p_val, method="youden"), "0.5": 0.5,
             f"prevalence_{deployment_prevalence}": metrics.prevalence_threshold(y_val, p_val,
                                                                                 deployment_prevalence)}
    rows = []
    for split in ("val", "test"):
        frame = frames[split]
        for rule, threshold in rules.items():
            rows.append({"arm": arm, "lever": lever, "scope": scope, "model": model_name, "split": split,
                         "rule": rule, **score(frame["label"].to_numpy(), P[split], frame["patient_id"].to_numpy(),
                                               threshold, n_boot if rule == "youden_val" else 0)})
    return rows


def run_arm(arm, args, frames, images, out):
    lever, options = parse_arm(arm)
    scope = f"subset {args.max_train_images}" if args.max_train_images else "full"
    key = f"{arm}__{args.max_train_images or 'full'}__{args.epochs}ep"
    done = out / "arms" / f"{key}.json"
    if done.is_file():
        print(f"[{time.strftime('%H:%M:%S')}] {key}: finished before, skipped", flush=True)
        return json.loads(done.read_text())
    member = parse_config({"members": [dict(base_member(args.size, args.epochs, args.batch_size), **options)]})
    member = dict(member["members"][0], name=arm.replace("+", "_").replace(":", "_"))
    x, y = images["train"], frames["train"]["label"].to_numpy()
    x, y, class_weight = data.balance(x, y, member["balancing"], seed=member["seed"])
    print(f"[{time.strftime('%H:%M:%S')}] {key}: training on {len(x)} images ({lever}); "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    model = models.build_member(args.size, weights=None, seed=member["seed"], dense_units=tuple(member["dense_units"]),
                                dropout=member["dropout"], l2=member["l2"], bn_momentum=member["bn_momentum"],
                                precision=member["precision"], input_norm=member["input_norm"], name=member["name"])
    load_before = os.getloadavg()
    started = time.perf_counter()
    info = models.train_member(model, x, y, images["val"], frames["val"]["label"].to_numpy(), member,
                               class_weight=class_weight, verbose=2, snapshot_dir=out / "train" / key)
    train_seconds = time.perf_counter() - started
    # With snapshots the trained member is the last snapshot: score the snapshots only.
    members = {} if info["snapshots"] else {member["name"]: model}
    for path in info["snapshots"]:
        members[Path(path).name] = models.load_member(path)[0]
    P = {name: {split: models.predict_proba(m, images[split]) for split in ("val", "test")}
         for name, m in members.items()}
    rows = []
    for name in members:
        rows += rows_for(arm, lever, scope, name, P[name], frames, args.deployment_prevalence, args.n_boot)
    record = {"arm": arm, "key": key, "lever": lever, "scope": scope, "n_train": int(len(x)),
              "epochs_run": info["epochs_run"], "seconds_per_epoch": info["seconds_per_epoch"],
              "train_seconds": train_seconds, "precision": info["precision"], "loadavg_before": load_before,
              "loadavg_after": os.getloadavg(), "rows": rows}
    snapshots = [Path(p).name for p in info["snapshots"]]
    if len(snapshots) >= 2:
        vote_rows, vote = soft_vote(arm, lever, scope, "soft_voting(snapshots)", P, snapshots, frames, args)
        rows += vote_rows
        record.update(vote)
    np.savez(out / "arms" / f"{key}_predictions.npz",
             **{f"{name}__{split}": P[name][split] for name in P for split in P[name]})
    write_atomic(done, json.dumps(record, indent=2, default=float) + "\n")
    print(f"[{time.strftime('%H:%M:%S')}] {key}: done in {train_seconds:.0f} s "
          f"({info['seconds_per_epoch']:.0f} s/epoch)", flush=True)
    return record


def independent_ensemble(arms, records, frames, out, args):
    """Soft vote of finished arms trained as independent members (e.g. seeds): rows, DeLong p, diversity."""
    by_arm = {r["arm"]: r for r in records if r["scope"] == (f"subset {args.max_train_images}"
                                                             if args.max_train_images else "full")}
    missing = [arm for arm in arms if arm not in by_arm]
    if missing:
        raise SystemExit(f"--ensemble: arm(s) {missing} not finished in {out} at this scope")
    names = [arm.replace("+", "_").replace(":", "_") for arm in arms]
    P = {}
    for arm, name in zip(arms, names):
        saved = np.load(out / "arms" / f"{by_arm[arm]['key']}_predictions.npz")
        P[name] = {split: saved[f"{name}__{split}"] for split in ("val", "test")}
    label = "ensemble(" + ", ".join(arms) + ")"
    members = [by_arm[arm] for arm in arms]
    scope = members[0]["scope"]
    rows, vote = soft_vote(label, f"soft voting of {len(arms)} independent members", scope,
                           "soft_voting(independent)", P, names, frames, args)
    return {"arm": label, "key": "ensemble__" + "__".join(names), "lever": rows[0]["lever"], "scope": scope,
            "n_train": members[0]["n_train"], "epochs_run": sum(m["epochs_run"] for m in members),
            "seconds_per_epoch": float(np.mean([m["seconds_per_epoch"] for m in members])),
            "train_seconds": sum(m["train_seconds"] for m in members), "precision": members[0]["precision"],
            "loadavg_before": None, "loadavg_after": None, "rows": rows, **vote}


def soft_vote(arm, lever, scope, model_name, P, names, frames, args):
    """Rows of the soft vote of models ``names`` of ``P``, and its DeLong test against the member with the best
    validation AUC and the members' diversity on test (``ensemble_vs_best_member``, ``diversity``)."""
    P_ens = {split: np.mean([P[n][split] for n in names], axis=0) for split in ("val", "test")}
    rows = rows_for(arm, lever, scope, model_name, P_ens, frames, args.deployment_prevalence, args.n_boot)
    y_val, y_test = frames["val"]["label"].to_numpy(), frames["test"]["label"].to_numpy()
    best = max(names, key=lambda n: metrics.evaluate(y_val, P[n]["val"], n_boot=0)["roc_auc"])
    versus = metrics.compare(y_test, P_ens["test"], P[best]["test"])
    div = ensemble.diversity(np.column_stack([P[n]["test"] for n in names]), y_test)
    div.insert(0, "arm", arm)
    return rows, {"ensemble_vs_best_member": {"best_member_by_val_auc": best, "auc_ensemble": versus["auc_a"],
                                              "auc_best": versus["auc_b"], "delong_p": versus["auc_p"]},
                  "diversity": div.to_dict(orient="records")}


def write_tables(records, figures, command):
    figures.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame([row | {"n_train": r["n_train"], "seconds_per_epoch": r["seconds_per_epoch"],
                                 "precision": r["precision"]} for r in records for row in r["rows"]])
    write_atomic(figures / "results.csv", table.to_csv(index=False))
    summary = summarise(table)
    write_atomic(figures / "results.md", markdown(summary))
    diversity = [row for r in records for row in r.get("diversity", [])]
    if diversity:
        write_atomic(figures / "diversity.csv", pd.DataFrame(diversity).to_csv(index=False))
    write_atomic(figures / "provenance.json", json.dumps({
        "command": command, "pneumoxai": __version__, "machine": machine(), "cpu": cpu(),
        "arms": {r["key"]: {k: r[k] for k in ("lever", "scope", "n_train", "epochs_run", "seconds_per_epoch",
                                              "train_seconds", "precision", "loadavg_before", "loadavg_after")}
                 | ({"ensemble_vs_best_member": r["ensemble_vs_best_member"]}
                    if "ensemble_vs_best_member" in r else {})
                 for r in records}}, indent=2, default=float) + "\n")
    return summary


def markdown(frame):
    """A pipe table (pandas' to_markdown needs the optional tabulate package)."""
    cells = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in frame.itertuples(index=False)]
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells]) + "\n"


def summarise(table):
    """One line per arm and model: val AUC, test AUC [CI], test metrics at the val-chosen threshold and at 0.5."""
    lines = []
    for (arm, model), part in table.groupby(["arm", "model"], sort=False):
        val = part[(part.split == "val") & (part.rule == "youden_val")].iloc[0]
        test = part[(part.split == "test") & (part.rule == "youden_val")].iloc[0]
        half = part[(part.split == "test") & (part.rule == "0.5")].iloc[0]
        prev = part[(part.split == "test") & part.rule.str.startswith("prevalence")].iloc[0]
        lines.append({"arm": arm, "model": model, "lever": val["lever"], "scope": val["scope"],
                      "val_auc": val["roc_auc"], "test_auc": test["roc_auc"],
                      "test_auc_ci": f"[{test['roc_auc_low']:.3f}, {test['roc_auc_high']:.3f}]",
                      "acc": test["accuracy"], "spec": test["specificity"], "rec": test["recall"],
                      "acc@0.5": half["accuracy"], "spec@0.5": half["specificity"],
                      "acc@prev": prev["accuracy"], "spec@prev": prev["specificity"],
                      "s_per_epoch": val["seconds_per_epoch"]})
    return pd.DataFrame(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/chest_xray")
    parser.add_argument("--out", default="runs/ablation_cpu")
    parser.add_argument("--figures", default=str(HERE.parent / "figures" / "ablation_cpu"))
    parser.add_argument("--arms", nargs="+", default=["base128", "noflip", "standardize", "cosine_ls_wd"],
                        help=f"arms from {sorted(ARMS)}; 'a+b' combines levers, ':snapN' adds N cosine snapshots")
    parser.add_argument("--max-train-images", type=int, default=1600,
                        help="random subset of the train split, the same for every arm (0: the whole split)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--deployment-prevalence", type=float, default=0.625,
                        help="assumed share of pneumonia where the model is used (the test split's 390/624, "
                             "a documented assumption, not fitted on test predictions)")
    parser.add_argument("--confirm", type=int, default=0, metavar="N",
                        help="after the screen, train the arm with the best VALIDATION AUC on the whole train split "
                             "as an N-snapshot cosine ensemble (0: no confirmation)")
    parser.add_argument("--confirm-epochs", type=int, default=6)
    parser.add_argument("--ensemble", nargs="+", default=[], metavar="ARM",
                        help="after the screen, score the soft vote of these finished arms as independent members "
                             "(e.g. noflip noflip+seed1 noflip+seed2): diversity and DeLong p against the best "
                             "member by validation AUC")
    args = parser.parse_args(argv)
    args.max_train_images = args.max_train_images or None
    command = "python experiments/ablation_cpu.py " + " ".join(sys.argv[1:] if argv is None else argv)
    out = Path(args.out)
    (out / "arms").mkdir(parents=True, exist_ok=True)
    frame = data.scan_dataset(data.find_data_root(args.data))
    train, val = data.split_by_patient(frame[frame["split"] == "train"], val_fraction=0.2, seed=0)
    frames = {"train": train, "val": val, "test": frame[frame["split"] == "test"]}
    if args.max_train_images and args.max_train_images < len(train):
        frames["train"] = train.sample(n=args.max_train_images, random_state=0)
    images = {split: load_split(f, args.size, out) for split, f in frames.items()}
    records = [json.loads(p.read_text()) for p in sorted((out / "arms").glob("*.json"))]
    screened = []
    for arm in args.arms:
        record = run_arm(arm, args, frames, images, out)
        screened.append(record)
        records = [r for r in records if r["key"] != record["key"]] + [record]
        summary = write_tables(records, Path(args.figures), command)
    if args.ensemble:
        record = independent_ensemble(args.ensemble, records, frames, out, args)
        records = [r for r in records if r["key"] != record["key"]] + [record]
        summary = write_tables(records, Path(args.figures), command)
    if args.confirm:
        # Chosen on validation AUC only; the test split plays no part in the choice.
        val_auc = {r["arm"]: next(row["roc_auc"] for row in r["rows"] if row["split"] == "val"
                                  and row["model"] == r["arm"].replace("+", "_").replace(":", "_")) for r in screened}
        best = max(val_auc, key=val_auc.get)
        print(f"[{time.strftime('%H:%M:%S')}] confirming {best} (val AUC {val_auc[best]:.4f}) on the full split", flush=True)
        args.max_train_images, args.epochs = None, args.confirm_epochs
        frames["train"] = train
        images["train"] = load_split(train, args.size, out)
        record = run_arm(f"{best}:snap{args.confirm}", args, frames, images, out)
        records = [r for r in records if r["key"] != record["key"]] + [record]
        summary = write_tables(records, Path(args.figures), command)
    print(summary.round(3).to_string(index=False))


if __name__ == "__main__":
    main()
