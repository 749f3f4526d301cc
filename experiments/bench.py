"""Benchmark suite: every stage against a baseline measured in the same process, on the same data.

    python experiments/bench.py --data ../shared/data/chest_xray [--run runs/cpu] [--stages load,train,...]

Prints, per stage, our figure, the baseline's, and their ratio (``speedup`` = baseline
time / our time, so > 1 means we are faster; for throughput the ratio is ours /
baseline), and writes ``bench.csv`` and ``bench.json`` to ``--out`` so runs can be
compared (``--append`` merges stages measured in separate invocations). On this
2-core machine, with a training job sharing the cores (load average 4), the stages took
about 35 minutes in all (load + train + predict about 25, explain + slices + memory 10);
a quiet machine was not available to check the 15-minute budget. Stages:

- ``load``: decoding the 5840 real images at 224 px, vs ``keras.utils.image_dataset_from_directory``.
- ``train``: training step with our tf.data pipeline (augmentation on) vs the same step on
  batches already in memory; XLA and bfloat16 steps vs float32; phase 1 on cached backbone
  features vs through the frozen backbone.
- ``predict``: ``predict_members`` for 3 members vs plain ``model.predict``, with the
  achieved GFLOP/s against this machine's matrix-multiply peak measured in the same run.
- ``explain``: batched Grad-CAM / Grad-CAM++ vs a one-image loop; SHAP seconds per image and
  the rank correlation of maps from two seeds as the sample count grows.
- ``slices``: image features and the slice search on the test split, vs the same tests run
  one slice at a time with pandas and scipy.
- ``memory``: peak RSS of SMOTE on the full train split at 224 px (ours vs imbalanced-learn
  on the full 3-channel pixels), each in a fresh process; peak RSS of each stage of the
  ``--run`` folder's ``pneumoxai run`` (``tables/timings.csv``), when given.

Everything uses random-weight ResNet50 members (``weights=None``): the arithmetic is the
same as for trained ones. Explanations use a trained member of ``--run`` when given.
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

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pneumoxai import data, models  # noqa: E402

from _provenance import machine  # noqa: E402 (experiments/, on sys.path when run as a script)

HERE = Path(__file__).resolve().parent
STAGES = ("load", "train", "predict", "explain", "slices", "memory")
SIZE = 64  # the CPU profile's resolution
CPU_AUGMENT = {"rotation": 0.03, "flip": True, "contrast": 0.1}


def timed(function, repeat=1):
    """Best wall time of ``repeat`` calls (the least disturbed by other work), and the last result."""
    best, result = np.inf, None
    for _ in range(repeat):
        started = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - started)
    return best, result


class Table:
    def __init__(self):
        self.rows = []

    def add(self, stage, measure, ours, baseline, unit, *, higher_is_better=False, note=""):
        if baseline is None or ours is None:
            ratio = None
        else:
            ratio = ours / baseline if higher_is_better else baseline / ours
        row = {"stage": stage, "measure": measure, "ours": ours, "baseline": baseline, "unit": unit,
               "ratio": ratio, "ratio_means": "ours/baseline" if higher_is_better else "baseline/ours",
               "note": note}
        self.rows.append(row)
        fmt = lambda v: "-" if v is None else f"{v:.4g}"  # noqa: E731
        print(f"{stage:8s} {measure:58s} ours {fmt(ours):>9s}  baseline {fmt(baseline):>9s} {unit:10s} "
              f"ratio {fmt(ratio):>6s}  {note}", flush=True)


def resnet50_macs(model):
    """Multiply-accumulates of one forward pass (convolutions and dense layers)."""
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            out_h, out_w, out_c = layer.output.shape[1:]
            k_h, k_w, in_c, _ = layer.kernel.shape
            total += out_h * out_w * out_c * k_h * k_w * in_c
        elif isinstance(layer, keras.layers.Dense):
            total += int(np.prod(layer.kernel.shape))
    return total


def matmul_peak_gflops(n=2048, repeats=10):
    import tensorflow as tf

    a, b = tf.random.normal((n, n)), tf.random.normal((n, n))
    tf.matmul(a, b).numpy()
    started = time.perf_counter()
    for _ in range(repeats):
        c = tf.matmul(a, b)
    c.numpy()
    return repeats * 2 * n**3 / (time.perf_counter() - started) / 1e9


def bench_load(table, root, frame):
    import keras
    import tensorflow as tf

    paths = frame["path"].tolist()
    for path in paths:  # both sides then read from the page cache, not whoever runs first from disk
        Path(path).read_bytes()
    ours, images = timed(lambda: data.load_images(paths, 224))
    shape = images.shape
    del images

    def baseline():
        batches = []
        for split in ("train", "test"):
            dataset = keras.utils.image_dataset_from_directory(
                Path(root) / split, labels="inferred", label_mode="binary", color_mode="rgb",
                image_size=(224, 224), batch_size=64, shuffle=False, verbose=False)
            batches += [x.numpy() / np.float32(255) for x, _ in dataset]
        return sum(len(b) for b in batches)

    base, n = timed(baseline)
    table.add("load", f"decode+resize {shape[0]} images to 224 px", ours, base, "s",
              note=f"{shape[0] / ours:.0f} img/s; baseline read {n}; TF threads {tf.config.threading.get_intra_op_parallelism_threads() or 'auto'}")


def _member(seed=0, **kwargs):
    return models.build_member(SIZE, weights=None, seed=seed, bn_momentum=0.9, **kwargs)


def _compiled(model, jit_compile=False):
    import keras

    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy",
                  metrics=[keras.metrics.AUC(name="auc")], jit_compile=jit_compile)
    return model


def _step_time(model, dataset, steps):
    model.fit(dataset.take(1), epochs=1, verbose=0)  # compile outside the timing
    seconds, _ = timed(lambda: model.fit(dataset.take(steps), epochs=1, verbose=0), repeat=2)
    return seconds / steps


def bench_train(table, x, y, steps):
    import tensorflow as tf

    batch = 32
    x, y = x[:steps * batch], y[:steps * batch].astype(np.float32)
    model = _compiled(_member())
    pipeline = data.make_dataset(x, y, batch_size=batch, training=True, augment=CPU_AUGMENT, seed=0)
    in_memory = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).cache()
    for _ in in_memory:  # materialise the cache before timing
        pass
    base = _step_time(model, in_memory, steps)
    ours = _step_time(model, pipeline, steps)
    table.add("train", f"training step, batch {batch}, {SIZE} px: tf.data + augmentation vs in-memory batches",
              ours, base, "s/step", note=f"input-pipeline overhead {100 * (ours / base - 1):+.1f}%")

    xla = _step_time(_compiled(_member(), jit_compile=True), in_memory, steps)
    table.add("train", "training step with XLA (jit_compile=True) vs without", xla, base, "s/step")
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bf16 = _step_time(_compiled(_member(precision="mixed_bfloat16")), in_memory, steps)
    emulated = any("emulated" in str(w.message) for w in caught)
    table.add("train", "training step, mixed_bfloat16 vs float32", bf16, base, "s/step",
              note="bfloat16 emulated on this CPU (no AVX512-BF16/AMX)" if emulated else "")


def bench_phase1_cache(table, x, y, x_val, y_val, tmp):
    import keras
    from pneumoxai.config import parse_config

    weights = Path(tmp) / "resnet50_random.weights.h5"
    keras.applications.ResNet50(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3)).save_weights(weights)
    epochs = 5
    base_cfg = {"name": "p1", "weights": str(weights), "image_size": SIZE, "epochs_frozen": epochs,
                "epochs_finetune": 0, "balancing": "none", "early_stopping_patience": epochs,
                "learning_rate": 1e-3}
    results = {}
    for cached in (False, True):
        config = parse_config({"members": [{**base_cfg, "cache_features": cached,
                                            "augment": {} if cached else CPU_AUGMENT}]})["members"][0]
        model = models.build_member(SIZE, weights=str(weights), seed=0)
        seconds, info = timed(lambda: models.train_member(model, x, y, x_val, y_val, config, verbose=0))
        results[cached] = (seconds, info)
    (base, base_info), (ours, info) = results[False], results[True]
    table.add("train", f"phase 1 ({epochs} epochs, frozen backbone, {len(x)} images): cached features vs backbone",
              ours, base, "s", note=f"features computed once; phase-1 augmentation off (the trade-off); "
                                    f"val loss {info['best_val_loss']:.3f} vs {base_info['best_val_loss']:.3f}")


def bench_predict(table, x_test):
    members = [_member(seed) for seed in range(3)]
    from pneumoxai.predict import predict_members

    predict_members(members, x_test[:64], progress=False)
    for member in members:
        member.predict(x_test[:64], batch_size=64, verbose=0)
    ours, _ = timed(lambda: predict_members(members, x_test, batch_size=64, progress=False), repeat=2)
    base, _ = timed(lambda: [m.predict(x_test, batch_size=64, verbose=0) for m in members], repeat=2)
    n = 3 * len(x_test)
    table.add("predict", f"predict_members, 3 members x {len(x_test)} images, {SIZE} px", n / ours, n / base,
              "img/s", higher_is_better=True, note="target >= 0.9")
    peak = matmul_peak_gflops()
    macs = resnet50_macs(members[0])
    achieved = 2 * macs * n / ours / 1e9
    table.add("predict", f"achieved GFLOP/s ({macs / 1e9:.3f} GMACs/img at {SIZE} px) vs matmul peak",
              achieved, peak, "GFLOP/s", higher_is_better=True, note="peak: 2048x2048 float32 tf.matmul")

    big = models.build_member(224, weights=None, seed=0)
    x224 = np.repeat(np.repeat(x_test[:64], 224 // SIZE + 1, axis=1), 224 // SIZE + 1, axis=2)[:, :224, :224]
    models.predict_proba(big, x224[:8])
    seconds, _ = timed(lambda: models.predict_proba(big, x224, batch_size=32))
    macs224 = resnet50_macs(big)
    table.add("predict", f"achieved GFLOP/s at 224 px ({macs224 / 1e9:.2f} GMACs/img) vs matmul peak",
              2 * macs224 * len(x224) / seconds / 1e9, peak, "GFLOP/s", higher_is_better=True,
              note=f"{len(x224) / seconds:.1f} img/s")


def bench_explain(table, model, x, x_background, y_background):
    from pneumoxai import explain

    n = len(x)
    for method in ("gradcam", "gradcam++"):
        explain.gradcam(model, x[:2], method=method)
        ours, _ = timed(lambda: explain.gradcam(model, x, method=method, batch_size=n))
        base, _ = timed(lambda: [explain.gradcam(model, x[i:i + 1], method=method) for i in range(n)])
        table.add("explain", f"{method}: {n} images batched vs one-image loop (s/image)", ours / n, base / n,
                  "s/img", note="target >= 5x")
    background = explain.background_sample(x_background, y_background, n=16, seed=0)
    first = x[:4]
    for n_samples in (8, 32, 128):
        seconds, maps_a = timed(lambda: explain.shap_maps(model, first, background, n_samples=n_samples, seed=0))
        maps_b = explain.shap_maps(model, first, background, n_samples=n_samples, seed=1)
        from scipy.stats import spearmanr

        rho = np.mean([spearmanr(a.ravel(), b.ravel())[0] for a, b in zip(maps_a, maps_b)])
        table.add("explain", f"SHAP (expected gradients), {n_samples} samples: s/image; seed-to-seed rank corr",
                  seconds / len(first), None, "s/img", note=f"Spearman rho between seeds {rho:.3f}")


def bench_slices(table, test_frame, x224, probs):
    from scipy.stats import fisher_exact
    from statsmodels.stats.multitest import multipletests

    from pneumoxai import slices

    seconds, features = timed(lambda: slices.image_features(x224))
    table.add("slices", f"image_features on {len(x224)} test images at 224 px", seconds, None, "s",
              note=f"{len(x224) / seconds:.0f} img/s, {features.shape[1]} features")
    frame = slices.slice_frame(test_frame[["path", "split", "label", "label_name", "patient_id", "subtype"]],
                               images=x224, member_probs=probs)
    y = test_frame["label"].to_numpy()
    p = probs.mean(axis=1)
    ours, found = timed(lambda: slices.find_failure_slices(frame, y, p, min_size=20), repeat=2)
    errors = (p >= 0.5).astype(int) != y

    def baseline():
        p_values = []
        for conditions in found["conditions"]:
            inside = slices.slice_mask(frame, conditions)
            k, size = int(errors[inside].sum()), int(inside.sum())
            rest_k, rest = int(errors[~inside].sum()), int((~inside).sum())
            p_values.append(fisher_exact([[k, size - k], [rest_k, rest - rest_k]], alternative="greater")[1])
        return multipletests(p_values, method="fdr_bh")[1]

    base, q = timed(baseline)
    agree = np.allclose(np.sort(q), np.sort(found["q_value"].to_numpy()), rtol=1e-6, atol=1e-12)
    table.add("slices", f"slice search, {len(found)} slices tested on {len(y)} images (order <= 2)", ours, base,
              "s", note=f"baseline re-tests only the slices we kept, one at a time; q-values agree: {agree}")


SMOTE_CHILD = """
import resource, sys, time
import numpy as np
from pneumoxai import data
frame = data.scan_dataset(sys.argv[1])
train = frame[frame.split == "train"]
x = data.load_images(train, 224)
y = train["label"].to_numpy()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
started = time.perf_counter()
if sys.argv[2] == "ours":
    out, labels, _ = data.balance(x, y, "smote", seed=0)
else:
    from imblearn.over_sampling import SMOTE
    flat, labels = SMOTE(random_state=0).fit_resample(x.reshape(len(x), -1), y)
    out = flat.reshape(-1, 224, 224, 3)
seconds = time.perf_counter() - started
print(len(out), seconds, base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def bench_memory(table, root, run_dir):
    results = {}
    for variant in ("ours", "baseline"):
        out = subprocess.run([sys.executable, "-c", SMOTE_CHILD, str(root), variant], capture_output=True,
                             text=True, check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        n, seconds, before, peak = out.stdout.split()[-4:]
        results[variant] = (int(n), float(seconds), float(before), float(peak))
    (n, ours_s, before, ours_peak), (_, base_s, _, base_peak) = results["ours"], results["baseline"]
    table.add("memory", f"SMOTE on the full train split at 224 px ({n} images after): peak RSS", ours_peak / 1024,
              base_peak / 1024, "GiB", note=f"images alone {before / 1024:.2f} GiB; SMOTE {ours_s:.1f} s vs {base_s:.1f} s")
    timings = Path(run_dir) / "tables" / "timings.csv" if run_dir else None
    if timings is not None and timings.exists():
        for row in pd.read_csv(timings).itertuples():
            table.add("memory", f"pneumoxai run {run_dir}: stage {row.stage}: peak RSS (and seconds)",
                      row.peak_rss_mb / 1024, None, "GiB", note=f"{row.seconds:.0f} s")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/chest_xray")
    parser.add_argument("--run", default=None, help="a finished run folder: trained members and stage timings")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {STAGES}")
    parser.add_argument("--steps", type=int, default=6, help="training steps per timing")
    parser.add_argument("--out", default=str(HERE.parent / "figures" / "bench"))
    parser.add_argument("--append", action="store_true",
                        help="keep the rows of other stages already in --out (stages measured in separate runs)")
    args = parser.parse_args(argv)
    stages = args.stages.split(",")
    unknown = set(stages) - set(STAGES)
    if unknown:
        parser.error(f"unknown stage(s) {sorted(unknown)}; choose from {list(STAGES)}")
    import tempfile

    import tensorflow as tf

    started = time.perf_counter()
    # Recorded because other jobs on the same cores shift absolute figures (ratios less so).
    load_before = os.getloadavg()
    table = Table()
    frame = data.scan_dataset(args.data)
    train_rows = frame[frame.split == "train"].sample(n=640, random_state=0)
    test_rows = frame[frame.split == "test"].reset_index(drop=True)
    x_train = data.load_images(train_rows, SIZE)
    y_train = train_rows["label"].to_numpy()
    x_test = data.load_images(test_rows, SIZE)

    if "load" in stages:
        bench_load(table, args.data, frame)
    if "train" in stages:
        bench_train(table, x_train, y_train, args.steps)
        with tempfile.TemporaryDirectory() as tmp:
            bench_phase1_cache(table, x_train[:384], y_train[:384], x_train[384:], y_train[384:], tmp)
    if "predict" in stages:
        bench_predict(table, x_test)
    members = sorted(Path(args.run).glob("members/*/card.json")) if args.run else []
    if "explain" in stages:
        model = models.load_member(members[0].parent)[0] if members else _member()
        bench_explain(table, model, x_test[:32], x_train, y_train)
    if "slices" in stages:
        x224 = data.load_images(test_rows, 224)
        predictions = Path(args.run) / "tables" / "predictions_test.csv" if args.run else None
        if predictions is not None and predictions.exists():
            names = json.loads((Path(args.run) / "tables" / "ensemble.json").read_text())["members"]
            table_test = pd.read_csv(predictions).set_index("path").loc[test_rows["path"]]
            probs = table_test[[f"p[{name}]" for name in names]].to_numpy()
        else:
            rng = np.random.default_rng(0)
            labels = test_rows["label"].to_numpy()
            probs = np.clip(labels[:, None] * 0.6 + 0.2 + rng.normal(0, 0.25, (len(labels), 3)), 0, 1)
        bench_slices(table, test_rows, x224, probs)
        del x224
    if "memory" in stages:
        bench_memory(table, args.data, args.run)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = pd.DataFrame(table.rows)
    previous = out / "bench.csv"
    if args.append and previous.exists():
        kept = pd.read_csv(previous)
        results = pd.concat([kept[~kept["stage"].isin(stages)], results], ignore_index=True)
    results.to_csv(out / "bench.csv", index=False)
    meta = {"command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
            "seconds": round(time.perf_counter() - started, 1), **machine(), "tensorflow": tf.__version__,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "load_average_before_and_after": [load_before, os.getloadavg()]}
    runs = [meta]
    if args.append and (out / "bench.json").exists():
        runs = json.loads((out / "bench.json").read_text())["runs"] + runs
    (out / "bench.json").write_text(json.dumps({"runs": runs, "rows": results.to_dict("records")},
                                               indent=2, default=float) + "\n")
    print(f"\n{len(results)} measurements in {meta['seconds']:.0f} s; written to {out}/bench.csv and bench.json")


if __name__ == "__main__":
    main()
