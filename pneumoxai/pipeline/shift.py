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
from ..errors import DataError, RunFolderError
from ._common import PREDICTION_COLUMNS, logger, prediction_options, run_members

__all__ = ["shift_stage", "shift_target", "REFERRAL_TARGET", "REFERRAL_DELTA", "REFERRED"]

#: The referral guarantee: sensitivity on kept cases >= REFERRAL_TARGET with 1 - REFERRAL_DELTA confidence.
REFERRAL_TARGET, REFERRAL_DELTA = 0.95, 0.1
#: Shares referred in ``tables/referral_table.csv``.
REFERRED = (0.05, 0.1, 0.2)
#: Side at which the image features of the shift analysis are measured: both sets the same way, and
#: small enough to measure ~1,600 images in a minute on two cores.
FEATURE_SIZE = 128
FEATURES_FILE = "shift_image_features.csv"
#: Permutations of the domain classifier's p-value and bootstrap resamples of the prevalence intervals.
N_PERMUTATIONS, N_BOOT = 100, 200


def _predictions(run, role):
    needed = f"run `{run.command('evaluate')}` first"
    return run.read_table(f"predictions_{role}.csv", columns=PREDICTION_COLUMNS, required=needed)


def _record(run):
    needed = f"run `{run.command('evaluate')}` first"
    record = run.read_json(run.table("ensemble.json"), required=needed)
    for key in ("primary", "members", "thresholds"):
        if key not in record:
            raise RunFolderError(f"{run.table('ensemble.json')} lacks {key!r}; delete it and {needed}.")
    return record


def _image_features(run, paths, role):
    """:func:`pneumoxai.slices.image_features` of ``paths`` at FEATURE_SIZE, cached per path and role."""
    from ..data import load_images
    from ..slices import image_features

    cached = run.read_table(FEATURES_FILE)
    if cached is not None and {"path", "role"} <= set(cached.columns):
        rows = cached[cached["role"] == role].drop_duplicates("path").set_index("path")
        if set(paths) <= set(rows.index):
            return rows.loc[list(paths)].drop(columns="role").reset_index(drop=True)
    features = image_features(load_images(list(paths), FEATURE_SIZE))
    fresh = features.assign(path=list(paths), role=role)
    if cached is not None and {"path", "role"} <= set(cached.columns):
        fresh = pd.concat([cached[cached["role"] != role], fresh], ignore_index=True)
    _io.write_csv(run.table(FEATURES_FILE), fresh, index=False)
    return features


def _suffix(name):
    return "" if name is None else f"_{name}"


def shift_stage(run, config=None):
    """Shift between the validation and the test split, and referral on the test split.

    Parameters
    ----------
    run : RunFolder
    config : dict, default=None
        Unused; the stages share one signature.

    Returns
    -------
    pandas.DataFrame
        The summary table (``tables/shift_summary.csv``).
    """
    started = time.perf_counter()
    record = _record(run)
    val, test = _predictions(run, "val"), _predictions(run, "test")
    summary = _shift_analysis(run, record, val, test, name=None)
    _referral(run, record, val, test)
    logger.info("shift: %s; %.1f s", summary.set_index("analysis").loc["output shift (Bonferroni)", "text"],
                time.perf_counter() - started)
    return summary


def _shift_analysis(run, record, val, target, *, name):
    """Write the shift tables of ``target`` against the validation split; return the summary."""
    from ..shift import domain_classifier, feature_shift, output_shift_test, shift_harm

    members, primary = record["members"], record["primary"]
    threshold = float(record["thresholds"][primary])
    columns = [f"p[{m}]" for m in members] + [f"p[{primary}]"]
    y_val = val["label"].to_numpy()
    p_val, p_target = val[f"p[{primary}]"].to_numpy(), target[f"p[{primary}]"].to_numpy()
    suffix = _suffix(name)
    labelled = "label" in target.columns and target["label"].notna().all()
    rows = []
    outputs = {combine: output_shift_test(val[columns], target[columns], combine=combine, random_state=0)
               for combine in ("bonferroni", "permutation")}
    _io.write_csv(run.table(f"shift_output{suffix}.csv"), outputs["bonferroni"]["table"], index=False)
    for combine, result in outputs.items():
        rows.append({"analysis": f"output shift ({combine.capitalize()})", "value": result["statistic"],
                     "ci_low": np.nan, "ci_high": np.nan, "p_value": result["p_value"],
                     "text": f"largest KS distance {result['statistic']:.3f} over {result['n_tests']} probability "
                             f"columns, p = {result['p_value']:.2g}"})

    if labelled:  # within each class: what remains once the class mix (prior shift) is taken out
        for label, class_name in ((0, "NORMAL"), (1, "PNEUMONIA")):
            result = output_shift_test(val.loc[y_val == label, columns], target.loc[target["label"] == label, columns])
            rows.append({"analysis": f"output shift within {class_name} (Bonferroni)", "value": result["statistic"],
                         "ci_low": np.nan, "ci_high": np.nan, "p_value": result["p_value"],
                         "text": f"largest KS distance {result['statistic']:.3f} among {class_name} images, "
                                 f"p = {result['p_value']:.2g}; mean ensemble probability "
                                 f"{result['table']['mean_ref'].iloc[-1]:.3f} (val) -> "
                                 f"{result['table']['mean_target'].iloc[-1]:.3f} (test)"})

    f_val = _image_features(run, val["path"], "val")
    f_target = _image_features(run, target["path"], "test" if name is None else f"target{suffix}")
    groups = ({"groups_ref": val["patient_id"].astype(str), "groups_target": target["patient_id"].astype(str)}
              if "patient_id" in target.columns and target["patient_id"].notna().all() else {})
    domain = domain_classifier(f_val, f_target, n_permutations=N_PERMUTATIONS, random_state=0, **groups)
    rows.append({"analysis": "domain classifier (image features)", "value": domain["auc"], "ci_low": np.nan,
                 "ci_high": np.nan, "p_value": domain["p_value"],
                 "text": f"ROC AUC {domain['auc']:.3f} telling target from validation images, "
                         f"permutation p = {domain['p_value']:.2g}"})
    _io.write_csv(run.table(f"shift_scores{suffix}.csv"), pd.DataFrame({
        "path": list(val["path"]) + list(target["path"]),
        "role": ["val"] * len(val) + ["target"] * len(target),
        "target_likeness": np.r_[domain["score_ref"], domain["score_target"]]}), index=False)

    harm = shift_harm(y_val, p_val, domain["score_ref"], threshold=threshold, top=0.2)
    rows.append({"analysis": "harm: accuracy on the 20% most target-like validation images",
                 "value": harm["accuracy_target_like"], "ci_low": np.nan, "ci_high": np.nan,
                 "p_value": harm["p_value"],
                 "text": f"accuracy {harm['accuracy_target_like']:.3f} on the most target-like validation images "
                         f"against {harm['accuracy_all']:.3f} on all (Fisher p = {harm['p_value']:.2g})"})

    meta = ["subtype"] if labelled and "subtype" in target.columns else []
    moved = feature_shift(pd.concat([f_val, val[meta].reset_index(drop=True)], axis=1),
                          pd.concat([f_target, target[meta].reset_index(drop=True)], axis=1))
    _io.write_csv(run.table(f"shift_features{suffix}.csv"), moved, index=False)

    rows += _prevalence_rows(rows, y_val, p_val, p_target, target, threshold=threshold, labelled=labelled)
    summary = pd.DataFrame(rows)
    _io.write_csv(run.table(f"shift_summary{suffix}.csv"), summary, index=False)
    _shift_figure(run, moved, suffix)
    return summary


def _prevalence_rows(earlier, y_val, p_val, p_target, target, *, threshold, labelled):
    """Summary rows of the prevalence estimates on ``target`` (caveated by the class-wise shift in ``earlier``)."""
    from ..shift import estimate_prevalence

    rows = []
    true = float(target["label"].mean()) if labelled else np.nan
    # Both estimators assume label shift (P(image | class) unchanged); a class that moved by itself biases them.
    moved_classes = [row["analysis"].split()[3] for row in earlier
                     if row["analysis"].startswith("output shift within") and row["p_value"] < 0.05]
    caveat = (f"; label shift violated (the {' and '.join(moved_classes)} images themselves moved), so the "
              "estimate is biased" if moved_classes else "")
    for method in ("bbse", "em"):
        estimate = estimate_prevalence(y_val, p_val, p_target, method=method, threshold=threshold, n_boot=N_BOOT,
                                       random_state=0)
        rows.append({"analysis": f"prevalence ({method.upper()})", "value": estimate["prevalence"],
                     "ci_low": estimate["ci_low"], "ci_high": estimate["ci_high"], "p_value": np.nan,
                     "text": f"estimated PNEUMONIA share {estimate['prevalence']:.3f} "
                             f"[{estimate['ci_low']:.3f}, {estimate['ci_high']:.3f}]"
                             + (f" (true {true:.3f})" if labelled else "")
                             + f"; validation {estimate['reference_prevalence']:.3f}{caveat}"})
        rows.append({"analysis": f"threshold for the {method.upper()} prevalence", "value": estimate["threshold"],
                     "ci_low": np.nan, "ci_high": np.nan, "p_value": np.nan,
                     "text": f"threshold {estimate['threshold']:.3f} (chosen on validation: {threshold:.3f})"})
    if labelled:
        from ..metrics import prevalence_threshold

        at_true = prevalence_threshold(y_val, p_val, true)
        rows.append({"analysis": "prevalence (true)", "value": true, "ci_low": np.nan, "ci_high": np.nan,
                     "p_value": np.nan, "text": f"true PNEUMONIA share {true:.3f}"})
        rows.append({"analysis": "threshold for the true prevalence", "value": at_true, "ci_low": np.nan,
                     "ci_high": np.nan, "p_value": np.nan, "text": f"threshold {at_true:.3f} by the same rule"})
    return rows


def _shift_figure(run, moved, suffix):
    from .._figures_shift import plot_feature_shift

    plot_feature_shift(moved, path=run.figure_stem(f"shift_features{suffix}"))


def _referral(run, record, val, test):
    """Risk-coverage, AURC/AUGRC, the referral table and the guaranteed rule, on the test split."""
    from .._figures_shift import plot_risk_coverage
    from ..referral import CONFIDENCES, ReferralRule, augrc, aurc, referral_table, risk_coverage

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
    _io.write_csv(run.table("referral_curve.csv"), curve_table, index=False)
    _io.write_csv(run.table("referral_summary.csv"), pd.DataFrame(summary), index=False)
    _io.write_csv(run.table("referral_table.csv"), pd.concat(tables, ignore_index=True), index=False)
    _io.write_csv(run.table("referral_rule.csv"), pd.DataFrame(rules), index=False)
    plot_risk_coverage({label: curves[label] for label in curves if label.split()[0] in ("margin", "logit_margin",
                                                                                        "agreement")},
                       path=run.figure_stem("referral_curve"))


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
    from ..run_folder import PRIMARY

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
    target = pd.DataFrame({"path": paths, **{f"p[{m.name}]": P[:, j] for j, m in enumerate(members)}})
    target[f"p[{PRIMARY}]"] = P.mean(axis=1)
    _io.write_csv(run.table(f"predictions_target_{name}.csv"), target, index=False)
    summary = _shift_analysis(run, record, _predictions(run, "val"), target, name=name)
    targets = run.read_json(run.table("shift_targets.json")) or {}
    targets[name] = {"folder": str(Path(folder).resolve()), "n_images": len(paths)}
    _io.write_json(run.table("shift_targets.json"), targets)
    logger.info("shift: target %r: %d images", name, len(paths))
    return summary
