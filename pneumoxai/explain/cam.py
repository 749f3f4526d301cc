"""Class-activation maps: Grad-CAM, Grad-CAM++, LayerCAM, HiResCAM and Faster Score-CAM.

Each wraps ``tf-keras-vis`` on the model's logit model (which shares its layers); per-layer maps are upsampled here
(:func:`_upsample`) and fused by element-wise maximum (:func:`_fuse`).
"""

import contextlib
import io
import warnings

import keras
import numpy as np

with warnings.catch_warnings():
    # tf-keras-vis 0.8.7 imports zoom from the deprecated scipy.ndimage.interpolation.
    warnings.simplefilter("ignore", DeprecationWarning)
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.layercam import Layercam
    from tf_keras_vis.scorecam import Scorecam
    from tf_keras_vis.utils.model_modifiers import ModelModifier
    from tf_keras_vis.utils.scores import BinaryScore, CategoricalScore

from ._base import (CAM_METHODS, MapExplainer, _choice, _graph_outputs, _GraphLayer, _logit_model, _minmax,
                    _positive_int, _quiet_keras_inputs)
from .layers import _feature_layers

_SCORECAM_MAX_BYTES = 2**30  # cap on the masked input copies Score-CAM materialises


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


class _TwoClassLogits(ModelModifier):
    """Turn a (linearised) single logit ``z`` into ``[-z/2, z/2]``: softmax gives ``[1-p, p]``."""

    def __call__(self, model):
        logit = model.outputs[0]
        pair = keras.layers.Concatenate(name="normal_pneumonia_logits")(
            [keras.layers.Rescaling(-0.5)(logit), keras.layers.Rescaling(0.5)(logit)]
        )
        return keras.Model(model.inputs, pair)


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
        logit = _logit_model(model, type(self).__name__)
        outputs = _graph_outputs(logit)
        self._penultimate = {name: _GraphLayer(name, outputs[name]) for name in self.layers}
        self._vis = self._make_visualization(logit)

    def _make_visualization(self, logit):
        return self._visualization(logit, clone=False)

    def _explain_batch(self, x, is_pneumonia):
        return _fuse([_upsample(self._layer_cams(x, is_pneumonia, layer), x.shape[1:3]) for layer in self.layers])

    def _layer_cams(self, x, is_pneumonia, layer):
        """Low-resolution CAMs (b, h, w) of one layer."""
        with _quiet_keras_inputs():
            return self._vis(
                BinaryScore(is_pneumonia.tolist()), x,
                penultimate_layer=self._penultimate[layer], seek_penultimate_conv_layer=False, expand_cam=False,
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

    def _make_visualization(self, logit):
        return Scorecam(logit, model_modifier=_TwoClassLogits(), clone=False)

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
