"""Refer the least certain cases to a radiologist: risk-coverage, AURC, AUGRC, and a guaranteed rule.

- :func:`confidence_score`: how sure the ensemble is about each case: the distance of its
  probability from the decision threshold (``"margin"``), the members' agreement
  (``"agreement"``, minus the standard deviation of their probabilities), or both
  (``"combined"``, the mean of their percentile ranks).
- :func:`risk_coverage`: cases kept in order of decreasing confidence; at coverage
  ``k / n`` the selective risk is the error rate of the ``k`` kept cases (Geifman & El-Yaniv
  2017) and the generalized risk the kept errors over all ``n`` cases (Traub et al. 2024).
- :func:`aurc` and :func:`augrc`: the means of those risks over the coverages
  ``1/n, 2/n, ..., 1``.
- :func:`referral_table`: accuracy, sensitivity and specificity on the kept cases when a
  share (5, 10, 20%) of the least confident cases is referred.
- :class:`ReferralRule`: a confidence cutoff chosen on validation so that "sensitivity on the
  kept cases >= ``target``" holds with probability ``1 - delta`` (Learn-then-Test with
  exact binomial p-values and fixed-sequence testing, Angelopoulos et al. 2021), with its
  realised value on new data and a plain statement when the guarantee did not hold.

No TensorFlow here.
"""

import numpy as np
import pandas as pd

from .errors import DataError, NotFittedError
from .validation import (OPEN_UNIT_INTERVAL, UNIT_INTERVAL, Interval, ListOf, Options, check_binary,
                         check_member_probabilities, check_param, check_probabilities, check_scores)

__all__ = [
    "CONFIDENCES",
    "confidence_score",
    "risk_coverage",
    "aurc",
    "augrc",
    "referral_table",
    "ReferralRule",
]

#: The named confidence scores of :func:`confidence_score`.
CONFIDENCES = ("margin", "logit_margin", "agreement", "combined")


def confidence_score(p, *, threshold=0.5, confidence="margin", P=None, owner="confidence_score"):
    """Per-case confidence, higher = surer (cases are referred from the lowest up).

    Parameters
    ----------
    p : array-like of shape (n_samples,)
        Ensemble probabilities of PNEUMONIA.
    threshold : float, default=0.5
        The decision threshold.
    confidence : {"margin", "logit_margin", "agreement", "combined"} or array-like of shape (n_samples,), \
default="margin"
        ``"margin"``: ``|p - threshold|``; ``"logit_margin"``: ``|logit(p) - logit(threshold)|``
        (probabilities clipped to [1e-6, 1 - 1e-6]), which treats both sides of a threshold far
        from 0.5 alike (with ``threshold=0.05`` the margin of a NORMAL call is at most 0.05);
        ``"agreement"``: minus the standard deviation of
        the members' probabilities (needs ``P``); ``"combined"``: the mean of the two scores'
        percentile ranks; an array is used as given.
    P : array-like of shape (n_samples, n_members), default=None
        Member probabilities, for ``"agreement"`` and ``"combined"``.

    Returns
    -------
    numpy.ndarray of shape (n_samples,)

    Examples
    --------
    >>> confidence_score([0.1, 0.45, 0.9]).round(2).tolist()
    [0.4, 0.05, 0.4]
    >>> confidence_score([0.6, 0.6], confidence="agreement", P=[[0.5, 0.7], [0.6, 0.6]]).round(2).tolist()
    [-0.1, -0.0]
    """
    from scipy.stats import rankdata

    p = check_probabilities(p, owner=owner, name="p")
    check_param(owner, "threshold", threshold, UNIT_INTERVAL)
    if not isinstance(confidence, str):
        return check_scores(confidence, p.size, owner=owner, name="confidence")
    check_param(owner, "confidence", confidence, Options(CONFIDENCES))
    margin = np.abs(p - threshold)
    if confidence == "margin":
        return margin
    if confidence == "logit_margin":
        logit = lambda q: np.log(q / (1 - q))  # noqa: E731
        return np.abs(logit(np.clip(p, 1e-6, 1 - 1e-6)) - logit(np.clip(threshold, 1e-6, 1 - 1e-6)))
    if P is None:
        raise DataError(f"{owner}: confidence={confidence!r} needs the member probabilities P.")
    P, _ = check_member_probabilities(P, owner=owner)
    if P.shape[0] != p.size:
        raise DataError(f"{owner}: P has {P.shape[0]} rows but p has {p.size}.")
    agreement = -P.std(axis=1)
    if confidence == "agreement":
        return agreement
    return (rankdata(margin) + rankdata(agreement)) / (2 * p.size)


def risk_coverage(y, p, *, threshold=0.5, confidence="margin", P=None):
    """The risk-coverage curve: cases kept in order of decreasing confidence.

    Ties in confidence keep the input order (a stable sort), so the curve is the one a
    referral in that order would give.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        0/1 labels, 1 = PNEUMONIA.
    p : array-like of shape (n_samples,)
        Probabilities of PNEUMONIA; the call is ``p >= threshold``.
    threshold : float, default=0.5
    confidence, P
        See :func:`confidence_score`.

    Returns
    -------
    pandas.DataFrame
        ``n`` rows, one per coverage ``k / n`` (k = 1..n): ``coverage``, ``risk`` (error rate
        of the ``k`` kept cases), ``generalized_risk`` (kept errors / n), ``cutoff`` (the
        confidence of the k-th case kept), ``sensitivity`` and ``specificity`` of the kept
        cases (NaN while no kept case is of that class).

    Examples
    --------
    >>> risk_coverage([1, 0, 1, 0], [0.9, 0.6, 0.4, 0.2])[["coverage", "risk"]].round(3).values.tolist()
    [[0.25, 0.0], [0.5, 0.0], [0.75, 0.333], [1.0, 0.5]]
    """
    y, p = check_binary(y, p, owner="risk_coverage", name="p")
    score = confidence_score(p, threshold=threshold, confidence=confidence, P=P, owner="risk_coverage")
    order = np.argsort(-score, kind="stable")
    y, call = y[order], (p[order] >= threshold).astype(int)
    k = np.arange(1, len(y) + 1)
    errors = np.cumsum(call != y)
    positives, negatives = np.cumsum(y == 1), np.cumsum(y == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        sensitivity = np.where(positives > 0, np.cumsum((call == 1) & (y == 1)) / positives, np.nan)
        specificity = np.where(negatives > 0, np.cumsum((call == 0) & (y == 0)) / negatives, np.nan)
    return pd.DataFrame({"coverage": k / len(y), "risk": errors / k, "generalized_risk": errors / len(y),
                         "cutoff": score[order], "sensitivity": sensitivity, "specificity": specificity})


def aurc(y, p, *, threshold=0.5, confidence="margin", P=None):
    """Area under the risk-coverage curve: the mean selective risk at coverages 1/n, ..., 1 (Geifman et al.).

    Lower is better; a perfect confidence ranking gives ``e + (1 - e) ln(1 - e)`` in the
    limit for an error rate ``e``, a random one ``e``.

    Examples
    --------
    >>> round(aurc([1, 0, 1, 0], [0.9, 0.6, 0.4, 0.2]), 6)  # (0 + 0 + 1/3 + 1/2) / 4
    0.208333
    """
    return float(risk_coverage(y, p, threshold=threshold, confidence=confidence, P=P)["risk"].mean())


def augrc(y, p, *, threshold=0.5, confidence="margin", P=None):
    """Area under the generalized risk-coverage curve (Traub et al. 2024): mean of kept errors / n.

    It is the chance that a random case is both kept and wrong, averaged over the coverages
    ``1/n, ..., 1``; without ties it equals ``(m (m + 1) / 2 + m c (1 - AUROC_f)) / n^2`` for ``m``
    errors, ``c`` correct calls and ``AUROC_f`` the ROC AUC of the confidence for telling correct
    calls from errors.

    Examples
    --------
    >>> augrc([1, 0, 1, 0], [0.9, 0.6, 0.4, 0.2])  # (0 + 0 + 1/4 + 2/4) / 4
    0.1875
    """
    return float(risk_coverage(y, p, threshold=threshold, confidence=confidence, P=P)["generalized_risk"].mean())


def _kept_metrics(y, call, kept):
    yk, ck = y[kept], call[kept]
    positives, negatives = int((yk == 1).sum()), int((yk == 0).sum())
    return {"n_kept": int(kept.sum()), "coverage": float(kept.mean()),
            "accuracy": float((yk == ck).mean()) if kept.any() else np.nan,
            "sensitivity": float(((ck == 1) & (yk == 1)).sum() / positives) if positives else np.nan,
            "specificity": float(((ck == 0) & (yk == 0)).sum() / negatives) if negatives else np.nan}


def referral_table(y, p, *, threshold=0.5, fractions=(0.05, 0.1, 0.2), confidence="margin", P=None):
    """Accuracy, sensitivity and specificity on the kept cases when the least confident are referred.

    Parameters
    ----------
    y, p, threshold, confidence, P
        See :func:`risk_coverage`.
    fractions : sequence of float, default=(0.05, 0.1, 0.2)
        Shares referred; ``round(f * n)`` cases with the lowest confidence each (ties in
        input order). A first row refers none.

    Returns
    -------
    pandas.DataFrame
        ``referred`` (the share asked), ``n_referred``, ``n_kept``, ``coverage``,
        ``accuracy``, ``sensitivity``, ``specificity``.

    Examples
    --------
    >>> referral_table([1, 0, 1, 0], [0.9, 0.6, 0.4, 0.2], fractions=[0.5])["accuracy"].tolist()
    [0.5, 1.0]
    """
    owner = "referral_table"
    y, p = check_binary(y, p, owner=owner, name="p")
    check_param(owner, "fractions", list(fractions), ListOf(Interval("real", 0, 1, closed="left"), min_length=1))
    score = confidence_score(p, threshold=threshold, confidence=confidence, P=P, owner=owner)
    order = np.argsort(score, kind="stable")  # least confident first
    call = (p >= threshold).astype(int)
    rows = []
    for fraction in (0.0, *fractions):
        kept = np.ones(len(y), dtype=bool)
        kept[order[:int(round(fraction * len(y)))]] = False
        rows.append({"referred": float(fraction), "n_referred": int((~kept).sum()), **_kept_metrics(y, call, kept)})
    return pd.DataFrame(rows)


class ReferralRule:
    """A confidence cutoff with a finite-sample guarantee on the sensitivity of the kept cases.

    Learn-then-Test (Angelopoulos, Bates, Candès, Jordan & Lei 2021) on the validation set:
    for each candidate cutoff (the ``0, step, 2 step, ..., max_referral`` quantiles of the
    validation confidences, so each refers about that share), the null hypothesis "the
    miss rate of the kept PNEUMONIA cases exceeds ``1 - target``" is tested with the exact
    binomial p-value ``P(Binomial(n_kept_positives, 1 - target) <= misses)`` (the
    Clopper-Pearson bound, read as a test). Candidates are tested in a fixed sequence from the
    most referral to the least, each at level ``delta``, stopping at the first one not
    rejected; the rule is the least referral rejected. Then, if the new cases are
    exchangeable with the validation cases, ``sensitivity on kept cases >= target`` holds with
    probability at least ``1 - delta`` over the validation draw. The candidate cutoffs depend
    on the validation confidences but not on their labels; ``tests/test_referral.py``
    checks the coverage over 500 synthetic repetitions.

    Parameters
    ----------
    target : float, default=0.95
        Sensitivity to guarantee on the kept cases, in (0, 1).
    delta : float, default=0.1
        Allowed chance that the guarantee fails, in (0, 1).
    threshold : float, default=0.5
        The decision threshold (``p >= threshold`` is PNEUMONIA).
    max_referral : float, default=0.5
        Largest share of cases that may be referred.
    step : float, default=0.01
    confidence : {"margin", "logit_margin", "agreement", "combined"}, default="margin"
        See :func:`confidence_score`.

    Attributes
    ----------
    cutoff_ : float or None
        Keep a case when its confidence is ``>= cutoff_``; None when no candidate met the
        target (refer everything, or lower the target).
    referral_ : float or None
        Share of the validation cases the rule refers.
    candidates_ : pandas.DataFrame
        Every candidate: ``referral``, ``cutoff``, ``n_positives_kept``, ``misses``,
        ``sensitivity``, ``p_value``, ``tested``, ``rejected``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = (rng.uniform(size=2000) < 0.6).astype(int)
    >>> p = 1 / (1 + np.exp(-rng.normal(np.where(y, 1.5, -1.5), 1)))
    >>> rule = ReferralRule(target=0.95, delta=0.1).fit(y, p)
    >>> bool(rule.referral_ > 0), rule.evaluate(y, p)["held"]
    (True, True)
    """

    def __init__(self, *, target=0.95, delta=0.1, threshold=0.5, max_referral=0.5, step=0.01, confidence="margin"):
        self.target = target
        self.delta = delta
        self.threshold = threshold
        self.max_referral = max_referral
        self.step = step
        self.confidence = confidence

    def _check_params(self):
        owner = "ReferralRule"
        for name in ("target", "delta"):
            check_param(owner, name, getattr(self, name), OPEN_UNIT_INTERVAL)
        check_param(owner, "threshold", self.threshold, UNIT_INTERVAL)
        check_param(owner, "max_referral", self.max_referral, Interval("real", 0, 1, closed="left"))
        check_param(owner, "step", self.step, Interval("real", 0, 1, closed="right"))
        check_param(owner, "confidence", self.confidence, Options(CONFIDENCES))

    def fit(self, y, p, P=None):
        """Choose the cutoff on validation labels ``y``, probabilities ``p`` (and members ``P``)."""
        from scipy.stats import binom

        self._check_params()
        y, p = check_binary(y, p, owner="ReferralRule.fit", name="p")
        score = confidence_score(p, threshold=self.threshold, confidence=self.confidence, P=P,
                                 owner="ReferralRule.fit")
        referrals = np.round(np.arange(0, self.max_referral + 1e-9, self.step), 10)
        cutoffs = np.quantile(score, referrals)
        kept = score[None, :] >= cutoffs[:, None]
        positives = (kept & (y == 1)).sum(axis=1)
        misses = (kept & (y == 1) & (p < self.threshold)).sum(axis=1)
        p_values = np.where(positives > 0, binom.cdf(misses, positives, 1 - self.target), 1.0)
        tested = np.zeros(len(referrals), dtype=bool)
        rejected = np.zeros(len(referrals), dtype=bool)
        for i in range(len(referrals) - 1, -1, -1):  # fixed sequence: most referral first
            tested[i] = True
            if p_values[i] > self.delta:
                break
            rejected[i] = True
        with np.errstate(invalid="ignore", divide="ignore"):
            sensitivity = np.where(positives > 0, 1 - misses / positives, np.nan)
        self.candidates_ = pd.DataFrame({"referral": referrals, "cutoff": cutoffs, "n_positives_kept": positives,
                                         "misses": misses, "sensitivity": sensitivity, "p_value": p_values,
                                         "tested": tested, "rejected": rejected})
        chosen = np.flatnonzero(rejected)
        if len(chosen):
            self.cutoff_ = float(cutoffs[chosen[0]])
            self.referral_ = float(1 - kept[chosen[0]].mean())
        else:
            self.cutoff_ = self.referral_ = None
        return self

    def evaluate(self, y, p, P=None):
        """The rule on new labelled cases: what it kept and whether the guarantee held there.

        Returns
        -------
        dict
            ``n_kept``, ``coverage``, ``accuracy``, ``sensitivity``, ``specificity`` of the kept
            cases, ``target``, ``delta``, ``held`` (``sensitivity >= target``; None without a
            rule) and ``statement``, a sentence for a report.
        """
        if not hasattr(self, "candidates_"):
            raise NotFittedError("This ReferralRule is not fitted yet; call fit on validation data first.")
        y, p = check_binary(y, p, owner="ReferralRule.evaluate", name="p")
        base = {"target": self.target, "delta": self.delta}
        if self.cutoff_ is None:
            stop = self.candidates_[self.candidates_["tested"]].iloc[0]  # tested from the last row up
            return {**base, **_kept_metrics(y, (p >= self.threshold).astype(int), np.zeros(len(y), dtype=bool)),
                    "held": None, "statement": (
                        f"No referral rule was certified: testing from {self.max_referral:.0%} referred downward, "
                        f"the first candidate (refer {stop['referral']:.0%}, validation sensitivity on kept cases "
                        f"{stop['sensitivity']:.3f}, p = {stop['p_value']:.2g}) did not show sensitivity >= "
                        f"{self.target:.0%} at {1 - self.delta:.0%} confidence, so nothing is guaranteed with this "
                        "confidence score.")}
        score = confidence_score(p, threshold=self.threshold, confidence=self.confidence, P=P,
                                 owner="ReferralRule.evaluate")
        metrics = _kept_metrics(y, (p >= self.threshold).astype(int), score >= self.cutoff_)
        held = bool(metrics["sensitivity"] >= self.target) if np.isfinite(metrics["sensitivity"]) else None
        claim = (f"The rule chosen on validation (refer {self.referral_:.0%} of validation cases: "
                 f"sensitivity on kept cases >= {self.target:.0%} with {1 - self.delta:.0%} confidence) kept "
                 f"{metrics['coverage']:.0%} of these cases with sensitivity {metrics['sensitivity']:.3f}")
        if held:
            statement = f"{claim}: the guarantee held."
        else:
            statement = (f"{claim}: the guarantee did NOT hold. It assumes these cases are exchangeable with the "
                         "validation cases; a failure beyond the allowed chance points to a shift between them.")
        return {**base, **metrics, "held": held, "statement": statement}
