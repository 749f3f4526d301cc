"""Compare the explain stage's outputs of two run folders: maps, tables and the layer choice.

Usage: python experiments/compare_explain_outputs.py RUN_A RUN_B [--json OUT]

Prints, per output, the largest absolute difference of its numbers (NaN where equal NaNs) and
whether its text columns are identical; ``seconds_per_image`` of the layer choice is a timing
and is left out. Exit status 1 when a difference exceeds --atol (default 1e-4).
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

MAPS = ("maps/explain.npz", "maps/test_maps.npz")
TABLES = ("tables/layer_choice.csv", "tables/zone_attention.csv", "tables/zone_attention_all.csv",
          "tables/explain_summary.csv")
TIMINGS = ("seconds_per_image",)


def _max_difference(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    both_nan = np.isnan(a) & np.isnan(b)
    diff = np.where(both_nan, 0.0, np.abs(a - b))
    return float(np.nan_to_num(diff, nan=np.inf).max()) if diff.size else 0.0


def _arrays(run, name):
    """The arrays of a maps file; the test-split maps from ``test_maps.npy`` beside their index, where a run keeps
    them (an older run has them in the ``.npz``), so that runs of either kind compare."""
    with np.load(Path(run, name)) as data:
        arrays = {key: data[key] for key in data.files}
    rows = Path(run, name).with_suffix(".npy")
    if "maps" not in arrays and rows.is_file():
        arrays["maps"] = np.load(rows, mmap_mode="r")
    return arrays


def compare(run_a, run_b):
    rows = []
    for name in MAPS:
        a, b = _arrays(run_a, name), _arrays(run_b, name)
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                rows.append({"output": f"{name}:{key}", "max_abs_diff": float("inf"), "text_equal": False})
            elif a[key].dtype.kind in "fiu":
                rows.append({"output": f"{name}:{key}", "max_abs_diff": _max_difference(a[key], b[key]),
                             "text_equal": True, "value_range": float(np.ptp(a[key].astype(np.float64)))})
            else:
                rows.append({"output": f"{name}:{key}", "max_abs_diff": 0.0,
                             "text_equal": bool(np.array_equal(a[key], b[key]))})
    for name in TABLES:
        a, b = pd.read_csv(Path(run_a, name)), pd.read_csv(Path(run_b, name))
        same_shape = a.shape == b.shape and list(a.columns) == list(b.columns)
        numeric = [c for c in a.select_dtypes("number").columns if c not in TIMINGS]
        text = [c for c in a.columns if c not in numeric and c not in TIMINGS]
        rows.append({"output": name, "max_abs_diff": max((_max_difference(a[c], b[c]) for c in numeric), default=0.0)
                     if same_shape else float("inf"),
                     "text_equal": same_shape and bool(a[text].astype(str).equals(b[text].astype(str)))})
    choice_a = json.loads(Path(run_a, "tables/layer_choice.json").read_text())
    choice_b = json.loads(Path(run_b, "tables/layer_choice.json").read_text())
    numbers = [k for k, v in choice_a.items() if isinstance(v, float)]
    rows.append({"output": "tables/layer_choice.json",
                 "max_abs_diff": max(abs(choice_a[k] - choice_b.get(k, np.inf)) for k in numbers),
                 "text_equal": {k: v for k, v in choice_a.items() if k not in numbers and k != "reason"}
                 == {k: v for k, v in choice_b.items() if k not in numbers and k != "reason"}})
    return pd.DataFrame(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a")
    parser.add_argument("run_b")
    parser.add_argument("--atol", type=float, default=1e-4)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    table = compare(args.run_a, args.run_b)
    sys.stdout.write(table.to_string(index=False) + "\n")
    ok = bool((table["max_abs_diff"] <= args.atol).all() and table["text_equal"].all())
    if args.json:
        Path(args.json).write_text(json.dumps({"atol": args.atol, "equal": ok, "rows": table.to_dict("records")},
                                              indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
