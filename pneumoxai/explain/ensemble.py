"""Maps of an ensemble: the members' maps resized to one side and combined with the members' weights."""

import numpy as np

from ..errors import DataError, param_error
from ..validation import check_images
from ._base import TARGETS, _THRESHOLD, _check_model, _choice, _positive_int, _predict_proba, shared_models
from .cam import _cam_explainer, _GradientCAMs
from .layers import _feature_layers, fusion_layers


def ensemble_gradcam(models, images, *, weights=None, method="gradcam", layer=None, layers=None,
                     target="pneumonia", batch_size=16, max_n=32, size=None):
    """Weighted mean and spread of the members' class-activation maps.

    Parameters
    ----------
    models : sequence of keras.Model
    images : array-like of shape (n_samples, H, W, 3), or dict of int -> array-like
        The images, or for members of different input sizes ``{input side: images}``
        holding the same images at each member's input side.
    weights : array-like of shape (n_models,), default=None
        Non-negative member weights (normalised to sum 1), e.g. a combiner's
        ``weights_``; None gives every member the same weight.
    method, layer, batch_size, max_n
        As in :func:`gradcam`; ``layer=None`` picks each member's own feature layer.
    layers : sequence of str, "auto" or callable, default=None
        As in :func:`gradcam`; ``"auto"`` gives each member its own :func:`fusion_layers`,
        and a callable is called with each member and returns that member's layers
        (members of different architectures name their layers differently).
    target : {"pneumonia", "normal", "predicted"} or array-like of bool of shape (n_samples,)
        "predicted" uses the ensemble's weighted mean probability, so every member
        explains the same class.
    size : int, default=None
        Side of the returned maps; default the largest input side. Member maps are
        resized to it (bilinear) before they are combined.

    Returns
    -------
    combined : numpy.ndarray of shape (n_samples, size, size), float32
        Weighted mean of the member maps.
    spread : numpy.ndarray of shape (n_samples, size, size), float32
        Weighted per-pixel standard deviation across members.

    Examples
    --------
    >>> import keras, numpy as np
    >>> def member(side, seed):
    ...     inputs = keras.Input((side, side, 3), name="image")
    ...     x = keras.layers.Conv2D(4, 3, activation="relu", name="conv_last",
    ...                             kernel_initializer=keras.initializers.GlorotUniform(seed))(inputs)
    ...     x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    ...     return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="prediction")(x))
    >>> rng = np.random.default_rng(0)
    >>> images = {8: rng.random((2, 8, 8, 3)), 16: rng.random((2, 16, 16, 3))}
    >>> combined, spread = ensemble_gradcam([member(8, 0), member(16, 1)], images, weights=[3, 1])
    >>> combined.shape, spread.shape
    ((2, 16, 16), (2, 16, 16))
    """
    owner = "ensemble_gradcam"
    models, w, inputs, size, target = _ensemble_inputs(owner, models, images, weights, target, batch_size, size)
    if isinstance(layers, str) and layers == "auto":
        layers = fusion_layers
    with shared_models():
        maps = np.stack([
            resize_maps(_cam_explainer(owner, m, method, layer, batch_size, max_n,
                                       layers(m) if callable(layers) else layers)(x, target=target), size)
            for m, x in zip(models, inputs)
        ])
    return _combine(w, maps)


def _ensemble_gradient_cams(models, images, requests, *, weights=None, target="pneumonia", batch_size=16, size=None):
    """:func:`ensemble_gradcam`'s combined maps of several gradient CAM methods, one pass per member and batch.

    ``requests``: ``(method, layers)`` pairs, each method of :data:`GRADIENT_CAM_METHODS` and
    ``layers`` as in :func:`ensemble_gradcam` (None for each member's last feature layer).
    Every member explains each batch with one forward and backward pass over all the
    requests' layers. Returns one combined map array per request, equal to
    ``ensemble_gradcam(..., method=method, layers=layers)[0]``.
    """
    owner = "ensemble_gradcam"
    models, w, inputs, size, target = _ensemble_inputs(owner, models, images, weights, target, batch_size, size)
    with shared_models():
        per_member = [
            [resize_maps(maps, size) for maps in _GradientCAMs(
                m, [(method, _member_layers(owner, m, layers)) for method, layers in requests],
                batch_size=batch_size)(x, target=target)]
            for m, x in zip(models, inputs)
        ]
    return [_combine(w, np.stack([member[i] for member in per_member]))[0] for i in range(len(requests))]


def _ensemble_inputs(owner, models, images, weights, target, batch_size, size):
    """Checked members, normalised weights, each member's images, the map side and the resolved target."""
    models = list(models)
    if not models:
        raise param_error(owner, "models", "a non-empty list of models", models)
    w = np.full(len(models), 1.0) if weights is None else np.asarray(weights, np.float64)
    if w.shape != (len(models),) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise param_error(owner, "weights", f"{len(models)} finite non-negative numbers with a positive sum",
                          weights)
    w = w / w.sum()
    inputs = [_member_images(owner, model, images) for model in models]
    if len({len(x) for x in inputs}) > 1:
        raise DataError(f"{owner}: the image arrays for the different input sizes hold different numbers of images.")
    size = max(x.shape[1] for x in inputs) if size is None else _positive_int(owner, "size", size)
    if isinstance(target, str) and _choice(owner, "target", target, TARGETS) == "predicted":
        proba = sum(wi * _predict_proba(m, x, batch_size) for wi, m, x in zip(w, models, inputs))
        target = proba >= _THRESHOLD
    return models, w, inputs, size, target


def _member_layers(owner, model, layers):
    """A member's checked layer tuple for ``layers`` (None, "auto", a callable or names)."""
    if isinstance(layers, str) and layers == "auto":
        layers = fusion_layers(model)
    elif callable(layers):
        layers = layers(model)
    return _feature_layers(owner, model, None, layers)


def _combine(w, maps):
    """Weighted mean and weighted per-pixel standard deviation over the members' axis 0."""
    combined = np.tensordot(w, maps, axes=1)
    spread = np.sqrt(np.tensordot(w, (maps - combined) ** 2, axes=1))
    return combined.astype(np.float32), spread.astype(np.float32)


def _member_images(owner, model, images):
    """The checked images for ``model``: the array itself, or the entry of its input side."""
    _check_model(model, owner)
    if isinstance(images, dict):
        side = int(model.input_shape[1])
        if side not in images:
            raise DataError(f"{owner}: a member takes {side} px images but images has sides {sorted(images)}.")
        images = images[side]
    return check_images(images, model=model, owner=owner)


def resize_maps(maps, size):
    """Resize maps to ``size`` x ``size`` (bilinear, half-pixel centres) without rescaling their values.

    Parameters
    ----------
    maps : array-like of shape (n_samples, h, w)
    size : int

    Returns
    -------
    numpy.ndarray of shape (n_samples, size, size), float32

    Examples
    --------
    >>> resize_maps(np.ones((2, 4, 4)), 8).shape
    (2, 8, 8)
    """
    import cv2

    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3:
        raise DataError(f"maps must have shape (n_samples, h, w); got {maps.shape}.")
    size = _positive_int("resize_maps", "size", size)
    if maps.shape[1:] == (size, size):
        return maps
    return np.stack([cv2.resize(m, (size, size), interpolation=cv2.INTER_LINEAR) for m in maps]).astype(np.float32)
