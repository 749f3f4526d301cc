"""Training modes of issue 13: precision choice, LR schedules, snapshot ensembles and their
resumption, label smoothing / weight decay, progressive sizes, contrast normalisation,
random crops and the prevalence threshold. Tiny models (a conv layer and a head) keep
every fit to seconds; one test builds a 32 px ResNet50."""

import logging
import math

import keras
import numpy as np
import pytest

from pneumoxai import _io, data, metrics, models, run_folder
from pneumoxai.config import parse_config
from pneumoxai.errors import ConfigError

STEPS_PER_EPOCH = 3  # 36 training images in batches of 12


def tiny_config(**overrides):
    member = {"name": "tiny", "weights": None, "image_size": 32, "dense_units": [4], "batch_size": 12,
              "epochs_frozen": 3, "epochs_finetune": 0, "learning_rate": 1e-2, "min_learning_rate": 1e-4,
              "balancing": "none", "jit_compile": False, "augment": {}, **overrides}
    return parse_config({"members": [member]})["members"][0]


def tiny_model(size=32, seed=0):
    """A functional model shaped like a member (named layers, global pooling), small enough to train in seconds."""
    inputs = keras.Input((size, size, 3), name="image")
    x = keras.layers.Conv2D(4, 3, kernel_initializer=keras.initializers.GlorotUniform(seed), name="conv1_conv")(inputs)
    x = keras.layers.BatchNormalization(momentum=0.9, name="conv1_bn")(x)
    x = keras.layers.ReLU(name="conv1_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", kernel_initializer=keras.initializers.GlorotUniform(seed),
                                 name="prediction")(x)
    return keras.Model(inputs, outputs, name="tiny")


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    x = rng.normal(0.35, 0.05, (48, 32, 32, 3)).clip(0, 1).astype(np.float32)
    y = np.arange(48) % 2
    x[y == 1, 8:24, 4:16, :] = 0.9
    return x, y


def planned_lr(step, base, total, kind, cycles=1, low=0.0, warmup=0.3):
    """The schedules written out independently of CyclicSchedule."""
    if kind == "cosine":
        length = total / cycles
        return low + 0.5 * (base - low) * (1 + math.cos(math.pi * (step % length) / length))
    rise = warmup * total
    if step < rise:
        return base / 25 + (base - base / 25) * step / rise
    return low + 0.5 * (base - low) * (1 + math.cos(math.pi * min(1.0, (step - rise) / (total - rise))))


class LearningRateLog(keras.callbacks.Callback):
    """The learning rate each optimiser step used."""

    def __init__(self):
        super().__init__()
        self.rates, self.iterations = [], []

    def on_train_batch_begin(self, batch, logs=None):
        self.iterations.append(int(self.model.optimizer.iterations.numpy()))
        self.rates.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))


class Kill(Exception):
    pass


class KillAfterEpoch(keras.callbacks.Callback):
    """Simulate a kill right after an epoch's snapshot and resume state are written."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise Kill


# ---------------------------------------------------------------------------- precision


@pytest.mark.parametrize("native, gpu, expected", [(True, False, "mixed_bfloat16"), (False, True, "mixed_bfloat16"),
                                                   (False, False, "float32")])
def test_auto_precision_chooses_bfloat16_only_where_native(monkeypatch, caplog, native, gpu, expected):
    monkeypatch.setattr(models.precision, "_cpu_has_native_bf16", lambda: native)
    monkeypatch.setattr(models.precision, "_has_gpu", lambda: gpu)
    with caplog.at_level(logging.INFO, logger="pneumoxai.models"):
        assert models.resolve_precision("auto") == expected
    assert f"chose {expected!r}" in caplog.text


def test_explicit_bfloat16_is_refused_where_emulated_unless_forced(monkeypatch):
    monkeypatch.setattr(models.precision, "_cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(models.precision, "_has_gpu", lambda: False)
    with pytest.raises(ConfigError, match=r"precision='mixed_bfloat16' needs a GPU or a CPU with native bfloat16 "
                                          r".*set force_precision=true"):
        models.build_member(32, weights=None, dense_units=(4,), precision="mixed_bfloat16")
    assert models.resolve_precision("mixed_bfloat16", force=True) == "mixed_bfloat16"
    monkeypatch.setattr(models.precision, "_cpu_has_native_bf16", lambda: True)
    assert models.resolve_precision("mixed_bfloat16") == "mixed_bfloat16"


def test_auto_precision_member_computes_in_bfloat16_and_its_card_says_so(monkeypatch, tmp_path):
    monkeypatch.setattr(models.precision, "_cpu_has_native_bf16", lambda: True)
    model = models.build_member(32, weights=None, dense_units=(4,), precision="auto")
    assert model.get_layer("conv1_conv").compute_dtype == "bfloat16"
    assert model.get_layer("prediction").compute_dtype == "float32"
    assert models.save_member(tmp_path / "m", model)["precision"] == "mixed_bfloat16"
    monkeypatch.setattr(models.precision, "_cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(models.precision, "_has_gpu", lambda: False)
    model = models.build_member(32, weights=None, dense_units=(4,), precision="auto")
    assert models.save_member(tmp_path / "f", model)["precision"] == "float32"


# ---------------------------------------------------------------------------- schedules


def test_cyclic_schedule_hits_its_planned_values():
    cosine = models.CyclicSchedule(1e-3, 100, kind="cosine", cycles=2, min_lr=1e-5)
    # Cycle starts at the peak, is halfway down at its middle, and restarts at step 50.
    assert float(cosine(0)) == pytest.approx(1e-3)
    assert float(cosine(25)) == pytest.approx((1e-3 + 1e-5) / 2)
    assert float(cosine(49)) == pytest.approx(1e-5, abs=2e-6)
    assert float(cosine(50)) == pytest.approx(1e-3)
    onecycle = models.CyclicSchedule(1e-3, 100, kind="onecycle", min_lr=1e-5)
    assert float(onecycle(0)) == pytest.approx(4e-5)  # base / 25
    assert float(onecycle(15)) == pytest.approx(4e-5 + (1e-3 - 4e-5) / 2)
    assert float(onecycle(30)) == pytest.approx(1e-3)
    assert float(onecycle(65)) == pytest.approx((1e-3 + 1e-5) / 2)
    assert float(onecycle(100)) == pytest.approx(1e-5)


@pytest.mark.parametrize("schedule, cycles", [("cosine", 1), ("onecycle", 1)])
def test_training_uses_the_planned_learning_rate_at_every_step(images, schedule, cycles):
    x, y = images
    log = LearningRateLog()
    models.train_member(tiny_model(), x[:36], y[:36], x[36:], y[36:], tiny_config(schedule=schedule),
                        verbose=0, callbacks=[log])
    total = 3 * STEPS_PER_EPOCH
    assert log.iterations == list(range(total))
    expected = [planned_lr(step, 1e-2, total, schedule, cycles, 1e-4) for step in range(total)]
    np.testing.assert_allclose(log.rates, expected, rtol=1e-5)


def test_label_smoothing_and_weight_decay_reach_the_loss_and_optimizer(images):
    x, y = images
    model = tiny_model()
    models.train_member(model, x[:36], y[:36], x[36:], y[36:],
                        tiny_config(label_smoothing=0.2, weight_decay=0.05, epochs_frozen=1), verbose=0)
    assert isinstance(model.optimizer, keras.optimizers.AdamW)
    assert model.optimizer.weight_decay == pytest.approx(0.05)
    # Smoothed targets 0.1 / 0.9: the loss of a prediction equal to the target is its entropy, not 0.
    loss = model.loss(np.array([[1.0]]), np.array([[0.9]]))
    assert float(loss) == pytest.approx(-(0.9 * np.log(0.9) + 0.1 * np.log(0.1)), rel=1e-4)


# ---------------------------------------------------------------------------- snapshots


def test_snapshots_are_saved_at_cycle_ends_and_differ(images, tmp_path):
    x, y = images
    model = tiny_model()
    info = models.train_member(model, x[:36], y[:36], x[36:], y[36:],
                               tiny_config(schedule="cosine", snapshots=3, epochs_frozen=6, recalibrate_bn=True),
                               verbose=0,
                               snapshot_dir=tmp_path, snapshot_metadata={"run": "t"})
    folders = [tmp_path / models.snapshot_name("tiny", k) for k in (1, 2, 3)]
    assert info["snapshots"] == [str(folder) for folder in folders]
    assert not (tmp_path / run_folder.SNAPSHOT_STATE).exists()  # resume state removed once finished
    cards = [_io.read_json(folder / run_folder.CARD_FILE) for folder in folders]
    assert [card["epoch"] for card in cards] == [2, 4, 6]
    assert [card["snapshot"] for card in cards] == [1, 2, 3] and cards[0]["run"] == "t"
    loaded = [models.load_member(folder)[0] for folder in folders]
    kernels = [m.get_layer("conv1_conv").get_weights()[0] for m in loaded]
    for a in range(3):
        for b in range(a + 1, 3):
            assert not np.allclose(kernels[a], kernels[b])
    # The last snapshot is the trained member itself, batch-norm statistics included.
    np.testing.assert_allclose(kernels[2], model.get_layer("conv1_conv").get_weights()[0], rtol=1e-6)
    for ours, saved in zip(model.get_layer("conv1_bn").get_weights(), loaded[2].get_layer("conv1_bn").get_weights()):
        np.testing.assert_allclose(ours, saved, rtol=1e-6)
    reference = tiny_model()
    reference.set_weights(model.get_weights())
    models.recalibrate_batchnorm(reference, x[:36])
    np.testing.assert_allclose(reference.get_layer("conv1_bn").moving_mean.numpy(),
                               model.get_layer("conv1_bn").moving_mean.numpy(), rtol=1e-5, atol=1e-6)


def test_a_killed_run_resumes_without_retraining_finished_snapshots(images, tmp_path):
    x, y = images
    config = tiny_config(schedule="cosine", snapshots=3, epochs_frozen=3)
    with pytest.raises(Kill):
        models.train_member(tiny_model(), x[:36], y[:36], x[36:], y[36:], config, verbose=0,
                            snapshot_dir=tmp_path, callbacks=[KillAfterEpoch(1)])
    first, second = (tmp_path / models.snapshot_name("tiny", k) for k in (1, 2))
    assert models.is_member_dir(first) and models.is_member_dir(second)
    assert not (tmp_path / models.snapshot_name("tiny", 3)).exists()
    hashes = [_io.sha256_file(folder / run_folder.MODEL_FILE) for folder in (first, second)]
    log = LearningRateLog()
    info = models.train_member(tiny_model(seed=5), x[:36], y[:36], x[36:], y[36:], config, verbose=0,
                               snapshot_dir=tmp_path, callbacks=[log])
    assert info["epochs_run"] == 1  # only the unfinished third cycle
    assert [_io.sha256_file(folder / run_folder.MODEL_FILE) for folder in (first, second)] == hashes
    # Optimiser state came back too: the schedule continues at step 6, not from 0.
    assert log.iterations == [6, 7, 8]
    np.testing.assert_allclose(log.rates, [planned_lr(s, 1e-2, 9, "cosine", 3, 1e-4) for s in (6, 7, 8)], rtol=1e-5)
    assert models.is_member_dir(tmp_path / models.snapshot_name("tiny", 3))


def test_resume_state_of_another_config_is_refused(images, tmp_path):
    x, y = images
    with pytest.raises(Kill):
        models.train_member(tiny_model(), x[:36], y[:36], x[36:], y[36:], tiny_config(schedule="cosine"),
                            verbose=0, snapshot_dir=tmp_path, callbacks=[KillAfterEpoch(0)])
    with pytest.raises(ConfigError, match="holds the training state of another config"):
        models.train_member(tiny_model(), x[:36], y[:36], x[36:], y[36:],
                            tiny_config(schedule="cosine", learning_rate=1e-3), verbose=0, snapshot_dir=tmp_path)


@pytest.mark.parametrize("overrides, snapshot_dir, match", [
    ({"snapshots": 3}, "dir", r"snapshots=3 needs schedule='cosine'"),
    ({"snapshots": 2, "schedule": "cosine"}, "dir", r"snapshots=2 must divide the epochs \(3\)"),
    ({"snapshots": 3, "schedule": "cosine"}, None, r"snapshots=3 needs a snapshot_dir"),
    ({"snapshots": 3, "schedule": "cosine", "weights": "imagenet"}, "dir", r"snapshots > 1 needs weights=None"),
    ({"progressive_sizes": [32, 48], "weights": "imagenet"}, "dir", r"progressive_sizes needs weights=None"),
])
def test_inconsistent_training_modes_are_refused(images, tmp_path, overrides, snapshot_dir, match):
    x, y = images
    with pytest.raises(ConfigError, match=match):
        models.train_member(tiny_model(), x[:36], y[:36], x[36:], y[36:], tiny_config(**overrides), verbose=0,
                            snapshot_dir=tmp_path if snapshot_dir else None)


@pytest.mark.parametrize("key, value, match", [
    ("precision", "bfloat16", r"The 'precision' option in 'members\[0\]' must be one of .*'auto'; got 'bfloat16'"),
    ("schedule", "step", r"The 'schedule' option .* must be one of 'plateau', 'cosine', 'onecycle'"),
    ("snapshots", 0, r"The 'snapshots' option .* must be an int in \[1, 100\]"),
    ("label_smoothing", 0.7, r"The 'label_smoothing' option .* must be a number in \[0, 0.5\]"),
    ("weight_decay", -1, r"The 'weight_decay' option .* must be a number in \[0, 1\]"),
    ("progressive_sizes", [96, 0], r"The 'progressive_sizes' option .* must be None or a non-empty list"),
    ("input_norm", "clahe", r"The 'input_norm' option .* must be one of 'none', 'standardize'"),
    ("random_crop", 0.9, r"The 'random_crop' option .* must be a number in \[0, 0.5\]"),
])
def test_new_member_options_are_validated(key, value, match):
    with pytest.raises(ConfigError, match=match):
        tiny_config(**{key: value})


def test_new_options_default_to_todays_behaviour():
    config = parse_config({"members": [{"name": "m"}]})
    member = config["members"][0]
    assert (member["precision"], member["schedule"], member["snapshots"], member["label_smoothing"],
            member["weight_decay"], member["progressive_sizes"], member["input_norm"], member["random_crop"]) == (
        "float32", "plateau", 1, 0.0, 0.0, None, "none", 0.0)
    assert config["evaluate"]["deployment_prevalence"] is None


# ---------------------------------------------------------------------------- sizes and inputs


def test_progressive_sizes_split_the_epochs_and_train_at_each_size(images, monkeypatch):
    assert models.training._size_segments([16, 24, 32], 7) == [(16, 0, 2), (24, 2, 4), (32, 4, 7)]
    assert models.training._size_segments([16, 32], 1) == [(32, 0, 1)]
    x, y = images
    small = data.make_dataset(x, y, batch_size=12, size=16)
    assert next(iter(small))[0].shape == (12, 16, 16, 3)
    x = np.asarray(keras.ops.image.resize(x, (48, 48)))
    built, make_dataset = [], data.make_dataset

    def recording(*args, **kwargs):
        dataset = make_dataset(*args, **kwargs)
        built.append((kwargs.get("training", False), tuple(next(iter(dataset))[0].shape[1:3])))
        return dataset

    monkeypatch.setattr(data, "make_dataset", recording)
    model = tiny_model(48)
    before = model.get_layer("conv1_conv").get_weights()[0].copy()
    info = models.train_member(model, x[:36], y[:36], x[36:], y[36:],
                               tiny_config(progressive_sizes=[32, 48], epochs_frozen=2), verbose=0)
    assert [size for training, size in built if training] == [(32, 32), (48, 48)]
    assert info["epochs_run"] == 2
    assert model.input_shape == (None, 48, 48, 3)  # the member keeps its own size
    assert not np.allclose(before, model.get_layer("conv1_conv").get_weights()[0])  # trained weights copied back


def test_standardize_makes_the_input_invariant_to_exposure_and_contrast(images):
    x = images[0][:4]
    layer = models.BackbonePreprocess("raw255", input_norm="standardize", name="preprocess")
    reference = np.asarray(layer(x))
    darker = np.asarray(layer(0.5 * x + 0.1))
    np.testing.assert_allclose(darker, reference, rtol=1e-4, atol=1e-3)
    per_image = reference.reshape(4, -1) / 255.0
    np.testing.assert_allclose(per_image.mean(axis=1), 0.5, atol=1e-5)
    np.testing.assert_allclose(per_image.std(axis=1), 0.2, atol=1e-5)
    restored = models.BackbonePreprocess.from_config(layer.get_config())
    assert restored.input_norm == "standardize"
    assert np.all(np.isfinite(np.asarray(layer(np.zeros((1, 8, 8, 3), np.float32)))))  # a blank image


def test_random_crop_zooms_in(images):
    centred = np.zeros((8, 32, 32, 3), np.float32)
    centred[:, 8:24, 8:24] = 1.0  # a bright square filling a quarter of the image
    (batch, _), = data.make_dataset(centred, np.zeros(8), batch_size=8, training=True,
                                    augment={"crop": 0.4}, seed=0).take(1)
    bright = np.asarray(batch).mean(axis=(1, 2, 3))
    assert np.all(bright >= 0.25 - 1e-3) and bright.max() > 0.3


# ---------------------------------------------------------------------------- thresholds


def test_prevalence_threshold_at_one_half_is_youden_and_moves_with_prevalence():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    p = np.clip(0.3 * y + rng.normal(0.35, 0.2, 300), 0, 1).round(3)
    assert metrics.prevalence_threshold(y, p, 0.5) == metrics.choose_threshold(y, p, method="youden")
    # Brute force: expected accuracy at 90% prevalence of every candidate threshold.
    candidates = np.unique(p)
    score = [0.9 * np.mean(p[y == 1] >= t) + 0.1 * np.mean(p[y == 0] < t) for t in candidates]
    assert metrics.prevalence_threshold(y, p, 0.9) == candidates[np.flatnonzero(score == np.max(score))[-1]]
    assert metrics.prevalence_threshold(y, p, 0.9) < metrics.prevalence_threshold(y, p, 0.1)


@pytest.mark.parametrize("prevalence", [0, 1, "half", None])
def test_prevalence_threshold_rejects_bad_prevalence(prevalence):
    with pytest.raises(ConfigError, match=r"The 'prevalence' parameter of prevalence_threshold must be a number "
                                        r"in \(0, 1\)"):
        metrics.prevalence_threshold([0, 1], [0.2, 0.8], prevalence)
