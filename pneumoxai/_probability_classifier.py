"""The base of the combiners and calibrators: a scikit-learn classifier whose features are probabilities.

:class:`ProbabilityClassifier` is shared by :mod:`pneumoxai.calibration` (one feature, an
uncalibrated probability) and :mod:`pneumoxai.ensemble` (one feature per member): inputs
checked as probabilities, ``classes_``, a two-column ``predict_proba`` and a decision
``threshold`` applied by ``predict``. :func:`logit` is the clipped logit both use.
"""

import numpy as np
from scipy import special
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import NotFittedError as _SklearnNotFittedError
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import check_is_fitted, validate_data

from .errors import DataError, NotFittedError
from .validation import UNIT_INTERVAL, check_labels, check_param, check_probability_columns

__all__ = ["ProbabilityClassifier", "logit", "EPS"]

# Probabilities of exactly 0 or 1 (common in float32 CNN outputs) have infinite logits.
EPS = 1e-7


def logit(p):
    """Logit of probabilities clipped to ``[1e-7, 1 - 1e-7]``, so 0 and 1 stay finite."""
    return special.logit(np.clip(p, EPS, 1 - EPS))


class ProbabilityClassifier(ClassifierMixin, BaseEstimator):
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
