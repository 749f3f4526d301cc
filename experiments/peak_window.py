"""How the call-resting marker-attention test of a finished shortcut audit depends on the removed window's side.

For the marked member and the control of an audit (``experiments/shortcut_audit.py``), this
re-draws the chosen map on the marked images the audit showed and on their clean copies (as
``experiments/marker_attention.py`` does) and repeats
:func:`pneumoxai.audit.marker_attention_test` counting only the peaks whose removal changes the
call, for each window side given.

    python experiments/peak_window.py figures/shortcut_audit_128_seed1_cpu_control --sizes 19 24 32 42 56

Writes ``peak_window.csv`` into the audit's folder (one row per member and window side).
"""

import argparse
import sys
from pathlib import Path

import pandas as pd

from pneumoxai import audit, explain, models
from pneumoxai.files import write_csv

import marker_attention  # experiments/, on sys.path when run as a script
import shortcut_audit


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audit", help="a finished audit's figures folder (audit.csv, provenance.json)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[19, 24, 32, 42, 56])
    parser.add_argument("--data", default="../shared/data/chest_xray")
    args = parser.parse_args(argv)
    folder = Path(args.audit)
    recorded, run_args, test, members = marker_attention.recorded_audit(folder, args.data)
    box, rows = audit.marker_box(run_args["size"]), []
    for name, directory in members:
        model, _ = models.load_member(directory)
        threshold = float(recorded.loc[name, "threshold"])
        method, layers = recorded.loc[name, "b_pipeline_choice"].split(" on ")
        p = models.predict_proba(model, test["x"])
        shown, _ = shortcut_audit.shown_rows(test["marked"], p >= threshold, test["y"])
        copies = [(test[key][shown], explain.gradcam(model, test[key][shown], method=method, layers=layers.split("+")))
                  for key in ("x", "x_clean")]
        tolerance = audit.pointing_tolerance(int(model.input_shape[1]))
        for size in args.sizes:
            changed = [audit.peak_removal_effect(model, x, m, size=size, threshold=threshold)["call_changed"]
                       for x, m in copies]
            result = audit.marker_attention_test(copies[0][1], copies[1][1], box, tolerance=tolerance,
                                                 changed_marked=changed[0], changed_clean=changed[1])
            rows.append({"member": name, "window": size, "n_maps": int(shown.sum()),
                         "changes_call": float(changed[0].mean()), "changes_call_clean": float(changed[1].mean()),
                         "moves_into_box": result["n_into"], "moves_out_of_box": result["n_out_of"],
                         "p_value": result["p_value"]})
            print(rows[-1], file=sys.stderr, flush=True)
    write_csv(folder / "peak_window.csv", pd.DataFrame(rows), index=False)


if __name__ == "__main__":
    main()
