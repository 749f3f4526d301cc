"""Has the data moved? Output shift, a domain classifier, where it moved, and prior shift.

A reference set (the validation split, labelled) is compared with a target set (the test
split, or an unlabelled folder of deployment images):

- :func:`output_shift_test`: two-sample Kolmogorov-Smirnov tests on each member's and the
  ensemble's probabilities, Bonferroni-combined ("black-box shift detection", Rabanser,
  Günnemann & Lipton 2019, "Failing Loudly").
- :func:`domain_classifier`: a cross-validated scikit-learn classifier that tells reference
  from target on features (embeddings or image features), grouped by patient; its ROC AUC
  with a permutation p-value is the size of the shift, its out-of-fold probability of
  "target" a per-image target-likeness score.
- :func:`feature_shift`: which features moved (Kolmogorov-Smirnov for numbers, the share of
  each level for categories), with Benjamini-Hochberg q-values.
- :func:`shift_harm`: the model's accuracy on the most target-like reference images
  against all of them: does the shift hurt?
- :func:`estimate_prevalence`: the target's PNEUMONIA prevalence without target labels,
  by BBSE (Lipton, Wang & Smola 2018) or EM (Saerens, Latinne & Decaestecker 2002), with
  a bootstrap interval and the decision threshold re-chosen for it.

Array and DataFrame level; no TensorFlow.
"""

import numpy as np
import pandas as pd

from .errors import DataError
from .validation import (OPEN_UNIT_INTERVAL, UNIT_INTERVAL, Interval, Options, check_binary, check_features,
                         check_groups, check_member_probabilities, check_param, check_probabilities, check_scores)

__all__ = [
    "output_shift_test",
    "domain_classifier",
    "feature_shift",
    "shift_harm",
    "estimate_prevalence",
    "PREVALENCE_METHODS",
]

#: Methods of :func:`estimate_prevalence`.
PREVALENCE_METHODS = ("bbse", "em")


def _as_columns(P, *, owner, name):
    """Probabilities as a 2-D array with column names; a 1-D vector is one column ``p``."""
    if isinstance(P, pd.Series):
        P = P.to_frame()
    if not isinstance(P, pd.DataFrame) and np.ndim(P) == 1:
        return check_member_probabilities(np.asarray(P, dtype=float)[:, None], owner=owner, name=name,
                                          columns=["p"])
    return check_member_probabilities(P, owner=owner, name=name)


def _ks_statistics(pooled, n_ref, labels):
    """KS distances of one column for many reference/target labellings at once.

    ``pooled`` is the column's pooled values, ``labels`` a (n_draws, n_pooled) 0/1 array
    (1 = target). The ECDF difference is read only where the sorted values change, so ties
    count as in :func:`scipy.stats.ks_2samp`.
    """
    order = np.argsort(pooled, kind="stable")
    values = pooled[order]
    last_of_value = np.r_[values[1:] != values[:-1], True]
    in_target = labels[:, order]
    n_target = labels.shape[1] - n_ref
    target_cdf = np.cumsum(in_target, axis=1)[:, last_of_value] / n_target
    ref_cdf = np.cumsum(1 - in_target, axis=1)[:, last_of_value] / n_ref
    return np.abs(ref_cdf - target_cdf).max(axis=1)


def output_shift_test(P_ref, P_target, *, combine="bonferroni", alpha=0.05, n_permutations=1000,
                      random_state=0):
    """Black-box shift detection: Kolmogorov-Smirnov per probability column, combined.

    Each column (a member, or the ensemble) is tested with the two-sample KS test
    (:func:`scipy.stats.ks_2samp`, two-sided). The column p-values are combined:

    - ``"bonferroni"`` (Rabanser et al. 2019): ``min(1, n_columns * min(p))``. Its false-alarm
      rate is at most ``alpha`` whatever the dependence between the columns, but well below
      ``alpha`` when they agree (the members of one ensemble do): measured 1% at 0.05 for
      four strongly correlated columns in ``tests/test_shift.py``.
    - ``"permutation"``: the largest KS distance over the columns, referred to its
      distribution over ``n_permutations`` random re-assignments of the pooled images to
      the two sets, ``(1 + #{D_perm >= D}) / (1 + n_permutations)``: exact size under no
      shift for any dependence, hence no loss of power to correlated members.

    Parameters
    ----------
    P_ref : array-like or DataFrame of shape (n_ref, n_columns) or (n_ref,)
        Probabilities of PNEUMONIA on the reference set, one column per member/ensemble.
    P_target : array-like or DataFrame of shape (n_target, n_columns) or (n_target,)
        The same columns on the target set.
    combine : {"bonferroni", "permutation"}, default="bonferroni"
    alpha : float, default=0.05
        Level of the combined test, for ``shifted``.
    n_permutations : int, default=1000
        Used by ``combine="permutation"``.
    random_state : int, default=0
        Seeds the permutations (no global seeding).

    Returns
    -------
    dict
        ``p_value`` (combined), ``shifted`` (``p_value < alpha``), ``statistic`` (largest KS
        distance), ``n_tests``, ``combine`` and ``table``: a DataFrame with one row per column
        (``column``, ``statistic``, ``p_value``, ``mean_ref``, ``mean_target``).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> ref, moved = rng.uniform(size=(200, 2)), rng.uniform(size=(200, 2)) ** 2
    >>> output_shift_test(ref, moved)["p_value"] < 0.05, output_shift_test(ref, ref[::-1])["p_value"]
    (True, 1.0)
    """
    from scipy.stats import ks_2samp

    owner = "output_shift_test"
    ref, names = _as_columns(P_ref, owner=owner, name="P_ref")
    target, _ = _as_columns(P_target, owner=owner, name="P_target")
    if ref.shape[1] != target.shape[1]:
        raise DataError(f"{owner}: P_ref has {ref.shape[1]} columns but P_target has {target.shape[1]}; "
                        "pass the same members in the same order.")
    check_param(owner, "combine", combine, Options(("bonferroni", "permutation")))
    check_param(owner, "alpha", alpha, OPEN_UNIT_INTERVAL)
    check_param(owner, "n_permutations", n_permutations, Interval("int", 1, None))
    rows = []
    for j, name in enumerate(names):
        result = ks_2samp(ref[:, j], target[:, j])
        rows.append({"column": name, "statistic": float(result.statistic), "p_value": float(result.pvalue),
                     "mean_ref": float(ref[:, j].mean()), "mean_target": float(target[:, j].mean())})
    table = pd.DataFrame(rows)
    statistic = float(table["statistic"].max())
    if combine == "bonferroni":
        p_value = float(min(1.0, len(rows) * table["p_value"].min()))
    else:
        rng = np.random.default_rng(random_state)
        pooled = np.vstack([ref, target])
        labels = np.zeros((n_permutations, len(pooled)), dtype=np.int32)
        labels[:, len(ref):] = 1
        labels = rng.permuted(labels, axis=1)
        null = np.max([_ks_statistics(pooled[:, j], len(ref), labels) for j in range(pooled.shape[1])], axis=0)
        p_value = float((1 + (null >= statistic - 1e-12).sum()) / (1 + n_permutations))
    return {"p_value": p_value, "shifted": p_value < alpha, "statistic": statistic, "n_tests": len(rows),
            "combine": combine, "table": table}


def _default_domain_estimator():
    # A closed-form fit (no iterations), so refitting it for every fold of every permutation stays cheap.
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    return LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")


def _out_of_fold(estimator, X, d, folds):
    """Out-of-fold probability of "target" for every row."""
    from sklearn.base import clone

    score = np.empty(len(d))
    for train, test in folds:
        if np.unique(d[train]).size < 2:
            # A grouped fold of a permuted labelling can train on one side only (few patients):
            # the only thing such a model can say is that side.
            score[test] = d[train][0]
            continue
        model = clone(estimator).fit(X[train], d[train])
        score[test] = model.predict_proba(X[test])[:, 1]
    return score


def domain_classifier(X_ref, X_target, *, groups_ref=None, groups_target=None, estimator=None, cv=5,
                      n_permutations=100, random_state=0):
    """How well a classifier tells target images from reference images, and which look like the target.

    The classifier (default: linear discriminant analysis with Ledoit-Wolf shrinkage) is
    cross-validated with shuffled :class:`~sklearn.model_selection.GroupKFold` when patient
    ids are given (no patient in both the training and the scoring fold), else
    :class:`~sklearn.model_selection.StratifiedKFold`. Its out-of-fold ROC AUC is the size of
    the shift (0.5: indistinguishable). The p-value permutes the reference/target labels
    (whole patients together when ``groups`` are given) and refits ``n_permutations`` times:
    ``(1 + #{AUC_perm >= AUC}) / (1 + n_permutations)``.

    Parameters
    ----------
    X_ref : array-like or DataFrame of shape (n_ref, n_features)
        Reference features (a DataFrame's numeric columns are used).
    X_target : array-like or DataFrame of shape (n_target, n_features)
    groups_ref, groups_target : array-like of shape (n_ref,) / (n_target,), default=None
        Patient ids. Give both or neither.
    estimator : scikit-learn classifier, default=None
    cv : int, default=5
    n_permutations : int, default=100
        0 skips the permutation test (``p_value`` is NaN).
    random_state : int, default=0
        Seeds the folds and the permutations (no global seeding).

    Returns
    -------
    dict
        ``auc``, ``p_value``, ``null_aucs`` (ndarray of the permuted AUCs),
        ``score_ref`` and ``score_target``: out-of-fold probabilities of "target"
        (the per-image target-likeness), of shapes (n_ref,) and (n_target,).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> ref, target = rng.normal(size=(100, 3)), rng.normal(size=(100, 3)) + [1, 0, 0]
    >>> result = domain_classifier(ref, target, n_permutations=19)
    >>> bool(result["auc"] > 0.7), result["p_value"]
    (True, 0.05)
    """
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold, StratifiedKFold

    owner = "domain_classifier"
    ref = check_features(X_ref, owner=owner, name="X_ref")
    target = check_features(X_target, owner=owner, name="X_target")
    if ref.shape[1] != target.shape[1]:
        raise DataError(f"{owner}: X_ref has {ref.shape[1]} features but X_target has {target.shape[1]}.")
    check_param(owner, "cv", cv, Interval("int", 2, None))
    check_param(owner, "n_permutations", n_permutations, Interval("int", 0, None))
    if (groups_ref is None) != (groups_target is None):
        raise DataError(f"{owner}: pass both groups_ref and groups_target (patient ids) or neither.")
    X = np.vstack([ref, target])
    d = np.r_[np.zeros(len(ref), dtype=int), np.ones(len(target), dtype=int)]
    if min(len(ref), len(target)) < cv:
        raise DataError(f"{owner}: each set needs at least cv={cv} rows; got {len(ref)} and {len(target)}.")
    estimator = _default_domain_estimator() if estimator is None else estimator
    rng = np.random.default_rng(random_state)
    if groups_ref is not None:
        groups = np.r_[check_groups(groups_ref, len(ref), owner=owner, name="groups_ref").astype(str),
                       check_groups(groups_target, len(target), owner=owner, name="groups_target").astype(str)]
        # A patient on both sides would make the permutation and the folds ill-defined; keep sides apart.
        groups = np.char.add(d.astype(str), np.char.add(":", groups))
        splitter = GroupKFold(n_splits=cv, shuffle=True, random_state=random_state)
    else:
        groups = np.arange(len(d)).astype(str)
        splitter = StratifiedKFold(n_splits=cv, shuffle=True, random_state=random_state)

    def score_of(labels):
        folds = splitter.split(X, labels, groups) if groups_ref is not None else splitter.split(X, labels)
        return _out_of_fold(estimator, X, labels, list(folds))

    score = score_of(d)
    auc = float(roc_auc_score(d, score))
    unique, inverse = np.unique(groups, return_inverse=True)
    group_side = np.zeros(len(unique), dtype=int)
    group_side[inverse] = d
    null = np.array([roc_auc_score(perm := rng.permutation(group_side)[inverse], score_of(perm))
                     for _ in range(n_permutations)])
    p_value = float((1 + (null >= auc).sum()) / (1 + n_permutations)) if n_permutations else float("nan")
    return {"auc": auc, "p_value": p_value, "null_aucs": null, "score_ref": score[:len(ref)],
            "score_target": score[len(ref):]}


def _bh(p):
    from scipy.stats import false_discovery_control

    p = np.asarray(p, dtype=float)
    q = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        q[ok] = false_discovery_control(p[ok], method="bh")
    return q


def _share_rows(column, levels_ref, levels_target):
    """One row per level: its share in each set, Fisher's exact test of the shares."""
    from scipy.stats import fisher_exact

    rows = []
    for level in sorted(set(levels_ref) | set(levels_target)):
        k_a, k_b = int((levels_ref == level).sum()), int((levels_target == level).sum())
        odds, p = fisher_exact([[k_b, len(levels_target) - k_b], [k_a, len(levels_ref) - k_a]])
        share_ref, share_target = k_a / len(levels_ref), k_b / len(levels_target)
        rows.append({"feature": column, "level": level, "ref": share_ref, "target": share_target,
                     "effect": share_target - share_ref, "statistic": float(odds), "p_value": float(p)})
    return rows


def feature_shift(F_ref, F_target, *, alpha=0.05, n_bins=4):
    """Which features moved between reference and target, with Benjamini-Hochberg q-values.

    Numeric columns: two-sample Kolmogorov-Smirnov test and the standardised mean difference
    ``(mean_target - mean_ref) / pooled sd``; then, as slices, the share of each of the
    ``n_bins`` bins cut at the reference quantiles (each holds ``1 / n_bins`` of the reference)
    in the target. Other columns (strings, booleans, categories): one row per level, its share
    in each set. Shares are compared with Fisher's exact test. All p-values are adjusted
    together.

    Parameters
    ----------
    F_ref, F_target : DataFrame
        The same columns for the reference and the target images (e.g.
        :func:`pneumoxai.slices.image_features` plus subtype).
    alpha : float, default=0.05
        ``finding`` is ``q_value < alpha``.
    n_bins : int, default=4
        Reference-quantile bins per numeric column (quartiles); 0 leaves the bins out.

    Returns
    -------
    DataFrame
        ``feature``, ``level`` (empty for a numeric column's distribution, the bin
        ``"[low, high)"`` or the category), ``ref`` and ``target`` (mean, or share of the level),
        ``effect`` (standardised mean difference, or difference of shares),
        ``statistic`` (KS distance, or odds ratio), ``p_value``, ``q_value``, ``finding``;
        sorted by q-value, then by absolute effect.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> rng = np.random.default_rng(0)
    >>> ref = pd.DataFrame({"brightness": rng.normal(0.5, 0.1, 200), "noise": rng.normal(size=200)})
    >>> target = pd.DataFrame({"brightness": rng.normal(0.4, 0.1, 200), "noise": rng.normal(size=200)})
    >>> feature_shift(ref, target)["feature"].iloc[0]
    'brightness'
    """
    from scipy.stats import ks_2samp

    owner = "feature_shift"
    for name, frame in (("F_ref", F_ref), ("F_target", F_target)):
        if not isinstance(frame, pd.DataFrame) or frame.empty:
            raise DataError(f"{owner}: {name} must be a non-empty pandas DataFrame; got {type(frame).__name__}.")
    missing = [c for c in F_ref.columns if c not in F_target.columns]
    if missing:
        raise DataError(f"{owner}: F_target lacks column(s) {missing} of F_ref.")
    check_param(owner, "alpha", alpha, OPEN_UNIT_INTERVAL)
    check_param(owner, "n_bins", n_bins, (Interval("int", 0, 0), Interval("int", 2, None)))
    rows = []
    for column in F_ref.columns:
        a, b = F_ref[column], F_target[column]
        if not pd.api.types.is_numeric_dtype(a) or pd.api.types.is_bool_dtype(a):
            rows += _share_rows(column, a.astype(str).to_numpy(), b.astype(str).to_numpy())
            continue
        a, b = a.dropna().to_numpy(float), b.dropna().to_numpy(float)
        if len(a) < 2 or len(b) < 2:
            continue
        sd = np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
        result = ks_2samp(a, b)
        rows.append({"feature": column, "level": "", "ref": a.mean(), "target": b.mean(),
                     "effect": (b.mean() - a.mean()) / sd if sd > 0 else 0.0,
                     "statistic": float(result.statistic), "p_value": float(result.pvalue)})
        edges = np.unique(np.quantile(a, np.linspace(0, 1, n_bins + 1)[1:-1])) if n_bins else []
        if len(edges):
            names = np.array([f"[{low:.4g}, {high:.4g})" for low, high in zip(np.r_[-np.inf, edges],
                                                                             np.r_[edges, np.inf])])
            rows += _share_rows(column, names[np.searchsorted(edges, a, side="right")],
                                names[np.searchsorted(edges, b, side="right")])
    table = pd.DataFrame(rows, columns=["feature", "level", "ref", "target", "effect", "statistic", "p_value"])
    table["q_value"] = _bh(table["p_value"])
    table["finding"] = table["q_value"] < alpha
    order = np.lexsort((-table["effect"].abs().to_numpy(), table["q_value"].to_numpy()))
    return table.iloc[order].reset_index(drop=True)


def shift_harm(y_ref, p_ref, score_ref, *, threshold=0.5, top=0.2):
    """The model's accuracy on the most target-like reference images against all reference images.

    If the reference images that look most like the target (highest
    :func:`domain_classifier` score) are classified worse than the rest, the shift is likely
    to hurt on the target. Fisher's exact test compares the errors of the top share with
    those of the other reference images.

    Parameters
    ----------
    y_ref : array-like of shape (n_ref,)
        0/1 labels of the reference images.
    p_ref : array-like of shape (n_ref,)
        Probabilities of PNEUMONIA.
    score_ref : array-like of shape (n_ref,)
        Target-likeness (e.g. ``domain_classifier(...)["score_ref"]``).
    threshold : float, default=0.5
    top : float, default=0.2
        Share of the reference images counted as target-like, in (0, 1).

    Returns
    -------
    dict
        ``accuracy_all``, ``accuracy_target_like``, ``accuracy_rest``, ``n_target_like``,
        ``difference`` (target-like minus all), ``p_value``.

    Examples
    --------
    >>> y, p = [0, 1, 0, 1, 0, 1, 0, 1, 0, 1], [0.2, 0.8] * 4 + [0.9, 0.1]
    >>> shift_harm(y, p, range(10), top=0.2)["accuracy_target_like"]
    0.0
    """
    from scipy.stats import fisher_exact

    owner = "shift_harm"
    y, p = check_binary(y_ref, p_ref, owner=owner, name="p_ref")
    score = check_scores(score_ref, p.size, owner=owner, name="score_ref")
    check_param(owner, "threshold", threshold, UNIT_INTERVAL)
    check_param(owner, "top", top, OPEN_UNIT_INTERVAL)
    correct = (p >= threshold).astype(int) == y
    n_top = max(1, int(round(top * len(y))))
    chosen = np.zeros(len(y), dtype=bool)
    chosen[np.argsort(-score, kind="stable")[:n_top]] = True
    table = [[int(correct[chosen].sum()), int((~correct[chosen]).sum())],
             [int(correct[~chosen].sum()), int((~correct[~chosen]).sum())]]
    p_value = float(fisher_exact(table)[1]) if (~chosen).any() else float("nan")
    return {"accuracy_all": float(correct.mean()), "accuracy_target_like": float(correct[chosen].mean()),
            "accuracy_rest": float(correct[~chosen].mean()) if (~chosen).any() else float("nan"),
            "n_target_like": n_top, "difference": float(correct[chosen].mean() - correct.mean()),
            "p_value": p_value}


# --------------------------------------------------------------------------- prior shift

def _bbse(y, p, q, threshold):
    """Adjusted count: P_t(yhat = 1) = tpr * pi + fpr * (1 - pi), solved for pi (binary BBSE)."""
    yhat = p >= threshold
    tpr, fpr = yhat[y == 1].mean(), yhat[y == 0].mean()
    if tpr - fpr <= 0:
        return float("nan")
    return float(np.clip(((q >= threshold).mean() - fpr) / (tpr - fpr), 0, 1))


def _em(y, p, q, threshold, *, tol=1e-8, max_iter=1000):
    """Saerens' EM on probabilities calibrated on the reference set (Platt scaling)."""
    from .calibration import PlattScaling

    calibrator = PlattScaling().fit(p, y)
    p_cal, q_cal = calibrator.predict_proba(p)[:, 1], calibrator.predict_proba(q)[:, 1]
    # The posterior's implied prior on the reference set, so a slightly off calibration cancels out.
    prior_ref = float(p_cal.mean())
    prior = prior_ref
    for _ in range(max_iter):
        pos = prior / prior_ref * q_cal
        neg = (1 - prior) / (1 - prior_ref) * (1 - q_cal)
        new = float(np.mean(pos / (pos + neg)))
        if abs(new - prior) < tol:
            return new
        prior = new
    return prior


def estimate_prevalence(y_ref, p_ref, p_target, *, method="bbse", threshold=0.5, n_boot=200, ci=0.95,
                        random_state=0):
    """The target's PNEUMONIA prevalence, estimated without target labels (label shift).

    Assumes label shift: ``P(image | class)`` is the same in both sets, only the class
    mix differs.

    - ``"bbse"`` (black-box shift estimation, Lipton et al. 2018): the reference
      confusion matrix of the calls at ``threshold`` gives the true and false positive rates;
      the target's share of positive calls ``q`` is ``tpr * pi + fpr * (1 - pi)``, solved for
      ``pi`` (clipped to [0, 1]).
    - ``"em"`` (Saerens et al. 2002): the probabilities are calibrated on the reference set
      (:class:`~pneumoxai.calibration.PlattScaling`); EM then alternates re-weighting the
      target posteriors by the prior ratio and re-estimating the prior as their mean.

    The interval is a percentile bootstrap that resamples the reference and the target
    sets independently (the reference's error is often the larger part).

    The returned ``threshold`` is the one re-chosen for the estimated prevalence: the
    threshold of the highest expected accuracy ``pi * sensitivity + (1 - pi) *
    specificity`` with sensitivity and specificity measured on the reference set
    (:func:`pneumoxai.metrics.prevalence_threshold`); under label shift both rates carry
    over to the target.

    Parameters
    ----------
    y_ref : array-like of shape (n_ref,)
        0/1 reference labels.
    p_ref : array-like of shape (n_ref,)
        Reference probabilities of PNEUMONIA.
    p_target : array-like of shape (n_target,)
        Target probabilities (no labels needed).
    method : {"bbse", "em"}, default="bbse"
    threshold : float, default=0.5
        The calls' threshold for ``"bbse"``.
    n_boot : int, default=200
        Bootstrap resamples; 0 gives NaN bounds.
    ci : float, default=0.95
    random_state : int, default=0
        Seeds the bootstrap (no global seeding).

    Returns
    -------
    dict
        ``prevalence``, ``ci_low``, ``ci_high``, ``method``, ``reference_prevalence``
        and ``threshold`` (re-chosen for ``prevalence``).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = rng.uniform(size=2000) < 0.5
    >>> p = np.clip(np.where(y, 0.7, 0.3) + rng.normal(0, 0.2, 2000), 0, 1)
    >>> q = np.clip(np.where(rng.uniform(size=2000) < 0.8, 0.7, 0.3) + rng.normal(0, 0.2, 2000), 0, 1)
    >>> round(estimate_prevalence(y.astype(int), p, q, n_boot=0)["prevalence"], 1)
    0.8
    """
    from .metrics import prevalence_threshold

    owner = "estimate_prevalence"
    y, p = check_binary(y_ref, p_ref, owner=owner, name="p_ref")
    q = check_probabilities(p_target, owner=owner, name="p_target")
    check_param(owner, "method", method, Options(PREVALENCE_METHODS))
    check_param(owner, "threshold", threshold, UNIT_INTERVAL)
    check_param(owner, "n_boot", n_boot, Interval("int", 0, None))
    check_param(owner, "ci", ci, OPEN_UNIT_INTERVAL)
    estimator = {"bbse": _bbse, "em": _em}[method]
    estimate = estimator(y, p, q, threshold)
    if not np.isfinite(estimate):
        raise DataError(f"{owner}: the reference calls at threshold {threshold} do not separate the classes "
                        "(true positive rate <= false positive rate); BBSE cannot invert them.")
    rng = np.random.default_rng(random_state)
    boots = []
    for _ in range(n_boot):
        i, j = rng.integers(0, len(y), len(y)), rng.integers(0, len(q), len(q))
        if y[i].min() == y[i].max():
            continue
        boots.append(estimator(y[i], p[i], q[j], threshold))
    boots = np.asarray(boots, dtype=float)
    boots = boots[np.isfinite(boots)]
    low, high = (np.quantile(boots, [(1 - ci) / 2, (1 + ci) / 2]) if len(boots) else (np.nan, np.nan))
    chosen = prevalence_threshold(y, p, float(np.clip(estimate, 1e-3, 1 - 1e-3)))
    return {"prevalence": float(estimate), "ci_low": float(low), "ci_high": float(high), "method": method,
            "reference_prevalence": float(y.mean()), "threshold": float(chosen)}
