"""The model contract checked on the graph, and a logit model that shares the user's layers.

Prototypes for issue 27, to be wired into ``models.check_classifier`` and
``explain._logit_model`` once those modules are split into packages:

- :func:`sigmoid_head` refuses a model whose output does not come from a sigmoid (a
  ``Dense`` with a sigmoid activation, or a sigmoid ``Activation`` layer), whatever values
  it happens to give, naming :func:`pneumoxai.models.adapt`;
- :func:`shared_logit_model` gives the pre-sigmoid logit of such a model by re-using its
  layers (as ``adapt`` does) instead of re-serializing it with ``keras.models.clone_model``,
  so models with ``Lambda`` or other custom layers can be explained;
- :func:`custom_layers` names the layers that only load or clone with code from outside
  Keras and pneumoxai, for a refusal in one line where a copy is unavoidable (the
  model-randomization check re-initializes a copy).
"""

import keras

from .errors import ModelContractError

__all__ = ["sigmoid_head", "shared_logit_model", "custom_layers"]

_ADAPT = "wrap it with pneumoxai.models.adapt(model, preprocess=..., positive_index=...) first"


def _is_sigmoid(activation):
    return activation is not None and keras.activations.serialize(activation) == "sigmoid"


def sigmoid_head(model, owner):
    """The layer whose sigmoid makes ``model``'s output, or a ModelContractError naming ``adapt``.

    Parameters
    ----------
    model : keras.Model
        One output of shape ``(None, 1)`` (checked by ``models.check_classifier``).
    owner : str
        The public function that checks, named in the message.

    Returns
    -------
    keras.layers.Layer
        A ``Dense`` layer with a sigmoid activation or a sigmoid ``Activation`` layer.

    Examples
    --------
    >>> inputs = keras.Input((8, 8, 3))
    >>> pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    >>> sigmoid_head(keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="p")(pooled)), "f").name
    'p'
    >>> sigmoid_head(keras.Model(inputs, keras.layers.Dense(1, name="logit")(pooled)), "f")
    Traceback (most recent call last):
    ...
    pneumoxai.errors.ModelContractError: f: the output of model ... (Dense, linear), not a sigmoid...
    """
    layer = model.outputs[0]._keras_history.operation
    activation = getattr(layer, "activation", None)
    if isinstance(layer, (keras.layers.Dense, keras.layers.Activation)) and _is_sigmoid(activation):
        return layer
    how = keras.activations.serialize(activation) if activation is not None else "no activation"
    raise ModelContractError(
        f"{owner}: the output of model {model.name!r} comes from layer {layer.name!r} ({type(layer).__name__}, "
        f"{how}), not a sigmoid, so it is not P(PNEUMONIA) whatever values it gives; {_ADAPT}.")


def shared_logit_model(model, owner):
    """A model of ``model``'s pre-sigmoid logit that shares its layers (none is re-created from its config).

    A ``Dense`` sigmoid head is replaced by a linear ``Dense`` holding a copy of its kernel
    and bias (the only new weights); a sigmoid ``Activation`` head is dropped. Every other
    layer, ``Lambda`` and custom layers included, is the model's own object, so nothing is
    serialized and later changes to the model's weights show in the logit model.

    Parameters
    ----------
    model : keras.Model
        A functional model whose output is a sigmoid (see :func:`sigmoid_head`).
    owner : str

    Returns
    -------
    keras.Model
        Same input, output ``(None, 1)`` logit: ``sigmoid(logit_model(x)) == model(x)``.

    Examples
    --------
    >>> import numpy as np
    >>> inputs = keras.Input((8, 8, 3))
    >>> x = keras.layers.Lambda(lambda t: t * 2.0 - 1.0)(inputs)
    >>> x = keras.layers.GlobalAveragePooling2D()(x)
    >>> model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))
    >>> images = np.random.default_rng(0).random((2, 8, 8, 3)).astype("float32")
    >>> logit = shared_logit_model(model, "f").predict(images, verbose=0)
    >>> bool(np.allclose(1 / (1 + np.exp(-logit)), model.predict(images, verbose=0), atol=1e-6))
    True
    """
    head = sigmoid_head(model, owner)
    features = head.input
    if isinstance(head, keras.layers.Activation):
        return keras.Model(model.inputs, features, name=f"{model.name}_logit")
    linear = keras.layers.Dense(head.units, activation=None, use_bias=head.use_bias, name=f"{head.name}_logit")
    logit = linear(features)
    linear.set_weights(head.get_weights())
    return keras.Model(model.inputs, logit, name=f"{model.name}_logit")


def custom_layers(model):
    """Names of ``model``'s layers that are ``Lambda`` layers or classes from outside Keras and pneumoxai.

    Such layers cannot be re-created from the model's config without running the user's
    code (Keras refuses a ``Lambda`` in safe mode), so a function that must copy the model
    can refuse them up front by name.

    Examples
    --------
    >>> inputs = keras.Input((8, 8, 3))
    >>> x = keras.layers.Lambda(lambda t: t, name="scale")(inputs)
    >>> custom_layers(keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x)))
    ['scale']
    """
    names = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        module = type(layer).__module__
        if isinstance(layer, keras.layers.Lambda) or not module.startswith(("keras", "pneumoxai")):
            names.append(layer.name)
    return names
