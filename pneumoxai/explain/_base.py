"""The explainers' shared ground: option values, checks, the logit model and :class:`MapExplainer`.

:class:`MapExplainer` checks the model once and the images on every call, resolves the
explained class, then explains the images in batches. Inside a :func:`shared_models`
block every model is checked once and every explainer of it shares one logit model.
"""

import contextlib
import warnings

import keras
import numpy as np

from ..errors import ConfigError, ModelContractError
from ..models import check_classifier
from ..models.contract import _CONSTANT_MIN_IMAGES, sigmoid_head
from ..validation import SEED, Interval, Options, check_images, check_param

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


def _seed(owner, seed):
    return int(check_param(owner, "seed", seed, SEED))


def _check_model(model, owner):
    """Check the model contract and a flat functional graph.

    Beyond :func:`pneumoxai.models.check_classifier` (which checks the sigmoid head on
    the graph), the explainers need no nested models (tf-keras-vis reads feature layers
    of the outer graph). Inside a :func:`shared_models` block each model is checked once.
    """
    entry = _shared_entry(model)
    if entry is not None and entry.get("checked"):
        return
    _check_explainable(model, owner)
    if entry is not None:
        entry["checked"] = True


def _check_explainable(model, owner):
    check_classifier(model, owner)
    nested = [layer.name for layer in model.layers if isinstance(layer, keras.Model)]
    if isinstance(model, keras.Sequential) or nested:
        what = "is a Sequential model" if isinstance(model, keras.Sequential) else f"nests the model(s) {nested}"
        raise ModelContractError(f"{owner}: model {model.name!r} {what}; explanations need a flat functional "
                                 "model: wrap it with pneumoxai.models.adapt(model, preprocess=...) first.")


def _predict_proba(model, x, batch_size):
    """P(PNEUMONIA), shape (n,)."""
    return model.predict(x, batch_size=batch_size, verbose=0)[:, 0].astype(np.float64)


def _checked_proba(owner, model, x, batch_size):
    """P(PNEUMONIA) of ``x``, shape (n,), with predict_members' warning when it is nearly constant.

    Nearly the same probability for every image is the sign of a model fed images scaled
    unlike its training images (one not brought to the contract by ``adapt``).
    """
    return check_classifier(model, owner, probabilities=_predict_proba(model, x, batch_size), warn_constant=True)


def _target_is_pneumonia(owner, target, model, x, batch_size, proba=None):
    """Resolve ``target`` to a bool (n,) array: True explains PNEUMONIA, False NORMAL.

    ``proba``: the model's P(PNEUMONIA) of ``x`` when already computed.
    """
    n = len(x)
    if isinstance(target, str):
        _choice(owner, "target", target, TARGETS)
        if target == "predicted":
            return (_predict_proba(model, x, batch_size) if proba is None else proba) >= _THRESHOLD
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


#: Inside a :func:`shared_models` block: ``id(model) -> {"model", "checked", "logit", "outputs_checked"}``;
#: None outside one.
_SHARED_MODELS = None


@contextlib.contextmanager
def shared_models():
    """Within the block each model is checked once and all its explainers share one logit model.

    Checking a ResNet50 walks its graph, and a layer choice or an ensemble's gallery
    builds an explainer per (method, layers) pair of each model. The models are held by
    the block, so their ids stay theirs; nested blocks share the outer one's records.
    Do not change a model's layers inside the block.

    Examples
    --------
    >>> import keras, numpy as np
    >>> inputs = keras.Input((8, 8, 3), name="image")
    >>> x = keras.layers.Conv2D(4, 3, activation="relu", name="conv_last")(inputs)
    >>> out = keras.layers.Dense(1, activation="sigmoid", name="prediction")(
    ...     keras.layers.GlobalAveragePooling2D()(x))
    >>> from pneumoxai.explain import gradcam
    >>> with shared_models():  # one logit model serves both methods
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


def shared_logit_model(model, owner):
    """A model of ``model``'s pre-sigmoid logit that shares its layers (none is re-created from its config).

    A ``Dense`` sigmoid head is replaced by a linear ``Dense`` holding a copy of its
    kernel and bias (the only new weights); a sigmoid ``Activation`` head is dropped.
    Every other layer, ``Lambda`` and custom layers included, is the model's own object,
    as in :func:`pneumoxai.models.adapt`: nothing is serialized, and later changes to the
    model's weights show in the logit model.

    Parameters
    ----------
    model : keras.Model
        A functional model whose output is a sigmoid (see :func:`pneumoxai.models.check_classifier`).
    owner : str
        The public function that asks, named in a refusal.

    Returns
    -------
    keras.Model
        Same input, output ``(None, 1)`` logit: ``sigmoid(logit_model(x)) == model(x)``.

    Examples
    --------
    >>> inputs = keras.Input((8, 8, 3))
    >>> x = keras.layers.Lambda(lambda t: t * 2.0 - 1.0)(inputs)
    >>> x = keras.layers.GlobalAveragePooling2D()(x)
    >>> model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))
    >>> images = np.random.default_rng(0).random((2, 8, 8, 3)).astype("float32")
    >>> logit = shared_logit_model(model, "f").predict(images, verbose=0)
    >>> bool(np.allclose(1 / (1 + np.exp(-logit)), model.predict(images, verbose=0), atol=1e-6))
    True
    """
    head, features = sigmoid_head(model, owner)
    if isinstance(head, keras.layers.Activation):
        return keras.Model(model.input, features, name=f"{model.name}_logit")
    linear = keras.layers.Dense(head.units, use_bias=head.use_bias, dtype=head.dtype_policy, name=f"{head.name}_logit")
    logit = linear(features)
    linear.set_weights(head.get_weights())
    return keras.Model(model.input, logit, name=f"{model.name}_logit")


def _logit_model(model, owner):
    """``model``'s :func:`shared_logit_model`; inside a :func:`shared_models` block, one per model."""
    entry = _shared_entry(model)
    if entry is not None and "logit" in entry:
        return entry["logit"]
    logit = shared_logit_model(model, owner)
    if entry is not None:
        entry["logit"] = logit
    return logit


class _GraphLayer(keras.layers.Layer):
    """A feature layer as tf-keras-vis should see it: ``output`` is the layer's tensor in the explained graph.

    tf-keras-vis reads ``layer.output``, which Keras answers with the layer's first call;
    a layer shared by two graphs (an adapted model's layers are the user's) would give
    the other graph's tensor, disconnected from the logit model.
    """

    def __init__(self, name, tensor):
        super().__init__(name=name)
        self._graph_output = tensor

    @property
    def output(self):
        return self._graph_output


def _graph_outputs(model):
    """``{layer name: output tensor}`` of the layers in ``model``'s own graph, walked back from its output."""
    found, pending = {}, list(model.outputs)
    while pending:
        tensor = pending.pop()
        layer, node_index, _ = tensor._keras_history
        if layer.name not in found:
            found[layer.name] = tensor
            pending.extend(layer._inbound_nodes[node_index].input_tensors)
    return found


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
        _check_model(model, type(self).__name__)
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

        Warns
        -----
        ConstantPredictionsWarning
            As :func:`pneumoxai.predict.predict_members`: nearly the same probability for
            8 or more images, the sign of a model not adapted to [0, 1] images.
        """
        x, is_pneumonia = self._checked(images, target)
        out = np.empty(x.shape[:3], np.float32)
        for batch in self._batches(x):
            out[batch] = self._explain_batch(x[batch], is_pneumonia[batch])
        return out

    def _checked(self, images, target):
        """The checked images and the explained class per image (True = PNEUMONIA)."""
        owner = type(self).__name__
        x = check_images(images, model=self.model, owner=owner)
        return x, _target_is_pneumonia(owner, target, self.model, x, self.batch_size, proba=self._proba_once(owner, x))

    def _batches(self, x):
        """Slices of ``x`` explained per call."""
        step = self._images_per_call(x.shape)
        return [slice(start, start + step) for start in range(0, len(x), step)]

    def _proba_once(self, owner, x):
        """The model's checked P(PNEUMONIA) of ``x`` (warning when nearly constant), or None when not needed.

        Computed when there are enough images to judge, once per model in a
        :func:`shared_models` block.
        """
        entry = _shared_entry(self.model)
        if len(x) < _CONSTANT_MIN_IMAGES or (entry is not None and entry.get("outputs_checked")):
            return None
        if entry is not None:
            entry["outputs_checked"] = True
        return _checked_proba(owner, self.model, x, self.batch_size)

    def _images_per_call(self, shape):
        return self.batch_size

    def _explain_batch(self, x, is_pneumonia):
        raise NotImplementedError
