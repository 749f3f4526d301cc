"""Explanations with known answers.

A tiny CNN learns "PNEUMONIA = a bright 6x6 patch somewhere in a 32x32 image". Every
attribution method must then point at the patch (pointing game), deleting the
Grad-CAM/SHAP-ranked pixels must kill the prediction faster than deleting random
pixels, and re-initialising the top layers must change the maps.
"""


import keras
import numpy as np
import pytest

from pneumoxai import explain, lungs
from pneumoxai.explain.cam import _TwoClassLogits
from pneumoxai.errors import ConfigError, DataError

SIZE, PATCH = 32, 6


def make_patch_data(n, rng):
    """Dim noise with a bright thin bar in every image; odd indices also carry a bright square.

    The bar is as bright as the square, so "find the brightest pixels" does not solve
    the task: the model has to learn the square's shape. The two sit in different
    quadrants. Returns images, labels and the squares' boxes (r0, c0, r1, c1).
    """
    x = np.repeat(rng.uniform(0.0, 0.45, (n, SIZE, SIZE, 1)), 3, axis=-1).astype(np.float32)
    y = np.arange(n) % 2
    boxes = np.zeros((n, 4), int)
    half = SIZE // 2
    for i in range(n):
        bar_quadrant, patch_quadrant = rng.permutation(4)[:2]
        qy, qx = divmod(bar_quadrant, 2)
        long_side, short_side = (12, 2) if rng.random() < 0.5 else (2, 12)
        r0 = qy * half + rng.integers(1, half - long_side)
        c0 = qx * half + rng.integers(1, half - short_side)
        x[i, r0:r0 + long_side, c0:c0 + short_side] = rng.uniform(0.85, 1.0)
        if y[i]:
            qy, qx = divmod(patch_quadrant, 2)
            r0 = qy * half + rng.integers(1, half - PATCH)
            c0 = qx * half + rng.integers(1, half - PATCH)
            x[i, r0:r0 + PATCH, c0:c0 + PATCH] = rng.uniform(0.85, 1.0)
            boxes[i] = (r0, c0, r0 + PATCH, c0 + PATCH)
    return x, y, boxes


def tiny_cnn(size=SIZE, head_dense=False):
    """A member-shaped mock: input "image", last conv "conv_last", "head_pool", "prediction"."""
    inputs = keras.Input((size, size, 3), name="image")
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv_last")(h)
    h = keras.layers.GlobalAveragePooling2D(name="head_pool")(h)
    if head_dense:
        h = keras.layers.Dense(8, activation="relu", name="head_dense2")(h)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="prediction")(h)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def trained():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x_train, y_train, _ = make_patch_data(512, rng)
    x_val, y_val, boxes = make_patch_data(48, rng)
    model = tiny_cnn()
    model.compile(keras.optimizers.Adam(1e-2), "binary_crossentropy")
    model.fit(x_train, y_train, epochs=30, batch_size=32, verbose=0)
    accuracy = ((model.predict(x_val, verbose=0)[:, 0] >= 0.5) == y_val).mean()
    assert accuracy >= 0.95, f"the tiny CNN did not learn the patch task (accuracy {accuracy:.2f})"
    pos = np.flatnonzero(y_val == 1)
    return {"model": model, "x": x_val[pos], "boxes": boxes[pos], "x_train": x_train, "y_train": y_train}


@pytest.fixture(scope="module")
def untrained():
    keras.utils.set_random_seed(1)
    return tiny_cnn(size=16)


def pointing_hits(maps, boxes, margin=1):
    """Whether each map's maximum lies in its patch (grown by ``margin`` pixels)."""
    rows, cols = np.unravel_index(maps.reshape(len(maps), -1).argmax(axis=1), maps.shape[1:])
    r0, c0, r1, c1 = boxes.T
    return (rows >= r0 - margin) & (rows < r1 + margin) & (cols >= c0 - margin) & (cols < c1 + margin)


def patch_share(maps, boxes):
    """Share of each map's positive mass inside its patch."""
    inside = np.zeros(maps.shape, bool)
    for k, (r0, c0, r1, c1) in enumerate(boxes):
        inside[k, r0:r1, c0:c1] = True
    positive = np.clip(maps, 0, None)
    total = positive.sum(axis=(1, 2))
    return (positive * inside).sum(axis=(1, 2)) / np.where(total > 0, total, 1)


POINTING_CASES = {
    "gradcam": (lambda m, d: explain.gradcam(m, d["x"]), 0.9),
    "gradcam++": (lambda m, d: explain.gradcam(m, d["x"], method="gradcam++"), 0.9),
    "layercam": (lambda m, d: explain.gradcam(m, d["x"], method="layercam"), 0.9),
    "hirescam": (lambda m, d: explain.gradcam(m, d["x"], method="hirescam"), 0.9),
    "scorecam": (lambda m, d: explain.gradcam(m, d["x"], method="scorecam", max_n=8), 0.9),
    "saliency": (lambda m, d: explain.saliency(m, d["x"]), 0.8),
    "smoothgrad": (lambda m, d: explain.saliency(m, d["x"], smooth_samples=8), 0.75),
    "shap-gradient": (lambda m, d: explain.shap_maps(
        m, d["x"], explain.background_sample(d["x_train"], d["y_train"], n=16), n_samples=16), 0.85),
    "shap-partition": (
        lambda m, d: explain.shap_maps(m, d["x"][:12], method="partition", max_evals=128), 0.65),
}


@pytest.mark.parametrize("method", list(POINTING_CASES))
def test_pointing_game(trained, method):
    run, required = POINTING_CASES[method]
    maps = run(trained["model"], trained)
    hits = pointing_hits(maps, trained["boxes"][: len(maps)])
    print(f"pointing game {method}: {hits.mean():.2f} of {len(hits)} positives")
    assert hits.mean() >= required


def test_pointing_game_needs_the_trained_weights(trained):
    keras.utils.set_random_seed(2)
    hits = pointing_hits(explain.gradcam(tiny_cnn(), trained["x"]), trained["boxes"])
    print(f"pointing game gradcam, untrained model: {hits.mean():.2f}")
    assert hits.mean() < 0.5  # the bar distracts a model that has not learnt the square


@pytest.mark.parametrize("method", explain.CAM_METHODS)
def test_cam_maps_contract(untrained, method):
    x = np.random.default_rng(0).random((5, 16, 16, 3))
    maps = explain.gradcam(untrained, x, method=method, target="predicted", batch_size=2, max_n=4)
    assert maps.shape == (5, 16, 16) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1


def test_batching_does_not_change_maps(trained):
    x = trained["x"][:6]
    one_by_one = explain.gradcam(trained["model"], x, batch_size=1)
    batched = explain.gradcam(trained["model"], x, batch_size=4)
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)


def test_explainers_of_one_model_share_one_logit_model_within_a_block(trained, monkeypatch):
    # Inside the block every method builds the logit model once, with the same maps.
    from pneumoxai.explain import _base

    x = trained["x"][:4]
    methods = ("gradcam", "hirescam", "gradcam++")
    alone = [explain.gradcam(trained["model"], x, method=m) for m in methods]
    built = []
    build = _base.shared_logit_model
    monkeypatch.setattr(_base, "shared_logit_model", lambda *a: built.append(1) or build(*a))
    with explain.shared_models():
        shared = [explain.gradcam(trained["model"], x, method=m) for m in methods]
    assert len(built) == 1
    np.testing.assert_allclose(shared, alone, atol=1e-6)
    explain.gradcam(trained["model"], x)  # outside the block nothing is kept
    assert len(built) == 2


def test_target_normal_looks_away_from_the_patch(trained):
    model, x, boxes = trained["model"], trained["x"], trained["boxes"]
    toward = patch_share(explain.gradcam(model, x, target="pneumonia"), boxes)
    away = patch_share(explain.gradcam(model, x, target="normal"), boxes)
    print(f"grad-cam share in patch: pneumonia {np.median(toward):.2f}, normal {np.median(away):.2f}")
    assert np.median(toward) > 0.3 and np.median(away) < np.median(toward) / 3


def test_scorecam_two_logit_rewrite_recovers_the_probability(trained):
    # tf-keras-vis' Score-CAM softmaxes the output; one sigmoid unit would always give 1.
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear

    model, x = trained["model"], trained["x_train"][:16]
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    ReplaceToLinear()(clone)
    pair = _TwoClassLogits()(clone).predict(x, verbose=0)
    p = model.predict(x, verbose=0)[:, 0]
    recovered = keras.ops.convert_to_numpy(keras.ops.softmax(pair))
    np.testing.assert_allclose(recovered, np.c_[1 - p, p], atol=1e-5)
    with pytest.warns(UserWarning, match="always return the value 1"):  # the naive route
        naive = keras.ops.convert_to_numpy(keras.ops.softmax(p[:, None]))
    np.testing.assert_allclose(naive, 1.0, atol=1e-6)  # carries no information about p


def _logit(model, x):
    p = model.predict(x, verbose=0)[:, 0].astype(float)
    return np.log(p) - np.log1p(-p)


def test_gradient_shap_adds_up_to_the_logit_gap(trained):
    model, x = trained["model"], trained["x"][:12]
    background = explain.background_sample(trained["x_train"], trained["y_train"], n=16, seed=1)
    maps = explain.shap_maps(model, x, background, n_samples=256, batch_size=64)
    gap = _logit(model, x) - _logit(model, background).mean()
    total = maps.reshape(len(x), -1).sum(axis=1)
    assert maps.dtype == np.float32 and (total > 0).all()  # positives push toward PNEUMONIA
    # Expected gradients is a Monte-Carlo estimate: completeness holds up to sampling noise.
    assert np.abs(total - gap).mean() < 0.25 * gap.mean()
    assert np.corrcoef(total, gap)[0, 1] > 0.7


def test_shap_is_seeded_and_leaves_the_global_rng_alone(trained):
    model, x = trained["model"], trained["x"][:3]
    background = trained["x_train"][:8]
    state = np.random.get_state()
    first = explain.shap_maps(model, x, background, n_samples=8, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), state))
    np.testing.assert_array_equal(first, explain.shap_maps(model, x, background, n_samples=8, seed=3))
    normal = explain.shap_maps(model, x, background, n_samples=8, seed=3, target="normal")
    np.testing.assert_allclose(normal, -first)


def test_deletion_beats_random_maps(trained):
    model, x = trained["model"], trained["x"]
    cam = explain.gradcam(model, x)
    deletion = explain.deletion_auc(model, x, cam, steps=10)
    chance = explain.random_map_baseline(model, x, steps=10, n_maps=2)
    print(f"deletion AUC grad-cam {deletion.mean():.3f} vs random maps {chance.mean():.3f}")
    assert deletion.shape == chance.shape == (len(x),)
    assert deletion.mean() < chance.mean() - 0.2
    assert (deletion < chance).mean() >= 0.9


def test_insertion_of_the_patch_first_restores_the_prediction(trained):
    model, x, boxes = trained["model"], trained["x"][:8], trained["boxes"][:8]
    oracle = np.zeros(x.shape[:3], np.float32)
    for k, (r0, c0, r1, c1) in enumerate(boxes):
        oracle[k, r0:r1, c0:c1] = 1
    inserted = explain.insertion_auc(model, x, oracle, steps=16, baseline=0.0)
    chance = explain.random_map_baseline(model, x, metric="insertion", steps=16, baseline=0.0)
    assert ((inserted >= 0) & (inserted <= 1)).all()
    assert inserted.mean() > chance.mean() + 0.2


def test_randomization_check_decorrelates_maps(trained):
    model, x = trained["model"], trained["x"][:16]
    saliency = explain.randomization_check(model, x, method="saliency", n_layers=3)
    # A 3-layer net has few channels, so one re-initialisation is noisy: use four.
    gradcam = [np.nanmedian(explain.randomization_check(model, x, n_layers=3, seed=s)) for s in range(4)]
    print(f"randomization check (all 3 layers): median Spearman saliency {np.median(saliency):.2f}, "
          f"grad-cam {np.round(gradcam, 2)}")
    assert saliency.shape == (16,) and np.isfinite(saliency).all()
    assert np.median(saliency) < 0.3
    assert np.median(gradcam) < 0.5
    assert model.get_layer("conv_last").get_weights()[0].std() > 0  # the trained model is untouched
    with pytest.raises(ConfigError, match="n_layers"):
        explain.randomization_check(model, x, n_layers=4)


def _one_channel_model(size=16, seed=0):
    """A ReLU conv with one channel, pooled into the prediction: |d logit / d x| = |w| |d pool / d x|."""
    inputs = keras.Input((size, size, 3), name="image")
    h = keras.layers.Conv2D(1, 3, padding="same", activation="relu", name="feat",
                            kernel_initializer=keras.initializers.RandomNormal(seed=seed))(inputs)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="prediction")(h))


def test_randomization_check_fails_a_map_that_ignores_the_redrawn_weights():
    """Positive control: re-drawing only the head rescales this saliency map, so it must score ~1 (>= the 0.9
    bar, a failed map); re-drawing the conv too must bring it under the bar."""
    model = _one_channel_model()
    x = np.random.default_rng(0).random((8, 16, 16, 3)).astype(np.float32)
    head_only = explain.randomization_check(model, x, method="saliency", n_layers=1)
    both = explain.randomization_check(model, x, method="saliency", n_layers=2)
    print(f"randomization positive control: head only {np.round(head_only, 3)}, both {np.round(both, 3)}")
    assert (head_only > 0.99).all() and np.median(head_only) >= explain.MAX_RANDOMIZATION_SPEARMAN
    assert np.median(both) < explain.MAX_RANDOMIZATION_SPEARMAN


def _hand_gaussian_blur(images, sigma):
    """Separable Gaussian per channel: radius round(4 sigma), mirror padding at the edges (edge pixel repeated)."""
    radius = int(4 * sigma + 0.5)
    weights = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    weights /= weights.sum()
    out = np.asarray(images, np.float64)
    for axis in (1, 2):
        pad = [(0, 0)] * 4
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="symmetric")
        length = out.shape[axis]
        out = sum(w * np.take(padded, np.arange(k, k + length), axis=axis) for k, w in enumerate(weights))
    return out


def test_insertion_auc_starts_from_a_blurred_copy_by_default():
    """By hand: a fixed Laplacian conv (edge energy, which blur removes), pixels restored most salient first."""
    size, steps = 40, 4
    inputs = keras.Input((size, size, 3), name="image")
    h = keras.layers.Conv2D(1, 3, activation="relu", name="edges", use_bias=False)(inputs)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="prediction")(h))
    laplace = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float32)
    model.get_layer("edges").set_weights([np.repeat(laplace[:, :, None, None], 3, axis=2) / 3])

    def edges(images):  # the conv by hand: valid 3x3 Laplacian of the channel mean, ReLU, mean
        g = images.mean(axis=-1)
        lap = g[:, :-2, 1:-1] + g[:, 2:, 1:-1] + g[:, 1:-1, :-2] + g[:, 1:-1, 2:] - 4 * g[:, 1:-1, 1:-1]
        return np.maximum(lap, 0).mean(axis=(1, 2))

    rng = np.random.default_rng(0)
    x = rng.random((6, size, size, 3)).astype(np.float32)
    sigma = size / 20  # RISE's blur: about 11 px at 224 px
    blurred = _hand_gaussian_blur(x, sigma)
    sharp, smooth = edges(x).mean(), edges(blurred).mean()
    scale = 6 / (sharp - smooth)
    model.get_layer("prediction").set_weights([np.array([[scale]], np.float32),
                                               np.array([-scale * (sharp + smooth) / 2], np.float32)])
    maps = rng.random((6, size, size)).astype(np.float32)
    rank = np.argsort(np.argsort(-maps.reshape(6, -1), axis=1), axis=1).reshape(maps.shape)
    curve = []
    for k in range(steps + 1):
        shown = (rank < round(k * size * size / steps))[..., None]
        curve.append(1 / (1 + np.exp(-(scale * edges(np.where(shown, x, blurred)) - scale * (sharp + smooth) / 2))))
    curve = np.array(curve)
    assert curve[0].max() < 0.1 and curve[-1].min() > 0.9  # the blurred start is far from the image
    expected = (curve[:-1] + curve[1:]).sum(axis=0) / (2 * steps)
    np.testing.assert_allclose(explain.insertion_auc(model, x, maps, steps=steps), expected, atol=2e-4)
    black = explain.insertion_auc(model, x, maps, steps=steps, baseline=0.0)
    assert np.abs(black - expected).min() > 0.01  # the default is not a black start


def test_ensemble_of_identical_members_has_no_spread(trained):
    model, x = trained["model"], trained["x"][:4]
    single = explain.gradcam(model, x)
    combined, spread = explain.ensemble_gradcam([model, model], x, target="predicted")
    np.testing.assert_allclose(combined, single, atol=1e-5)
    assert spread.max() < 1e-5


def test_ensemble_weights_select_members(trained):
    other = tiny_cnn()
    model, x = trained["model"], trained["x"][:4]
    combined, spread = explain.ensemble_gradcam([model, other], x, weights=[3, 0])
    np.testing.assert_allclose(combined, explain.gradcam(model, x), atol=1e-5)
    assert spread.max() < 1e-5


@pytest.mark.parametrize("architecture, expected", [
    ("ResNet50", "conv5_block3_out"), ("DenseNet121", "relu"), ("EfficientNetB0", "top_activation"),
])
def test_layer_autopick_on_member_backbones(architecture, expected):
    base = getattr(keras.applications, architecture)(weights=None, include_top=False, input_shape=(32, 32, 3))
    h = keras.layers.GlobalAveragePooling2D(name="head_pool")(base.output)
    h = keras.layers.Dense(4, activation="relu", name="head_dense2")(h)
    model = keras.Model(base.input, keras.layers.Dense(1, activation="sigmoid", name="prediction")(h))
    assert explain.GradCAM(model).layer == expected


def test_layer_autopick_skips_the_dense_head():
    assert explain.GradCAM(tiny_cnn(size=8, head_dense=True)).layer == "conv_last"


def test_zone_attention_known_shares():
    z = np.zeros((3, 4, 6), np.int8)
    z[:, :2, :2], z[:, 2:, :2], z[:, :2, 4:] = 1, 3, 4
    maps = np.zeros((3, 4, 6))
    maps[0, 0, 0] = 3.0   # all in right_upper
    maps[0, 0, 3] = -5.0  # negative values are ignored
    maps[1, 3, 0] = maps[1, 0, 2] = 1.0  # half right_lower, half outside
    table = explain.zone_attention(maps, z)
    assert list(table.columns) == list(explain.ZONE_COLUMNS)
    assert table.loc[0, "right_upper"] == 1 and table.loc[0, "off_lung_attention"] == 0
    assert table.loc[1, "right_lower"] == table.loc[1, "off_lung_attention"] == 0.5
    assert table.loc[2].isna().all()  # no positive mass
    np.testing.assert_allclose(table.iloc[:2].sum(axis=1), 1)


def test_zone_attention_accepts_masks():
    masks = np.zeros((2, 12, 12), bool)
    masks[:, 2:11, 1:5] = masks[:, 2:11, 7:11] = True
    maps = np.random.default_rng(0).random((2, 12, 12))
    expected = explain.zone_attention(maps, lungs.zones(masks))
    np.testing.assert_allclose(explain.zone_attention(maps, masks), expected)
    np.testing.assert_allclose(expected["off_lung_attention"], (maps * ~masks).sum((1, 2)) / maps.sum((1, 2)))


def test_background_sample_is_balanced_and_seeded():
    x = np.random.default_rng(0).random((40, 4, 4, 3), dtype=np.float32)
    y = np.r_[np.zeros(30, int), np.ones(10, int)]
    bg = explain.background_sample(x, y, n=16, seed=2)
    def rows(sample):
        return [int(np.flatnonzero((x == b).all(axis=(1, 2, 3)))[0]) for b in sample]

    assert (y[rows(bg)] == 1).sum() == 8 and len(set(rows(bg))) == 16
    np.testing.assert_array_equal(bg, explain.background_sample(x, y, n=16, seed=2))
    scarce = explain.background_sample(x, y, n=30)  # only 10 positives: topped up with negatives
    assert len(scarce) == 30 and (y[rows(scarce)] == 1).sum() == 10


def _two_output_model():
    inputs = keras.Input((16, 16, 3), name="image")
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(2, 3)(inputs))
    return keras.Model(inputs, [keras.layers.Dense(1)(h), keras.layers.Dense(1)(h)])


def _softmax_model():
    inputs = keras.Input((16, 16, 3), name="image")
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(2, 3)(inputs))
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(h))


GOOD = np.full((2, 16, 16, 3), 0.5, np.float32)
NAN = GOOD.copy()
NAN[0, 0, 0, 0] = np.nan

BAD_INPUTS = [
    ("rank 3", lambda m: explain.gradcam(m, GOOD[0]), DataError, "rank 4"),
    ("one channel", lambda m: explain.gradcam(m, GOOD[..., :1]), DataError, "3 channels"),
    ("NaN", lambda m: explain.gradcam(m, NAN), DataError, "NaN"),
    ("0-255 range", lambda m: explain.saliency(m, GOOD * 255), DataError, r"scaled to \[0, 1\]"),
    ("wrong size", lambda m: explain.gradcam(m, np.zeros((1, 20, 20, 3))), DataError, "model expects"),
    ("empty", lambda m: explain.gradcam(m, GOOD[:0]), DataError, "empty"),
    ("strings", lambda m: explain.gradcam(m, np.full((1, 16, 16, 3), "a")), DataError, "numeric"),
    ("missing layer", lambda m: explain.gradcam(m, GOOD, layer="conv5_block3_out"), ConfigError,
     "does not exist"),
    ("2-D layer", lambda m: explain.gradcam(m, GOOD, layer="head_pool"), ConfigError, "4-D"),
    ("unknown cam method", lambda m: explain.gradcam(m, GOOD, method="lime"), ConfigError,
     r"The 'method' parameter of gradcam must be one of 'gradcam', 'gradcam\+\+', 'layercam', 'hirescam', "
     r"'scorecam'; got 'lime'\."),
    ("unknown shap method", lambda m: explain.shap_maps(m, GOOD, GOOD, method="deep"), ConfigError,
     "'method' parameter of shap_maps .* got 'deep'"),
    ("unknown target", lambda m: explain.gradcam(m, GOOD, target="virus"), ConfigError,
     "'target' parameter of GradCAM must be one of .* got 'virus'"),
    ("bad target array", lambda m: explain.gradcam(m, GOOD, target=[1, 2]), ConfigError,
     r"'target' parameter of GradCAM .* got an array of shape \(2,\)"),
    ("no background", lambda m: explain.shap_maps(m, GOOD), ConfigError,
     "'background' parameter of shap_maps is required"),
    ("bad background", lambda m: explain.shap_maps(m, GOOD, NAN), DataError, r"GradientSHAP: background has \d+ NaN"),
    ("batch size 0", lambda m: explain.gradcam(m, GOOD, batch_size=0), ConfigError,
     "'batch_size' parameter of GradCAM must be an int >= 1; got 0"),
    ("max_n 0", lambda m: explain.gradcam(m, GOOD, method="scorecam", max_n=0), ConfigError,
     "'max_n' parameter of ScoreCAM"),
    ("maps shape", lambda m: explain.deletion_auc(m, GOOD, np.zeros((2, 8, 8))), DataError,
     "maps must have shape"),
    ("baseline", lambda m: explain.deletion_auc(m, GOOD, GOOD[..., 0], baseline="noise"), ConfigError,
     "'baseline' parameter of deletion_auc must be a number in \\[0, 1\\] or 'blur'; got 'noise'"),
    ("unknown metric", lambda m: explain.random_map_baseline(m, GOOD, metric="auc"), ConfigError,
     "'metric' parameter of random_map_baseline .* got 'auc'"),
    ("ensemble weights", lambda m: explain.ensemble_gradcam([m, m], GOOD, weights=[1]), ConfigError,
     "'weights' parameter of ensemble_gradcam must be 2 finite"),
    ("no members", lambda m: explain.ensemble_gradcam([], GOOD), ConfigError,
     "'models' parameter of ensemble_gradcam"),
    ("two outputs", lambda m: explain.gradcam(_two_output_model(), GOOD), ConfigError, "one output"),
    ("softmax output", lambda m: explain.gradcam(_softmax_model(), GOOD), ConfigError, "one sigmoid unit"),
    ("not a model", lambda m: explain.gradcam(lambda x: x, GOOD), ConfigError, "keras.Model"),
    ("randomize method", lambda m: explain.randomization_check(m, GOOD, method="shap"), ConfigError,
     "'method' parameter of randomization_check .* got 'shap'"),
    ("zone ids", lambda m: explain.zone_attention(GOOD[..., 0], np.full((2, 16, 16), 9)), DataError,
     "zone ids"),
    ("labels", lambda m: explain.background_sample(GOOD, [0, 2]), DataError, "labels"),
]


@pytest.mark.parametrize("call, error, match", [case[1:] for case in BAD_INPUTS],
                         ids=[case[0] for case in BAD_INPUTS])
def test_bad_inputs_raise_clear_errors(untrained, call, error, match):
    with pytest.raises(error, match=match):
        call(untrained)


def test_cams_are_upsampled_onto_their_receptive_fields():
    # Feature map = 8x8 average pooling of the input, so the only active cell (1, 2)
    # covers rows 8-15 and columns 16-23: its map must be centred at (11.5, 19.5).
    inputs = keras.Input((32, 32, 3), name="image")
    pooled = keras.layers.AveragePooling2D(8, name="pool")(inputs)
    head = keras.layers.Dense(1, activation="sigmoid", name="prediction")
    model = keras.Model(inputs, head(keras.layers.GlobalAveragePooling2D(name="head_pool")(pooled)))
    head.set_weights([np.ones((3, 1)), np.zeros(1)])
    x = np.zeros((1, 32, 32, 3), np.float32)
    x[0, 8:16, 16:24] = 1
    for method in explain.CAM_METHODS:
        cam = explain.gradcam(model, x, method=method, max_n=3)[0]
        rows, cols = np.indices(cam.shape)
        centre = (rows * cam).sum() / cam.sum(), (cols * cam).sum() / cam.sum()
        np.testing.assert_allclose(centre, (11.5, 19.5), atol=0.05, err_msg=method)
        assert cam[8:16, 16:24].max() == cam.max() == 1
