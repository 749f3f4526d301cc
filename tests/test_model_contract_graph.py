"""The model contract checked on the graph, and explanations of models with Lambda layers (issue 27).

``models.check_classifier`` refuses a head that is not a sigmoid whatever values it gives;
the explainers explain a user's live model through a logit model that shares its layers,
so a ``Lambda`` preprocessing layer gives the maps of the same model fed pre-transformed
images; the randomization check, which needs a copy, refuses such a model in one line.
"""

import warnings

import keras
import numpy as np
import pytest

from pneumoxai import explain, models
from pneumoxai.errors import ConstantPredictionsWarning, ModelContractError
from pneumoxai.explain._base import shared_logit_model
from pneumoxai.explain.sanity import _custom_layers
from pneumoxai.models import check_classifier
from pneumoxai.predict import predict_members

IMAGES = np.random.default_rng(0).random((6, 8, 8, 3)).astype(np.float32)


def _model(head, *, lambda_layer=False):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Lambda(lambda t: t * 0.5 + 0.25, name="rescale")(inputs) if lambda_layer else inputs
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
    assert check_classifier(_model(HEADS[head]), "f") is None


def _linear_in_0_1():
    """A linear head whose values all lie in [0, 1]: a check on the values alone would accept it."""
    model = _model(HEADS["dense-linear"])
    model.get_layer("p").set_weights([np.full((4, 1), 0.01, np.float32), np.array([0.5], np.float32)])
    values = model.predict(IMAGES, verbose=0)
    assert ((values > 0.4) & (values < 0.6)).all() and values.std() > 1e-4
    return model


REFUSED_HEADS = [
    ("linear", lambda: _model(HEADS["dense-linear"]),
     r"f: the output of model 'user' comes from layer 'p' \(Dense, linear\), not a sigmoid"),
    ("relu", lambda: _model(HEADS["dense-relu"]), r"layer 'p' \(Dense, relu\)"),
    ("reshape", lambda: _model(HEADS["pooling-last"]), r"layer 'p' \(Reshape, no activation\)"),
    ("linear with values in [0, 1]", _linear_in_0_1, r"layer 'p' \(Dense, linear\), not a sigmoid"),
]


@pytest.mark.parametrize("build, match", [case[1:] for case in REFUSED_HEADS], ids=[case[0] for case in REFUSED_HEADS])
def test_a_head_that_is_not_a_sigmoid_is_refused_naming_adapt(build, match):
    with pytest.raises(ModelContractError, match=match + r".*pneumoxai\.models\.adapt"):
        check_classifier(build(), "f")


# Every entry point goes through check_classifier: the linear head whose values lie in [0, 1] is refused by each.
ENTRY_POINTS = [
    ("predict_proba", lambda m: models.predict_proba(m, IMAGES)),
    ("predict_members", lambda m: predict_members([m], IMAGES, progress=False)),
    ("GradCAM", lambda m: explain.gradcam(m, IMAGES)),
    ("SaliencyMap", lambda m: explain.saliency(m, IMAGES)),
    ("GradientSHAP", lambda m: explain.shap_maps(m, IMAGES, IMAGES)),
    ("deletion_auc", lambda m: explain.deletion_auc(m, IMAGES, IMAGES[..., 0])),
    ("randomization_check", lambda m: explain.randomization_check(m, IMAGES)),
]


@pytest.mark.parametrize("owner, call", ENTRY_POINTS, ids=[case[0] for case in ENTRY_POINTS])
def test_every_entry_point_refuses_a_linear_head_in_0_1(owner, call):
    with pytest.raises(ModelContractError, match=rf"^{owner}: the output of model 'user' comes from layer 'p' "
                                                 r"\(Dense, linear\), not a sigmoid.*pneumoxai\.models\.adapt"):
        call(_linear_in_0_1())


def test_adapting_the_linear_head_is_accepted_everywhere():
    adapted = models.adapt(_linear_in_0_1())
    linear = _linear_in_0_1()
    expected = 1 / (1 + np.exp(-linear.predict(IMAGES, verbose=0)[:, 0]))
    np.testing.assert_allclose(models.predict_proba(adapted, IMAGES), expected, atol=1e-6)
    assert explain.gradcam(adapted, IMAGES, layer="conv").shape == (6, 8, 8)


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


def _twins():
    """A model with a Lambda rescaling, and a model of the same weights fed pre-rescaled images."""
    with_lambda = _model(HEADS["dense-sigmoid"], lambda_layer=True)
    with_lambda.get_layer("p").set_weights([np.array([[3.0], [-2.0], [1.0], [2.5]], np.float32),
                                            np.array([0.1], np.float32)])
    plain = _model(HEADS["dense-sigmoid"])
    plain.set_weights(with_lambda.get_weights())
    return with_lambda, plain


def _rescale(x):
    return x * 0.5 + 0.25  # the Lambda's transform, kept inside [0, 1] so the twin's input is valid too


MAPS = {
    "gradcam": lambda m, x, bg: explain.gradcam(m, x, layer="conv"),
    "layercam": lambda m, x, bg: explain.gradcam(m, x, method="layercam", layer="conv"),
    # min-max scaled |gradient|: the chain rule's factor 0.5 cancels
    "saliency": lambda m, x, bg: explain.saliency(m, x),
    # expected gradients: (x - b) d/dx = (x' - b') d/dx' for the transformed background b'
    "shap gradient": lambda m, x, bg: explain.shap_maps(m, x, bg, n_samples=8, seed=3),
    # the blur masker commutes with an affine transform
    "shap partition": lambda m, x, bg: explain.shap_maps(m, x, method="partition", max_evals=32, seed=3),
}


@pytest.mark.parametrize("method", MAPS)
def test_a_live_model_with_a_lambda_layer_is_explained_as_its_twin_on_transformed_input(method):
    with_lambda, plain = _twins()
    x, background = IMAGES[:3], IMAGES[3:]
    maps = MAPS[method](with_lambda, x, background)
    twin = MAPS[method](plain, _rescale(x), _rescale(background))
    assert np.abs(maps).max() > 1e-3 and np.ptp(maps) > 1e-3
    np.testing.assert_allclose(maps, twin, atol=1e-4 * np.abs(twin).max())


def test_the_randomization_check_refuses_a_lambda_layer_in_one_line():
    with pytest.raises(ModelContractError, match=r"^randomization_check: model 'user' has Lambda or custom layers "
                                                 r"\['rescale'\], which a copy cannot re-create .*skip the check"):
        explain.randomization_check(_twins()[0], IMAGES, layer="conv")
    assert _custom_layers(_twins()[1]) == []


def test_the_layer_choice_skips_the_randomization_check_of_a_lambda_model_with_a_warning():
    with pytest.warns(UserWarning, match=r"compare_layers: .*\['rescale'\].*The randomization check is skipped"):
        table = explain.compare_layers(_twins()[0], IMAGES, ["conv"], methods=("gradcam",), steps=4,
                                       fractions=(0.5,))
    assert table["randomization_spearman"].isna().all()
    assert np.isfinite(table["road_gap"]).all()
    choice, scored = explain.choose_map_method(table)
    assert "randomization check (skipped: the model has Lambda or custom layers" in choice["reason"]
    # Judged by ROAD alone: the candidate passes the skipped check exactly when it beats random maps.
    assert scored["passes_randomization"].tolist() == [True, False]
    assert scored["chosen"].tolist() == [True, False]


def test_explainers_warn_like_predict_members_on_nearly_constant_outputs():
    model = _model(HEADS["dense-sigmoid"])
    model.get_layer("p").set_weights([np.zeros((4, 1), np.float32), np.array([2.0], np.float32)])
    images = np.random.default_rng(1).random((8, 8, 8, 3)).astype(np.float32)
    with pytest.warns(ConstantPredictionsWarning) as predicted:
        predict_members([model], images, progress=False)
    with pytest.warns(ConstantPredictionsWarning) as explained:
        explain.gradcam(model, images, layer="conv")
    expected = str(predicted[0].message).replace("predict_members", "GradCAM")
    assert str(explained[0].message) == expected
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConstantPredictionsWarning)
        explain.gradcam(_twins()[1], images, layer="conv")  # outputs that vary: no warning
