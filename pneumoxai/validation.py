"""Checks of user input, in one place and one wording.

Parameters are declared with small constraint objects (:class:`Interval`,
:class:`Options`, :data:`BOOLEAN`, :class:`ListOf`, :class:`Predicate`, ``None``),
whose descriptions make every message read the same way, from a function argument::

    The 'threshold' parameter of SoftVoting must be a number in [0, 1]; got 2.

or from a config file (the same descriptions)::

    The 'rotation' option in 'defaults.augment' must be a number in [0, 0.5]; got 'abc'.

The array checks, one per kind of array: :func:`check_images` (colour images for a model),
:func:`check_grey_images`, :func:`check_maps` (one map per image),
:func:`check_probabilities` and :func:`check_member_probabilities`, :func:`check_labels`,
:func:`check_groups`, :func:`check_features` (a table of numeric features) and
:func:`check_scores` (one number per sample). They are the only place where pneumoxai
decides what an image batch, a map, a probability vector or a label vector must look like, and they word every
refusal the same way ("<owner>: <name> ..."). No TensorFlow here.
"""

import numbers

import numpy as np
import pandas as pd

from .errors import DataError, option_error, param_error

__all__ = [
    "Constraint",
    "Interval",
    "Options",
    "ListOf",
    "Predicate",
    "BOOLEAN",
    "describe",
    "is_valid",
    "check_param",
    "check_images",
    "check_grey_images",
    "check_maps",
    "check_probabilities",
    "check_member_probabilities",
    "check_probability_columns",
    "check_labels",
    "check_binary",
    "check_groups",
    "check_features",
    "check_scores",
    "UNIT_INTERVAL",
    "OPEN_UNIT_INTERVAL",
    "SEED",
]


class Constraint:
    """A rule a value must satisfy, with the words that describe it."""

    def is_satisfied_by(self, value):
        raise NotImplementedError

    def __str__(self):
        raise NotImplementedError


class Interval(Constraint):
    """An int or a real number within bounds.

    Parameters
    ----------
    kind : {"int", "real"}
    left, right : number or None
        Bounds; None leaves that side open-ended.
    closed : {"both", "left", "right", "neither"}, default="both"

    Examples
    --------
    >>> str(Interval("int", 1, None)), str(Interval("real", 0, 1, closed="neither"))
    ('an int >= 1', 'a number in (0, 1)')
    >>> Interval("real", 0, 1).is_satisfied_by(True)  # booleans are not numbers here
    False
    """

    def __init__(self, kind, left, right, *, closed="both"):
        self.kind, self.left, self.right, self.closed = kind, left, right, closed

    def is_satisfied_by(self, value):
        number_type = numbers.Integral if self.kind == "int" else numbers.Real
        if isinstance(value, bool) or not isinstance(value, number_type) or value != value:  # NaN
            return False
        left_ok = self.left is None or (value >= self.left if self.closed in ("both", "left") else value > self.left)
        right_ok = self.right is None or (value <= self.right if self.closed in ("both", "right") else value < self.right)
        return left_ok and right_ok

    def __str__(self):
        noun = "an int" if self.kind == "int" else "a number"
        low_closed, high_closed = self.closed in ("both", "left"), self.closed in ("both", "right")
        if self.right is None:
            return f"{noun} {'>=' if low_closed else '>'} {self.left}"
        if self.left is None:
            return f"{noun} {'<=' if high_closed else '<'} {self.right}"
        return f"{noun} in {'[' if low_closed else '('}{self.left}, {self.right}{']' if high_closed else ')'}"


class Options(Constraint):
    """One of a fixed set of values (compared by equality, booleans never equal to 0/1).

    Examples
    --------
    >>> str(Options(("soft", "hard")))
    "one of 'soft', 'hard'"
    """

    def __init__(self, values):
        self.values = tuple(values)

    def is_satisfied_by(self, value):
        return any(type(value) is type(v) and value == v for v in self.values if not isinstance(v, float)) or any(
            isinstance(value, numbers.Real) and not isinstance(value, bool) and value == v
            for v in self.values if isinstance(v, float))

    def __str__(self):
        return "one of " + ", ".join(map(repr, self.values)) if len(self.values) > 1 else repr(self.values[0])


class ListOf(Constraint):
    """A list (or tuple) whose every item satisfies ``item``, with a length range.

    Examples
    --------
    >>> str(ListOf(Interval("int", 1, 8192), min_length=1))
    'a non-empty list, each an int in [1, 8192]'
    """

    def __init__(self, item, *, min_length=0, max_length=None, unique=False):
        self.item, self.min_length, self.max_length, self.unique = item, min_length, max_length, unique

    def is_satisfied_by(self, value):
        if not isinstance(value, (list, tuple)) or len(value) < self.min_length:
            return False
        if self.max_length is not None and len(value) > self.max_length:
            return False
        if self.unique and len({repr(v) for v in value}) != len(value):
            return False
        return all(is_valid(v, self.item) for v in value)

    def __str__(self):
        text = "a non-empty list" if self.min_length >= 1 else "a list"
        if self.max_length is not None:
            text += f" of at most {self.max_length} items"
        return f"{text}, each {'distinct and ' if self.unique else ''}{describe(self.item)}"


class Predicate(Constraint):
    """Any rule given as a function, with its description."""

    def __init__(self, function, description):
        self.function, self.description = function, description

    def is_satisfied_by(self, value):
        try:
            return bool(self.function(value))
        except (TypeError, ValueError):
            return False

    def __str__(self):
        return self.description


class _Boolean(Constraint):
    def is_satisfied_by(self, value):
        return isinstance(value, (bool, np.bool_))

    def __str__(self):
        return "True or False"


BOOLEAN = _Boolean()


def _constraints(spec):
    return spec if isinstance(spec, (list, tuple)) and not isinstance(spec, str) else (spec,)


def describe(spec):
    """The words for a constraint, or for a tuple of alternatives (``None`` reads "None").

    >>> describe((None, Options(("optimize",)), Interval("int", 0, None)))
    "None, 'optimize' or an int >= 0"
    """
    words = ["None" if c is None else str(c) for c in _constraints(spec)]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def is_valid(value, spec):
    """Whether ``value`` satisfies the constraint, or one of a tuple of alternatives."""
    return any(value is None if c is None else c.is_satisfied_by(value) for c in _constraints(spec))


def check_param(owner, name, value, spec, *, where=None):
    """Return ``value`` if it satisfies ``spec``, else raise the one-wording error.

    Parameters
    ----------
    owner : str
        The function or method, e.g. ``"SoftVoting.fit"``; for config options, unused.
    name : str
    value : object
    spec : Constraint, None, or tuple of them (alternatives)
    where : str, default=None
        A config section (``"defaults.augment"``): the message then speaks of an
        option in that section instead of a parameter of ``owner``.

    Raises
    ------
    ConfigError

    Examples
    --------
    >>> check_param("HardVoting", "threshold", 2, Interval("real", 0, 1))
    Traceback (most recent call last):
    ...
    pneumoxai.errors.ConfigError: The 'threshold' parameter of HardVoting must be a number in [0, 1]; got 2.
    """
    if is_valid(value, spec):
        return value
    if where is not None:
        raise option_error(where, name, describe(spec), value)
    raise param_error(owner, name, describe(spec), value)


# --------------------------------------------------------------------------- arrays
#
# Data errors read "<owner>: <name> ...", e.g. "evaluate: y_prob has 2 NaN or infinite values."

UNIT_INTERVAL = Interval("real", 0, 1)
OPEN_UNIT_INTERVAL = Interval("real", 0, 1, closed="neither")
#: An int seed, as NumPy (default_rng, RandomState) and scikit-learn accept it.
SEED = Interval("int", 0, 2**32 - 1)


def check_images(images, *, owner, name="images", size=None, model=None):
    """Return images as a float32 array (n_samples, H, W, 3) in [0, 1], or raise DataError.

    Parameters
    ----------
    images : array-like of shape (n_samples, H, W, 3)
    owner : str
        The function or method named in the error.
    name : str, default="images"
    size : tuple of (int or None), default=None
        ``(H, W)`` the model expects; None entries accept any size.
    model : keras.Model, default=None
        Instead of ``size``: the model whose input size the images must have.

    Examples
    --------
    >>> check_images(np.zeros((2, 8, 8, 3)), owner="gradcam").dtype
    dtype('float32')
    >>> check_images(np.full((1, 8, 8, 3), 255.0), owner="gradcam")
    Traceback (most recent call last):
    ...
    pneumoxai.errors.DataError: gradcam: images must be scaled to [0, 1]; got values in [255, 255] (divide uint8 images by 255).
    """
    arr = _numeric_array(images, owner, name, "an array of images of one shape")
    if arr.ndim != 4:
        raise DataError(f"{owner}: {name} must have rank 4 (n_samples, H, W, 3); got shape {arr.shape}.")
    if arr.shape[-1] != 3:
        raise DataError(f"{owner}: {name} must have 3 channels in the last axis; got shape {arr.shape}.")
    arr = _unit_range(_finite(_not_empty(arr, owner, name, "images").astype(np.float32, copy=False), owner, name),
                      owner, name)
    if model is not None:
        size = tuple(model.inputs[0].shape[1:3])
    if size is not None and any(e is not None and e != got for e, got in zip(size, arr.shape[1:3])):
        expected = "x".join("any" if e is None else str(e) for e in size)
        raise DataError(f"{owner}: {name} are {arr.shape[1]}x{arr.shape[2]} pixels but the model expects "
                        f"{expected}; load them with load_images(..., size={size[0]}).")
    return arr


def _numeric_array(values, owner, name, what):
    """``values`` as a real numeric array, or the one-wording DataError."""
    try:
        arr = np.asarray(values)
    except ValueError:  # ragged nested lists
        raise DataError(f"{owner}: {name} must be {what}; got a ragged sequence.") from None
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise DataError(f"{owner}: {name} must be a real numeric array; got dtype {arr.dtype}.")
    return arr


def _not_empty(arr, owner, name, unit):
    if arr.shape[0] == 0:
        raise DataError(f"{owner}: {name} is empty (0 {unit}).")
    return arr


def _finite(arr, owner, name):
    finite = np.isfinite(arr)
    if not finite.all():
        raise DataError(f"{owner}: {name} has {int((~finite).sum())} NaN or infinite values.")
    return arr


def _unit_range(arr, owner, name):
    low, high = float(arr.min()), float(arr.max())
    if low < 0 or high > 1:
        raise DataError(f"{owner}: {name} must be scaled to [0, 1]; got values in [{low:.9g}, {high:.9g}] "
                        "(divide uint8 images by 255).")
    return arr


def check_grey_images(images, *, owner, name="images", min_side=1, n_samples=None):
    """Return grey images (n_samples, H, W) in [0, 1], colour channels averaged, or raise DataError.

    Parameters
    ----------
    images : array-like of shape (n_samples, H, W), (n_samples, H, W, 1) or (n_samples, H, W, 3)
    owner : str
        The function or method named in the error.
    name : str, default="images"
    min_side : int, default=1
        Smallest height and width accepted.
    n_samples : int, default=None
        The number of images there must be (one per row of a table, say).

    Returns
    -------
    numpy.ndarray of shape (n_samples, H, W)
        Floating input keeps its dtype; other numbers become float64.

    Examples
    --------
    >>> check_grey_images(np.ones((2, 8, 8, 3)), owner="lung_mask").shape
    (2, 8, 8)
    >>> check_grey_images(np.zeros((1, 4, 16)), owner="image_features", min_side=8)
    Traceback (most recent call last):
    ...
    pneumoxai.errors.DataError: image_features: images must be at least 8x8 pixels; got 4x16.
    """
    arr = _numeric_array(images, owner, name, "an array of images of one shape")
    if arr.ndim == 4 and arr.shape[-1] in (1, 3):
        arr = arr.mean(axis=-1)
    if arr.ndim != 3 or n_samples is not None and len(arr) != n_samples:
        n = "n_samples" if n_samples is None else f"n_samples={n_samples}"
        raise DataError(f"{owner}: {name} must have shape ({n}, H, W) or ({n}, H, W, 1 or 3); "
                        f"got shape {np.shape(images)}.")
    _not_empty(arr, owner, name, "images")
    if min(arr.shape[1:]) < min_side:
        raise DataError(f"{owner}: {name} must be at least {min_side}x{min_side} pixels; "
                        f"got {arr.shape[1]}x{arr.shape[2]}.")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    return _unit_range(_finite(arr, owner, name), owner, name)


def check_maps(maps, *, owner, name="maps", shape=None, dtype=np.float64):
    """Return finite maps (n_samples, H, W), one per image, as ``dtype``, or raise DataError.

    Parameters
    ----------
    maps : array-like of shape (n_samples, H, W)
        Attention or attribution maps; any finite values (signed maps are maps too).
    owner : str
    name : str, default="maps"
    shape : tuple of int, default=None
        The ``(n_samples, H, W)`` the maps must have (that of the images they explain).
    dtype : numpy dtype, default=numpy.float64

    Examples
    --------
    >>> check_maps(np.zeros((2, 8, 8)), owner="road", shape=(2, 16, 16))
    Traceback (most recent call last):
    ...
    pneumoxai.errors.DataError: road: maps must have shape (2, 16, 16) (n_samples, H, W); got (2, 8, 8).
    """
    arr = _numeric_array(maps, owner, name, "an array of maps of one shape").astype(dtype, copy=False)
    if shape is not None and arr.shape != tuple(shape):
        raise DataError(f"{owner}: {name} must have shape {tuple(shape)} (n_samples, H, W); got {arr.shape}.")
    if arr.ndim != 3:
        raise DataError(f"{owner}: {name} must have shape (n_samples, H, W); got {arr.shape}.")
    return _finite(_not_empty(arr, owner, name, "maps"), owner, name)


def check_probabilities(y_prob, *, owner, name="y_prob"):
    """Return a 1-D float array of finite probabilities in [0, 1], or raise DataError.

    Examples
    --------
    >>> check_probabilities([0.2, 1.5], owner="evaluate")
    Traceback (most recent call last):
    ...
    pneumoxai.errors.DataError: evaluate: y_prob must hold probabilities in [0, 1]; got values from 0.2 to 1.5. Pass probabilities, not logits.
    """
    try:
        p = np.asarray(y_prob, dtype=float)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{owner}: {name} must hold numeric probabilities ({exc}).") from None
    if p.ndim != 1:
        raise DataError(f"{owner}: {name} must be 1-D with shape (n_samples,); got shape {p.shape}.")
    if p.size == 0:
        raise DataError(f"{owner}: {name} is empty.")
    check_probability_columns(p[:, None], owner=owner, name=name)
    return p


def check_probability_columns(X, *, owner, name="X", columns=None):
    """Raise DataError unless the 2-D ``X`` holds finite probabilities; ``columns`` names its columns."""
    bad = ~np.isfinite(X)
    if bad.any():
        col = int(np.flatnonzero(bad.any(axis=0))[0])
        where = f" (first in {columns[col]!r})" if columns else ""
        raise DataError(f"{owner}: {name} has {int(bad.sum())} NaN or infinite values{where}.")
    outside = (X < 0) | (X > 1)
    if outside.any():
        col = int(np.flatnonzero(outside.any(axis=0))[0])
        which = f"{columns[col]!r} has values" if columns else "got values"
        # scikit-learn's wording for negative input, which its estimator checks look for.
        prefix = f"Negative values in data passed to {owner}" if X.min() < 0 else owner
        raise DataError(f"{prefix}: {name} must hold probabilities in [0, 1]; {which} from "
                        f"{X[:, col].min():.4g} to {X[:, col].max():.4g}. Pass probabilities, not logits.")


def check_member_probabilities(P, *, owner, name="P", columns=None):
    """Validate a matrix of member probabilities of PNEUMONIA, one column per member.

    Parameters
    ----------
    P : array-like or pandas.DataFrame of shape (n_samples, n_members)
    owner, name : str
    columns : list of str, default=None
        Names of the columns in messages; default the DataFrame's columns, or
        ``member_0``, ``member_1``, ... for arrays.

    Returns
    -------
    P : numpy.ndarray of shape (n_samples, n_members), float64
    names : list of str
        The column names used in messages.

    Examples
    --------
    >>> check_member_probabilities(np.array([[0.2, 1.8]]), owner="diversity")
    Traceback (most recent call last):
    ...
    pneumoxai.errors.DataError: diversity: P must hold probabilities in [0, 1]; 'member_1' has values from 1.8 to 1.8. Pass probabilities, not logits.
    """
    if columns is None and isinstance(P, pd.DataFrame):
        columns = [str(c) for c in P.columns]
    try:
        arr = np.asarray(P, dtype=float)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{owner}: {name} must hold numeric probabilities ({exc}).") from None
    if arr.ndim != 2:
        hint = " For a single member use P.reshape(-1, 1)." if arr.ndim == 1 else ""
        raise DataError(f"{owner}: {name} must be 2-D (n_samples, n_members); got shape {arr.shape}.{hint}")
    if 0 in arr.shape:
        raise DataError(f"{owner}: {name} is empty (shape {arr.shape}).")
    columns = columns or [f"member_{j}" for j in range(arr.shape[1])]
    check_probability_columns(arr, owner=owner, name=name, columns=columns)
    return arr, columns


def check_labels(y_true, n_samples, *, owner, name="y_true", both_classes=True):
    """Return 0/1 labels as a 1-D int array of length ``n_samples``, or raise DataError.

    Fractional labels (0.5), strings and other values are refused rather than cast.

    Examples
    --------
    >>> check_labels([0, 0.5, 1], 3, owner="balance", name="labels")
    Traceback (most recent call last):
    ...
    pneumoxai.errors.DataError: balance: labels must hold only 0 (NORMAL) and 1 (PNEUMONIA); found 0.5.
    """
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise DataError(f"{owner}: {name} must be 1-D with shape (n_samples,); got shape {y.shape}.")
    if y.shape[0] != n_samples:
        raise DataError(f"{owner}: {name} has {y.shape[0]} labels but there are {n_samples} predictions.")
    valid = np.array([isinstance(v, (numbers.Real, np.bool_)) and v in (0, 1) for v in y.tolist()], dtype=bool)
    if not valid.all():
        found = ", ".join(map(repr, list(dict.fromkeys(y[~valid].tolist()))[:5]))
        raise DataError(f"{owner}: {name} must hold only 0 (NORMAL) and 1 (PNEUMONIA); found {found}.")
    y = y.astype(int)
    if both_classes and np.unique(y).size < 2:
        raise DataError(f"{owner}: {name} holds a single class ({y[0]}); both classes are needed.")
    return y


def check_binary(y_true, y_prob, *, owner, name="y_prob"):
    """:func:`check_labels` and :func:`check_probabilities` of one prediction vector."""
    p = check_probabilities(y_prob, owner=owner, name=name)
    return check_labels(y_true, p.size, owner=owner), p


def check_groups(groups, n_samples, *, owner, name="groups"):
    """Return patient ids as a 1-D array of length ``n_samples`` (None passes through)."""
    if groups is None:
        return None
    g = np.asarray(groups)
    if g.ndim != 1 or g.shape[0] != n_samples:
        raise DataError(f"{owner}: {name} must have shape ({n_samples},); got shape {g.shape}.")
    if pd.isna(g).any():
        raise DataError(f"{owner}: {name} (patient ids) has {int(pd.isna(g).sum())} missing values.")
    return g


def check_features(X, *, owner, name="X"):
    """Return features as a finite float array (n_samples, n_features), or raise DataError.

    Parameters
    ----------
    X : array-like or pandas.DataFrame of shape (n_samples, n_features)
        A DataFrame gives its numeric columns (path and label columns may stay in it).
    owner, name : str

    Examples
    --------
    >>> check_features(pd.DataFrame({"path": ["a", "b"], "mean": [0.5, 0.7]}), owner="f").tolist()
    [[0.5], [0.7]]
    >>> check_features([[0.1, np.inf]], owner="domain_classifier", name="X_ref")
    Traceback (most recent call last):
    ...
    pneumoxai.errors.DataError: domain_classifier: X_ref has 1 NaN or infinite values.
    """
    if isinstance(X, pd.DataFrame):
        X = X.select_dtypes("number")
    arr = _numeric_array(X, owner, name, "a table of numeric features")
    if arr.ndim != 2 or 0 in arr.shape:
        raise DataError(f"{owner}: {name} must be a non-empty 2-D array (n_samples, n_features); "
                        f"got shape {arr.shape}.")
    return _finite(arr.astype(float), owner, name)


def check_scores(scores, n_samples, *, owner, name):
    """Return one finite number per sample as a 1-D float array of length ``n_samples``, or raise DataError.

    Examples
    --------
    >>> check_scores([1.0], 2, owner="aurc", name="confidence")
    Traceback (most recent call last):
    ...
    pneumoxai.errors.DataError: aurc: confidence must have shape (2,), one number per sample; got shape (1,).
    """
    arr = _numeric_array(scores, owner, name, "a 1-D array of numbers").astype(float)
    if arr.shape != (n_samples,):
        raise DataError(f"{owner}: {name} must have shape ({n_samples},), one number per sample; "
                        f"got shape {arr.shape}.")
    return _finite(arr, owner, name)
