"""Recalibrate a binary classifier's probabilities of PNEUMONIA: temperature and Platt scaling.

A calibrator is a scikit-learn classifier whose one input feature is an uncalibrated
probability of PNEUMONIA, ``X`` of shape ``(n_samples,)`` or ``(n_samples, 1)``; labels are
0 (NORMAL) and 1 (PNEUMONIA). Fit it on validation predictions, never on the test set you
report, then read calibrated probabilities from ``predict_proba(X)[:, 1]``.

Both calibrators build on :class:`pneumoxai._probability_classifier.ProbabilityClassifier`,
the base they share with the combiners of :mod:`pneumoxai.ensemble`.
"""

import numpy as np
from scipy import optimize, special

from ._probability_classifier import ProbabilityClassifier, logit

__all__ = ["TemperatureScaling", "PlattScaling"]


class _Calibrator(ProbabilityClassifier):
    """Fit and predict through a map of the logit: X of shape (n_samples,) or (n_samples, 1)."""

    _one_feature = True

    def fit(self, X, y):
        """Fit the calibration map on validation probabilities.

        Parameters
        ----------
        X : array-like of shape (n_samples,) or (n_samples, 1)
            Uncalibrated probabilities of PNEUMONIA.
        y : array-like of shape (n_samples,)
            0/1 labels, 1 = PNEUMONIA; both classes must be present.

        Returns
        -------
        self
        """
        self._check_params()
        X, y = self._validate(X, y, method="fit", reset=True)
        self._fit_logit(logit(X[:, 0]), y)
        self.classes_ = np.array([0, 1])
        return self

    def _proba(self, X, method):
        X, _ = self._validate(X, method=method, reset=False)
        return special.expit(self._calibrated_logit(logit(X[:, 0])))


class TemperatureScaling(_Calibrator):
    """Temperature scaling of a binary classifier's probabilities (Guo et al., 2017).

    Calibrated probability is ``sigmoid(logit(p) / T)`` with one temperature ``T > 0``
    chosen to minimise log loss. Ranking, hence AUC, is unchanged.

    Parameters
    ----------
    threshold : float, default=0.5
        :meth:`predict` says PNEUMONIA when the calibrated probability is ``>= threshold``.

    Attributes
    ----------
    temperature_ : float
        Fitted temperature; ``> 1`` softens over-confident predictions.
    classes_ : numpy.ndarray of shape (2,)
        ``array([0, 1])``: NORMAL, PNEUMONIA.
    n_features_in_ : int
        Always 1.

    Examples
    --------
    >>> import numpy as np
    >>> y = np.array([0, 1, 0, 1, 1, 0, 1, 0])
    >>> p = np.array([0.01, 0.99, 0.99, 0.02, 0.98, 0.03, 0.97, 0.6])  # over-confident
    >>> ts = TemperatureScaling().fit(p, y)
    >>> bool(ts.temperature_ > 1), ts.predict_proba([0.99]).shape
    (True, (1, 2))
    """

    def __init__(self, *, threshold=0.5):
        self.threshold = threshold

    def _fit_logit(self, z, y):
        def nll(log_t):
            s = z / np.exp(log_t)
            return np.mean(np.logaddexp(0.0, s) - y * s)

        # Bounded: on separable data the optimum is T -> 0, which would overflow.
        res = optimize.minimize_scalar(nll, bounds=(np.log(1e-2), np.log(1e2)), method="bounded")
        self.temperature_ = float(np.exp(res.x))

    def _calibrated_logit(self, z):
        return z / self.temperature_


class PlattScaling(_Calibrator):
    """Platt scaling: a logistic regression on the logit of the probabilities (Platt, 1999).

    Calibrated probability is ``sigmoid(coef_ * logit(p) + intercept_)``. Targets are
    smoothed to ``(N+ + 1) / (N+ + 2)`` and ``1 / (N- + 2)`` as in Platt's paper, which keeps
    the fit finite on separable validation data.

    Parameters
    ----------
    threshold : float, default=0.5
        :meth:`predict` says PNEUMONIA when the calibrated probability is ``>= threshold``.

    Attributes
    ----------
    coef_ : float
        Slope on the logit scale.
    intercept_ : float
        Offset on the logit scale.
    classes_ : numpy.ndarray of shape (2,)
        ``array([0, 1])``: NORMAL, PNEUMONIA.
    n_features_in_ : int
        Always 1.

    Examples
    --------
    >>> import numpy as np
    >>> y = np.array([0, 0, 0, 1, 1, 1, 0, 1])
    >>> p = np.array([0.6, 0.7, 0.65, 0.9, 0.8, 0.85, 0.75, 0.7])  # all shifted upward
    >>> cal = PlattScaling().fit(p, y)
    >>> bool(cal.predict_proba([0.6])[0, 1] < 0.6), cal.predict([0.6, 0.9]).tolist()
    (True, [0, 1])
    """

    def __init__(self, *, threshold=0.5):
        self.threshold = threshold

    def _fit_logit(self, z, y):
        n_pos = y.sum()
        n_neg = y.size - n_pos
        target = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))

        def nll(params):
            s = params[0] * z + params[1]
            resid = special.expit(s) - target
            return np.mean(np.logaddexp(0.0, s) - target * s), np.array([np.mean(resid * z), resid.mean()])

        res = optimize.minimize(nll, x0=np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
        self.coef_, self.intercept_ = float(res.x[0]), float(res.x[1])

    def _calibrated_logit(self, z):
        return self.coef_ * z + self.intercept_
