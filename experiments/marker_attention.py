"""The paired marker-attention test for shortcut audits finished before the audit reported it.

For each member of a finished audit (``experiments/shortcut_audit.py``), this re-draws
the chosen map (the method and layers recorded in ``audit.csv``) on the marked images it
showed (the marked false positives, or the marked NORMAL images when there were fewer
than 3) and on their clean copies, and runs :func:`pneumoxai.audit.marker_attention_test`;
it also sets the images whose peak the marker draws into its box against the rise of
P(PNEUMONIA) the marker causes there (does the attention follow what the tag does?), and
repeats the test counting only the peaks whose removal changes the call.
The same columns the audit now writes itself, computed the same way from the recorded
threshold, test marks and cached members; nothing is re-chosen.

    python experiments/marker_attention.py figures/shortcut_audit_128_seed2 [--data ../shared/data/chest_xray]

Writes ``attention.csv`` into the audit's folder (one row per member).
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from pneumoxai import audit, explain, models
from pneumoxai.files import write_csv
from pneumoxai.data import load_images, scan_dataset

import shortcut_audit  # experiments/, on sys.path when run as a script


def member_attention(model, threshold, test, box, method, layers):
    """The audit's attention columns for one member, from its recorded threshold and map choice."""
    y, marked = test["y"], test["marked"]
    p, p_clean = models.predict_proba(model, test["x"]), models.predict_proba(model, test["x_clean"])
    shown, maps_on = shortcut_audit.shown_rows(marked, p >= threshold, y)
    maps = explain.gradcam(model, test["x"][shown], method=method, layers=layers)
    maps_clean = explain.gradcam(model, test["x_clean"][shown], method=method, layers=layers)
    tolerance = audit.pointing_tolerance(int(model.input_shape[1]))
    columns = shortcut_audit.attention_columns(model, threshold, test["x"][shown], test["x_clean"][shown], maps,
                                               maps_clean, box, tolerance, (p - p_clean)[shown])
    return {
        "maps_on": maps_on,
        "n_maps": int(shown.sum()),
        **columns,
        "n_errors_caused_by_marker": int((marked & (p >= threshold) & (y == 0) & (p_clean < threshold)).sum()),
        **shortcut_audit.tag_effect_columns(p, p_clean, marked, y, threshold),
        "control_no_marker_attention": bool(columns["b_marker_attention_p"] >= 0.05),
        "control_no_call_resting_marker_attention": bool(columns["b_call_resting_marker_attention_p"] >= 0.05),
    }


def recorded_audit(folder, data):
    """A finished audit's recorded table, run arguments, test images (tagged and clean, as it drew them) and
    its two members' folders, [("marked", dir), ("control", dir)]."""
    recorded = pd.read_csv(folder / "audit.csv").set_index("member")
    run_args = json.loads((folder / "provenance.json").read_text())["args"]
    size, seed = run_args["size"], run_args["seed"]
    table = scan_dataset(data)
    test_rows = table[table["split"] == "test"].reset_index(drop=True)
    full = load_images(test_rows, shortcut_audit.FULL)
    marked = shortcut_audit._marked_rows(test_rows["label"], 0, run_args["test_marked"],
                                         np.random.default_rng(seed + 2))
    test = {"y": test_rows["label"].to_numpy(), "marked": marked,
            "x": shortcut_audit._downsample(shortcut_audit._stamp_some(full, marked), size),
            "x_clean": shortcut_audit._downsample(full, size)}
    members = Path(run_args["out"]) / "members"
    control = (Path(run_args["control_member"]) if run_args.get("control_member")
               else members / shortcut_audit.CONTROLS[run_args.get("control", "clean")][0])
    return recorded, run_args, test, [("marked", members / "marked"), ("control", control)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audit", help="a finished audit's figures folder (audit.csv, provenance.json)")
    parser.add_argument("--data", default="../shared/data/chest_xray")
    args = parser.parse_args(argv)
    folder = Path(args.audit)
    recorded, run_args, test, members = recorded_audit(folder, args.data)
    rows = []
    for name, directory in members:
        model, _ = models.load_member(directory)
        method, layers = recorded.loc[name, "b_pipeline_choice"].split(" on ")
        row = {"member": name, "choice": recorded.loc[name, "b_pipeline_choice"]}
        row.update(member_attention(model, float(recorded.loc[name, "threshold"]), test,
                                    audit.marker_box(run_args["size"]), method, layers.split("+")))
        rows.append(row)
        print(row, file=sys.stderr, flush=True)
    write_csv(folder / "attention.csv", pd.DataFrame(rows), index=False)


if __name__ == "__main__":
    main()
