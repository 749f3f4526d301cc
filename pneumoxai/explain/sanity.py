"""The model-parameter randomization check (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018)."""

import warnings

import keras
import numpy as np
import scipy.stats

from ..errors import ConfigError, ConstantPredictionsWarning, ModelContractError
from ..validation import Interval, Options, check_images, check_param
from ._base import (DOWNSTREAM, RANDOMIZATION_METHODS, _check_model, _choice, _positive_int, _seed, _shared_entry,
                    _target_is_pneumonia)
from .cam import _cam_explainer
from .layers import _feature_layers
from .saliency import SaliencyMap

def _seeded_initializer(initializer, seed):
    initializer = keras.initializers.get(initializer)
    config = initializer.get_config()
    if "seed" in config:
        config["seed"] = seed
        initializer = type(initializer).from_config(config)
    return initializer


def _layers_to_randomize(owner, model, n_layers, explained, *, name="n_layers"):
    """Names of the weighted layers a randomization check re-initialises.

    An int takes the top ``n_layers`` weighted layers. ``"downstream"`` takes every
    weighted layer after the shallowest of the ``explained`` layers in the model's
    (topological) layer order, so whatever turns the map's features into the
    decision is re-drawn, however deep the map sits; no explained layers (a
    saliency map of the input) means every weighted layer.
    """
    n_layers = check_param(owner, name, n_layers, (Interval("int", 1, None), Options((DOWNSTREAM,))))
    weighted = [layer.name for layer in model.layers if layer.weights]
    if n_layers == DOWNSTREAM:
        order = {layer.name: i for i, layer in enumerate(model.layers)}
        first = min((order[name] for name in explained), default=-1)
        chosen = [name for name in weighted if order[name] > first]
        if not chosen:
            raise ConfigError(f"{owner}: no layer with weights follows {explained[0]!r}, so there is nothing "
                              "to re-initialise for the randomization check")
        return chosen
    if n_layers > len(weighted):
        raise ConfigError(f"{owner}: {name}={n_layers} but the model has only {len(weighted)} layers with weights")
    return weighted[-n_layers:]


def _custom_layers(model):
    """Names of ``model``'s layers that are ``Lambda`` layers or classes from outside Keras and pneumoxai.

    Such layers cannot be re-created from the model's config without running the user's
    code (Keras refuses a ``Lambda`` in safe mode), so a copy of the model is refused by name.

    Examples
    --------
    >>> inputs = keras.Input((8, 8, 3))
    >>> x = keras.layers.Lambda(lambda t: t, name="scale")(inputs)
    >>> _custom_layers(keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x)))
    ['scale']
    """
    names = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        module = type(layer).__module__
        if isinstance(layer, keras.layers.Lambda) or not module.startswith(("keras", "pneumoxai")):
            names.append(layer.name)
    return names


def _copy_refusal(owner, model):
    """Why a randomized copy of ``model`` cannot be made (Lambda or custom layers), in one line; None when it can."""
    custom = _custom_layers(model)
    if not custom:
        return None
    return (f"{owner}: model {model.name!r} has Lambda or custom layers {custom}, which a copy cannot re-create "
            "without running their code, and the randomization check re-initialises a copy; skip the check, or "
            "rebuild the model from Keras layers (pneumoxai.models.adapt(model, preprocess=...) takes the usual "
            "preprocessing).")


def _randomized_copy(model, names, seed):
    """Copy of ``model`` with the layers ``names`` re-initialised."""
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    rng = np.random.default_rng(seed)
    for name in names:
        layer = clone.get_layer(name)
        for variable in layer.weights:
            # Each variable is redrawn from its own layer's initializer (Adebayo et al.),
            # seeded here instead of through Keras' global seed.
            variable_name = variable.name.split("/")[-1]
            fallback = "glorot_uniform" if len(variable.shape) >= 2 else "zeros"
            init = getattr(layer, f"{variable_name}_initializer", None) or fallback
            init = _seeded_initializer(init, int(rng.integers(2**31 - 1)))
            variable.assign(init(variable.shape, variable.dtype))
    return clone


def _explain_randomized(explain, randomized):
    """``explain(randomized)`` without the nearly-constant warning: re-drawn weights may well give one probability.

    Inside a :func:`shared_models` block the copy's probabilities are not even computed for that check.
    """
    entry = _shared_entry(randomized)
    if entry is not None:
        entry["outputs_checked"] = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantPredictionsWarning)
        return explain(randomized)


def _spearman_rows(a, b):
    """Spearman correlation of matching rows; NaN where a row is constant."""
    ra = scipy.stats.rankdata(a.reshape(len(a), -1), axis=1)
    rb = scipy.stats.rankdata(b.reshape(len(b), -1), axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    denom = np.sqrt((ra**2).sum(axis=1) * (rb**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (ra * rb).sum(axis=1) / denom, np.nan)


def randomization_check(model, images, *, method="gradcam", n_layers=1, layer=None, layers=None,
                        target="pneumonia", batch_size=16, max_n=32, seed=0):
    """Model-parameter randomization test (Adebayo et al., NeurIPS 2018).

    The model is cloned, its top ``n_layers`` layers with weights (counted from the
    output) are re-initialised, and each image's map from the trained and the
    randomized model are compared by Spearman rank correlation. A method that depends
    on the learned weights gives low correlations; values near 1 mean the map mostly
    reflects the input (edge detector behaviour), not the model.

    A fixed count is a shallow check for a map of a shallow layer: re-initialising a
    ResNet50's head leaves conv3's activations and most of the gradient path to them
    in place. ``n_layers="downstream"`` re-initialises every weighted layer after the
    explained layer (the cascade of Adebayo et al. run down to the map's own layer),
    so maps of every depth face the same question: does the map change once the
    learned path from its features to the decision is gone?

    Parameters
    ----------
    model : keras.Model
    images : array-like, shape (n, H, W, 3)
    method : {"gradcam", "gradcam++", "layercam", "hirescam", "scorecam", "saliency"}, default="gradcam"
    n_layers : int or "downstream", default=1
        Weighted layers to re-initialise, from the top (cascading randomization), or
        ``"downstream"``: all of them after the explained layer (the shallowest of
        ``layers``; every weighted layer for ``"saliency"``).
    layer, layers, target, batch_size, max_n
        As in :func:`gradcam`; "predicted" follows the trained model for both maps.
    seed : int, default=0
        Seeds the re-initialisation.

    Returns
    -------
    ndarray of float64, shape (n,)
        Per-image Spearman correlation; NaN where a map is constant (e.g. an all-zero
        ReLU-clipped CAM), which carries no ranking.
    """
    _choice("randomization_check", "method", method, RANDOMIZATION_METHODS)
    seed = _seed("randomization_check", seed)
    _check_model(model, "randomization_check")
    refusal = _copy_refusal("randomization_check", model)
    if refusal:
        raise ModelContractError(refusal)
    explained = () if method == "saliency" else _feature_layers("randomization_check", model, layer, layers)
    names = _layers_to_randomize("randomization_check", model, n_layers, explained)
    x = check_images(images, model=model, owner="randomization_check")
    batch_size = _positive_int("randomization_check", "batch_size", batch_size)
    target = _target_is_pneumonia("randomization_check", target, model, x, batch_size)
    randomized = _randomized_copy(model, names, seed)

    def explain(m):
        if method == "saliency":
            return SaliencyMap(m, batch_size=batch_size)(x, target=target)
        return _cam_explainer("randomization_check", m, method, layer, batch_size, max_n, layers)(x, target=target)

    return _spearman_rows(explain(model), _explain_randomized(explain, randomized))
