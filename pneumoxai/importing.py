"""Bring your own members: register model files and prediction files in a run folder.

``pneumoxai import`` (:func:`import_members`) turns models and predictions that
pneumoxai did not train into members of a run folder, so that ``evaluate``, ``slices``,
``explain`` (model members) and ``report`` work on them unchanged:

- a **model file** (``.keras``, loaded with Keras safe mode) is adapted with
  :func:`pneumoxai.models.adapt` (its preprocessing and output head declared by the user)
  and saved as ``members/<name>/model.keras`` with its card;
- a **predictions file** (CSV or Parquet, from any framework) holds a ``path`` column
  and a ``probability`` column (P(PNEUMONIA) in [0, 1]); it is checked and stored as
  ``members/<name>/predictions.csv``.

Imported members are read-only: their files are made non-writable, no command
retrains or overwrites them (``train`` and ``run`` say so and leave them be), and
importing a different file under an existing name is refused.
"""

import logging
import os
import stat
from pathlib import Path

import pandas as pd

from . import _io
from .errors import ConfigError, DataError, RunFolderError
from .models.member import member_kind, predictions_of
from .run_folder import CARD_FILE, PREDICTIONS_FILE
from .validation import check_probabilities

__all__ = [
    "PREDICTIONS_FILE",
    "MODEL_SUFFIXES",
    "PREDICTION_SUFFIXES",
    "import_members",
    "check_imports",
    "write_imports",
    "planned_config",
    "read_predictions_file",
    "member_kind",
    "predictions_of",
    "parse_member_spec",
]

logger = logging.getLogger("pneumoxai")

MODEL_SUFFIXES = (".keras",)
PREDICTION_SUFFIXES = (".csv", ".parquet")
_PROBABILITY_COLUMN = "probability"


def read_predictions_file(path, *, data_root=None):
    """Read a predictions file: one row per image, ``path`` and ``probability`` columns.

    Parameters
    ----------
    path : path-like
        ``.csv`` or ``.parquet``.
    data_root : path-like, default=None
        Relative image paths are resolved against it.

    Returns
    -------
    pandas.DataFrame
        ``path`` (absolute, resolved) and ``probability`` (float in [0, 1]).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "p.csv").write_text("path,probability\\ntest/NORMAL/a.jpeg,0.25\\n")
    >>> frame = read_predictions_file(folder / "p.csv", data_root="/data")
    >>> frame["path"].tolist(), frame["probability"].tolist()
    (['/data/test/NORMAL/a.jpeg'], [0.25])
    """
    path = Path(path)
    if path.suffix.lower() not in PREDICTION_SUFFIXES or not path.is_file():
        raise DataError(f"Predictions file {str(path)!r} must be an existing {' or '.join(PREDICTION_SUFFIXES)} file.")
    try:
        frame = pd.read_parquet(path) if path.suffix.lower() == ".parquet" else pd.read_csv(path)
    except (ValueError, OSError, ImportError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"Predictions file {str(path)!r} could not be read: {str(exc).splitlines()[0]}") from None
    missing = [c for c in ("path", _PROBABILITY_COLUMN) if c not in frame.columns]
    if missing:
        raise DataError(f"Predictions file {str(path)!r} lacks column(s) {missing}; it needs 'path' and "
                        f"'{_PROBABILITY_COLUMN}' (P(PNEUMONIA) in [0, 1]). Found {list(frame.columns)[:10]}.")
    probability = check_probabilities(frame[_PROBABILITY_COLUMN], owner=f"predictions file {path.name}",
                                      name=_PROBABILITY_COLUMN)
    base = Path(data_root) if data_root is not None else Path.cwd()
    paths = [str((base / p).resolve()) if not Path(p).is_absolute() else str(Path(p).resolve())
             for p in frame["path"].astype(str)]
    out = pd.DataFrame({"path": paths, "probability": probability})
    if out["path"].duplicated().any():
        raise DataError(f"Predictions file {str(path)!r} lists {int(out['path'].duplicated().sum())} image(s) twice, "
                        f"e.g. {out.loc[out['path'].duplicated(), 'path'].iloc[0]!r}.")
    return out


def parse_member_spec(spec):
    """``(name, path)`` of a ``NAME=PATH`` member to import, or a ConfigError naming the form."""
    name, _, path = spec.partition("=")
    if not name.strip() or not path.strip():
        raise ConfigError(f"A member to import must look like NAME=PATH (a .keras model or a .csv/.parquet "
                          f"predictions file); got {spec!r}.")
    return name.strip(), Path(path.strip())


def _make_read_only(directory):
    for path in Path(directory).iterdir():
        if path.is_file() and not path.name.startswith("."):
            os.chmod(path, stat.S_IMODE(path.stat().st_mode) & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _checked_model(name, source, preprocess, positive_index):
    """The adapted model of a model file and its card, nothing written."""
    from . import models

    model = models.adapt(models.load_model_file(source), preprocess=preprocess, positive_index=positive_index,
                         name=name)
    return model, {"name": name, "kind": "model", "imported": True, "source": str(source.resolve()),
                   "source_sha256": _io.sha256_file(source), "input_size": int(model.input_shape[1]),
                   "preprocess": preprocess if isinstance(preprocess, str) else None, "positive_index": positive_index}


def _checked_predictions(name, source, table, data_root):
    """The rows of a predictions file for the run's validation and test images and its card, nothing written."""
    from . import models

    frame = read_predictions_file(source, data_root=data_root)
    needed = table[table["role"].isin(("val", "test"))]
    missing = needed.loc[~needed["path"].isin(set(frame["path"])), "path"]
    if len(missing):
        raise DataError(f"Predictions file {str(source)!r} has no probability for {len(missing)} of the "
                        f"{len(needed)} validation and test images, e.g. {missing.iloc[0]!r}.")
    frame = frame[frame["path"].isin(set(needed["path"]))]
    return frame, {"name": name, "kind": "predictions", "imported": True, "source": str(source.resolve()),
                   "source_sha256": _io.sha256_file(source), "format": models.CARD_FORMAT,
                   "n_predictions": int(len(frame))}


def check_imports(run, members, *, data_root=None, table, preprocess=None, positive_index=None):
    """Check every member to import, writing nothing: what :func:`write_imports` then writes.

    Each model file is loaded and adapted, each predictions file read and matched to the
    validation and test images of ``table``, and each name checked against the members
    already in ``run``, so that one refused member leaves the run folder as it was.

    Returns
    -------
    list of tuple
        ``(name, source, payload, card)`` per member: ``payload`` is the adapted model,
        the predictions frame, or None for a member already imported from the same file
        (``card`` is then its card).
    """
    from . import models

    preprocess, positive_index = preprocess or {}, positive_index or {}
    entries = [parse_member_spec(spec) for spec in members]
    names = [name for name, _ in entries]
    unknown = sorted((set(preprocess) | set(positive_index)) - set(names))
    if unknown:
        raise ConfigError(f"--preprocess/--positive-index name member(s) {unknown} that are not imported; "
                          f"imported: {names}.")
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ConfigError(f"Member name(s) {twice} are given twice; each imported member needs its own name.")
    plan = []
    for name, source in entries:
        if not source.is_file():
            raise DataError(f"The file of member {name!r}, {str(source)!r}, does not exist.")
        suffix = source.suffix.lower()
        if suffix not in MODEL_SUFFIXES + PREDICTION_SUFFIXES:
            raise ConfigError(f"Member {name!r}: {str(source)!r} is neither a model ({', '.join(MODEL_SUFFIXES)}) nor "
                              f"a predictions file ({', '.join(PREDICTION_SUFFIXES)}).")
        member_dir = run.member_dir(name)
        if models.is_member_dir(member_dir):
            card = _io.read_json(member_dir / CARD_FILE)
            if card.get("imported") and card.get("source_sha256") == _io.sha256_file(source):
                plan.append((name, source, None, card))
                continue
            raise RunFolderError(f"Run folder {str(run.root)!r} already has a member {name!r}; pneumoxai never "
                                 "overwrites a member. Import under another name or into a new --out folder.")
        if suffix in MODEL_SUFFIXES:
            plan.append((name, source, *_checked_model(name, source, preprocess.get(name, "0-1"),
                                                       positive_index.get(name))))
        else:
            if name in preprocess or name in positive_index:
                raise ConfigError(f"Member {name!r} is a predictions file: --preprocess/--positive-index do not apply.")
            plan.append((name, source, *_checked_predictions(name, source, table, data_root)))
    return plan


def planned_config(config, plan):
    """``config`` with the members of a :func:`check_imports` plan in place of any of the same name."""
    names = [name for name, *_ in plan]
    return {**config, "members": [m for m in config["members"] if m["name"] not in names]
            + [_member_entry(name, card) for name, _, _, card in plan]}


def write_imports(run, plan):
    """Write the members checked by :func:`check_imports` as read-only files."""
    from . import models

    for name, source, payload, card in plan:
        member_dir = run.member_dir(name)
        if payload is None:
            logger.info("member %s: already imported from this file, kept", name)
            continue
        if member_kind(card) == "model":
            card = models.save_member(member_dir, payload, card)
        else:
            member_dir.mkdir(parents=True, exist_ok=True)
            _io.write_csv(member_dir / PREDICTIONS_FILE, payload, index=False)
            _io.write_json(member_dir / CARD_FILE,
                           {**card, "predictions_sha256": _io.sha256_file(member_dir / PREDICTIONS_FILE)})
        _make_read_only(member_dir)
        logger.info("member %s: imported %s from %s", name, member_kind(card), source)


def import_members(run, members, *, data_root=None, config, table, preprocess=None, positive_index=None):
    """Register model files and prediction files as read-only members of ``run``.

    Every member is checked (:func:`check_imports`) before any is written, so one
    refused member leaves the run folder as it was.

    Parameters
    ----------
    run : pneumoxai.run_folder.RunFolder
        Held under its lock by the caller.
    members : list of str
        ``NAME=PATH`` entries: a ``.keras`` model or a ``.csv`` / ``.parquet``
        predictions file.
    data_root : path-like, default=None
        Relative paths in predictions files are resolved against it.
    config : dict
        The resolved run config; imported members are added to ``config["members"]``
        (replacing any trained member of the same name is refused).
    table : pandas.DataFrame
        The run's dataset table (``path``, ``role``, ...), already written.
    preprocess, positive_index : dict of str -> object, default=None
        Per member name, what :func:`pneumoxai.models.adapt` needs for model files.

    Returns
    -------
    dict
        The config with the imported members appended.
    """
    plan = check_imports(run, members, data_root=data_root, table=table, preprocess=preprocess,
                         positive_index=positive_index)
    write_imports(run, plan)
    return planned_config(config, plan)


def _member_entry(name, card):
    """The config entry of an imported member: its name, the flag, and the input size of a model."""
    entry = {"name": name, "imported": True}
    if member_kind(card) == "model":
        entry["image_size"] = int(card["input_size"])
    return entry
