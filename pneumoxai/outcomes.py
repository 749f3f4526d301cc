"""Outcome of each prediction: false negative, false positive or correct call.

One grouping, in one order, for every figure and stage that compares errors with
correct calls (explanation galleries, mean maps, zone attention, slice examples).
"""

import numpy as np

from .validation import UNIT_INTERVAL, check_labels, check_param, check_probabilities

__all__ = ["OUTCOMES", "outcome_groups"]

#: Outcome names, in the order figures draw rows, bars and boxes.
OUTCOMES = ("false_negative", "false_positive", "correct")


def outcome_groups(y_true, y_prob, *, threshold=0.5):
    """Outcome of each prediction: ``"false_negative"``, ``"false_positive"`` or ``"correct"``.

    A sample is called PNEUMONIA when ``y_prob >= threshold``.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        0/1 labels, 1 = PNEUMONIA.
    y_prob : array-like of shape (n_samples,)
        Predicted probability of PNEUMONIA.
    threshold : float, default=0.5
        Decision threshold in [0, 1].

    Returns
    -------
    ndarray of str of shape (n_samples,)
        One of :data:`OUTCOMES` per sample.

    Examples
    --------
    >>> outcome_groups([1, 1, 0, 0], [0.2, 0.9, 0.7, 0.1])
    array(['false_negative', 'correct', 'false_positive', 'correct'], dtype='<U14')
    >>> outcome_groups([1, 1, 0, 0], [0.2, 0.9, 0.7, 0.1], threshold=0.8).tolist()
    ['false_negative', 'correct', 'correct', 'correct']
    """
    threshold = check_param("outcome_groups", "threshold", threshold, UNIT_INTERVAL)
    p = check_probabilities(y_prob, owner="outcome_groups")
    y = check_labels(y_true, p.size, owner="outcome_groups", both_classes=False)
    called = p >= threshold
    positive = y == 1
    # Index into OUTCOMES: 0 = missed pneumonia, 1 = false alarm, 2 = agreement.
    code = np.where(called == positive, 2, np.where(positive, 0, 1))
    return np.asarray(OUTCOMES)[code]
