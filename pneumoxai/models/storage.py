"""The member folder on disk: save, load, the card, and the safe loading of model files."""

import importlib.metadata
import json
import platform
import re
import time
import zipfile
from pathlib import Path

import keras

from .. import _io
from ..errors import CacheError, RunFolderError, UnsafeModelError, short_repr
from ..run_folder import CARD_FILE, MODEL_FILE, PREDICTIONS_FILE
from ..validation import Interval, is_valid
from .architecture import _uncompiled_copy
from .precision import _model_precision

CARD_FORMAT = 1


def _versions():
    versions = {"python": platform.python_version()}
    for package in ("pneumoxai", "tensorflow", "keras", "numpy", "scikit-learn"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def is_member_dir(path):
    """True when ``path`` holds a complete saved member (its card is written last): a model, or the
    predictions of an imported member."""
    path = Path(path)
    return (path / CARD_FILE).is_file() and ((path / MODEL_FILE).is_file() or (path / PREDICTIONS_FILE).is_file())


def save_member(directory, model, metadata=None):
    """Save a member as ``model.keras`` plus a JSON card, each written atomically.

    The card is written last and records the model file's SHA-256, so a directory with a
    card always holds a complete, verifiable model.

    Parameters
    ----------
    directory : path
    model : keras.Model
    metadata : dict, default=None
        Config, data manifest hash, seed, sizes, history, validation metrics...

    Returns
    -------
    dict
        The card as written.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model_path = directory / MODEL_FILE
    if getattr(model, "optimizer", None) is not None:
        # A .keras file keeps a compiled model's optimizer state (Adam: twice the weights);
        # members are only ever loaded for inference, so save an uncompiled copy.
        model = _uncompiled_copy(model)
    with _io.atomic_path(model_path, suffix=".keras") as tmp:
        model.save(tmp)
    card = dict(metadata or {})
    card.update({
        "format": CARD_FORMAT,
        "model_file": MODEL_FILE,
        "model_sha256": _io.sha256_file(model_path),
        "input_size": int(model.input_shape[1]),
        "precision": _model_precision(model),
        "versions": _versions(),
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    _io.write_json(directory / CARD_FILE, card)
    return card


def update_card(directory, fields):
    """Add ``fields`` to a saved member's card (atomically); the model file is untouched, so its
    recorded hash stays valid. Returns the updated card."""
    card = {**read_card(directory), **fields}
    _io.write_json(Path(directory) / CARD_FILE, card)
    return card


#: The image sides a member's card may record (those pneumoxai.data.load_images makes).
INPUT_SIZE = Interval("int", 8, 4096)


def read_card(directory):
    """The JSON card of a saved member, checked for this version's card format.

    Raises
    ------
    RunFolderError
        Missing files, or a damaged card (not JSON, another card format, a missing or
        bad field), with one fix: re-create the member.
    """
    directory = Path(directory)
    if not is_member_dir(directory):
        raise RunFolderError(f"{str(directory)!r} is not a saved member (needs {MODEL_FILE} and {CARD_FILE}).")
    card, problem = card_problem(directory)
    if problem is not None:
        raise RunFolderError(f"The card of member {str(directory)!r} is damaged ({problem}); delete the member's "
                             "folder and train or import it again.")
    return card


def card_problem(directory):
    """``(card, None)``, or ``(None, what is wrong with the card)`` in a few words naming the file and field.

    For callers that know the one command that re-creates the member (the run folder's
    route) and say it instead of :func:`read_card`'s generic fix.
    """
    path = Path(directory) / CARD_FILE
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return None, f"{CARD_FILE} is not valid JSON: {exc}"
    if not isinstance(card, dict):
        return None, f"{CARD_FILE} holds a {type(card).__name__}, not a JSON object"
    if card.get("format") != CARD_FORMAT:
        return None, (f"{CARD_FILE} has card format {short_repr(card.get('format'))}; this version reads format "
                      f"{CARD_FORMAT}")
    needed = ("predictions_sha256",) if card.get("kind") == "predictions" else ("input_size", "model_sha256")
    missing = [key for key in needed if card.get(key) is None]
    if missing:
        return None, f"{CARD_FILE} lacks {' and '.join(missing)}"
    if card.get("kind") != "predictions" and not is_valid(card["input_size"], INPUT_SIZE):
        return None, f"input_size {short_repr(card['input_size'])} in {CARD_FILE} is not {INPUT_SIZE}"
    return card, None


def _archive_layers(model_path):
    """``{class name: [layer names]}`` of every layer the archive's ``config.json`` names; empty when unreadable."""
    try:
        with zipfile.ZipFile(model_path) as archive:
            config = json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return {}
    layers, pending = {}, [config]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            if isinstance(node.get("class_name"), str) and isinstance(node.get("config"), dict):
                layers.setdefault(node["class_name"], []).append(str(node["config"].get("name", "?")))
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return layers


def _failing_class(text, layers):
    """The class Keras could not deserialize: the innermost one its nested message names that the archive holds."""
    named = re.findall(r"<class '(?:[\w.]+\.)?(\w+)'> could not be deserialized", text)
    held = [name for name in named if name in layers and name not in ("Functional", "Sequential", "Model")]
    return held[-1] if held else None


def _load_error(model_path, exc):
    """One readable error for a model file Keras refuses to load, naming the layer class that failed."""
    text = str(exc)
    first = short_repr(text.splitlines()[0] if text else type(exc).__name__, 300)
    if "TFSMLayer" in text:
        return UnsafeModelError(f"Refusing to load {str(model_path)!r}: it wraps a TensorFlow SavedModel "
                                "(TFSMLayer), which pneumoxai does not load. Save the model as a plain Keras model.")
    layers = _archive_layers(model_path)
    failing = _failing_class(text, layers)
    if "safe_mode" in text and failing is not None and failing != "Lambda":
        reason = text.rsplit("Exception encountered: ", 1)[-1].split(". ")[0]
        return UnsafeModelError(
            f"Refusing to load {str(model_path)!r}: its {failing} layer {layers[failing]} only loads with "
            f"safe_mode=False ({short_repr(reason, 200)}), which pneumoxai never uses. Re-save the model with "
            f"everything the {failing} layer needs inside the file (e.g. a vocabulary given as a list), or "
            "without that layer.")
    if "safe_mode" in text or "lambda" in text.lower():
        return UnsafeModelError(
            f"Refusing to load {str(model_path)!r}: it contains a Lambda layer or other code that only loads "
            "with safe_mode=False, which would run arbitrary code from the file. Rebuild the model without "
            "Lambda layers (pneumoxai members never need them).")
    if "Could not locate" in text or "custom" in text.lower() or "module" in text.lower():
        return UnsafeModelError(f"Refusing to load {str(model_path)!r}: it names a class or function that is not a "
                                f"registered Keras or pneumoxai object ({first}).")
    return RunFolderError(f"{str(model_path)!r} could not be loaded as a Keras model: {first}")


def load_member(directory, *, verify=True):
    """Load a saved member with Keras safe mode; return ``(model, card)``.

    Parameters
    ----------
    directory : path
    verify : bool, default=True
        Check the model file against the SHA-256 recorded in the card.

    Raises
    ------
    RunFolderError
        Missing files, a card from another card format, or a model file that does not
        match its recorded hash (corrupt or replaced).
    UnsafeModelError
        The model needs unsafe deserialization (a Lambda layer, arbitrary code).
    """
    directory = Path(directory)
    card = read_card(directory)
    if card.get("kind") == "predictions":
        raise RunFolderError(f"Member {str(directory)!r} holds imported predictions, not a model to load.")
    model_path = directory / MODEL_FILE
    if verify and _io.sha256_file(model_path) != card.get("model_sha256"):
        raise RunFolderError(f"{str(model_path)!r} does not match the hash in its card: it is corrupt or was replaced.")
    return load_model_file(model_path), card


def load_model_file(path):
    """Load a ``.keras`` file with Keras safe mode and no optimizer; any refusal is one pneumoxai error.

    Raises
    ------
    UnsafeModelError
        Code that only loads with ``safe_mode=False`` (a Lambda layer), unregistered
        classes or functions, a wrapped TensorFlow SavedModel.
    RunFolderError
        Any other file Keras cannot load.
    """
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # Keras raises many types for hostile or foreign files; each becomes one line
        raise _load_error(path, exc) from exc

