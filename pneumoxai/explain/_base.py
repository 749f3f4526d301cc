"""The explainers' shared ground: option values, checks, the logit copy and :class:`MapExplainer`.

:class:`MapExplainer` checks the model once and the images on every call, resolves the
explained class, then explains the images in batches. Inside a :func:`shared_models`
block every model is checked once and every explainer of it shares one logit copy.
"""

import contextlib
import warnings

import keras
import numpy as np

from ..errors import ConfigError, ModelContractError
from ..models import check_classifier
from ..validation import Interval, Options, check_images, check_param

# Allowed option values, declared once.
CAM_METHODS = ("gradcam", "gradcam++", "layercam", "hirescam", "scorecam")
SHAP_METHODS = ("gradient", "partition")
TARGETS = ("pneumonia", "normal", "predicted")
FAITHFULNESS_METRICS = ("deletion", "insertion")
ROAD_ORDERS = ("morf", "lerf")
RANDOMIZATION_METHODS = CAM_METHODS + ("saliency",)
#: Randomization depth that re-initialises every weighted layer after the explained layer.
DOWNSTREAM = "downstream"
#: Display name of each map method, for tables, figures and the report.
METHOD_NAMES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "scorecam": "Score-CAM", "layercam": "LayerCAM",
                "hirescam": "HiResCAM", "saliency": "Saliency", "shap": "SHAP"}
_THRESHOLD = 0.5  # target="predicted": PNEUMONIA when P(PNEUMONIA) >= this


def _choice(owner, name, value, allowed):
    return check_param(owner, name, value, Options(allowed))


def _positive_int(owner, name, value, minimum=1):
    return int(check_param(owner, name, value, Interval("int", minimum, None)))


def _check_model(model, owner):
    """Check the model contract and a flat functional graph; return the output layer's name.

    Beyond :func:`pneumoxai.models.check_classifier`, the explainers need the sigmoid in
    the output layer (to explain its logit) and no nested models (tf-keras-vis reads
    ``output_names`` and feature layers of the outer graph). Inside a
    :func:`shared_models` block each model is checked once.
    """
    entry = _shared_entry(model)
    if entry is not None and "output_name" in entry:
        return entry["output_name"]
    output_name = _check_explainable(model, owner)
    if entry is not None:
        entry["output_name"] = output_name
    return output_name


def _check_explainable(model, owner):
    check_classifier(model, owner)
    hint = "wrap it with pneumoxai.models.adapt(model, preprocess=...) first"
    nested = [layer.name for layer in model.layers if isinstance(layer, keras.Model)]
    if isinstance(model, keras.Sequential) or nested:
        what = "is a Sequential model" if isinstance(model, keras.Sequential) else f"nests the model(s) {nested}"
        raise ModelContractError(f"{owner}: model {model.name!r} {what}; explanations need a flat functional "
                                 f"model: {hint}.")
    output_layer = model.outputs[0]._keras_history.operation
    activation = getattr(output_layer, "activation", None)
    if activation is None or keras.activations.serialize(activation) != "sigmoid":
        raise ModelContractError(
            f"{owner}: the output layer {output_layer.name!r} must carry a sigmoid activation (a Dense layer) so its "
            f"pre-sigmoid logit can be explained; {hint}.")
    return output_layer.name


def _predict_proba(model, x, batch_size):
    """P(PNEUMONIA), shape (n,)."""
    return model.predict(x, batch_size=batch_size, verbose=0)[:, 0].astype(np.float64)


def _target_is_pneumonia(owner, target, model, x, batch_size):
    """Resolve ``target`` to a bool (n,) array: True explains PNEUMONIA, False NORMAL."""
    n = len(x)
    if isinstance(target, str):
        _choice(owner, "target", target, TARGETS)
        if target == "predicted":
            return _predict_proba(model, x, batch_size) >= _THRESHOLD
        return np.full(n, target == "pneumonia")
    arr = np.asarray(target)
    if arr.shape != (n,) or not (arr.dtype == bool or np.isin(arr, (0, 1)).all()):
        raise ConfigError(
            f"The 'target' parameter of {owner} must be one of {TARGETS} or a length-{n} array of "
            f"booleans/0-1 (True = PNEUMONIA); got an array of shape {arr.shape}."
        )
    return arr.astype(bool)


@contextlib.contextmanager
def _quiet_keras_inputs():
    """Silence Keras 3's warning when a library passes ``[x]`` to a single-input model."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="The structure of `inputs` doesn't match", category=UserWarning
        )
        yield


def _minmax(maps):
    """Scale each map to [0, 1]; constant maps become 0."""
    flat = maps.reshape(len(maps), -1)
    lo, span = flat.min(axis=1), np.ptp(flat, axis=1)
    scaled = (flat - lo[:, None]) / np.where(span > 0, span, 1)[:, None]
    return scaled.reshape(maps.shape).astype(np.float32)


#: Inside a :func:`shared_models` block: ``id(model) -> {"model", "output_name", "logit"}``; None outside one.
_SHARED_MODELS = None


@contextlib.contextmanager
def shared_models():
    """Within the block each model is checked once and all its explainers share one logit copy.

    Cloning a ResNet50 takes seconds and checking it walks its graph, and a layer choice
    or an ensemble's gallery builds an explainer per (method, layers) pair of each
    model. The models are held by the block, so their ids stay theirs; nested blocks
    share the outer one's copies. Do not change a model's layers inside the block.

    Examples
    --------
    >>> import keras, numpy as np
    >>> inputs = keras.Input((8, 8, 3), name="image")
    >>> x = keras.layers.Conv2D(4, 3, activation="relu", name="conv_last")(inputs)
    >>> out = keras.layers.Dense(1, activation="sigmoid", name="prediction")(
    ...     keras.layers.GlobalAveragePooling2D()(x))
    >>> from pneumoxai.explain import gradcam
    >>> with shared_models():  # one logit copy serves both methods
    ...     maps = [gradcam(keras.Model(inputs, out), np.zeros((1, 8, 8, 3)), method=m)
    ...             for m in ("gradcam", "layercam")]
    >>> maps[0].shape
    (1, 8, 8)
    """
    global _SHARED_MODELS
    outermost = _SHARED_MODELS is None
    if outermost:
        _SHARED_MODELS = {}
    try:
        yield
    finally:
        if outermost:
            _SHARED_MODELS = None


def _shared_entry(model):
    """The block's record of ``model`` (created on first use), or None outside a :func:`shared_models` block."""
    if _SHARED_MODELS is None:
        return None
    return _SHARED_MODELS.setdefault(id(model), {"model": model})


def _logit_model(model, output_name):
    """A copy of ``model`` whose output is the pre-sigmoid logit (the original is untouched)."""
    entry = _shared_entry(model)
    if entry is not None and "logit" in entry:
        return entry["logit"]
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    clone.get_layer(output_name).activation = keras.activations.linear
    if entry is not None:
        entry["logit"] = clone
    return clone


class MapExplainer:
    """Base class: validates the model once, then explains image batches.

    Subclasses implement ``_explain_batch(x, is_pneumonia) -> (b, H, W)``.

    Parameters
    ----------
    model : keras.Model
        A member following the module's model contract.
    batch_size : int, default=16
        Images per network call (methods that multiply inputs, SmoothGrad and
        Score-CAM, explain fewer images per call so their network batches stay bounded).

    Attributes
    ----------
    signed : bool
        False for maps in [0, 1]; True for signed attributions (SHAP), positive
        pushing toward the explained class.
    """

    signed = False

    def __init__(self, model, *, batch_size=16):
        self._output_name = _check_model(model, type(self).__name__)
        self.model = model
        self.batch_size = _positive_int(type(self).__name__, "batch_size", batch_size)

    def __call__(self, images, *, target="pneumonia"):
        """Explain ``images``.

        Parameters
        ----------
        images : array-like, shape (n, H, W, 3)
            Float images in [0, 1] at the model's input size.
        target : {"pneumonia", "normal", "predicted"} or array-like of bool, shape (n,)
            Class to explain per image; "predicted" uses P(PNEUMONIA) >= 0.5, an array
            gives it per image (True = PNEUMONIA).

        Returns
        -------
        ndarray of float32, shape (n, H, W)
            One map per image at input resolution; in [0, 1] unless ``signed``.
        """
        x = check_images(images, model=self.model, owner=type(self).__name__)
        is_pneumonia = _target_is_pneumonia(type(self).__name__, target, self.model, x, self.batch_size)
        out = np.empty(x.shape[:3], np.float32)
        step = self._images_per_call(x.shape)
        for start in range(0, len(x), step):
            batch = slice(start, start + step)
            out[batch] = self._explain_batch(x[batch], is_pneumonia[batch])
        return out

    def _images_per_call(self, shape):
        return self.batch_size

    def _explain_batch(self, x, is_pneumonia):
        raise NotImplementedError
