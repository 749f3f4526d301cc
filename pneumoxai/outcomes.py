"""Outcome of each prediction: false negative, false positive or correct call.

One grouping, in one order, for every figure and stage that compares errors with
correct calls (explanation galleries, mean maps, zone attention, slice examples).
"""

import numpy as np

from .validation import SEED, UNIT_INTERVAL, Interval, check_labels, check_param, check_probabilities

__all__ = ["OUTCOMES", "explanation_sample", "outcome_groups"]

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


def explanation_sample(y_true, y_prob, n_images, *, threshold=0.5, seed=0):
    """Indices of false negatives, false positives and a class-matched sample of correct calls.

    Errors take two thirds of ``n_images`` (split between the two kinds); the correct
    calls are drawn with the chosen errors' class mix, so maps compare like with like.
    The indices take the three outcomes in turn (FN, FP, correct, FN, ...), so any
    prefix of them, such as the few images a layer choice is measured on, mixes them.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        0/1 labels, 1 = PNEUMONIA.
    y_prob : array-like of shape (n_samples,)
        Predicted probability of PNEUMONIA (or the 0/1 calls).
    n_images : int
        Budget; fewer indices come back when a group runs out.
    threshold : float, default=0.5
    seed : int, default=0
        Seed of the draw (a local generator; the global one is untouched).

    Returns
    -------
    ndarray of int of shape (<= n_images,)

    Examples
    --------
    >>> y = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    >>> p = [0.1, 0.2, 0.9, 0.8, 0.7, 0.6, 0.1, 0.2, 0.3, 0.1]
    >>> groups = outcome_groups(y, p)[explanation_sample(y, p, 6)]
    >>> groups.tolist()
    ['false_negative', 'false_positive', 'correct', 'false_negative', 'false_positive', 'correct']
    """
    n_images = check_param("explanation_sample", "n_images", n_images, Interval("int", 1, None))
    seed = check_param("explanation_sample", "seed", seed, SEED)
    outcome = outcome_groups(y_true, y_prob, threshold=threshold)
    y = np.asarray(y_true).astype(int)
    rng = np.random.default_rng(seed)
    per_error = max(1, n_images // 3)
    chosen_fn = rng.permutation(np.flatnonzero(outcome == "false_negative"))[:per_error]
    chosen_fp = rng.permutation(np.flatnonzero(outcome == "false_positive"))[:per_error]
    n_correct = max(1, n_images - len(chosen_fn) - len(chosen_fp))
    n_errors = len(chosen_fn) + len(chosen_fp)
    k_pos = int(round(n_correct * (len(chosen_fn) / n_errors if n_errors else 0.5)))
    correct = outcome == "correct"
    correct_pos = rng.permutation(np.flatnonzero(correct & (y == 1)))
    correct_neg = rng.permutation(np.flatnonzero(correct & (y == 0)))
    chosen_correct = rng.permutation(np.concatenate([correct_pos[:k_pos], correct_neg[:n_correct - k_pos]]))
    groups = (chosen_fn, chosen_fp, chosen_correct)
    turns = [g[i] for i in range(max(map(len, groups))) for g in groups if i < len(g)]
    return np.asarray(turns, dtype=int)
