"""Class-activation maps: Grad-CAM, Grad-CAM++, LayerCAM, HiResCAM and Faster Score-CAM.

Grad-CAM, Grad-CAM++, LayerCAM and HiResCAM all weight a layer's activations by the gradient
of the logit at that layer, so one forward and backward pass of a batch (:func:`_layer_gradients`)
gives every layer's activations and gradients, and every method's map of every layer is
arithmetic on them (:func:`_method_cams`, the formulas of tf-keras-vis 0.8.7, operation for
operation). Faster Score-CAM wraps ``tf-keras-vis`` on the model's logit model (which shares
its layers). Per-layer maps are upsampled here (:func:`_upsample`) and fused by element-wise
maximum (:func:`_fuse`).
"""

import contextlib
import io
import time
import warnings

import keras
import numpy as np
import tensorflow as tf

with warnings.catch_warnings():
    # tf-keras-vis 0.8.7 imports zoom from the deprecated scipy.ndimage.interpolation.
    warnings.simplefilter("ignore", DeprecationWarning)
    from tf_keras_vis.scorecam import Scorecam
    from tf_keras_vis.utils.model_modifiers import ModelModifier
    from tf_keras_vis.utils import is_mixed_precision
    from tf_keras_vis.utils.scores import CategoricalScore

from ._base import (CAM_METHODS, MapExplainer, _choice, _graph_outputs, _GraphLayer, _logit_model, _minmax,
                    _positive_int, _quiet_keras_inputs, _shared_entry)
from .layers import _feature_layers

_SCORECAM_MAX_BYTES = 2**30  # cap on the masked input copies Score-CAM materialises
#: The methods whose maps are arithmetic on one layer's activations and the logit's gradients there.
GRADIENT_CAM_METHODS = ("gradcam", "gradcam++", "layercam", "hirescam")
_EPSILON = 1e-7  # tf-keras-vis' normalize(): (cam - min) / (max - min + epsilon)


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


def _gradient_model(logit, layers):
    """A model of the logit and the outputs of ``layers``, built once per logit model and layer set.

    Inside a :func:`shared_models` block it is kept with the logit model, so every batch and
    every explainer of the same layers reuse it.
    """
    entry = _shared_entry(logit)
    built = {} if entry is None else entry.setdefault("gradient_models", {})
    if layers not in built:
        outputs = _graph_outputs(logit)
        built[layers] = keras.Model(logit.inputs, [logit.outputs[0], *(outputs[name] for name in layers)])
    return built[layers]


def _layer_gradients(gradient_model, x, is_pneumonia):
    """One forward and backward pass: the signed logit and each layer's activations and gradients.

    The score is the logit for PNEUMONIA and its negation for NORMAL (tf-keras-vis'
    ``BinaryScore``). Returns ``score`` (b,) and a list of ``(activations, gradients)``
    of shape (b, h, w, c) per layer, in the dtype tf-keras-vis 0.8.7 computes its maps in:
    float32 when a layer computes in float16, else the layers' own (bfloat16 for a
    ``mixed_bfloat16`` member, which its ``is_mixed_precision`` does not count as mixed).
    """
    seed = tf.constant(x)
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(seed)
        logit, *features = gradient_model(seed, training=False)
        score = (2 * tf.constant(is_pneumonia.tolist(), dtype=logit.dtype) - 1.0) * tf.reshape(logit, (-1,))
    gradients = tape.gradient(score, features)
    if is_mixed_precision(gradient_model):
        score = tf.cast(score, tf.float32)
        features, gradients = ([tf.cast(t, tf.float32) for t in tensors] for tensors in (features, gradients))
    return score, list(zip(features, gradients))


def _method_cams(method, activations, gradients, score):
    """Low-resolution CAMs (b, h, w) of one layer by ``method``, scaled to [0, 1] as tf-keras-vis scales them.

    Grad-CAM weights each channel by its mean gradient; LayerCAM each position by its positive
    gradients, HiResCAM by the signed ones; Grad-CAM++ by its alpha-weighted positive
    gradients of ``exp(score)``. Each is then ReLU-clipped.
    """
    if method == "gradcam":
        cam = np.sum(np.multiply(activations, tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)), axis=-1)
    elif method == "gradcam++":
        cam = _gradcam_plus_plus(activations, gradients, score)
    else:
        weights = tf.nn.relu(gradients) if method == "layercam" else gradients
        cam = np.sum(np.multiply(activations, weights), axis=-1)
    cam = np.asarray(tf.nn.relu(cam))
    lo, hi = cam.min(axis=(1, 2), keepdims=True), cam.max(axis=(1, 2), keepdims=True)
    return (cam - lo) / (hi - lo + _EPSILON)  # a Python float keeps the maps' dtype


def _gradcam_plus_plus(activations, gradients, score):
    """Grad-CAM++'s map before the ReLU (Chattopadhyay et al., WACV 2018; tf-keras-vis' closed form).

    A float32 head on bfloat16 layers gives a float32 score, where tf-keras-vis stops with a
    dtype error: the formula then runs in float32 (its cubed gradients underflow bfloat16).
    """
    if score.dtype != gradients.dtype:
        score, activations, gradients = (tf.cast(t, tf.float32) for t in (score, activations, gradients))
    first = tf.reshape(tf.math.exp(score), (-1, 1, 1, 1)) * gradients
    second = first * gradients
    third = second * gradients
    global_sum = tf.reduce_sum(activations, axis=(1, 2), keepdims=True)
    denominator = second * 2.0 + third * global_sum
    alphas = second / (denominator + tf.cast(second == 0.0, second.dtype))
    norm = tf.reduce_sum(alphas, axis=(1, 2), keepdims=True)
    alphas = alphas / (norm + tf.cast(norm == 0.0, norm.dtype))
    weights = tf.reduce_sum(tf.nn.relu(first) * alphas, axis=(1, 2), keepdims=True)
    return tf.reduce_sum(weights * activations, axis=-1)


def _gradient_cam_batch(logit, x, is_pneumonia, requests, seconds=None):
    """Maps (b, H, W) of one batch for each ``(method, layers)`` request, from one pass over all their layers.

    ``seconds``: a list parallel to ``requests`` that each request's cost is added to (the
    shared pass, and its own arithmetic).
    """
    layers = tuple(dict.fromkeys(name for _, names in requests for name in names))
    started = time.perf_counter()
    score, pairs = _layer_gradients(_gradient_model(logit, layers), x, is_pneumonia)
    shared = time.perf_counter() - started
    per_layer, out = dict(zip(layers, pairs)), []
    upsampled = {}  # (method, layer) -> upsampled map, shared by requests that fuse the same layer
    for i, (method, names) in enumerate(requests):
        started = time.perf_counter()
        for name in names:
            if (method, name) not in upsampled:
                upsampled[method, name] = _upsample(_method_cams(method, *per_layer[name], score), x.shape[1:3])
        out.append(_fuse([upsampled[method, name] for name in names]))
        if seconds is not None:
            seconds[i] += shared + time.perf_counter() - started
    return out


class GradCAM(MapExplainer):
    """Grad-CAM (Selvaraju et al., ICCV 2017) of the logit (PNEUMONIA) or its negation.

    Parameters
    ----------
    model : keras.Model
    layer : str, default=None
        Feature layer; default the last layer with a 4-D output (``conv5_block3_out``
        for ResNet50 members). Used as given: no search for a ``Conv`` layer, which
        would skip ResNet's post-residual activation.
    layers : sequence of str, default=None
        Instead of ``layer``: several feature layers (e.g. :func:`fusion_layers`).
        Each layer's map is upsampled to the input and min-max scaled; the maps are
        fused by element-wise maximum (Jiang et al., LayerCAM, IEEE TIP 2021). One
        forward and backward pass per batch serves every layer.
    batch_size : int, default=16

    Attributes
    ----------
    layers : tuple of str
        The explained layers.
    layer : str
        The explained layer, or the last of ``layers``.
    """

    _method = "gradcam"

    def __init__(self, model, *, layer=None, layers=None, batch_size=16):
        super().__init__(model, batch_size=batch_size)
        self.layers = _feature_layers(type(self).__name__, model, layer, layers)
        self.layer = self.layers[-1]
        self._logit = _logit_model(model, type(self).__name__)

    def _explain_batch(self, x, is_pneumonia):
        return _gradient_cam_batch(self._logit, x, is_pneumonia, [(self._method, self.layers)])[0]

    def _layer_cams(self, x, is_pneumonia, layer):
        """Low-resolution CAMs (b, h, w) of one layer."""
        score, [(activations, gradients)] = _layer_gradients(_gradient_model(self._logit, (layer,)), x, is_pneumonia)
        return _method_cams(self._method, activations, gradients, score)


class GradCAMPlusPlus(GradCAM):
    """Grad-CAM++ (Chattopadhyay et al., WACV 2018); same options as :class:`GradCAM`."""

    _method = "gradcam++"


class LayerCAM(GradCAM):
    """LayerCAM (Jiang et al., IEEE TIP 2021): ``ReLU(sum_c ReLU(grad_c) * A_c)`` per position.

    Positive gradients weight each position separately instead of one weight per
    channel, so shallow layers give usable maps. Same options as :class:`GradCAM`.
    """

    _method = "layercam"


class HiResCAM(GradCAM):
    """HiResCAM (Draelos & Carin, 2020): ``ReLU(sum_c grad_c * A_c)`` per position.

    The element-wise product with signed gradients; for a global-average-pooled head it
    equals the exact contribution of each position to the logit (CAM). Same options as
    :class:`GradCAM`.
    """

    _method = "hirescam"


class _GradientCAMs(MapExplainer):
    """Several gradient CAM methods on several layer sets of one model, from one pass per batch.

    ``requests``: ``(method, layers)`` pairs, each method of :data:`GRADIENT_CAM_METHODS`
    and ``layers`` a checked tuple of feature layers. Calling it returns one map array
    per request, equal to that request's :func:`gradcam`; :attr:`seconds_per_image_`
    holds each request's cost (the shared pass and its own arithmetic) per image.
    """

    def __init__(self, model, requests, *, batch_size=16):
        super().__init__(model, batch_size=batch_size)
        self.requests = [(method, tuple(layers)) for method, layers in requests]
        self._logit = _logit_model(model, "gradcam")

    def __call__(self, images, *, target="pneumonia"):
        x, is_pneumonia = self._checked(images, target)
        out = [np.empty(x.shape[:3], np.float32) for _ in self.requests]
        seconds = [0.0] * len(self.requests)
        for batch in self._batches(x):
            for maps, batch_maps in zip(out, _gradient_cam_batch(self._logit, x[batch], is_pneumonia[batch],
                                                                 self.requests, seconds)):
                maps[batch] = batch_maps
        self.seconds_per_image_ = [s / max(len(x), 1) for s in seconds]
        return out


class _TwoClassLogits(ModelModifier):
    """Turn a (linearised) single logit ``z`` into ``[-z/2, z/2]``: softmax gives ``[1-p, p]``."""

    def __call__(self, model):
        logit = model.outputs[0]
        pair = keras.layers.Concatenate(name="normal_pneumonia_logits")(
            [keras.layers.Rescaling(-0.5)(logit), keras.layers.Rescaling(0.5)(logit)]
        )
        return keras.Model(model.inputs, pair)


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
        # tf-keras-vis reads each feature layer's output; give it the tensors of the logit model's graph.
        outputs = _graph_outputs(self._logit)
        self._penultimate = {name: _GraphLayer(name, outputs[name]) for name in self.layers}
        self._vis = Scorecam(self._logit, model_modifier=_TwoClassLogits(), clone=False)

    def _images_per_call(self, shape):
        image_bytes = 4 * int(np.prod(shape[1:]))
        n = self.batch_size
        while n > 1 and n * min(self.channels, n * self.max_n) * image_bytes > _SCORECAM_MAX_BYTES:
            n -= 1
        return n

    def _explain_batch(self, x, is_pneumonia):
        return _fuse([_upsample(self._layer_cams(x, is_pneumonia, layer), x.shape[1:3]) for layer in self.layers])

    def _layer_cams(self, x, is_pneumonia, layer):
        # Scorecam calls model.predict() without verbose=0; keep its progress bar quiet.
        with _quiet_keras_inputs(), contextlib.redirect_stdout(io.StringIO()):
            return self._vis(
                CategoricalScore(is_pneumonia.astype(int).tolist()), x,
                penultimate_layer=self._penultimate[layer], seek_penultimate_conv_layer=False,
                max_N=self.max_n, batch_size=self.batch_size, expand_cam=False,
            )


_CAM_CLASSES = dict(zip(CAM_METHODS, (GradCAM, GradCAMPlusPlus, LayerCAM, HiResCAM, ScoreCAM)))


def _cam_explainer(owner, model, method, layer, batch_size, max_n, layers=None):
    cls = _CAM_CLASSES[_choice(owner, "method", method, CAM_METHODS)]
    options = {"max_n": max_n} if cls is ScoreCAM else {}
    return cls(model, layer=layer, layers=layers, batch_size=batch_size, **options)


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
