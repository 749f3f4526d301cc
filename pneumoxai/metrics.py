"""Classification metrics with bootstrap intervals, model comparison and calibration.

Every function works on plain arrays: ``y_true`` holds 0/1 labels (1 = PNEUMONIA) and
``y_prob`` the predicted probability of PNEUMONIA, both of shape ``(n_samples,)``. A sample
is called positive when ``y_prob >= threshold``.

Confidence intervals come from a stratified percentile bootstrap: each resample keeps the
number of NORMAL and PNEUMONIA units fixed, and when patient ids are given the unit is the
patient, so images of one patient never count as independent evidence.
"""

import warnings

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    matthews_corrcoef,
    precision_score,
    recall_score,
    roc_auc_score,
)

from .errors import ConfigError, DataError, param_error
from .validation import (
    OPEN_UNIT_INTERVAL,
    SEED,
    UNIT_INTERVAL,
    Interval,
    Options,
    check_binary,
    check_groups,
    check_param,
)

__all__ = [
    "METRICS",
    "REPORTED_ORIGIN",
    "ORIGIN_ROW",
    "evaluate",
    "choose_threshold",
    "prevalence_threshold",
    "compare",
    "reliability_bins",
    "expected_calibration_error",
    "results_table",
    "table_to_markdown",
]

#: Scalar metrics reported by :func:`evaluate`, in table order.
METRICS = (
    "accuracy", "precision", "recall", "specificity", "f1", "roc_auc",
    "average_precision", "mcc", "balanced_accuracy", "brier", "ece",
)

#: Test-set figures reported by the original project; they are quoted, not recomputed.
REPORTED_ORIGIN = {"accuracy": 0.902, "precision": 0.884, "recall": 0.921, "f1": 0.902, "roc_auc": 0.96}

#: Name of the results-table row that holds the origin project's published metrics.
ORIGIN_ROW = "origin (reported)"
_THRESHOLD_METHODS = ("youden", "sensitivity", "f1")
_N_BINS = Interval("int", 1, 10_000)
_N_BOOT = Interval("int", 0, 1_000_000)
_ECE_BINS = 10  # binning of the "ece" metric in evaluate and results_table
# Bootstrap resamples are processed in blocks of at most this many (resample, sample) cells
# so memory stays bounded on large test sets.
_BOOT_BLOCK_CELLS = 2_000_000


# ---------------------------------------------------------------------------- input checks


# ---------------------------------------------------------------------------- calibration


def _bin_index(y_prob, n_bins):
    """Equal-width bin of each probability; bins are [a, b) except the last, [a, 1]."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.clip(np.searchsorted(edges, y_prob, side="right") - 1, 0, n_bins - 1)


def reliability_bins(y_true, y_prob, n_bins=10):
    """Per-bin mean predicted probability and observed PNEUMONIA frequency.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        0/1 labels, 1 = PNEUMONIA.
    y_prob : array-like of shape (n_samples,)
        Predicted probability of PNEUMONIA.
    n_bins : int, default=10
        Number of equal-width bins on [0, 1].

    Returns
    -------
    pandas.DataFrame of shape (n_bins, 5)
        Columns ``bin_lower``, ``bin_upper``, ``mean_predicted``, ``observed_frequency``
        and ``count``; empty bins have count 0 and NaN means.

    Examples
    --------
    >>> bins = reliability_bins([0, 0, 1, 1], [0.1, 0.2, 0.7, 0.9], n_bins=2)
    >>> bins[["count", "observed_frequency"]].values.tolist()
    [[2.0, 0.0], [2.0, 1.0]]
    """
    y, p = check_binary(y_true, y_prob, owner="reliability_bins")
    check_param("reliability_bins", "n_bins", n_bins, _N_BINS)
    idx = _bin_index(p, n_bins)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_pred = np.bincount(idx, weights=p, minlength=n_bins) / count
        observed = np.bincount(idx, weights=y, minlength=n_bins) / count
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return pd.DataFrame({
        "bin_lower": edges[:-1],
        "bin_upper": edges[1:],
        "mean_predicted": mean_pred,
        "observed_frequency": observed,
        "count": count,
    })


def expected_calibration_error(y_true, y_prob, n_bins=10):
    """Expected calibration error: count-weighted mean ``|mean predicted - observed|`` over bins.

    Uses the equal-width bins of :func:`reliability_bins` (Naeini et al., 2015;
    Guo et al., 2017).

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        0/1 labels, 1 = PNEUMONIA.
    y_prob : array-like of shape (n_samples,)
        Predicted probability of PNEUMONIA.
    n_bins : int, default=10
        Number of equal-width bins on [0, 1].

    Returns
    -------
    float
        ECE in [0, 1]; 0 is perfectly calibrated at this binning.

    Examples
    --------
    >>> round(expected_calibration_error([0, 0, 1, 1], [0.1, 0.2, 0.7, 0.9], n_bins=2), 3)
    0.175
    """
    y, p = check_binary(y_true, y_prob, owner="expected_calibration_error")
    check_param("expected_calibration_error", "n_bins", n_bins, _N_BINS)
    gap = np.bincount(_bin_index(p, n_bins), weights=p - y, minlength=n_bins)
    return float(np.abs(gap).sum() / p.size)


# ---------------------------------------------------------------------------- evaluate


def _point_metrics(y, p, threshold):
    """Every metric of :data:`METRICS` computed by scikit-learn, plus the confusion matrix."""
    pred = (p >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel().tolist()
    values = {
        "accuracy": accuracy_score(y, pred),
        "precision": precision_score(y, pred, zero_division=0),
        "recall": recall_score(y, pred, zero_division=0),
        "specificity": recall_score(y, pred, pos_label=0, zero_division=0),
        "f1": f1_score(y, pred, zero_division=0),
        "roc_auc": roc_auc_score(y, p),
        "average_precision": average_precision_score(y, p),
        "mcc": matthews_corrcoef(y, pred),
        "balanced_accuracy": balanced_accuracy_score(y, pred),
        "brier": brier_score_loss(y, p),
        "ece": expected_calibration_error(y, p, _ECE_BINS),
    }
    return {k: float(v) for k, v in values.items()}, [[tn, fp], [fn, tp]]


def _ratio(num, den):
    """num / den, 0 where den is 0 (scikit-learn's zero_division=0 convention)."""
    out = np.zeros_like(num, dtype=float)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _weighted_metrics(y, p, threshold, weights):
    """Every metric of :data:`METRICS` for each row of case weights.

    A bootstrap resample is the original sample with integer multiplicities, so each
    metric is a weighted metric; computing them from sums keeps 1000 resamples fast.

    Parameters
    ----------
    y, p : numpy.ndarray of shape (n_samples,)
    threshold : float
    weights : numpy.ndarray of shape (n_rows, n_samples)

    Returns
    -------
    dict of str -> numpy.ndarray of shape (n_rows,)
    """
    pos = y == 1
    pred = p >= threshold
    tp = weights @ (pos & pred)
    fp = weights @ (~pos & pred)
    fn = weights @ (pos & ~pred)
    tn = weights @ (~pos & ~pred)
    total = tp + fp + fn + tn
    recall = _ratio(tp, tp + fn)
    specificity = _ratio(tn, tn + fp)
    mcc_den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))

    # Ranking metrics: aggregate weights per distinct score, highest score first.
    order = np.argsort(-p, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(p[order]) != 0])
    w_sorted = weights[:, order]
    w_pos = np.add.reduceat(w_sorted * pos[order], starts, axis=1)
    w_neg = np.add.reduceat(w_sorted * ~pos[order], starts, axis=1)
    n_pos, n_neg = w_pos.sum(axis=1), w_neg.sum(axis=1)
    neg_below = n_neg[:, None] - np.cumsum(w_neg, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (w_pos * (neg_below + 0.5 * w_neg)).sum(axis=1) / (n_pos * n_neg)
        cum_tp = np.cumsum(w_pos, axis=1)
        precision_at = _ratio(cum_tp, cum_tp + np.cumsum(w_neg, axis=1))
        ap = (w_pos * precision_at).sum(axis=1) / n_pos

    bin_gap = np.zeros((p.size, _ECE_BINS))
    bin_gap[np.arange(p.size), _bin_index(p, _ECE_BINS)] = p - y
    return {
        "accuracy": (tp + tn) / total,
        "precision": _ratio(tp, tp + fp),
        "recall": recall,
        "specificity": specificity,
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "roc_auc": auc,
        "average_precision": ap,
        "mcc": _ratio(tp * tn - fp * fn, mcc_den),
        "balanced_accuracy": (recall + specificity) / 2,
        "brier": weights @ (p - y) ** 2 / total,
        "ece": np.abs(weights @ bin_gap).sum(axis=1) / total,
    }


def _bootstrap_weights(y, groups, n_boot, rng):
    """Multiplicity of each sample in ``n_boot`` class-stratified resamples.

    Without ``groups`` images are resampled within their class. With ``groups`` patients
    are resampled, stratified by whether any of their images is PNEUMONIA, and every image
    of a drawn patient enters with the patient's multiplicity.

    Returns
    -------
    numpy.ndarray of shape (n_boot, n_samples)
    """
    if groups is None:
        unit_of_sample = np.arange(y.size)
        unit_positive = y == 1
    else:
        _, unit_of_sample = np.unique(groups, return_inverse=True)
        unit_positive = np.zeros(unit_of_sample.max() + 1, dtype=bool)
        np.logical_or.at(unit_positive, unit_of_sample, y == 1)
    n_units = unit_positive.size
    counts = np.zeros(n_boot * n_units, dtype=np.int64)
    row_offset = (np.arange(n_boot) * n_units)[:, None]
    for stratum in (np.flatnonzero(~unit_positive), np.flatnonzero(unit_positive)):
        if stratum.size:
            draws = stratum[rng.integers(0, stratum.size, size=(n_boot, stratum.size))]
            counts += np.bincount((row_offset + draws).ravel(), minlength=n_boot * n_units)
    return counts.reshape(n_boot, n_units)[:, unit_of_sample].astype(float)


def _bootstrap_ci(y, p, threshold, n_boot, ci, rng, groups):
    block = max(1, _BOOT_BLOCK_CELLS // y.size)
    chunks = []
    for start in range(0, n_boot, block):
        weights = _bootstrap_weights(y, groups, min(block, n_boot - start), rng)
        chunks.append(_weighted_metrics(y, p, threshold, weights))
    samples = {m: np.concatenate([c[m] for c in chunks]) for m in METRICS}
    # Only patient resampling can draw a single class; those resamples are skipped.
    n_degenerate = int(np.isnan(samples["roc_auc"]).sum())
    if n_degenerate:
        warnings.warn(
            f"{n_degenerate} of {n_boot} bootstrap resamples held a single class and were "
            "skipped; intervals rest on the rest.",
            stacklevel=3,
        )
    tail = 100 * (1 - ci) / 2
    out = {}
    for metric, values in samples.items():
        values = values[np.isfinite(values)]
        if values.size:
            low, high = np.percentile(values, [tail, 100 - tail])
            out[metric] = (float(low), float(high))
        else:
            out[metric] = (float("nan"), float("nan"))
    return out


def evaluate(y_true, y_prob, threshold=0.5, n_boot=1000, ci=0.95, seed=0, groups=None):
    """Threshold, ranking and calibration metrics with stratified bootstrap intervals.

    Point values are scikit-learn's (``zero_division=0``). Intervals are percentile
    intervals over ``n_boot`` resamples that keep the class balance: images are resampled
    within their class or, with ``groups``, patients are resampled within their class
    (a patient counts as PNEUMONIA if any image is). The same ``seed`` draws the same
    resamples for every model scored on the same labels, so intervals are paired.
    ``ece`` uses 10 equal-width bins.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        0/1 labels, 1 = PNEUMONIA.
    y_prob : array-like of shape (n_samples,)
        Predicted probability of PNEUMONIA.
    threshold : float, default=0.5
        A sample is predicted PNEUMONIA when ``y_prob >= threshold``.
    n_boot : int, default=1000
        Bootstrap resamples; 0 skips the intervals.
    ci : float, default=0.95
        Coverage of the intervals.
    seed : int, default=0
        Seed of the local random generator used for resampling.
    groups : array-like of shape (n_samples,), default=None
        Patient id of each image.

    Returns
    -------
    dict
        Every name of :data:`METRICS` -> float, plus ``confusion_matrix``
        (``[[tn, fp], [fn, tp]]``), ``threshold``, ``n`` and ``ci`` (metric ->
        ``(low, high)``; empty when ``n_boot`` is 0).

    Examples
    --------
    >>> res = evaluate([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9], n_boot=200)
    >>> res["roc_auc"], res["confusion_matrix"]
    (0.75, [[1, 1], [1, 1]])
    >>> low, high = res["ci"]["roc_auc"]
    >>> bool(low <= 0.75 <= high)
    True
    """
    y, p = check_binary(y_true, y_prob, owner="evaluate")
    threshold = float(check_param("evaluate", "threshold", threshold, UNIT_INTERVAL))
    check_param("evaluate", "n_boot", n_boot, _N_BOOT)
    check_param("evaluate", "ci", ci, OPEN_UNIT_INTERVAL)
    check_param("evaluate", "seed", seed, SEED)
    groups = check_groups(groups, y.size, owner="evaluate")
    values, cm = _point_metrics(y, p, threshold)
    intervals = {}
    if n_boot:
        intervals = _bootstrap_ci(y, p, threshold, n_boot, ci, np.random.default_rng(seed), groups)
    return {**values, "confusion_matrix": cm, "threshold": threshold, "n": int(y.size), "ci": intervals}


# ---------------------------------------------------------------------------- thresholds


def choose_threshold(y_true, y_prob, method="youden", target=None):
    """Pick a decision threshold from validation predictions.

    Candidates are the distinct predicted probabilities (predict PNEUMONIA when
    ``y_prob >= threshold``). Ties go to the highest threshold.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        0/1 labels, 1 = PNEUMONIA.
    y_prob : array-like of shape (n_samples,)
        Predicted probability of PNEUMONIA.
    method : {"youden", "sensitivity", "f1"}, default="youden"
        ``"youden"`` maximises sensitivity + specificity - 1; ``"sensitivity"`` returns the
        highest threshold whose sensitivity reaches ``target``; ``"f1"`` maximises F1.
    target : float in (0, 1], default=None
        Required sensitivity; only for ``method="sensitivity"``.

    Returns
    -------
    float

    Examples
    --------
    >>> y, p = [0, 0, 1, 1, 1], [0.1, 0.5, 0.4, 0.8, 0.9]
    >>> choose_threshold(y, p)
    0.8
    >>> choose_threshold(y, p, method="sensitivity", target=1.0)
    0.4
    """
    y, p = check_binary(y_true, y_prob, owner="choose_threshold")
    check_param("choose_threshold", "method", method, Options(_THRESHOLD_METHODS))
    if method == "sensitivity":
        check_param("choose_threshold", "target", target, Interval("real", 0, 1, closed="right"))
    elif target is not None:
        raise param_error("choose_threshold", "target", f"None with method={method!r} (it is only used "
                           "with method='sensitivity')", target)
    candidates = np.unique(p)[::-1]
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    tp = n_pos - np.searchsorted(np.sort(p[y == 1]), candidates, side="left")
    fp = n_neg - np.searchsorted(np.sort(p[y == 0]), candidates, side="left")
    if method == "sensitivity":
        # Sensitivity only grows as the threshold falls, so the first hit is the highest.
        return float(candidates[np.argmax(tp >= target * n_pos)])
    if method == "youden":
        score = tp / n_pos - fp / n_neg
    else:
        score = 2 * tp / (tp + fp + n_pos)
    return float(candidates[np.argmax(score)])


# ---------------------------------------------------------------------------- comparison


def prevalence_threshold(y_true, y_prob, prevalence=0.5):
    """Threshold of the highest expected accuracy at a given deployment prevalence.

    Maximises ``prevalence * sensitivity + (1 - prevalence) * specificity`` over the
    distinct validation probabilities. Sensitivity and specificity do not depend on the
    validation split's own class mix, so the rule corrects for a known prior shift
    between validation and deployment (e.g. 74% pneumonia in validation, 62.5% in the
    test split); ``prevalence=0.5`` maximises balanced accuracy, which is Youden's J.
    The prevalence must come from outside the evaluation data (a documented
    assumption about deployment), never be measured on the split being scored.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        0/1 validation labels, 1 = PNEUMONIA.
    y_prob : array-like of shape (n_samples,)
        Validation probabilities of PNEUMONIA.
    prevalence : float, default=0.5
        Expected share of PNEUMONIA where the model is deployed, in (0, 1).

    Returns
    -------
    float
        Predict PNEUMONIA when ``y_prob >= threshold``; ties go to the highest threshold.

    Examples
    --------
    >>> y = [0, 0, 0, 1, 1, 1]
    >>> p = [0.1, 0.3, 0.6, 0.4, 0.7, 0.9]
    >>> prevalence_threshold(y, p, 0.5), prevalence_threshold(y, p, 0.9)
    (0.7, 0.4)
    """
    y, p = check_binary(y_true, y_prob, owner="prevalence_threshold")
    check_param("prevalence_threshold", "prevalence", prevalence, Interval("real", 0, 1, closed="neither"))
    if y.min() == y.max():
        raise DataError("prevalence_threshold needs both classes in y_true.")
    candidates = np.unique(p)
    predicted = p[None, :] >= candidates[:, None]
    sensitivity = (predicted & (y == 1)).sum(axis=1) / (y == 1).sum()
    specificity = (~predicted & (y == 0)).sum(axis=1) / (y == 0).sum()
    score = prevalence * sensitivity + (1 - prevalence) * specificity
    return float(candidates[np.flatnonzero(score == score.max())[-1]])


def _delong(y, scores):
    """AUCs and their covariance by fast DeLong (Sun & Xu, 2014).

    Parameters
    ----------
    y : numpy.ndarray of shape (n_samples,)
    scores : numpy.ndarray of shape (n_models, n_samples)

    Returns
    -------
    aucs : numpy.ndarray of shape (n_models,)
    cov : numpy.ndarray of shape (n_models, n_models)
    """
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    rank_pos = stats.rankdata(pos, axis=1)
    rank_neg = stats.rankdata(neg, axis=1)
    rank_all = stats.rankdata(np.hstack([pos, neg]), axis=1)
    aucs = rank_all[:, :m].sum(axis=1) / (m * n) - (m + 1) / (2 * n)
    # Structural components (placement values): V10 for positives, V01 for negatives.
    v10 = (rank_all[:, :m] - rank_pos) / n
    v01 = 1 - (rank_all[:, m:] - rank_neg) / m
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, cov


def compare(y_true, p_a, p_b, threshold=0.5, ci=0.95):
    """Paired comparison of two models on the same images: DeLong AUC test and McNemar.

    The DeLong test (DeLong et al., 1988, computed with the fast algorithm of Sun & Xu,
    2014) compares ROC AUCs. McNemar's test compares error rates at ``threshold``; it is
    exact (binomial) when fewer than 25 images are misclassified by exactly one model,
    otherwise chi-square with continuity correction (statsmodels).

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        0/1 labels, 1 = PNEUMONIA.
    p_a, p_b : array-like of shape (n_samples,)
        Probabilities of PNEUMONIA from model A and model B.
    threshold : float or (float, float), default=0.5
        Threshold of both models, or one per model.
    ci : float, default=0.95
        Coverage of the interval of the AUC difference.

    Returns
    -------
    dict
        ``auc_a``, ``auc_b``, ``auc_diff`` (A - B), ``auc_var_a``, ``auc_var_b``,
        ``auc_cov``, ``auc_var`` (variance of the difference), ``auc_diff_ci``, ``auc_z``,
        ``auc_p``; ``n_both_correct``, ``n_only_a_wrong``, ``n_only_b_wrong``,
        ``n_both_wrong``, ``mcnemar_statistic``, ``mcnemar_p``, ``mcnemar_exact``,
        ``threshold_a``, ``threshold_b``. The DeLong z and p are NaN (with a warning) when
        the variance of the difference is zero.

    Examples
    --------
    >>> res = compare([0, 0, 0, 1, 1, 1], [0.1, 0.2, 0.3, 0.7, 0.8, 0.9],
    ...               [0.6, 0.2, 0.3, 0.4, 0.8, 0.9])
    >>> round(res["auc_diff"], 3), res["n_only_b_wrong"]
    (0.111, 2)
    """
    from statsmodels.stats.contingency_tables import mcnemar  # slow import; only needed here

    y, pa = check_binary(y_true, p_a, owner="compare", name="p_a")
    _, pb = check_binary(y, p_b, owner="compare", name="p_b")
    if isinstance(threshold, (tuple, list)):
        if len(threshold) != 2:
            raise param_error("compare", "threshold", "a number or a pair of numbers", threshold)
        t_a, t_b = (float(check_param("compare", "threshold", t, UNIT_INTERVAL)) for t in threshold)
    else:
        t_a = t_b = float(check_param("compare", "threshold", threshold, UNIT_INTERVAL))
    check_param("compare", "ci", ci, OPEN_UNIT_INTERVAL)

    aucs, cov = _delong(y, np.vstack([pa, pb]))
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    if var > 0:
        z = diff / np.sqrt(var)
        p_value = float(2 * stats.norm.sf(abs(z)))
        half = stats.norm.ppf(0.5 + ci / 2) * np.sqrt(var)
        diff_ci = (diff - half, diff + half)
    else:
        why = ("the two models rank the images identically (an ensemble of one member is that member)"
               if np.array_equal(stats.rankdata(pa), stats.rankdata(pb)) else
               "both models separate the classes perfectly (AUC 0 or 1)")
        warnings.warn(
            f"The DeLong variance of the AUC difference is zero because {why}: the test's z and p are "
            "undefined (NaN); the AUC difference itself is exact.",
            stacklevel=2,
        )
        z = p_value = float("nan")
        diff_ci = (diff, diff)

    wrong_a = (pa >= t_a) != y
    wrong_b = (pb >= t_b) != y
    table = np.array([
        [np.sum(~wrong_a & ~wrong_b), np.sum(~wrong_a & wrong_b)],
        [np.sum(wrong_a & ~wrong_b), np.sum(wrong_a & wrong_b)],
    ])
    exact = bool(table[0, 1] + table[1, 0] < 25)
    test = mcnemar(table, exact=exact, correction=True)
    return {
        "auc_a": float(aucs[0]),
        "auc_b": float(aucs[1]),
        "auc_diff": diff,
        "auc_var_a": float(cov[0, 0]),
        "auc_var_b": float(cov[1, 1]),
        "auc_cov": float(cov[0, 1]),
        "auc_var": var,
        "auc_diff_ci": (float(diff_ci[0]), float(diff_ci[1])),
        "auc_z": float(z),
        "auc_p": p_value,
        "n_both_correct": int(table[0, 0]),
        "n_only_b_wrong": int(table[0, 1]),
        "n_only_a_wrong": int(table[1, 0]),
        "n_both_wrong": int(table[1, 1]),
        "mcnemar_statistic": float(test.statistic),
        "mcnemar_p": float(test.pvalue),
        "mcnemar_exact": exact,
        "threshold_a": t_a,
        "threshold_b": t_b,
    }


# ---------------------------------------------------------------------------- tables


def results_table(y_true, probs, threshold=0.5, n_boot=1000, ci=0.95, seed=0, groups=None,
                  reference=True):
    """One row of metrics with bootstrap intervals per model, plus the reported reference.

    Every model is resampled with the same seed, so the intervals are paired.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        0/1 labels, 1 = PNEUMONIA.
    probs : dict of str -> array-like of shape (n_samples,)
        Probability of PNEUMONIA of each model.
    threshold : float or dict of str -> float, default=0.5
        One threshold for all models, or one per model name.
    n_boot, ci, seed, groups
        As in :func:`evaluate`.
    reference : bool, default=True
        Append the row ``"origin (reported)"`` with the original project's published
        figures (:data:`REPORTED_ORIGIN`); other cells of that row are NaN.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``model``; columns ``source`` (``"measured"`` or ``"reported"``),
        ``threshold``, ``n``, the :data:`METRICS`, ``tn``, ``fp``, ``fn``, ``tp`` and
        ``<metric>_low`` / ``<metric>_high`` for each metric.

    Examples
    --------
    >>> y = [0, 0, 1, 1]
    >>> table = results_table(y, {"a": [0.1, 0.6, 0.4, 0.9]}, n_boot=50)
    >>> table["roc_auc"].to_dict()
    {'a': 0.75, 'origin (reported)': 0.96}
    >>> table["source"].tolist()
    ['measured', 'reported']
    """
    if not isinstance(probs, dict) or not probs:
        raise DataError("probs must be a non-empty dict of model name -> probabilities.")
    check_param("results_table", "seed", seed, SEED)
    if isinstance(threshold, dict):
        missing = sorted(set(probs) - set(threshold))
        unknown = sorted(set(threshold) - set(probs))
        if missing or unknown:
            raise ConfigError(f"The 'threshold' parameter of results_table must be a number or a dict naming "
                              f"exactly the models; missing {missing}, unknown {unknown}.")
        thresholds = dict(threshold)
    else:
        thresholds = dict.fromkeys(probs, threshold)
    if reference and ORIGIN_ROW in probs:
        raise ConfigError(f"{ORIGIN_ROW!r} is reserved for the reference row; rename that model.")

    rows = {}
    for name, y_prob in probs.items():
        res = evaluate(y_true, y_prob, threshold=thresholds[name], n_boot=n_boot, ci=ci,
                       seed=seed, groups=groups)
        (tn, fp), (fn, tp) = res["confusion_matrix"]
        row = {"source": "measured", "threshold": res["threshold"], "n": res["n"]}
        row.update({m: res[m] for m in METRICS})
        row.update(tn=tn, fp=fp, fn=fn, tp=tp)
        for metric in METRICS:
            row[f"{metric}_low"], row[f"{metric}_high"] = res["ci"].get(metric, (np.nan, np.nan))
        rows[name] = row
    if reference:
        rows[ORIGIN_ROW] = {"source": "reported", **REPORTED_ORIGIN}
    columns = ["source", "threshold", "n", *METRICS, "tn", "fp", "fn", "tp"]
    columns += [f"{m}_{end}" for m in METRICS for end in ("low", "high")]
    table = pd.DataFrame.from_dict(rows, orient="index").reindex(columns=columns)
    table.index.name = "model"
    return table


def table_to_markdown(table, metrics=("accuracy", "precision", "recall", "f1", "roc_auc"),
                      digits=3):
    """Render a :func:`results_table` as a Markdown table; intervals go in brackets.

    Needs no optional dependency (``tabulate`` is not used).

    Parameters
    ----------
    table : pandas.DataFrame
        Output of :func:`results_table`.
    metrics : sequence of str
        Metric columns to show, in order.
    digits : int, default=3
        Decimal places.

    Returns
    -------
    str

    Examples
    --------
    >>> table = results_table([0, 0, 1, 1], {"a": [0.1, 0.6, 0.4, 0.9]}, n_boot=0)
    >>> print(table_to_markdown(table, metrics=["roc_auc"]))
    | model | source | roc_auc |
    | --- | --- | --- |
    | a | measured | 0.750 |
    | origin (reported) | reported | 0.960 |
    """
    unknown = [m for m in metrics if m not in table.columns]
    if unknown:
        raise ConfigError(f"metrics {unknown} are not columns of the table.")

    def cell(row, metric):
        value = row[metric]
        if pd.isna(value):
            return "n/a"
        text = f"{value:.{digits}f}"
        low, high = row.get(f"{metric}_low", np.nan), row.get(f"{metric}_high", np.nan)
        if pd.notna(low) and pd.notna(high):
            text += f" [{low:.{digits}f}, {high:.{digits}f}]"
        return text

    header = ["model", "source", *metrics]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    for name, row in table.iterrows():
        cells = [str(name), str(row.get("source", "")), *(cell(row, m) for m in metrics)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
