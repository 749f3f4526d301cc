"""Visual explanations for pneumoxai members, and checks that the explanations mean something.

Maps
    Grad-CAM, Grad-CAM++, LayerCAM, HiResCAM, (Faster) Score-CAM and vanilla/SmoothGrad
    saliency wrap ``tf-keras-vis``; expected-gradients and partition SHAP wrap ``shap``.
    Each method is one small class on :class:`MapExplainer`, which validates the model
    once and the images on every call, then explains them in batches (never one image
    per call). Every CAM takes ``layers=``: per-layer maps, upsampled and min-max
    scaled, fused by element-wise maximum (LayerCAM's fusion), so a conv3 map gives the
    fused map 1/8 of the input side (:func:`fusion_layers` names the layers).
Where the model looks
    :func:`zone_attention` splits each map's positive mass over the six lung zones of
    :mod:`pneumoxai.lungs` and the area outside the lungs.
Are the maps faithful?
    :func:`deletion_auc` / :func:`insertion_auc` (Petsiuk, Das & Saenko, "RISE:
    Randomized Input Sampling for Explanation of Black-box Models", BMVC 2018) against
    :func:`random_map_baseline`; ROAD (:func:`road`, Rong et al., "A Consistent and
    Efficient Evaluation Strategy for Attribution Methods", ICML 2022), which fills the
    removed pixels from their neighbours instead of black; the model-parameter
    randomization test :func:`randomization_check` (Adebayo et al., "Sanity Checks for
    Saliency Maps", NeurIPS 2018); all of them per method and layer in :func:`compare_layers`.
Per failure slice
    :func:`slice_explanations`: mean map, zone attention against correct calls of the
    same class and faithfulness of each significant slice of
    :func:`pneumoxai.slices.find_failure_slices`.

Model contract: one input ``(H, W, 3)`` in [0, 1] and one sigmoid output ``(n, 1)`` =
P(PNEUMONIA), its activation carried by the output layer (``"prediction"``), and a flat
functional graph so the feature layer (``"conv5_block3_out"`` for ResNet50) is
reachable. :func:`pneumoxai.models.adapt` brings other Keras classifiers (Sequential,
nested backbones, softmax or logit heads, other input scalings) to it.

The single-sigmoid output needs care: tf-keras-vis' Score-CAM applies a softmax to the
model output, which is constantly 1 for one unit and makes every channel weight equal.
:class:`ScoreCAM` therefore rewrites the output as the two logits ``[-z/2, z/2]``
(``z`` = pre-sigmoid logit), whose softmax is exactly ``[1 - p, p]``. The gradient
methods explain ``+z`` (PNEUMONIA) or ``-z`` (NORMAL) via a copy of the model with a
linear output layer (:func:`_logit_model`) and ``BinaryScore``. CAMs are upsampled here,
not by tf-keras-vis (see :func:`_upsample`).

shap 0.51 + Keras 3 / TF 2.21: ``shap.GradientExplainer`` runs, but it re-seeds NumPy's
*global* RNG (``np.random.seed(rseed)`` inside ``shap_values``) and the partition
explainer draws tie-breakers from it; both are run under a saved-and-restored global
RNG state (:func:`_isolated_numpy_rng`) so callers' random streams are untouched and the
maps are reproducible from ``seed``. Both libraries pass a one-element list to
single-input Keras 3 models, which only triggers a harmless input-structure warning
that is silenced locally. ``shap.DeepExplainer`` is not used: it fails on ResNet ops.
"""

import contextlib
import io
import time
import warnings

import keras
import numpy as np
import pandas as pd
import scipy.ndimage
import scipy.sparse
import scipy.sparse.linalg
import scipy.stats

with warnings.catch_warnings():
    # tf-keras-vis 0.8.7 imports zoom from the deprecated scipy.ndimage.interpolation.
    warnings.simplefilter("ignore", DeprecationWarning)
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.layercam import Layercam
    from tf_keras_vis.saliency import Saliency
    from tf_keras_vis.scorecam import Scorecam
    from tf_keras_vis.utils.model_modifiers import ModelModifier
    from tf_keras_vis.utils.scores import BinaryScore, CategoricalScore

from .lungs import ZONE_COLUMNS, ZONE_NAMES, lung_mask, zones
from .errors import ConfigError, DataError, ModelContractError, param_error
from .models import check_classifier
from .validation import Interval, Options, check_images, check_param

__all__ = [
    "CAM_METHODS",
    "SHAP_METHODS",
    "TARGETS",
    "FAITHFULNESS_METRICS",
    "RANDOMIZATION_METHODS",
    "DOWNSTREAM",
    "METHOD_NAMES",
    "ZONE_COLUMNS",
    "ZONE_NAMES",
    "MapExplainer",
    "GradCAM",
    "GradCAMPlusPlus",
    "LayerCAM",
    "HiResCAM",
    "ScoreCAM",
    "SaliencyMap",
    "GradientSHAP",
    "PartitionSHAP",
    "ROAD_ORDERS",
    "RESNET50_FUSION_LAYERS",
    "fusion_layers",
    "layer_candidates",
    "choose_map_method",
    "MAX_RANDOMIZATION_SPEARMAN",
    "gradcam",
    "ensemble_gradcam",
    "resize_maps",
    "feature_map_size",
    "saliency",
    "shap_maps",
    "background_sample",
    "lung_mask",
    "zones",
    "zone_attention",
    "deletion_auc",
    "insertion_auc",
    "random_map_baseline",
    "road_impute",
    "road",
    "randomization_check",
    "compare_layers",
    "slice_explanations",
]

# Allowed option values, declared once.
CAM_METHODS = ("gradcam", "gradcam++", "layercam", "hirescam", "scorecam")
SHAP_METHODS = ("gradient", "partition")
TARGETS = ("pneumonia", "normal", "predicted")
FAITHFULNESS_METRICS = ("deletion", "insertion")
ROAD_ORDERS = ("morf", "lerf")
#: The stage outputs :func:`fusion_layers` picks for a ResNet50 member (1/8, 1/16, 1/32 of the input side).
RESNET50_FUSION_LAYERS = ("conv3_block4_out", "conv4_block6_out", "conv5_block3_out")
RANDOMIZATION_METHODS = CAM_METHODS + ("saliency",)
#: Randomization depth that re-initialises every weighted layer after the explained layer.
DOWNSTREAM = "downstream"
#: Display name of each map method, for tables, figures and the report.
METHOD_NAMES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "scorecam": "Score-CAM", "layercam": "LayerCAM",
                "hirescam": "HiResCAM", "saliency": "Saliency", "shap": "SHAP"}

_THRESHOLD = 0.5  # target="predicted": PNEUMONIA when P(PNEUMONIA) >= this
_SCORECAM_MAX_BYTES = 2**30  # cap on the masked input copies Score-CAM materialises
_PERTURBATION_MAX_BYTES = 2**28  # cap on the perturbed copies of deletion/insertion


# --------------------------------------------------------------------------- checks


def _choice(owner, name, value, allowed):
    return check_param(owner, name, value, Options(allowed))


def _positive_int(owner, name, value, minimum=1):
    return int(check_param(owner, name, value, Interval("int", minimum, None)))


def _check_model(model, owner):
    """Check the model contract and a flat functional graph; return the output layer's name.

    Beyond :func:`pneumoxai.models.check_classifier`, the explainers need the sigmoid in
    the output layer (to explain its logit) and no nested models (tf-keras-vis reads
    ``output_names`` and feature layers of the outer graph).
    """
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


def _check_images(images, model=None, *, name="images", owner="explain"):
    """Return ``images`` as float32 (n, H, W, 3) in [0, 1], or raise DataError."""
    size = None if model is None else tuple(model.inputs[0].shape[1:3])
    return check_images(images, owner=owner, name=name, size=size)


def _check_maps(maps, images):
    arr = np.asarray(maps, dtype=np.float32)
    if arr.shape != images.shape[:3]:
        raise DataError(f"maps must have shape {images.shape[:3]} (n, H, W); got {arr.shape}")
    if not np.isfinite(arr).all():
        raise DataError("maps contain NaN or infinite values")
    return arr


def _feature_layer(model, layer):
    """Name of the explained feature layer: ``layer``, or the last 4-D layer of ``model``."""
    four_d = [lyr.name for lyr in model.layers
              if not isinstance(lyr, keras.layers.InputLayer) and len(lyr.output.shape) == 4]
    if layer is None:
        if not four_d:
            raise ConfigError("model has no layer with a 4-D (n, h, w, c) output to explain")
        return four_d[-1]
    if not isinstance(layer, str) or layer not in {lyr.name for lyr in model.layers}:
        raise ConfigError(
            f"layer {layer!r} does not exist in model {model.name!r} (nested sub-models are "
            f"not searched); its last 4-D layers are {four_d[-3:]}"
        )
    if layer not in four_d:
        raise ConfigError(f"layer {layer!r} must have a 4-D (n, h, w, c) output to be explained")
    return layer


def _feature_layers(owner, model, layer, layers):
    """The explained layers as a tuple: ``(layer,)`` or ``tuple(layers)``, each checked."""
    if layers is None:
        return (_feature_layer(model, layer),)
    if layer is not None:
        raise ConfigError(f"{owner}: pass either layer= or layers=, not both; got layer={layer!r}, layers={layers!r}")
    if isinstance(layers, str) or not hasattr(layers, "__len__") or len(layers) == 0:
        raise param_error(owner, "layers", "a non-empty list of layer names", layers)
    return tuple(_feature_layer(model, name) for name in layers)


def fusion_layers(model, *, n_layers=3):
    """Default layers of a multi-layer CAM: the last layer of each of the ``n_layers`` coarsest resolutions.

    Layers with a 4-D output, from the first layer with weights on (a preprocessing layer holds
    the input, not features), are grouped by spatial size in graph order; the last layer
    of a group is the output of a network stage. For a ResNet50 member this gives
    :data:`RESNET50_FUSION_LAYERS` (conv3, conv4 and conv5 stage outputs: 8x8, 4x4 and
    2x2 at 64 px; 28x28, 14x14 and 7x7 at 224 px), so the fused map has 1/8 of the
    input side. The conv3 and conv4 stage outputs feed only stride-2 1x1 convolutions,
    so their gradient, and a gradient-weighted map of them, is zero on every odd row and
    column: the checkerboard is what the network uses, and it measured more faithful
    (ROAD) than the dense first ReLU of each stage's last block
    (``figures/layer_choice/resnet50_member.csv``).

    Parameters
    ----------
    model : keras.Model
    n_layers : int, default=3

    Returns
    -------
    tuple of str
        Finest first; fewer when the model has fewer resolutions.

    Examples
    --------
    >>> import keras
    >>> inputs = keras.Input((16, 16, 3), name="image")
    >>> h = keras.layers.Conv2D(4, 3, padding="same", name="conv_a")(inputs)
    >>> h = keras.layers.MaxPooling2D(name="pool_a")(h)
    >>> h = keras.layers.Conv2D(4, 3, padding="same", name="conv_b")(h)
    >>> h = keras.layers.GlobalAveragePooling2D(name="head_pool")(h)
    >>> fusion_layers(keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="prediction")(h)))
    ('conv_a', 'conv_b')
    """
    n_layers = _positive_int("fusion_layers", "n_layers", n_layers)
    last_of_size, learned = {}, False
    for lyr in model.layers:
        # Layers before the first one with weights (rescaling, preprocessing) hold the input, not features.
        learned = learned or bool(lyr.weights)
        if learned and not isinstance(lyr, keras.layers.InputLayer) and len(lyr.output.shape) == 4:
            size = tuple(lyr.output.shape[1:3])
            last_of_size.pop(size, None)  # re-inserted last: dict order = order of each size's last layer
            last_of_size[size] = lyr.name
    if not last_of_size:
        raise ConfigError("model has no layer with a 4-D (n, h, w, c) output to explain")
    return tuple(list(last_of_size.values())[-n_layers:])


def layer_candidates(model, *, n_layers=3):
    """Layer sets a layer choice compares: each of :func:`fusion_layers` alone, last first, then all fused.

    A shallower stage alone can be the most faithful map: a small cue (a corner marker, a
    focal opacity) is resolved there, while the last stage's coarse cells, and a maximum
    fused over them, spread it into its neighbourhood.

    Parameters
    ----------
    model : keras.Model
    n_layers : int, default=3

    Returns
    -------
    list of tuple of str
        For a ResNet50 member: conv5, conv4 and conv3 stage outputs alone, then the three fused.

    Examples
    --------
    >>> import keras
    >>> inputs = keras.Input((16, 16, 3), name="image")
    >>> h = keras.layers.Conv2D(4, 3, padding="same", name="conv_a")(inputs)
    >>> h = keras.layers.MaxPooling2D(name="pool_a")(h)
    >>> h = keras.layers.Conv2D(4, 3, padding="same", name="conv_b")(h)
    >>> h = keras.layers.GlobalAveragePooling2D(name="head_pool")(h)
    >>> layer_candidates(keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="prediction")(h)))
    [('conv_b',), ('conv_a',), ('conv_a', 'conv_b')]
    """
    stages = fusion_layers(model, n_layers=n_layers)
    return [(name,) for name in reversed(stages)] + ([stages] if len(stages) > 1 else [])


def feature_map_size(model, layer=None):
    """``(h, w)`` of the feature layer a class-activation map of ``model`` is computed on.

    Parameters
    ----------
    model : keras.Model
    layer : str, default=None
        As in :func:`gradcam`; default the last layer with a 4-D output.

    Returns
    -------
    tuple of int

    Examples
    --------
    >>> import keras
    >>> inputs = keras.Input((8, 8, 3), name="image")
    >>> x = keras.layers.Conv2D(4, 3, strides=2, name="conv_last")(inputs)
    >>> out = keras.layers.Dense(1, activation="sigmoid", name="prediction")(keras.layers.Flatten()(x))
    >>> feature_map_size(keras.Model(inputs, out))
    (3, 3)
    """
    shape = model.get_layer(_feature_layer(model, layer)).output.shape
    return int(shape[1]), int(shape[2])


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


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _quiet_keras_inputs():
    """Silence Keras 3's warning when a library passes ``[x]`` to a single-input model."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="The structure of `inputs` doesn't match", category=UserWarning
        )
        yield


@contextlib.contextmanager
def _isolated_numpy_rng(seed):
    """Seed NumPy's global RNG for a third-party call, then restore the caller's state."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _import_shap():
    """Import shap on first use (it takes seconds), without its import-time deprecation noise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        import shap
    return shap


def _minmax(maps):
    """Scale each map to [0, 1]; constant maps become 0."""
    flat = maps.reshape(len(maps), -1)
    lo, span = flat.min(axis=1), np.ptp(flat, axis=1)
    scaled = (flat - lo[:, None]) / np.where(span > 0, span, 1)[:, None]
    return scaled.reshape(maps.shape).astype(np.float32)


def _upsample(cams, size):
    """Bilinear resize of low-resolution CAMs to ``size`` with half-pixel centres, then [0, 1].

    tf-keras-vis' own expansion (``scipy.ndimage.zoom``) aligns the corner cells' centres
    with the corner pixels, which stretches the map outward by half a feature cell
    (up to 16 px at the border of a 224 px ResNet50 input); half-pixel centres put each
    cell's value at the centre of the pixels it covers.
    """
    resized = keras.ops.image.resize(
        np.asarray(cams, np.float32)[..., None], size, interpolation="bilinear", antialias=False
    )
    return _minmax(keras.ops.convert_to_numpy(resized)[..., 0])


def _fuse(maps):
    """Element-wise maximum of per-layer [0, 1] maps, ties broken toward agreement.

    A maximum of min-max scaled maps equals 1 at every layer's own peak; adding
    1e-3 x their mean makes the peak the pixel where the layers agree most (and
    leaves a single map unchanged after rescaling).
    """
    if len(maps) == 1:
        return maps[0]
    stacked = np.stack(maps)
    return _minmax(stacked.max(axis=0) + 1e-3 * stacked.mean(axis=0))


#: Inside a :func:`_sharing_logit_models` block: ``id(model) -> (model, logit copy)``; None outside one.
_SHARED_LOGIT_MODELS = None


@contextlib.contextmanager
def _sharing_logit_models():
    """Within the block every explainer of the same model shares one logit copy.

    Cloning a ResNet50 takes seconds, and a layer choice or an ensemble's gallery builds
    an explainer per (method, layers) pair of each model. The models are held by the
    block, so their ids stay theirs; nested blocks share the outer one's copies.
    """
    global _SHARED_LOGIT_MODELS
    outermost = _SHARED_LOGIT_MODELS is None
    if outermost:
        _SHARED_LOGIT_MODELS = {}
    try:
        yield
    finally:
        if outermost:
            _SHARED_LOGIT_MODELS = None


def _logit_model(model, output_name):
    """A copy of ``model`` whose output is the pre-sigmoid logit (the original is untouched)."""
    shared = _SHARED_LOGIT_MODELS
    if shared is not None and id(model) in shared:
        return shared[id(model)][1]
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    clone.get_layer(output_name).activation = keras.activations.linear
    if shared is not None:
        shared[id(model)] = (model, clone)
    return clone


class _TwoClassLogits(ModelModifier):
    """Turn a (linearised) single logit ``z`` into ``[-z/2, z/2]``: softmax gives ``[1-p, p]``."""

    def __call__(self, model):
        logit = model.outputs[0]
        pair = keras.layers.Concatenate(name="normal_pneumonia_logits")(
            [keras.layers.Rescaling(-0.5)(logit), keras.layers.Rescaling(0.5)(logit)]
        )
        return keras.Model(model.inputs, pair)


# --------------------------------------------------------------------------- explainers


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
        x = _check_images(images, self.model, owner=type(self).__name__)
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


class GradCAM(MapExplainer):
    """Grad-CAM (Selvaraju et al., ICCV 2017) of the logit (PNEUMONIA) or its negation.

    Parameters
    ----------
    model : keras.Model
    layer : str, default=None
        Feature layer; default the last layer with a 4-D output (``conv5_block3_out``
        for ResNet50 members). Used as given: tf-keras-vis' search for a ``Conv`` layer
        is disabled because it would skip ResNet's post-residual activation.
    layers : sequence of str, default=None
        Instead of ``layer``: several feature layers (e.g. :func:`fusion_layers`).
        Each layer's map is upsampled to the input and min-max scaled; the maps are
        fused by element-wise maximum (Jiang et al., LayerCAM, IEEE TIP 2021).
    batch_size : int, default=16

    Attributes
    ----------
    layers : tuple of str
        The explained layers.
    layer : str
        The explained layer, or the last of ``layers``.
    """

    _visualization = Gradcam
    _call_options = {}

    def __init__(self, model, *, layer=None, layers=None, batch_size=16):
        super().__init__(model, batch_size=batch_size)
        self.layers = _feature_layers(type(self).__name__, model, layer, layers)
        self.layer = self.layers[-1]
        self._vis = self._make_visualization(model)

    def _make_visualization(self, model):
        return self._visualization(_logit_model(model, self._output_name), clone=False)

    def _explain_batch(self, x, is_pneumonia):
        return _fuse([_upsample(self._layer_cams(x, is_pneumonia, layer), x.shape[1:3]) for layer in self.layers])

    def _layer_cams(self, x, is_pneumonia, layer):
        """Low-resolution CAMs (b, h, w) of one layer."""
        with _quiet_keras_inputs():
            return self._vis(
                BinaryScore(is_pneumonia.tolist()), x,
                penultimate_layer=layer, seek_penultimate_conv_layer=False, expand_cam=False,
                **self._call_options,
            )


class GradCAMPlusPlus(GradCAM):
    """Grad-CAM++ (Chattopadhyay et al., WACV 2018); same options as :class:`GradCAM`."""

    _visualization = GradcamPlusPlus


class LayerCAM(GradCAM):
    """LayerCAM (Jiang et al., IEEE TIP 2021): ``ReLU(sum_c ReLU(grad_c) * A_c)`` per position.

    Positive gradients weight each position separately instead of one weight per
    channel, so shallow layers give usable maps. Same options as :class:`GradCAM`.
    """

    _visualization = Layercam


class HiResCAM(GradCAM):
    """HiResCAM (Draelos & Carin, 2020): ``ReLU(sum_c grad_c * A_c)`` per position.

    The element-wise product with signed gradients; for a global-average-pooled head it
    equals the exact contribution of each position to the logit (CAM). Same options as
    :class:`GradCAM`.
    """

    _visualization = Layercam
    _call_options = {"gradient_modifier": None}


class ScoreCAM(GradCAM):
    """Faster Score-CAM (Wang et al., CVPR-W 2020): weights the ``max_n`` most varied channels.

    Channel weights are the target-class probability of the masked input (``p`` or
    ``1 - p``), obtained through the two-logit rewrite described in the module docstring.

    Parameters
    ----------
    model : keras.Model
    layer, layers : default=None
        As in :class:`GradCAM`.
    max_n : int, default=32
        Channels kept per image (by spatial std); capped at the layer's channel count.
        tf-keras-vis takes the union over a batch, so a batch may weight more channels.
    batch_size : int, default=16
        Masked inputs per prediction call; images per call are reduced so that their
        masked copies stay under 1 GiB.
    """

    def __init__(self, model, *, layer=None, layers=None, max_n=32, batch_size=16):
        super().__init__(model, layer=layer, layers=layers, batch_size=batch_size)
        self.channels = max(int(model.get_layer(name).output.shape[-1]) for name in self.layers)
        self.max_n = min(_positive_int("ScoreCAM", "max_n", max_n), self.channels)

    def _make_visualization(self, model):
        return Scorecam(_logit_model(model, self._output_name), model_modifier=_TwoClassLogits(), clone=False)

    def _images_per_call(self, shape):
        image_bytes = 4 * int(np.prod(shape[1:]))
        n = self.batch_size
        while n > 1 and n * min(self.channels, n * self.max_n) * image_bytes > _SCORECAM_MAX_BYTES:
            n -= 1
        return n

    def _layer_cams(self, x, is_pneumonia, layer):
        # Scorecam calls model.predict() without verbose=0; keep its progress bar quiet.
        with _quiet_keras_inputs(), contextlib.redirect_stdout(io.StringIO()):
            return self._vis(
                CategoricalScore(is_pneumonia.astype(int).tolist()), x,
                penultimate_layer=layer, seek_penultimate_conv_layer=False,
                max_N=self.max_n, batch_size=self.batch_size, expand_cam=False,
            )


class SaliencyMap(MapExplainer):
    """Vanilla gradient saliency (Simonyan et al., 2014) or SmoothGrad (Smilkov et al., 2017).

    ``|d score / d pixel|``, max over channels, scaled to [0, 1] per image.

    Parameters
    ----------
    model : keras.Model
    smooth_samples : int, default=0
        0 for vanilla gradients; otherwise noisy copies averaged (SmoothGrad).
    noise : float, default=0.2
        SmoothGrad noise std as a fraction of each image's intensity range.
    seed : int, default=0
        Seeds the SmoothGrad noise (drawn here, not from NumPy's global RNG as
        tf-keras-vis would); one stream per explainer.
    batch_size : int, default=16
        Network inputs per call: SmoothGrad explains ``batch_size // smooth_samples``
        images (at least one) per call, all their noisy copies at once.
    """

    def __init__(self, model, *, smooth_samples=0, noise=0.2, seed=0, batch_size=16):
        super().__init__(model, batch_size=batch_size)
        self.smooth_samples = _positive_int("SaliencyMap", "smooth_samples", smooth_samples, minimum=0)
        if not np.isfinite(noise) or noise <= 0:
            raise param_error("SaliencyMap", "noise", "a positive number", noise)
        self.noise = float(noise)
        self._rng = np.random.default_rng(seed)
        self._vis = Saliency(_logit_model(model, self._output_name), clone=False)

    def _images_per_call(self, shape):
        return max(1, self.batch_size // max(1, self.smooth_samples))

    def _explain_batch(self, x, is_pneumonia):
        if self.smooth_samples == 0:
            with _quiet_keras_inputs():
                grads = self._vis(BinaryScore(is_pneumonia.tolist()), x, normalize_map=False)
            return _minmax(np.asarray(grads))
        k = self.smooth_samples
        sigma = self.noise * np.ptp(x.reshape(len(x), -1), axis=1)
        noisy = x + self._rng.standard_normal((k,) + x.shape, np.float32) * sigma[:, None, None, None]
        with _quiet_keras_inputs():
            grads = self._vis(
                BinaryScore(np.tile(is_pneumonia, k).tolist()), noisy.reshape((-1,) + x.shape[1:]),
                keepdims=True, normalize_map=False,
            )
        return _minmax(np.asarray(grads).reshape((k,) + x.shape).mean(axis=0).max(axis=-1))


class GradientSHAP(MapExplainer):
    """Expected-gradients SHAP (``shap.GradientExplainer``) of the logit, summed over channels.

    Values are in log-odds units; for ``target="pneumonia"`` they add up (in
    expectation) to ``logit(x) - mean logit(background)``.

    Parameters
    ----------
    model : keras.Model
    background : array-like, shape (m, H, W, 3)
        Reference images, e.g. from :func:`background_sample`.
    n_samples : int, default=32
        Background/interpolation samples per image.
    seed : int, default=0
    batch_size : int, default=16
        Gradient evaluations per call (shap evaluates one image's samples per call).
    """

    signed = True

    def __init__(self, model, background, *, n_samples=32, seed=0, batch_size=16):
        super().__init__(model, batch_size=batch_size)
        shap = _import_shap()
        background = _check_images(background, model, name="background", owner="GradientSHAP")
        self.n_samples = _positive_int("GradientSHAP", "n_samples", n_samples)
        self.seed = int(seed)
        self._explainer = shap.GradientExplainer(
            _logit_model(model, self._output_name), background, batch_size=self.batch_size
        )

    def _explain_batch(self, x, is_pneumonia):
        with _quiet_keras_inputs(), _isolated_numpy_rng(self.seed):
            values = self._explainer.shap_values(x, nsamples=self.n_samples, rseed=self.seed)
        values = np.asarray(values, np.float32).reshape(x.shape).sum(axis=-1)
        return values * np.where(is_pneumonia, 1, -1)[:, None, None]


class PartitionSHAP(MapExplainer):
    """Partition SHAP (``shap.Explainer`` + ``shap.maskers.Image`` blur masker) of the logit.

    Masked regions are replaced by a blurred copy of the image; values in log-odds
    units, summed over channels.

    Parameters
    ----------
    model : keras.Model
    max_evals : int, default=256
        Masked evaluations per image.
    blur : int, default=None
        Blur kernel size in pixels; default a quarter of the image height (a
        smaller blur leaves small bright findings visible when "masked").
    seed : int, default=0
        Seeds shap's tie-breaking draws.
    batch_size : int, default=16
        Masked images per network call.
    """

    signed = True

    def __init__(self, model, *, max_evals=256, blur=None, seed=0, batch_size=16):
        super().__init__(model, batch_size=batch_size)
        self.max_evals = _positive_int("PartitionSHAP", "max_evals", max_evals, minimum=8)
        self.blur = None if blur is None else _positive_int("PartitionSHAP", "blur", blur)
        self.seed = int(seed)
        self._logit = _logit_model(model, self._output_name)

    def _logit_of(self, masked):
        # A direct call: model.predict()'s per-call setup dominates shap's many small batches.
        return keras.ops.convert_to_numpy(self._logit(np.asarray(masked, np.float32), training=False))

    def _explain_batch(self, x, is_pneumonia):
        shap = _import_shap()
        kernel = self.blur or max(1, x.shape[1] // 4)
        masker = shap.maskers.Image(f"blur({kernel},{kernel})", x.shape[1:])
        explainer = shap.Explainer(self._logit_of, masker, algorithm="partition", output_names=["pneumonia"])
        with _isolated_numpy_rng(self.seed):
            values = explainer(x, max_evals=self.max_evals, batch_size=self.batch_size, silent=True).values
        values = np.asarray(values, np.float32).reshape(x.shape).sum(axis=-1)
        return values * np.where(is_pneumonia, 1, -1)[:, None, None]


_CAM_CLASSES = dict(zip(CAM_METHODS, (GradCAM, GradCAMPlusPlus, LayerCAM, HiResCAM, ScoreCAM)))


def _cam_explainer(owner, model, method, layer, batch_size, max_n, layers=None):
    cls = _CAM_CLASSES[_choice(owner, "method", method, CAM_METHODS)]
    options = {"max_n": max_n} if cls is ScoreCAM else {}
    return cls(model, layer=layer, layers=layers, batch_size=batch_size, **options)


# --------------------------------------------------------------------------- functions


def gradcam(model, images, *, method="gradcam", layer=None, layers=None, target="pneumonia", batch_size=16,
            max_n=32):
    """Class-activation maps of one model.

    Parameters
    ----------
    model : keras.Model
        Single-input, single-sigmoid-output member (see the module docstring).
    images : array-like, shape (n, H, W, 3)
        Float images in [0, 1].
    method : {"gradcam", "gradcam++", "layercam", "hirescam", "scorecam"}, default="gradcam"
        ``"scorecam"`` is Faster Score-CAM (``max_n`` channels).
    layer : str, default=None
        Feature layer; default the last layer with a 4-D output.
    layers : sequence of str, default=None
        Several feature layers instead, fused by element-wise maximum of their
        upsampled, min-max scaled maps (see :class:`GradCAM`, :func:`fusion_layers`).
    target : {"pneumonia", "normal", "predicted"} or array-like of bool, shape (n,)
        Gradient methods explain the pre-sigmoid logit (PNEUMONIA) or its negation
        (NORMAL); Score-CAM weights by ``p`` or ``1 - p``.
    batch_size : int, default=16
    max_n : int, default=32
        Score-CAM only: channels kept per image.

    Returns
    -------
    ndarray of float32, shape (n, H, W)
        Maps in [0, 1] (min-max scaled per image) at input resolution.

    Raises
    ------
    DataError
        Bad images (rank, channels, NaN/inf, range, size).
    ConfigError
        Unknown method/target, missing layer, or a model outside the contract.

    Examples
    --------
    >>> import keras, numpy as np
    >>> inputs = keras.Input((8, 8, 3), name="image")
    >>> x = keras.layers.Conv2D(4, 3, activation="relu", name="conv_last")(inputs)
    >>> x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    >>> out = keras.layers.Dense(1, activation="sigmoid", name="prediction")(x)
    >>> maps = gradcam(keras.Model(inputs, out), np.random.default_rng(0).random((2, 8, 8, 3)))
    >>> maps.shape, maps.dtype, bool(0 <= maps.min() and maps.max() <= 1)
    ((2, 8, 8), dtype('float32'), True)
    """
    return _cam_explainer("gradcam", model, method, layer, batch_size, max_n, layers)(images, target=target)


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
    if isinstance(layers, str) and layers == "auto":
        layers = fusion_layers
    with _sharing_logit_models():
        maps = np.stack([
            resize_maps(_cam_explainer(owner, m, method, layer, batch_size, max_n,
                                       layers(m) if callable(layers) else layers)(x, target=target), size)
            for m, x in zip(models, inputs)
        ])
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
    return _check_images(images, model, owner=owner)


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


def saliency(model, images, *, smooth_samples=0, noise=0.2, target="pneumonia", batch_size=16, seed=0):
    """Gradient saliency baselines: vanilla (``smooth_samples=0``) or SmoothGrad.

    Parameters and errors as in :class:`SaliencyMap` and :func:`gradcam`.

    Returns
    -------
    ndarray of float32, shape (n, H, W)
        Maps in [0, 1].
    """
    explainer = SaliencyMap(model, smooth_samples=smooth_samples, noise=noise, seed=seed,
                            batch_size=batch_size)
    return explainer(images, target=target)


def shap_maps(model, images, background=None, *, method="gradient", target="pneumonia",
              n_samples=32, max_evals=256, batch_size=16, seed=0):
    """Signed SHAP attribution maps of the pre-sigmoid logit.

    Parameters
    ----------
    model : keras.Model
    images : array-like, shape (n, H, W, 3)
    background : array-like, shape (m, H, W, 3), default=None
        Required by ``"gradient"`` (e.g. :func:`background_sample`); unused by
        ``"partition"``, whose reference is a blurred copy of each image.
    method : {"gradient", "partition"}, default="gradient"
        Expected gradients (``shap.GradientExplainer``) or the partition explainer
        with a blur masker (model-agnostic, slower).
    target : {"pneumonia", "normal", "predicted"} or array-like of bool, default="pneumonia"
        Sign convention: positive values push toward this class.
    n_samples : int, default=32
        ``"gradient"``: samples per image.
    max_evals : int, default=256
        ``"partition"``: masked evaluations per image.
    batch_size : int, default=16
    seed : int, default=0

    Returns
    -------
    ndarray of float32, shape (n, H, W)
        Attributions summed over channels, in log-odds units.
    """
    _choice("shap_maps", "method", method, SHAP_METHODS)
    if method == "gradient":
        if background is None:
            raise ConfigError("The 'background' parameter of shap_maps is required with method='gradient' "
                              "(see background_sample); got None.")
        explainer = GradientSHAP(model, background, n_samples=n_samples, seed=seed, batch_size=batch_size)
    else:
        if background is not None:
            warnings.warn("background is not used by method='partition' (it blurs each image)", UserWarning,
                          stacklevel=2)
        explainer = PartitionSHAP(model, max_evals=max_evals, seed=seed, batch_size=batch_size)
    return explainer(images, target=target)


def background_sample(images, labels, *, n=32, seed=0):
    """Draw a class-balanced SHAP background: half NORMAL, half PNEUMONIA where possible.

    Parameters
    ----------
    images : array-like, shape (N, H, W, 3)
    labels : array-like of {0, 1}, shape (N,)
        1 = PNEUMONIA.
    n : int, default=32
        Background size (at most N); a class with too few images is topped up from the other.
    seed : int, default=0

    Returns
    -------
    ndarray of float32, shape (min(n, N), H, W, 3)
    """
    x = _check_images(images, owner="background_sample")
    y = np.asarray(labels)
    if y.shape != (len(x),) or not np.isin(y, (0, 1)).all():
        raise DataError(f"labels must be {len(x)} values in {{0, 1}}; got shape {y.shape}")
    n = min(_positive_int("background_sample", "n", n), len(x))
    pools = [np.flatnonzero(y == c) for c in (0, 1)]
    take_pos = min(n // 2 + n % 2, len(pools[1]))
    take_neg = min(n - take_pos, len(pools[0]))
    take_pos = n - take_neg
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.choice(pools[0], take_neg, replace=False),
                          rng.choice(pools[1], take_pos, replace=False)])
    return x[np.sort(idx)]


def zone_attention(maps, masks_or_zones):
    """Share of each map's positive mass in the six lung zones and outside the lungs.

    Parameters
    ----------
    maps : array-like, shape (n, H, W)
        Attention or attribution maps; negative values are ignored.
    masks_or_zones : array-like, shape (n, H, W)
        Bool lung masks (split with :func:`zones`) or integer zone
        ids 0..6 (0 = outside the lungs).

    Returns
    -------
    pandas.DataFrame
        One row per image (index ``"image"``); columns :data:`ZONE_COLUMNS`: the six
        zone shares and ``off_lung_attention`` (the share outside the lungs); each
        row sums to 1, or is NaN when a map has no positive mass.
    """
    m = np.asarray(maps, np.float64)
    z = np.asarray(masks_or_zones)
    if m.ndim != 3 or z.shape != m.shape:
        raise DataError(
            f"maps and masks_or_zones must share one (n, H, W) shape; got {m.shape} and {z.shape}"
        )
    if not np.isfinite(m).all():
        raise DataError("maps contain NaN or infinite values")
    if z.dtype == bool:
        z = zones(z)
    elif not np.issubdtype(z.dtype, np.integer) or z.min() < 0 or z.max() > len(ZONE_NAMES):
        raise DataError(f"zone ids must be integers in 0..{len(ZONE_NAMES)}, or pass bool masks")
    n, k = len(m), len(ZONE_NAMES) + 1
    positive = np.clip(m, 0, None)
    ids = z.astype(np.int64) + k * np.arange(n)[:, None, None]
    mass = np.bincount(ids.ravel(), weights=positive.ravel(), minlength=n * k).reshape(n, k)
    total = mass.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, mass / total, np.nan)
    table = pd.DataFrame(np.column_stack([share[:, 1:], share[:, 0]]), columns=list(ZONE_COLUMNS))
    table.index.name = "image"
    return table


# --------------------------------------------------------------------------- faithfulness


def _baseline_images(owner, x, baseline):
    if isinstance(baseline, str):
        if baseline != "blur":
            raise param_error(owner, "baseline", "a number in [0, 1] or 'blur'", baseline)
        sigma = max(1.0, x.shape[1] / 20)  # ~11 px at 224, as RISE's insertion blur
        return scipy.ndimage.gaussian_filter(x, sigma=(0, sigma, sigma, 0))
    if not np.isscalar(baseline) or not 0 <= baseline <= 1:
        raise param_error(owner, "baseline", "a number in [0, 1] or 'blur'", baseline)
    return np.full_like(x, baseline)


def _perturbation_auc(owner, model, images, maps, *, insert, steps, baseline, target, batch_size):
    """AUC of the target-class probability while pixels are deleted/inserted by saliency."""
    _check_model(model, owner)
    x = _check_images(images, model, owner=owner)
    m = _check_maps(maps, x)
    steps = _positive_int(owner, "steps", steps)
    batch_size = _positive_int(owner, "batch_size", batch_size)
    is_pneumonia = _target_is_pneumonia(owner, target, model, x, batch_size)
    base = _baseline_images(owner, x, baseline)
    n, height, width = m.shape
    # rank[i, p] = position of pixel p in image i's saliency order (0 = most salient).
    order = np.argsort(-m.reshape(n, -1), axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(height * width)[None, :], axis=1)
    rank = rank.reshape(n, height, width, 1)
    counts = np.round(np.linspace(0, height * width, steps + 1)).astype(np.int64)
    per_image_bytes = (steps + 1) * x[0].nbytes
    chunk = max(1, _PERTURBATION_MAX_BYTES // per_image_bytes)
    scores = np.empty((steps + 1, n))
    for start in range(0, n, chunk):  # every step of a chunk of images in one predict()
        sl = slice(start, start + chunk)
        first = (rank[None, sl] < counts[:, None, None, None, None])  # (steps+1, b, H, W, 1)
        shown, hidden = (x[sl], base[sl]) if insert else (base[sl], x[sl])
        perturbed = np.where(first, shown[None], hidden[None]).reshape((-1,) + x.shape[1:])
        scores[:, sl] = _predict_proba(model, perturbed, batch_size).reshape(first.shape[:2])
    scores = np.where(is_pneumonia[None, :], scores, 1 - scores)
    return np.trapezoid(scores, dx=1 / steps, axis=0)


def deletion_auc(model, images, maps, *, steps=20, baseline=0.0, target="pneumonia", batch_size=32):
    """Deletion metric (Petsiuk et al., BMVC 2018): lower is more faithful.

    The most salient pixels are replaced by ``baseline`` in ``steps`` equal increments
    and the target-class probability is integrated over the deleted fraction [0, 1].

    Parameters
    ----------
    model : keras.Model
    images : array-like, shape (n, H, W, 3)
    maps : array-like, shape (n, H, W)
        Higher = more important (signed maps rank by value).
    steps : int, default=20
    baseline : float in [0, 1] or "blur", default=0.0
        Replacement value, or a Gaussian-blurred copy of the image.
    target : {"pneumonia", "normal", "predicted"} or array-like of bool, shape (n,)
        Whose probability is tracked (``p`` or ``1 - p``).
    batch_size : int, default=32
        Perturbed images per network call (all steps are predicted together).

    Returns
    -------
    ndarray of float64, shape (n,)
        Per-image area under the probability curve, in [0, 1].
    """
    return _perturbation_auc("deletion_auc", model, images, maps, insert=False, steps=steps, baseline=baseline,
                             target=target, batch_size=batch_size)


def insertion_auc(model, images, maps, *, steps=20, baseline="blur", target="pneumonia", batch_size=32):
    """Insertion metric (Petsiuk et al., BMVC 2018): higher is more faithful.

    Starting from ``baseline`` (a blurred image by default, as in RISE), the most
    salient pixels are restored first. Parameters and return as in :func:`deletion_auc`.
    """
    return _perturbation_auc("insertion_auc", model, images, maps, insert=True, steps=steps, baseline=baseline,
                             target=target, batch_size=batch_size)


def random_map_baseline(model, images, *, metric="deletion", n_maps=3, steps=20, baseline=None,
                        target="pneumonia", batch_size=32, seed=0):
    """Deletion/insertion AUC of uniformly random maps, the chance level to beat.

    Parameters
    ----------
    metric : {"deletion", "insertion"}, default="deletion"
    n_maps : int, default=3
        Random maps per image, averaged.
    baseline : float or "blur", default=None
        Default: the metric's own default (0.0 for deletion, "blur" for insertion).
    seed : int, default=0
    model, images, steps, target, batch_size
        As in :func:`deletion_auc`.

    Returns
    -------
    ndarray of float64, shape (n,)
        Mean AUC over the random maps.
    """
    _choice("random_map_baseline", "metric", metric, FAITHFULNESS_METRICS)
    n_maps = _positive_int("random_map_baseline", "n_maps", n_maps)
    x = _check_images(images, owner="random_map_baseline")
    if baseline is None:
        baseline = 0.0 if metric == "deletion" else "blur"
    if not isinstance(target, str):  # per-image targets follow the repeated images
        target = np.tile(np.asarray(target), n_maps)
    maps = np.random.default_rng(seed).random((n_maps,) + x.shape[:3], dtype=np.float32)
    auc = _perturbation_auc("random_map_baseline", model, np.tile(x, (n_maps, 1, 1, 1)),
                            maps.reshape((-1,) + x.shape[1:3]), insert=metric == "insertion", steps=steps,
                            baseline=baseline, target=target, batch_size=batch_size)
    return auc.reshape(n_maps, len(x)).mean(axis=0)


# ROAD's neighbour weights (Rong et al., 2022): 1/6 for the 4 direct, 1/12 for the 4 diagonal neighbours.
_ROAD_NEIGHBOURS = tuple((dr, dc, 1 / 6 if dr == 0 or dc == 0 else 1 / 12)
                         for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0))


def _impute_one(image, removed):
    """Solve ``x_p = weighted mean of x_q over p's in-image 8-neighbours q`` for every removed p."""
    height, width = removed.shape
    unknown = np.flatnonzero(removed.ravel())
    if unknown.size == 0:
        return image
    slot = np.full(height * width, -1)
    slot[unknown] = np.arange(unknown.size)
    rows, cols = np.divmod(unknown, width)
    flat = image.reshape(height * width, -1).astype(np.float64)
    diag = np.zeros(unknown.size)
    rhs = np.zeros((unknown.size, flat.shape[1]))
    a_rows, a_cols, a_vals = [], [], []
    for dr, dc, weight in _ROAD_NEIGHBOURS:
        r, c = rows + dr, cols + dc
        inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
        who = np.flatnonzero(inside)
        neighbour = r[inside] * width + c[inside]
        diag[who] += weight
        is_unknown = slot[neighbour] >= 0
        a_rows.append(who[is_unknown])
        a_cols.append(slot[neighbour[is_unknown]])
        a_vals.append(np.full(is_unknown.sum(), -weight))
        np.add.at(rhs, who[~is_unknown], weight * flat[neighbour[~is_unknown]])
    a_rows.append(np.arange(unknown.size))
    a_cols.append(np.arange(unknown.size))
    a_vals.append(diag)
    system = scipy.sparse.csc_matrix(
        (np.concatenate(a_vals), (np.concatenate(a_rows), np.concatenate(a_cols))), shape=(unknown.size,) * 2
    )
    solved = scipy.sparse.linalg.splu(system).solve(rhs)
    out = flat.copy()
    out[unknown] = solved
    return out.reshape(image.shape)


def road_impute(images, removed, *, noise=0.0, seed=0):
    """ROAD's noisy linear imputation: removed pixels from their neighbours, not black.

    Every removed pixel equals the weighted mean of its in-image 8-neighbours
    (weight 1/6 direct, 1/12 diagonal), removed neighbours included; the resulting
    sparse linear system is solved exactly (``scipy.sparse.linalg.splu``), so holes
    are filled smoothly from their borders. Gaussian noise of std ``noise`` is then
    added to the imputed pixels, as in Rong et al. (ICML 2022).

    Parameters
    ----------
    images : array_like, shape (n, H, W, 3)
        Float images in [0, 1].
    removed : array_like of bool, shape (n, H, W)
        Pixels to impute; each image must keep at least one pixel.
    noise : float, default 0.0
        Std of the noise on imputed pixels (ROAD uses 0.01 on [0, 1] images).
    seed : int, default 0

    Returns
    -------
    ndarray of float32, shape (n, H, W, 3)
        Clipped to [0, 1]; pixels not removed are unchanged.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.zeros((1, 5, 5, 3), np.float32)
    >>> x[0, :, 3:] = 1.0                       # dark left, bright right
    >>> hole = np.zeros((1, 5, 5), bool)
    >>> hole[0, :, 1:4] = True
    >>> road_impute(x, hole)[0, 2, :, 0].round(2)  # a ramp, not a black hole
    array([0.  , 0.25, 0.5 , 0.75, 1.  ], dtype=float32)
    """
    x = _check_images(images, owner="road_impute")
    mask = np.asarray(removed)
    if mask.shape != x.shape[:3] or mask.dtype != bool:
        raise DataError(f"removed must be a bool array of shape {x.shape[:3]} (n, H, W); got {mask.dtype} "
                        f"{mask.shape}")
    if mask.reshape(len(x), -1).all(axis=1).any():
        raise DataError("removed covers every pixel of an image: there is nothing to impute from")
    if not np.isfinite(noise) or noise < 0:
        raise param_error("road_impute", "noise", "a number >= 0", noise)
    out = np.stack([_impute_one(image, m) for image, m in zip(x, mask)])
    if noise > 0:
        rng = np.random.default_rng(seed)
        out = np.where(mask[..., None], out + rng.normal(0.0, noise, out.shape), out)
    return np.clip(out, 0, 1).astype(np.float32)


def road(model, images, maps, *, order="morf", fractions=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
         noise=0.01, target="pneumonia", batch_size=32, seed=0):
    """ROAD, remove and debias (Rong et al., ICML 2022): the target-class probability as pixels go.

    For each fraction the most (``"morf"``) or least (``"lerf"``) relevant pixels of
    each map are removed and imputed by :func:`road_impute`; all perturbed images of a
    chunk of images are predicted in one call. A faithful map makes the MoRF curve fall
    fast and the LeRF curve stay high. Unlike deletion to black, the imputed image
    carries no hole whose shape leaks which pixels were removed.

    Parameters
    ----------
    model : keras.Model
    images : array_like, shape (n, H, W, 3)
    maps : array_like, shape (n, H, W)
        Higher = more relevant.
    order : {"morf", "lerf"}, default "morf"
    fractions : sequence of float in [0, 1), default 0.1, 0.2, ..., 0.9
    noise : float, default 0.01
        Imputation noise (see :func:`road_impute`).
    target : {"pneumonia", "normal", "predicted"} or array_like of bool, shape (n,)
        Whose probability is tracked (``p`` or ``1 - p``).
    batch_size : int, default 32
    seed : int, default 0

    Returns
    -------
    ndarray of float64, shape (n, len(fractions))
        Target-class probability after each removal fraction.
    """
    _choice("road", "order", order, ROAD_ORDERS)
    _check_model(model, "road")
    x = _check_images(images, model, owner="road")
    m = _check_maps(maps, x)
    f = np.asarray(fractions, np.float64)
    if f.ndim != 1 or len(f) == 0 or not np.isfinite(f).all() or (f < 0).any() or (f >= 1).any():
        raise param_error("road", "fractions", "a non-empty sequence of numbers in [0, 1)", fractions)
    batch_size = _positive_int("road", "batch_size", batch_size)
    is_pneumonia = _target_is_pneumonia("road", target, model, x, batch_size)
    n, height, width = m.shape
    relevance = m.reshape(n, -1) if order == "morf" else -m.reshape(n, -1)
    order_idx = np.argsort(-relevance, axis=1, kind="stable")
    rank = np.empty_like(order_idx)
    np.put_along_axis(rank, order_idx, np.arange(height * width)[None, :], axis=1)
    counts = np.round(f * height * width).astype(np.int64)
    rng = np.random.default_rng(seed)
    chunk = max(1, _PERTURBATION_MAX_BYTES // (len(f) * x[0].nbytes))
    scores = np.empty((n, len(f)))
    for start in range(0, n, chunk):
        sl = slice(start, start + chunk)
        removed = rank[sl, None, :] < counts[None, :, None]  # (b, k, H*W)
        b = removed.shape[0]
        perturbed = road_impute(np.repeat(x[sl], len(f), axis=0), removed.reshape(b * len(f), height, width),
                                noise=noise, seed=int(rng.integers(2**31 - 1)))
        scores[sl] = _predict_proba(model, perturbed, batch_size).reshape(b, len(f))
    return np.where(is_pneumonia[:, None], scores, 1 - scores)


# --------------------------------------------------------------------------- randomization


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
    _check_model(model, "randomization_check")
    explained = () if method == "saliency" else _feature_layers("randomization_check", model, layer, layers)
    names = _layers_to_randomize("randomization_check", model, n_layers, explained)
    x = _check_images(images, model, owner="randomization_check")
    batch_size = _positive_int("randomization_check", "batch_size", batch_size)
    target = _target_is_pneumonia("randomization_check", target, model, x, batch_size)
    randomized = _randomized_copy(model, names, seed)

    def explain(m):
        if method == "saliency":
            return SaliencyMap(m, batch_size=batch_size)(x, target=target)
        return _cam_explainer("randomization_check", m, method, layer, batch_size, max_n, layers)(x, target=target)

    return _spearman_rows(explain(model), explain(randomized))


# --------------------------------------------------------------------------- layer choice


def _nanmedian(values):
    """Median of the finite values; NaN, without a warning, when there is none."""
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else float("nan")


def compare_layers(model, images, layers, *, methods=("gradcam", "layercam"), target="predicted", steps=20,
                   fractions=(0.1, 0.3, 0.5, 0.7, 0.9), n_randomized=DOWNSTREAM, batch_size=16, max_n=32, seed=0):
    """Faithfulness, randomization and cost of each CAM method on each layer (or fused layers).

    Layer choice by measurement: for every (method, layer) pair the maps of ``images``
    are timed and scored by deletion AUC (lower is better), ROAD MoRF/LeRF
    (:func:`road`; ``road_gap = road_lerf - road_morf``, higher is better) and the
    model-randomization Spearman correlation (:func:`randomization_check`, lower is
    better). A ``"random"`` row gives the chance level of uniformly random maps.

    Parameters
    ----------
    model : keras.Model
    images : array_like, shape (n, H, W, 3)
    layers : sequence of (str or sequence of str)
        Layers to compare; a sequence of names is one fused entry (e.g.
        :func:`fusion_layers`), labelled by joining its names with ``"+"``.
    methods : sequence of str, default ("gradcam", "layercam")
        Drawn from :data:`CAM_METHODS`.
    target : {"pneumonia", "normal", "predicted"} or array_like of bool, default "predicted"
        Resolved once, so every method explains the same classes.
    steps : int, default 20
        Deletion steps.
    fractions : sequence of float, default (0.1, 0.3, 0.5, 0.7, 0.9)
        ROAD removal fractions.
    n_randomized : int or "downstream", default "downstream"
        Weighted layers re-initialised by the randomization check: the top
        ``n_randomized``, or every one after each candidate's shallowest layer
        (:func:`randomization_check`), so a conv3 map is not judged by a check that
        leaves conv4 and conv5 trained.
    batch_size, max_n, seed
        As in :func:`gradcam` and :func:`randomization_check`.

    Returns
    -------
    pandas.DataFrame
        One row per (method, layer) plus the ``"random"`` row; columns ``method``,
        ``layer``, ``map_side`` (side of the finest feature map), ``deletion_auc``,
        ``road_morf``, ``road_lerf``, ``road_gap`` (means over images and fractions),
        ``randomization_spearman`` (median over images with a non-constant map; NaN
        when re-initialisation leaves every map constant) and ``seconds_per_image``.
    """
    _check_model(model, "compare_layers")
    x = _check_images(images, model, owner="compare_layers")
    if isinstance(methods, str) or not len(methods):
        raise param_error("compare_layers", "methods", "a non-empty list drawn from " + ", ".join(CAM_METHODS),
                          methods)
    for method in methods:
        _choice("compare_layers", "methods", method, CAM_METHODS)
    if isinstance(layers, str) or not len(layers):
        raise param_error("compare_layers", "layers", "a non-empty list of layer names or lists of names", layers)
    specs = [(entry,) if isinstance(entry, str) else tuple(entry) for entry in layers]
    is_pneumonia = _target_is_pneumonia("compare_layers", target, model, x, batch_size)

    def scores(maps):
        morf = road(model, x, maps, order="morf", fractions=fractions, target=is_pneumonia, seed=seed).mean()
        lerf = road(model, x, maps, order="lerf", fractions=fractions, target=is_pneumonia, seed=seed).mean()
        deletion = deletion_auc(model, x, maps, steps=steps, target=is_pneumonia).mean()
        return {"deletion_auc": deletion, "road_morf": morf, "road_lerf": lerf, "road_gap": lerf - morf}

    # Each candidate's randomized copy, built before any map (bad layer names or n_randomized fail first) and
    # shared by candidates that re-initialise the same layers, as randomization_check(..., seed=seed) builds it.
    copies, randomized = {}, {}
    for spec in specs:
        names = tuple(_layers_to_randomize("compare_layers", model, n_randomized,
                                           _feature_layers("compare_layers", model, None, spec), name="n_randomized"))
        if names not in copies:
            copies[names] = _randomized_copy(model, names, seed)
        randomized[spec] = copies[names]
    rows = []
    with _sharing_logit_models():
        for method in methods:
            for spec in specs:
                explainer = _cam_explainer("compare_layers", model, method, None, batch_size, max_n, layers=spec)
                started = time.perf_counter()
                maps = explainer(x, target=is_pneumonia)
                seconds = (time.perf_counter() - started) / len(x)
                maps_randomized = _cam_explainer("compare_layers", randomized[spec], method, None, batch_size, max_n,
                                                 layers=spec)(x, target=is_pneumonia)
                rows.append({"method": method, "layer": "+".join(spec),
                             "map_side": max(int(model.get_layer(name).output.shape[1]) for name in spec),
                             **scores(maps),
                             "randomization_spearman": _nanmedian(_spearman_rows(maps, maps_randomized)),
                             "seconds_per_image": seconds})
    chance = np.random.default_rng(seed).random(x.shape[:3], dtype=np.float32)
    rows.append({"method": "random", "layer": "", "map_side": x.shape[1], **scores(chance),
                 "randomization_spearman": np.nan, "seconds_per_image": np.nan})
    return pd.DataFrame(rows)


#: A map whose median Spearman correlation with the maps of a model with re-initialised top
#: layers reaches this does not depend on what the model learned (Adebayo et al. 2018).
MAX_RANDOMIZATION_SPEARMAN = 0.9
#: ROAD gaps closer than this are a tie, which the finer map wins.
ROAD_GAP_TIE = 0.02


def choose_map_method(table, *, max_randomization=MAX_RANDOMIZATION_SPEARMAN, tie=ROAD_GAP_TIE):
    """The map method and layers to trust, chosen from a :func:`compare_layers` table by a fixed rule.

    Rule: drop candidates that fail the model-randomization check (median Spearman
    ``>= max_randomization``: the map barely changes when the model's top layers are
    re-initialised, Adebayo et al. 2018) or are no more faithful than random maps (ROAD
    gap, LeRF minus MoRF, at or below the ``"random"`` row's; Rong et al. 2022); among the
    rest take the largest ROAD gap, a gap within ``tie`` of the best going to the finer map
    (then the faster one). Without any candidate left, Grad-CAM on the last layer listed
    for it is kept as the conventional default, and the reason says so.

    Parameters
    ----------
    table : pandas.DataFrame
        Output of :func:`compare_layers` (columns ``method``, ``layer``, ``map_side``,
        ``road_gap``, ``randomization_spearman``, ``seconds_per_image``), with its
        ``"random"`` row.
    max_randomization : float, default=MAX_RANDOMIZATION_SPEARMAN
    tie : float, default=ROAD_GAP_TIE

    Returns
    -------
    choice : dict
        ``method``, ``layer`` (as in the table, fused layers joined by ``"+"``),
        ``map_side``, ``road_gap``, ``randomization_spearman`` and ``reason`` (one sentence).
    table : pandas.DataFrame
        ``table`` plus ``passes_randomization``, ``beats_random`` and ``chosen``.

    Examples
    --------
    >>> import pandas as pd
    >>> table = pd.DataFrame({"method": ["gradcam", "layercam", "layercam", "random"],
    ...                       "layer": ["c5", "c5", "c3+c4+c5", ""], "map_side": [2, 2, 8, 64],
    ...                       "road_gap": [0.20, 0.10, 0.19, 0.01],
    ...                       "randomization_spearman": [0.95, 0.6, 0.5, float("nan")],
    ...                       "seconds_per_image": [0.1, 0.2, 0.4, float("nan")]})
    >>> choice, _ = choose_map_method(table)
    >>> choice["method"], choice["layer"]
    ('layercam', 'c3+c4+c5')
    """
    needed = {"method", "layer", "map_side", "road_gap", "randomization_spearman", "seconds_per_image"}
    if not isinstance(table, pd.DataFrame) or not needed <= set(table.columns) or not (table["method"] == "random").any():
        raise param_error("choose_map_method", "table", "the DataFrame compare_layers returns (with its 'random' row)",
                          table)
    check_param("choose_map_method", "max_randomization", max_randomization, Interval("real", 0, 1, closed="right"))
    check_param("choose_map_method", "tie", tie, Interval("real", 0, None))
    chance = float(table.loc[table["method"] == "random", "road_gap"].iloc[0])
    table = table.copy()
    candidates = table["method"] != "random"
    table["passes_randomization"] = candidates & (table["randomization_spearman"].fillna(1.0) < max_randomization)
    table["beats_random"] = candidates & (table["road_gap"] > chance)
    eligible = table[table["passes_randomization"] & table["beats_random"]]
    if len(eligible):
        best_gap = eligible["road_gap"].max()
        close = eligible[eligible["road_gap"] >= best_gap - tie]
        index = close.sort_values(["map_side", "seconds_per_image"], ascending=[False, True]).index[0]
        row = table.loc[index]
        tied = f"; the finest map among gaps within {tie} of the best" if len(close) > 1 else ""
        reason = (f"{row['method']} on {row['layer']} has the largest ROAD gap ({row['road_gap']:.3f}, random maps "
                  f"{chance:.3f}{tied}) among the {len(eligible)} of {int(candidates.sum())} candidates that pass "
                  f"the randomization check (Spearman < {max_randomization}) and beat random maps.")
    else:
        fallback = table[candidates & (table["method"] == "gradcam")]
        index = fallback.index[0] if len(fallback) else table[candidates].index[0]
        row = table.loc[index]
        reason = (f"no candidate both passes the randomization check (Spearman < {max_randomization}) and beats "
                  f"random maps (ROAD gap {chance:.3f}); {row['method']} on {row['layer']} is kept as the "
                  "conventional default, and its maps should be read with that caution.")
    table["chosen"] = table.index == index
    choice = {"method": row["method"], "layer": row["layer"], "map_side": int(row["map_side"]),
              "road_gap": float(row["road_gap"]), "randomization_spearman": float(row["randomization_spearman"]),
              "reason": reason}
    return choice, table


# --------------------------------------------------------------------------- per failure slice


def _rise_p_value(values, errors, correct, y):
    """One-sided Mann-Whitney p that ``values`` of the errors exceed those of correct calls of their main class."""
    if not errors.any():
        return np.nan
    main_class = np.bincount(y[errors], minlength=2).argmax()
    ok = np.isfinite(values) & (y == main_class)
    a, b = values[errors & ok], values[correct & ok]
    if len(a) < 2 or len(b) < 2:
        return np.nan
    return float(scipy.stats.mannwhitneyu(a, b, alternative="greater").pvalue)


def slice_explanations(frame, slice_table, maps, masks, y_true, y_prob, *, threshold=0.5, faithfulness=None,
                       peak_removal=None, findings_only=True, max_slices=10):
    """Where in the image each failure slice's errors look, against correct calls of the same class.

    Links "which images" (:func:`pneumoxai.slices.find_failure_slices`) to "where in
    the image" (:func:`zone_attention`). For each slice, its errors are compared with
    the correct calls of the same true class, weighted to the errors' class mix (a
    slice of false positives is compared with true negatives).

    Parameters
    ----------
    frame : pandas.DataFrame, shape (n_samples, n_columns)
        The slicing table the slices were found on.
    slice_table : pandas.DataFrame
        Output of :func:`pneumoxai.slices.find_failure_slices` (with ``conditions``).
    maps : array_like, shape (n_samples, H, W)
        One attention map per image (e.g. of the predicted class).
    masks : array_like, shape (n_samples, H, W)
        Bool lung masks or zone ids, as in :func:`zone_attention`.
    y_true : array_like of {0, 1}, shape (n_samples,)
    y_prob : array_like, shape (n_samples,)
        P(PNEUMONIA); a call is PNEUMONIA when ``y_prob >= threshold``.
    threshold : float, default 0.5
    faithfulness : array_like, shape (n_samples,), optional
        A per-image faithfulness score of ``maps`` (e.g. :func:`deletion_auc` or a ROAD
        gap); its mean over the slice's errors and over the reference is reported.
    peak_removal : array_like, shape (n_samples,), optional
        1 where removing the region under the map's peak changes the call, 0 where it
        does not (``call_changed`` of :func:`pneumoxai.audit.peak_removal_effect`), NaN
        where not measured; its mean over the slice's errors and over the reference is
        reported: do the errors rest on where their maps point?
    findings_only : bool, default True
        Only slices with ``finding`` True (q below the search's alpha).
    max_slices : int, default 10
        At most this many slices, in the table's order.

    Returns
    -------
    table : pandas.DataFrame
        One row per slice: ``slice``, ``n_errors``, ``n_reference``, then for each
        zone column ``z`` of :data:`ZONE_COLUMNS` the mean share ``errors:z`` and
        ``correct:z``, ``off_lung_shift`` (errors minus correct), ``off_lung_p``
        (one-sided Mann-Whitney U p-value that the off-lung shares of the slice's
        errors exceed those of correct calls; errors and correct calls of the errors'
        more common class, so no class mix enters; NaN with fewer than 2 on either
        side), ``top_zone_shift`` (zone with the largest increase), with ``faithfulness``
        ``faithfulness_errors``, ``faithfulness_correct`` and ``faithfulness_n_errors``
        (errors measured), and with ``peak_removal`` the same three ``peak_removal_changes_*``.
    mean_maps : ndarray of float32, shape (n_slices, H, W)
        Mean map of each slice's errors (zeros for a slice without errors).
    """
    from .slices import slice_mask

    if not isinstance(slice_table, pd.DataFrame) or "conditions" not in slice_table:
        raise DataError("slice_table must be the DataFrame of find_failure_slices, with its 'conditions' column")
    m = np.asarray(maps, np.float64)
    y = np.asarray(y_true)
    p = np.asarray(y_prob, np.float64)
    n = len(frame)
    if m.ndim != 3 or len(m) != n or y.shape != (n,) or p.shape != (n,):
        raise DataError(f"maps (n, H, W), y_true and y_prob (n,) must have n = len(frame) = {n} rows; got "
                        f"{m.shape}, {y.shape}, {p.shape}")
    per_image = {}
    for name, values, column in (("faithfulness", faithfulness, "faithfulness"),
                                 ("peak_removal", peak_removal, "peak_removal_changes")):
        if values is not None:
            per_image[column] = np.asarray(values, np.float64)
            if per_image[column].shape != (n,):
                raise DataError(f"{name} must have shape ({n},); got {per_image[column].shape}")
    max_slices = _positive_int("slice_explanations", "max_slices", max_slices)
    shares = zone_attention(m, masks)
    wrong = (p >= threshold).astype(int) != y
    chosen = slice_table[slice_table["finding"].astype(bool)] if findings_only else slice_table
    rows, mean_maps = [], []
    for _, found in chosen.head(max_slices).iterrows():
        errors = slice_mask(frame, found["conditions"]) & wrong
        mix = np.bincount(y[errors], minlength=2) / max(1, errors.sum())
        row = {"slice": found["slice"], "n_errors": int(errors.sum()), "n_reference": int((~wrong).sum())}
        reference_weight = np.zeros(n)
        for c in (0, 1):  # each correct call of class c weighs mix[c] / n(correct calls of c)
            correct = ~wrong & (y == c)
            if correct.any():
                reference_weight[correct] = mix[c] / correct.sum()
        for column in ZONE_COLUMNS:
            values = shares[column].to_numpy()
            row[f"errors:{column}"] = float(np.nanmean(values[errors])) if errors.any() else np.nan
            ok = np.isfinite(values) & (reference_weight > 0)
            row[f"correct:{column}"] = (float(np.average(values[ok], weights=reference_weight[ok]))
                                        if ok.any() else np.nan)
        row["off_lung_shift"] = row["errors:off_lung_attention"] - row["correct:off_lung_attention"]
        row["off_lung_p"] = _rise_p_value(shares["off_lung_attention"].to_numpy(), errors, ~wrong, y)
        shifts = {z: row[f"errors:{z}"] - row[f"correct:{z}"] for z in ZONE_COLUMNS}
        finite = {z: v for z, v in shifts.items() if np.isfinite(v)}
        row["top_zone_shift"] = max(finite, key=finite.get) if finite else None
        for column, values in per_image.items():
            measured = errors & np.isfinite(values)
            row[f"{column}_errors"] = float(values[measured].mean()) if measured.any() else np.nan
            row[f"{column}_n_errors"] = int(measured.sum())
            ok = np.isfinite(values) & (reference_weight > 0)
            row[f"{column}_correct"] = (float(np.average(values[ok], weights=reference_weight[ok]))
                                        if ok.any() else np.nan)
        rows.append(row)
        mean_maps.append(m[errors].mean(axis=0) if errors.any() else np.zeros(m.shape[1:]))
    table = pd.DataFrame(rows, columns=None if rows else ["slice", "n_errors", "n_reference"])
    return table, np.asarray(mean_maps, np.float32).reshape((-1,) + m.shape[1:])
