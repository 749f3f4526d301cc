import os
from pathlib import Path

import numpy as np
import pytest

import keras

from conftest import write_image
from pneumoxai import data, models
from pneumoxai.predict import predict_embeddings, predict_members
from pneumoxai.errors import DataError


def mean_model(size=16, scale=4.0, seed=0):
    """Probability = sigmoid(scale * (mean of the left image half - 0.5)): flips change it."""
    inputs = keras.Input((size, size, 3), name="image")
    left = keras.layers.Cropping2D(((0, 0), (0, size // 2)))(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(left)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="prediction",
                                 kernel_initializer=keras.initializers.Constant(scale / 3),
                                 bias_initializer=keras.initializers.Constant(-scale / 2))(pooled)
    return keras.Model(inputs, outputs)


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return rng.random((10, 16, 16, 3)).astype(np.float32)


def expected(images, scale=4.0):
    return 1 / (1 + np.exp(-scale * (images[:, :, :8].mean(axis=(1, 2, 3)) - 0.5)))


def test_every_batch_has_one_shape_so_the_model_is_traced_once(images):
    model = mean_model()
    shapes, original = [], model.predict_on_batch

    def recording(batch):
        shapes.append(np.shape(batch))
        return original(batch)

    model.predict_on_batch = recording
    P = predict_members([model], images, batch_size=4, tta=True, progress=False)  # 10 = 4 + 4 + 2 images
    assert set(shapes) == {(4, 16, 16, 3)} and len(shapes) == 3 * 4  # 3 batches x 4 TTA variants
    np.testing.assert_allclose(models.predict_proba(model, images, batch_size=4), expected(images), rtol=1e-5)
    assert set(shapes) == {(4, 16, 16, 3)}
    assert P.shape == (10, 1)


def test_probabilities_match_a_direct_computation(images):
    P = predict_members([mean_model(), mean_model(scale=8.0)], images, batch_size=3, progress=False)
    assert P.shape == (10, 2)
    np.testing.assert_allclose(P[:, 0], expected(images), rtol=1e-5)
    np.testing.assert_allclose(P[:, 1], expected(images, 8.0), rtol=1e-5)


def test_tta_averages_the_identity_the_flip_and_both_rotations(images):
    import cv2

    P = predict_members([mean_model()], images, tta=True, progress=False)[:, 0]
    rotation = {angle: cv2.getRotationMatrix2D((8.0, 8.0), angle, 1.0) for angle in (-5.0, 5.0)}
    views = [images, images[:, :, ::-1]] + [
        np.stack([cv2.warpAffine(image, rotation[angle], (16, 16), borderMode=cv2.BORDER_CONSTANT)
                  for image in images]) for angle in (-5.0, 5.0)]
    each = np.array([expected(view) for view in views])  # (4 views, 10 images)
    np.testing.assert_allclose(P, each.mean(axis=0), rtol=1e-5)
    # Every view matters at this tolerance: the identity and flip alone, or the flip alone, are far off.
    assert np.abs(P - each[:2].mean(axis=0)).min() > 1e-3 and np.abs(P - each[1]).min() > 1e-3


def test_cache_hit_and_invalidation(tmp_path, images, monkeypatch):
    model = mean_model()
    member_dir = tmp_path / "m"
    models.save_member(member_dir, model)
    cache = tmp_path / "cache"
    first = predict_members([member_dir], images, cache_dir=cache, progress=False)
    assert len(list(cache.glob("*.npz"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("the network ran although the cache should have answered")

    monkeypatch.setattr(models.storage, "load_member", fail)
    np.testing.assert_array_equal(predict_members([member_dir], images, cache_dir=cache, progress=False), first)
    monkeypatch.undo()

    changed = images.copy()
    changed[0] = 1.0
    second = predict_members([member_dir], changed, cache_dir=cache, progress=False)
    assert len(list(cache.glob("*.npz"))) == 2 and second[0, 0] != first[0, 0]

    models.save_member(member_dir, mean_model(scale=8.0))
    third = predict_members([member_dir], images, cache_dir=cache, progress=False)
    assert len(list(cache.glob("*.npz"))) == 3
    np.testing.assert_allclose(third[:, 0], expected(images, 8.0), rtol=1e-5)


def test_a_changed_image_file_invalidates_the_cached_predictions(make_kaggle_tree, tmp_path):
    frame = data.scan_dataset(make_kaggle_tree(n_per_class=3, size=16))
    member_dir = tmp_path / "m"
    models.save_member(member_dir, mean_model())
    cache = tmp_path / "cache"
    first = predict_members([member_dir], frame, cache_dir=cache, progress=False)[:, 0]
    path = frame["path"].iloc[0]
    stat = os.stat(path)
    write_image(Path(path), np.full((16, 16), 250, np.uint8))  # same name and place, brighter pixels
    with open(path, "ab") as file:  # even with the old size (a decoder ignores bytes after the JPEG's end)
        file.write(bytes(stat.st_size - os.path.getsize(path)))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the old time stamp
    assert os.path.getsize(path) == stat.st_size
    second = predict_members([member_dir], frame, cache_dir=cache, progress=False)[:, 0]
    np.testing.assert_allclose(second, expected(data.load_images(frame, 16)), rtol=1e-5)
    assert second[0] > first[0] + 0.1 and np.array_equal(second[1:], first[1:])
    assert len(list(cache.glob("*.npz"))) == 2


def test_predict_embeddings_are_the_layers_activations(images, tmp_path):
    """Two members, batches that need padding, a cache: the named Dense layer's ReLU output, computed by hand."""
    def embedding_model(seed):
        inputs = keras.Input((16, 16, 3))
        pooled = keras.layers.GlobalAveragePooling2D()(inputs)
        hidden = keras.layers.Dense(5, activation="relu", name="embed",
                                    kernel_initializer=keras.initializers.RandomNormal(stddev=3.0, seed=seed),
                                    bias_initializer=keras.initializers.RandomNormal(stddev=1.0, seed=seed + 1))(pooled)
        return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="prediction")(hidden))

    members = [embedding_model(0), embedding_model(5)]
    by_hand = []
    for model in members:
        kernel, bias = model.get_layer("embed").get_weights()
        by_hand.append(np.maximum(images.mean(axis=(1, 2)) @ kernel + bias, 0))
    by_hand = np.concatenate(by_hand, axis=1)
    assert (by_hand > 0).mean() > 0.3 and (by_hand == 0).any()  # ReLU both active and cut
    through_keras = np.concatenate([keras.Model(m.inputs, m.get_layer("embed").output).predict(images, verbose=0)
                                    for m in members], axis=1)
    np.testing.assert_allclose(through_keras, by_hand, rtol=1e-5, atol=1e-6)
    embeddings = predict_embeddings(members, images, layer="embed", batch_size=4, cache_dir=tmp_path)
    assert embeddings.shape == (10, 10)
    np.testing.assert_allclose(embeddings, by_hand, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(predict_embeddings(members, images, layer="embed", cache_dir=tmp_path), embeddings)


def test_corrupt_cache_is_reported_and_rebuilt(tmp_path, images):
    cache = tmp_path / "cache"
    model = mean_model()
    first = predict_members([model], images, cache_dir=cache, progress=False)
    (path,) = cache.glob("*.npz")
    path.write_bytes(path.read_bytes()[:50])
    with pytest.warns(UserWarning, match="corrupt"):
        again = predict_members([model], images, cache_dir=cache, progress=False)
    np.testing.assert_array_equal(again, first)
    assert len(path.read_bytes()) > 50


def test_dataframe_input_is_loaded_at_member_size(make_kaggle_tree):
    frame = data.scan_dataset(make_kaggle_tree(n_per_class=3, size=40))
    P = predict_members([mean_model(16)], frame, progress=False)
    np.testing.assert_allclose(P[:, 0], expected(data.load_images(frame, 16)), rtol=1e-5)


@pytest.mark.parametrize("members, array, match", [
    ([], np.zeros((2, 16, 16, 3), np.float32), "at least one member"),
    ([mean_model()], np.zeros((2, 16, 16), np.float32), r"rank 4 \(n_samples, H, W, 3\)"),
    ([mean_model()], np.zeros((2, 32, 32, 3), np.float32), "model expects 16x16"),
    (["/nonexistent/member"], np.zeros((2, 16, 16, 3), np.float32), "not a saved member"),
])
def test_bad_inputs(members, array, match):
    with pytest.raises(DataError, match=match):
        predict_members(members, array, progress=False)
