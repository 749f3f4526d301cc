"""Combine ensemble members' probabilities, and measure how the members differ.

Everything here works on a matrix ``P`` of member probabilities of PNEUMONIA with shape
``(n_samples, n_members)`` (a NumPy array, or a DataFrame whose columns name the members)
and never touches Keras. The combiners :class:`SoftVoting`, :class:`HardVoting` and
:class:`Stacking` are scikit-learn classifiers on ``P``: labels 0 (NORMAL) and 1 (PNEUMONIA),
``predict_proba(P)`` of shape ``(n_samples, 2)`` whose column 1 is the ensemble probability
of PNEUMONIA, and ``predict(P)`` thresholded at their ``threshold`` parameter.

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

import warnings

import numpy as np
import pandas as pd
from scipy import optimize
from sklearn.base import clone
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

from ._probability_classifier import EPS, ProbabilityClassifier, logit
from .errors import DataError, param_error
from .validation import (
    OPEN_UNIT_INTERVAL,
    SEED,
    UNIT_INTERVAL,
    Interval,
    Options,
    Predicate,
    check_groups,
    check_labels,
    check_member_probabilities,
    check_param,
    describe,
)

__all__ = [
    "SoftVoting",
    "HardVoting",
    "Stacking",
    "assemble_oof",
    "diversity",
    "ensemble_size_curve",
]


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


_SIZE_METRICS = {
    # name: (scorer(y, score), uses thresholded predictions, greater is better)
    "roc_auc": (roc_auc_score, False, True),
    "average_precision": (average_precision_score, False, True),
    "accuracy": (accuracy_score, True, True),
    "balanced_accuracy": (balanced_accuracy_score, True, True),
    "f1": (lambda y, pred: f1_score(y, pred, zero_division=0), True, True),
    "brier": (brier_score_loss, False, False),
}

# Every allowed parameter value, in one place: owner -> parameter -> constraint.
_CONSTRAINTS = {
    "SoftVoting": {
        "weights": (None, Options(("optimize",)),
                    Predicate(lambda v: not isinstance(v, str) and _as_weights(v) is not None,
                              "an array of n_members non-negative numbers")),
        "threshold": UNIT_INTERVAL,
    },
    "HardVoting": {
        "vote_threshold": OPEN_UNIT_INTERVAL,
        "threshold": UNIT_INTERVAL,
    },
    "Stacking": {
        "meta": (Options(("logistic",)), Predicate(lambda v: hasattr(v, "fit") and hasattr(v, "predict_proba"),
                                                   "a scikit-learn classifier with fit and predict_proba")),
        "features": Options(("proba", "logit")),
        "cv": Interval("int", 2, 100),
        "seed": (None, SEED),
        "threshold": UNIT_INTERVAL,
    },
    "diversity": {
        "threshold": UNIT_INTERVAL,
    },
    "ensemble_size_curve": {
        "combiner": Options(("soft", "hard")),
        "metric": Options(tuple(_SIZE_METRICS)),
        "threshold": UNIT_INTERVAL,
    },
}


def _check_args(owner, **args):
    """Check a function's arguments against ``_CONSTRAINTS[owner]``."""
    for name, value in args.items():
        check_param(owner, name, value, _CONSTRAINTS[owner][name])


def _member_labels(n_members):
    return [f"member_{j}" for j in range(n_members)]


def _check_inputs(P, y=None, *, owner):
    """Validate member probabilities (and labels) for the functions of this module.

    Parameters
    ----------
    P : array-like or DataFrame of shape (n_samples, n_members)
        Probabilities of PNEUMONIA, one column per member.
    y : array-like of shape (n_samples,), default=None
        0/1 labels; checked for length, values and both classes when given.
    owner : str
        Name used in error messages.

    Returns
    -------
    P : numpy.ndarray of shape (n_samples, n_members)
    y : numpy.ndarray of shape (n_samples,) or None
    names : list of str
        DataFrame columns, or ``member_0``, ``member_1``, ... for arrays.
    """
    arr, names = check_member_probabilities(P, owner=owner)
    labels = None if y is None else check_labels(y, arr.shape[0], owner=owner)
    return arr, labels, names


def _log_loss_and_grad(w, P, y):
    q = np.clip(P @ w, EPS, 1 - EPS)
    loss = -np.mean(y * np.log(q) + (1 - y) * np.log1p(-q))
    dq = -(y / q - (1 - y) / (1 - q)) / y.size
    return loss, P.T @ dq


class _Combiner(ProbabilityClassifier):
    """A classifier on member probabilities ``P`` of shape (n_samples, n_members)."""

    _input_name = "P"

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # Voting learns no decision function: on features that are not probabilities of
        # class 1 its accuracy is poor, which scikit-learn's checks then do not demand.
        tags.classifier_tags.poor_score = not isinstance(self, Stacking)
        return tags

    def _column_labels(self, n_columns):
        names = getattr(self, "feature_names_in_", None)
        return [str(n) for n in names] if names is not None else _member_labels(n_columns)


class SoftVoting(_Combiner):
    """Weighted mean of member probabilities.

    Parameters
    ----------
    weights : None, "optimize" or array-like of shape (n_members,), default=None
        None gives every member the same weight; an array is normalised to sum to 1;
        ``"optimize"`` fits non-negative weights summing to 1 that minimise log loss on the
        data passed to :meth:`fit`, which must be held-out or out-of-fold member
        predictions (see the module docstring). The log loss of a mixture is convex in the
        weights, so SLSQP finds the global optimum.
    threshold : float, default=0.5
        :meth:`predict` says PNEUMONIA when the weighted mean is ``>= threshold``.

    Attributes
    ----------
    weights_ : numpy.ndarray of shape (n_members,)
        Normalised weights.
    classes_ : numpy.ndarray of shape (2,)
        ``array([0, 1])``: NORMAL, PNEUMONIA.
    n_features_in_ : int
        Number of members.
    feature_names_in_ : numpy.ndarray of shape (n_members,)
        Member names, the columns of the DataFrame seen at fit; only set for DataFrames
        with string column names.

    Examples
    --------
    >>> import numpy as np
    >>> P = np.array([[0.2, 0.4], [0.9, 0.5], [0.6, 0.8]])
    >>> soft = SoftVoting(threshold=0.6).fit(P, [0, 1, 1])
    >>> soft.predict_proba(P)[:, 1], soft.predict(P)
    (array([0.3, 0.7, 0.7]), array([0, 1, 1]))
    >>> SoftVoting(weights=[3, 1]).fit(P, [0, 1, 1]).weights_
    array([0.75, 0.25])
    """

    _constraints = _CONSTRAINTS["SoftVoting"]

    def __init__(self, *, weights=None, threshold=0.5):
        self.weights = weights
        self.threshold = threshold

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
        self._check_params()
        P, y = self._validate(P, y, method="fit", reset=True)
        n_members = P.shape[1]
        if self.weights is None:
            weights = np.full(n_members, 1.0 / n_members)
        elif isinstance(self.weights, str):
            weights = self._optimize(P, y)
        else:
            weights = _as_weights(self.weights)
            if weights.size != n_members:
                raise param_error("SoftVoting", "weights", describe(self._constraints["weights"]), self.weights)
            weights = weights / weights.sum()
        self.weights_ = weights
        self.classes_ = np.array([0, 1])
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

    def _proba(self, P, method):
        P, _ = self._validate(P, method=method, reset=False)
        return P @ self.weights_


class HardVoting(_Combiner):
    """Majority vote of the members' thresholded predictions.

    Parameters
    ----------
    vote_threshold : float, default=0.5
        Each member votes PNEUMONIA when its probability is ``>= vote_threshold``.
    threshold : float, default=0.5
        :meth:`predict` says PNEUMONIA when the fraction of members voting PNEUMONIA is
        ``>= threshold``: 0.5 is the majority vote, with a tie going to PNEUMONIA (the safer
        error in screening); 1.0 asks for a unanimous vote.

    Attributes
    ----------
    classes_ : numpy.ndarray of shape (2,)
        ``array([0, 1])``: NORMAL, PNEUMONIA.
    n_features_in_ : int
        Number of members.
    feature_names_in_ : numpy.ndarray of shape (n_members,)
        Member names, only set when fit on a DataFrame with string column names.

    Notes
    -----
    ``predict_proba(P)[:, 1]`` is the fraction of members voting PNEUMONIA, a coarse score
    usable for ROC analysis. ``y`` is optional in :meth:`fit`: nothing is learned.

    Examples
    --------
    >>> import numpy as np
    >>> P = np.array([[0.2, 0.7, 0.9], [0.1, 0.3, 0.6]])
    >>> vote = HardVoting().fit(P)
    >>> vote.predict_proba(P)[:, 1].round(3), vote.predict(P)
    (array([0.667, 0.333]), array([1, 0]))
    >>> HardVoting(vote_threshold=0.25).fit(P).predict(P)
    array([1, 1])
    """

    _constraints = _CONSTRAINTS["HardVoting"]

    def __init__(self, *, vote_threshold=0.5, threshold=0.5):
        self.vote_threshold = vote_threshold
        self.threshold = threshold

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = False
        return tags

    def fit(self, P, y=None):
        """Record the number (and names) of members; nothing is learned.

        Parameters
        ----------
        P : array-like of shape (n_samples, n_members)
            Member probabilities of PNEUMONIA.
        y : array-like of shape (n_samples,), default=None
            0/1 labels; checked when given, otherwise unused.

        Returns
        -------
        self
        """
        self._check_params()
        self._validate(P, y, method="fit", reset=True)
        self.classes_ = np.array([0, 1])
        return self

    def _proba(self, P, method):
        P, _ = self._validate(P, method=method, reset=False)
        return (P >= self.vote_threshold).mean(axis=1)


class Stacking(_Combiner):
    """A meta-classifier trained on member probabilities (stacked generalisation).

    The meta-learner must see member predictions for images the members were not trained
    on: predictions on a held-out, patient-disjoint validation split, or out-of-fold
    predictions from k-fold member training stitched by :func:`assemble_oof` (see the
    module docstring). ``fit`` refuses rows flagged in ``trained_on``.

    Parameters
    ----------
    meta : "logistic" or classifier, default="logistic"
        ``"logistic"`` is ``LogisticRegression()``; any other scikit-learn classifier with
        ``predict_proba`` is cloned before fitting.
    features : {"proba", "logit"}, default="proba"
        Feed the meta-learner the probabilities or their logits (with logits a logistic
        meta-learner generalises Platt scaling of a weighted mean).
    cv : int, default=5
        Folds used to compute :attr:`oof_proba_`, stratified by class and, when ``groups``
        are given to :meth:`fit`, grouped by patient.
    seed : int or None, default=0
        Shuffles the folds.
    threshold : float, default=0.5
        :meth:`predict` says PNEUMONIA when the stacked probability is ``>= threshold``.

    Attributes
    ----------
    meta_ : classifier
        Meta-learner fitted on all rows passed to :meth:`fit`.
    oof_proba_ : numpy.ndarray of shape (n_samples, 2)
        Cross-validated meta-learner probabilities of NORMAL and PNEUMONIA for the rows
        passed to :meth:`fit`, laid out like :meth:`predict_proba`: an honest estimate of
        the stacker's performance on that same data.
    classes_ : numpy.ndarray of shape (2,)
        ``array([0, 1])``: NORMAL, PNEUMONIA.
    n_features_in_ : int
        Number of members.
    feature_names_in_ : numpy.ndarray of shape (n_members,)
        Member names, only set when fit on a DataFrame with string column names.

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
    ((40, 2), [0, 1, 0, 1])
    """

    _constraints = _CONSTRAINTS["Stacking"]

    def __init__(self, *, meta="logistic", features="proba", cv=5, seed=0, threshold=0.5):
        self.meta = meta
        self.features = features
        self.cv = cv
        self.seed = seed
        self.threshold = threshold

    def _features(self, P):
        return logit(P) if self.features == "logit" else P

    def fit(self, P, y, *, trained_on=None, groups=None):
        """Fit the meta-learner, and its cross-validated predictions ``oof_proba_``.

        Parameters
        ----------
        P : array-like of shape (n_samples, n_members)
            Held-out or out-of-fold member probabilities of PNEUMONIA.
        y : array-like of shape (n_samples,)
            0/1 labels.
        trained_on : array-like of bool of shape (n_samples, n_members), default=None
            True where a sample was in that member's training data; any True raises.
        groups : array-like of shape (n_samples,), default=None
            Patient ids; the folds of ``oof_proba_`` keep each patient in one fold.

        Returns
        -------
        self
        """
        self._check_params()
        P, y = self._validate(P, y, method="fit", reset=True)
        if trained_on is not None:
            self._refuse_training_rows(np.asarray(trained_on, dtype=bool), P.shape)
        groups = check_groups(groups, y.size, owner="Stacking.fit")
        minority = int(min(y.sum(), y.size - y.sum()))
        if minority < self.cv:
            raise DataError(f"Stacking.fit: cv={self.cv} folds need {self.cv} samples of each class; "
                            f"the smaller class has {minority}.")
        if groups is None:
            splitter = StratifiedKFold(self.cv, shuffle=True, random_state=self.seed)
        else:
            n_groups = np.unique(groups).size
            if n_groups < self.cv:
                raise DataError(
                    f"Stacking.fit: cv={self.cv} folds need {self.cv} patients; groups has {n_groups}."
                )
            splitter = StratifiedGroupKFold(self.cv, shuffle=True, random_state=self.seed)
        meta = LogisticRegression() if isinstance(self.meta, str) else clone(self.meta)
        X = self._features(P)
        self.oof_proba_ = cross_val_predict(meta, X, y, cv=splitter, groups=groups, method="predict_proba")
        self.meta_ = clone(meta).fit(X, y)
        self.classes_ = np.array([0, 1])
        return self

    def _refuse_training_rows(self, trained_on, shape):
        if trained_on.shape != shape:
            raise DataError(f"Stacking.fit: trained_on must have shape {shape}; got {trained_on.shape}.")
        counts = trained_on.sum(axis=0)
        if counts.any():
            label = self._column_labels(shape[1])
            which = ", ".join(f"{label[j]!r} on {counts[j]}" for j in np.flatnonzero(counts))
            raise DataError(
                f"Stacking.fit: members were trained on samples passed to fit ({which}); the "
                "meta-learner would reward memorisation. Fit it on held-out predictions or "
                "on out-of-fold predictions from assemble_oof."
            )

    def _proba(self, P, method):
        P, _ = self._validate(P, method=method, reset=False)
        return self.meta_.predict_proba(self._features(P))[:, 1]


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
    threshold : float, default=0.5
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
    _check_args("diversity", threshold=threshold)
    P, y, names = _check_inputs(P, y, owner="diversity")
    if P.shape[1] < 2:
        raise DataError("diversity: needs at least two members.")
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
    combiner : {"soft", "hard"}, default="soft"
        Mean probability or fraction of PNEUMONIA votes.
    metric : str, default="roc_auc"
        Score to optimise: ``"roc_auc"``, ``"average_precision"``, ``"accuracy"``,
        ``"balanced_accuracy"``, ``"f1"`` or ``"brier"``; ``"brier"`` is minimised, the others
        maximised.
    threshold : float, default=0.5
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
    _check_args("ensemble_size_curve", combiner=combiner, metric=metric, threshold=threshold)
    P, y, names = _check_inputs(P, y, owner="ensemble_size_curve")
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
