"""Training-step throughput of a ResNet50 member at 128 px: float32 vs. mixed bfloat16.

    python experiments/bench_bf16.py [--size 128] [--batches 16 32] [--steps 5]

Each arm builds ``models.build_member(size, weights=None, bn_momentum=0.9, precision=...)``,
compiles it like ``train_member`` (Adam, binary cross-entropy), runs two warm-up steps,
then times ``--steps`` ``train_on_batch`` calls on fixed random images and reports the
median seconds per step, images per second, and the speedup of bfloat16 over float32 at
the same batch size (same process, same data). Writes ``figures/ablation_cpu/bench_bf16.csv``
and ``.json`` (with the CPU model, its bf16 flags and the load average before and after).
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

from pneumoxai import models  # noqa: E402

from _provenance import cpu, machine, write_atomic  # noqa: E402 (experiments/, on sys.path when run as a script)

HERE = Path(__file__).resolve().parent
PRECISIONS = ("float32", "mixed_bfloat16")


def step_seconds(size, batch, precision, steps):
    import keras

    model = models.build_member(size, weights=None, bn_momentum=0.9, precision=precision)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    rng = np.random.default_rng(0)
    images = rng.random((batch, size, size, 3), dtype=np.float32)
    labels = (rng.random(batch) < 0.5).astype(np.float32)
    for _ in range(2):
        model.train_on_batch(images, labels)
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        model.train_on_batch(images, labels)
        times.append(time.perf_counter() - started)
    return float(np.median(times)), float(np.min(times))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", default=str(HERE.parent / "figures" / "ablation_cpu"))
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    rows = []
    for batch in args.batches:
        for precision in PRECISIONS:
            median, best = step_seconds(args.size, batch, precision, args.steps)
            rows.append({"size": args.size, "batch": batch, "precision": precision, "s_per_step": median,
                         "s_per_step_best": best, "images_per_s": batch / median})
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    fp32 = table[table.precision == "float32"].set_index("batch")["s_per_step"]
    table["speedup_vs_float32"] = [fp32[b] / s for b, s in zip(table["batch"], table["s_per_step"])]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "bench_bf16.csv", table.to_csv(index=False))
    write_atomic(out / "bench_bf16.json", json.dumps({
        "command": "python experiments/bench_bf16.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(), "cpu": cpu(), "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "rows": table.to_dict(orient="records")}, indent=2) + "\n")
    print(table.round(3).to_string(index=False))


if __name__ == "__main__":
    main()
