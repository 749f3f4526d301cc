"""The model contract (one [0, 1] image input, one P(PNEUMONIA) output): check_classifier and adapt."""

import warnings

import keras
import numpy as np

from ..errors import ConstantPredictionsWarning, DataError, ModelContractError, param_error
from ..validation import Options, Predicate, check_param, check_probabilities
from .preprocess import PREPROCESS_MODES, BackbonePreprocess, _CallablePreprocess

# Nearly constant predictions over this many images or more are a sign of wrongly scaled input.
_CONSTANT_MIN_IMAGES, _CONSTANT_MAX_STD = 8, 1e-3
_ADAPT = "wrap it with pneumoxai.models.adapt(model, preprocess=..., positive_index=...) first"


def check_classifier(model, owner, *, probabilities=None, warn_constant=False):
    """Refuse a model that does not give one probability of PNEUMONIA per image.

    The contract every model entry point relies on: a ``keras.Model`` with one
    ``(None, H, W, 3)`` input and one ``(None, 1)`` output made by a sigmoid (checked on
    the graph by :func:`sigmoid_head`, so a linear unit is refused whatever values it
    gives). :func:`adapt` brings other Keras classifiers (softmax or logit heads, other
    input scalings) to it.

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
        Not a Keras model, several inputs or outputs, an output that is not one sigmoid
        unit, or probabilities that are not finite.

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
    if not isinstance(model, keras.Model):
        raise ModelContractError(f"{owner}: model must be a keras.Model; got {type(model).__name__}.")
    model_input, model_output = _single_input_output(model, owner)
    in_shape, out_shape = tuple(model_input.shape), tuple(model_output.shape)
    if len(in_shape) != 4 or in_shape[-1] != 3:
        raise ModelContractError(f"{owner}: model {model.name!r} input must be (None, H, W, 3); got {in_shape}.")
    if out_shape[1:] != (1,):
        raise ModelContractError(f"{owner}: model {model.name!r} outputs shape {out_shape}, not one sigmoid unit "
                                 f"(None, 1) = P(PNEUMONIA) per image; {_ADAPT}.")
    sigmoid_head(model, owner)
    if probabilities is None:
        return None
    try:
        proba = check_probabilities(np.asarray(probabilities).reshape(-1), owner=owner,
                                    name=f"the output of model {model.name!r}")
    except DataError as exc:  # NaN from the model itself (e.g. NaN weights)
        raise ModelContractError(str(exc)) from None
    if warn_constant and len(proba) >= _CONSTANT_MIN_IMAGES and proba.std() < _CONSTANT_MAX_STD:
        warnings.warn(
            f"{owner}: model {model.name!r} gives nearly the same probability to all {len(proba)} images "
            f"(mean {proba.mean():.4f}, std {proba.std():.2g}). Often the images are scaled differently from "
            "training: pneumoxai feeds [0, 1] images, so wrap a model trained on other input with "
            "pneumoxai.models.adapt(model, preprocess=...).", ConstantPredictionsWarning, stacklevel=3)
    return proba


def sigmoid_head(model, owner):
    """(head, features): the layer whose sigmoid makes ``model``'s output and its input tensor in ``model``'s graph.

    A ``Dense`` with a sigmoid activation or a sigmoid ``Activation`` layer; the last
    layer of a nested model counts as the model's. Anything else is refused naming
    :func:`adapt`, whatever values it gives.

    Parameters
    ----------
    model : keras.Model
        One output of shape ``(None, 1)`` (checked by :func:`check_classifier`).
    owner : str
        The public function that checks, named in the message.

    Returns
    -------
    head : keras.layers.Layer
    features : KerasTensor
        The head's input, as computed in ``model``'s graph (a layer shared with another
        model, as :func:`adapt` shares them, has one input per graph).

    Examples
    --------
    >>> inputs = keras.Input((8, 8, 3))
    >>> pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    >>> sigmoid_head(keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="p")(pooled)), "f")[0].name
    'p'
    >>> sigmoid_head(keras.Model(inputs, keras.layers.Dense(1, name="logit")(pooled)), "f")
    Traceback (most recent call last):
    ...
    pneumoxai.errors.ModelContractError: f: the output of model ... (Dense, linear), not a sigmoid...
    """
    layer, features = _producer(model.outputs[0])
    while isinstance(layer, keras.Model):  # a nested model: its own last layer makes the output
        layer, features = _producer(layer.outputs[0])
    activation = _activation_name(layer)
    if isinstance(layer, (keras.layers.Dense, keras.layers.Activation)) and activation == "sigmoid":
        return layer, features
    raise ModelContractError(
        f"{owner}: the output of model {model.name!r} comes from layer {layer.name!r} ({type(layer).__name__}, "
        f"{activation or 'no activation'}), not a sigmoid, so it is not P(PNEUMONIA) whatever values it gives; "
        f"{_ADAPT}.")


def _single_input_output(model, owner):
    """The one input and one output tensor of a Keras model, or a ModelContractError naming ``owner``."""
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError) as exc:  # a Sequential model never built or called
        raise ModelContractError(f"{owner}: model {model.name!r} has no input shape yet; call "
                                 "model.build((None, H, W, 3)) or start it with keras.Input((H, W, 3)).") from exc
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelContractError(f"{owner}: model {model.name!r} must have one input and one output; got "
                                 f"{len(inputs)} inputs and {len(outputs)} outputs.")
    return inputs[0], outputs[0]


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
    in_shape = tuple(_single_input_output(model, owner)[0].shape)
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

