"""The CPU profile end to end on the real data: train, evaluate, explain, slices, report.

    python experiments/cpu_ensemble.py --data ../shared/data/chest_xray --out runs/cpu

Equivalent to ``pneumoxai run --config experiments/configs/cpu.yaml`` plus a copy of the
run's tables and figures into ``figures/cpu_ensemble/`` (committed with the repository),
with the runtime and hardware that produced them in ``figures/cpu_ensemble/provenance.json``.
"""

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from pneumoxai import __version__, pipeline
from pneumoxai.config import analysis_members, load_config
from pneumoxai.run_folder import RunFolder

from _provenance import cpu, machine  # experiments/, on sys.path when run as a script

HERE = Path(__file__).resolve().parent
TABLES = ("results.csv", "results.md", "comparisons.csv", "diversity.csv", "ensemble_size.csv", "ensemble.json",
          "failure_slices.csv", "member_failure_slices.csv", "zone_attention.csv", "explain_summary.csv",
          "layer_choice.csv", "layer_choice.json", "slice_explanations.csv")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/chest_xray")
    parser.add_argument("--out", default="runs/cpu")
    parser.add_argument("--config", default=str(HERE / "configs" / "cpu.yaml"))
    parser.add_argument("--figures", default=str(HERE.parent / "figures" / "cpu_ensemble"))
    args = parser.parse_args(argv)
    config = load_config(args.config)
    run = RunFolder(args.out)
    cpu_before = cpu()
    started = time.perf_counter()
    with run.lock():
        pipeline.run_all(run, config, args.data, verbose=2)
    elapsed = time.perf_counter() - started

    out = Path(args.figures)
    out.mkdir(parents=True, exist_ok=True)
    for name in TABLES:
        source = run.table(name)
        if source.exists():
            shutil.copy2(source, out / name)
    for png in sorted(run.path("figures").glob("*.png")):
        shutil.copy2(png, out / png.name)
    cards = {m["name"]: json.loads((run.analysis_member_dir(m) / "card.json").read_text())
             for m in analysis_members(config)}
    stages = {stage: run.read_json(run.stage_marker(stage)) for stage in ("evaluate", "explain", "slices")}
    provenance = {
        "command": f"python experiments/cpu_ensemble.py --data {args.data} --out {args.out} --figures {args.figures}",
        "config": os.path.relpath(args.config, HERE.parent),
        "pneumoxai": __version__,
        "machine": machine(),
        "cpu": cpu(),
        "cpu_before": cpu_before,
        "seconds_this_invocation": round(elapsed, 1),
        "stages": stages,
        "members": {name: {"train_seconds": round(card["train_seconds"], 1), "epochs_run": card["epochs_run"],
                           "seconds_per_epoch": round(card["seconds_per_epoch"], 1),
                           "val_metrics": card["val_metrics"], "versions": card["versions"]}
                    for name, card in cards.items()},
    }
    (out / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    print(f"copied tables and figures to {out}")


if __name__ == "__main__":
    main()
