"""Peak memory and throughput of predict_members on a table of real images: streamed in chunks vs whole-array.

    nice -n 10 python experiments/bench_stream.py [--n 500 2000 5000] [--chunk-size 256] [--data DIR]

Tables of N rows are built from the real images (``/work/shared/data/chest_xray``, 224 px
JPEGs), repeating the paths to reach N: no copies. A tiny adapted Keras model at 224 px
(pooling, one convolution, a dense unit: ``models.adapt``) keeps the model's own memory
small, so the images dominate. Each setting runs in a fresh subprocess, which reports its
peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) and the wall time of the call,
decoding included:

- ``streamed``: ``predict_members([model], table, chunk_size=...)``, the pipeline's route;
- ``whole``: ``predict_members([model], load_images(table, 224))``, the route before streaming
  (every image decoded into one float32 array first);
- ``raw``: ``model.predict(load_images(paths, 224), batch_size=64)``, the baseline.

Writes ``figures/scale/stream.json`` with the CPU model, its flags and the load average
before and after every timing (the cores are shared).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _provenance import cpu, machine, write_atomic  # noqa: E402 (experiments/, on sys.path when run as a script)

MODES = ("streamed", "whole", "raw")
SIZE = 224
BATCH = 64


def tiny_model():
    import keras

    from pneumoxai import models

    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.AveragePooling2D(8)(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu", kernel_initializer=keras.initializers.GlorotUniform(0))(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", kernel_initializer=keras.initializers.GlorotUniform(1))(x)
    return models.adapt(keras.Model(inputs, outputs))


def table_of(data_root, n):
    """N rows of the real images' paths (repeated), with the manifest's hashes so no file is hashed again."""
    import pandas as pd

    manifest = pd.read_csv(Path(data_root) / "MANIFEST.csv")
    rows = manifest.iloc[[i % len(manifest) for i in range(n)]].reset_index(drop=True)
    return pd.DataFrame({"path": [str(Path(data_root) / p) for p in rows["path"]],
                         "label": (rows["class"] == "PNEUMONIA").astype(int), "sha256": rows["sha256"]})


def child(mode, n, data_root, chunk_size):
    """One setting, in this (fresh) process: returns the JSON record."""
    import warnings

    from pneumoxai.data import load_images
    from pneumoxai.errors import ConstantPredictionsWarning
    from pneumoxai.predict import predict_members

    warnings.simplefilter("ignore", ConstantPredictionsWarning)  # an untrained model: near-constant outputs
    model, table = tiny_model(), table_of(data_root, n)
    load_before = os.getloadavg()
    started = time.perf_counter()
    if mode == "streamed":
        predict_members([model], table, batch_size=BATCH, chunk_size=chunk_size, progress=False)
    elif mode == "whole":
        predict_members([model], load_images(table, SIZE), batch_size=BATCH, progress=False)
    else:
        model.predict(load_images(table["path"], SIZE), batch_size=BATCH, verbose=0)
    seconds = time.perf_counter() - started
    return {"mode": mode, "n_images": n, "chunk_size": chunk_size if mode == "streamed" else None,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "seconds": seconds,
            "images_per_s": n / seconds, "loadavg_before": list(load_before), "loadavg_after": list(os.getloadavg())}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[500, 2000, 5000])
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--data", default="/work/shared/data/chest_xray")
    parser.add_argument("--out", default=str(HERE.parent / "figures" / "scale" / "stream.json"))
    parser.add_argument("--child", nargs=2, metavar=("MODE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.data, args.chunk_size)))
        return
    runs = []
    for n in args.n:
        for mode in MODES:
            output = subprocess.run([sys.executable, __file__, "--child", mode, str(n), "--data", args.data,
                                     "--chunk-size", str(args.chunk_size)],
                                    check=True, capture_output=True, text=True).stdout
            runs.append(json.loads(output.strip().splitlines()[-1]))
            record = runs[-1]
            print(f"{mode:>8} n={n:>5}: peak RSS {record['peak_rss_mb']:7.0f} MB, {record['images_per_s']:6.0f} img/s "
                  f"(load {record['loadavg_before'][0]:.2f})", flush=True)
    write_atomic(args.out, json.dumps({"cpu": cpu(), "machine": machine(), "size": SIZE, "batch_size": BATCH,
                                       "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
