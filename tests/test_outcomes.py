"""outcome_groups and explanation_sample: a hand-made table, sklearn's confusion matrix, and bad input."""

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix

from pneumoxai.figures._style import ERROR_COLORS
from pneumoxai.errors import ConfigError, DataError
from pneumoxai.outcomes import OUTCOMES, explanation_sample, outcome_groups

# label, probability, outcome at threshold 0.5, outcome at threshold 0.25
TABLE = [
    (1, 0.30, "false_negative", "correct"),
    (1, 0.10, "false_negative", "false_negative"),
    (1, 0.90, "correct", "correct"),
    (1, 0.50, "correct", "correct"),  # p == threshold is called PNEUMONIA
    (0, 0.20, "correct", "correct"),
    (0, 0.80, "false_positive", "false_positive"),
    (0, 0.40, "correct", "false_positive"),
    (0, 0.25, "correct", "false_positive"),
]


def test_known_answer_table():
    y, p, at_half, at_quarter = map(list, zip(*TABLE))
    assert outcome_groups(y, p).tolist() == at_half
    assert outcome_groups(np.array(y, dtype=bool), p, threshold=0.25).tolist() == at_quarter


def test_counts_match_sklearn_confusion_matrix():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = rng.uniform(size=500)
    outcome = outcome_groups(y, p, threshold=0.3)
    (tn, fp), (fn, tp) = confusion_matrix(y, p >= 0.3)
    assert outcome.shape == (500,)
    assert [np.sum(outcome == name) for name in OUTCOMES] == [fn, fp, tn + tp]


def test_one_order_and_one_colour_per_outcome():
    assert OUTCOMES == ("false_negative", "false_positive", "correct")
    assert list(ERROR_COLORS) == list(OUTCOMES)


@pytest.mark.parametrize("y_true, y_prob, threshold, error, match", [
    ([0, 1], [0.1, 0.9], 2, ConfigError,
     r"^The 'threshold' parameter of outcome_groups must be a number in \[0, 1\]; got 2\.$"),
    ([0, 1], [0.1, 0.9], "0.5", ConfigError, r"'threshold' parameter of outcome_groups .*; got '0\.5'"),
    ([0, 1], [0.1, 0.9], True, ConfigError, r"'threshold' parameter of outcome_groups .*; got True"),
    ([0, 2], [0.1, 0.9], 0.5, DataError, r"only 0 \(NORMAL\) and 1 \(PNEUMONIA\); found 2"),
    ([0, 1, 1], [0.1, 0.9], 0.5, DataError, "y_true has 3 labels but there are 2 predictions"),
    ([0, 1], [[0.1, 0.9]], 0.5, DataError, "y_prob must be 1-D"),
    ([0, 1], [0.1, np.nan], 0.5, DataError, "NaN or infinite"),
    ([0, 1], [-2.0, 3.0], 0.5, DataError, "probabilities in \\[0, 1\\].*not logits"),
], ids=["threshold>1", "threshold str", "threshold bool", "labels", "lengths", "2-D", "NaN", "logits"])
def test_bad_input(y_true, y_prob, threshold, error, match):
    with pytest.raises(error, match=match):
        outcome_groups(y_true, y_prob, threshold=threshold)


def test_explanation_sample_budget_class_mix_and_turns():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    p = rng.uniform(size=400)  # about half the calls are errors, of both kinds
    outcome = outcome_groups(y, p)
    chosen = explanation_sample(y, p, 24, seed=3)
    assert len(chosen) == len(set(chosen)) == 24
    got = outcome[chosen]
    assert [np.sum(got == name) for name in OUTCOMES] == [8, 8, 8]
    assert got[:3].tolist() == list(OUTCOMES) and got[:9].tolist() == list(OUTCOMES) * 3  # in turn
    assert y[chosen][got == "correct"].sum() == 4  # correct calls with the errors' class mix (8 FN : 8 FP)
    np.testing.assert_array_equal(chosen, explanation_sample(y, p, 24, seed=3))
    # Without false negatives the other groups fill the budget, and the correct calls are all NORMAL.
    few = explanation_sample(y, np.where(y == 1, 0.9, p), 9, seed=0)
    assert not (outcome_groups(y, np.where(y == 1, 0.9, p))[few] == "false_negative").any()
    assert len(few) == 9 and (y[few] == 0).all()


@pytest.mark.parametrize("n_images, match", [
    (0, r"'n_images' parameter of explanation_sample must be an int >= 1; got 0\."),
    (2.5, r"'n_images' parameter of explanation_sample .*; got 2\.5"),
])
def test_explanation_sample_bad_budget(n_images, match):
    with pytest.raises(ConfigError, match=match):
        explanation_sample([0, 1], [0.2, 0.7], n_images)
