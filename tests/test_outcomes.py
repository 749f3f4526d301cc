"""outcome_groups: a hand-made table, sklearn's confusion matrix, and bad input."""

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix

from pneumoxai._style import ERROR_COLORS
from pneumoxai.errors import ConfigError, DataError
from pneumoxai.outcomes import OUTCOMES, outcome_groups

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
