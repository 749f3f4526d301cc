"""Combine ensemble members' probabilities, and measure how the members differ.

Everything here works on a matrix ``P`` of member probabilities of PNEUMONIA with shape
``(n_samples, n_members)`` (a NumPy array, or a DataFrame whose columns name the members)
and never touches Keras.

A combiner that learns from data (``SoftVoting(weights="optimize")``, ``Stacking``) must
learn from member predictions on images the members were **not** trained on, otherwise it
rewards the members that memorised their training set. Two honest routes:

1. **Held-out split.** Split the training pool by patient, train the members on one part
   and fit the combiner on their predictions for the held-out, patient-disjoint part (the
   validation split).
2. **k-fold.** Train each member k times, each copy leaving one patient-grouped fold out;
   each copy predicts its left-out fold, and :func:`assemble_oof` stitches those
   predictions into one out-of-fold matrix covering the whole training pool.

Then score the combiner once on the untouched test set.
"""

import numbers
import warnings

import numpy as np
import pandas as pd
from scipy import optimize, special
from sklearn.base import BaseEstimator, clone
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    brier_score_loss,
    f1_score,
    roc_auc_score,
)
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_predict

from ._predict import predict_members
from .errors import DataError, NotFittedError, param_error
from .metrics import _check_groups, _check_labels

__all__ = [
    "predict_members",
    "SoftVoting",
    "HardVoting",
    "Stacking",
    "assemble_oof",
    "diversity",
    "ensemble_size_curve",
]

# Clip before logit/log so probabilities of exactly 0 or 1 stay finite.
_EPS = 1e-7


def _is_open_unit(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 < value < 1


def _is_closed_unit(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 <= value <= 1


def _as_weights(value):
    """The weights as a 1-D float array if they are valid explicit weights, else None."""
    if value is None or isinstance(value, str):
        return None
    try:
        w = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        return None
    if w.ndim != 1 or w.size == 0 or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        return None
    return w


def _is_meta(value):
    if isinstance(value, str):
        return value == "logistic"
    return hasattr(value, "fit") and hasattr(value, "predict_proba")


def _is_int_at_least_2(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 2


_SIZE_METRICS = {
    # name: (scorer(y, score), uses thresholded predictions, greater is better)
    "roc_auc": (roc_auc_score, False, True),
    "average_precision": (average_precision_score, False, True),
    "accuracy": (accuracy_score, True, True),
    "balanced_accuracy": (balanced_accuracy_score, True, True),
    "f1": (lambda y, pred: f1_score(y, pred, zero_division=0), True, True),
    "brier": (brier_score_loss, False, False),
}

# Every allowed parameter value, in one place: owner -> parameter -> (check, description).
_CONSTRAINTS = {
    "SoftVoting": {
        "weights": (
            lambda v: v is None or (isinstance(v, str) and v == "optimize") or _as_weights(v) is not None,
            "None, 'optimize' or an array of n_members non-negative numbers",
        ),
    },
    "HardVoting": {
        "threshold": (_is_open_unit, "a number strictly between 0 and 1"),
    },
    "Stacking": {
        "meta": (_is_meta, "'logistic' or a scikit-learn classifier with fit and predict_proba"),
        "features": (lambda v: isinstance(v, str) and v in ("proba", "logit"), "'proba' or 'logit'"),
        "cv": (_is_int_at_least_2, "an integer >= 2"),
        "seed": (
            lambda v: v is None or (isinstance(v, numbers.Integral) and not isinstance(v, bool)),
            "None or an integer",
        ),
    },
    "predict": {
        "threshold": (_is_closed_unit, "a number between 0 and 1"),
    },
    "diversity": {
        "threshold": (_is_closed_unit, "a number between 0 and 1"),
    },
    "ensemble_size_curve": {
        "combiner": (lambda v: isinstance(v, str) and v in ("soft", "hard"), "'soft' or 'hard'"),
        "metric": (
            lambda v: isinstance(v, str) and v in _SIZE_METRICS,
            "one of " + ", ".join(map(repr, _SIZE_METRICS)),
        ),
        "threshold": (_is_closed_unit, "a number between 0 and 1"),
    },
}


def _param_error(owner, name, value):
    return param_error(owner, name, _CONSTRAINTS[owner][name][1], value)


def _check_params(owner, **params):
    for name, value in params.items():
        check = _CONSTRAINTS[owner][name][0]
        if not check(value):
            raise _param_error(owner, name, value)


def _check_inputs(P, y=None, *, owner, n_members=None, member_names=None):
    """Validate member probabilities (and labels) for every combiner and analysis.

    Parameters
    ----------
    P : array-like or DataFrame of shape (n_samples, n_members)
        Probabilities of PNEUMONIA, one column per member.
    y : array-like of shape (n_samples,), optional
        0/1 labels; checked for length, values and both classes when given.
    owner : str
        Name used in error messages.
    n_members : int, optional
        Member count seen at fit; P must match it.
    member_names : list of str, optional
        Columns seen at fit; a DataFrame P must have the same columns in the same order.

    Returns
    -------
    P : numpy.ndarray of shape (n_samples, n_members)
    y : numpy.ndarray of shape (n_samples,) or None
    names : list of str or None
        DataFrame columns, or None for arrays.
    """
    names = [str(c) for c in P.columns] if isinstance(P, pd.DataFrame) else None
    try:
        arr = np.asarray(P, dtype=float)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{owner}: P must hold numeric probabilities ({exc}).") from exc
    if arr.ndim != 2:
        hint = " For a single member use P.reshape(-1, 1)." if arr.ndim == 1 else ""
        raise DataError(f"{owner}: P must be 2-D (n_samples, n_members); got shape {arr.shape}.{hint}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(f"{owner}: P is empty (shape {arr.shape}).")
    if n_members is not None and arr.shape[1] != n_members:
        raise DataError(f"{owner} was fitted on {n_members} members but P has {arr.shape[1]} columns.")
    if member_names is not None and names is not None and names != member_names:
        raise DataError(f"{owner} was fitted on members {member_names} but P has columns {names}.")
    label = names or [f"member_{j}" for j in range(arr.shape[1])]
    bad = ~np.isfinite(arr)
    if bad.any():
        col = int(np.flatnonzero(bad.any(axis=0))[0])
        raise DataError(f"{owner}: P has {int(bad.sum())} NaN or infinite values (first in {label[col]!r}).")
    outside = (arr < 0) | (arr > 1)
    if outside.any():
        col = int(np.flatnonzero(outside.any(axis=0))[0])
        raise DataError(
            f"{owner}: P must hold probabilities in [0, 1]; {label[col]!r} has values from "
            f"{arr[:, col].min():.4g} to {arr[:, col].max():.4g}. Pass probabilities, not logits."
        )
    labels = None if y is None else _check_labels(y, arr.shape[0])
    return arr, labels, names


def _log_loss_and_grad(w, P, y):
    q = np.clip(P @ w, _EPS, 1 - _EPS)
    loss = -np.mean(y * np.log(q) + (1 - y) * np.log1p(-q))
    dq = -(y / q - (1 - y) / (1 - q)) / y.size
    return loss, P.T @ dq


class _Combiner(BaseEstimator):
    """Shared fitted-state checks and ``predict`` of the combiners."""

    def _check_fitted(self):
        if not hasattr(self, "n_members_"):
            raise NotFittedError(f"This {type(self).__name__} is not fitted yet; call fit first.")

    def _record_members(self, P, names):
        self.n_members_ = P.shape[1]
        self.member_names_ = names

    def _check_predict_input(self, P):
        self._check_fitted()
        arr, _, _ = _check_inputs(P, owner=type(self).__name__, n_members=self.n_members_,
                                  member_names=self.member_names_)
        return arr

    def predict(self, P, threshold=0.5):
        """Predicted class, 1 = PNEUMONIA when ``predict_proba(P) >= threshold``.

        Parameters
        ----------
        P : array-like of shape (n_samples, n_members)
            Member probabilities of PNEUMONIA.
        threshold : float, default 0.5

        Returns
        -------
        numpy.ndarray of shape (n_samples,), dtype int
        """
        _check_params("predict", threshold=threshold)
        return (self.predict_proba(P) >= threshold).astype(int)


class SoftVoting(_Combiner):
    """Weighted mean of member probabilities.

    Parameters
    ----------
    weights : None, "optimize" or array-like of shape (n_members,), default None
        None gives every member the same weight; an array is normalised to sum to 1;
        ``"optimize"`` fits non-negative weights summing to 1 that minimise log loss on the
        data passed to :meth:`fit`, which must be held-out or out-of-fold member
        predictions (see the module docstring). The log loss of a mixture is convex in the
        weights, so SLSQP finds the global optimum.

    Attributes
    ----------
    weights_ : numpy.ndarray of shape (n_members,)
        Normalised weights.
    n_members_ : int
    member_names_ : list of str or None
        Columns of the DataFrame seen at fit.

    Examples
    --------
    >>> import numpy as np
    >>> P = np.array([[0.2, 0.4], [0.9, 0.5], [0.6, 0.8]])
    >>> SoftVoting().fit(P, [0, 1, 1]).predict_proba(P)
    array([0.3, 0.7, 0.7])
    >>> SoftVoting(weights=[3, 1]).fit(P, [0, 1, 1]).weights_
    array([0.75, 0.25])
    """

    def __init__(self, *, weights=None):
        self.weights = weights

    def fit(self, P, y):
        """Set or learn the weights.

        Parameters
        ----------
        P : array-like of shape (n_samples, n_members)
            Held-out member probabilities of PNEUMONIA.
        y : array-like of shape (n_samples,)
            0/1 labels.

        Returns
        -------
        self
        """
        _check_params("SoftVoting", weights=self.weights)
        P, y, names = _check_inputs(P, y, owner="SoftVoting")
        n_members = P.shape[1]
        if self.weights is None:
            weights = np.full(n_members, 1.0 / n_members)
        elif isinstance(self.weights, str):
            weights = self._optimize(P, y)
        else:
            weights = _as_weights(self.weights)
            if weights.size != n_members:
                raise _param_error("SoftVoting", "weights", self.weights)
            weights = weights / weights.sum()
        self.weights_ = weights
        self._record_members(P, names)
        return self

    @staticmethod
    def _optimize(P, y):
        n_members = P.shape[1]
        res = optimize.minimize(
            _log_loss_and_grad,
            x0=np.full(n_members, 1.0 / n_members),
            args=(P, y),
            jac=True,
            method="SLSQP",
            bounds=[(0.0, 1.0)] * n_members,
            constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)}],
        )
        if not res.success:
            warnings.warn(f"SoftVoting weight optimisation did not converge: {res.message}", stacklevel=3)
        # SLSQP may overshoot the bounds by rounding error.
        weights = np.clip(res.x, 0.0, None)
        return weights / weights.sum()

    def predict_proba(self, P):
        """Ensemble probability of PNEUMONIA.

        Parameters
        ----------
        P : array-like of shape (n_samples, n_members)

        Returns
        -------
        numpy.ndarray of shape (n_samples,)
        """
        return self._check_predict_input(P) @ self.weights_


class HardVoting(_Combiner):
    """Majority vote of the members' thresholded predictions.

    Parameters
    ----------
    threshold : float, default 0.5
        Each member votes PNEUMONIA when its probability is ``>= threshold``.

    Attributes
    ----------
    n_members_ : int
    member_names_ : list of str or None

    Notes
    -----
    :meth:`predict_proba` returns the fraction of members voting PNEUMONIA, a coarse score
    usable for ROC analysis. With an even number of members a tie (fraction 0.5) is
    predicted PNEUMONIA by ``predict(P)``, the safer error in screening.

    Examples
    --------
    >>> import numpy as np
    >>> P = np.array([[0.2, 0.7, 0.9], [0.1, 0.3, 0.6]])
    >>> vote = HardVoting().fit(P)
    >>> vote.predict_proba(P).round(3), vote.predict(P)
    (array([0.667, 0.333]), array([1, 0]))
    """

    def __init__(self, *, threshold=0.5):
        self.threshold = threshold

    def fit(self, P, y=None):
        """Record the number of members; nothing is learned.

        Parameters
        ----------
        P : array-like of shape (n_samples, n_members)
        y : array-like of shape (n_samples,), optional
            Checked when given, otherwise unused.

        Returns
        -------
        self
        """
        _check_params("HardVoting", threshold=self.threshold)
        P, _, names = _check_inputs(P, y, owner="HardVoting")
        self._record_members(P, names)
        return self

    def predict_proba(self, P):
        """Fraction of members voting PNEUMONIA.

        Parameters
        ----------
        P : array-like of shape (n_samples, n_members)

        Returns
        -------
        numpy.ndarray of shape (n_samples,)
        """
        return (self._check_predict_input(P) >= self.threshold).mean(axis=1)


class Stacking(_Combiner):
    """A meta-classifier trained on member probabilities (stacked generalisation).

    The meta-learner must see member predictions for images the members were not trained
    on: predictions on a held-out, patient-disjoint validation split, or out-of-fold
    predictions from k-fold member training stitched by :func:`assemble_oof` (see the
    module docstring). ``fit`` refuses rows flagged in ``trained_on``.

    Parameters
    ----------
    meta : "logistic" or classifier, default "logistic"
        ``"logistic"`` is ``LogisticRegression()``; any other scikit-learn classifier with
        ``predict_proba`` is cloned before fitting.
    features : {"proba", "logit"}, default "proba"
        Feed the meta-learner the probabilities or their logits (with logits a logistic
        meta-learner generalises Platt scaling of a weighted mean).
    cv : int, default 5
        Folds used to compute :attr:`oof_proba_`, stratified by class and, when ``groups``
        are given to :meth:`fit`, grouped by patient.
    seed : int or None, default 0
        Shuffles the folds.

    Attributes
    ----------
    meta_ : classifier
        Meta-learner fitted on all rows passed to :meth:`fit`.
    oof_proba_ : numpy.ndarray of shape (n_samples,)
        Cross-validated meta-learner probabilities for the rows passed to :meth:`fit`: an
        honest estimate of the stacker's performance on that same data.
    n_members_ : int
    member_names_ : list of str or None

    Notes
    -----
    The default meta-learner keeps scikit-learn's L2 penalty (``C=1``). On probability
    features, which span at most 1, that penalty is strong and pulls the stacked
    probabilities toward the class prevalence (ranking is little affected); use
    ``features="logit"`` or pass ``meta=LogisticRegression(C=...)`` when calibration matters.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = np.tile([0, 1], 20)
    >>> P = np.column_stack([0.3 + 0.4 * y + rng.uniform(-0.2, 0.2, 40), rng.uniform(size=40)])
    >>> stack = Stacking(features="logit", cv=4).fit(P, y)
    >>> stack.oof_proba_.shape, stack.predict(P[:4]).tolist()
    ((40,), [0, 1, 0, 1])
    """

    def __init__(self, *, meta="logistic", features="proba", cv=5, seed=0):
        self.meta = meta
        self.features = features
        self.cv = cv
        self.seed = seed

    def _features(self, P):
        return special.logit(np.clip(P, _EPS, 1 - _EPS)) if self.features == "logit" else P

    def fit(self, P, y, *, trained_on=None, groups=None):
        """Fit the meta-learner, and its cross-validated predictions ``oof_proba_``.

        Parameters
        ----------
        P : array-like of shape (n_samples, n_members)
            Held-out or out-of-fold member probabilities of PNEUMONIA.
        y : array-like of shape (n_samples,)
            0/1 labels.
        trained_on : array-like of bool, shape (n_samples, n_members), optional
            True where a sample was in that member's training data; any True raises.
        groups : array-like of shape (n_samples,), optional
            Patient ids; the folds of ``oof_proba_`` keep each patient in one fold.

        Returns
        -------
        self
        """
        _check_params("Stacking", meta=self.meta, features=self.features, cv=self.cv, seed=self.seed)
        P, y, names = _check_inputs(P, y, owner="Stacking")
        label = names or [f"member_{j}" for j in range(P.shape[1])]
        if trained_on is not None:
            leak = np.asarray(trained_on, dtype=bool)
            if leak.shape != P.shape:
                raise DataError(f"Stacking: trained_on must have shape {P.shape}; got {leak.shape}.")
            counts = leak.sum(axis=0)
            if counts.any():
                which = ", ".join(f"{label[j]!r} on {counts[j]}" for j in np.flatnonzero(counts))
                raise DataError(
                    f"Stacking: members were trained on samples passed to fit ({which}); the "
                    "meta-learner would reward memorisation. Fit it on held-out predictions or "
                    "on out-of-fold predictions from assemble_oof."
                )
        groups = _check_groups(groups, y.size)
        minority = int(min(y.sum(), y.size - y.sum()))
        if minority < self.cv:
            raise DataError(f"Stacking: cv={self.cv} folds need {self.cv} samples of each class; "
                            f"the smaller class has {minority}.")
        if groups is None:
            splitter = StratifiedKFold(self.cv, shuffle=True, random_state=self.seed)
        else:
            n_groups = np.unique(groups).size
            if n_groups < self.cv:
                raise DataError(
                    f"Stacking: cv={self.cv} folds need {self.cv} patients; groups has {n_groups}."
                )
            splitter = StratifiedGroupKFold(self.cv, shuffle=True, random_state=self.seed)
        meta = LogisticRegression() if isinstance(self.meta, str) else clone(self.meta)
        X = self._features(P)
        self.oof_proba_ = cross_val_predict(meta, X, y, cv=splitter, groups=groups,
                                            method="predict_proba")[:, 1]
        self.meta_ = clone(meta).fit(X, y)
        self._record_members(P, names)
        return self

    def predict_proba(self, P):
        """Stacked probability of PNEUMONIA.

        Parameters
        ----------
        P : array-like of shape (n_samples, n_members)

        Returns
        -------
        numpy.ndarray of shape (n_samples,)
        """
        X = self._features(self._check_predict_input(P))
        return self.meta_.predict_proba(X)[:, 1]


def assemble_oof(fold_predictions, fold_ids):
    """Stitch k-fold member predictions into one out-of-fold matrix.

    In k-fold member training every member is trained k times; copy k leaves out the
    samples with ``fold_ids == k`` (use patient-grouped folds) and predicts only those.
    Each cell of the result therefore comes from a model that never saw that sample, so
    the matrix can be passed to :meth:`SoftVoting.fit` or :meth:`Stacking.fit`.

    Parameters
    ----------
    fold_predictions : dict of str -> sequence of array-like, or sequence of sequences
        For each member, one 1-D array per fold, in sorted order of the fold ids: the
        predictions of the copy that left that fold out, for the samples of that fold in
        their original order.
    fold_ids : array-like of shape (n_samples,)
        Fold of each sample.

    Returns
    -------
    pandas.DataFrame of shape (n_samples, n_members)
        Out-of-fold probabilities, one column per member.

    Examples
    --------
    >>> fold_ids = [0, 1, 0, 1]
    >>> oof = assemble_oof({"m0": [[0.1, 0.3], [0.8, 0.9]]}, fold_ids)
    >>> oof["m0"].tolist()
    [0.1, 0.8, 0.3, 0.9]
    """
    if isinstance(fold_predictions, dict):
        members = dict(fold_predictions)
    else:
        members = {f"member_{j}": folds for j, folds in enumerate(fold_predictions)}
    if not members:
        raise DataError("assemble_oof: fold_predictions is empty.")
    fold_ids = np.asarray(fold_ids)
    if fold_ids.ndim != 1 or fold_ids.size == 0:
        raise DataError(f"assemble_oof: fold_ids must be a non-empty 1-D array; got shape {fold_ids.shape}.")
    folds = np.unique(fold_ids).tolist()
    columns = {}
    for name, per_fold in members.items():
        if len(per_fold) != len(folds):
            raise DataError(
                f"assemble_oof: member {name!r} has {len(per_fold)} folds; fold_ids has {len(folds)}."
            )
        column = np.empty(fold_ids.size)
        for fold, preds in zip(folds, per_fold):
            rows = np.flatnonzero(fold_ids == fold)
            preds = np.asarray(preds, dtype=float)
            if preds.shape != rows.shape:
                raise DataError(
                    f"assemble_oof: member {name!r}, fold {fold!r} has {preds.size} predictions "
                    f"for {rows.size} samples."
                )
            column[rows] = preds
        columns[name] = column
    oof = pd.DataFrame(columns)
    _check_inputs(oof, owner="assemble_oof")
    return oof


def diversity(P, y, threshold=0.5):
    """Pairwise diversity of ensemble members (Kuncheva & Whitaker, 2003).

    For members a and b, with N11 the samples both classify correctly, N00 those both get
    wrong, N10 those only a gets right and N01 those only b gets right (N in total):

    - disagreement = (N01 + N10) / N
    - Yule's Q = (N11 N00 - N01 N10) / (N11 N00 + N01 N10)
    - error correlation rho = (N11 N00 - N01 N10) / sqrt((N11+N10)(N01+N00)(N11+N01)(N10+N00))
    - double fault = N00 / N

    Higher disagreement, lower Q, rho and double fault mean more diverse members.
    Undefined ratios are NaN. Kuncheva, L. I. & Whitaker, C. J. (2003). Measures of
    diversity in classifier ensembles. Machine Learning 51, 181-207.

    Parameters
    ----------
    P : array-like of shape (n_samples, n_members)
        Member probabilities of PNEUMONIA; at least two members.
    y : array-like of shape (n_samples,)
        0/1 labels.
    threshold : float, default 0.5
        A member predicts PNEUMONIA when its probability is ``>= threshold``.

    Returns
    -------
    pandas.DataFrame of shape (n_members * (n_members - 1) / 2, 10)
        Columns ``member_a``, ``member_b``, ``disagreement``, ``yules_q``,
        ``error_correlation``, ``double_fault``, ``n11``, ``n10``, ``n01``, ``n00``.

    Examples
    --------
    >>> P = [[0.9, 0.2], [0.8, 0.7], [0.1, 0.6], [0.3, 0.1]]
    >>> diversity(P, [1, 1, 0, 0])[["disagreement", "double_fault"]].values.tolist()
    [[0.5, 0.0]]
    """
    _check_params("diversity", threshold=threshold)
    P, y, names = _check_inputs(P, y, owner="diversity")
    if P.shape[1] < 2:
        raise DataError("diversity: needs at least two members.")
    names = names or [f"member_{j}" for j in range(P.shape[1])]
    correct = ((P >= threshold) == y[:, None]).astype(float)
    wrong = 1.0 - correct
    both_right, both_wrong, only_first = correct.T @ correct, wrong.T @ wrong, correct.T @ wrong
    a, b = np.triu_indices(P.shape[1], k=1)
    n11, n00 = both_right[a, b], both_wrong[a, b]
    n10, n01 = only_first[a, b], only_first[b, a]
    with np.errstate(invalid="ignore", divide="ignore"):
        q = (n11 * n00 - n01 * n10) / (n11 * n00 + n01 * n10)
        rho = (n11 * n00 - n01 * n10) / np.sqrt((n11 + n10) * (n01 + n00) * (n11 + n01) * (n10 + n00))
    n = y.size
    return pd.DataFrame({
        "member_a": [names[i] for i in a],
        "member_b": [names[j] for j in b],
        "disagreement": (n01 + n10) / n,
        "yules_q": q,
        "error_correlation": rho,
        "double_fault": n00 / n,
        "n11": n11.astype(int),
        "n10": n10.astype(int),
        "n01": n01.astype(int),
        "n00": n00.astype(int),
    })


def ensemble_size_curve(P, y, combiner="soft", metric="roc_auc", threshold=0.5):
    """Greedy forward selection of members: the score after each added member.

    Starting from the empty ensemble, each step adds the member that most improves
    ``metric`` of the combined prediction (ties go to the earlier column). Selection and
    scoring use the same data, so the curve is optimistic; run it on validation
    predictions and confirm the chosen size on the test set.

    Parameters
    ----------
    P : array-like of shape (n_samples, n_members)
        Member probabilities of PNEUMONIA.
    y : array-like of shape (n_samples,)
        0/1 labels.
    combiner : {"soft", "hard"}, default "soft"
        Mean probability or fraction of PNEUMONIA votes.
    metric : {"roc_auc", "average_precision", "accuracy", "balanced_accuracy", "f1", "brier"}
        Score to optimise; ``"brier"`` is minimised, the others maximised.
    threshold : float, default 0.5
        Decision threshold of the accuracy-type metrics for ``"soft"``; member vote
        threshold for ``"hard"``, whose ensemble decision is then the majority vote.

    Returns
    -------
    pandas.DataFrame of shape (n_members, 4)
        Columns ``n_members``, ``added``, ``members`` (comma-separated) and ``score``.

    Examples
    --------
    >>> P = [[0.9, 0.4, 0.6], [0.8, 0.6, 0.3], [0.2, 0.7, 0.4], [0.3, 0.1, 0.8]]
    >>> curve = ensemble_size_curve(P, [1, 1, 0, 0])
    >>> curve[["added", "score"]].values.tolist()
    [['member_0', 1.0], ['member_1', 1.0], ['member_2', 1.0]]
    """
    _check_params("ensemble_size_curve", combiner=combiner, metric=metric, threshold=threshold)
    P, y, names = _check_inputs(P, y, owner="ensemble_size_curve")
    names = names or [f"member_{j}" for j in range(P.shape[1])]
    scorer, thresholded, greater_is_better = _SIZE_METRICS[metric]
    if combiner == "soft":
        member_scores, decision = P, threshold
    else:
        member_scores, decision = (P >= threshold).astype(float), 0.5
    sign = 1.0 if greater_is_better else -1.0

    def score(columns):
        combined = member_scores[:, columns].mean(axis=1)
        if thresholded:
            combined = (combined >= decision).astype(int)
        return float(scorer(y, combined))

    selected, remaining, rows = [], list(range(P.shape[1])), []
    while remaining:
        scores = [score(selected + [j]) for j in remaining]
        best = int(np.argmax(sign * np.asarray(scores)))
        selected.append(remaining.pop(best))
        rows.append({
            "n_members": len(selected),
            "added": names[selected[-1]],
            "members": ", ".join(names[j] for j in selected),
            "score": scores[best],
        })
    return pd.DataFrame(rows)
