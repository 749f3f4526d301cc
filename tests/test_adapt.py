"""Models pneumoxai did not train, brought to its contract by models.adapt.

Four kinds, as users bring them: a functional sigmoid model trained on caffe input
(``resnet50.preprocess_input``), the tutorial ``Sequential([Rescaling(1/255), ResNet50,
GlobalAveragePooling2D, Dense(1, sigmoid)])``, a two-unit softmax model trained on
torch input and a logit (linear) model trained on [-1, 1] input. Every check compares
pneumoxai on [0, 1] images with the original model on its own input: probabilities,
Grad-CAM and saliency against gradients taken through the original model, deletion AUC
against a hand computation.
"""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from pneumoxai import explain, models
from pneumoxai.explain.cam import _upsample
from pneumoxai.predict import predict_embeddings, predict_members
from pneumoxai.errors import ConfigError, ConstantPredictionsWarning, DataError, ModelContractError

SIZE = 32
RNG = np.random.default_rng(0)
X = RNG.random((8, SIZE, SIZE, 3)).astype(np.float32)

# kind -> (adapt's preprocess, the model's own input from [0, 1] images, as Keras' preprocess_input gives it)
OWN_INPUT = {
    "caffe": ("caffe", lambda x: keras.applications.resnet50.preprocess_input(x * 255.0)),
    "sequential": ("0-255", lambda x: x * 255.0),
    "softmax": ("torch", lambda x: keras.applications.densenet.preprocess_input(x * 255.0)),
    "logits": ("tf", lambda x: keras.applications.mobilenet_v2.preprocess_input(x * 255.0)),
}
KINDS = tuple(OWN_INPUT)


def small_cnn(units, activation, name):
    inputs = keras.Input((SIZE, SIZE, 3), name="pixels")
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv_first")(inputs)
    h = keras.layers.MaxPooling2D(name="pool")(h)
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv_last")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    return keras.Model(inputs, keras.layers.Dense(units, activation=activation, name="out")(h), name=name)


def tutorial_sequential():
    backbone = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(SIZE, SIZE, 3))
    model = keras.Sequential([keras.layers.Rescaling(1 / 255), backbone, keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(1, activation="sigmoid")], name="tutorial")
    model.build((None, SIZE, SIZE, 3))
    return model


def penultimate(model, own):
    """Input of the model's last Dense layer."""
    if isinstance(model, keras.Sequential):
        for layer in model.layers[:-1]:
            own = layer(own)
        return keras.ops.convert_to_numpy(own)
    return keras.Model(model.inputs, model.layers[-1].input).predict(own, verbose=0)


def spread_head(model, own):
    """Set the last Dense so each unit's logit has mean 0 and std 2 on ``own``: probabilities that vary."""
    dense = model.layers[-1]
    features = penultimate(model, own).astype(np.float64)
    kernel = np.random.default_rng(1).normal(size=dense.get_weights()[0].shape)
    logits = features @ kernel
    scale = 2 / logits.std(axis=0)
    dense.set_weights([(kernel * scale).astype(np.float32), (-logits.mean(axis=0) * scale).astype(np.float32)])


@pytest.fixture(scope="module")
def user_models():
    keras.utils.set_random_seed(0)
    built = {"caffe": small_cnn(1, "sigmoid", "caffe_sigmoid"), "sequential": tutorial_sequential(),
             "softmax": small_cnn(2, "softmax", "torch_softmax"), "logits": small_cnn(1, None, "tf_logits")}
    for kind, model in built.items():
        spread_head(model, OWN_INPUT[kind][1](X))
    return built


@pytest.fixture(scope="module")
def adapted(user_models):
    return {kind: models.adapt(model, preprocess=OWN_INPUT[kind][0]) for kind, model in user_models.items()}


def own_log_odds(kind, model, own):
    """The original model's log-odds of PNEUMONIA on its own input (a tensor)."""
    out = model(own, training=False)
    if kind == "logits":
        return out[:, 0]
    if kind == "softmax":
        return keras.ops.log(out[:, 1]) - keras.ops.log(out[:, 0])
    return keras.ops.log(out[:, 0]) - keras.ops.log(1 - out[:, 0])


def own_probability(kind, model, x):
    return keras.ops.convert_to_numpy(keras.ops.sigmoid(own_log_odds(kind, model, OWN_INPUT[kind][1](x))))


def own_features_and_log_odds(kind, model, x):
    """(feature map, log-odds) computed through the original model only; the feature layer of FEATURE_LAYER."""
    own = OWN_INPUT[kind][1](x)
    if kind != "sequential":
        split = keras.Model(model.inputs, [model.get_layer("conv_last").output, model.output])
        features, out = split(own, training=False)
    else:
        rescaling, backbone, pool, dense = model.layers
        split = keras.Model(backbone.inputs, [backbone.get_layer(FEATURE_LAYER[kind]).output, backbone.output])
        features, last = split(rescaling(own), training=False)
        out = dense(pool(last))
    if kind == "logits":
        return features, out[:, 0]
    if kind == "softmax":
        return features, keras.ops.log(out[:, 1]) - keras.ops.log(out[:, 0])
    return features, keras.ops.log(out[:, 0]) - keras.ops.log(1 - out[:, 0])


# conv5_block3_out is 1x1 at 32 px: Grad-CAM on it is constant, so the ResNet is explained one block earlier.
FEATURE_LAYER = {"caffe": "conv_last", "sequential": "conv4_block6_out", "softmax": "conv_last", "logits": "conv_last"}


def minmax(maps):
    flat = maps.reshape(len(maps), -1)
    span = np.ptp(flat, axis=1)
    return ((flat - flat.min(axis=1)[:, None]) / np.where(span > 0, span, 1)[:, None]).reshape(maps.shape)


@pytest.mark.parametrize("kind", KINDS)
def test_probabilities_equal_the_model_on_its_own_input(kind, user_models, adapted):
    own = own_probability(kind, user_models[kind], X)
    assert own.std() > 0.1, "the planted head should give varied probabilities"
    np.testing.assert_allclose(predict_members([adapted[kind]], X, progress=False)[:, 0], own, atol=1e-5)
    np.testing.assert_allclose(models.predict_proba(adapted[kind], X), own, atol=1e-5)
    # Without its preprocessing the same model gives other answers: the test can fail.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantPredictionsWarning)  # what wrongly scaled input often gives
        unscaled = models.predict_proba(models.adapt(user_models[kind]), X)
    assert np.abs(unscaled - own).max() > 0.05


@pytest.mark.parametrize("kind", KINDS)
def test_adapted_model_follows_the_member_contract(kind, adapted):
    model = adapted[kind]
    assert model.inputs[0].shape[1:] == (SIZE, SIZE, 3) and model.output_shape == (None, 1)
    assert [layer.name for layer in model.layers[:2]] == ["image", "preprocess"]
    assert model.layers[-1].name == "prediction"
    assert keras.activations.serialize(model.get_layer("prediction").activation) == "sigmoid"
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)


def test_nested_backbone_is_flattened_onto_the_same_layers(user_models, adapted):
    backbone = user_models["sequential"].layers[1]
    flat = adapted["sequential"]
    assert flat.get_layer("conv5_block3_out") is backbone.get_layer("conv5_block3_out")
    assert flat.get_layer("conv1_conv").kernel is backbone.get_layer("conv1_conv").kernel
    rescaling, _, pooling, _ = user_models["sequential"].layers
    own_layers = [rescaling.name] + [layer.name for layer in backbone.layers[1:]] + [pooling.name]
    assert [layer.name for layer in flat.layers] == ["image", "preprocess"] + own_layers + ["prediction"]


def test_softmax_head_becomes_the_exact_logit_difference(user_models, adapted):
    model = user_models["softmax"]
    kernel, bias = model.get_layer("out").get_weights()
    new_kernel, new_bias = adapted["softmax"].get_layer("prediction").get_weights()
    np.testing.assert_allclose(new_kernel[:, 0], kernel[:, 1] - kernel[:, 0], rtol=1e-6)
    np.testing.assert_allclose(new_bias, bias[1:] - bias[:1], rtol=1e-6)
    own = OWN_INPUT["softmax"][1](X)
    normal = models.adapt(model, preprocess="torch", positive_index=0)
    np.testing.assert_allclose(models.predict_proba(normal, X), model.predict(own, verbose=0)[:, 0], atol=1e-5)


def test_softmax_in_a_separate_activation_layer_is_split_off():
    inputs = keras.Input((SIZE, SIZE, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    logits = keras.layers.Dense(2, name="logits")(pooled)
    model = keras.Model(inputs, keras.layers.Activation("softmax", name="probs")(logits))
    model.get_layer("logits").set_weights([RNG.normal(size=(3, 2)).astype(np.float32) * 4, np.zeros(2, np.float32)])
    np.testing.assert_allclose(models.predict_proba(models.adapt(model), X), model.predict(X, verbose=0)[:, 1],
                               atol=1e-6)


def test_callable_preprocess_is_a_named_layer():
    model = small_cnn(1, "sigmoid", "scaled")
    adapted = models.adapt(model, preprocess=lambda t: (t - 0.5) * 4.0)
    assert isinstance(adapted.get_layer("preprocess"), keras.layers.Layer)
    np.testing.assert_allclose(models.predict_proba(adapted, X), model.predict((X - 0.5) * 4, verbose=0)[:, 0],
                               atol=1e-6)
    explain.gradcam(adapted, X[:2])  # the explainers clone the model, callable included


def test_adapting_a_member_keeps_its_predictions():
    member = models.build_member(SIZE, weights=None, dense_units=(4,))
    again = models.adapt(member)
    np.testing.assert_array_equal([layer.name for layer in again.layers], [layer.name for layer in member.layers])
    np.testing.assert_allclose(models.predict_proba(again, X), models.predict_proba(member, X), atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_gradcam_equals_gradients_through_the_original_model(kind, user_models, adapted):
    x = tf.convert_to_tensor(X[:4])
    with tf.GradientTape() as tape:
        tape.watch(x)
        features, log_odds = own_features_and_log_odds(kind, user_models[kind], x)
    grads = tape.gradient(log_odds, features).numpy()
    weights = grads.mean(axis=(1, 2), keepdims=True)
    reference = _upsample(np.maximum((weights * features.numpy()).sum(axis=-1), 0), (SIZE, SIZE))
    got = explain.gradcam(adapted[kind], X[:4], layer=FEATURE_LAYER[kind])
    assert np.ptp(reference.reshape(4, -1), axis=1).max() > 0, "a constant reference would compare nothing"
    np.testing.assert_allclose(got, reference, atol=2e-3)


@pytest.mark.parametrize("kind", KINDS)
def test_saliency_equals_input_gradients_of_the_original_model(kind, user_models, adapted):
    x = tf.convert_to_tensor(X[:4])
    with tf.GradientTape() as tape:
        tape.watch(x)
        log_odds = own_log_odds(kind, user_models[kind], OWN_INPUT[kind][1](x))
    reference = minmax(np.abs(tape.gradient(log_odds, x).numpy()).max(axis=-1))
    np.testing.assert_allclose(explain.saliency(adapted[kind], X[:4]), reference, atol=2e-3)


@pytest.mark.parametrize("kind", KINDS)
def test_deletion_auc_tracks_the_original_model(kind, user_models, adapted):
    maps = RNG.random((3, SIZE, SIZE)).astype(np.float32)
    steps = 4
    got = explain.deletion_auc(adapted[kind], X[:3], maps, steps=steps)
    rank = np.argsort(np.argsort(-maps.reshape(3, -1), axis=1, kind="stable"), axis=1).reshape(3, SIZE, SIZE, 1)
    counts = np.round(np.linspace(0, SIZE * SIZE, steps + 1))
    curve = np.stack([own_probability(kind, user_models[kind], np.where(rank < c, 0.0, X[:3]).astype(np.float32))
                      for c in counts])
    np.testing.assert_allclose(got, np.trapezoid(curve, dx=1 / steps, axis=0), atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_every_explanation_method_runs(kind, adapted):
    model, layer, x = adapted[kind], FEATURE_LAYER[kind], X[:2]
    # "predicted": Score-CAM weights by the target's probability on masked images, which underflows to 0 for
    # a class the image is far from.
    maps = {method: explain.gradcam(model, x, method=method, layer=layer, max_n=4, target="predicted")
            for method in explain.CAM_METHODS}
    maps["gradient shap"] = explain.shap_maps(model, x, X[4:], n_samples=4)
    maps["partition shap"] = explain.shap_maps(model, x[:1], method="partition", max_evals=16)
    for method, found in maps.items():
        assert found.shape == (len(found), SIZE, SIZE) and np.isfinite(found).all(), method
        assert np.ptp(found) > 0, f"{method} gave constant maps"


def test_cache_key_covers_the_preprocessing(tmp_path, user_models):
    model = user_models["caffe"]
    cache = tmp_path / "cache"
    with pytest.warns(ConstantPredictionsWarning):  # caffe weights on [0, 1] images, as in the issue
        plain = predict_members([models.adapt(model)], X, cache_dir=cache, progress=False)[:, 0]
    wrapped = predict_members([models.adapt(model, preprocess="caffe")], X, cache_dir=cache, progress=False)[:, 0]
    assert len(list(cache.glob("*.npz"))) == 2
    np.testing.assert_allclose(wrapped, own_probability("caffe", model, X), atol=1e-5)
    assert np.abs(wrapped - plain).max() > 0.05


@pytest.mark.filterwarnings("ignore::pneumoxai.errors.ConstantPredictionsWarning")  # first: half the scale
def test_cache_key_covers_what_a_preprocess_function_captures(tmp_path, user_models):
    def affine(factor, offset):
        def preprocess(images):
            return images * factor + offset
        return preprocess

    model, cache = user_models["logits"], tmp_path / "cache"
    first, second = (predict_members([models.adapt(model, preprocess=affine(*p))], X, cache_dir=cache,
                                     progress=False)[:, 0] for p in ((1.0, -0.5), (2.0, -1.0)))
    assert len(list(cache.glob("*.npz"))) == 2
    np.testing.assert_allclose(second, own_probability("logits", model, X), atol=1e-5)
    assert np.abs(first - second).max() > 0.05


def constant_model():
    """Probability 0.5 for every image: a zero kernel in the last layer."""
    model = small_cnn(1, "sigmoid", "constant")
    kernel, bias = model.layers[-1].get_weights()
    model.layers[-1].set_weights([np.zeros_like(kernel), bias])
    return model


def test_nearly_constant_predictions_warn(adapted):
    with pytest.warns(ConstantPredictionsWarning, match=r"nearly the same probability .*models\.adapt\(model, preprocess"):
        predict_members([constant_model()], X, progress=False)
    with pytest.warns(ConstantPredictionsWarning):
        models.predict_proba(constant_model(), X)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConstantPredictionsWarning)
        predict_members([constant_model()], X[:7], progress=False)  # too few images to tell
        predict_members([adapted["caffe"]], X, progress=False)


def _two_outputs():
    inputs = keras.Input((SIZE, SIZE, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    return keras.Model(inputs, [keras.layers.Dense(1)(pooled), keras.layers.Dense(1)(pooled)])


def _no_dense_head():
    inputs = keras.Input((SIZE, SIZE, 3))
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(1, 3)(inputs)))


def _unbuilt_sequential():
    return keras.Sequential([keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(1, activation="sigmoid")])


def _nested_functional(user_models):
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    return keras.Model(inputs, user_models["caffe"](inputs))


NAN = X.copy()
NAN[0, 0, 0, 0] = np.nan

REFUSED = [
    ("predict_members softmax", lambda m: predict_members([m["softmax"]], X, progress=False), ModelContractError,
     r"predict_members: .* outputs shape \(None, 2\), not one sigmoid unit .*pneumoxai.models.adapt"),
    ("predict_proba softmax", lambda m: models.predict_proba(m["softmax"], X), ModelContractError,
     r"predict_proba: .*\(None, 2\).*pneumoxai.models.adapt"),
    ("predict_embeddings softmax", lambda m: predict_embeddings([m["softmax"]], X, layer="gap"),
     ModelContractError, r"predict_embeddings: .*\(None, 2\).*pneumoxai.models.adapt"),
    ("gradcam softmax", lambda m: explain.gradcam(m["softmax"], X), ModelContractError,
     r"GradCAM: .*not one sigmoid unit.*pneumoxai.models.adapt"),
    ("predict_members logits", lambda m: predict_members([m["logits"]], X, progress=False), ModelContractError,
     r"predict_members: the output of model 'tf_logits' comes from layer 'out' \(Dense, linear\), not a sigmoid, "
     r"so it is not P\(PNEUMONIA\) whatever values it gives; wrap it with pneumoxai.models.adapt"),
    ("predict_proba logits", lambda m: models.predict_proba(m["logits"], X), ModelContractError,
     r"predict_proba: .*\(Dense, linear\), not a sigmoid.*pneumoxai.models.adapt"),
    ("deletion_auc logits", lambda m: explain.deletion_auc(m["logits"], X, X[..., 0]), ModelContractError,
     r"deletion_auc: .*\(Dense, linear\), not a sigmoid.*pneumoxai.models.adapt"),
    ("gradcam sequential", lambda m: explain.gradcam(m["sequential"], X), ModelContractError,
     r"is a Sequential model; .*pneumoxai.models.adapt"),
    ("gradcam nested", lambda m: explain.gradcam(_nested_functional(m), X), ModelContractError,
     r"nests the model\(s\) \['caffe_sigmoid'\].*pneumoxai.models.adapt"),
    ("predict_members NaN", lambda m: predict_members([m["caffe"]], NAN, progress=False), DataError, "NaN"),
    ("predict_proba NaN", lambda m: models.predict_proba(m["caffe"], NAN), DataError, "NaN"),
    ("predict_members not a model", lambda m: predict_members([np.zeros(3)], X, progress=False),
     ModelContractError, "must be a keras.Model; got ndarray"),
    ("adapt three classes", lambda m: models.adapt(small_cnn(3, "softmax", "three")), ModelContractError,
     r"ends in Dense\(3, activation='softmax'\).*adapt handles one sigmoid or linear unit, or two softmax"),
    ("adapt two sigmoids", lambda m: models.adapt(small_cnn(2, "sigmoid", "multilabel")), ModelContractError,
     r"Dense\(2, activation='sigmoid'\)"),
    ("adapt no dense head", lambda m: models.adapt(_no_dense_head()), ModelContractError,
     "last layer of model .* must be a Dense layer .*; got GlobalAveragePooling2D"),
    ("adapt two outputs", lambda m: models.adapt(_two_outputs()), ModelContractError, "one input and one output"),
    ("adapt unbuilt", lambda m: models.adapt(_unbuilt_sequential()), ModelContractError,
     r"no input shape yet; call model.build\(\(None, H, W, 3\)\)"),
    ("adapt preprocess", lambda m: models.adapt(m["caffe"], preprocess="imagenet"), ConfigError,
     r"The 'preprocess' parameter of adapt must be one of 'caffe', 'torch', 'tf', '0-255', '0-1' or a callable; "
     r"got 'imagenet'\."),
    ("adapt positive_index 2", lambda m: models.adapt(m["softmax"], positive_index=2), ConfigError,
     r"The 'positive_index' parameter of adapt must be None or one of 0, 1; got 2\."),
    ("adapt positive_index one unit", lambda m: models.adapt(m["caffe"], positive_index=1), ConfigError,
     r"The 'positive_index' parameter of adapt must be None for a one-unit \(sigmoid\) head; got 1\."),
    ("adapt not a model", lambda m: models.adapt("model.keras"), ModelContractError, "must be a keras.Model"),
]


@pytest.mark.parametrize("call, error, match", [case[1:] for case in REFUSED], ids=[case[0] for case in REFUSED])
def test_models_outside_the_contract_are_refused(user_models, call, error, match):
    with pytest.raises(error, match=match):
        call(user_models)
