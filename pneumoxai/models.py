"""ResNet50 (and DenseNet121 / EfficientNetB0) ensemble members: build, train, save, load, predict.

Members are flat Keras functional models: the backbone's layers are layers of the member
itself (``member.get_layer("conv5_block3_out")`` works), which is what Grad-CAM tools need.
Inputs are images in [0, 1] with 3 channels; a :class:`BackbonePreprocess` layer inside
the model maps them to what each backbone's pretrained weights expect.

Layer names: ``image`` (input), ``preprocess``, backbone layers as in
``keras.applications``, then ``head_pool``, ``head_dense1``, ``head_bn1``,
``head_dropout1``, ``head_dense2``, ``head_bn2``, ``head_dropout2``, ``prediction``.

Model contract, for members and any other model given to pneumoxai: one input of
(n, H, W, 3) float32 images in [0, 1], one (n, 1) output = P(PNEUMONIA) from a
sigmoid ``Dense`` layer named ``prediction``, a flat graph. :func:`check_classifier`
enforces it at every entry point; :func:`adapt` brings other Keras classifiers to it.
"""

import contextlib
import json
import importlib.metadata
import logging
import math
import os
import platform
import shutil
import time
import warnings
from pathlib import Path

import numpy as np

from . import _io
from .config import MEMBER_SPEC, check_training_modes, snapshot_name
from .errors import (CacheError, ConfigError, ConstantPredictionsWarning, DataError, ModelContractError,
                     RunFolderError, UnsafeModelError, WeightsUnavailableError, param_error, short_repr)
from .validation import Interval, Options, Predicate, check_images, check_param, check_probabilities

import keras  # noqa: E402  (after the light imports, so config errors surface before TF loads)

__all__ = [
    "BACKBONES",
    "CARD_FORMAT",
    "PRECISIONS",
    "STRATEGIES",
    "PREPROCESS_MODES",
    "SCHEDULES",
    "BackbonePreprocess",
    "CyclicSchedule",
    "adapt",
    "check_classifier",
    "build_member",
    "resolve_precision",
    "get_strategy",
    "is_chief",
    "snapshot_name",
    "train_member",
    "recalibrate_batchnorm",
    "predict_proba",
    "predict_on_padded_batch",
    "save_member",
    "load_member",
    "load_model_file",
    "read_card",
    "update_card",
    "is_member_dir",
]

CARD_FORMAT = 1
MODEL_FILE = "model.keras"
CARD_FILE = "card.json"

#: What a ``preprocess`` layer maps [0, 1] images to (see :class:`BackbonePreprocess`).
PREPROCESS_MODES = ("caffe", "torch", "tf", "0-255", "0-1")
# backbone -> (keras.applications constructor, preprocessing mode, last conv block layer)
BACKBONES = {
    "resnet50": ("ResNet50", "caffe", "conv5_block3_out"),
    "densenet121": ("DenseNet121", "torch", "relu"),
    "efficientnetb0": ("EfficientNetB0", "0-255", "top_activation"),
}
# Nearly constant predictions over this many images or more are a sign of wrongly scaled input.
_CONSTANT_MIN_IMAGES, _CONSTANT_MAX_STD = 8, 1e-3
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16", "auto")
SCHEDULES = ("plateau", "cosine", "onecycle")
INPUT_NORMS = ("none", "standardize")
SNAPSHOT_STATE = "_resume"
_LOG = logging.getLogger(__name__)
STRATEGIES = ("default", "mirrored", "multiworker")
_WEIGHT_FILES = {
    "resnet50": "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "densenet121": "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "efficientnetb0": "efficientnetb0_notop.h5",
}


@keras.saving.register_keras_serializable(package="pneumoxai")
class BackbonePreprocess(keras.layers.Layer):
    """Map [0, 1] RGB images to what a model expects.

    Parameters
    ----------
    mode : {"caffe", "torch", "tf", "0-255", "0-1"}
        ``caffe``: RGB->BGR, x255, minus the ImageNet channel means (ResNet50, VGG;
        ``keras.applications.resnet50.preprocess_input``);
        ``torch``: ImageNet mean/std standardisation (DenseNet121);
        ``tf``: [-1, 1] (MobileNet, Inception);
        ``0-255``: x255, the model normalises itself (EfficientNet, or a model that
        starts with ``Rescaling(1/255)``);
        ``0-1``: identity.
    input_norm : {"none", "standardize"}, default="none"
        ``standardize``: each image is first shifted and scaled to mean 0.5 and
        standard deviation 0.2 over its pixels, so exposure and contrast differences
        between scanners and hospitals do not reach the network. Inside the model, so
        explanations see the same input as training.
    """

    _MEANS = {"caffe": (103.939, 116.779, 123.68), "torch": (0.485, 0.456, 0.406)}
    _STDS = (0.229, 0.224, 0.225)

    def __init__(self, mode="caffe", input_norm="none", **kwargs):
        super().__init__(**kwargs)
        if mode == "raw255":  # the name in members saved before "0-255"
            mode = "0-255"
        self.mode = check_param("BackbonePreprocess", "mode", mode, Options(PREPROCESS_MODES))
        self.input_norm = check_param("BackbonePreprocess", "input_norm", input_norm, Options(INPUT_NORMS))

    def call(self, inputs):
        ops = keras.ops
        if self.input_norm == "standardize":
            mean = ops.mean(inputs, axis=(1, 2, 3), keepdims=True)
            # The floor keeps a flat (blank) image finite instead of dividing by zero.
            std = ops.maximum(ops.std(inputs, axis=(1, 2, 3), keepdims=True), 1.0 / 255.0)
            inputs = 0.5 + 0.2 * (inputs - mean) / std
        if self.mode == "0-1":
            return inputs
        if self.mode == "0-255":
            return inputs * 255.0
        if self.mode == "tf":
            return inputs * 2.0 - 1.0
        if self.mode == "caffe":
            bgr = ops.flip(inputs, axis=-1) * 255.0
            return bgr - ops.convert_to_tensor(self._MEANS["caffe"], dtype=inputs.dtype)
        mean = ops.convert_to_tensor(self._MEANS["torch"], dtype=inputs.dtype)
        std = ops.convert_to_tensor(self._STDS, dtype=inputs.dtype)
        return (inputs - mean) / std

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "input_norm": self.input_norm}


class _CallablePreprocess(keras.layers.Layer):
    """A user's preprocessing function as a layer, for :func:`adapt`.

    Unlike ``keras.layers.Lambda`` it keeps the function object in its config, so
    ``keras.models.clone_model`` (which the explainers use) works; such a model cannot
    be saved to a file: use one of :data:`PREPROCESS_MODES` for that.

    Parameters
    ----------
    function : callable
        Maps a float32 tensor of [0, 1] images (n, H, W, 3) to the model's input,
        with ``keras.ops`` (traceable).
    """

    def __init__(self, function, **kwargs):
        super().__init__(**kwargs)
        self.function = function

    def call(self, inputs):
        return self.function(inputs)

    def get_config(self):
        return {**super().get_config(), "function": self.function}


def _keras_cache_dir():
    base = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(base) / "models"


def _resolve_weights(backbone, weights):
    """Return what keras.applications should receive, or raise a clear error."""
    if weights is None:
        return None
    if weights == "imagenet":
        return "imagenet"
    path = Path(weights)
    if not path.is_file():
        raise WeightsUnavailableError(
            f"Backbone weights file {str(path)!r} does not exist. Pass weights='imagenet' to use Keras' "
            f"cache/download, weights=None to train from scratch, or the path of a '{_WEIGHT_FILES[backbone]}' "
            f"file. Received: weights={weights!r}"
        )
    return str(path)


def _reinitialize(model, seed):
    """Re-draw every initialised weight from seeded copies of its initializer.

    keras.applications offers no initializer seeds, and seeding the global RNG would
    change the caller's random state; so randomly initialised members get their
    weights re-drawn here, layer by layer, from a seed derived from ``seed`` and the layer.
    """
    for index, layer in enumerate(model.layers):
        for attr in ("kernel", "depthwise_kernel"):
            variable = getattr(layer, attr, None)
            initializer = getattr(layer, f"{attr}_initializer", None)
            if variable is None or initializer is None:
                continue
            config = initializer.get_config()
            if "seed" not in config:
                continue
            config["seed"] = int((seed * 1_000_003 + index * 7919) % (2**31 - 1))
            seeded = initializer.__class__.from_config(config)
            variable.assign(seeded(variable.shape, dtype=variable.dtype))


def _cpu_has_native_bf16():
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _has_gpu():
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def resolve_precision(precision="auto", *, force=False):
    """The Keras dtype policy a member is built with; ``"auto"`` picks it from the hardware.

    Parameters
    ----------
    precision : {"auto", "float32", "mixed_bfloat16", "mixed_float16"}, default="auto"
        ``auto``: ``mixed_bfloat16`` on a GPU or on a CPU whose ``/proc/cpuinfo``
        lists ``avx512_bf16`` or ``amx_bf16`` (1.5-2.5x faster training steps on such a
        CPU), ``float32`` elsewhere; the choice is logged. bfloat16 is never chosen
        where it would be emulated (several times slower than float32).
    force : bool, default=False
        Accept ``mixed_bfloat16`` on a CPU without native support (for testing).

    Returns
    -------
    str
        ``"float32"``, ``"mixed_bfloat16"`` or ``"mixed_float16"``.

    Raises
    ------
    ConfigError
        ``mixed_bfloat16`` asked for on a CPU that would emulate it, without ``force``.

    Examples
    --------
    >>> resolve_precision("float32")
    'float32'
    """
    check_param("resolve_precision", "precision", precision, Options(PRECISIONS))
    if precision == "float32":
        return precision
    native = _has_gpu() or _cpu_has_native_bf16()
    if precision == "auto":
        chosen = "mixed_bfloat16" if native else "float32"
        _LOG.info("precision='auto' chose %r (%s).", chosen,
                  "GPU or CPU with native bfloat16" if native else "no native bfloat16 on this CPU")
        return chosen
    if precision == "mixed_float16" and not _has_gpu():
        warnings.warn("precision='mixed_float16' without a GPU: float16 is emulated on CPUs and slower than "
                      "float32; use 'auto', 'mixed_bfloat16' on CPUs with AVX512-BF16/AMX, or 'float32'.",
                      UserWarning, stacklevel=2)
    if precision == "mixed_bfloat16" and not native and not force:
        raise ConfigError("precision='mixed_bfloat16' needs a GPU or a CPU with native bfloat16 (avx512_bf16 or "
                          "amx_bf16 in /proc/cpuinfo); this CPU would emulate it, several times slower than "
                          "float32. Use precision='auto' or 'float32', or set force_precision=true to run it anyway.")
    return precision


def _model_precision(model):
    """The dtype policy of a member's backbone (its first convolution), e.g. 'mixed_bfloat16'."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            return layer.dtype_policy.name
    return keras.config.dtype_policy().name


@contextlib.contextmanager
def _dtype_policy(precision):
    """Build layers under ``precision`` without leaving Keras' global policy changed."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def build_member(input_size=224, weights="imagenet", *, backbone="resnet50", seed=0,
                 dense_units=(512, 128), dropout=0.5, l2=1e-4, bn_momentum=None, precision="float32",
                 force_precision=False, input_norm="none", name="member"):
    """Build an ensemble member: backbone, global average pooling, and the origin's dense head.

    Head: for each width in ``dense_units``: Dense(ReLU, L2) -> BatchNorm -> Dropout;
    then Dense(1, sigmoid) named ``prediction``.

    Parameters
    ----------
    input_size : int, default=224
        Side of the square (input_size, input_size, 3) input, pixels in [0, 1].
    weights : {"imagenet", None} or path, default="imagenet"
        Backbone weights: Keras' ImageNet weights (from its cache, downloaded if
        missing), random initialisation, or a ``*_notop.h5`` file.
    backbone : {"resnet50", "densenet121", "efficientnetb0"}, default="resnet50"
    seed : int, default=0
        Seeds the head's initializers and dropout, and (with ``weights=None``) the backbone.
    dense_units : sequence of int, default=(512, 128)
    dropout : float, default=0.5
    l2 : float, default=1e-4
        L2 penalty on the dense kernels.
    bn_momentum : float, default=None
        Momentum of every batch-norm layer's moving statistics. Keras' 0.99 lags
        behind fast-changing weights when training from scratch (inference-mode
        predictions collapse to one class); 0.9 tracks them.
    precision : {"float32", "mixed_bfloat16", "mixed_float16", "auto"}, default="float32"
        Keras dtype policy of every layer but the output, which stays float32 so the
        probabilities and the loss keep full precision. Mixed precision speeds up GPUs
        (float16, with loss scaling that Keras adds at compile time) and CPUs with
        AVX512-BF16/AMX (bfloat16); elsewhere it is emulated and slower, so bfloat16 is
        refused there (see :func:`resolve_precision`; ``auto`` picks by hardware).
    force_precision : bool, default=False
        Build with ``mixed_bfloat16`` even where it would be emulated.
    input_norm : {"none", "standardize"}, default="none"
        Per-image contrast normalisation inside the ``preprocess`` layer
        (see :class:`BackbonePreprocess`).
    name : str, default="member"

    Returns
    -------
    keras.Model
        Maps (n, input_size, input_size, 3) images to (n, 1) pneumonia probabilities.

    Raises
    ------
    WeightsUnavailableError
        ImageNet weights cannot be found in Keras' cache nor downloaded, or the file
        does not exist.

    Examples
    --------
    >>> model = build_member(32, weights=None, dense_units=(8,))
    >>> model.output_shape, model.get_layer("conv5_block3_out").output.shape[1:]
    ((None, 1), (1, 1, 2048))
    """
    check_param("build_member", "backbone", backbone, Options(tuple(BACKBONES)))
    check_param("build_member", "input_size", input_size, Interval("int", 32, 1024))
    check_param("build_member", "precision", precision, Options(PRECISIONS))
    precision = resolve_precision(precision, force=force_precision)
    with _dtype_policy(precision):
        model = _build(input_size, weights, backbone, seed, dense_units, dropout, l2, name, input_norm)
    if bn_momentum is not None:
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = float(bn_momentum)
    return model


def _build(input_size, weights, backbone, seed, dense_units, dropout, l2, name, input_norm="none"):
    constructor, mode, _ = BACKBONES[backbone]
    resolved = _resolve_weights(backbone, weights)
    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = BackbonePreprocess(mode, input_norm=input_norm, name="preprocess")(inputs)
    application = getattr(keras.applications, constructor)
    try:
        base = application(include_top=False, weights=resolved, input_tensor=x)
    except WeightsUnavailableError:
        raise
    except Exception as exc:  # keras.utils.get_file raises a bare Exception when offline
        if resolved != "imagenet":
            # h5py and Keras raise OSError, ValueError, KeyError... for a file that is not these weights.
            raise WeightsUnavailableError(
                f"{str(resolved)!r} is not a weights file for {constructor} without its top "
                f"('{_WEIGHT_FILES[backbone]}'): {short_repr(str(exc).splitlines()[0] if str(exc) else exc, 200)}. "
                f"Received: weights={weights!r}") from exc
        raise WeightsUnavailableError(
            f"Could not load ImageNet weights for {constructor}: {exc}. Keras looks for "
            f"'{_WEIGHT_FILES[backbone]}' in {_keras_cache_dir()} (set KERAS_HOME to change it) and downloads it "
            "when missing. Offline, copy that file there, pass its path as weights=PATH, or use weights=None "
            f"to train from scratch. Received: weights={weights!r}"
        ) from exc
    regularizer = keras.regularizers.L2(l2) if l2 else None
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(base.output)
    for depth, units in enumerate(dense_units, start=1):
        x = keras.layers.Dense(units, activation="relu", kernel_regularizer=regularizer,
                               kernel_initializer=keras.initializers.HeNormal(seed=seed + depth),
                               name=f"head_dense{depth}")(x)
        x = keras.layers.BatchNormalization(name=f"head_bn{depth}")(x)
        x = keras.layers.Dropout(dropout, seed=seed + 100 + depth, name=f"head_dropout{depth}")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", kernel_regularizer=regularizer,
                                 kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
                                 dtype="float32", name="prediction")(x)
    model = keras.Model(inputs, outputs, name=name)
    if resolved is None:
        _reinitialize(model, seed)
    return model


def get_strategy(name="default", *, devices=None):
    """The ``tf.distribute`` strategy that training runs under.

    Parameters
    ----------
    name : {"default", "mirrored", "multiworker"}, default="default"
        ``default``: one device (TensorFlow's default placement). ``mirrored``:
        synchronous data parallelism over the GPUs of one machine (all of them unless
        ``devices`` is given). ``multiworker``: synchronous data parallelism over
        several machines, configured by the ``TF_CONFIG`` environment variable.
    devices : list of str, default=None
        Devices for ``mirrored``, e.g. ``["/gpu:0", "/gpu:1"]``.

    Returns
    -------
    tf.distribute.Strategy
        Build and train a member inside ``strategy.scope()``; ``batch_size`` stays the
        global batch, split evenly across the replicas.
    """
    import tensorflow as tf

    if name not in STRATEGIES:
        raise param_error("get_strategy", "strategy", f"one of {list(STRATEGIES)}", name)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=devices)
    if not os.environ.get("TF_CONFIG"):
        raise ConfigError("strategy 'multiworker' needs the TF_CONFIG environment variable (the cluster's "
                          "worker addresses and this worker's task); see the README's 'Scaling out'.")
    return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief(strategy):
    """Whether this process writes the run folder (always, except non-chief multi-worker tasks)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "chief" or (not has_chief and task_type == "worker" and task_id == 0)


def _backbone_layers(model):
    return [layer for layer in model.layers
            if not layer.name.startswith("head_") and layer.name not in ("image", "preprocess", "prediction")]


def _set_trainable(model, finetune_from):
    """Freeze the backbone up to ``finetune_from`` ('all' unfreezes it entirely).

    Batch-norm layers of a pretrained backbone stay frozen (inference mode) during
    fine-tuning, as Keras' transfer-learning guide recommends, so small batches do not
    wreck their ImageNet statistics.
    """
    layers = _backbone_layers(model)
    names = [layer.name for layer in layers]
    if finetune_from != "all" and finetune_from not in names:
        raise ConfigError(f"The 'finetune_from' option names no backbone layer; got {finetune_from!r} "
                          f"(e.g. 'conv5_block1_1_conv' or 'all').")
    start = 0 if finetune_from == "all" else names.index(finetune_from)
    for position, layer in enumerate(layers):
        layer.trainable = position >= start and not isinstance(layer, keras.layers.BatchNormalization)


def _freeze_backbone(model, frozen):
    for layer in _backbone_layers(model):
        layer.trainable = not frozen


class _AtomicCheckpoint(keras.callbacks.Callback):
    """Save the member whenever val_loss improves, via temp file + rename.

    ``member`` is saved rather than the model being fitted, which is only the head
    when phase 1 trains on cached backbone features.
    """

    def __init__(self, path, member, best=np.inf):
        super().__init__()
        self.path = Path(path)
        self.member = member
        self.best = best

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("val_loss")
        if loss is not None and np.isfinite(loss) and loss < self.best:
            self.best = float(loss)
            with _io.atomic_path(self.path, suffix=".keras") as tmp:
                self.member.save(tmp)


class _NonFiniteLoss(keras.callbacks.Callback):
    """Stop at the first NaN/inf loss with a clear error instead of training on garbage."""

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(loss):
            self.model.stop_training = True
            self.nonfinite = True


def recalibrate_batchnorm(model, images, *, batch_size=64, max_batches=None):
    """Recompute every batch-norm layer's moving statistics from ``images``.

    The moving averages kept during training mix statistics of older weights; after
    training from scratch they can be far from the final weights' statistics, so
    inference-mode outputs collapse to one class. This pass sets them to the exact
    average of per-batch statistics under the final weights (cumulative averaging, as
    in "precise BN", Wu & Johnson 2021), with dropout off.

    Parameters
    ----------
    model : keras.Model
    images : numpy.ndarray of shape (n_samples, H, W, 3)
        Training images without augmentation.
    batch_size : int, default=64
    max_batches : int, default=None
    """
    bn_layers = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    dropouts = [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    saved = [(layer, layer.momentum, layer.trainable) for layer in bn_layers]
    saved_rates = [(layer, layer.rate) for layer in dropouts]
    try:
        for layer in dropouts:
            layer.rate = 0.0
        for layer in bn_layers:
            layer.trainable = True
        starts = range(0, len(images), batch_size)
        if max_batches is not None:
            starts = list(starts)[:max_batches]
        for count, start in enumerate(starts, start=1):
            for layer in bn_layers:
                # new = old * m + batch * (1 - m) with m = (k-1)/k is the running mean of batch stats.
                layer.momentum = (count - 1) / count
            model(images[start:start + batch_size], training=True)
    finally:
        for layer, momentum, trainable in saved:
            layer.momentum, layer.trainable = momentum, trainable
        for layer, rate in saved_rates:
            layer.rate = rate


def predict_proba(model, images, *, batch_size=64):
    """Pneumonia probabilities of one model, shape (n_samples,), batched.

    Parameters
    ----------
    model : keras.Model
    images : numpy.ndarray of shape (n_samples, H, W, 3)
    batch_size : int, default=64

    Returns
    -------
    numpy.ndarray of shape (n_samples,), float64

    Raises
    ------
    ModelContractError
        The model does not output one probability per image (see :func:`adapt`).

    Warns
    -----
    ConstantPredictionsWarning
        Nearly the same probability for 8 or more images.
    """
    check_classifier(model, "predict_proba")
    images = _check_images(images, model)
    if len(images) == 0:
        return np.empty(0)
    if model.distribute_strategy.num_replicas_in_sync > 1:
        # predict_on_batch returns one copy of the batch per replica under a mirrored strategy.
        proba = model.predict(images, batch_size=batch_size, verbose=0)
    else:
        # predict_on_batch reuses one compiled function: no per-call tf.data setup as in
        # model.predict, and no eager layer-by-layer dispatch as in model(x).
        proba = np.concatenate([predict_on_padded_batch(model, images[start:start + batch_size], batch_size)
                                for start in range(0, len(images), batch_size)])
    return check_classifier(model, "predict_proba", probabilities=proba, warn_constant=True)


def predict_on_padded_batch(model, batch, batch_size):
    """``model.predict_on_batch`` on a batch padded to ``batch_size`` rows, padding dropped.

    One input shape means one traced function per model: a short last batch would
    retrace it (and TensorFlow would warn about retracing).

    Parameters
    ----------
    model : keras.Model
    batch : numpy.ndarray of shape (n, ...) with 1 <= n <= batch_size
    batch_size : int

    Returns
    -------
    numpy.ndarray of shape (n, ...)
    """
    n = len(batch)
    if n < batch_size:
        batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - n, axis=0)])
    return np.asarray(model.predict_on_batch(batch))[:n]


def _check_images(images, model=None, *, owner="predict_proba", name="images"):
    size = None if model is None else tuple(model.input_shape[1:3])
    return check_images(images, owner=owner, name=name, size=size)


# --------------------------------------------------------------------------- models pneumoxai did not train


def check_classifier(model, owner, *, probabilities=None, warn_constant=False):
    """Refuse a model that does not give one probability of PNEUMONIA per image.

    The contract every model entry point relies on: a ``keras.Model`` with one
    ``(None, H, W, 3)`` input and one ``(None, 1)`` output in [0, 1]. :func:`adapt`
    brings other Keras classifiers (softmax or logit heads, other input scalings) to it.

    Parameters
    ----------
    model : keras.Model
    owner : str
        The public function that checks, named in the messages.
    probabilities : array_like of shape (n_samples, 1) or (n_samples,), optional
        The model's outputs on some images; checked to be finite and in [0, 1].
    warn_constant : bool, default=False
        Warn (:class:`~pneumoxai.errors.ConstantPredictionsWarning`) when the
        ``probabilities`` of 8 or more images have a standard deviation below 1e-3.

    Returns
    -------
    numpy.ndarray of shape (n_samples,), float64, or None
        ``probabilities`` flattened, when given.

    Raises
    ------
    ModelContractError
        Not a Keras model, several inputs or outputs, an output that is not one unit,
        or probabilities outside [0, 1].

    Examples
    --------
    >>> inputs = keras.Input((8, 8, 3), name="image")
    >>> pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    >>> softmax = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(pooled))
    >>> check_classifier(softmax, "predict_proba")
    Traceback (most recent call last):
    ...
    pneumoxai.errors.ModelContractError: predict_proba: model ... outputs shape (None, 2), not one sigmoid unit ...
    """
    hint = "wrap it with pneumoxai.models.adapt(model, preprocess=..., positive_index=...) first."
    if not isinstance(model, keras.Model):
        raise ModelContractError(f"{owner}: model must be a keras.Model; got {type(model).__name__}.")
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError) as exc:  # a Sequential model never built or called
        raise ModelContractError(f"{owner}: model {model.name!r} has no input shape yet; call "
                                 "model.build((None, H, W, 3)) or start it with keras.Input((H, W, 3)).") from exc
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelContractError(f"{owner}: model {model.name!r} must have one input and one output; got "
                                 f"{len(inputs)} inputs and {len(outputs)} outputs.")
    in_shape, out_shape = tuple(inputs[0].shape), tuple(outputs[0].shape)
    if len(in_shape) != 4 or in_shape[-1] != 3:
        raise ModelContractError(f"{owner}: model {model.name!r} input must be (None, H, W, 3); got {in_shape}.")
    if out_shape[1:] != (1,):
        raise ModelContractError(f"{owner}: model {model.name!r} outputs shape {out_shape}, not one sigmoid unit "
                                 f"(None, 1) = P(PNEUMONIA) per image; {hint}")
    if probabilities is None:
        return None
    try:
        proba = check_probabilities(np.asarray(probabilities).reshape(-1), owner=owner,
                                    name=f"the output of model {model.name!r}")
    except DataError as exc:  # a linear (logit) head, or NaN from the model itself
        raise ModelContractError(f"{exc} If the model ends in a linear unit, {hint}") from None
    if warn_constant and len(proba) >= _CONSTANT_MIN_IMAGES and proba.std() < _CONSTANT_MAX_STD:
        warnings.warn(
            f"{owner}: model {model.name!r} gives nearly the same probability to all {len(proba)} images "
            f"(mean {proba.mean():.4f}, std {proba.std():.2g}). Often the images are scaled differently from "
            "training: pneumoxai feeds [0, 1] images, so wrap a model trained on other input with "
            "pneumoxai.models.adapt(model, preprocess=...).", ConstantPredictionsWarning, stacklevel=3)
    return proba


def adapt(model, *, preprocess="0-1", positive_index=None, name=None):
    """Bring a Keras classifier pneumoxai did not train to the model contract.

    The result takes pneumoxai's images (float32 in [0, 1]) and outputs
    P(PNEUMONIA) from one sigmoid unit, like a member of :func:`build_member`, so
    every prediction, explanation and faithfulness function accepts it:
    ``adapt(model, preprocess=p)(x) == model(p(x))`` to float precision.

    The graph is rebuilt layer by layer on the same layer objects (their weights are
    shared with ``model``, not copied): nested models, e.g. a ``keras.applications``
    backbone inside a ``Sequential``, are flattened so their layers are reachable by
    name (``adapted.get_layer("conv5_block3_out")``). Layers: ``image`` (input),
    ``preprocess``, the model's own layers, then ``prediction``, a ``Dense(1, sigmoid)``
    that replaces the model's last ``Dense`` (and a trailing sigmoid or softmax
    activation layer, if any) with weights computed from it at adapt time:

    - one sigmoid unit: the same kernel and bias;
    - one linear unit (a logit): the same kernel and bias, plus the sigmoid;
    - two softmax (or linear, softmax-logit) units ``z0, z1``: the logit difference
      ``z1 - z0`` as one unit, whose sigmoid is exactly the softmax probability of
      unit 1 (``positive_index`` picks the PNEUMONIA unit).

    Parameters
    ----------
    model : keras.Model
        Functional or Sequential, built, with one (None, H, W, 3) input and one
        output whose last layer is a ``Dense`` with 1 or 2 units.
    preprocess : {"caffe", "torch", "tf", "0-255", "0-1"} or callable, default="0-1"
        What the model was trained on, as a function of [0, 1] images (see
        :class:`BackbonePreprocess`): ``"caffe"`` for
        ``keras.applications.resnet50.preprocess_input`` of 0-255 pixels, ``"0-255"``
        for a model that starts with ``Rescaling(1/255)``. A callable maps a float32
        tensor of [0, 1] images to the model's input with ``keras.ops``; a model with a
        callable cannot be saved to a file.
    positive_index : {0, 1}, optional
        Two-unit heads only: the PNEUMONIA unit; default 1 (the second class in
        alphabetical order, as ``keras.utils.image_dataset_from_directory`` labels
        NORMAL/PNEUMONIA folders).
    name : str, optional
        Name of the adapted model; default the model's name.

    Returns
    -------
    keras.Model
        Maps (n_samples, H, W, 3) images in [0, 1] to (n_samples, 1) probabilities.

    Raises
    ------
    ModelContractError
        A model outside what adapt handles (several inputs or outputs, a head with
        more than two units, a last layer that is not a ``Dense``, ...).
    ConfigError
        A bad ``preprocess``, ``positive_index`` or ``name``.

    Examples
    --------
    >>> inputs = keras.Input((8, 8, 3))
    >>> pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    >>> softmax = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(pooled))
    >>> adapted = adapt(softmax, preprocess="caffe")
    >>> x = np.random.default_rng(0).random((4, 8, 8, 3)).astype("float32")
    >>> own = softmax.predict(keras.applications.resnet50.preprocess_input(x * 255), verbose=0)[:, 1]
    >>> bool(np.allclose(adapted.predict(x, verbose=0)[:, 0], own, atol=1e-6))
    True
    >>> [layer.name for layer in adapted.layers][:2], adapted.layers[-1].name
    (['image', 'preprocess'], 'prediction')
    """
    owner = "adapt"
    if not isinstance(model, keras.Model):
        raise ModelContractError(f"{owner}: model must be a keras.Model; got {type(model).__name__}.")
    check_param(owner, "name", name, (None, Predicate(lambda value: isinstance(value, str), "a str")))
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError) as exc:
        raise ModelContractError(f"{owner}: model {model.name!r} has no input shape yet; call "
                                 "model.build((None, H, W, 3)) or start it with keras.Input((H, W, 3)).") from exc
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelContractError(f"{owner}: model {model.name!r} must have one input and one output; got "
                                 f"{len(inputs)} inputs and {len(outputs)} outputs.")
    in_shape = tuple(inputs[0].shape)
    if len(in_shape) != 4 or in_shape[-1] != 3 or None in in_shape[1:3]:
        raise ModelContractError(f"{owner}: model {model.name!r} input must be (None, H, W, 3) with a fixed H and "
                                 f"W; got {in_shape}.")
    image = keras.Input(in_shape[1:], name="image")
    x = image
    layer = _preprocess_layer(preprocess, model)
    if layer is not None:
        x = layer(x)
    dense, activation, features = _last_dense(_flat_call(model, x), model)
    prediction = keras.layers.Dense(1, activation="sigmoid", use_bias=dense.use_bias, dtype="float32",
                                    name="prediction")
    probability = prediction(features)
    prediction.set_weights(_single_logit(dense, activation, positive_index))
    try:
        return keras.Model(image, probability, name=name or model.name)
    except ValueError as exc:
        if "unique" not in str(exc):
            raise
        raise ModelContractError(f"{owner}: the flattened model {model.name!r} has two layers with one name "
                                 f"(its own and a nested model's, or 'preprocess'/'prediction'): {exc}") from exc


def _preprocess_layer(preprocess, model):
    """The ``preprocess`` layer put in front of ``model``, or None."""
    check_param("adapt", "preprocess", preprocess, (Options(PREPROCESS_MODES), Predicate(callable, "a callable")))
    if callable(preprocess):
        return _CallablePreprocess(preprocess, name="preprocess")
    if preprocess == "0-1" and "preprocess" in _layer_names(model):
        return None  # e.g. a pneumoxai member: its own preprocess layer stays the one of that name
    return BackbonePreprocess(preprocess, name="preprocess")


def _layer_names(model):
    names = set()
    for layer in model.layers:
        names |= _layer_names(layer) if isinstance(layer, keras.Model) else {layer.name}
    return names


def _flat_call(operation, *args, **kwargs):
    """Call ``operation`` on symbolic tensors; a nested Sequential/functional model is replayed layer by layer.

    A ``training`` value the nested model was called with (``base(x, training=False)``
    in Keras' transfer-learning guide) is passed on to its layers.
    """
    training = kwargs.get("training")

    def inner(layer, kwargs):
        if training is not None and getattr(layer, "_call_has_training_arg", False):
            kwargs = {"training": training, **kwargs}
        return kwargs

    if isinstance(operation, keras.Sequential):
        (x,) = args
        for layer in operation.layers:
            x = _flat_call(layer, x, **inner(layer, {}))
        return x
    if isinstance(operation, keras.Model) and hasattr(operation, "_run_through_graph"):
        # Functional models replay their graph this way in their own call().
        return operation._run_through_graph(
            args[0], call_fn=lambda layer, *a, **k: _flat_call(layer, *a, **inner(layer, k)))
    return operation(*args, **kwargs)


def _producer(tensor):
    """(layer, its input tensor) that computed a symbolic tensor."""
    layer, node_index, _ = tensor._keras_history
    return layer, layer._inbound_nodes[node_index].input_tensors[0]


def _activation_name(layer):
    if isinstance(layer, keras.layers.Softmax):
        return "softmax" if layer.axis in (-1, [-1]) else None
    activation = getattr(layer, "activation", None)
    name = keras.activations.serialize(activation) if activation is not None else None
    return name if isinstance(name, str) else None


def _last_dense(output, model):
    """(last Dense layer, its head's activation name, the Dense's input tensor) of a flattened output."""
    layer, features = _producer(output)
    activation = _activation_name(layer)
    if isinstance(layer, (keras.layers.Activation, keras.layers.Softmax)):
        layer, features = _producer(features)
        if _activation_name(layer) != "linear":
            layer = None
    if not isinstance(layer, keras.layers.Dense):
        raise ModelContractError(
            f"adapt: the last layer of model {model.name!r} must be a Dense layer (optionally followed by a sigmoid or "
            f"softmax Activation layer); got {type(layer).__name__}.")
    units = layer.units
    heads = {1: ("sigmoid", "linear"), 2: ("softmax", "linear")}
    if len(output.shape) != 2 or activation not in heads.get(units, ()):
        raise ModelContractError(
            f"adapt: model {model.name!r} ends in Dense({units}, activation={activation!r}) with output shape "
            f"{tuple(output.shape)}; adapt handles one sigmoid or linear unit, or two softmax or linear units "
            "(NORMAL, PNEUMONIA).")
    return layer, activation, features


def _single_logit(dense, activation, positive_index):
    """Kernel and bias of the one unit whose sigmoid is P(PNEUMONIA)."""
    kernel, *bias = (np.asarray(w, np.float64) for w in dense.get_weights())
    if dense.units == 1:
        if positive_index is not None:
            raise param_error("adapt", "positive_index", f"None for a one-unit ({activation}) head", positive_index)
    else:
        check_param("adapt", "positive_index", positive_index, (None, Options((0, 1))))
        if positive_index is None:
            positive_index = 1
        # softmax([z0, z1])[p] = sigmoid(z_p - z_(1-p)), and z_p - z_(1-p) is linear in the features.
        other = 1 - positive_index
        kernel = kernel[:, [positive_index]] - kernel[:, [other]]
        bias = [bias[0][[positive_index]] - bias[0][[other]]] if bias else []
    return [w.astype(np.float32) for w in (kernel, *bias)]


# --------------------------------------------------------------------------- training schedules and snapshots


@keras.saving.register_keras_serializable(package="pneumoxai")
class CyclicSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Cosine (with warm restarts) or one-cycle learning rate, as a function of the step.

    Parameters
    ----------
    base_lr : float
        Peak learning rate.
    total_steps : int
        Optimiser steps of the whole run.
    kind : {"cosine", "onecycle"}, default="cosine"
        ``cosine``: ``cycles`` equal cycles, each decaying from ``base_lr`` to
        ``min_lr`` along half a cosine, then restarting (SGDR, Loshchilov & Hutter 2017;
        snapshot ensembles save a member at the end of each cycle, Huang et al. 2017).
        ``onecycle``: linear warm-up from ``base_lr / 25`` to ``base_lr`` over the
        first ``warmup_fraction`` of the steps, then a cosine decay to ``min_lr``
        (Smith & Topin 2019).
    cycles : int, default=1
    min_lr : float, default=0.0
    warmup_fraction : float, default=0.3

    Examples
    --------
    >>> schedule = CyclicSchedule(1e-3, 100, cycles=2)
    >>> [round(float(schedule(step)), 6) for step in (0, 25, 50, 75)]
    [0.001, 0.0005, 0.001, 0.0005]
    """

    def __init__(self, base_lr, total_steps, kind="cosine", cycles=1, min_lr=0.0, warmup_fraction=0.3):
        check_param("CyclicSchedule", "kind", kind, Options(("cosine", "onecycle")))
        if not isinstance(total_steps, int) or total_steps < cycles or cycles < 1:
            raise param_error("CyclicSchedule", "total_steps", f"an int >= cycles ({cycles})", total_steps)
        self.base_lr, self.total_steps, self.kind = float(base_lr), total_steps, kind
        self.cycles, self.min_lr, self.warmup_fraction = int(cycles), float(min_lr), float(warmup_fraction)

    def __call__(self, step):
        ops = keras.ops
        step = ops.cast(step, "float32")
        if self.kind == "cosine":
            length = self.total_steps / self.cycles
            position = ops.mod(step, length) / length
            return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1.0 + ops.cos(math.pi * position))
        warmup = max(1.0, self.warmup_fraction * self.total_steps)
        start = self.base_lr / 25.0
        rising = start + (self.base_lr - start) * step / warmup
        position = ops.clip((step - warmup) / max(1.0, self.total_steps - warmup), 0.0, 1.0)
        falling = self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1.0 + ops.cos(math.pi * position))
        return ops.where(step < warmup, rising, falling)

    def get_config(self):
        return {"base_lr": self.base_lr, "total_steps": self.total_steps, "kind": self.kind,
                "cycles": self.cycles, "min_lr": self.min_lr, "warmup_fraction": self.warmup_fraction}


class _SnapshotSaver(keras.callbacks.Callback):
    """At the end of every learning-rate cycle, save the weights as a member folder.

    The folder is written by :func:`save_member` (model, then card last), so a folder
    with a card always holds a finished snapshot.
    """

    def __init__(self, directory, member, cycle_epochs, n_cycles, recalibrate_images, metadata):
        super().__init__()
        self.directory, self.member = Path(directory), member
        self.cycle_epochs, self.n_cycles = cycle_epochs, n_cycles
        self.recalibrate_images, self.metadata = recalibrate_images, metadata
        self.last = None  # the final snapshot, when this call saved it

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.cycle_epochs:
            return
        index = (epoch + 1) // self.cycle_epochs
        snapshot = _uncompiled_copy(self.member)
        snapshot.set_weights(self.model.get_weights())
        if self.recalibrate_images is not None:
            recalibrate_batchnorm(snapshot, self.recalibrate_images)
        save_member(self.directory / snapshot_name(self.member.name, index), snapshot, {
            **self.metadata, "snapshot": index, "n_snapshots": self.n_cycles, "epoch": epoch + 1,
            "val_loss_at_snapshot": (logs or {}).get("val_loss")})
        if index == self.n_cycles:
            self.last = snapshot


class _ResumeState(keras.callbacks.Callback):
    """Save weights and optimiser state after every epoch, so a killed run resumes there.

    The weights file is written before the small JSON record that names its epoch, each
    atomically: a kill in between costs one epoch, never a mismatched state.
    """

    def __init__(self, directory, fingerprint):
        super().__init__()
        self.directory, self.fingerprint = Path(directory), fingerprint

    @property
    def weights_path(self):
        return self.directory / "state.weights.h5"

    @property
    def record_path(self):
        return self.directory / "state.json"

    def restore(self, model):
        """Load a saved state into ``model`` (compiled); return the epoch to resume from."""
        if not self.record_path.is_file() or not self.weights_path.is_file():
            return 0
        record = _io.read_json(self.record_path)
        if record.get("fingerprint") != self.fingerprint:
            raise ConfigError(f"{str(self.directory)!r} holds the training state of another config or data "
                              "set; delete it (or use another snapshot_dir) to start afresh.")
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(self.weights_path)
        _LOG.info("Resuming training from epoch %d (state in %s).", record["epoch"], self.directory)
        return int(record["epoch"])

    def on_epoch_end(self, epoch, logs=None):
        with _io.atomic_path(self.weights_path, suffix=".weights.h5") as tmp:
            self.model.save_weights(tmp)
        _io.write_json(self.record_path, {"epoch": epoch + 1, "fingerprint": self.fingerprint})


def _flexible_twin(model):
    """A copy of ``model`` accepting any image size (global pooling makes the weights size-free)."""
    config = model.get_config()
    config["layers"][0]["config"]["batch_shape"] = [None, None, None, 3]
    twin = model.__class__.from_config(config)
    twin.set_weights(model.get_weights())
    return twin


def _size_segments(sizes, epochs):
    """Split ``epochs`` over ``sizes`` in order, the remainder going to the last: [(size, start, end)]."""
    base, extra = divmod(epochs, len(sizes))
    segments, start = [], 0
    for position, size in enumerate(sizes):
        end = start + base + (extra if position == len(sizes) - 1 else 0)
        if end > start:
            segments.append((size, start, end))
        start = end
    return segments


def _check_training_modes(config, snapshot_dir):
    check_training_modes(config)
    if config["snapshots"] > 1 and snapshot_dir is None:
        raise ConfigError(f"snapshots={config['snapshots']} needs a snapshot_dir to save the snapshot members in.")


def _full_member_config(config):
    """``config`` with every member option (defaults filled in); unknown options are refused."""
    unknown = set(config) - set(MEMBER_SPEC)
    if unknown:
        raise ConfigError(f"Unknown member option(s) {sorted(unknown)}; valid: {sorted(MEMBER_SPEC)}.")
    return {key: config.get(key, default) for key, (default, _) in MEMBER_SPEC.items()}


def _check_training_labels(train_images, train_labels, val_images, val_labels):
    for name, labels, images in (("train", train_labels, train_images), ("val", val_labels, val_images)):
        labels = np.asarray(labels)
        if len(labels) != len(images):
            raise DataError(f"{name} has {len(images)} images but {len(labels)} labels.")
        if len(np.unique(labels)) < 2:
            raise DataError(f"The {name} data holds a single class; both NORMAL and PNEUMONIA are needed.")


def _training_phases(config, pretrained):
    """``(phase, epochs, learning rate)``: frozen then fine-tuned with pretrained weights, else one full phase."""
    if pretrained:
        return [("frozen", config["epochs_frozen"], config["learning_rate"]),
                ("finetune", config["epochs_finetune"], config["finetune_learning_rate"])]
    return [("full", config["epochs_frozen"] + config["epochs_finetune"], config["learning_rate"])]


def _compile_phase(fitted, config, learning_rate, total_steps):
    """Adam or AdamW, at a constant rate (plateau schedule) or a planned cyclic one over ``total_steps``."""
    if config["schedule"] != "plateau":
        learning_rate = CyclicSchedule(learning_rate, total_steps, kind=config["schedule"],
                                       cycles=config["snapshots"], min_lr=config["min_learning_rate"])
    optimizer = (keras.optimizers.AdamW(learning_rate, weight_decay=config["weight_decay"])
                 if config["weight_decay"] else keras.optimizers.Adam(learning_rate))
    fitted.compile(
        optimizer=optimizer,
        loss=keras.losses.BinaryCrossentropy(label_smoothing=config["label_smoothing"]),
        metrics=[keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="accuracy")],
        jit_compile=config["jit_compile"],
    )
    # Without a distribution strategy Keras creates the optimizer's variables inside the first traced
    # train step, and TensorFlow then traces that step twice: half of a small member's training time.
    with fitted.distribute_strategy.scope():
        fitted.optimizer.build(fitted.trainable_variables)


def _schedule_callbacks(config):
    """Early stopping and LR reduction on plateau; a planned schedule runs its whole course."""
    if config["schedule"] != "plateau":
        return []
    return [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=config["early_stopping_patience"],
                                      restore_best_weights=True),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=config["reduce_lr_factor"],
                                          patience=config["reduce_lr_patience"], min_lr=config["min_learning_rate"]),
    ]


def train_member(model, train_images, train_labels, val_images, val_labels, config, *,
                 checkpoint_path=None, class_weight=None, verbose="auto", snapshot_dir=None,
                 snapshot_metadata=None, callbacks=()):
    """Train a member with the origin's two-phase recipe, or a scheduled from-scratch run.

    Phase 1 trains the head with the backbone frozen (``epochs_frozen``), phase 2
    fine-tunes the backbone from ``finetune_from`` on (``epochs_finetune``, lower
    learning rate, pretrained batch-norm layers kept in inference mode). With
    ``weights=None`` nothing is pretrained, so the backbone is trained from the start
    (batch norm included) and only the first phase runs, for
    ``epochs_frozen + epochs_finetune`` epochs.

    ``schedule="plateau"`` (the origin's): Adam, early stopping on val loss (best
    weights restored) and learning-rate reduction on plateau. ``"cosine"`` and
    ``"onecycle"`` follow a planned :class:`CyclicSchedule` for the whole phase, with no
    early stopping. ``weight_decay > 0`` uses AdamW; ``label_smoothing`` smooths the
    binary cross-entropy targets. A checkpoint is kept at the lowest val loss.

    Snapshot ensembles (``snapshots=N`` with ``schedule="cosine"``, ``weights=None``):
    N cosine cycles in one run; at the end of cycle k the weights are saved as a
    member folder ``snapshot_dir/{name}_snap{k}`` (BN recalibrated if
    ``recalibrate_bn``), and after every epoch the weights and optimiser state go to
    ``snapshot_dir/_resume``, so calling again after a kill resumes at the last finished
    epoch without retraining finished snapshots.

    ``progressive_sizes`` (``weights=None``): the epochs are split over these training
    sizes in order (batches resized on the fly); the member keeps its own input size
    ``image_size`` for inference, which may exceed the last training size (FixRes).

    With ``cache_features`` (pretrained weights only), phase 1 computes the frozen
    backbone's pooled features once and trains the head on them: an order of magnitude
    faster, at the cost of no augmentation in phase 1. Call inside ``strategy.scope()``
    (see :func:`get_strategy`) to train on several devices; ``jit_compile`` turns on XLA.

    Parameters
    ----------
    model : keras.Model
        From :func:`build_member`.
    train_images, val_images : numpy.ndarray of shape (n, H, W, 3)
    train_labels, val_labels : numpy.ndarray of shape (n,)
    config : dict
        A member config (see :data:`pneumoxai.config.MEMBER_SPEC`).
    checkpoint_path : path, default=None
        Where the best model is written (atomically) during training.
    class_weight : dict, default=None
        From :func:`pneumoxai.data.balance` with ``balancing="class_weight"``.
    verbose : "auto", 0, 1 or 2
        Keras progress display.
    snapshot_dir : path, optional
        Folder for snapshot members and the resume state; needed when ``snapshots > 1``,
        optional otherwise (it then makes the run resumable).
    snapshot_metadata : dict, optional
        Added to every snapshot's card (e.g. config and data hashes).
    callbacks : sequence of keras.callbacks.Callback, default=()
        Extra callbacks, run after the built-in ones.

    Returns
    -------
    dict
        ``history`` (per-epoch metrics of each phase), ``seconds_per_epoch``,
        ``epochs_run`` (this call), ``best_val_loss``, ``precision`` (the dtype policy
        trained under), ``snapshots`` (saved snapshot folders).
    """
    from .data import make_dataset

    config = _full_member_config(config)
    train_images = _check_images(train_images, model, owner="train_member", name="train_images")
    val_images = _check_images(val_images, model, owner="train_member", name="val_images")
    _check_training_labels(train_images, train_labels, val_images, val_labels)
    seed = int(config["seed"])
    augment = dict(config["augment"] or {})
    if config["random_crop"]:
        augment["crop"] = config["random_crop"]
    pretrained = config["weights"] is not None
    phases = _training_phases(config, pretrained)
    if config["cache_features"] and not pretrained:
        raise ConfigError("cache_features needs pretrained backbone weights (a frozen phase 1); "
                          f"got weights={config['weights']!r}.")
    _check_training_modes(config, snapshot_dir)

    size = int(model.input_shape[1])
    sizes = list(config["progressive_sizes"] or [size])
    history, timings, best, saved, recalibrated = {}, [], np.inf, [], False
    checkpoint = _AtomicCheckpoint(checkpoint_path, model) if checkpoint_path else None
    for phase, epochs, learning_rate in phases:
        if epochs == 0:
            continue
        fitted = model
        if phase == "frozen":
            _freeze_backbone(model, True)
        elif phase == "finetune":
            _set_trainable(model, config["finetune_from"])
        else:
            _freeze_backbone(model, False)
            if sizes != [size]:
                fitted = _flexible_twin(model)
        segments = _size_segments(sizes, epochs) if phase == "full" else [(size, 0, epochs)]
        cached = None
        if phase == "frozen" and config["cache_features"]:
            fitted = _head_model(model)
            cached = _feature_datasets(model, train_images, train_labels, val_images, val_labels, config)
            segments = [(None, 0, epochs)]
        _compile_phase(fitted, config, learning_rate, math.ceil(len(train_images) / config["batch_size"]) * epochs)
        guard = _NonFiniteLoss()
        phase_callbacks = _schedule_callbacks(config) + [guard]
        if checkpoint is not None:
            checkpoint.member = fitted if fitted is not model and phase == "full" else model
            phase_callbacks.append(checkpoint)
        start_epoch, saver = 0, None
        if snapshot_dir is not None and phase == "full":
            if config["snapshots"] > 1:
                saver = _SnapshotSaver(
                    snapshot_dir, model, epochs // config["snapshots"], config["snapshots"],
                    train_images if config["recalibrate_bn"] else None,
                    {"config": config, "n_train": int(len(train_images)), **(snapshot_metadata or {})})
                phase_callbacks.append(saver)
            # After the snapshot saver: a kill between the two re-runs the epoch and re-saves its snapshot.
            resume = _ResumeState(Path(snapshot_dir) / SNAPSHOT_STATE, _fingerprint(config, train_labels))
            start_epoch = resume.restore(fitted)
            phase_callbacks.append(resume)
        phase_callbacks.extend(callbacks)
        started = time.perf_counter()

        def datasets(segment_size, first):
            if segment_size is None:  # phase 1 on cached backbone features
                return cached
            return (make_dataset(train_images, train_labels, batch_size=config["batch_size"], training=True,
                                 augment=augment, seed=seed + first, size=segment_size),
                    make_dataset(val_images, val_labels, batch_size=max(64, config["batch_size"]), size=segment_size))

        phase_history = _fit_segments(fitted, segments, start_epoch, datasets, class_weight, phase_callbacks, guard,
                                      verbose)
        timings.append((time.perf_counter() - started, len(phase_history.get("loss", []))))
        history[phase] = phase_history
        if phase_history.get("val_loss"):
            best = min(best, float(np.nanmin(phase_history["val_loss"])))
        if saver is not None and saver.last is not None:
            # The last snapshot is these weights, already BN-recalibrated: no second pass.
            model.set_weights(saver.last.get_weights())
            recalibrated = True
        elif fitted is not model and phase == "full":
            model.set_weights(fitted.get_weights())
        if snapshot_dir is not None and phase == "full":
            saved = [Path(snapshot_dir) / snapshot_name(model.name, k) for k in range(1, config["snapshots"] + 1)
                     if config["snapshots"] > 1]
            shutil.rmtree(Path(snapshot_dir) / SNAPSHOT_STATE, ignore_errors=True)
    if config["recalibrate_bn"] and not recalibrated:
        recalibrate_batchnorm(model, train_images)
    total_time = sum(t for t, _ in timings)
    total_epochs = sum(n for _, n in timings)
    return {
        "history": history,
        "epochs_run": total_epochs,
        "seconds_per_epoch": total_time / total_epochs if total_epochs else float("nan"),
        "train_seconds": total_time,
        "best_val_loss": best,
        "phase1_cached_features": bool(pretrained and config["cache_features"]),
        "precision": _model_precision(model),
        "snapshots": [str(path) for path in saved],
    }


def _fit_segments(fitted, segments, start_epoch, datasets, class_weight, callbacks, guard, verbose):
    """Fit over a phase's ``(input size, first epoch, last epoch)`` segments from ``start_epoch`` on.

    Returns the phase's per-epoch history; stops early when a callback stops training
    and raises on a NaN or infinite loss.
    """
    history = {}
    for segment_size, first, last in segments:
        if last <= start_epoch:
            continue
        fit_train, fit_val = datasets(segment_size, first)
        # shuffle=False: the tf.data pipeline already reshuffles every epoch with its own seed.
        fit = fitted.fit(fit_train, validation_data=fit_val, epochs=last, initial_epoch=max(first, start_epoch),
                         class_weight=class_weight, callbacks=callbacks, verbose=verbose, shuffle=False)
        for key, values in fit.history.items():
            history.setdefault(key, []).extend(float(v) for v in values)
        if getattr(guard, "nonfinite", False):
            raise DataError("Training loss became NaN or infinite; lower the learning rate or check the images.")
        if fitted.stop_training:
            break
    return history


def _fingerprint(config, train_labels):
    """What a resume state must match: the member config and the training labels."""
    import hashlib
    import json

    text = json.dumps(config, sort_keys=True, default=str) + np.asarray(train_labels).tobytes().hex()
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _head_model(model):
    """The member's head as a model on pooled backbone features; it shares the member's layers."""
    pool = model.get_layer("head_pool")
    features = keras.Input(pool.output.shape[1:], name="features")
    x = features
    for layer in model.layers[model.layers.index(pool) + 1:]:
        x = layer(x)
    return keras.Model(features, x, name=f"{model.name}_head")


def _feature_datasets(model, train_images, train_labels, val_images, val_labels, config):
    """Pooled features of the frozen backbone, computed once, as training and validation datasets."""
    from .data import make_dataset

    extractor = keras.Model(model.inputs, model.get_layer("head_pool").output)
    batch = max(64, config["batch_size"])

    def features(images):
        return np.concatenate([np.asarray(extractor.predict_on_batch(images[start:start + batch]), np.float32)
                               for start in range(0, len(images), batch)])

    train = make_dataset(features(train_images), train_labels, batch_size=config["batch_size"], training=True,
                         seed=int(config["seed"]))
    val = make_dataset(features(val_images), val_labels, batch_size=batch)
    return train, val


def _versions():
    versions = {"python": platform.python_version()}
    for package in ("pneumoxai", "tensorflow", "keras", "numpy", "scikit-learn"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def is_member_dir(path):
    """True when ``path`` holds a complete saved member (its card is written last): a model, or the
    predictions of an imported member."""
    path = Path(path)
    return (path / CARD_FILE).is_file() and ((path / MODEL_FILE).is_file() or (path / "predictions.csv").is_file())


def save_member(directory, model, metadata=None):
    """Save a member as ``model.keras`` plus a JSON card, each written atomically.

    The card is written last and records the model file's SHA-256, so a directory with a
    card always holds a complete, verifiable model.

    Parameters
    ----------
    directory : path
    model : keras.Model
    metadata : dict, default=None
        Config, data manifest hash, seed, sizes, history, validation metrics...

    Returns
    -------
    dict
        The card as written.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model_path = directory / MODEL_FILE
    if getattr(model, "optimizer", None) is not None:
        # A .keras file keeps a compiled model's optimizer state (Adam: twice the weights);
        # members are only ever loaded for inference, so save an uncompiled copy.
        model = _uncompiled_copy(model)
    with _io.atomic_path(model_path, suffix=".keras") as tmp:
        model.save(tmp)
    card = dict(metadata or {})
    card.update({
        "format": CARD_FORMAT,
        "model_file": MODEL_FILE,
        "model_sha256": _io.sha256_file(model_path),
        "input_size": int(model.input_shape[1]),
        "precision": _model_precision(model),
        "versions": _versions(),
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    _io.write_json(directory / CARD_FILE, card)
    return card


def update_card(directory, fields):
    """Add ``fields`` to a saved member's card (atomically); the model file is untouched, so its
    recorded hash stays valid. Returns the updated card."""
    card = {**read_card(directory), **fields}
    _io.write_json(Path(directory) / CARD_FILE, card)
    return card


def _uncompiled_copy(model):
    # Not keras.models.clone_model: it compiles the clone like the original.
    copy = model.__class__.from_config(model.get_config())
    copy.set_weights(model.get_weights())
    return copy


def read_card(directory):
    """The JSON card of a saved member, checked for this version's card format.

    Raises
    ------
    RunFolderError
        Missing files, a damaged card, or a card from another card format.
    """
    directory = Path(directory)
    if not is_member_dir(directory):
        raise RunFolderError(f"{str(directory)!r} is not a saved member (needs {MODEL_FILE} and {CARD_FILE}).")
    try:
        card = _io.read_json(directory / CARD_FILE)
    except CacheError as exc:
        raise RunFolderError(f"The card of member {str(directory)!r} is damaged ({exc}); retrain the member.") from None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        found = card.get("format") if isinstance(card, dict) else type(card).__name__
        raise RunFolderError(
            f"Member {str(directory)!r} was saved with card format {short_repr(found)}; this version reads format "
            f"{CARD_FORMAT}. Retrain it.")
    needed = ("predictions_sha256",) if card.get("kind") == "predictions" else ("input_size", "model_sha256")
    if any(card.get(key) is None for key in needed):
        raise RunFolderError(f"The card of member {str(directory)!r} lacks {' or '.join(needed)}; re-create it.")
    return card


def _load_error(model_path, exc):
    """One readable error for a model file Keras refuses to load."""
    text = str(exc)
    first = short_repr(text.splitlines()[0] if text else type(exc).__name__, 300)
    if "TFSMLayer" in text:
        return UnsafeModelError(f"Refusing to load {str(model_path)!r}: it wraps a TensorFlow SavedModel "
                                "(TFSMLayer), which pneumoxai does not load. Save the model as a plain Keras model.")
    if "safe_mode" in text or "lambda" in text.lower():
        return UnsafeModelError(
            f"Refusing to load {str(model_path)!r}: it contains a Lambda layer or other code that only loads "
            "with safe_mode=False, which would run arbitrary code from the file. Rebuild the model without "
            "Lambda layers (pneumoxai members never need them).")
    if "Could not locate" in text or "custom" in text.lower() or "module" in text.lower():
        return UnsafeModelError(f"Refusing to load {str(model_path)!r}: it names a class or function that is not a "
                                f"registered Keras or pneumoxai object ({first}).")
    return RunFolderError(f"{str(model_path)!r} could not be loaded as a Keras model: {first}")


def load_member(directory, *, verify=True):
    """Load a saved member with Keras safe mode; return ``(model, card)``.

    Parameters
    ----------
    directory : path
    verify : bool, default=True
        Check the model file against the SHA-256 recorded in the card.

    Raises
    ------
    RunFolderError
        Missing files, a card from another card format, or a model file that does not
        match its recorded hash (corrupt or replaced).
    UnsafeModelError
        The model needs unsafe deserialization (a Lambda layer, arbitrary code).
    """
    directory = Path(directory)
    card = read_card(directory)
    if card.get("kind") == "predictions":
        raise RunFolderError(f"Member {str(directory)!r} holds imported predictions, not a model to load.")
    model_path = directory / MODEL_FILE
    if verify and _io.sha256_file(model_path) != card.get("model_sha256"):
        raise RunFolderError(f"{str(model_path)!r} does not match the hash in its card: it is corrupt or was replaced.")
    return load_model_file(model_path), card


def _saved_layer_names(directory):
    """Names of a saved member's top-level layers, read from its ``.keras`` file without building the model.

    What ``model.get_layer`` finds after :func:`load_member`, for a few kilobytes of JSON
    instead of deserializing every weight.
    """
    import zipfile

    model_path = Path(directory) / MODEL_FILE
    try:
        with zipfile.ZipFile(model_path) as archive:
            config = json.loads(archive.read("config.json"))
        return {layer["config"]["name"] for layer in config["config"]["layers"]}
    except (OSError, KeyError, TypeError, ValueError, zipfile.BadZipFile) as exc:
        raise RunFolderError(f"{str(model_path)!r} is not a readable Keras model file.") from exc


def load_model_file(path):
    """Load a ``.keras`` file with Keras safe mode and no optimizer; any refusal is one pneumoxai error.

    Raises
    ------
    UnsafeModelError
        Code that only loads with ``safe_mode=False`` (a Lambda layer), unregistered
        classes or functions, a wrapped TensorFlow SavedModel.
    RunFolderError
        Any other file Keras cannot load.
    """
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # Keras raises many types for hostile or foreign files; each becomes one line
        raise _load_error(path, exc) from exc

