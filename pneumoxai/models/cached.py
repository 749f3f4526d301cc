"""Many members' predictions and embeddings computed once: batched, optionally test-time augmented,
cached by content hash (public as :mod:`pneumoxai.predict`)."""

import hashlib
import json
import marshal
import pickle
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from .. import _io
from ..data import DEFAULT_CHUNK_SIZE
from ..errors import CacheError, DataError
from ..run_folder import MODEL_FILE, embedding_cache_file, prediction_cache_file
from ..validation import Interval, check_images, check_param
# Through the module: every member is loaded by the one storage.load_member.
from . import storage
from .contract import check_classifier
from .predict import predict_on_padded_batch

__all__ = ["TTA_ROTATIONS", "predict_members", "predict_embeddings"]

TTA_ROTATIONS = (-5.0, 5.0)


def _tta_variants(images):
    """Yield the identity, the horizontal flip and small rotations of a batch."""
    import cv2

    yield images
    yield images[:, :, ::-1, :]
    height, width = images.shape[1:3]
    for angle in TTA_ROTATIONS:
        matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle, 1.0)
        yield np.stack([cv2.warpAffine(image, matrix, (width, height), borderMode=cv2.BORDER_CONSTANT)
                        for image in images]).reshape(images.shape)


def _model_key(member, owner):
    """(model loader, content key, input size) for a Keras model or a saved member folder.

    A folder's key is the model file's hash verified against its card, so a cache hit
    never pays for deserializing the network; the file holds the architecture and the
    weights. A model's key hashes the same: its config (layers, preprocessing) and weights.
    """
    if isinstance(member, (str, Path)):
        directory = Path(member)
        if not storage.is_member_dir(directory):
            raise DataError(f"{str(directory)!r} is not a saved member (needs model.keras and card.json).")
        card = storage.read_card(directory)
        if card.get("kind") == "predictions":
            raise DataError(f"{str(directory)!r} holds imported predictions, not a model to run.")
        digest = _io.sha256_file(directory / MODEL_FILE)
        return (lambda: _member_model(directory, owner)), digest, int(card["input_size"])
    check_classifier(member, owner)
    digest = hashlib.sha256(_architecture(member).encode())
    for weight in member.weights:
        digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return (lambda: member), digest.hexdigest(), int(member.input_shape[1])


def _member_model(directory, owner):
    model = storage.load_member(directory)[0]
    check_classifier(model, owner)
    return model


def _architecture(model):
    """The model's JSON config, plus the code and captured values of any preprocessing function.

    Keras records a named function by its name only, so two ``adapt(model,
    preprocess=f)`` with different ``f`` of one name would otherwise share a key.
    """
    try:
        parts = [model.to_json()]
    except (TypeError, ValueError):  # a config Keras cannot serialize: describe it without reuse across objects
        parts = [json.dumps(model.get_config(), sort_keys=True, default=repr)]
    for layer in model.layers:
        function = getattr(layer, "function", None)  # pneumoxai's callable preprocess, keras.layers.Lambda
        code = getattr(function, "__code__", None)
        if code is not None:
            captured = [cell.cell_contents for cell in function.__closure__ or ()] + list(function.__defaults__ or ())
            try:
                captured_bytes = pickle.dumps(captured)
            except (pickle.PicklingError, TypeError, AttributeError):  # their repr, which names their id
                captured_bytes = repr(captured).encode()
            parts.append(hashlib.sha256(marshal.dumps(code) + captured_bytes).hexdigest())
    return "|".join(parts)


def _data_key(images, size, keys, owner):
    """Cache key of the images: a table's manifest and interpolation, or an array's bytes (checked at ``size``).

    Computed once per call (``keys`` remembers it); a table's key does not depend on
    ``size``: the member key already fixes the input size.
    """
    from ..data import manifest_hash

    if isinstance(images, pd.DataFrame):
        if "table" not in keys:
            # How the files were resized is part of what the predictions depend on.
            keys["table"] = f"{manifest_hash(images)}|{keys['interpolation']}"
        return keys["table"]
    array = check_images(images, owner=owner, size=(size, size))
    if "array" not in keys:
        # Hashed through its buffer: tobytes() would copy the whole array (the same digest).
        keys["array"] = hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()
    return keys["array"]


def _stream(images, size, runners, *, chunk_size, interpolation, bar):
    """Every runner's outputs over all images, concatenated; a table is decoded ``chunk_size`` files at a time.

    ``runners`` map a chunk of images to per-image outputs. A table is decoded once for
    all runners (at ``size``) and never held whole. If a file cannot be read, the rest
    is only decoded, so that :func:`pneumoxai.data.iter_images` names every unreadable
    file, and a DataError is raised.
    """
    from ..data import iter_images

    outputs = [[] for _ in runners]
    if isinstance(images, pd.DataFrame):
        chunks = iter_images(images["path"], size, chunk_size=chunk_size, interpolation=interpolation)
    else:
        chunks = ((images[start:start + chunk_size], None) for start in range(0, len(images), chunk_size))
    n_unreadable = 0
    for chunk, ok in chunks:
        n_unreadable += 0 if ok is None else int((~ok).sum())
        if n_unreadable:
            continue
        for output, runner in zip(outputs, runners):
            output.append(runner(chunk))
            bar.update(len(chunk))
    if n_unreadable:
        raise DataError(f"{n_unreadable} image(s) of the table could not be read; "
                        "drop them from the table first so predictions stay row-aligned.")
    return [np.concatenate(output) if output else np.empty(0) for output in outputs]


def _batched(model, chunk, batch_size, tta):
    """One model's mean output over the TTA variants (or the images alone) of a chunk, ``batch_size`` at a time."""
    parts = []
    for start in range(0, len(chunk), batch_size):
        batch = chunk[start:start + batch_size]
        parts.append(np.mean([predict_on_padded_batch(model, variant, batch_size) for variant in
                              (_tta_variants(batch) if tta else (batch,))], axis=0))
    return np.concatenate(parts)


def _cached_and_pending(owner, members, images, *, batch_size, chunk_size, interpolation, suffix, cache_path,
                        read):
    """Cached outputs by member index, and the other members grouped by input size as
    (index, model loader, key) lists, so that each size's images are decoded once.

    A member's key hashes its model key, the data key and ``suffix`` (what else the
    output depends on); ``read(path, key, n_samples)`` is the cached output or None.
    """
    check_param(owner, "batch_size", batch_size, Interval("int", 1, 4096))
    check_param(owner, "chunk_size", chunk_size, Interval("int", 1, None))
    keys, done, pending = {"interpolation": interpolation}, {}, {}
    for index, member in enumerate(members):
        load_model, model_key, size = _model_key(member, owner)
        text = f"{model_key}|{_data_key(images, size, keys, owner)}|{suffix}|v1"
        key = hashlib.sha256(text.encode()).hexdigest()[:32]
        cached = read(cache_path(key), key, len(images))
        if cached is not None:
            done[index] = cached
        else:
            pending.setdefault(size, []).append((index, load_model, key))
    return done, pending


def predict_members(members, images, *, batch_size=64, tta=False, cache_dir=None, progress=True,
                    interpolation="auto", chunk_size=DEFAULT_CHUNK_SIZE):
    """Pneumonia probabilities of every member, shape (n_samples, n_members).

    A table's files are decoded ``chunk_size`` at a time, once per input size for all
    members of that size, so memory does not grow with the number of images.

    Parameters
    ----------
    members : list of keras.Model or member folders
        Folders are loaded with :func:`pneumoxai.models.load_member` (safe mode).
    images : numpy.ndarray of shape (n_samples, H, W, 3) or pandas.DataFrame
        An array from :func:`pneumoxai.data.load_images`, or a table from
        :func:`pneumoxai.data.scan_dataset` (decoded at each member's input size).
    batch_size : int, default=64
    tta : bool, default=False
        Average over test-time augmentations (identity, horizontal flip, +-5 degree rotations).
    cache_dir : path, default=None
        Cache folder. Each member's column is stored as ``<key>.npz`` with ``key`` the
        SHA-256 of the model file (or of the model's config, preprocessing included, and
        weights), the data manifest (or array bytes), the TTA flag; a changed member or
        dataset gets a new key. Corrupt files are reported and recomputed. A table whose
        members are all cached is not decoded.
    progress : bool, default=True
        Show a tqdm progress bar over images when stderr is a terminal.
    interpolation : str, default="auto"
        How files of a table are resized to each member's input size (see
        :func:`pneumoxai.data.load_images`); part of the cache key.
    chunk_size : int, default=DEFAULT_CHUNK_SIZE
        Files of a table decoded at once (see :func:`pneumoxai.data.iter_images`): peak
        memory holds two chunks of images, whatever the table's length; a multiple of
        ``batch_size`` keeps every batch full. Not part of the cache key: it changes
        memory, not predictions.

    Returns
    -------
    numpy.ndarray of shape (n_samples, n_members), float64

    Raises
    ------
    ModelContractError
        A member that does not output one probability per image (see
        :func:`pneumoxai.models.adapt`).
    DataError
        A file of the table cannot be read (every unreadable file is named in a
        :class:`~pneumoxai.errors.SkippedFilesWarning` first).

    Warns
    -----
    ConstantPredictionsWarning
        A member gives nearly the same probability to 8 or more images (checked when
        computed, not on cache hits).
    """
    if len(members) == 0:
        raise DataError("predict_members needs at least one member.")
    cache_path = _cache_path_of(cache_dir, prediction_cache_file)
    done, pending = _cached_and_pending("predict_members", members, images, batch_size=batch_size,
                                        chunk_size=chunk_size, interpolation=interpolation, suffix=_tta_suffix(tta),
                                        cache_path=cache_path, read=_read_cache)
    for size, group in pending.items():
        models = [load_model() for _, load_model, _ in group]
        with _progress_bar(len(images), len(models), "predict", progress) as bar:
            outputs = _stream(images, size, [partial(_batched, model, batch_size=batch_size, tta=tta)
                                             for model in models],
                              chunk_size=chunk_size, interpolation=interpolation, bar=bar)
        for (index, _, key), model, output in zip(group, models, outputs):
            probs = check_classifier(model, "predict_members", probabilities=output.reshape(-1).astype(np.float64),
                                     warn_constant=True)
            if cache_dir is not None:
                write_prediction_cache(cache_path(key), key, probs)
            done[index] = probs
    return np.column_stack([done[index] for index in range(len(members))])


def _tta_suffix(tta):
    return f"tta={bool(tta)}"


def prediction_cache_entries(members, images, *, cache_dir, tta=False, interpolation="auto"):
    """``(cache file, key)`` of each member's column, as :func:`predict_members` names and checks them.

    For a job that computes a column elsewhere (a shard of a sharded analysis) and hands it
    to :func:`write_prediction_cache`, so that :func:`predict_members` finds it cached.
    """
    entries = []

    def note(path, key, n_samples):
        entries.append((path, key))  # in member order; returning None leaves every member "not cached"

    _cached_and_pending("prediction_cache_entries", members, images, batch_size=1, chunk_size=1,
                        interpolation=interpolation, suffix=_tta_suffix(tta),
                        cache_path=_cache_path_of(cache_dir, prediction_cache_file), read=note)
    return entries


def write_prediction_cache(path, key, proba):
    """Store one member's probabilities (shape (n_samples,)) as its cache file ``path`` (atomic)."""
    _io.save_npz(path, proba=np.asarray(proba, np.float64), key=np.array(key))


def _cache_path_of(cache_dir, file_name):
    """key -> its cache file under ``cache_dir`` (None without a cache)."""
    return lambda key: None if cache_dir is None else Path(cache_dir) / file_name(key)


def _progress_bar(n_images, n_models, what, progress):
    from tqdm.auto import tqdm

    return tqdm(total=n_images * n_models, desc=f"{what} {n_models} member(s)", unit="img",
                disable=None if progress else True, leave=False)  # None: only on a terminal


def _read_cache(path, key, n_samples):
    if path is None or not path.exists():
        return None
    try:
        data = _io.load_npz(path)
        if str(data.get("key")) != key or data["proba"].shape != (n_samples,) or not np.isfinite(data["proba"]).all():
            raise CacheError(f"{path} does not match its key or shape")
        return data["proba"]
    except (CacheError, KeyError) as exc:
        warnings.warn(f"Prediction cache {path.name} is corrupt ({exc}); recomputing it.", UserWarning, stacklevel=4)
        path.unlink(missing_ok=True)
        return None


def _read_embedding_cache(path, key, n_samples):
    if path is None or not path.exists():
        return None
    try:
        data = _io.load_npz(path)
        if str(data["key"]) == key and len(data["embeddings"]) == n_samples:
            return data["embeddings"]
    except (CacheError, KeyError):
        pass
    warnings.warn(f"Embedding cache {path.name} is corrupt; recomputing it.", UserWarning, stacklevel=4)
    return None


def predict_embeddings(members, images, *, layer="head_dense2", batch_size=64, cache_dir=None, interpolation="auto",
                       chunk_size=DEFAULT_CHUNK_SIZE):
    """Concatenated penultimate-layer activations of every member, shape (n_samples, sum of widths).

    Parameters are as in :func:`predict_members`; ``layer`` names the layer whose output
    is taken from each member (the head's last dense layer by default).
    """
    import keras

    cache_path = _cache_path_of(cache_dir, embedding_cache_file)
    done, pending = _cached_and_pending("predict_embeddings", members, images, batch_size=batch_size,
                                        chunk_size=chunk_size, interpolation=interpolation, suffix=f"layer={layer}",
                                        cache_path=cache_path, read=_read_embedding_cache)
    for size, group in pending.items():
        extractors = []
        for _, load_model, _ in group:
            model = load_model()
            try:
                output = model.get_layer(layer).output
            except ValueError as exc:
                raise DataError(f"Member has no layer named {layer!r}.") from exc
            extractors.append(keras.Model(model.inputs, output))
        with _progress_bar(len(images), len(extractors), "embed", progress=False) as bar:
            outputs = _stream(images, size, [partial(_batched, extractor, batch_size=batch_size, tta=False)
                                             for extractor in extractors],
                              chunk_size=chunk_size, interpolation=interpolation, bar=bar)
        for (index, _, key), embeddings in zip(group, outputs):
            embeddings = embeddings.astype(np.float32)
            if cache_dir is not None:
                _io.save_npz(cache_path(key), embeddings=embeddings, key=np.array(key))
            done[index] = embeddings
    return np.concatenate([done[index] for index in range(len(members))], axis=1)
