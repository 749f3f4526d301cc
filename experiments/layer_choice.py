"""Layer choice by measurement: every CAM method on every layer and on fused layers.

Two models:

- a deep tiny CNN trained on the small-patch task of ``tests/test_explain_layers.py``
  (a bright 6x6 square in a 48x48 image, a bar of the same brightness as distractor;
  last conv map 3x3), where the pointing game has a known answer;
- optionally the marked ResNet50 member of ``experiments/shortcut_audit.py`` (64 px,
  real test X-rays), where only faithfulness, randomization and cost can be measured.

For each (method, layer): pointing game (tiny CNN), deletion AUC (to black; lower is
better), ROAD MoRF / LeRF and their gap (higher is better), median Spearman correlation
of the maps before/after re-initialising the top layers (lower is better), seconds per
image on this CPU.

    python experiments/layer_choice.py [--member runs/shortcut_audit/members/marked \
        --data ../shared/data/chest_xray]

Writes ``figures/layer_choice/``: tiny_cnn.csv, resnet50_member.csv (with --member),
layer_choice.md and provenance.json.
"""

import argparse
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from pneumoxai import __version__, explain, models
from pneumoxai.files import write_csv, write_json, write_text
from pneumoxai.data import load_images, scan_dataset

from _provenance import machine  # experiments/, on sys.path when run as a script

HERE = Path(__file__).resolve().parent
SIZE, PATCH = 48, 6
METHODS = ("gradcam", "gradcam++", "layercam", "hirescam", "scorecam")


def small_patch_data(n, rng):
    """Dim noise, a bright 2x12 bar in every image, a bright 6x6 square in odd ones; the squares' boxes."""
    x = np.repeat(rng.uniform(0.0, 0.45, (n, SIZE, SIZE, 1)), 3, axis=-1).astype(np.float32)
    y = np.arange(n) % 2
    boxes = np.zeros((n, 4), int)
    for i in range(n):
        long_side, short_side = (12, 2) if rng.random() < 0.5 else (2, 12)
        while True:
            r0, c0 = rng.integers(1, SIZE - long_side), rng.integers(1, SIZE - short_side)
            pr, pc = rng.integers(1, SIZE - PATCH, size=2)
            if pr > r0 + long_side or pr + PATCH < r0 or pc > c0 + short_side or pc + PATCH < c0:
                break
        x[i, r0:r0 + long_side, c0:c0 + short_side] = rng.uniform(0.85, 1.0)
        if y[i]:
            x[i, pr:pr + PATCH, pc:pc + PATCH] = rng.uniform(0.85, 1.0)
            boxes[i] = (pr, pc, pr + PATCH, pc + PATCH)
    return x, y, boxes


def deep_cnn():
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    h = inputs
    for k, width in enumerate((8, 16, 16, 32), start=1):
        h = keras.layers.Conv2D(width, 3, padding="same", activation="relu", name=f"conv{k}")(h)
        h = keras.layers.MaxPooling2D(name=f"pool{k}")(h)
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv_last")(h)
    h = keras.layers.GlobalAveragePooling2D(name="head_pool")(h)
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="prediction")(h))


def pointing(maps, boxes, margin=1):
    rows, cols = np.unravel_index(maps.reshape(len(maps), -1).argmax(axis=1), maps.shape[1:])
    r0, c0, r1, c1 = boxes.T
    return float(((rows >= r0 - margin) & (rows < r1 + margin) & (cols >= c0 - margin) & (cols < c1 + margin)).mean())


def tiny_cnn_table(n_images, n_randomized):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x_train, y_train, _ = small_patch_data(640, rng)
    x_val, y_val, boxes = small_patch_data(2 * n_images, rng)
    model = deep_cnn()
    model.compile(keras.optimizers.Adam(3e-3), "binary_crossentropy")
    model.fit(x_train, y_train, epochs=25, batch_size=32, verbose=0)
    pos = y_val == 1
    x, boxes = x_val[pos], boxes[pos]
    layers = ["conv_last", "conv3", "conv2", explain.fusion_layers(model), explain.fusion_layers(model, n_layers=4)]
    table = explain.compare_layers(model, x, layers, methods=METHODS, target="pneumonia", n_randomized=n_randomized,
                                   max_n=8)
    hits = []
    for method, layer in zip(table["method"], table["layer"]):
        if method == "random":
            hits.append(np.nan)
            continue
        maps = explain.gradcam(model, x, method=method, layers=layer.split("+"), max_n=8)
        hits.append(pointing(maps, boxes))
    table.insert(3, "pointing_game", hits)
    return table


def member_table(member_dir, data, n_images, n_randomized):
    model, _ = models.load_member(member_dir)
    test = scan_dataset(data)
    test = test[test["split"] == "test"]
    rows = test.iloc[np.linspace(0, len(test) - 1, n_images).astype(int)]
    x = load_images(rows, int(model.input_shape[1]))
    # The conv3/conv4 stage outputs feed only stride-2 1x1 convolutions, so their maps are
    # checkerboards; the first ReLU of each stage's last block feeds a 3x3 conv and is dense.
    stage_outputs = explain.fusion_layers(model)
    dense = ("conv3_block4_1_relu", "conv4_block6_1_relu", stage_outputs[2])
    layers = [stage_outputs[2], stage_outputs[1], dense[1], stage_outputs[0], dense[0], stage_outputs, dense]
    return explain.compare_layers(model, x, layers, methods=("gradcam", "layercam", "hirescam"), target="predicted",
                                  n_randomized=n_randomized)


def markdown_table(table):
    cells = [[f"{v:.3g}" if isinstance(v, float) else str(v) for v in row] for row in table.itertuples(index=False)]
    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--member", default=None, help="a saved member folder (e.g. the audit's marked member)")
    parser.add_argument("--data", default="../shared/data/chest_xray")
    parser.add_argument("--n-images", type=int, default=24)
    parser.add_argument("--n-randomized", type=lambda v: v if v == explain.DOWNSTREAM else int(v), default=3,
                        help=f"top weighted layers re-initialised, or {explain.DOWNSTREAM!r} (the explain stage's)")
    parser.add_argument("--skip-tiny", action="store_true", help="keep an existing tiny_cnn.csv")
    parser.add_argument("--figures", default=str(HERE.parent / "figures" / "layer_choice"))
    args = parser.parse_args(argv)
    figures = Path(args.figures)
    started = time.perf_counter()
    tables = {"tiny_cnn": (pd.read_csv(figures / "tiny_cnn.csv") if args.skip_tiny
                           else tiny_cnn_table(args.n_images, args.n_randomized))}
    if args.member:
        tables["resnet50_member"] = member_table(args.member, args.data, args.n_images, args.n_randomized)
    text = ["# Layer choice by measurement", ""]
    for name, table in tables.items():
        write_csv(figures / f"{name}.csv", table, index=False)
        text += [f"## {name}", "", markdown_table(table), ""]
    write_text(figures / "layer_choice.md", "\n".join(text))
    write_json(figures / "provenance.json", {
        "command": " ".join(["python", "experiments/layer_choice.py"] + (argv or sys.argv[1:])),
        "pneumoxai_version": __version__, "machine": machine(), "seconds": time.perf_counter() - started,
        "args": vars(args),
    })
    print(pd.concat(tables, names=["model"]).round(3).to_string())


if __name__ == "__main__":
    main()
