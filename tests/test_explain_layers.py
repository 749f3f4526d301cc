"""Finer maps, ROAD and per-slice explanations, with known answers.

A deeper tiny CNN learns "PNEUMONIA = a bright 6x6 square somewhere in a 48x48 image"
(a bar of the same brightness distracts). Its last conv map is 3x3, so one cell covers
16x16 pixels: a last-layer map cannot point inside the 6 px square, a map fused down to
the 24x24 conv2 layer must (a 12x12 conv3 map alone points right for ~0.6 of the images).
The pointing game is scored on 96 squares: on 24 the rate moved by 0.1 between CPUs.
"""

import keras
import numpy as np
import pandas as pd
import pytest
import scipy.stats

from pneumoxai import explain, models, slices
from pneumoxai.errors import ConfigError, DataError

SIZE, PATCH = 48, 6  # PATCH <= SIZE / 8


def make_small_patch_data(n, rng):
    """Dim noise, a bright 2x12 bar in every image, a bright 6x6 square in odd ones; boxes of the squares."""
    x = np.repeat(rng.uniform(0.0, 0.45, (n, SIZE, SIZE, 1)), 3, axis=-1).astype(np.float32)
    y = np.arange(n) % 2
    boxes = np.zeros((n, 4), int)
    for i in range(n):
        long_side, short_side = (12, 2) if rng.random() < 0.5 else (2, 12)
        while True:  # bar and square must not touch
            r0, c0 = rng.integers(1, SIZE - long_side), rng.integers(1, SIZE - short_side)
            pr, pc = rng.integers(1, SIZE - PATCH, size=2)
            apart = pr > r0 + long_side or pr + PATCH < r0 or pc > c0 + short_side or pc + PATCH < c0
            if apart:
                break
        x[i, r0:r0 + long_side, c0:c0 + short_side] = rng.uniform(0.85, 1.0)
        if y[i]:
            x[i, pr:pr + PATCH, pc:pc + PATCH] = rng.uniform(0.85, 1.0)
            boxes[i] = (pr, pc, pr + PATCH, pc + PATCH)
    return x, y, boxes


def deep_cnn():
    """Four 2x poolings: conv1 48x48, conv2 24x24, conv3 12x12, conv4 6x6, conv_last 3x3."""
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    h = inputs
    for k, width in enumerate((8, 16, 16, 32), start=1):
        h = keras.layers.Conv2D(width, 3, padding="same", activation="relu", name=f"conv{k}")(h)
        h = keras.layers.MaxPooling2D(name=f"pool{k}")(h)
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv_last")(h)
    h = keras.layers.GlobalAveragePooling2D(name="head_pool")(h)
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="prediction")(h))


@pytest.fixture(scope="module")
def deep():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x_train, y_train, _ = make_small_patch_data(640, rng)
    x_val, y_val, boxes = make_small_patch_data(192, rng)
    model = deep_cnn()
    model.compile(keras.optimizers.Adam(3e-3), "binary_crossentropy")
    model.fit(x_train, y_train, epochs=25, batch_size=32, verbose=0)
    accuracy = ((model.predict(x_val, verbose=0)[:, 0] >= 0.5) == y_val).mean()
    assert accuracy >= 0.95, f"the deep tiny CNN did not learn the small-patch task (accuracy {accuracy:.2f})"
    pos = np.flatnonzero(y_val == 1)
    return {"model": model, "x": x_val[pos], "boxes": boxes[pos]}


def pointing_hits(maps, boxes, margin=1):
    rows, cols = np.unravel_index(maps.reshape(len(maps), -1).argmax(axis=1), maps.shape[1:])
    r0, c0, r1, c1 = boxes.T
    return (rows >= r0 - margin) & (rows < r1 + margin) & (cols >= c0 - margin) & (cols < c1 + margin)


def test_fusion_layers_are_the_stage_outputs(deep):
    assert explain.fusion_layers(deep["model"]) == ("conv3", "conv4", "conv_last")
    assert explain.fusion_layers(deep["model"], n_layers=1) == ("conv_last",)


def test_layer_candidates_are_every_stage_alone_then_fused(deep):
    assert explain.layer_candidates(deep["model"]) == [("conv_last",), ("conv4",), ("conv3",),
                                                       ("conv3", "conv4", "conv_last")]
    assert explain.layer_candidates(deep["model"], n_layers=1) == [("conv_last",)]


def test_fusion_layers_leave_out_preprocessing_that_holds_the_input():
    inputs = keras.Input((16, 16, 3), name="image")
    h = keras.layers.Rescaling(1 / 255, name="preprocess")(inputs)
    h = keras.layers.Conv2D(4, 3, name="conv_a")(h)  # 14x14
    h = keras.layers.Conv2D(4, 3, strides=2, name="conv_b")(h)  # 6x6
    h = keras.layers.GlobalAveragePooling2D(name="pool")(h)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="prediction")(h))
    assert explain.fusion_layers(model) == ("conv_a", "conv_b")


def test_fusion_layers_of_a_resnet50_member_are_its_stage_outputs():
    member = models.build_member(32, weights=None, dense_units=(8,))
    assert explain.fusion_layers(member) == explain.RESNET50_FUSION_LAYERS
    # conv3_block4_out feeds only conv4_block1's stride-2 1x1 convolutions: the logit does not
    # depend on its odd rows and columns, so a gradient-weighted map of it is a checkerboard.
    x = np.random.default_rng(0).random((2, 32, 32, 3)).astype(np.float32)
    layer = "conv3_block4_out"
    low = np.asarray(explain.HiResCAM(member, layer=layer)._layer_cams(x, np.ones(2, bool), layer))
    assert (low[:, 1::2, :] == 0).all() and (low[:, :, 1::2] == 0).all() and low.max() > 0


# Grad-CAM is not among them: one weight per channel makes its conv2 map point at the bar.
# Lowest fused pointing rate over training seeds 0-3 (96 squares each): LayerCAM 0.90,
# HiResCAM 0.93, Grad-CAM++ 0.77 (its alpha weights also favour the bar's channels).
FUSED_METHODS = {"layercam": 0.85, "hirescam": 0.85, "gradcam++": 0.7}


@pytest.mark.parametrize("method", FUSED_METHODS)
def test_small_patch_needs_the_fused_map(deep, method):
    model, x, boxes = deep["model"], deep["x"], deep["boxes"]
    layers = explain.fusion_layers(model, n_layers=4)
    assert layers == ("conv2", "conv3", "conv4", "conv_last")
    last_only = pointing_hits(explain.gradcam(model, x, method=method), boxes).mean()
    fused = pointing_hits(explain.gradcam(model, x, method=method, layers=layers), boxes).mean()
    print(f"pointing game {method}, 6 px patch in 48 px: conv_last only {last_only:.2f}, fused {fused:.2f}")
    assert last_only < 0.5  # a 16 px cell cannot point inside a 6 px square
    assert fused >= FUSED_METHODS[method]


def _gap_cam(model, x, layer):
    """CAM of a conv -> global average pool -> Dense head: sum_c w_c A_c / (h w), computed by hand."""
    features = keras.Model(model.inputs, model.get_layer(layer).output).predict(x, verbose=0)
    w = model.get_layer("prediction").get_weights()[0][:, 0]
    return features, w, features.shape[1] * features.shape[2]


def _lowres(explainer_cls, model, x):
    explainer = explainer_cls(model)
    return np.asarray(explainer._layer_cams(x, np.ones(len(x), bool), "conv_last"))


def test_hirescam_and_layercam_are_exact_position_contributions(deep):
    # With a global-average-pooled linear head, d logit / d A_c(i, j) = w_c / (h w) everywhere.
    model, x = deep["model"], deep["x"][:6]
    features, w, hw = _gap_cam(model, x, "conv_last")
    hires = np.maximum((features * w).sum(-1) / hw, 0)
    layer = np.maximum((features * np.maximum(w, 0)).sum(-1) / hw, 0)
    for expected, cls in ((hires, explain.HiResCAM), (layer, explain.LayerCAM)):
        got = _lowres(cls, model, x)
        # tf-keras-vis min-max scales each low-resolution CAM
        scaled = (expected - expected.min((1, 2), keepdims=True)) / np.ptp(expected, (1, 2), keepdims=True)
        np.testing.assert_allclose(got, scaled, atol=1e-4, err_msg=cls.__name__)


def test_single_layer_list_equals_layer(deep):
    model, x = deep["model"], deep["x"][:4]
    np.testing.assert_allclose(explain.gradcam(model, x, method="layercam", layers=["conv3"]),
                               explain.gradcam(model, x, method="layercam", layer="conv3"), atol=1e-6)


def test_fused_map_is_the_maximum_of_the_layer_maps(deep):
    model, x = deep["model"], deep["x"][:4]
    names = ("conv3", "conv_last")
    per_layer = np.stack([explain.gradcam(model, x, method="layercam", layer=name) for name in names])
    fused = explain.gradcam(model, x, method="layercam", layers=names)
    expected = per_layer.max(0) + 1e-3 * per_layer.mean(0)
    expected = (expected - expected.min((1, 2), keepdims=True)) / np.ptp(expected, (1, 2), keepdims=True)
    np.testing.assert_allclose(fused, expected, atol=1e-5)


def test_ensemble_maps_fuse_each_members_layers(deep):
    model, x = deep["model"], deep["x"][:3]
    combined, spread = explain.ensemble_gradcam([model, model], x, method="layercam", layers="auto")
    np.testing.assert_allclose(combined, explain.gradcam(model, x, method="layercam",
                                                         layers=explain.fusion_layers(model)), atol=1e-5)
    assert spread.max() < 1e-5
    # A callable picks each member's layers: here the finest stage alone.
    finest, _ = explain.ensemble_gradcam([model, model], x, method="layercam",
                                         layers=lambda m: explain.fusion_layers(m)[:1])
    np.testing.assert_allclose(finest, explain.gradcam(model, x, method="layercam",
                                                       layer=explain.fusion_layers(model)[0]), atol=1e-5)


# --------------------------------------------------------------------------- ROAD


def region_model(size, box, *, gain=60.0, threshold=0.85):
    """P(PNEUMONIA) = sigmoid(gain * (mean intensity of channel 0 in ``box`` - threshold)), exactly."""
    inputs = keras.Input((size, size, 3), name="image")
    flat = keras.layers.Flatten(name="flatten")(inputs)
    out = keras.layers.Dense(1, activation="sigmoid", name="prediction")
    model = keras.Model(inputs, out(flat))
    weights = np.zeros((size, size, 3), np.float32)
    r0, c0, r1, c1 = box
    weights[r0:r1, c0:c1, 0] = gain / ((r1 - r0) * (c1 - c0))
    out.set_weights([weights.reshape(-1, 1), np.array([-gain * threshold], np.float32)])
    return model


def _region_data(n, size, box, rng):
    x = np.repeat(rng.uniform(0.1, 0.3, (n, size, size, 1)), 3, axis=-1).astype(np.float32)
    r0, c0, r1, c1 = box
    x[:, r0:r1, c0:c1] = 0.95
    return x


def test_road_imputation_of_a_constant_image_is_that_constant():
    x = np.full((3, 16, 16, 3), 0.42, np.float32)
    removed = np.random.default_rng(0).random((3, 16, 16)) < np.array([0.1, 0.6, 0.99])[:, None, None]
    np.testing.assert_allclose(explain.road_impute(x, removed), 0.42, atol=1e-6)


def test_road_imputation_matches_the_neighbour_equations():
    # One removed pixel: its value is the weighted mean of its 8 known neighbours.
    x = np.random.default_rng(1).random((1, 5, 5, 3)).astype(np.float32)
    removed = np.zeros((1, 5, 5), bool)
    removed[0, 2, 2] = True
    weights = np.array([[1, 2, 1], [2, 0, 2], [1, 2, 1]]) / 12
    expected = (x[0, 1:4, 1:4] * weights[..., None]).sum((0, 1))
    np.testing.assert_allclose(explain.road_impute(x, removed)[0, 2, 2], expected, atol=1e-6)
    unchanged = ~removed[0]
    np.testing.assert_array_equal(explain.road_impute(x, removed)[0][unchanged], x[0][unchanged])


def test_road_noise_is_seeded_and_only_on_removed_pixels():
    x = np.full((2, 12, 12, 3), 0.5, np.float32)
    removed = np.zeros((2, 12, 12), bool)
    removed[:, 3:8, 3:8] = True
    a = explain.road_impute(x, removed, noise=0.05, seed=3)
    np.testing.assert_array_equal(a, explain.road_impute(x, removed, noise=0.05, seed=3))
    assert np.abs(a[:, 3:8, 3:8] - 0.5).std() > 0.02 and (a[~removed] == 0.5).all()


def test_road_true_map_beats_a_random_map_both_ways():
    size, box = 24, (6, 9, 12, 15)
    model = region_model(size, box)
    rng = np.random.default_rng(0)
    x = _region_data(8, size, box, rng)
    truth = np.zeros((8, size, size), np.float32)
    truth[:, box[0]:box[2], box[1]:box[3]] = 1
    truth += rng.random(truth.shape, dtype=np.float32) * 0.01  # ties broken at random within each part
    random_maps = rng.random(truth.shape, dtype=np.float32)
    fractions = (0.05, 0.2, 0.4, 0.6, 0.8)
    curves = {(name, order): explain.road(model, x, maps, order=order, fractions=fractions, noise=0.0)
              for name, maps in (("true", truth), ("random", random_maps)) for order in explain.ROAD_ORDERS}
    print({k: np.round(v.mean(0), 2) for k, v in curves.items()})
    assert curves["true", "morf"].mean() < curves["random", "morf"].mean() - 0.3  # MoRF falls faster
    assert curves["true", "lerf"].mean() > curves["random", "lerf"].mean() + 0.3  # LeRF stays high
    assert (curves["true", "morf"][:, -1] < 0.05).all() and (curves["true", "lerf"][:, :4] > 0.95).all()


# --------------------------------------------------------------------------- layer choice


def test_compare_layers_scores_every_method_and_layer(deep):
    model, x = deep["model"], deep["x"][:8]
    fused = explain.fusion_layers(model, n_layers=4)
    table = explain.compare_layers(model, x, ["conv_last", fused], methods=("gradcam", "layercam"), steps=8,
                                   fractions=(0.1, 0.5, 0.9))
    print(table.round(3).to_string())
    assert list(table["method"]) == ["gradcam", "gradcam", "layercam", "layercam", "random"]
    assert list(table["layer"][:2]) == ["conv_last", "conv2+conv3+conv4+conv_last"]
    assert list(table["map_side"][:2]) == [3, 24]
    random_row = table.iloc[-1]
    fused_layercam = table.iloc[3]
    # Deletion to black kills this model's output for random maps too; ROAD separates them.
    assert fused_layercam["deletion_auc"] < random_row["deletion_auc"]
    assert fused_layercam["road_gap"] > random_row["road_gap"] + 0.3
    assert (table["seconds_per_image"][:-1] > 0).all()
    # NaN where re-initialising the head leaves a constant (all-zero) Grad-CAM
    assert table["randomization_spearman"][2:4].between(-1, 1).all()
    # Each candidate's randomized copy is the one randomization_check builds: every layer after the map's redrawn.
    for row, (method, layers) in zip(table.itertuples(), [("gradcam", ["conv_last"]), ("gradcam", fused),
                                                          ("layercam", ["conv_last"]), ("layercam", fused)]):
        alone = explain.randomization_check(model, x, method=method, layers=layers, n_layers="downstream",
                                            target="predicted")
        finite = alone[np.isfinite(alone)]
        np.testing.assert_allclose(row.randomization_spearman, np.median(finite) if finite.size else np.nan,
                                   atol=1e-6)
        # The ROAD gap the choice ranks by is the mean LeRF curve minus the mean MoRF curve of the same maps.
        target = model.predict(x, verbose=0)[:, 0] >= 0.5
        maps = explain.gradcam(model, x, method=method, layers=layers, target=target)
        curves = {order: explain.road(model, x, maps, order=order, fractions=(0.1, 0.5, 0.9), target=target)
                  for order in ("morf", "lerf")}
        assert (row.road_morf, row.road_lerf) == pytest.approx((curves["morf"].mean(), curves["lerf"].mean()),
                                                               abs=1e-6)
        assert row.road_gap == pytest.approx(curves["lerf"].mean() - curves["morf"].mean(), abs=1e-6)
        assert row.deletion_auc == pytest.approx(explain.deletion_auc(model, x, maps, steps=8, target=target).mean(),
                                                 abs=1e-6)


def _candidates(gaps, spearmans, sides, random_gap=0.01):
    n = len(gaps)
    return pd.DataFrame({"method": ["gradcam", "layercam", "hirescam", "gradcam++"][:n] + ["random"],
                         "layer": [f"l{i}" for i in range(n)] + [""], "map_side": list(sides) + [48],
                         "road_gap": list(gaps) + [random_gap], "randomization_spearman": list(spearmans) + [np.nan],
                         "seconds_per_image": [0.1] * n + [np.nan]})


@pytest.mark.parametrize("gaps, spearmans, sides, expected, reason", [
    ((0.30, 0.20, 0.10), (0.5, 0.5, 0.5), (3, 3, 3), 0, "largest ROAD gap"),  # plain best gap
    ((0.30, 0.20, 0.10), (0.95, 0.5, 0.5), (3, 3, 3), 1, "largest ROAD gap"),  # best fails randomization
    ((0.30, 0.20, 0.10), (0.9, 0.5, 0.5), (3, 3, 3), 1, "largest ROAD gap"),  # at the 0.9 bar: fails
    ((0.30, 0.20, 0.10), (0.8999, 0.5, 0.5), (3, 3, 3), 0, "largest ROAD gap"),  # just under it: passes
    ((0.30, 0.29, 0.10), (0.5, 0.5, 0.5), (3, 12, 3), 1, "finest map among gaps within"),  # tie -> finer map
    ((0.005, 0.002, 0.0), (0.5, 0.5, 0.5), (3, 12, 3), 0, "no candidate"),  # none beats random maps
    ((0.30, 0.20, 0.10), (0.99, np.nan, 0.97), (3, 12, 3), 0, "no candidate"),  # NaN Spearman: no evidence
])
def test_map_choice_follows_its_rule(gaps, spearmans, sides, expected, reason):
    choice, table = explain.choose_map_method(_candidates(gaps, spearmans, sides))
    assert choice["layer"] == f"l{expected}" and reason in choice["reason"]
    assert table["chosen"].sum() == 1 and table["chosen"].iloc[expected]
    assert not table["passes_randomization"].iloc[-1] and not table["beats_random"].iloc[-1]


def test_map_choice_on_a_real_comparison_prefers_the_map_that_can_point_at_a_small_patch(deep):
    """On the small-patch CNN, the fused maps are both finer and more faithful than the 3x3 last-layer maps."""
    model, x = deep["model"], deep["x"][:8]
    table = explain.compare_layers(model, x, ["conv_last", explain.fusion_layers(model, n_layers=4)],
                                   methods=("gradcam", "layercam"), steps=8, fractions=(0.1, 0.5, 0.9))
    choice, _ = explain.choose_map_method(table)
    assert choice["layer"] == "conv2+conv3+conv4+conv_last" and choice["map_side"] == 24


# --------------------------------------------------------------------------- per failure slice


def test_slice_explanations_compare_errors_with_correct_calls_of_the_same_class():
    rng = np.random.default_rng(0)
    n, side = 200, 8
    marker = np.arange(n) < 40
    frame = pd.DataFrame({"marker": marker, "noise": rng.random(n)})
    y = np.r_[np.zeros(100, int), np.ones(100, int)][rng.permutation(n)]
    y[:40] = 0  # the marker slice: normals called PNEUMONIA
    p = np.where(y == 1, 0.9, 0.1)
    p[:40] = 0.8
    masks = np.zeros((n, side, side), bool)
    masks[:, 2:7, 1:7] = True
    maps = np.zeros((n, side, side))
    maps[:, 4, 3] = 1.0        # correct calls look inside the lungs
    maps[:40] = 0
    maps[:40, 0, 0] = 3.0      # the marker slice looks at a corner
    maps[:40, 4, 3] = 1.0
    faith = np.where(marker, 0.2, 0.6)
    # Region removal tested on 30 of the 40 errors (the other 10 not measured): 28 localise, 26 of them
    # change under removal of their region and 2 under removal of its shifted copy (one of them under both).
    removal = pd.DataFrame({"call_changed": np.nan, "control_changed": np.nan, "localised": np.nan,
                            "places": None}, index=range(n))
    removal.loc[:29, ["call_changed", "control_changed", "localised"]] = 0.0
    removal.loc[:25, "call_changed"] = 1.0
    removal.loc[[0, 27], "control_changed"] = 1.0
    removal.loc[:27, "localised"] = 1.0
    removal.loc[:27, "places"] = ["top-left corner, outside both lungs"] * 20 + ["top edge"] * 8
    removal.loc[28:29, ["call_changed", "control_changed"]] = 1.0   # not localised: not counted
    found = slices.find_failure_slices(frame, y, p, min_size=20)
    table, mean_maps = explain.slice_explanations(frame, found, maps, masks, y, p, faithfulness=faith,
                                                  region_removal=removal)
    top = table.iloc[0]
    assert top["slice"] == "marker == True" and top["n_errors"] == 40
    assert top["errors:off_lung_attention"] == pytest.approx(0.75)
    assert top["correct:off_lung_attention"] == pytest.approx(0.0)
    assert top["off_lung_shift"] == pytest.approx(0.75) and top["top_zone_shift"] == "off_lung_attention"
    assert top["faithfulness_errors"] == pytest.approx(0.2) and top["faithfulness_correct"] == pytest.approx(0.6)
    assert (top["removal_n_errors"], top["removal_n_localised"], top["faithfulness_n_errors"]) == (30, 28, 40)
    assert top["removal_changes_errors"] == pytest.approx(26 / 28)
    assert top["removal_changes_control"] == pytest.approx(2 / 28)
    # Discordant pairs: 25 changed by the region only, 1 (row 27) by its shifted copy only.
    assert top["removal_p"] == pytest.approx(scipy.stats.binomtest(25, 26, 0.5, alternative="greater").pvalue)
    assert top["removal_localised"] and top["removal_rests_on_region"]
    assert top["removal_place"] == "top-left corner, outside both lungs"
    assert top["removal_place_share"] == pytest.approx(20 / 28)
    np.testing.assert_allclose(mean_maps[0], maps[:40].mean(0))
    assert mean_maps.shape == (len(table), side, side)


@pytest.mark.parametrize("shift, significant", [(0.3, True), (0.0, False)])
def test_slice_off_lung_rise_is_tested_against_correct_calls_of_the_class(shift, significant):
    rng = np.random.default_rng(1)
    n = 200
    y = np.r_[np.zeros(120, int), np.ones(80, int)]
    in_slice = np.arange(n) < 30              # 30 normals called PNEUMONIA
    p = np.where(y == 1, 0.9, 0.1)
    p[in_slice] = 0.8
    off = rng.uniform(0.2, 0.6, n) + shift * in_slice
    masks = np.zeros((n, 2, 2), bool)
    masks[:, 1, :] = True
    maps = np.zeros((n, 2, 2))
    maps[:, 0, 0], maps[:, 1, 0] = off, 1 - off  # off-lung share = off
    frame = pd.DataFrame({"in_slice": in_slice})
    found = slices.find_failure_slices(frame, y, p, min_size=20)
    row = explain.slice_explanations(frame, found, maps, masks, y, p)[0].iloc[0]
    assert row["slice"] == "in_slice == True"
    true_negatives = ~in_slice & (y == 0)
    expected = scipy.stats.mannwhitneyu(off[in_slice], off[true_negatives], alternative="greater").pvalue
    assert row["off_lung_p"] == pytest.approx(expected)
    assert (row["off_lung_p"] < 0.05) == significant


@pytest.fixture(scope="module")
def untrained_deep():
    keras.utils.set_random_seed(3)
    return deep_cnn(), make_small_patch_data(6, np.random.default_rng(3))[0]


@pytest.mark.parametrize("method, layers, same_as_top", [
    ("gradcam", ["conv_last"], 1),                 # only the prediction layer follows
    ("hirescam", ["conv3"], 3),                    # conv4, conv_last, prediction
    ("layercam", ["conv2", "conv_last"], 4),       # after the shallowest of fused layers
    ("saliency", None, 6),                         # a map of the input: every weighted layer
])
def test_downstream_randomization_redraws_every_layer_after_the_map(untrained_deep, method, layers, same_as_top):
    model, x = untrained_deep
    downstream = explain.randomization_check(model, x, method=method, layers=layers, n_layers="downstream",
                                             target="predicted")
    top = explain.randomization_check(model, x, method=method, layers=layers, n_layers=same_as_top,
                                      target="predicted")
    np.testing.assert_array_equal(downstream, top)
    if same_as_top > 1:
        fewer = explain.randomization_check(model, x, method=method, layers=layers, n_layers=same_as_top - 1,
                                            target="predicted")
        assert not np.array_equal(fewer, downstream, equal_nan=True)


# --------------------------------------------------------------------------- bad input

GOOD = np.full((2, 16, 16, 3), 0.5, np.float32)


def _untrained():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((16, 16, 3), name="image")
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv_a")(inputs)
    h = keras.layers.MaxPooling2D(name="pool_a")(h)
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv_last")(h)
    h = keras.layers.GlobalAveragePooling2D(name="head_pool")(h)
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="prediction")(h))


BAD_INPUTS = [
    ("layer and layers", lambda m: explain.gradcam(m, GOOD, layer="conv_a", layers=["conv_last"]), ConfigError,
     "either layer= or layers="),
    ("empty layers", lambda m: explain.gradcam(m, GOOD, layers=[]), ConfigError,
     "The 'layers' parameter of GradCAM must be a non-empty list of layer names; got \\[\\]."),
    ("missing fused layer", lambda m: explain.gradcam(m, GOOD, layers=["conv_a", "conv9"]), ConfigError,
     "'conv9' does not exist"),
    ("road order", lambda m: explain.road(m, GOOD, GOOD[..., 0], order="up"), ConfigError,
     "The 'order' parameter of road must be one of 'morf', 'lerf'; got 'up'."),
    ("road fractions", lambda m: explain.road(m, GOOD, GOOD[..., 0], fractions=(0.5, 1.0)), ConfigError,
     "'fractions' parameter of road must be a non-empty sequence of numbers in \\[0, 1\\)"),
    ("remove everything", lambda m: explain.road_impute(GOOD, np.ones((2, 16, 16), bool)), DataError,
     "nothing to impute from"),
    ("removed not bool", lambda m: explain.road_impute(GOOD, np.ones((2, 16, 16))), DataError,
     "removed must be a bool array"),
    ("impute noise", lambda m: explain.road_impute(GOOD, np.zeros((2, 16, 16), bool), noise=-1), ConfigError,
     "'noise' parameter of road_impute"),
    ("compare method", lambda m: explain.compare_layers(m, GOOD, ["conv_a"], methods=("lime",)), ConfigError,
     "'methods' parameter of compare_layers .* got 'lime'"),
    ("compare layers", lambda m: explain.compare_layers(m, GOOD, "conv_a"), ConfigError,
     "'layers' parameter of compare_layers"),
    ("compare randomized", lambda m: explain.compare_layers(m, GOOD, ["conv_a"], n_randomized=0), ConfigError,
     "'n_randomized' parameter of compare_layers must be an int >= 1 or 'downstream'; got 0"),
    ("randomized too deep", lambda m: explain.compare_layers(m, GOOD, ["conv_a"], n_randomized=99), ConfigError,
     "compare_layers: n_randomized=99 but the model has only"),
    ("randomization depth", lambda m: explain.randomization_check(m, GOOD, n_layers="all"), ConfigError,
     "'n_layers' parameter of randomization_check must be an int >= 1 or 'downstream'; got 'all'"),
    ("choice table", lambda m: explain.choose_map_method(pd.DataFrame({"method": ["gradcam"]})), ConfigError,
     "'table' parameter of choose_map_method must be the DataFrame compare_layers returns"),
    ("choice tie", lambda m: explain.choose_map_method(_candidates((0.3,), (0.5,), (3,)), tie=-1), ConfigError,
     "'tie' parameter of choose_map_method"),
    ("fusion n_layers", lambda m: explain.fusion_layers(m, n_layers=0), ConfigError,
     "'n_layers' parameter of fusion_layers must be an int >= 1"),
    ("slice table", lambda m: explain.slice_explanations(pd.DataFrame({"a": [1, 2]}), pd.DataFrame(),
                                                         GOOD[..., 0], GOOD[..., 0] > 0, [0, 1], [0.2, 0.7]),
     DataError, "'conditions' column"),
]


@pytest.mark.parametrize("call, error, match", [case[1:] for case in BAD_INPUTS],
                         ids=[case[0] for case in BAD_INPUTS])
def test_bad_inputs_raise_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call(_untrained())


def test_compare_layers_checks_each_model_once(monkeypatch):
    # The docstring's promise: the model is validated once, not once per explainer and score.
    from pneumoxai.explain import _base

    checked = []
    check = _base._check_explainable
    monkeypatch.setattr(_base, "_check_explainable", lambda model, owner: checked.append(model) or check(model, owner))
    model = _untrained()
    table = explain.compare_layers(model, GOOD, ["conv_last", "conv_a", ("conv_a", "conv_last")],
                                   methods=("gradcam", "layercam"), steps=2, fractions=(0.5,), n_randomized=1)
    assert len(table) == 3 * 2 + 1
    # The trained model and its one randomized copy (every candidate re-initialises the same top layer).
    assert len(checked) == 2 and checked[0] is model


def test_choose_map_is_compare_layers_then_choose_map_method():
    model, x = _untrained(), np.random.default_rng(0).random((4, 16, 16, 3)).astype(np.float32)
    choice, table = explain.choose_map(model, x, target="pneumonia", methods=("gradcam", "hirescam"), seed=3)
    measured = explain.compare_layers(model, x, explain.layer_candidates(model), methods=("gradcam", "hirescam"),
                                      target="pneumonia", n_randomized=explain.DOWNSTREAM, seed=3)
    scores = [c for c in measured.columns if c != "seconds_per_image"]  # timings differ between runs
    pd.testing.assert_frame_equal(table[scores], measured[scores])
    expected, _ = explain.choose_map_method(table[measured.columns])  # ties on map side go to the faster map
    assert {k: choice[k] for k in ("method", "layer", "reason")} == {k: expected[k] for k in ("method", "layer", "reason")}
    assert choice["stages"] == [explain.fusion_layers(model).index(name) - 2 for name in choice["layer"].split("+")]
    assert choice["fused"] == ("+" in choice["layer"]) and choice["n_images"] == 4
    assert "+".join(explain.chosen_layers(model, choice)) == choice["layer"]
    unmeasured, no_table = explain.choose_map(model, not_measured="a test")
    assert no_table is None and unmeasured["layer"] == "conv_last" and unmeasured["stages"] == [-1]
    assert unmeasured["reason"].startswith("not measured (a test): Grad-CAM")
