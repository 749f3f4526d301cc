"""Known-answer tests of the ensemble combiners and diversity measures."""

import numpy as np
import pandas as pd
import pytest
from scipy import special
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_predict
from sklearn.tree import DecisionTreeClassifier

from pneumoxai.ensemble import (
    HardVoting,
    SoftVoting,
    Stacking,
    assemble_oof,
    diversity,
    ensemble_size_curve,
)
from pneumoxai.errors import ConfigError, DataError


def _members(n=400, seed=0):
    """Member 0 is informative, members 1-3 are pure noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    informative = special.expit(2.0 * (2 * y - 1) + rng.normal(scale=1.5, size=n))
    noise = rng.uniform(0.05, 0.95, size=(n, 3))
    return np.column_stack([informative, noise]), y


def _weak_members(n=600, seed=1):
    """Three members that each see the label through independent noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return special.expit((2 * y - 1)[:, None] * 0.8 + rng.normal(scale=1.5, size=(n, 3))), y


# ---------------------------------------------------------------------------- SoftVoting


def test_soft_voting_mean_and_explicit_weights():
    P, y = _members(n=50)
    np.testing.assert_allclose(SoftVoting().fit(P, y).predict_proba(P)[:, 1], P.mean(axis=1))
    model = SoftVoting(weights=[2, 0, 1, 1], threshold=0.3).fit(P, y)
    expected = P @ [0.5, 0, 0.25, 0.25]
    np.testing.assert_allclose(model.weights_, [0.5, 0, 0.25, 0.25])
    np.testing.assert_allclose(model.predict_proba(P), np.column_stack([1 - expected, expected]))
    np.testing.assert_array_equal(model.predict(P), (expected >= 0.3).astype(int))


def test_soft_voting_optimize_puts_weight_on_the_informative_member():
    P, y = _members()
    model = SoftVoting(weights="optimize").fit(P, y)
    assert model.weights_[0] > 0.8
    assert model.weights_.sum() == pytest.approx(1.0) and (model.weights_ >= 0).all()
    assert log_loss(y, model.predict_proba(P)[:, 1]) < log_loss(y, P.mean(axis=1))


def test_soft_voting_optimize_matches_grid_search_for_two_members():
    P, y = _weak_members()
    P = P[:, :2]
    grid = np.linspace(0, 1, 1001)
    mixed = np.outer(P[:, 0], grid) + np.outer(P[:, 1], 1 - grid)  # (n_samples, n_grid)
    losses = -np.mean(y[:, None] * np.log(mixed) + (1 - y[:, None]) * np.log1p(-mixed), axis=0)
    model = SoftVoting(weights="optimize").fit(P, y)
    assert model.weights_[0] == pytest.approx(grid[np.argmin(losses)], abs=2e-3)


# ---------------------------------------------------------------------------- HardVoting


def test_hard_voting_vote_fraction_and_tie_goes_to_pneumonia():
    P = np.array([[0.9, 0.2, 0.6, 0.1], [0.7, 0.8, 0.9, 0.6], [0.1, 0.2, 0.3, 0.4]])
    vote = HardVoting().fit(P)
    np.testing.assert_allclose(vote.predict_proba(P)[:, 1], [0.5, 1.0, 0.0])
    np.testing.assert_array_equal(vote.predict(P), [1, 1, 0])
    low_votes = HardVoting(vote_threshold=0.15).fit(P)
    np.testing.assert_allclose(low_votes.predict_proba(P)[:, 1], [0.75, 1.0, 0.75])
    np.testing.assert_array_equal(HardVoting(threshold=1.0).fit(P).predict(P), [0, 1, 0])  # unanimous


# ---------------------------------------------------------------------------- Stacking


@pytest.mark.parametrize("features", ["proba", "logit"])
def test_stacking_matches_or_beats_best_member_on_held_out_data(features):
    P, y = _weak_members(n=1200)
    fit_rows, test_rows = np.arange(600), np.arange(600, 1200)
    stack = Stacking(features=features).fit(P[fit_rows], y[fit_rows])
    best_member = max(roc_auc_score(y[test_rows], P[test_rows, j]) for j in range(3))
    assert roc_auc_score(y[test_rows], stack.predict_proba(P[test_rows])[:, 1]) >= best_member
    assert roc_auc_score(y[fit_rows], stack.oof_proba_[:, 1]) >= max(
        roc_auc_score(y[fit_rows], P[fit_rows, j]) for j in range(3)
    )


def test_stacking_recovers_the_informative_member_among_noise():
    P, y = _members(n=600)
    stack = Stacking(features="logit").fit(P[:300], y[:300])
    best = roc_auc_score(y[300:], P[300:, 0])
    assert roc_auc_score(y[300:], stack.predict_proba(P[300:])[:, 1]) >= best - 0.005
    assert np.argmax(np.abs(stack.meta_.coef_[0])) == 0


def test_stacking_oof_proba_is_cross_val_predict_of_the_meta_learner():
    P, y = _weak_members(n=120)
    stack = Stacking(cv=4, seed=3).fit(P, y)
    expected = cross_val_predict(LogisticRegression(), P, y, method="predict_proba",
                                 cv=StratifiedKFold(4, shuffle=True, random_state=3))
    np.testing.assert_allclose(stack.oof_proba_, expected)
    np.testing.assert_allclose(stack.predict_proba(P), LogisticRegression().fit(P, y).predict_proba(P))


def test_stacking_oof_folds_keep_patients_together():
    P, y = _weak_members(n=120)
    patients = np.arange(120) // 3
    tree = DecisionTreeClassifier(max_depth=2, random_state=0)
    stack = Stacking(meta=tree, cv=4).fit(P, y, groups=patients)
    expected = cross_val_predict(clone(tree), P, y, groups=patients, method="predict_proba",
                                 cv=StratifiedGroupKFold(4, shuffle=True, random_state=0))
    np.testing.assert_allclose(stack.oof_proba_, expected)
    assert stack.meta_ is not tree


def test_stacking_refuses_samples_a_member_was_trained_on():
    P, y = _weak_members(n=60)
    trained_on = np.zeros(P.shape, dtype=bool)
    trained_on[:3, 1] = True
    frame = pd.DataFrame(P, columns=["resnet_a", "resnet_b", "resnet_c"])
    with pytest.raises(DataError, match="'resnet_b' on 3"):
        Stacking().fit(frame, y, trained_on=trained_on)
    with pytest.raises(DataError, match=r"trained_on must have shape \(60, 3\)"):
        Stacking().fit(P, y, trained_on=trained_on[:, :2])


def test_stacking_needs_enough_samples_or_patients_per_fold():
    P, y = _weak_members(n=40)
    y = np.r_[np.ones(37, int), np.zeros(3, int)]
    with pytest.raises(DataError, match="the smaller class has 3"):
        Stacking(cv=5).fit(P, y)
    with pytest.raises(DataError, match="the smaller class has 3"):  # patient folds too, not scikit-learn's error
        Stacking(cv=5).fit(P, y, groups=np.arange(40))
    with pytest.raises(DataError, match="groups has 4"):
        Stacking(cv=5).fit(P, np.tile([0, 1], 20), groups=np.arange(40) % 4)


def test_assemble_oof_places_each_fold_and_feeds_stacking():
    fold_ids = np.array([2, 0, 1, 0, 2, 1])
    folds = {
        "a": [[0.10, 0.11], [0.20, 0.21], [0.30, 0.31]],
        "b": [[0.4, 0.5], [0.6, 0.7], [0.8, 0.9]],
    }
    oof = assemble_oof(folds, fold_ids)
    assert list(oof.columns) == ["a", "b"]
    np.testing.assert_allclose(oof["a"], [0.30, 0.10, 0.20, 0.11, 0.31, 0.21])
    unnamed = assemble_oof([folds["b"]], fold_ids)
    np.testing.assert_allclose(unnamed["member_0"], [0.8, 0.4, 0.6, 0.5, 0.9, 0.7])
    with pytest.raises(DataError, match="member 'a', fold 1 has 1 predictions for 2 samples"):
        assemble_oof({"a": [[0.1, 0.1], [0.2], [0.3, 0.3]]}, fold_ids)
    with pytest.raises(DataError, match="member 'a' has 2 folds; fold_ids has 3"):
        assemble_oof({"a": [[0.1, 0.1], [0.2, 0.2]]}, fold_ids)


def test_stacking_on_assembled_oof_then_predicting_test_members():
    P, y = _weak_members(n=90)
    fold_ids = np.arange(90) % 3
    oof = assemble_oof({f"m{j}": [P[fold_ids == k, j] for k in range(3)] for j in range(3)}, fold_ids)
    stack = Stacking(cv=3).fit(oof, y)
    assert stack.feature_names_in_.tolist() == ["m0", "m1", "m2"] and stack.n_features_in_ == 3
    with pytest.raises(DataError, match="Stacking.predict_proba: The feature names should match"):
        stack.predict_proba(oof[["m1", "m0", "m2"]])
    with pytest.warns(UserWarning, match="X does not have valid feature names"):
        from_array = stack.predict_proba(oof.to_numpy())
    np.testing.assert_allclose(from_array, stack.predict_proba(oof))


# ---------------------------------------------------------------------------- shared checks
# (classifier API, clone, NotFittedError and check_estimator of every combiner: test_calibration.py)

_GOOD_P = np.array([[0.1, 0.2], [0.8, 0.7], [0.3, 0.4], [0.9, 0.6]])
_GOOD_Y = np.array([0, 1, 0, 1])


@pytest.mark.parametrize(
    ("P", "y", "match"),
    [
        (_GOOD_P[:, 0], _GOOD_Y, r"(?s){owner}: Expected 2D array, got 1D array instead.*Reshape your data"),
        (_GOOD_P[None], _GOOD_Y, r"{owner}: Found array with dim 3"),
        (_GOOD_P, _GOOD_Y[:3], r"{owner}: Found input variables with inconsistent numbers of samples: \[4, 3\]"),
        (np.where(_GOOD_P == 0.7, np.nan, _GOOD_P), _GOOD_Y,
         r"{owner}: P has 1 NaN or infinite values \(first in 'member_1'\)"),
        (_GOOD_P * 2, _GOOD_Y,
         r"^{owner}: P must hold probabilities in \[0, 1\]; 'member_0' has values from 0.2 to 1.8\. "
         "Pass probabilities, not logits"),
        (_GOOD_P - 0.5, _GOOD_Y,
         r"Negative values in data passed to {owner}: P must hold probabilities in \[0, 1\]"),
        (pd.DataFrame(_GOOD_P * 2, columns=["resnet_a", "resnet_b"]), _GOOD_Y,
         "{owner}: P must .*; 'resnet_a' has values from 0.2 to 1.8"),
        (_GOOD_P, [1, 1, 1, 1], r"y_true holds a single class \(1\)"),
        (_GOOD_P, [0, 2, 0, 2], r"y_true must hold only 0 \(NORMAL\) and 1 \(PNEUMONIA\); found 2"),
        (_GOOD_P, [0, 1, 2, 1], "{owner}: Only binary classification is supported.*multiclass"),
        (_GOOD_P, [0.1, 0.9, 0.2, 0.8], "{owner}: Only binary classification is supported.*continuous"),
        (np.empty((0, 2)), [], r"{owner}: Found array with 0 sample\(s\)"),
        ([["a", "b"]] * 4, _GOOD_Y, "{owner}: could not convert string to float"),
    ],
)
@pytest.mark.parametrize("combiner", [SoftVoting, HardVoting, Stacking])
def test_combiners_reject_bad_data(combiner, P, y, match):
    with pytest.raises(DataError, match=match.format(owner=f"{combiner.__name__}.fit")):
        combiner().fit(P, y)


@pytest.mark.parametrize("combiner", [SoftVoting(), HardVoting(), Stacking(cv=2)])
@pytest.mark.parametrize("method", ["predict", "predict_proba"])
def test_combiners_reject_a_different_member_count_at_predict(combiner, method):
    combiner.fit(_GOOD_P, _GOOD_Y)
    name = type(combiner).__name__
    with pytest.raises(DataError, match=f"{name}.{method}: X has 3 features, but {name} is expecting 2"):
        getattr(combiner, method)(np.full((4, 3), 0.5))


@pytest.mark.parametrize(
    ("combiner", "name", "allowed"),
    [
        (SoftVoting(weights=[1, 2, 3]), "weights", "None, 'optimize' or an array of n_members non-negative"),
        (SoftVoting(weights=[1, -1]), "weights", "None, 'optimize' or an array"),
        (SoftVoting(weights="best"), "weights", "None, 'optimize' or an array"),
        (SoftVoting(weights=[0, 0]), "weights", "None, 'optimize' or an array"),
        (SoftVoting(threshold=2), "threshold", r"a number in \[0, 1\]; got 2\."),
        (HardVoting(vote_threshold=1.0), "vote_threshold", r"a number in \(0, 1\)"),
        (HardVoting(threshold=-0.5), "threshold", r"a number in \[0, 1\]; got -0.5\."),
        (Stacking(meta="forest"), "meta", "'logistic' or a scikit-learn classifier"),
        (Stacking(meta=object()), "meta", "'logistic' or a scikit-learn classifier"),
        (Stacking(features="rank"), "features", "one of 'proba', 'logit'"),
        (Stacking(cv=1), "cv", r"an int in \[2, 100\]"),
        (Stacking(seed=0.5), "seed", r"None or an int in \[0, 4294967295\]"),
        (Stacking(threshold="0.5"), "threshold", r"a number in \[0, 1\]; got '0.5'\."),
    ],
)
def test_combiners_reject_bad_parameters(combiner, name, allowed):
    pattern = f"The '{name}' parameter of {type(combiner).__name__} must be {allowed}"
    with pytest.raises(ConfigError, match=pattern):
        combiner.fit(_GOOD_P, _GOOD_Y)


@pytest.mark.parametrize("combiner", [SoftVoting(), HardVoting(), Stacking(cv=2)])
def test_predict_checks_a_threshold_set_after_fit(combiner):
    fitted = combiner.fit(_GOOD_P, _GOOD_Y).set_params(threshold=2)
    message = rf"The 'threshold' parameter of {type(combiner).__name__} must be a number in \[0, 1\]; got 2\."
    with pytest.raises(ConfigError, match=message):
        fitted.predict(_GOOD_P)


# ---------------------------------------------------------------------------- diversity


def test_diversity_known_answer_and_correlation_equals_pearson_of_correctness():
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 1, 0])
    correct_a = np.array([1, 1, 1, 0, 1, 1, 0, 0, 1, 1], bool)
    correct_b = np.array([1, 1, 0, 1, 1, 0, 1, 0, 1, 1], bool)
    # A probability that is right exactly where intended.
    P = np.column_stack([np.where(c, y, 1 - y) * 0.8 + 0.1 for c in (correct_a, correct_b)])
    row = diversity(P, y).iloc[0]
    # N11 = 5, N10 = 2, N01 = 2, N00 = 1 (counted by hand from the masks above).
    assert (row["n11"], row["n10"], row["n01"], row["n00"]) == (5, 2, 2, 1)
    assert row["disagreement"] == pytest.approx(0.4)
    assert row["double_fault"] == pytest.approx(0.1)
    assert row["yules_q"] == pytest.approx((5 - 4) / (5 + 4))
    assert row["error_correlation"] == pytest.approx(np.corrcoef(correct_a, correct_b)[0, 1])


def test_diversity_pairs_and_undefined_values():
    P, y = _members(n=80)
    table = diversity(pd.DataFrame(P, columns=list("abcd")), y)
    assert list(zip(table["member_a"], table["member_b"])) == [
        ("a", "b"), ("a", "c"), ("a", "d"), ("b", "c"), ("b", "d"), ("c", "d")
    ]
    perfect = np.column_stack([_GOOD_Y * 0.8 + 0.1] * 2)  # never wrong: Q and rho undefined
    row = diversity(perfect, _GOOD_Y).iloc[0]
    assert np.isnan(row["yules_q"]) and np.isnan(row["error_correlation"]) and row["double_fault"] == 0
    with pytest.raises(DataError, match="at least two members"):
        diversity(P[:, :1], y)


@pytest.mark.parametrize(
    ("P", "match"),
    [
        (_GOOD_P[:, 0], r"diversity: P must be 2-D \(n_samples, n_members\); got shape \(4,\)\. For a single"),
        (np.empty((0, 2)), r"diversity: P is empty \(shape \(0, 2\)\)"),
        ([["a", "b"]] * 4, "diversity: P must hold numeric probabilities"),
        (np.where(_GOOD_P == 0.7, np.inf, _GOOD_P), r"diversity: P has 1 NaN or infinite values \(first in 'member_1'\)"),
        (_GOOD_P * 2, r"^diversity: P must hold probabilities in \[0, 1\]; 'member_0' has values from 0.2 to 1.8"),
    ],
)
def test_diversity_rejects_bad_member_probabilities(P, match):
    with pytest.raises(DataError, match=match):
        diversity(P, _GOOD_Y)


# ---------------------------------------------------------------------------- size curve


def test_ensemble_size_curve_picks_the_informative_member_first():
    P, y = _members(n=200)
    curve = ensemble_size_curve(P, y)
    assert curve["n_members"].tolist() == [1, 2, 3, 4]
    assert curve.loc[0, "added"] == "member_0"
    assert curve.loc[0, "score"] == pytest.approx(roc_auc_score(y, P[:, 0]))
    assert curve.loc[3, "score"] == pytest.approx(roc_auc_score(y, P.mean(axis=1)))
    assert sorted(curve["added"]) == [f"member_{j}" for j in range(4)]


@pytest.mark.parametrize("metric, best", [("roc_auc", max), ("brier", min)])
def test_ensemble_size_curve_is_the_greedy_choice_at_every_size(metric, best):
    """Five members of different strengths in shuffled columns: every row is the best single addition."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    strengths = np.array([0.3, 1.2, 0.0, 0.8, 0.5])
    P = special.expit((2 * y - 1)[:, None] * strengths + rng.normal(scale=1.5, size=(300, 5)))
    scorer = {"roc_auc": roc_auc_score, "brier": brier_score_loss}[metric]
    curve = ensemble_size_curve(P, y, metric=metric)
    selected = []
    for k, row in curve.iterrows():
        candidates = {j: scorer(y, P[:, selected + [j]].mean(axis=1)) for j in range(5) if j not in selected}
        chosen = best(candidates, key=candidates.get)
        selected.append(chosen)
        assert (row["n_members"], row["added"]) == (k + 1, f"member_{chosen}")
        assert row["members"] == ", ".join(f"member_{j}" for j in selected)
        assert row["score"] == pytest.approx(candidates[chosen], abs=1e-12)
    assert selected != sorted(selected)  # the greedy order is not the column order


def test_ensemble_size_curve_minimises_brier_and_supports_hard_votes():
    P, y = _members(n=200)
    curve = ensemble_size_curve(P, y, metric="brier")
    assert curve.loc[0, "score"] == pytest.approx(min(brier_score_loss(y, P[:, j]) for j in range(4)))
    hard = ensemble_size_curve(P, y, combiner="hard", metric="accuracy")
    assert hard.loc[0, "score"] == pytest.approx(np.mean((P[:, 0] >= 0.5) == y))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"combiner": "stack"}, "The 'combiner' parameter of ensemble_size_curve must be one of 'soft', 'hard'"),
        ({"metric": "auc"}, "The 'metric' parameter of ensemble_size_curve must be one of 'roc_auc'"),
        ({"threshold": 2}, r"The 'threshold' parameter of ensemble_size_curve must be a number in \[0, 1\]"),
    ],
)
def test_ensemble_size_curve_rejects_bad_parameters(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ensemble_size_curve(_GOOD_P, _GOOD_Y, **kwargs)
