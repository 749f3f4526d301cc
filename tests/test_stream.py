"""Streamed prediction: a table decoded in chunks gives what the whole decoded array gives, with the same
unreadable-file reports and the same cache keys."""

import hashlib
import warnings

import keras
import numpy as np
import pandas as pd
import pytest

from conftest import write_image
from pneumoxai import _io, data
from pneumoxai.errors import ConfigError, DataError, SkippedFilesWarning
from pneumoxai.models import save_member
from pneumoxai.predict import predict_embeddings, predict_members
from pneumoxai.run_folder import MODEL_FILE, embedding_cache_file, prediction_cache_file

N_IMAGES = 300


def small_model(size=16, seed=0):
    """A seeded conv net whose output depends on every pixel and on left-right order (so TTA matters)."""
    inputs = keras.Input((size, size, 3), name="image")
    x = keras.layers.Conv2D(4, 3, activation="relu", kernel_initializer=keras.initializers.GlorotUniform(seed))(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(3, activation="tanh", name="head_dense2",
                           kernel_initializer=keras.initializers.GlorotUniform(seed + 1))(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="prediction",
                                 kernel_initializer=keras.initializers.RandomNormal(0, 6, seed=seed + 2))(x)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stream")
    rng = np.random.default_rng(0)
    # Each image a random brightness and left-right ramp plus noise, so the models' outputs spread out.
    ramp = np.linspace(-1, 1, 24)
    paths = [str(write_image(folder / f"img{i:03d}.png", np.clip(
        255 * (rng.uniform(0.2, 0.8) + rng.uniform(-0.2, 0.2) * ramp) + rng.normal(0, 20, (20, 24)), 0, 255
    ).astype(np.uint8))) for i in range(N_IMAGES)]
    return pd.DataFrame({"path": paths, "label": rng.integers(0, 2, N_IMAGES)})


@pytest.fixture(scope="module")
def members():
    return [small_model(16, 0), small_model(16, 5), small_model(24, 9)]


def counting_decodes(monkeypatch):
    """The sizes of the decoded chunks, recorded as they are decoded."""
    sizes, original = [], data._decode_many

    def recording(paths, *args):
        sizes.append(len(paths))
        return original(paths, *args)

    monkeypatch.setattr(data, "_decode_many", recording)
    return sizes


@pytest.mark.parametrize("tta", [False, True])
def test_chunks_of_64_give_the_whole_array_probabilities(table, members, monkeypatch, tta):
    whole = np.column_stack([predict_members([m], data.load_images(table, m.input_shape[1]), tta=tta,
                                             progress=False)[:, 0] for m in members])
    sizes = counting_decodes(monkeypatch)
    streamed = predict_members(members, table, chunk_size=64, tta=tta, progress=False)
    np.testing.assert_allclose(streamed, whole, rtol=0, atol=1e-6)
    assert whole.std(axis=0).min() > 0.01  # the models do tell the images apart
    # Decoded once per input size (16 for two members, 24 for one), never more than 64 files at a time.
    assert sizes == [64, 64, 64, 64, 44] * 2


def test_chunked_embeddings_equal_the_whole_array_ones(table, members):
    whole = np.concatenate([predict_embeddings([m], data.load_images(table, m.input_shape[1]))
                            for m in members], axis=1)
    streamed = predict_embeddings(members, table, chunk_size=64)
    assert streamed.shape == (N_IMAGES, 9) and streamed.dtype == np.float32
    np.testing.assert_allclose(streamed, whole, rtol=0, atol=1e-6)


def test_iter_images_concatenates_to_load_images(table):
    for interpolation in ("auto", "pil-bilinear"):
        images, ok = data.load_images(table, 12, interpolation=interpolation, return_mask=True)
        chunks = list(data.iter_images(table, 12, chunk_size=64, interpolation=interpolation))
        assert [len(mask) for _, mask in chunks] == [64, 64, 64, 64, 44]
        np.testing.assert_array_equal(np.concatenate([c for c, _ in chunks]), images)
        np.testing.assert_array_equal(np.concatenate([m for _, m in chunks]), ok)


def test_unreadable_files_are_reported_as_by_the_whole_array_route(table, members, tmp_path, monkeypatch):
    broken = table.copy()
    for row, content in ((3, b""), (250, b"not an image")):
        bad = tmp_path / f"bad{row}.png"
        bad.write_bytes(content)
        broken.loc[row, "path"] = str(bad)
    with pytest.warns(SkippedFilesWarning) as expected:
        data.load_images(broken, 16)
    calls, original = [], members[0].predict_on_batch
    monkeypatch.setattr(members[0], "predict_on_batch", lambda batch: calls.append(1) or original(batch))
    with pytest.warns(SkippedFilesWarning) as got, \
            pytest.raises(DataError, match=r"^2 image\(s\) of the table could not be read; drop them"):
        predict_members(members[:1], broken, chunk_size=64, progress=False)
    # One warning naming both files (the second lies in the fourth chunk), worded as load_images words it.
    assert [str(w.message) for w in got] == [str(w.message) for w in expected]
    assert "bad250.png: not a decodable image" in str(got[0].message)
    assert calls == []  # the first chunk already had a broken file: no chunk was predicted
    with pytest.raises(DataError, match=r"^None of the 3 image file\(s\) could be read"), \
            pytest.warns(SkippedFilesWarning):
        list(data.iter_images([tmp_path / "bad3.png"] * 3, 16, chunk_size=2))


def test_cache_keys_are_those_of_the_whole_array_route(table, members, tmp_path, monkeypatch):
    """The keys are spelled out: a cache written before streaming (same formula) must still be read."""
    member_dir = tmp_path / "m"
    save_member(member_dir, members[0])
    digest, manifest = _io.sha256_file(member_dir / MODEL_FILE), data.manifest_hash(table)
    key = hashlib.sha256(f"{digest}|{manifest}|auto|tta=False|v1".encode()).hexdigest()[:32]
    embedding_key = hashlib.sha256(f"{digest}|{manifest}|auto|layer=head_dense2|v1".encode()).hexdigest()[:32]
    cache = tmp_path / "cache"
    planted = np.linspace(0.1, 0.9, N_IMAGES)
    _io.save_npz(cache / prediction_cache_file(key), proba=planted, key=np.array(key))
    _io.save_npz(cache / embedding_cache_file(embedding_key), embeddings=np.ones((N_IMAGES, 3), np.float32),
                 key=np.array(embedding_key))
    sizes = counting_decodes(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(predict_members([member_dir], table, cache_dir=cache, progress=False)[:, 0],
                                      planted)
        np.testing.assert_array_equal(predict_embeddings([member_dir], table, cache_dir=cache), 1.0)
    assert sizes == []  # every member cached: no file decoded
    other = tmp_path / "other"
    predict_members([member_dir], table, cache_dir=other, tta=True, chunk_size=100, progress=False)
    tta_key = hashlib.sha256(f"{digest}|{manifest}|auto|tta=True|v1".encode()).hexdigest()[:32]
    assert [p.name for p in other.iterdir()] == [prediction_cache_file(tta_key)]


def test_chunk_size_is_checked(table, members):
    with pytest.raises(ConfigError, match=r"The 'chunk_size' parameter of predict_members must be an int >= 1; got 0\."):
        predict_members(members, table, chunk_size=0)
    with pytest.raises(ConfigError, match=r"The 'chunk_size' parameter of iter_images must be"):
        next(data.iter_images(table, chunk_size=2.5))


def test_streamed_image_features_equal_those_of_the_whole_array(tmp_path):
    from pneumoxai.slices import image_features, streamed_image_features

    rng = np.random.default_rng(1)
    paths = []
    for i in range(40):  # a dark band on one side, of random width, for lung-like content and asymmetry
        image = np.clip(rng.normal(170, 30, (48, 40)), 0, 255)
        image[8:40, 4:4 + rng.integers(4, 16)] *= 0.3
        paths.append(str(write_image(tmp_path / f"f{i:02d}.png", image.astype(np.uint8))))
    with warnings.catch_warnings(record=True) as whole_warnings:
        warnings.simplefilter("always")
        whole = image_features(data.load_images(paths, 32))
    with warnings.catch_warnings(record=True) as streamed_warnings:
        warnings.simplefilter("always")
        streamed = streamed_image_features(paths, 32, chunk_size=16)
    assert [str(w.message) for w in streamed_warnings] == [str(w.message) for w in whole_warnings]
    assert whole["lr_asymmetry"].std() > 0.01
    pd.testing.assert_frame_equal(streamed, whole, rtol=1e-6)


def test_the_chunk_size_is_a_config_option_outside_the_stage_keys():
    from pneumoxai.config import parse_config

    members = [{"name": "m"}]
    assert parse_config({"members": members})["evaluate"]["chunk_size"] == data.DEFAULT_CHUNK_SIZE
    assert parse_config({"members": members, "evaluate": {"chunk_size": 32}})["evaluate"]["chunk_size"] == 32
    with pytest.raises(ConfigError, match=r"chunk_size"):
        parse_config({"members": members, "evaluate": {"chunk_size": 0}})
