"""One forward and backward pass per batch for every gradient CAM method and layer: the maps equal
tf-keras-vis' per-method, per-layer maps (the path before the shared pass) to float tolerance."""

import warnings

import keras
import numpy as np
import pytest

from pneumoxai import explain
from pneumoxai.explain._base import _graph_outputs, _GraphLayer, _logit_model
from pneumoxai.explain.cam import _fuse, _GradientCAMs, _upsample
from pneumoxai.explain.choice import compare_layers
from pneumoxai.explain.ensemble import _ensemble_gradient_cams
from pneumoxai.explain.faithfulness import deletion_auc
from pneumoxai.explain.road import road
from pneumoxai.explain.sanity import _randomized_copy, _spearman_rows

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.layercam import Layercam
    from tf_keras_vis.utils.scores import BinaryScore

SIDE = 24
STAGES = ("conv_a", "conv_b", "conv_c")  # 24, 12 and 6 px: three resolutions, as a ResNet's stage outputs
METHODS = ("gradcam", "gradcam++", "layercam", "hirescam")


def three_stage_cnn(seed, dtype="float32"):
    init = keras.initializers.GlorotUniform(seed)
    conv = dict(padding="same", activation="relu", kernel_initializer=init, dtype=dtype)
    inputs = keras.Input((SIDE, SIDE, 3), name="image")
    h = keras.layers.Conv2D(6, 3, name="conv_a", **conv)(inputs)
    h = keras.layers.Conv2D(8, 3, strides=2, name="conv_b", **conv)(h)
    h = keras.layers.Conv2D(8, 3, strides=2, name="conv_c", **conv)(h)
    h = keras.layers.Flatten(dtype=dtype)(h)  # not pooled, so Grad-CAM and HiResCAM differ on the last layer too
    # The sigmoid head in float32, as Keras' mixed-precision guide has it (and pneumoxai's members).
    out = keras.layers.Dense(1, activation="sigmoid", kernel_initializer=init, dtype="float32", name="prediction")(h)
    return keras.Model(inputs, out)


def per_method_maps(model, x, is_pneumonia, method, layers):
    """The maps as the explainers made them before the shared pass: tf-keras-vis, one call per layer."""
    logit = _logit_model(model, "test")
    outputs = _graph_outputs(logit)
    vis, options = {"gradcam": (Gradcam, {}), "gradcam++": (GradcamPlusPlus, {}), "layercam": (Layercam, {}),
                    "hirescam": (Layercam, {"gradient_modifier": None})}[method]
    cams = []
    for name in layers:
        low = vis(logit, clone=False)(BinaryScore(is_pneumonia.tolist()), [x],
                                      penultimate_layer=_GraphLayer(name, outputs[name]),
                                      seek_penultimate_conv_layer=False, expand_cam=False, **options)
        cams.append(_upsample(low, x.shape[1:3]))
    return _fuse(cams)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.random((5, SIDE, SIDE, 3)).astype(np.float32)
    return {"model": three_stage_cnn(0), "x": x, "target": np.array([True, False, True, True, False])}


@pytest.mark.parametrize("dtype", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_maps_are_computed_in_the_dtype_tf_keras_vis_uses(data, dtype):
    # tf-keras-vis casts to float32 for float16 layers only: a bfloat16 member's maps are bfloat16 arithmetic.
    model, x, target = three_stage_cnn(0, dtype), data["x"], data["target"]
    requests = [(method, STAGES) for method in METHODS]
    for (method, layers), maps in zip(requests, _GradientCAMs(model, requests)(x, target=target)):
        if method == "gradcam++" and dtype == "mixed_bfloat16":
            # tf-keras-vis multiplies the float32 score into bfloat16 gradients and stops; here it is cast.
            assert np.isfinite(maps).all() and maps.max() == 1
            continue
        np.testing.assert_array_equal(maps, per_method_maps(model, x, target, method, layers), err_msg=method)
    assert not np.array_equal(maps, per_method_maps(three_stage_cnn(0), x, target, method, layers))


@pytest.mark.parametrize("layers", [("conv_c",), ("conv_b",), ("conv_a",), STAGES])
def test_shared_pass_equals_the_per_method_maps(data, layers):
    model, x, target = data["model"], data["x"], data["target"]
    requests = [(method, layers) for method in METHODS]
    shared = _GradientCAMs(model, requests, batch_size=2)(x, target=target)  # batches of 2, 2 and 1 image
    for (method, _), maps in zip(requests, shared):
        expected = per_method_maps(model, x, target, method, layers)
        assert expected.std() > 0.05  # not a constant map that anything would match
        np.testing.assert_allclose(maps, expected, atol=1e-5, err_msg=method)
        np.testing.assert_allclose(explain.gradcam(model, x, method=method, layers=layers, target=target),
                                   expected, atol=1e-5, err_msg=method)


def test_one_pass_serves_requests_of_different_layer_sets(data):
    model, x, target = data["model"], data["x"], data["target"]
    requests = [("gradcam", ("conv_c",)), ("layercam", STAGES), ("hirescam", ("conv_b", "conv_c"))]
    shared = _GradientCAMs(model, requests)(x, target=target)
    for (method, layers), maps in zip(requests, shared):
        np.testing.assert_allclose(maps, per_method_maps(model, x, target, method, layers), atol=1e-5)
    # Grad-CAM and HiResCAM of the same unpooled layer are different maps, not one reused.
    assert np.abs(shared[0] - _GradientCAMs(model, [("hirescam", ("conv_c",))])(x, target=target)[0]).max() > 0.05


def test_ensemble_gallery_maps_equal_ensemble_gradcam_per_method(data):
    members, x = [data["model"], three_stage_cnn(1)], data["x"]
    requests = [("gradcam", None), ("layercam", "auto"), ("hirescam", "auto"), ("gradcam++", None)]
    shared = _ensemble_gradient_cams(members, x, requests, weights=[2, 1], target="predicted", size=32)
    for (method, layers), maps in zip(requests, shared):
        expected, _ = explain.ensemble_gradcam(members, x, weights=[2, 1], method=method, layers=layers,
                                               target="predicted", size=32)
        np.testing.assert_allclose(maps, expected, atol=1e-5, err_msg=method)


def test_compare_layers_scores_the_per_method_maps(data):
    """Every score of the layer choice equals the score of the per-method maps (and their randomized copy's)."""
    model, x, target = data["model"], data["x"], data["target"]
    specs = [("conv_c",), ("conv_a",), ("conv_a", "conv_c")]
    methods = ["gradcam", "hirescam"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = compare_layers(model, x, specs, methods=methods, target=target, steps=5, fractions=(0.3, 0.6),
                               n_randomized=1, seed=3)
    copy = _randomized_copy(model, ["prediction"], 3)  # n_randomized=1: the head, for every candidate
    for method in methods:
        for spec in specs:
            row = table[(table["method"] == method) & (table["layer"] == "+".join(spec))].iloc[0]
            maps = per_method_maps(model, x, target, method, spec)
            morf = road(model, x, maps, order="morf", fractions=(0.3, 0.6), target=target, seed=3).mean()
            lerf = road(model, x, maps, order="lerf", fractions=(0.3, 0.6), target=target, seed=3).mean()
            assert row["road_gap"] == pytest.approx(lerf - morf, abs=1e-6)
            assert row["deletion_auc"] == pytest.approx(deletion_auc(model, x, maps, steps=5, target=target).mean(),
                                                        abs=1e-6)
            spearman = np.nanmedian(_spearman_rows(maps, per_method_maps(copy, x, target, method, spec)))
            assert row["randomization_spearman"] == pytest.approx(spearman, abs=1e-6)
            assert row["seconds_per_image"] > 0
