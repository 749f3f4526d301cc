"""Backbones and the member graph: build_member, weights, and which layers train."""

import os
from pathlib import Path

import keras

from ..errors import ConfigError, WeightsUnavailableError, short_repr
from ..validation import SEED, Interval, Options, check_param
from .precision import PRECISIONS, _dtype_policy, resolve_precision
from .preprocess import BackbonePreprocess

# backbone -> (keras.applications constructor, preprocessing mode, last conv block layer)
BACKBONES = {
    "resnet50": ("ResNet50", "caffe", "conv5_block3_out"),
    "densenet121": ("DenseNet121", "torch", "relu"),
    "efficientnetb0": ("EfficientNetB0", "0-255", "top_activation"),
}
_WEIGHT_FILES = {
    "resnet50": "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "densenet121": "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "efficientnetb0": "efficientnetb0_notop.h5",
}


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
    check_param("build_member", "seed", seed, SEED)
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


def _flexible_twin(model):
    """A copy of ``model`` accepting any image size (global pooling makes the weights size-free)."""
    config = model.get_config()
    config["layers"][0]["config"]["batch_shape"] = [None, None, None, 3]
    twin = model.__class__.from_config(config)
    twin.set_weights(model.get_weights())
    return twin


def _head_model(model):
    """The member's head as a model on pooled backbone features; it shares the member's layers."""
    pool = model.get_layer("head_pool")
    features = keras.Input(pool.output.shape[1:], name="features")
    x = features
    for layer in model.layers[model.layers.index(pool) + 1:]:
        x = layer(x)
    return keras.Model(features, x, name=f"{model.name}_head")


def _uncompiled_copy(model):
    # Not keras.models.clone_model: it compiles the clone like the original.
    copy = model.__class__.from_config(model.get_config())
    copy.set_weights(model.get_weights())
    return copy

