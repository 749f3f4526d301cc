"""Exception and warning classes raised by pneumoxai, and the checks and wording of bad parameters.

Every error a user can trigger with bad input derives from :class:`PneumoxaiError`,
so analysis scripts can catch one type. Classes that signal a bad value also derive
from :class:`ValueError` so generic callers keep working.
"""

from sklearn.exceptions import NotFittedError as _SklearnNotFittedError

__all__ = [
    "PneumoxaiError",
    "DataError",
    "ConfigError",
    "ModelContractError",
    "WeightsUnavailableError",
    "UnsafeModelError",
    "CacheError",
    "RunFolderError",
    "NotFittedError",
    "SkippedFilesWarning",
    "ConstantPredictionsWarning",
]


class PneumoxaiError(Exception):
    """Base class of every error pneumoxai raises on purpose."""


class DataError(PneumoxaiError, ValueError):
    """The dataset, an image array or a table is missing, empty or malformed."""


class ConfigError(PneumoxaiError, ValueError):
    """A configuration file or a parameter value is invalid."""


class ModelContractError(ConfigError):
    """A model does not give one probability of PNEUMONIA per [0, 1] image; see ``pneumoxai.models.adapt``."""


class WeightsUnavailableError(PneumoxaiError, FileNotFoundError):
    """Pretrained backbone weights could not be found or downloaded."""


class UnsafeModelError(PneumoxaiError):
    """A model file would need unsafe deserialization (e.g. a Lambda layer) to load."""


class CacheError(PneumoxaiError):
    """A cached artifact is corrupt, truncated or does not match its content hash."""


class RunFolderError(PneumoxaiError):
    """The run folder is locked, unwritable, or was made by an incompatible config/version."""


class NotFittedError(PneumoxaiError, _SklearnNotFittedError):
    """An estimator was used before ``fit``; also scikit-learn's ``NotFittedError``, so code written
    for scikit-learn estimators (and ``check_estimator``) recognises it."""


class SkippedFilesWarning(UserWarning):
    """Some input files could not be read and were skipped."""


class ConstantPredictionsWarning(UserWarning):
    """A model gives nearly the same probability for every image: often wrongly scaled input."""


_ECHO_LIMIT = 120  # characters of an offending value echoed in a message


def short_repr(value, limit=_ECHO_LIMIT):
    """``repr(value)`` cut to ``limit`` characters: a message never echoes a huge value whole.

    >>> short_repr("x" * 1000, limit=12)
    "'xxxxxx...[1002 chars]"
    """
    try:
        text = repr(value)
    except Exception:  # a hostile __repr__ must not mask the real error
        return f"<{type(value).__name__}>"
    if len(text) <= limit:
        return text
    return f"{text[:limit - 5]}...[{len(text)} chars]"


def param_error(owner, name, expected, value):
    """The one wording of a bad parameter value, e.g. ``param_error("SoftVoting", "weights", ...)``:
    "The 'weights' parameter of SoftVoting must be ...; got ...". Returned, for ``raise``."""
    return ConfigError(f"The {name!r} parameter of {owner} must be {expected}; got {short_repr(value)}.")


def option_error(where, name, expected, value):
    """The same wording for a config option: "The 'rotation' option in 'defaults.augment' must be ...; got ..."."""
    return ConfigError(f"The {name!r} option in {where!r} must be {expected}; got {short_repr(value)}.")
