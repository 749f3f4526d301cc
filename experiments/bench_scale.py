"""Peak memory and throughput of analyse's per-image work at 5, 20 and 50 thousand images, against raw model.predict.

    nice -n 10 python experiments/bench_scale.py [--model tiny resnet50] [--n 5000 20000 50000]
        [--modes analyse raw predict] [--data DIR]

The image sets are built from the real images (``/work/shared/data/chest_xray``, 224 px
JPEGs) as symbolic links under new names in a temporary folder (no new data, nothing
written into the data folder), repeating the 5,840 files to reach N. Each point runs in a
fresh subprocess, which reports its own peak RSS (``resource.getrusage(RUSAGE_SELF)``), so
no point inherits another's memory:

- ``analyse``: the evaluate and slices stages' per-image work as the pipeline runs it:
  ``predict_members`` on the table (streamed in chunks, decoding included), the slices
  stage's image columns (:func:`pneumoxai.pipeline.failure_slices.image_columns`: lung
  masks, image and per-place features, decoded again at 224 px in chunks) and
  ``metrics.evaluate`` of the probabilities (bootstrap intervals).
- ``raw``: a plain loop that decodes 256 files with ``cv2`` (grey, replicated to three
  channels, divided by 255) and calls ``model.predict(batch, batch_size=64)``.
- ``predict``: ``predict_members`` alone, the evaluate stage's per-image work (a point
  that takes minutes where ``analyse``, with its lung masks, takes an hour on 2 shared cores).

Two models: ``tiny``, an adapted Keras model (pooling, one convolution, a dense unit) so
that the images dominate memory, as in the issue's measurement; ``resnet50``, one 224 px
member from ``models.build_member(224, weights=None)``.

Each point is written to ``figures/scale/scale.json`` as soon as it is measured (with the
CPU model, its flags and the load average before and after), so a run stopped early keeps
the points it finished; ``--figure`` draws ``figures/scale/scale.png`` from the JSON.
"""

import argparse
import fcntl
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _provenance import cpu, machine, write_atomic  # noqa: E402 (experiments/, on sys.path when run as a script)
from bench_stream import tiny_model  # noqa: E402 (the issue's measurement model: images dominate memory)

MODELS = ("tiny", "resnet50")
MODES = ("analyse", "raw", "predict")
SIZE = 224
BATCH = 64
CHUNK = 256
OUT = HERE.parent / "figures" / "scale" / "scale.json"


def build_model(kind):
    from pneumoxai import models

    return models.build_member(SIZE, weights=None) if kind == "resnet50" else tiny_model()


def linked_table(data_root, n, folder):
    """N rows of links ``folder/img_000000.jpeg``... to the real images (repeated), with their labels and hashes."""
    import pandas as pd

    # Shuffled once (fixed seed) so that every N holds both classes: the manifest lists them in blocks.
    manifest = pd.read_csv(Path(data_root) / "MANIFEST.csv").sample(frac=1.0, random_state=0)
    rows = manifest.iloc[[i % len(manifest) for i in range(n)]].reset_index(drop=True)
    paths = []
    for i, relative in enumerate(rows["path"]):
        link = Path(folder) / f"img_{i:06d}{Path(relative).suffix}"
        link.symlink_to(Path(data_root) / relative)
        paths.append(str(link))
    return pd.DataFrame({"path": paths, "label": (rows["class"] == "PNEUMONIA").astype(int),
                         "sha256": rows["sha256"]})


def raw_predict(model, paths):
    """The baseline: decode CHUNK files with cv2, then model.predict, until every file is done."""
    import cv2
    import numpy as np

    out = []
    for start in range(0, len(paths), CHUNK):
        batch = np.empty((len(paths[start:start + CHUNK]), SIZE, SIZE, 3), np.float32)
        for i, path in enumerate(paths[start:start + CHUNK]):
            image = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
            if image.shape != (SIZE, SIZE):
                image = cv2.resize(image, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
            batch[i] = (image.astype(np.float32) / np.float32(255.0))[:, :, None]
        out.append(model.predict(batch, batch_size=BATCH, verbose=0).reshape(-1))
    return np.concatenate(out)


def child(kind, mode, n, data_root):
    """One point, in this (fresh) process: returns the JSON record."""
    import warnings

    from pneumoxai.errors import ConstantPredictionsWarning
    from pneumoxai.metrics import evaluate
    from pneumoxai.pipeline.failure_slices import image_columns
    from pneumoxai.predict import predict_members

    warnings.simplefilter("ignore", ConstantPredictionsWarning)  # an untrained model: near-constant outputs
    warnings.simplefilter("ignore", UserWarning)  # lung-segmentation fallbacks on repeated images
    model = build_model(kind)
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as folder:
        table = linked_table(data_root, n, folder)
        load_before = os.getloadavg()
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        seconds = {}
        started = time.perf_counter()
        if mode == "predict":
            predict_members([model], table, batch_size=BATCH, chunk_size=CHUNK, progress=False)
            seconds["predict"] = time.perf_counter() - started
        elif mode == "analyse":
            p = predict_members([model], table, batch_size=BATCH, chunk_size=CHUNK, progress=False)[:, 0]
            seconds["predict"] = time.perf_counter() - started
            image_columns(table["path"].tolist(), chunk_size=CHUNK)
            seconds["slice_features"] = time.perf_counter() - started - seconds["predict"]
            evaluate(table["label"].to_numpy(), p, n_boot=1000)
            seconds["evaluate"] = time.perf_counter() - started - seconds["predict"] - seconds["slice_features"]
        else:
            raw_predict(model, table["path"].tolist())
            seconds["predict"] = time.perf_counter() - started
        total = time.perf_counter() - started
    return {"model": kind, "mode": mode, "n_images": n, "run": True,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_before_images_mb": rss_before, "seconds": total, "seconds_by_step": seconds,
            "images_per_s": n / total, "predict_images_per_s": n / seconds["predict"],
            "loadavg_before": list(load_before), "loadavg_after": list(os.getloadavg()), "cpu": cpu(),
            "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()}


def _read(out):
    return json.loads(Path(out).read_text()) if Path(out).exists() else {"runs": []}


def _write(out, record):
    write_atomic(out, json.dumps(record, indent=2) + "\n")


def figure(out):
    """Peak RSS and images per second against N, one line per model and mode, from the JSON."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in _read(out)["runs"] if r["run"]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    labels = {"analyse": "analyse (predict + slice features + evaluate)", "raw": "raw predict",
              "predict": "predict_members alone"}
    for kind in MODELS:
        for mode, style in zip(MODES, ("-o", "--s", ":^")):
            points = sorted((r["n_images"], r) for r in runs if r["model"] == kind and r["mode"] == mode)
            if not points:
                continue
            ns = [n / 1000 for n, _ in points]
            label = f"{kind}, {labels[mode]}"
            left.plot(ns, [r["peak_rss_mb"] / 1024 for _, r in points], style, label=label)
            right.plot(ns, [r["images_per_s"] for _, r in points], style, label=label)
    left.set(xlabel="thousand images (224 px)", ylabel="peak RSS (GB)", title="Peak memory", ylim=(0, None))
    right.set(xlabel="thousand images (224 px)", ylabel="images per second", title="Throughput", yscale="log")
    left.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(Path(out).with_suffix(".png"), dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--n", type=int, nargs="+", default=[5000, 20000, 50000])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=["analyse", "raw"])
    parser.add_argument("--data", default="/work/shared/data/chest_xray")
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--figure", action="store_true", help="only draw the figure from the JSON")
    parser.add_argument("--not-run", metavar="REASON",
                        help="record the points of --model, --n and --modes as not run, for REASON; measure nothing")
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "MODE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], int(args.child[2]), args.data)))
        return
    if args.figure:
        figure(args.out)
        return
    for kind in args.model:
        for n in args.n:
            for mode in args.modes:
                if args.not_run:
                    _keep(args.out, {"model": kind, "mode": mode, "n_images": n, "run": False, "reason": args.not_run})
                    continue
                output = subprocess.run([sys.executable, __file__, "--child", kind, mode, str(n), "--data", args.data],
                                        check=True, capture_output=True, text=True).stdout
                record = json.loads(output.strip().splitlines()[-1])
                _keep(args.out, record)
                print(f"{kind:>8} {mode:>7} n={n:>5}: peak RSS {record['peak_rss_mb']:7.0f} MB, "
                      f"{record['images_per_s']:6.1f} img/s (load {record['loadavg_before'][0]:.2f})", flush=True)
    figure(args.out)


def _keep(out, record):
    """Add ``record`` to the JSON at ``out`` in place of an earlier one of the same point."""
    key = (record["model"], record["mode"], record["n_images"])
    # Locked and re-read: the points of another invocation (the other model, run beside this one) are kept.
    with open(Path(tempfile.gettempdir()) / "bench_scale.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = _read(out)
        results["runs"] = [r for r in results["runs"] if (r["model"], r["mode"], r["n_images"]) != key] + [record]
        _write(out, {**results, "machine": machine(), "size": SIZE, "batch_size": BATCH, "chunk_size": CHUNK})


if __name__ == "__main__":
    main()

