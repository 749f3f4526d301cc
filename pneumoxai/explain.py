"""Visual explanations for pneumoxai members, and checks that the explanations mean something.

Maps
    Grad-CAM, Grad-CAM++, (Faster) Score-CAM and vanilla/SmoothGrad saliency wrap
    ``tf-keras-vis``; expected-gradients and partition SHAP wrap ``shap``. Each method is
    one small class on :class:`MapExplainer`, which validates the model once and the
    images on every call, then explains them in batches (never one image per call).
Where the model looks
    :func:`zone_attention` splits each map's positive mass over the six lung zones of
    :mod:`pneumoxai.lungs` and the area outside the lungs.
Are the maps faithful?
    :func:`deletion_auc` / :func:`insertion_auc` (Petsiuk, Das & Saenko, "RISE:
    Randomized Input Sampling for Explanation of Black-box Models", BMVC 2018) against
    :func:`random_map_baseline`, and the model-parameter randomization test
    :func:`randomization_check` (Adebayo et al., "Sanity Checks for Saliency Maps",
    NeurIPS 2018).

Model contract: one input ``(H, W, 3)`` in [0, 1] and one sigmoid output ``(n, 1)`` =
P(PNEUMONIA), its activation carried by the output layer (``"prediction"``), and a flat
functional graph so the feature layer (``"conv5_block3_out"`` for ResNet50) is
reachable. :func:`pneumoxai.models.adapt` brings other Keras classifiers (Sequential,
nested backbones, softmax or logit heads, other input scalings) to it.

The single-sigmoid output needs care: tf-keras-vis' Score-CAM applies a softmax to the
model output, which is constantly 1 for one unit and makes every channel weight equal.
:class:`ScoreCAM` therefore rewrites the output as the two logits ``[-z/2, z/2]``
(``z`` = pre-sigmoid logit), whose softmax is exactly ``[1 - p, p]``. The gradient
methods explain ``+z`` (PNEUMONIA) or ``-z`` (NORMAL) via ``ReplaceToLinear`` and
``BinaryScore``. CAMs are upsampled here, not by tf-keras-vis (see :func:`_upsample`).

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
import warnings

import keras
import numpy as np
import pandas as pd
import scipy.ndimage
import scipy.stats

with warnings.catch_warnings():
    # tf-keras-vis 0.8.7 imports zoom from the deprecated scipy.ndimage.interpolation.
    warnings.simplefilter("ignore", DeprecationWarning)
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.saliency import Saliency
    from tf_keras_vis.scorecam import Scorecam
    from tf_keras_vis.utils.model_modifiers import ModelModifier, ReplaceToLinear
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
    "ZONE_COLUMNS",
    "ZONE_NAMES",
    "MapExplainer",
    "GradCAM",
    "GradCAMPlusPlus",
    "ScoreCAM",
    "SaliencyMap",
    "GradientSHAP",
    "PartitionSHAP",
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
    "randomization_check",
]

# Allowed option values, declared once.
CAM_METHODS = ("gradcam", "gradcam++", "scorecam")
SHAP_METHODS = ("gradient", "partition")
TARGETS = ("pneumonia", "normal", "predicted")
FAITHFULNESS_METRICS = ("deletion", "insertion")
RANDOMIZATION_METHODS = CAM_METHODS + ("saliency",)

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


def _logit_model(model, output_name):
    """A copy of ``model`` whose output is the pre-sigmoid logit (the original is untouched)."""
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    clone.get_layer(output_name).activation = keras.activations.linear
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
    batch_size : int, default=16
    """

    _visualization = Gradcam

    def __init__(self, model, *, layer=None, batch_size=16):
        super().__init__(model, batch_size=batch_size)
        self.layer = _feature_layer(model, layer)
        self._vis = self._visualization(model, model_modifier=ReplaceToLinear(), clone=True)

    def _explain_batch(self, x, is_pneumonia):
        with _quiet_keras_inputs():
            cams = self._vis(
                BinaryScore(is_pneumonia.tolist()), x,
                penultimate_layer=self.layer, seek_penultimate_conv_layer=False, expand_cam=False,
            )
        return _upsample(cams, x.shape[1:3])


class GradCAMPlusPlus(GradCAM):
    """Grad-CAM++ (Chattopadhyay et al., WACV 2018); same options as :class:`GradCAM`."""

    _visualization = GradcamPlusPlus


class ScoreCAM(MapExplainer):
    """Faster Score-CAM (Wang et al., CVPR-W 2020): weights the ``max_n`` most varied channels.

    Channel weights are the target-class probability of the masked input (``p`` or
    ``1 - p``), obtained through the two-logit rewrite described in the module docstring.

    Parameters
    ----------
    model : keras.Model
    layer : str, default=None
        As in :class:`GradCAM`.
    max_n : int, default=32
        Channels kept per image (by spatial std); capped at the layer's channel count.
        tf-keras-vis takes the union over a batch, so a batch may weight more channels.
    batch_size : int, default=16
        Masked inputs per prediction call; images per call are reduced so that their
        masked copies stay under 1 GiB.
    """

    def __init__(self, model, *, layer=None, max_n=32, batch_size=16):
        super().__init__(model, batch_size=batch_size)
        self.layer = _feature_layer(model, layer)
        self.channels = int(model.get_layer(self.layer).output.shape[-1])
        self.max_n = min(_positive_int("ScoreCAM", "max_n", max_n), self.channels)
        self._vis = Scorecam(model, model_modifier=[ReplaceToLinear(), _TwoClassLogits()], clone=True)

    def _images_per_call(self, shape):
        image_bytes = 4 * int(np.prod(shape[1:]))
        n = self.batch_size
        while n > 1 and n * min(self.channels, n * self.max_n) * image_bytes > _SCORECAM_MAX_BYTES:
            n -= 1
        return n

    def _explain_batch(self, x, is_pneumonia):
        # Scorecam calls model.predict() without verbose=0; keep its progress bar quiet.
        with _quiet_keras_inputs(), contextlib.redirect_stdout(io.StringIO()):
            cams = self._vis(
                CategoricalScore(is_pneumonia.astype(int).tolist()), x,
                penultimate_layer=self.layer, seek_penultimate_conv_layer=False,
                max_N=self.max_n, batch_size=self.batch_size, expand_cam=False,
            )
        return _upsample(cams, x.shape[1:3])


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
        self._vis = Saliency(model, model_modifier=ReplaceToLinear(), clone=True)

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


_CAM_CLASSES = dict(zip(CAM_METHODS, (GradCAM, GradCAMPlusPlus, ScoreCAM)))


def _cam_explainer(owner, model, method, layer, batch_size, max_n):
    cls = _CAM_CLASSES[_choice(owner, "method", method, CAM_METHODS)]
    options = {"max_n": max_n} if cls is ScoreCAM else {}
    return cls(model, layer=layer, batch_size=batch_size, **options)


# --------------------------------------------------------------------------- functions


def gradcam(model, images, *, method="gradcam", layer=None, target="pneumonia", batch_size=16, max_n=32):
    """Class-activation maps of one model.

    Parameters
    ----------
    model : keras.Model
        Single-input, single-sigmoid-output member (see the module docstring).
    images : array-like, shape (n, H, W, 3)
        Float images in [0, 1].
    method : {"gradcam", "gradcam++", "scorecam"}, default="gradcam"
        ``"scorecam"`` is Faster Score-CAM (``max_n`` channels).
    layer : str, default=None
        Feature layer; default the last layer with a 4-D output.
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
    return _cam_explainer("gradcam", model, method, layer, batch_size, max_n)(images, target=target)


def ensemble_gradcam(models, images, *, weights=None, method="gradcam", layer=None,
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
    maps = np.stack([
        resize_maps(_cam_explainer(owner, m, method, layer, batch_size, max_n)(x, target=target), size)
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


# --------------------------------------------------------------------------- randomization


def _seeded_initializer(initializer, seed):
    initializer = keras.initializers.get(initializer)
    config = initializer.get_config()
    if "seed" in config:
        config["seed"] = seed
        initializer = type(initializer).from_config(config)
    return initializer


def _randomized_copy(model, n_layers, seed):
    """Copy of ``model`` with its top ``n_layers`` weighted layers re-initialised."""
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    weighted = [layer for layer in clone.layers if layer.weights]
    if n_layers > len(weighted):
        raise ConfigError(f"n_layers={n_layers} but the model has only {len(weighted)} layers with weights")
    rng = np.random.default_rng(seed)
    for layer in weighted[-n_layers:]:
        for variable in layer.weights:
            # Each variable is redrawn from its own layer's initializer (Adebayo et al.),
            # seeded here instead of through Keras' global seed.
            name = variable.name.split("/")[-1]
            fallback = "glorot_uniform" if len(variable.shape) >= 2 else "zeros"
            init = getattr(layer, f"{name}_initializer", None) or fallback
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


def randomization_check(model, images, *, method="gradcam", n_layers=1, layer=None, target="pneumonia",
                        batch_size=16, max_n=32, seed=0):
    """Model-parameter randomization test (Adebayo et al., NeurIPS 2018).

    The model is cloned, its top ``n_layers`` layers with weights (counted from the
    output) are re-initialised, and each image's map from the trained and the
    randomized model are compared by Spearman rank correlation. A method that depends
    on the learned weights gives low correlations; values near 1 mean the map mostly
    reflects the input (edge detector behaviour), not the model.

    Parameters
    ----------
    model : keras.Model
    images : array-like, shape (n, H, W, 3)
    method : {"gradcam", "gradcam++", "scorecam", "saliency"}, default="gradcam"
    n_layers : int, default=1
        Weighted layers to re-initialise, from the top (cascading randomization).
    layer, target, batch_size, max_n
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
    n_layers = _positive_int("randomization_check", "n_layers", n_layers)
    x = _check_images(images, model, owner="randomization_check")
    batch_size = _positive_int("randomization_check", "batch_size", batch_size)
    target = _target_is_pneumonia("randomization_check", target, model, x, batch_size)
    randomized = _randomized_copy(model, n_layers, seed)

    def explain(m):
        if method == "saliency":
            return SaliencyMap(m, batch_size=batch_size)(x, target=target)
        return _cam_explainer("randomization_check", m, method, layer, batch_size, max_n)(x, target=target)

    return _spearman_rows(explain(model), explain(randomized))
