"""Which layers a class-activation map is computed on: the feature layer, fusion layers, candidates."""

import keras

from ..errors import ConfigError, param_error
from ._base import _positive_int

#: The stage outputs :func:`fusion_layers` picks for a ResNet50 member (1/8, 1/16, 1/32 of the input side).
RESNET50_FUSION_LAYERS = ("conv3_block4_out", "conv4_block6_out", "conv5_block3_out")


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
