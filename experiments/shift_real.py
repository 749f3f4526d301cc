"""Has the data moved between the validation and the official test split of a real run, and what does referral buy?

    python experiments/shift_real.py --run /work/runs/cpu128 --work /work/runs/cpu128_shift

Copies the run folder ``--run`` to ``--work`` (the source is never written), runs the shift
stage there (:func:`pneumoxai.pipeline.shift.shift_stage`: output shift, domain classifier on
image features, where the data moved, prior shift by BBSE and EM with the threshold they
suggest, risk-coverage, AURC/AUGRC, the referral table and the guaranteed referral rule), and
copies its tables and figures to ``figures/shift_real/`` with ``summary.md`` (the numbers
the README quotes) and ``provenance.json`` (command, git commit, CPU model and flags, load
average, seconds, and the SHA-256 of the predictions the analysis read).
"""

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from pneumoxai import __version__, files
from pneumoxai.pipeline.shift import REFERRAL_DELTA, REFERRAL_TARGET, shift_stage
from pneumoxai.run_folder import (DATASET_TABLE, ENSEMBLE_RECORD, REFERRAL_CURVE_TABLE, REFERRAL_RULE_TABLE,
                                  REFERRAL_SUMMARY_TABLE, REFERRAL_TABLE, RunFolder, predictions_table, shift_table)

from _provenance import cpu, machine, write_atomic  # noqa: E402 (experiments/, on sys.path as a script)

HERE = Path(__file__).resolve().parent
OUTPUTS = (shift_table("summary"), shift_table("output"), shift_table("features"), REFERRAL_SUMMARY_TABLE,
           REFERRAL_TABLE, REFERRAL_RULE_TABLE, REFERRAL_CURVE_TABLE)
# The embeddings' domain classifier is this script's own analysis, not a stage table.
EMBEDDINGS_TABLE = "shift_embeddings.csv"
FIGURES = ("shift_features", "referral_curve")


def _git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _predict_finished_snapshots(run):
    """For a run still training: predictions of its finished snapshot members on val and test, written as the
    evaluate stage writes them (soft-voting mean, thresholds by the config's rule on validation).

    Returns the members used, or None when the run already has its predictions.
    """
    from pneumoxai import models
    from pneumoxai.config import parse_config
    from pneumoxai.metrics import choose_threshold
    from pneumoxai.predict import predict_members

    record = run.read_json(run.table(ENSEMBLE_RECORD))
    if run.table(predictions_table("test")).is_file() and record is not None and not record.get("partial"):
        return None
    config = parse_config(run.read_json(run.config_file, required="the run has no config"))
    dirs = sorted(d for d in run.path("members").glob("*/*_snap*") if models.is_member_dir(d))
    if not dirs:
        raise SystemExit(f"{run.root} has neither predictions nor a finished snapshot member yet.")
    table = run.read_table(DATASET_TABLE)
    method = config["evaluate"]["threshold"]
    thresholds, frames = {}, {}
    for role in ("val", "test"):
        rows = table[table["role"] == role].reset_index(drop=True)
        P = predict_members(dirs, rows, batch_size=config["evaluate"]["batch_size"], tta=config["evaluate"]["tta"],
                            cache_dir=run.cache("predictions"), interpolation=config["data"]["interpolation"])
        frame = rows[["path", "label", "patient_id", "subtype"]].copy()
        for j, directory in enumerate(dirs):
            frame[f"p[{directory.name}]"] = P[:, j]
        frame["p[soft voting]"] = P.mean(axis=1)
        frames[role] = frame
    for column in [c for c in frames["val"].columns if c.startswith("p[")]:
        thresholds[column[2:-1]] = (float(method) if not isinstance(method, str) else
                                    float(choose_threshold(frames["val"]["label"], frames["val"][column], method=method)))
    for role, frame in frames.items():
        files.write_csv(run.table(f"predictions_{role}.csv"), frame, index=False)
    files.write_json(run.table(ENSEMBLE_RECORD), {"primary": "soft voting", "members": [d.name for d in dirs],
                                                "thresholds": thresholds, "partial": True})
    return [d.name for d in dirs]


def _embedding_shift(run):
    """The domain classifier on the members' penultimate-layer embeddings (TensorFlow; cached in the run)."""
    from pneumoxai.config import analysis_members, parse_config
    from pneumoxai.predict import predict_embeddings
    from pneumoxai.shift import domain_classifier

    config = parse_config(run.read_json(run.config_file, required="the run has no config"))
    dirs = [run.analysis_member_dir(member) for member in analysis_members(config)]
    sets = [run.read_table(f"predictions_{role}.csv") for role in ("val", "test")]
    embeddings = [predict_embeddings(dirs, frame[["path", "label"]], layer=config["slices"]["embedding_layer"],
                                     cache_dir=run.cache("embeddings"), interpolation=config["data"]["interpolation"])
                  for frame in sets]
    result = domain_classifier(*embeddings, groups_ref=sets[0]["patient_id"].astype(str),
                               groups_target=sets[1]["patient_id"].astype(str), n_permutations=100, random_state=0)
    row = pd.DataFrame([{"analysis": f"domain classifier (embeddings, {embeddings[0].shape[1]} dims of "
                                     f"{len(dirs)} members)", "value": result["auc"], "p_value": result["p_value"]}])
    files.write_csv(run.table(EMBEDDINGS_TABLE), row, index=False)
    return row


def _summary_markdown(out, source):
    summary = pd.read_csv(out / shift_table("summary")).set_index("analysis")
    table = pd.read_csv(out / REFERRAL_TABLE)
    rules = pd.read_csv(out / REFERRAL_RULE_TABLE)
    curves = pd.read_csv(out / REFERRAL_SUMMARY_TABLE)
    moved = pd.read_csv(out / shift_table("features"), keep_default_na=False)
    lines = [f"# Shift and referral on {source}", "", "## Has the data moved (validation -> official test)?", ""]
    lines += [f"- {name}: {row['text']}" for name, row in summary.iterrows()]
    if (out / EMBEDDINGS_TABLE).is_file():
        lines += [f"- {row['analysis']}: ROC AUC {row['value']:.3f}, permutation p = {row['p_value']:.2g}"
                  for _, row in pd.read_csv(out / EMBEDDINGS_TABLE).iterrows()]
    findings = moved[moved["finding"].astype(str) == "True"]
    lines += ["", f"{len(findings)} of {len(moved)} feature distributions / quartile slices / subtypes differ at "
                  "q < 0.05 (Benjamini-Hochberg). Largest:", "",
              "| feature | slice / level | val | test | effect | q |", "|---|---|---|---|---|---|"]
    for _, row in findings.head(12).iterrows():
        lines.append(f"| {row['feature']} | {row['level']} | {float(row['ref']):.3f} | {float(row['target']):.3f} | "
                     f"{float(row['effect']):+.3f} | {float(row['q_value']):.2g} |")
    lines += ["", "## Referral on the test split", "",
              "| confidence | referred | kept | accuracy | sensitivity | specificity |", "|---|---|---|---|---|---|"]
    for _, row in table.iterrows():
        lines.append(f"| {row['confidence']} | {row['referred']:.0%} | {row['n_kept']} | {row['accuracy']:.3f} | "
                     f"{row['sensitivity']:.3f} | {row['specificity']:.3f} |")
    lines += ["", "| confidence | split | AURC | AUGRC | error rate |", "|---|---|---|---|---|"]
    for _, row in curves.iterrows():
        lines.append(f"| {row['confidence']} | {row['role']} | {row['aurc']:.4f} | {row['augrc']:.4f} | "
                     f"{row['error_rate']:.3f} |")
    lines += ["", f"Guaranteed rule (sensitivity on kept >= {REFERRAL_TARGET} with {1 - REFERRAL_DELTA:.0%} "
                  "confidence, chosen on validation):", ""]
    lines += [f"- {row['confidence']}: {row['statement']}" for _, row in rules.iterrows()]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="the run folder to analyse (read only)")
    parser.add_argument("--work", required=True, help="where the copy is made and the stage writes")
    parser.add_argument("--out", default=str(HERE.parent / "figures" / "shift_real"))
    parser.add_argument("--embeddings", action="store_true",
                        help="also a domain classifier on the members' embeddings (loads the models)")
    args = parser.parse_args(argv)
    source, work, out = Path(args.run), Path(args.work), Path(args.out)
    started = time.perf_counter()
    # Files already in --work that the source lacks (e.g. cached image features) are kept.
    shutil.copytree(source, work, symlinks=True, dirs_exist_ok=True)
    run = RunFolder(work)
    with run.lock():
        partial = _predict_finished_snapshots(run)
        shift_stage(run)
        if args.embeddings:
            _embedding_shift(run)
    out.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS + ((EMBEDDINGS_TABLE,) if args.embeddings else ()):
        shutil.copyfile(run.table(name), out / name)
    for stem in FIGURES:
        shutil.copyfile(run.figure(stem), out / f"{stem}.png")
    note = ("" if partial is None else
            f"\n**Partial run**: the source had not reached its evaluate stage; these are the finished snapshot "
            f"member(s) {partial} only, predicted here, with their soft-voting mean as the ensemble.\n")
    write_atomic(out / "summary.md", _summary_markdown(out, source) + note)
    predictions = {name: hashlib.sha256(run.table(name).read_bytes()).hexdigest() for name in (predictions_table("val"), predictions_table("test"))}
    write_atomic(out / "provenance.json", json.dumps({
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "git_commit": _git_commit(), "pneumoxai": __version__, "source_run": str(source.resolve()),
        "predictions_sha256": predictions, "ensemble": json.loads(run.table(ENSEMBLE_RECORD).read_text()),
        "partial_members": partial, "seconds": round(time.perf_counter() - started, 1), "machine": machine(),
        "cpu": cpu(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=2) + "\n")
    print((out / "summary.md").read_text())


if __name__ == "__main__":
    main()
