import keras
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pneumoxai import data, models
from pneumoxai.config import parse_config
from pneumoxai.errors import ConfigError, DataError, RunFolderError, UnsafeModelError, WeightsUnavailableError


def tiny_config(**overrides):
    member = {"name": "tiny", "weights": None, "image_size": 32, "dense_units": [16], "batch_size": 8,
              "epochs_frozen": 1, "epochs_finetune": 0, "learning_rate": 1e-3, "bn_momentum": 0.9,
              "balancing": "none", **overrides}
    return parse_config({"members": [member]})["members"][0]


@pytest.fixture(scope="module")
def generated_images():
    rng = np.random.default_rng(0)
    images = rng.normal(0.35, 0.05, (48, 32, 32, 3)).clip(0, 1).astype(np.float32)
    labels = np.arange(48) % 2
    images[labels == 1, 8:24, 4:16, :] = 0.9
    return images, labels


@pytest.fixture(scope="module")
def trained_member(generated_images):
    images, labels = generated_images
    model = models.build_member(32, weights=None, seed=0, dense_units=(16,), bn_momentum=0.9)
    info = models.train_member(model, images[:36], labels[:36], images[36:], labels[36:], tiny_config(), verbose=0)
    return model, info


def test_member_layers_are_flat_and_named():
    model = models.build_member(32, weights=None, dense_units=(8, 4))
    names = [layer.name for layer in model.layers]
    assert names[:2] == ["image", "preprocess"]
    assert names[-8:] == ["head_pool", "head_dense1", "head_bn1", "head_dropout1",
                          "head_dense2", "head_bn2", "head_dropout2", "prediction"]
    assert model.get_layer("conv5_block3_out").output.shape[-1] == 2048
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)
    assert model.get_layer("head_dense1").kernel_regularizer is not None


@pytest.mark.parametrize("backbone, last", [("densenet121", "relu"), ("efficientnetb0", "top_activation")])
def test_other_backbones_build(backbone, last):
    model = models.build_member(32, weights=None, backbone=backbone, dense_units=(8,))
    assert model.output_shape == (None, 1)
    assert model.get_layer(last).output.ndim == 4


def test_preprocess_matches_keras_resnet_preprocessing():
    rng = np.random.default_rng(0)
    x = rng.random((2, 8, 8, 3)).astype(np.float32)
    ours = models.BackbonePreprocess("caffe")(x)
    reference = keras.applications.resnet50.preprocess_input(x * 255.0)
    np.testing.assert_allclose(np.asarray(ours), reference, atol=1e-3)
    torch_mode = keras.applications.densenet.preprocess_input(x * 255.0)
    np.testing.assert_allclose(np.asarray(models.BackbonePreprocess("torch")(x)), torch_mode, atol=1e-4)


def test_same_seed_same_weights_different_seed_differs():
    a = models.build_member(32, weights=None, seed=3, dense_units=(8,))
    b = models.build_member(32, weights=None, seed=3, dense_units=(8,))
    c = models.build_member(32, weights=None, seed=4, dense_units=(8,))
    for name in ("conv1_conv", "conv5_block3_3_conv", "head_dense1"):
        np.testing.assert_array_equal(a.get_layer(name).kernel.numpy(), b.get_layer(name).kernel.numpy())
        assert not np.array_equal(a.get_layer(name).kernel.numpy(), c.get_layer(name).kernel.numpy())


@pytest.mark.parametrize("kwargs, error, match", [
    ({"weights": "/nonexistent/resnet.h5"}, WeightsUnavailableError, r"does not exist.*Received: weights="),
    ({"backbone": "vgg16", "weights": None}, ConfigError, "'backbone' parameter"),
    ({"input_size": 16, "weights": None}, ConfigError, "'input_size' parameter"),
])
def test_build_member_errors(kwargs, error, match):
    kwargs.setdefault("input_size", 32)
    with pytest.raises(error, match=match):
        models.build_member(**kwargs)


def test_imagenet_offline_gives_actionable_error(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -3] "
                        "Temporary failure in name resolution")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(keras.utils, "get_file", offline)
    monkeypatch.setattr("keras.src.applications.resnet.file_utils.get_file", offline)
    with pytest.raises(WeightsUnavailableError) as info:
        models.build_member(32, weights="imagenet")
    message = str(info.value)
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert str(tmp_path / "models") in message and "weights=None" in message
    assert message.endswith("Received: weights='imagenet'")


def test_training_learns_planted_signal(trained_member, generated_images):
    model, info = trained_member
    images, labels = generated_images
    assert info["epochs_run"] == 1 and set(info["history"]) == {"full"}
    probs = models.predict_proba(model, images)
    assert probs.shape == (48,) and np.all((probs >= 0) & (probs <= 1))
    # Held-out images (36-47, never trained on): the planted patch ranks every positive first.
    held_out = slice(36, None)
    assert roc_auc_score(labels[held_out], probs[held_out]) == 1.0


def test_same_seed_and_config_reproduce_the_predictions(trained_member, generated_images):
    # The tolerance the member cards state: multi-threaded float reductions are not bit-exact.
    images, labels = generated_images
    model = models.build_member(32, weights=None, seed=0, dense_units=(16,), bn_momentum=0.9)
    models.train_member(model, images[:36], labels[:36], images[36:], labels[36:], tiny_config(), verbose=0)
    np.testing.assert_allclose(models.predict_proba(model, images), models.predict_proba(trained_member[0], images),
                               atol=1e-5)


def test_recalibrate_batchnorm_is_exact_mean_of_batch_statistics():
    rng = np.random.default_rng(0)
    inputs = keras.Input((3,))
    outputs = keras.layers.BatchNormalization(momentum=0.99, name="bn")(inputs)
    model = keras.Model(inputs, outputs)
    x = (rng.normal(size=(64, 3)) * [1, 2, 3] + [5, -1, 0]).astype(np.float32)
    models.recalibrate_batchnorm(model, x, batch_size=16)
    expected = np.mean([x[i:i + 16].mean(0) for i in range(0, 64, 16)], axis=0)
    np.testing.assert_allclose(model.get_layer("bn").moving_mean.numpy(), expected, rtol=1e-5)
    assert model.get_layer("bn").momentum == 0.99


def test_train_member_rejects_single_class_and_shape_mismatch(generated_images):
    images, labels = generated_images
    model = models.build_member(32, weights=None, dense_units=(8,))
    with pytest.raises(DataError, match="single class"):
        models.train_member(model, images, np.ones(48), images, labels, tiny_config(), verbose=0)
    with pytest.raises(DataError, match="model expects 32x32"):
        models.train_member(model, images[:, :16, :16], labels, images, labels, tiny_config(), verbose=0)
    with pytest.raises(DataError, match="48 images but 47 labels"):
        models.train_member(model, images, labels[:47], images, labels, tiny_config(), verbose=0)


def test_save_load_round_trip_identical_predictions(trained_member, generated_images, tmp_path):
    model, info = trained_member
    images, _ = generated_images
    card = models.save_member(tmp_path / "m", model, {"seed": 0, "history": info["history"]})
    loaded, loaded_card = models.load_member(tmp_path / "m")
    np.testing.assert_array_equal(models.predict_proba(model, images), models.predict_proba(loaded, images))
    assert loaded_card["model_sha256"] == card["model_sha256"] and loaded_card["versions"]["keras"]
    assert not list((tmp_path / "m").glob(".*"))
    # No optimizer state (Adam would add two copies of the weights): inference needs none.
    weight_bytes = sum(w.nbytes for w in model.get_weights())
    assert (tmp_path / "m" / "model.keras").stat().st_size < 1.2 * weight_bytes
    assert oct((tmp_path / "m" / "card.json").stat().st_mode & 0o777) != oct(0o600)


def test_load_member_refuses_corrupt_foreign_and_lambda(trained_member, tmp_path):
    import json

    model, _ = trained_member
    models.save_member(tmp_path / "m", model)
    with (tmp_path / "m" / "model.keras").open("r+b") as fh:
        fh.seek(100)
        fh.write(b"corrupt!")
    with pytest.raises(RunFolderError, match="does not match the hash"):
        models.load_member(tmp_path / "m")

    models.save_member(tmp_path / "old", model)
    card = json.loads((tmp_path / "old" / "card.json").read_text())
    card["format"] = 99
    (tmp_path / "old" / "card.json").write_text(json.dumps(card))
    with pytest.raises(RunFolderError, match="card format 99"):
        models.load_member(tmp_path / "old")

    inputs = keras.Input((8, 8, 3))  # an image input: the card's input_size is checked before the model file
    evil = keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2)(inputs))
    models.save_member(tmp_path / "evil", evil)
    with pytest.raises(UnsafeModelError, match="Lambda layer"):
        models.load_member(tmp_path / "evil")
    with pytest.raises(RunFolderError, match="not a saved member"):
        models.load_member(tmp_path / "missing")


def test_real_images_tiny_member_trains_one_epoch(real_data_root):
    frame = data.scan_dataset(real_data_root)
    rows = frame[frame.split == "train"].groupby("label").head(16)
    train, val = data.split_by_patient(rows, 0.25, seed=0)
    x_train, x_val = data.load_images(train, 32), data.load_images(val, 32)
    x, y, class_weight = data.balance(x_train, train.label.to_numpy(), "class_weight")
    model = models.build_member(32, weights=None, dense_units=(8,), bn_momentum=0.9)
    info = models.train_member(model, x, y, x_val, val.label.to_numpy(), tiny_config(balancing="class_weight"),
                               class_weight=class_weight, verbose=0)
    assert info["epochs_run"] == 1 and np.isfinite(info["history"]["full"]["val_loss"][0])


def _weights_file(tmp_path, size=32):
    """A ResNet50 weights file standing in for ImageNet's (random weights, no download)."""
    path = tmp_path / "resnet50_notop.weights.h5"
    keras.applications.ResNet50(include_top=False, weights=None, input_shape=(size, size, 3)).save_weights(path)
    return str(path)


def test_phase1_on_cached_features_trains_the_same_head(generated_images, tmp_path):
    # Without augmentation and dropout, phase 1 on cached backbone features is the same
    # computation as phase 1 through the frozen backbone: same batches, same gradients.
    images, labels = generated_images
    weights = _weights_file(tmp_path)
    config = tiny_config(weights=weights, epochs_frozen=2, epochs_finetune=0, dropout=0.0, augment={})
    heads = []
    for cached in (False, True):
        model = models.build_member(32, weights=weights, seed=0, dense_units=(16,), dropout=0.0)
        info = models.train_member(model, images[:36], labels[:36], images[36:], labels[36:],
                                   {**config, "cache_features": cached}, verbose=0)
        assert info["phase1_cached_features"] is cached and info["epochs_run"] == 2
        heads.append([model.get_layer(n).get_weights() for n in ("head_dense1", "head_bn1", "prediction")])
    untouched = models.build_member(32, weights=weights, seed=0, dense_units=(16,), dropout=0.0)
    initial = np.concatenate([w.ravel() for n in ("head_dense1", "head_bn1", "prediction")
                              for w in untouched.get_layer(n).get_weights()])
    cached, reference = (np.concatenate([w.ravel() for layer in head for w in layer]) for head in heads[::-1])
    # Adam turns float noise in near-zero gradients into steps of up to the learning rate
    # (1e-3), so a few weights may differ by that much; a wrong feature path (other
    # features, other batches) changes the direction of every update.
    step_cached, step_reference = cached - initial, reference - initial
    assert np.abs(step_reference).max() > 1e-3
    assert np.corrcoef(step_cached, step_reference)[0, 1] > 0.999
    assert np.mean(np.abs(cached - reference) <= 2e-4 + 1e-3 * np.abs(reference)) > 0.99


def test_cached_features_need_pretrained_weights(generated_images):
    images, labels = generated_images
    model = models.build_member(32, weights=None, dense_units=(8,))
    with pytest.raises(ConfigError, match="cache_features needs pretrained backbone weights"):
        models.train_member(model, images, labels, images, labels, tiny_config(cache_features=True), verbose=0)


def test_mixed_precision_member_keeps_a_float32_output_and_restores_the_policy(generated_images):
    images, labels = generated_images
    # force_precision: the layout must hold on CPUs that would emulate bfloat16 too.
    model = models.build_member(32, weights=None, dense_units=(8,), precision="mixed_bfloat16", force_precision=True)
    assert keras.config.dtype_policy().name == "float32"
    assert model.get_layer("conv1_conv").compute_dtype == "bfloat16"
    assert model.get_layer("conv1_conv").kernel.dtype == "float32"  # variables stay float32
    assert model.get_layer("prediction").compute_dtype == "float32"
    probs = models.predict_proba(model, images[:4])
    assert probs.dtype == np.float64 and np.all((probs > 0) & (probs < 1))



@pytest.mark.parametrize("kwargs, env, match", [
    ({"name": "horovod"}, {}, "'strategy' parameter of get_strategy must be one of .*; got 'horovod'"),
    ({"name": "multiworker"}, {"TF_CONFIG": ""}, "needs the TF_CONFIG environment variable"),
])
def test_get_strategy_errors(monkeypatch, kwargs, env, match):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=match):
        models.get_strategy(**kwargs)


def test_default_strategy_is_one_replica_and_chief():
    strategy = models.get_strategy()
    assert strategy.num_replicas_in_sync == 1 and models.is_chief(strategy)


MIRRORED_SCRIPT = """
import json, sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from sklearn.metrics import roc_auc_score
from pneumoxai import models
from pneumoxai.config import parse_config

rng = np.random.default_rng(0)
x = rng.normal(0.35, 0.05, (96, 32, 32, 3)).clip(0, 1).astype(np.float32)
y = np.arange(96) % 2
x[y == 1, 8:24, 4:16, :] = 0.9
config = parse_config({"members": [{"name": "m", "weights": None, "image_size": 32, "dense_units": [16],
                                    "batch_size": 16, "epochs_frozen": 2, "epochs_finetune": 0,
                                    "learning_rate": 1e-3, "bn_momentum": 0.9, "recalibrate_bn": True,
                                    "balancing": "none", "augment": {}}]})["members"][0]
strategy = models.get_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
with strategy.scope():
    model = models.build_member(32, weights=None, dense_units=(16,), bn_momentum=0.9)
    info = models.train_member(model, x[:64], y[:64], x[64:], y[64:], config, verbose=0)
    kind = type(model.get_layer("conv1_conv").kernel.value).__name__
auc = roc_auc_score(y[64:], models.predict_proba(model, x[64:]))
print(json.dumps({"replicas": strategy.num_replicas_in_sync, "variable": kind, "auc": auc,
                  "epochs": info["epochs_run"], "chief": models.is_chief(strategy)}))
"""


def test_mirrored_strategy_over_two_cpu_devices_learns_the_planted_signal(tmp_path):
    import json
    import os
    import subprocess
    import sys

    # Logical devices must be configured before TensorFlow starts, hence a fresh process.
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED_SCRIPT)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2 and report["chief"] and report["epochs"] >= 1
    assert "Mirrored" in report["variable"]
    assert report["auc"] >= 0.9
