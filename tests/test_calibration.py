"""Known-answer tests of the calibrators, and the scikit-learn contract of every classifier on
probabilities (the calibrators and the combiners of pneumoxai.ensemble)."""

import pickle
import re

import numpy as np
import pandas as pd
import pytest
from scipy import special
from sklearn import metrics as skm
from sklearn.base import clone, is_classifier
from sklearn.exceptions import NotFittedError as SklearnNotFittedError
from sklearn.utils.estimator_checks import check_estimator

from pneumoxai.calibration import PlattScaling, TemperatureScaling
from pneumoxai.ensemble import HardVoting, SoftVoting, Stacking
from pneumoxai.errors import ConfigError, DataError, NotFittedError
from pneumoxai.metrics import expected_calibration_error


def _overconfident(n=4000, temperature=3.0, seed=0):
    """Labels drawn from sigmoid(z) and probabilities sigmoid(temperature * z)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=2.0, size=n)
    y = (rng.uniform(size=n) < special.expit(z)).astype(int)
    return special.expit(temperature * z), y


# ---------------------------------------------------------------------------- calibrators


def test_temperature_scaling_recovers_known_temperature():
    p, y = _overconfident()
    ts = TemperatureScaling().fit(p, y)
    assert ts.temperature_ == pytest.approx(3.0, rel=0.1)
    calibrated = ts.predict_proba(p)[:, 1]
    logit = special.logit(np.clip(p, 1e-7, 1 - 1e-7))  # clipped so that 0 and 1 stay finite
    np.testing.assert_allclose(calibrated, special.expit(logit / ts.temperature_))
    assert skm.roc_auc_score(y, calibrated) == pytest.approx(skm.roc_auc_score(y, p))
    assert expected_calibration_error(y, calibrated) < expected_calibration_error(y, p) / 3


def test_platt_scaling_recovers_known_slope_and_intercept():
    rng = np.random.default_rng(1)
    p = special.expit(rng.normal(scale=2.0, size=4000))
    y = rng.uniform(size=p.size) < special.expit(0.5 * special.logit(p) - 0.7)
    cal = PlattScaling().fit(p, y)
    assert cal.coef_ == pytest.approx(0.5, abs=0.08)
    assert cal.intercept_ == pytest.approx(-0.7, abs=0.12)
    expected = special.expit(cal.coef_ * special.logit(p) + cal.intercept_)
    np.testing.assert_allclose(cal.predict_proba(p), np.column_stack([1 - expected, expected]))


@pytest.mark.parametrize("calibrator", [TemperatureScaling, PlattScaling])
def test_calibrators_take_a_vector_a_column_or_a_one_column_frame(calibrator):
    p, y = _overconfident(n=300)
    vector = calibrator().fit(p, y)
    column = calibrator().fit(p[:, None], y)
    frame = calibrator().fit(pd.DataFrame({"soft voting": p}), y)
    np.testing.assert_allclose(column.predict_proba(p[:, None]), vector.predict_proba(p))
    np.testing.assert_allclose(frame.predict_proba(pd.DataFrame({"soft voting": p})), vector.predict_proba(p))
    assert frame.feature_names_in_.tolist() == ["soft voting"] and vector.n_features_in_ == 1


_P6 = np.array([0.1, 0.3, 0.2, 0.8, 0.7, 0.9])
_Y6 = np.array([0, 0, 1, 1, 0, 1])


@pytest.mark.parametrize(
    ("X", "y", "match"),
    [
        (np.column_stack([_P6, _P6]), _Y6,
         r"{owner}: X must hold one probability per sample, shape \(n_samples,\) or \(n_samples, 1\); "
         r"got shape \(6, 2\)"),
        (_P6 * 4 - 2, _Y6, r"Negative values in data passed to {owner}: X must hold probabilities in \[0, 1\]; "
                           r"got values from -1.6 to 1.6. Pass probabilities, not logits."),
        (_P6 * 2, _Y6, r"^{owner}: X must hold probabilities in \[0, 1\]; got values from 0.2 to 1.8"),
        (np.where(_P6 == 0.3, np.nan, _P6), _Y6, "{owner}: X has 1 NaN or infinite values."),
        (np.empty(0), [], r"{owner}: Found array with 0 sample\(s\)"),
        (["a"] * 6, _Y6, "{owner}: could not convert string to float"),
        (_P6, _Y6[:5], r"{owner}: Found input variables with inconsistent numbers of samples: \[6, 5\]"),
        (_P6, [0, 1, 2, 0, 1, 2], "{owner}: Only binary classification is supported.* target is multiclass"),
        (_P6, _P6, "{owner}: Only binary classification is supported.* type of the target is continuous"),
        (_P6, [0, 2, 0, 2, 0, 2], r"y_true must hold only 0 \(NORMAL\) and 1 \(PNEUMONIA\); found 2"),
        (_P6, np.ones(6), r"y_true holds a single class \(1\)"),
    ],
)
@pytest.mark.parametrize("calibrator", [TemperatureScaling, PlattScaling])
def test_calibrators_reject_bad_data(calibrator, X, y, match):
    with pytest.raises(DataError, match=match.format(owner=f"{calibrator.__name__}.fit")):
        calibrator().fit(X, y)


@pytest.mark.parametrize("calibrator", [TemperatureScaling, PlattScaling])
def test_calibrators_check_the_input_at_predict(calibrator):
    fitted = calibrator().fit(_P6, _Y6)
    with pytest.raises(DataError, match=f"{calibrator.__name__}.predict: X has 2 features, but .* expecting 1"):
        fitted.predict(np.column_stack([_P6, _P6]))
    with pytest.raises(DataError, match=rf"{calibrator.__name__}.predict_proba: X must hold probabilities"):
        fitted.predict_proba(_P6 + 1)


@pytest.mark.parametrize("calibrator", [TemperatureScaling, PlattScaling])
@pytest.mark.parametrize("threshold", [-0.1, 1.5, "0.5", None, True])
def test_calibrators_reject_bad_threshold(calibrator, threshold):
    message = (rf"The 'threshold' parameter of {calibrator.__name__} must be a number in \[0, 1\]; "
               rf"got {re.escape(repr(threshold))}\.")
    with pytest.raises(ConfigError, match=message):
        calibrator(threshold=threshold).fit(_P6, _Y6)


# ---------------------------------------------------------------------------- scikit-learn contract

_ESTIMATORS = [SoftVoting(), HardVoting(), Stacking(cv=3), TemperatureScaling(), PlattScaling()]
_IDS = [type(e).__name__ for e in _ESTIMATORS]


def _data(estimator, n=60, seed=0):
    """Member probabilities (n, 3) with signal for a combiner, their first column for a calibrator."""
    rng = np.random.default_rng(seed)
    y = np.tile([0, 1], n // 2)
    P = special.expit((2 * y - 1)[:, None] + rng.normal(scale=1.5, size=(n, 3)))
    return (P[:, 0] if isinstance(estimator, (TemperatureScaling, PlattScaling)) else P), y


@pytest.mark.parametrize("estimator", _ESTIMATORS, ids=_IDS)
def test_classifier_api_threshold_and_score(estimator):
    X, y = _data(estimator)
    fitted = clone(estimator).set_params(threshold=0.3).fit(X, y)
    proba = fitted.predict_proba(X)
    assert is_classifier(fitted) and fitted.classes_.tolist() == [0, 1]
    assert proba.shape == (y.size, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(fitted.predict(X), (proba[:, 1] >= 0.3).astype(int))
    assert fitted.score(X, y) == skm.accuracy_score(y, fitted.predict(X))
    n_positive = {t: fitted.set_params(threshold=t).predict(X).sum() for t in (0.3, 0.8)}
    assert n_positive[0.8] <= n_positive[0.3]


@pytest.mark.parametrize("estimator", _ESTIMATORS, ids=_IDS)
def test_clone_of_unfitted_and_fitted_estimators(estimator):
    X, y = _data(estimator)
    estimator = clone(estimator).set_params(threshold=0.4)
    fitted = clone(estimator).fit(X, y)
    for original in (estimator, fitted):
        copy = clone(original)
        assert copy is not original and copy.get_params() == original.get_params()
        assert not hasattr(copy, "classes_")
        with pytest.raises(NotFittedError):
            copy.predict(X)
    np.testing.assert_allclose(clone(fitted).fit(X, y).predict_proba(X), fitted.predict_proba(X))


@pytest.mark.parametrize("estimator", _ESTIMATORS, ids=_IDS)
def test_fitted_estimators_survive_pickle(estimator):
    X, y = _data(estimator)
    fitted = clone(estimator).fit(X, y)
    restored = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(restored.predict_proba(X), fitted.predict_proba(X))


@pytest.mark.parametrize("estimator", _ESTIMATORS, ids=_IDS)
@pytest.mark.parametrize("method", ["predict", "predict_proba", "score"])
def test_unfitted_estimators_raise_sklearn_not_fitted_error(estimator, method):
    X, y = _data(estimator)
    args = (X, y) if method == "score" else (X,)
    with pytest.raises(NotFittedError, match=f"This {type(estimator).__name__} is not fitted yet") as caught:
        getattr(clone(estimator), method)(*args)
    assert isinstance(caught.value, SklearnNotFittedError)


@pytest.mark.parametrize("estimator", _ESTIMATORS, ids=_IDS)
def test_a_fit_that_raised_leaves_the_estimator_unfitted(estimator):
    X, y = _data(estimator)
    broken = clone(estimator)
    with pytest.raises(DataError):
        broken.fit(X + 1, y)  # validated (n_features_in_ is set), then refused as not probabilities
    with pytest.raises(NotFittedError):
        broken.predict(X)


# scikit-learn's checks draw their data from make_blobs, iris, 3 * uniform(...) and the like,
# so most of them feed values outside [0, 1]. A classifier on probabilities refuses those in
# fit, and the check fails before it reaches what it tests. Each expected failure is listed
# with the message that fails it; run `check_estimator(est, on_fail=None)` to see them.
_NOT_PROBABILITIES = r"must hold probabilities in \[0, 1\]"
_ONE_FEATURE = "must hold one probability per sample"
_NOT_0_1 = r"only 0 \(NORMAL\) and 1 \(PNEUMONIA\)"

_FAIL_ON_VALUES_OUTSIDE_0_1 = dict.fromkeys([
    "check_classifier_data_not_an_array",
    "check_classifiers_classes",
    "check_classifiers_train",
    "check_dict_unchanged",
    "check_dont_overwrite_parameters",
    "check_estimators_dtypes",
    "check_estimators_fit_returns_self",
    "check_estimators_overwrite_params",
    "check_estimators_pickle",
    "check_f_contiguous_array_estimator",
    "check_fit2d_1feature",
    "check_fit2d_1sample",
    "check_fit2d_predict1d",
    "check_fit_check_is_fitted",
    "check_fit_idempotent",
    "check_methods_sample_order_invariance",
    "check_methods_subset_invariance",
    "check_n_features_in",
    "check_n_features_in_after_fitting",
    "check_pipeline_consistency",
    "check_readonly_memmap_input",
], _NOT_PROBABILITIES)

# A calibrator maps one probability: checks whose data lie in [0, 1] but have several columns.
_FAIL_ON_SEVERAL_COLUMNS = dict.fromkeys([
    "check_classifiers_one_label",
    "check_dtype_object",
    "check_estimators_nan_inf",
    "check_fit_score_takes_y",
    "check_supervised_y_2d",
], _ONE_FEATURE)

_EXPECTED_FAILURES = {
    "SoftVoting": _FAIL_ON_VALUES_OUTSIDE_0_1,
    "HardVoting": _FAIL_ON_VALUES_OUTSIDE_0_1,
    "Stacking": _FAIL_ON_VALUES_OUTSIDE_0_1,
    "TemperatureScaling": {**_FAIL_ON_VALUES_OUTSIDE_0_1, **_FAIL_ON_SEVERAL_COLUMNS},
    "PlattScaling": {**_FAIL_ON_VALUES_OUTSIDE_0_1, **_FAIL_ON_SEVERAL_COLUMNS},
}


class _OnProbabilities:
    """Passes the check data through a sigmoid after scikit-learn's own input validation, so
    every check sees probabilities: what still fails is not about the [0, 1] range."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = False  # any real number becomes a probability
        return tags

    def _check_values(self, X, y, owner):
        return super()._check_values(np.where(np.isfinite(X), special.expit(X), X), y, owner)


# Module level, so that check_estimators_pickle can pickle them.
class SoftVotingOnProbabilities(_OnProbabilities, SoftVoting):
    pass


class HardVotingOnProbabilities(_OnProbabilities, HardVoting):
    pass


class StackingOnProbabilities(_OnProbabilities, Stacking):
    pass


# What fails once the data are probabilities. Labels must be 0 (NORMAL) and 1 (PNEUMONIA),
# because P is the probability of class 1: accepting any two labels would silently read P as
# the probability of whichever label sorts last. scikit-learn's single-sample check looks for
# "one class" / "1 class"; pneumoxai says "a single class".
_FAIL_ON_PROBABILITIES = {
    "check_classifier_data_not_an_array": _NOT_0_1,  # labels 1 and 2
    "check_classifiers_classes": _NOT_0_1,  # labels "one" and "two"
    "check_estimators_dtypes": _NOT_0_1,  # labels 1 and 2
    "check_fit2d_1feature": _NOT_0_1,  # labels 1 and 2
    "check_fit2d_1sample": "holds a single class",
}
_EXPECTED_FAILURES_ON_PROBABILITIES = {
    "SoftVotingOnProbabilities": _FAIL_ON_PROBABILITIES,
    # A tie (vote fraction 0.5) is predicted PNEUMONIA (the safer error in screening), while
    # argmax(predict_proba) picks column 0 on a tie; the check wants them equal.
    "HardVotingOnProbabilities": {**_FAIL_ON_PROBABILITIES, "check_classifiers_train": "Mismatched elements"},
    "StackingOnProbabilities": _FAIL_ON_PROBABILITIES,
}


def _messages(exc):
    """The messages of an exception and of the exceptions that caused it."""
    text = []
    while exc is not None:
        text.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return "\n".join(text)


def _failures(estimator):
    return {r["check_name"]: _messages(r["exception"])
            for r in check_estimator(estimator, on_fail=None) if r["status"] == "failed"}


@pytest.mark.filterwarnings("ignore")  # the checks warn on purpose (feature names, convergence)
@pytest.mark.parametrize(
    ("estimator", "expected"),
    [(e, _EXPECTED_FAILURES[type(e).__name__]) for e in
     (SoftVoting(), HardVoting(), Stacking(), TemperatureScaling(), PlattScaling())]
    + [(e, _EXPECTED_FAILURES_ON_PROBABILITIES[type(e).__name__]) for e in
       # cv=2: fewer meta-learner fits, the same checks.
       (SoftVotingOnProbabilities(), HardVotingOnProbabilities(), StackingOnProbabilities(cv=2))],
    ids=lambda v: type(v).__name__ if not isinstance(v, dict) else "",
)
def test_check_estimator_fails_only_the_documented_checks(estimator, expected):
    failures = _failures(estimator)
    assert set(failures) == set(expected)
    for name, pattern in expected.items():
        assert re.search(pattern, failures[name]), f"{name} failed for another reason:\n{failures[name]}"
