"""Stage: has the data moved between validation and test (or a folder of deployment images), and referral.

Reads the evaluate stage's cached predictions (``tables/predictions_{val,test}.csv``,
``tables/ensemble.json``); computes image features of both sets once (cached in
``tables/shift_image_features.csv``). Writes, for the test split (``<name>`` empty) or a
deployment folder added with ``pneumoxai shift --target DIR`` (``<name>`` = ``_`` + the
folder's name):

- ``tables/shift_summary<name>.csv``: one row per question (output shift, domain
  classifier, harm, prevalence by BBSE and EM, the threshold they suggest);
- ``tables/shift_output<name>.csv``: the KS test of each member and of the ensemble;
- ``tables/shift_features<name>.csv``: where it moved (features, quartile slices, subtypes);
- ``tables/shift_scores<name>.csv``: each image's target-likeness;
- ``tables/referral_curve.csv``, ``tables/referral_summary.csv`` (AURC, AUGRC),
  ``tables/referral_table.csv`` (5/10/20% referred), ``tables/referral_rule.csv`` (the
  guaranteed rule and its realised value on test), for the test split only (they need labels);
- ``figures/shift_features<name>``, ``figures/referral_curve``.
"""

import time
from pathlib import Path

import numpy as np
import pandas as pd

from .. import _io
from ..data import DEFAULT_CHUNK_SIZE
from ..errors import DataError, RunFolderError
from ..referral import CONFIDENCES, ReferralRule, augrc, aurc, referral_table, risk_coverage
from ..run_folder import (ENSEMBLE_RECORD, PRIMARY, REFERRAL_CURVE_FIGURE, REFERRAL_CURVE_TABLE, REFERRAL_RULE_TABLE,
                          REFERRAL_SUMMARY_TABLE, REFERRAL_TABLE, SHIFT_FEATURES_CACHE, SHIFT_TARGETS_RECORD,
                          predictions_table, shift_features_figure, shift_table, target_predictions_table)
from ..shift import domain_classifier, estimate_prevalence, feature_shift, output_shift_test, shift_harm
from ..slices import streamed_image_features
from ._common import PREDICTION_COLUMNS, logger, prediction_options, run_members

__all__ = ["shift_stage", "shift_target", "REFERRAL_TARGET", "REFERRAL_DELTA", "REFERRED"]

#: The referral guarantee: sensitivity on kept cases >= REFERRAL_TARGET with 1 - REFERRAL_DELTA confidence.
REFERRAL_TARGET, REFERRAL_DELTA = 0.95, 0.1
#: Shares referred in ``tables/referral_table.csv``.
REFERRED = (0.05, 0.1, 0.2)
#: Side at which the image features of the shift analysis are measured: both sets the same way, and
#: small enough to measure ~1,600 images in a minute on two cores.
FEATURE_SIZE = 128
#: Permutations of the domain classifier's p-value and bootstrap resamples of the prevalence intervals.
N_PERMUTATIONS, N_BOOT = 100, 200


def _predictions(run, role):
    needed = f"run `{run.command('evaluate')}` first"
    return run.read_table(predictions_table(role), columns=PREDICTION_COLUMNS, required=needed)


def _record(run):
    needed = f"run `{run.command('evaluate')}` first"
    record = run.read_json(run.table(ENSEMBLE_RECORD), required=needed)
    for key in ("primary", "members", "thresholds"):
        if key not in record:
            raise RunFolderError(f"{run.table(ENSEMBLE_RECORD)} lacks {key!r}; delete it and {needed}.")
    return record


def _image_features(run, paths, role, chunk_size):
    """:func:`pneumoxai.slices.image_features` of ``paths`` at FEATURE_SIZE, cached per path and role; the
    images are decoded ``chunk_size`` at a time, never all held."""
    cached = run.read_table(SHIFT_FEATURES_CACHE)
    if cached is not None and {"path", "role"} <= set(cached.columns):
        rows = cached[cached["role"] == role].drop_duplicates("path").set_index("path")
        if set(paths) <= set(rows.index):
            return rows.loc[list(paths)].drop(columns="role").reset_index(drop=True)
    features = streamed_image_features(list(paths), FEATURE_SIZE, chunk_size=chunk_size)
    fresh = features.assign(path=list(paths), role=role)
    if cached is not None and {"path", "role"} <= set(cached.columns):
        fresh = pd.concat([cached[cached["role"] != role], fresh], ignore_index=True)
    _io.write_csv(run.table(SHIFT_FEATURES_CACHE), fresh, index=False)
    return features


def _row(analysis, value, text, *, p_value=np.nan, ci=(np.nan, np.nan)):
    """One row of ``shift_summary``: a question, its number and the sentence that answers it."""
    return {"analysis": analysis, "value": value, "ci_low": ci[0], "ci_high": ci[1], "p_value": p_value,
            "text": text}


def shift_stage(run, config=None):
    """Shift between the validation and the test split, and referral on the test split.

    Parameters
    ----------
    run : RunFolder
    config : dict, default=None
        The run's resolved config; only ``evaluate.chunk_size`` is read (the default without one).

    Returns
    -------
    pandas.DataFrame
        The summary table (``tables/shift_summary.csv``).
    """
    started = time.perf_counter()
    record = _record(run)
    val, test = _predictions(run, "val"), _predictions(run, "test")
    chunk_size = DEFAULT_CHUNK_SIZE if config is None else config["evaluate"]["chunk_size"]
    summary = _shift_analysis(run, record, val, test, name=None, chunk_size=chunk_size)
    _referral(run, record, val, test)
    logger.info("shift: %s; %.1f s", summary.set_index("analysis").loc["output shift (Bonferroni)", "text"],
                time.perf_counter() - started)
    return summary


def _shift_analysis(run, record, val, target, *, name, chunk_size=DEFAULT_CHUNK_SIZE):
    """Write the shift tables of ``target`` against the validation split; return the summary."""
    from ..figures import plot_feature_shift

    primary = record["primary"]
    threshold = float(record["thresholds"][primary])
    labelled = "label" in target.columns and target["label"].notna().all()
    rows = _output_rows(run, record, val, target, name=name, labelled=labelled)
    f_val = _image_features(run, val["path"], "val", chunk_size)
    f_target = _image_features(run, target["path"], "test" if name is None else f"target_{name}", chunk_size)
    rows += _domain_rows(run, val, target, f_val, f_target, name=name, threshold=threshold,
                         p_val=val[f"p[{primary}]"].to_numpy())
    meta = ["subtype"] if labelled and "subtype" in target.columns else []
    moved = feature_shift(pd.concat([f_val, val[meta].reset_index(drop=True)], axis=1),
                          pd.concat([f_target, target[meta].reset_index(drop=True)], axis=1))
    _io.write_csv(run.table(shift_table("features", name)), moved, index=False)
    rows += _prevalence_rows(val, target, primary=primary, threshold=threshold, labelled=labelled,
                             moved_classes=[row["analysis"].split()[3] for row in rows if row["p_value"] < 0.05
                                            and row["analysis"].startswith("output shift within")])
    summary = pd.DataFrame(rows)
    _io.write_csv(run.table(shift_table("summary", name)), summary, index=False)
    plot_feature_shift(moved, path=run.figure_stem(shift_features_figure(name)))
    return summary


def _output_rows(run, record, val, target, *, name, labelled):
    """KS tests on the members' and the ensemble's probabilities, overall and (with labels) per class."""
    columns = [f"p[{m}]" for m in record["members"]] + [f"p[{record['primary']}]"]
    outputs = {combine: output_shift_test(val[columns], target[columns], combine=combine, random_state=0)
               for combine in ("bonferroni", "permutation")}
    _io.write_csv(run.table(shift_table("output", name)), outputs["bonferroni"]["table"], index=False)
    rows = [_row(f"output shift ({combine.capitalize()})", result["statistic"], p_value=result["p_value"],
                 text=f"largest KS distance {result['statistic']:.3f} over {result['n_tests']} probability "
                      f"columns, p = {result['p_value']:.2g}") for combine, result in outputs.items()]
    if not labelled:
        return rows
    for label, class_name in ((0, "NORMAL"), (1, "PNEUMONIA")):  # what remains once the class mix is taken out
        result = output_shift_test(val.loc[val["label"] == label, columns], target.loc[target["label"] == label,
                                                                                       columns])
        means = result["table"].iloc[-1]
        rows.append(_row(f"output shift within {class_name} (Bonferroni)", result["statistic"],
                         p_value=result["p_value"],
                         text=f"largest KS distance {result['statistic']:.3f} among {class_name} images, "
                              f"p = {result['p_value']:.2g}; mean ensemble probability "
                              f"{means['mean_ref']:.3f} (val) -> {means['mean_target']:.3f} (test)"))
    return rows


def _domain_rows(run, val, target, f_val, f_target, *, name, threshold, p_val):
    """The domain classifier on image features, each image's target-likeness, and the harm it predicts."""
    groups = ({"groups_ref": val["patient_id"].astype(str), "groups_target": target["patient_id"].astype(str)}
              if "patient_id" in target.columns and target["patient_id"].notna().all() else {})
    domain = domain_classifier(f_val, f_target, n_permutations=N_PERMUTATIONS, random_state=0, **groups)
    _io.write_csv(run.table(shift_table("scores", name)), pd.DataFrame({
        "path": list(val["path"]) + list(target["path"]),
        "role": ["val"] * len(val) + ["target"] * len(target),
        "target_likeness": np.r_[domain["score_ref"], domain["score_target"]]}), index=False)
    harm = shift_harm(val["label"].to_numpy(), p_val, domain["score_ref"], threshold=threshold, top=0.2)
    return [
        _row("domain classifier (image features)", domain["auc"], p_value=domain["p_value"],
             text=f"ROC AUC {domain['auc']:.3f} telling target from validation images, "
                  f"permutation p = {domain['p_value']:.2g}"),
        _row("harm: accuracy on the 20% most target-like validation images", harm["accuracy_target_like"],
             p_value=harm["p_value"],
             text=f"accuracy {harm['accuracy_target_like']:.3f} on the most target-like validation images "
                  f"against {harm['accuracy_all']:.3f} on all (Fisher p = {harm['p_value']:.2g})"),
    ]


def _prevalence_rows(val, target, *, primary, threshold, labelled, moved_classes):
    """BBSE and EM estimates of the target's PNEUMONIA share and the thresholds they suggest."""
    from ..metrics import prevalence_threshold

    y_val, p_val = val["label"].to_numpy(), val[f"p[{primary}]"].to_numpy()
    true = float(target["label"].mean()) if labelled else np.nan
    # Both estimators assume label shift (P(image | class) unchanged); a class that moved by itself biases them.
    caveat = (f"; label shift violated (the {' and '.join(moved_classes)} images themselves moved), so the "
              "estimate is biased" if moved_classes else "")
    rows = []
    for method in ("bbse", "em"):
        estimate = estimate_prevalence(y_val, p_val, target[f"p[{primary}]"].to_numpy(), method=method,
                                       threshold=threshold, n_boot=N_BOOT, random_state=0)
        rows.append(_row(f"prevalence ({method.upper()})", estimate["prevalence"],
                         ci=(estimate["ci_low"], estimate["ci_high"]),
                         text=f"estimated PNEUMONIA share {estimate['prevalence']:.3f} "
                              f"[{estimate['ci_low']:.3f}, {estimate['ci_high']:.3f}]"
                              + (f" (true {true:.3f})" if labelled else "")
                              + f"; validation {estimate['reference_prevalence']:.3f}{caveat}"))
        rows.append(_row(f"threshold for the {method.upper()} prevalence", estimate["threshold"],
                         text=f"threshold {estimate['threshold']:.3f} (chosen on validation: {threshold:.3f})"))
    if labelled:
        at_true = prevalence_threshold(y_val, p_val, true)
        rows.append(_row("prevalence (true)", true, text=f"true PNEUMONIA share {true:.3f}"))
        rows.append(_row("threshold for the true prevalence", at_true,
                         text=f"threshold {at_true:.3f} by the same rule"))
    return rows


def _referral(run, record, val, test):
    """Risk-coverage, AURC/AUGRC, the referral table and the guaranteed rule, on the test split."""
    from ..figures import plot_risk_coverage

    members, primary = record["members"], record["primary"]
    threshold = float(record["thresholds"][primary])
    sets = {role: (frame["label"].to_numpy(), frame[f"p[{primary}]"].to_numpy(),
                   frame[[f"p[{m}]" for m in members]].to_numpy()) for role, frame in (("val", val), ("test", test))}
    confidences = CONFIDENCES if len(members) > 1 else ("margin", "logit_margin")
    curves, summary, tables, rules = {}, [], [], []
    for confidence in confidences:
        for role, (y, p, P) in sets.items():
            options = dict(threshold=threshold, confidence=confidence, P=P)
            curve = risk_coverage(y, p, **options)
            curves[f"{confidence} ({role})"] = curve
            summary.append({"confidence": confidence, "role": role, "aurc": aurc(y, p, **options),
                            "augrc": augrc(y, p, **options), "error_rate": float(curve["risk"].iloc[-1])})
        y, p, P = sets["test"]
        tables.append(referral_table(y, p, threshold=threshold, fractions=REFERRED, confidence=confidence, P=P)
                      .assign(confidence=confidence))
        rule = ReferralRule(target=REFERRAL_TARGET, delta=REFERRAL_DELTA, threshold=threshold,
                            confidence=confidence).fit(*sets["val"])
        realised = rule.evaluate(*sets["test"])
        rules.append({"confidence": confidence, "val_referral": rule.referral_, "cutoff": rule.cutoff_, **realised})
    curve_table = pd.concat([c.assign(curve=label) for label, c in curves.items()], ignore_index=True)
    _io.write_csv(run.table(REFERRAL_CURVE_TABLE), curve_table, index=False)
    _io.write_csv(run.table(REFERRAL_SUMMARY_TABLE), pd.DataFrame(summary), index=False)
    _io.write_csv(run.table(REFERRAL_TABLE), pd.concat(tables, ignore_index=True), index=False)
    _io.write_csv(run.table(REFERRAL_RULE_TABLE), pd.DataFrame(rules), index=False)
    shown = ("margin", "logit_margin", "agreement")
    plot_risk_coverage({label: curve for label, curve in curves.items() if label.split()[0] in shown},
                       path=run.figure_stem(REFERRAL_CURVE_FIGURE))


def _folder_images(folder):
    from ..data import IMAGE_EXTENSIONS

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"The target folder {str(folder)!r} does not exist or is not a folder.")
    paths = sorted(str(p.resolve()) for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise DataError(f"The target folder {str(folder)!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
    return paths


def shift_target(run, config, folder, *, name=None):
    """``pneumoxai shift --target DIR``: an unlabelled folder of deployment images against validation.

    The run's model members predict the folder's images (cached like the test split's);
    the primary ensemble's probability is their mean (soft voting, as in the evaluate
    stage). Writes ``tables/shift_*_<name>.csv``, ``tables/predictions_target_<name>.csv``
    and ``figures/shift_features_<name>``, and records the target in
    ``tables/shift_targets.json`` for the report.

    Parameters
    ----------
    run : RunFolder
    config : dict
        The run's resolved config.
    folder : path-like
        Images (``.jpeg``, ``.jpg``, ``.png``), searched recursively; no labels needed.
    name : str, default=None
        Name of the target in file names; default the folder's name.

    Returns
    -------
    pandas.DataFrame
        The summary table.
    """
    from ..models import Member

    record = _record(run)
    if record["primary"] != PRIMARY:
        raise RunFolderError(f"shift --target averages the members (soft voting); this run's primary is "
                             f"{record['primary']!r}.")
    name = name or Path(folder).resolve().name
    if not name.replace("-", "").replace("_", "").isalnum():
        raise DataError(f"The target name {name!r} must hold only letters, digits, '-' and '_'.")
    paths = _folder_images(folder)
    members = run_members(run, config)
    imported = [member.name for member in members if not member.is_model]
    if imported:
        raise RunFolderError(f"Member(s) {imported} are imported prediction files and cannot score new images; "
                             "shift --target needs model members.")
    rows = pd.DataFrame({"path": paths, "label": 0})  # the label only enters the cache key
    P = Member.predict_many(members, rows, **prediction_options(run, config))
    target = pd.DataFrame({"path": paths, **{f"p[{column}]": P[column].to_numpy() for column in P.columns}})
    target[f"p[{PRIMARY}]"] = P.mean(axis=1).to_numpy()
    _io.write_csv(run.table(target_predictions_table(name)), target, index=False)
    summary = _shift_analysis(run, record, _predictions(run, "val"), target, name=name,
                              chunk_size=config["evaluate"]["chunk_size"])
    targets = run.read_json(run.table(SHIFT_TARGETS_RECORD)) or {}
    targets[name] = {"folder": str(Path(folder).resolve()), "n_images": len(paths)}
    _io.write_json(run.table(SHIFT_TARGETS_RECORD), targets)
    logger.info("shift: target %r: %d images", name, len(paths))
    return summary
