"""Recalibrate a binary classifier's probabilities of PNEUMONIA: temperature and Platt scaling.

A calibrator is a scikit-learn classifier whose one input feature is an uncalibrated
probability of PNEUMONIA, ``X`` of shape ``(n_samples,)`` or ``(n_samples, 1)``; labels are
0 (NORMAL) and 1 (PNEUMONIA). Fit it on validation predictions, never on the test set you
report, then read calibrated probabilities from ``predict_proba(X)[:, 1]``.

This module also holds :class:`_ProbabilityClassifier`, the base that calibrators and the
combiners of :mod:`pneumoxai.ensemble` share: inputs checked as probabilities, ``classes_``,
a two-column ``predict_proba`` and a decision ``threshold`` applied by ``predict``.
"""

import numpy as np
from scipy import optimize, special
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import NotFittedError as _SklearnNotFittedError
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import check_is_fitted, validate_data

from .errors import DataError, NotFittedError
from .validation import UNIT_INTERVAL, check_labels, check_param, check_probability_columns

__all__ = ["TemperatureScaling", "PlattScaling"]

# Probabilities of exactly 0 or 1 (common in float32 CNN outputs) have infinite logits.
_EPS = 1e-7



def _logit(p):
    """Logit of probabilities clipped to ``[1e-7, 1 - 1e-7]``, so 0 and 1 stay finite."""
    return special.logit(np.clip(p, _EPS, 1 - _EPS))


class _ProbabilityClassifier(ClassifierMixin, BaseEstimator):
    """A binary classifier whose input features are probabilities of PNEUMONIA.

    Subclasses declare their parameters in ``_constraints`` (name -> validation constraint),
    call :meth:`_validate` in ``fit`` and ``_proba``, set ``classes_`` last in ``fit``, and
    implement ``_proba(X, method)``, the probability of PNEUMONIA of shape ``(n_samples,)``.
    """

    _constraints = {"threshold": UNIT_INTERVAL}
    #: How error messages name the input.
    _input_name = "X"
    #: One input feature, which may also come as a 1-D array (the calibrators).
    _one_feature = False

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # Probabilities are never negative; scikit-learn then expects "Negative values in data".
        tags.input_tags.positive_only = True
        tags.classifier_tags.multi_class = False
        return tags

    def _check_params(self, *names):
        """Raise the one wording of a bad parameter for ``names`` (default: all of them)."""
        for name in names or self._constraints:
            check_param(type(self).__name__, name, getattr(self, name), self._constraints[name])

    def __sklearn_is_fitted__(self):
        # fit sets classes_ last, so a fit that raised leaves the estimator unfitted.
        return hasattr(self, "classes_")

    def _check_fitted(self):
        try:
            check_is_fitted(self)
        except _SklearnNotFittedError:
            raise NotFittedError(f"This {type(self).__name__} is not fitted yet; call fit first.") from None

    def _validate(self, X, y=None, *, method, reset):
        """Check ``X`` (and ``y``) with scikit-learn's rules, then as probabilities and 0/1 labels.

        Returns the float64 array of shape ``(n_samples, n_features)`` and ``y`` as 0/1 ints
        (None when not given). On ``reset`` (in ``fit``) it records ``n_features_in_`` and
        ``feature_names_in_``.
        """
        owner = f"{type(self).__name__}.{method}"
        if self._one_feature and np.asarray(X).ndim == 1:
            X = np.asarray(X).reshape(-1, 1)
        checks = {"reset": reset, "dtype": np.float64, "ensure_all_finite": False}
        try:
            if y is None:
                # At fit, y=None makes scikit-learn raise when the estimator requires y.
                X = validate_data(self, X, y=None if reset else "no_validation", **checks)
            else:
                X, y = validate_data(self, X, y, **checks)
                target = type_of_target(y, input_name="y", raise_unknown=True)
                if target != "binary":
                    raise ValueError("Only binary classification is supported: y holds 0 (NORMAL) and "
                                     f"1 (PNEUMONIA). The type of the target is {target}.")
        except ValueError as exc:
            raise DataError(f"{owner}: {exc}") from exc
        return self._check_values(X, y, owner)

    def _check_values(self, X, y, owner):
        """The pneumoxai rules on top of scikit-learn's: probabilities, 0/1 labels, one feature."""
        check_probability_columns(X, owner=owner, name=self._input_name, columns=self._column_labels(X.shape[1]))
        if self._one_feature and X.shape[1] != 1:
            raise DataError(f"{owner}: {self._input_name} must hold one probability per sample, shape "
                            f"(n_samples,) or (n_samples, 1); got shape {X.shape}.")
        if y is not None:
            y = check_labels(y, X.shape[0], owner=owner)
        return X, y

    def _column_labels(self, n_columns):
        """Names of the input columns in error messages, or None to name none."""
        return None

    def predict_proba(self, X):
        """Probabilities of NORMAL and PNEUMONIA.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_members), or (n_samples,) for a calibrator
            Input probabilities of PNEUMONIA, with the columns seen by ``fit``.

        Returns
        -------
        numpy.ndarray of shape (n_samples, 2)
            Column 1 is the probability of PNEUMONIA (``classes_[1]``), column 0 its complement.
        """
        self._check_fitted()
        p = self._proba(X, method="predict_proba")
        return np.column_stack([1.0 - p, p])

    def predict(self, X):
        """Predicted class, 1 = PNEUMONIA when ``predict_proba(X)[:, 1] >= threshold``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_members), or (n_samples,) for a calibrator
            Input probabilities of PNEUMONIA, with the columns seen by ``fit``.

        Returns
        -------
        numpy.ndarray of shape (n_samples,), dtype int
        """
        self._check_fitted()
        self._check_params("threshold")
        return self.classes_[(self._proba(X, method="predict") >= self.threshold).astype(int)]


class _Calibrator(_ProbabilityClassifier):
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
        self._fit_logit(_logit(X[:, 0]), y)
        self.classes_ = np.array([0, 1])
        return self

    def _proba(self, X, method):
        X, _ = self._validate(X, method=method, reset=False)
        return special.expit(self._calibrated_logit(_logit(X[:, 0])))


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
