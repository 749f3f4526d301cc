"""Outcome of each prediction: false negative, false positive or correct call.

One grouping, in one order, for every figure and stage that compares errors with
correct calls (explanation galleries, mean maps, zone attention, slice examples).
"""

import numpy as np

from .errors import DataError
from .metrics import _check_prob, _check_threshold

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
    threshold = _check_threshold("outcome_groups", threshold)
    p = _check_prob(y_prob)
    y = np.asarray(y_true)
    if y.shape != p.shape:
        raise DataError(f"y_true must have the shape of y_prob {p.shape}; got shape {y.shape}.")
    if not np.isin(y, (0, 1)).all():
        found = ", ".join(map(repr, np.unique(y)[:5].tolist()))
        raise DataError(f"y_true must hold only 0 (NORMAL) and 1 (PNEUMONIA); found {found}.")
    called = p >= threshold
    positive = y == 1
    # Index into OUTCOMES: 0 = missed pneumonia, 1 = false alarm, 2 = agreement.
    code = np.where(called == positive, 2, np.where(positive, 0, 1))
    return np.asarray(OUTCOMES)[code]
