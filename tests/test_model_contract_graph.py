"""Prototype graph checks of the model contract (pneumoxai._model_contract_graph), to be wired in after the split."""

import keras
import numpy as np
import pytest

from pneumoxai._model_contract_graph import custom_layers, shared_logit_model, sigmoid_head
from pneumoxai.errors import ModelContractError

IMAGES = np.random.default_rng(0).random((6, 8, 8, 3)).astype(np.float32)


def _model(head, *, lambda_layer=False):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Lambda(lambda t: t * 2.0 - 1.0, name="rescale")(inputs) if lambda_layer else inputs
    x = keras.layers.Conv2D(4, 3, name="conv", kernel_initializer=keras.initializers.GlorotUniform(0))(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    for layer in head():
        x = layer(x)
    return keras.Model(inputs, x, name="user")


HEADS = {
    "dense-sigmoid": lambda: [keras.layers.Dense(1, activation="sigmoid", name="p")],
    "activation-sigmoid": lambda: [keras.layers.Dense(1, name="z"), keras.layers.Activation("sigmoid", name="p")],
    "dense-linear": lambda: [keras.layers.Dense(1, name="p")],
    "dense-relu": lambda: [keras.layers.Dense(1, activation="relu", name="p")],
    "pooling-last": lambda: [keras.layers.Dense(1, activation="sigmoid"), keras.layers.Reshape((1,), name="p")],
}


@pytest.mark.parametrize("head", ["dense-sigmoid", "activation-sigmoid"])
def test_a_sigmoid_head_is_accepted(head):
    assert sigmoid_head(_model(HEADS[head]), "f").name == "p"


@pytest.mark.parametrize("head, match", [
    ("dense-linear", r"f: the output of model 'user' comes from layer 'p' \(Dense, linear\), not a sigmoid"),
    ("dense-relu", r"layer 'p' \(Dense, relu\)"),
    ("pooling-last", r"layer 'p' \(Reshape, no activation\)"),
], ids=["linear", "relu", "reshape"])
def test_a_head_that_is_not_a_sigmoid_is_refused_naming_adapt(head, match):
    with pytest.raises(ModelContractError, match=match + r".*pneumoxai\.models\.adapt"):
        sigmoid_head(_model(HEADS[head]), "f")


def test_a_linear_head_is_refused_even_when_its_values_lie_in_0_1():
    model = _model(HEADS["dense-linear"])
    model.get_layer("p").set_weights([np.zeros((4, 1), np.float32), np.array([0.5], np.float32)])
    assert np.allclose(model.predict(IMAGES, verbose=0), 0.5)  # values a check on values would accept
    with pytest.raises(ModelContractError, match="not a sigmoid"):
        sigmoid_head(model, "f")


@pytest.mark.parametrize("head", ["dense-sigmoid", "activation-sigmoid"])
def test_the_logit_model_shares_the_layers_of_a_model_with_a_lambda_layer(head):
    model = _model(HEADS[head], lambda_layer=True)
    model.get_layer("p" if head == "dense-sigmoid" else "z").set_weights(
        [np.full((4, 1), 3.0, np.float32), np.array([0.1], np.float32)])
    logit_model = shared_logit_model(model, "f")
    logit = logit_model.predict(IMAGES, verbose=0)
    np.testing.assert_allclose(1 / (1 + np.exp(-logit)), model.predict(IMAGES, verbose=0), atol=1e-6)
    assert logit.std() > 1e-3  # the comparison separates images
    assert logit_model.get_layer("rescale") is model.get_layer("rescale")  # the user's Lambda, not a copy
    model.get_layer("conv").set_weights([w * 2 for w in model.get_layer("conv").get_weights()])
    assert not np.allclose(logit_model.predict(IMAGES, verbose=0), logit)  # shared weights follow the model
    assert keras.activations.serialize(model.get_layer("p").activation) == "sigmoid"  # the model is untouched


def test_custom_layers_are_named():
    assert custom_layers(_model(HEADS["dense-sigmoid"], lambda_layer=True)) == ["rescale"]
    assert custom_layers(_model(HEADS["dense-sigmoid"])) == []
