"""Stage 3: member predictions on val and test, combiners fitted on val, results on test."""

import time
import warnings

import numpy as np
import pandas as pd

from .. import _io
from ..run_folder import (COMPARISONS_TABLE, DIVERSITY_TABLE, ENSEMBLE_RECORD, ENSEMBLE_SIZE_TABLE, PRIMARY,
                          RESULTS_MARKDOWN, RESULTS_TABLE, TRAIN_PATHS_FILE, predictions_table)
from ._common import PREDICTION_COLUMNS, load_table, logger, prediction_options, run_members


def member_predictions(run, config, role, *, table=None, progress=True):
    """Member probabilities for one role (val / test), from the run's content-hash cache.

    Returns
    -------
    P : pandas.DataFrame of shape (n_samples, n_members)
        Columns are member names.
    rows : pandas.DataFrame
        The dataset rows, aligned with ``P``.
    """
    from ..models import Member

    table = load_table(run) if table is None else table
    rows = table[table["role"] == role].reset_index(drop=True)
    return Member.predict_many(run_members(run, config), rows, **prediction_options(run, config),
                               progress=progress), rows


def _trained_on(run, config, rows):
    """(n_rows, n_members) bool: was the row in that member's training data."""
    from ..config import analysis_members

    columns = []
    for member in analysis_members(config):
        if member["imported"]:
            # Its training images are unknown here; `pneumoxai import` told the user to keep them out.
            columns.append(np.zeros(len(rows), dtype=bool))
            continue
        paths = set(_io.read_json(run.member_dir(member["trained_as"]) / TRAIN_PATHS_FILE))
        columns.append(rows["path"].isin(paths).to_numpy())
    return np.column_stack(columns)


def _threshold(y_val, p_val, evaluate_cfg):
    """The decision threshold, chosen on validation only: a fixed number, the configured rule, or, with
    ``deployment_prevalence``, the best expected accuracy at that prevalence (a stated prior-shift correction)."""
    from ..metrics import choose_threshold, prevalence_threshold

    method = evaluate_cfg["threshold"]
    if not isinstance(method, str):
        return float(method)
    if evaluate_cfg["deployment_prevalence"] is not None:
        return float(prevalence_threshold(y_val, p_val, evaluate_cfg["deployment_prevalence"]))
    target = evaluate_cfg["target_sensitivity"] if method == "sensitivity" else None
    return float(choose_threshold(y_val, p_val, method=method, target=target))


def evaluate_stage(run, config, *, verbose="auto"):
    """Member predictions on val and test, combiners fitted on val, results on test.

    Combiners that learn (optimized soft voting, stacking) are fitted on the
    patient-grouped validation split, which no member was trained on (checked against
    each member's recorded training files). Each model's threshold is chosen on
    validation data (``evaluate.threshold``) and applied unchanged to the test split.

    Writes ``tables/results.csv``, ``tables/results.md``, ``tables/predictions_{val,test}.csv``,
    ``tables/comparisons.csv``, ``tables/diversity.csv``, ``tables/ensemble_size.csv``,
    ``tables/ensemble.json`` and the evaluation figures.

    Returns
    -------
    pandas.DataFrame
        The results table.
    """
    started = time.perf_counter()
    table = load_table(run)
    P_val, val_rows = member_predictions(run, config, "val", table=table, progress=verbose != 0)
    P_test, test_rows = member_predictions(run, config, "test", table=table, progress=verbose != 0)
    val_probs, test_probs, fitted = _fit_combiners(run, config, P_val, val_rows, P_test)
    y_val, y_test = val_rows["label"].to_numpy(), test_rows["label"].to_numpy()
    thresholds = {name: _threshold(y_val, val_probs[name], config["evaluate"]) for name in test_probs}
    # The origin's reported row belongs beside its own recipe, not beside models pneumoxai did not train.
    origin_recipe = not any(m["imported"] for m in config["members"])
    results = _results(run, config["evaluate"], y_test, test_probs, thresholds, test_rows["patient_id"].to_numpy(),
                       reference=origin_recipe)
    names = list(P_val.columns)
    best_member = max(names, key=lambda n: results.loc[n, "roc_auc"])
    _write_comparisons(run, y_test, test_probs, thresholds, best_member)
    for role, rows, probs in (("val", val_rows, val_probs), ("test", test_rows, test_probs)):
        _write_predictions(run, role, rows, probs)
    calibrator = _write_ensemble_record(run, names, val_probs, y_val, thresholds, fitted, best_member)
    size_curve = _write_diversity(run, P_val, y_val, P_test, y_test)
    _evaluation_figures(run, y_test, test_probs, thresholds, best_member, list(fitted), calibrator, size_curve)
    logger.info("evaluate: %.1f s", time.perf_counter() - started)
    return results


def _fit_combiners(run, config, P_val, val_rows, P_test):
    """Fit every combiner on validation predictions; return val and test probabilities of all models."""
    from ..ensemble import HardVoting, SoftVoting, Stacking

    names = list(P_val.columns)
    y_val = val_rows["label"].to_numpy()
    combiners = {PRIMARY: SoftVoting(), "soft voting (optimized)": SoftVoting(weights="optimize"),
                 "hard voting": HardVoting()}
    folds = config["evaluate"]["stacking_cv"]
    smaller_class = int(min(y_val.sum(), len(y_val) - y_val.sum()))
    if len(names) > 1 and smaller_class >= folds:
        combiners["stacking"] = Stacking(cv=folds, features="logit")
    elif len(names) > 1:
        warnings.warn(f"Stacking left out: its {folds} cross-validation folds need as many validation images of "
                      f"each class, and the smaller class has {smaller_class} (lower evaluate.stacking_cv or "
                      "enlarge the validation split).", UserWarning, stacklevel=3)
    val_probs = {name: P_val[name].to_numpy() for name in names}
    test_probs = {name: P_test[name].to_numpy() for name in names}
    for label, combiner in combiners.items():
        if isinstance(combiner, Stacking):
            combiner.fit(P_val, y_val, trained_on=_trained_on(run, config, val_rows), groups=val_rows["patient_id"])
            val_probs[label] = combiner.oof_proba_[:, 1]  # honest val scores for the threshold choice
        else:
            val_probs[label] = combiner.fit(P_val, y_val).predict_proba(P_val)[:, 1]
        test_probs[label] = combiner.predict_proba(P_test)[:, 1]
    return val_probs, test_probs, combiners


def _results(run, evaluate_cfg, y_test, test_probs, thresholds, groups, *, reference):
    """The results table, with the primary ensemble at 0.5 too (the origin reported at 0.5)."""
    from ..metrics import results_table, table_to_markdown

    options = dict(n_boot=evaluate_cfg["n_boot"], ci=evaluate_cfg["ci"], seed=0, groups=groups)
    results = results_table(y_test, test_probs, threshold=thresholds, reference=reference, **options)
    at_half = results_table(y_test, {f"{PRIMARY} @0.5": test_probs[PRIMARY]}, threshold=0.5, reference=False,
                            **options)
    split = len(results) - 1 if reference else len(results)
    results = pd.concat([results.iloc[:split], at_half, results.iloc[split:]])
    _io.write_csv(run.table(RESULTS_TABLE), results)
    _io.write_text(run.table(RESULTS_MARKDOWN), table_to_markdown(results) + "\n")
    return results


def _write_comparisons(run, y_test, test_probs, thresholds, best_member):
    """Paired tests: the ensemble against its best member, and stacking against soft voting."""
    from ..metrics import compare

    pairs = [(best_member, PRIMARY)] + ([(PRIMARY, "stacking")] if "stacking" in test_probs else [])
    rows = []
    for a, b in pairs:
        result = compare(y_test, test_probs[a], test_probs[b], threshold=(thresholds[a], thresholds[b]))
        rows.append({"model_a": a, "model_b": b, **{k: v for k, v in result.items() if np.isscalar(v)}})
    _io.write_csv(run.table(COMPARISONS_TABLE), pd.DataFrame(rows), index=False)


def _write_predictions(run, role, rows, probs):
    out = rows[list(PREDICTION_COLUMNS)].copy()
    for name, values in probs.items():
        out[f"p[{name}]"] = values
    _io.write_csv(run.table(predictions_table(role)), out, index=False)


def _write_ensemble_record(run, names, val_probs, y_val, thresholds, fitted, best_member):
    from ..calibration import TemperatureScaling

    calibrator = TemperatureScaling().fit(val_probs[PRIMARY], y_val)
    _io.write_json(run.table(ENSEMBLE_RECORD), {
        "primary": PRIMARY,
        "members": names,
        "thresholds": thresholds,
        "optimized_weights": dict(zip(names, map(float, fitted["soft voting (optimized)"].weights_))),
        "temperature": float(calibrator.temperature_),
        "best_member": best_member,
    })
    return calibrator


def _write_diversity(run, P_val, y_val, P_test, y_test):
    """Pairwise diversity on test and the greedy ensemble-size curve on val (None for one member)."""
    from ..ensemble import diversity, ensemble_size_curve

    if P_val.shape[1] < 2:
        return None
    _io.write_csv(run.table(DIVERSITY_TABLE), diversity(P_test, y_test, threshold=0.5), index=False)
    size_curve = ensemble_size_curve(P_val, y_val, combiner="soft", metric="roc_auc")
    _io.write_csv(run.table(ENSEMBLE_SIZE_TABLE), size_curve, index=False)
    return size_curve


def _evaluation_figures(run, y_test, test_probs, thresholds, best_member, combiners, calibrator, size_curve):
    from .. import figures

    stem = run.figure_stem
    figures.plot_roc(y_test, test_probs, path=stem("roc"))
    figures.plot_pr(y_test, test_probs, path=stem("pr"))
    figures.plot_confusion_matrices(y_test, {k: test_probs[k] for k in [best_member, *combiners]},
                                    threshold=0.5, path=stem("confusion"))
    figures.plot_reliability(y_test, {
        PRIMARY: test_probs[PRIMARY],
        f"{PRIMARY} (temperature-scaled)": calibrator.predict_proba(test_probs[PRIMARY])[:, 1],
        best_member: test_probs[best_member]}, path=stem("reliability"))
    figures.plot_threshold_analysis(y_test, test_probs[PRIMARY], threshold=thresholds[PRIMARY],
                                    path=stem("threshold"))
    if size_curve is not None:
        figures.plot_diversity(run.read_table(DIVERSITY_TABLE), path=stem("diversity"))
        figures.plot_ensemble_size(size_curve, ylabel="val ROC AUC", path=stem("ensemble_size"))
