"""Peak memory of the test-split maps (explain and slices stages) at N and 4N images, before and after streaming.

    nice -n 10 python experiments/bench_maps.py [--n 500 2000] [--before COMMIT] [--codes before after]

Issue 29: the explain stage kept the chosen map of every test image (float16 at 224 px,
100 KB an image) in a list, concatenated it and saved it whole; the slices stage loaded
the whole file. Now the maps are written to ``maps/test_maps.npy`` a chunk at a time and
read by rows (:class:`pneumoxai._io.NpyRows`). Each point runs in a fresh subprocess
with one of two copies of the package first on its path: this checkout (``after``) and
``git archive`` of ``--before`` (``before``) in a temporary folder. The points:

- ``explain``: :func:`pneumoxai.pipeline.explanations._test_split_maps` on N images (the
  real 224 px images repeated as symbolic links under new names, as
  ``bench_scale.py`` builds them) with the tiny adapted model of ``bench_stream.py`` and
  Grad-CAM on its convolution, chunks of 256 images;
- ``slices``: the slices stage's use of those maps, in the next subprocess on the run folder
  the ``explain`` point wrote: ``_load_test_maps``, then
  :func:`pneumoxai.pipeline.failure_slices.image_columns` with the maps (lung masks,
  image features and the maps' peak features, a chunk at a time).

Each child reports its own peak RSS (``getrusage``: the model and TensorFlow included);
the JSON ``figures/scale/maps.json`` records the points with the CPU model, its flags and
the load average before and after each.
"""

import argparse
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
ROOT = HERE.parent
OUT = ROOT / "figures" / "scale" / "maps.json"
CHUNK = 256


def child(step, n, folder, data_root):
    """One point in this (fresh) process, on the run folder ``folder/run`` (written by ``explain``)."""
    import warnings

    import numpy as np
    import pandas as pd

    sys.path.insert(0, str(HERE))
    from bench_scale import linked_table
    from bench_stream import tiny_model

    from pneumoxai.run_folder import RunFolder

    warnings.simplefilter("ignore", UserWarning)  # lung-segmentation fallbacks on repeated images
    links = Path(folder) / "images"
    if step == "explain":
        links.mkdir()
        table = linked_table(data_root, n, links)
        table.to_csv(Path(folder) / "table.csv", index=False)
    table = pd.read_csv(Path(folder) / "table.csv")
    paths, run = table["path"].tolist(), RunFolder(Path(folder) / "run")
    model = tiny_model() if step == "explain" else None
    load_before = os.getloadavg()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    if step == "explain":
        from pneumoxai.explain import fusion_layers
        from pneumoxai.pipeline.explanations import _test_split_maps

        choice = {"method": "gradcam", "stages": [-1], "fused": False, "layer": fusion_layers(model)[-1]}
        predicted = (np.arange(n) % 3 == 0).astype(int)  # an untrained model: a fixed mix of called classes
        _test_split_maps(run, [model], paths, table["label"].to_numpy(), predicted, choice, interpolation="auto",
                         chunk_size=CHUNK)
    else:
        from pneumoxai.pipeline.failure_slices import _load_test_maps, image_columns

        maps, _ = _load_test_maps(run, pd.Series(paths))
        image_columns(paths, chunk_size=CHUNK, maps=maps)
    seconds = time.perf_counter() - started
    import pneumoxai

    return {"step": step, "n_images": n, "package": str(Path(pneumoxai.__file__).parent), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_before_mb": rss_before, "seconds": seconds, "images_per_s": n / seconds,
            "maps_on_disk_mb": sum(p.stat().st_size for p in run.path("maps").iterdir()) / 2 ** 20,
            "loadavg_before": list(load_before), "loadavg_after": list(os.getloadavg())}


def _package_copy(commit, folder):
    """``pneumoxai/`` of ``commit`` extracted into ``folder`` (nothing in the checkout changes)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "pneumoxai"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return str(folder)


def _commit(ref):
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", ref], check=True, capture_output=True,
                          text=True).stdout.strip()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--before", default="8bfc93e", help="the commit measured as 'before'")
    parser.add_argument("--codes", nargs="+", choices=("before", "after"), default=["before", "after"])
    parser.add_argument("--data", default="/work/shared/data/chest_xray")
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--child", nargs=3, metavar=("STEP", "N", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.child[2], args.data)))
        return
    sys.path.insert(0, str(HERE))
    from _provenance import cpu, machine, write_atomic

    runs = json.loads(Path(args.out).read_text())["runs"] if Path(args.out).exists() else []
    with tempfile.TemporaryDirectory(prefix="bench_maps_") as scratch:
        codes = {"before": (_commit(args.before), _package_copy(args.before, Path(scratch))),
                 "after": (_commit("HEAD") + ("+" if _dirty() else ""), str(ROOT))}
        for n in args.n:
            for code in args.codes:
                commit, pythonpath = codes[code]
                runs = [r for r in runs if (r["code"], r["n_images"]) != (code, n)]  # a point measured again
                with tempfile.TemporaryDirectory(prefix="bench_maps_run_") as folder:
                    for step in ("explain", "slices"):
                        env = {**os.environ, "PYTHONPATH": pythonpath}
                        output = subprocess.run([sys.executable, __file__, "--child", step, str(n), folder,
                                                 "--data", args.data], check=True, capture_output=True, text=True,
                                                env=env).stdout
                        record = {"code": code, "commit": commit, **json.loads(output.strip().splitlines()[-1])}
                        runs.append(record)
                        print(f"{code:>6} {step:>7} n={n:>5}: peak RSS {record['peak_rss_mb']:6.0f} MB "
                              f"({record['seconds']:.0f} s, load {record['loadavg_before'][0]:.2f})", flush=True)
                        write_atomic(args.out, json.dumps({"runs": runs, "machine": machine(), "cpu": cpu(),
                                                           "size": 224, "chunk_size": CHUNK}, indent=2) + "\n")


def _dirty():
    return bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "pneumoxai"], check=True,
                               capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
