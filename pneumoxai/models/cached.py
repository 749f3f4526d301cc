"""Many members' predictions and embeddings computed once: batched, optionally test-time augmented,
cached by content hash (public as :mod:`pneumoxai.predict`)."""

import hashlib
import json
import marshal
import pickle
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .. import _io
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


def _images_for(images, size, loaded, interpolation):
    """Images at ``size`` from an array (checked) or a dataset table (decoded once per size)."""
    from ..data import load_images, manifest_hash

    if isinstance(images, pd.DataFrame):
        if size not in loaded:
            array, ok = load_images(images["path"], size, interpolation=interpolation, return_mask=True)
            if not ok.all():
                raise DataError(f"{int((~ok).sum())} image(s) of the table could not be read; "
                                "drop them from the table first so predictions stay row-aligned.")
            # How the files were resized is part of what the predictions depend on.
            loaded[size] = (array, f"{manifest_hash(images)}|{interpolation}")
        return loaded[size]
    array = check_images(images, owner="predict_members", size=(size, size))
    if "array" not in loaded:
        loaded["array"] = hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()
    return array, loaded["array"]


def predict_members(members, images, *, batch_size=64, tta=False, cache_dir=None, progress=True,
                    interpolation="auto"):
    """Pneumonia probabilities of every member, shape (n_samples, n_members).

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
        dataset gets a new key. Corrupt files are reported and recomputed.
    progress : bool, default=True
        Show a tqdm progress bar over batches when stderr is a terminal.
    interpolation : str, default="auto"
        How files of a table are resized to each member's input size (see
        :func:`pneumoxai.data.load_images`); part of the cache key.

    Returns
    -------
    numpy.ndarray of shape (n_samples, n_members), float64

    Raises
    ------
    ModelContractError
        A member that does not output one probability per image (see
        :func:`pneumoxai.models.adapt`).

    Warns
    -----
    ConstantPredictionsWarning
        A member gives nearly the same probability to 8 or more images (checked when
        computed, not on cache hits).
    """
    from tqdm.auto import tqdm

    if len(members) == 0:
        raise DataError("predict_members needs at least one member.")
    check_param("predict_members", "batch_size", batch_size, Interval("int", 1, 4096))
    loaded, columns = {}, []
    for index, member in enumerate(members):
        load_model, model_key, size = _model_key(member, "predict_members")
        array, data_key = _images_for(images, size, loaded, interpolation)
        key = hashlib.sha256(f"{model_key}|{data_key}|tta={bool(tta)}|v1".encode()).hexdigest()[:32]
        cache_path = Path(cache_dir) / prediction_cache_file(key) if cache_dir is not None else None
        cached = _read_cache(cache_path, key, len(array))
        if cached is not None:
            columns.append(cached)
            continue
        model = load_model()
        variants = 4 if tta else 1
        bar = tqdm(total=len(array) * variants, desc=f"predict member {index + 1}/{len(members)}",
                   unit="img", disable=None if progress else True, leave=False)  # None: only on a terminal
        probs = np.zeros(len(array))
        for start in range(0, len(array), batch_size):
            batch = array[start:start + batch_size]
            outputs = [predict_on_padded_batch(model, variant, batch_size).reshape(-1) for variant in
                       (_tta_variants(batch) if tta else (batch,))]
            probs[start:start + batch_size] = np.mean(outputs, axis=0)
            bar.update(len(batch) * variants)
        bar.close()
        probs = check_classifier(model, "predict_members", probabilities=probs, warn_constant=True)
        if cache_path is not None:
            _io.save_npz(cache_path, proba=probs, key=np.array(key))
        columns.append(probs)
    return np.column_stack(columns)


def _read_cache(path, key, n_samples):
    if path is None or not path.exists():
        return None
    try:
        data = _io.load_npz(path)
        if str(data.get("key")) != key or data["proba"].shape != (n_samples,) or not np.isfinite(data["proba"]).all():
            raise CacheError(f"{path} does not match its key or shape")
        return data["proba"]
    except (CacheError, KeyError) as exc:
        warnings.warn(f"Prediction cache {path.name} is corrupt ({exc}); recomputing it.", UserWarning, stacklevel=3)
        path.unlink(missing_ok=True)
        return None


def predict_embeddings(members, images, *, layer="head_dense2", batch_size=64, cache_dir=None, interpolation="auto"):
    """Concatenated penultimate-layer activations of every member, shape (n_samples, sum of widths).

    Parameters are as in :func:`predict_members`; ``layer`` names the layer whose output
    is taken from each member (the head's last dense layer by default).
    """
    import keras

    loaded, blocks = {}, []
    for member in members:
        load_model, model_key, size = _model_key(member, "predict_embeddings")
        array, data_key = _images_for(images, size, loaded, interpolation)
        key = hashlib.sha256(f"{model_key}|{data_key}|layer={layer}|v1".encode()).hexdigest()[:32]
        cache_path = Path(cache_dir) / embedding_cache_file(key) if cache_dir is not None else None
        if cache_path is not None and cache_path.exists():
            try:
                data = _io.load_npz(cache_path)
                if str(data["key"]) == key and len(data["embeddings"]) == len(array):
                    blocks.append(data["embeddings"])
                    continue
            except (CacheError, KeyError):
                pass
            warnings.warn(f"Embedding cache {cache_path.name} is corrupt; recomputing it.", UserWarning, stacklevel=2)
        model = load_model()
        try:
            output = model.get_layer(layer).output
        except ValueError as exc:
            raise DataError(f"Member has no layer named {layer!r}.") from exc
        extractor = keras.Model(model.inputs, output)
        embeddings = np.concatenate([predict_on_padded_batch(extractor, array[start:start + batch_size], batch_size)
                                     for start in range(0, len(array), batch_size)]).astype(np.float32)
        if cache_path is not None:
            _io.save_npz(cache_path, embeddings=embeddings, key=np.array(key))
        blocks.append(embeddings)
    return np.concatenate(blocks, axis=1)
