"""Decision-threshold rules on a finished run's cached predictions (issue 13: prevalence shift).

    python experiments/threshold_rules.py --run runs/cpu128 --prevalence 0.625 \
        --out figures/cpu_ensemble_128/threshold_rules.csv

Every rule is fixed on the validation split and applied unchanged to the test split:
Youden's J, 0.5, best expected accuracy at a stated deployment prevalence
(``metrics.prevalence_threshold``), and the Bayes threshold of Platt-calibrated
validation probabilities moved to that prevalence (Saerens et al. 2002). A last row per
model, ``hindsight (test)``, is the threshold of best test accuracy: it reads the test
labels, so it is an upper bound for any rule, never a result.
"""

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import expit, logit

from pneumoxai import metrics
from pneumoxai.calibration import PlattScaling

from _provenance import write_atomic  # noqa: E402 (experiments/, on sys.path as a script)


def calibrated_bayes_threshold(y_val, p_val, prevalence):
    """Raw-probability threshold where the Platt-calibrated posterior, moved from the validation
    prevalence to ``prevalence``, equals 0.5."""
    calibrator = PlattScaling().fit(p_val, y_val)
    shift = logit(prevalence) - logit(np.mean(y_val))
    return float(expit(-(calibrator.intercept_ + shift) / calibrator.coef_)), calibrator


def rules_table(val, test, prevalence):
    rows = []
    y_val, y_test = val["label"].to_numpy(), test["label"].to_numpy()
    for column in [c for c in val.columns if c.startswith("p[")]:
        p_val, p_test = val[column].to_numpy(), test[column].to_numpy()
        bayes, calibrator = calibrated_bayes_threshold(y_val, p_val, prevalence)
        candidates = np.unique(p_test)
        accuracy = [np.mean((p_test >= t) == y_test) for t in candidates]
        rules = {"youden (val)": metrics.choose_threshold(y_val, p_val, method="youden"), "0.5": 0.5,
                 f"best expected accuracy at prevalence {prevalence} (val)":
                     metrics.prevalence_threshold(y_val, p_val, prevalence),
                 f"Platt-calibrated Bayes at prevalence {prevalence} (val)": bayes,
                 "hindsight (test): upper bound, not a result": float(candidates[int(np.argmax(accuracy))])}
        for rule, threshold in rules.items():
            called = p_test >= threshold
            rows.append({"model": column[2:-1], "rule": rule, "threshold": threshold,
                         "accuracy": np.mean(called == y_test), "specificity": np.mean(~called[y_test == 0]),
                         "recall": np.mean(called[y_test == 1]), "platt_slope": calibrator.coef_,
                         "platt_intercept": calibrator.intercept_})
    return pd.DataFrame(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a run folder whose evaluate stage has finished")
    parser.add_argument("--prevalence", type=float, default=0.625,
                        help="stated deployment prevalence of pneumonia (an assumption, not fitted on test)")
    parser.add_argument("--out", required=True, help="CSV to write")
    args = parser.parse_args(argv)
    tables = Path(args.run) / "tables"
    val, test = (pd.read_csv(tables / f"predictions_{role}.csv") for role in ("val", "test"))
    table = rules_table(val, test, args.prevalence)
    write_atomic(Path(args.out), table.to_csv(index=False))
    print(table.round(4).to_string(index=False))


if __name__ == "__main__":
    main()
