import warnings

import cv2
import numpy as np
import pandas as pd
import pytest

from pneumoxai import data
from pneumoxai.errors import ConfigError, DataError, SkippedFilesWarning

from conftest import write_image


def test_scan_parses_layout_patients_and_subtypes(make_kaggle_tree):
    root = make_kaggle_tree(n_per_class=3)
    frame = data.scan_dataset(root)
    assert list(frame.columns) == ["path", "split", "label", "label_name", "patient_id", "subtype"]
    assert len(frame) == 12
    assert frame.groupby(["split", "label"]).size().tolist() == [3, 3, 3, 3]
    assert set(frame.loc[frame.label == 0, "subtype"]) == {"normal"}
    assert set(frame.loc[frame.label == 1, "subtype"]) == {"bacteria"}
    assert frame.loc[frame.path.str.endswith("IM-0001-0001.jpeg"), "patient_id"].item() == "IM-0001"


@pytest.mark.parametrize("name, label, patient, subtype", [
    ("person1000_bacteria_2931.jpeg", 1, "person1000", "bacteria"),
    ("person1000_virus_1681.jpeg", 1, "person1000", "virus"),
    ("person1_virus_12_1.jpeg", 1, "person1", "virus"),
    ("IM-0117-0001-0002.jpeg", 0, "IM-0117", "normal"),
    ("NORMAL2-IM-0117-0001.jpeg", 0, "NORMAL2-IM-0117", "normal"),
    ("scan_42.png", 1, "scan_42", "unknown"),
])
def test_file_name_parsing(name, label, patient, subtype):
    assert data._parse_name(name, label) == (patient, subtype)


def test_scan_accepts_val_folder(make_kaggle_tree):
    root = make_kaggle_tree(n_per_class=2, splits=("train", "val", "test"))
    assert set(data.scan_dataset(root).split) == {"train", "val", "test"}


def _remove_class(root):
    for f in (root / "train" / "NORMAL").iterdir():
        f.unlink()
    (root / "train" / "NORMAL").rmdir()


def _empty_split(root):
    for cls in ("NORMAL", "PNEUMONIA"):
        for f in (root / "test" / cls).iterdir():
            f.unlink()


@pytest.mark.parametrize("breakage, match", [
    (lambda root: root / "missing", "does not exist"),
    (lambda root: (root / "train").rename(root / "other") or (root / "test").rename(root / "x") or root,
     "none of the split folders"),
    (lambda root: _remove_class(root) or root, "has no NORMAL/ folder"),
    (lambda root: _empty_split(root) or root, "holds no images"),
])
def test_scan_bad_layouts(make_kaggle_tree, breakage, match):
    root = make_kaggle_tree(n_per_class=2)
    with pytest.raises(DataError, match=match):
        data.scan_dataset(breakage(root))


def test_missing_root_message_says_how_to_get_data(tmp_path, monkeypatch):
    monkeypatch.delenv(data.DATA_ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="chest-xray-pneumonia.*PNEUMOXAI_DATA"):
        data.find_data_root(None)
    monkeypatch.setenv(data.DATA_ENV_VAR, str(tmp_path))
    assert data.find_data_root(None) == tmp_path


def test_split_by_patient_no_overlap_and_keeps_ratio():
    rng = np.random.default_rng(0)
    rows = []
    for p in range(300):
        label = int(p >= 100)
        rows += [{"patient_id": f"p{p}", "label": label}] * int(rng.integers(1, 4))
    frame = pd.DataFrame(rows)
    train, val = data.split_by_patient(frame, val_fraction=0.2, seed=3)
    assert not set(train.patient_id) & set(val.patient_id)
    assert len(train) + len(val) == len(frame)
    assert abs(len(val) / len(frame) - 0.2) < 0.02
    assert abs(val.label.mean() - frame.label.mean()) < 0.03
    again = data.split_by_patient(frame, val_fraction=0.2, seed=3)[1]
    assert again.index.equals(val.index)
    assert not data.split_by_patient(frame, val_fraction=0.2, seed=4)[1].index.equals(val.index)


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5])
def test_split_by_patient_rejects_fraction(fraction):
    frame = pd.DataFrame({"patient_id": list("abcd"), "label": [0, 0, 1, 1]})
    with pytest.raises(ConfigError, match="'val_fraction' parameter"):
        data.split_by_patient(frame, val_fraction=fraction)


def test_patient_folds_group_patients():
    frame = pd.DataFrame({"patient_id": np.repeat(np.arange(40), 2), "label": np.repeat(np.arange(40) % 2, 2)})
    folds = data.patient_folds(frame, n_splits=4, seed=0)
    assert set(folds) == {0, 1, 2, 3}
    assert (frame.assign(f=folds).groupby("patient_id").f.nunique() == 1).all()


def test_load_images_matches_direct_opencv(tmp_path):
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (40, 30), dtype=np.uint8)
    path = write_image(tmp_path / "a.png", gray)
    out = data.load_images([path], size=20)
    expected = cv2.resize(gray.astype(np.float32), (20, 20), interpolation=cv2.INTER_AREA) / 255.0
    assert out.shape == (1, 20, 20, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, ..., 0], expected, atol=1e-6)
    np.testing.assert_array_equal(out[0, ..., 0], out[0, ..., 2])


@pytest.mark.parametrize("size", [16, 24, 40])  # shrink, enlarge, keep
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_load_images_white_is_exactly_one_and_nothing_exceeds_it(tmp_path, size, dtype):
    top = np.iinfo(dtype).max
    gray = np.full((40, 40), top, dtype=dtype)
    gray[:, :16] = np.random.default_rng(0).integers(0, top, (40, 16), dtype=dtype)  # right side stays white
    out = data.load_images([write_image(tmp_path / "w.png", gray)], size=size)
    assert out.max() == 1.0 and out.min() >= 0.0
    if size == 40:
        np.testing.assert_array_equal(out[0, ..., 1], gray / np.float32(top))


def test_load_images_handles_16bit_and_alpha(tmp_path):
    sixteen = np.full((32, 32), 65535 // 2, dtype=np.uint16)
    rgba = np.zeros((32, 32, 4), dtype=np.uint8)
    rgba[..., :3] = 200
    rgba[..., 3] = 10
    out = data.load_images([write_image(tmp_path / "16.png", sixteen), write_image(tmp_path / "a.png", rgba)], 16)
    np.testing.assert_allclose(out[0], 0.5, atol=1e-4)
    np.testing.assert_allclose(out[1], 200 / 255, atol=1e-2)


def test_load_images_skips_and_reports_bad_files(tmp_path):
    good = write_image(tmp_path / "good.jpeg", np.full((32, 32), 128, np.uint8))
    empty = tmp_path / "empty.jpeg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpeg"
    text.write_text("this is not an image")
    truncated = tmp_path / "truncated.jpeg"
    truncated.write_bytes(good.read_bytes()[:40])
    with pytest.warns(SkippedFilesWarning) as record:
        images, ok = data.load_images([good, empty, text, truncated], 16, return_mask=True)
    message = str(record[0].message)
    assert images.shape == (1, 16, 16, 3)
    assert ok.tolist() == [True, False, False, False]
    assert "Skipped 3" in message and "empty.jpeg: empty file" in message
    assert "notes.jpeg: not a decodable image" in message and "truncated.jpeg" in message


def test_load_images_all_bad_raises(tmp_path):
    bad = tmp_path / "x.jpeg"
    bad.write_bytes(b"")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match="None of the 1 image"):
            data.load_images([bad], 16)


@pytest.mark.parametrize("method", ["none", "class_weight", "oversample", "smote"])
def test_balance_methods(method):
    rng = np.random.default_rng(0)
    images = rng.random((30, 8, 8, 3)).astype(np.float32)
    images[..., 1] = images[..., 0]
    images[..., 2] = images[..., 0]
    labels = np.array([0] * 10 + [1] * 20)
    x, y, class_weight = data.balance(images, labels, method, seed=0)
    if method in ("oversample", "smote"):
        assert np.bincount(y).tolist() == [20, 20] and len(x) == 40
        assert x.min() >= 0 and x.max() <= 1
        np.testing.assert_array_equal(x[..., 0], x[..., 2])
    else:
        assert len(x) == 30
    if method == "class_weight":
        assert class_weight == pytest.approx({0: 1.5, 1: 0.75})
        assert 10 * class_weight[0] == pytest.approx(20 * class_weight[1])
    if method == "smote":
        # Synthetic images lie on segments between minority neighbours: within the minority hull per pixel.
        minority = images[:10, ..., 0]
        assert (x[30:, ..., 0] >= minority.min(0) - 1e-6).all() and (x[30:, ..., 0] <= minority.max(0) + 1e-6).all()


@pytest.mark.parametrize("labels, method, error, match", [
    ([1, 1, 1, 1], "none", DataError, "needs both classes"),
    ([0, 1, 1, 1], "smote", DataError, "at least 2 images"),
    ([0, 0, 1, 1], "adasyn", ConfigError, "'method' parameter of balance must be one of .*; got 'adasyn'"),
])
def test_balance_errors(labels, method, error, match):
    with pytest.raises(error, match=match):
        data.balance(np.zeros((4, 4, 4, 3), np.float32), np.array(labels), method)


def test_make_dataset_shuffles_each_epoch_and_augments_only_training():
    images = np.stack([np.full((8, 8, 3), i / 40, np.float32) for i in range(40)])
    labels = np.arange(40) % 2
    train = data.make_dataset(images, labels, batch_size=40, training=True, augment={"flip": True}, seed=0)
    first, second = [next(iter(train))[0].numpy()[:, 0, 0, 0] for _ in range(2)]
    np.testing.assert_allclose(np.sort(first), np.arange(40) / 40, atol=1e-6)
    assert not np.array_equal(first, second)
    evaluation = data.make_dataset(images, labels, batch_size=16)
    batches = [x.numpy() for x, _ in evaluation]
    np.testing.assert_array_equal(np.concatenate(batches), images)


def test_augmentation_changes_images_and_stays_in_range():
    rng = np.random.default_rng(0)
    images = rng.random((16, 16, 16, 3)).astype(np.float32)
    ds = data.make_dataset(images, np.zeros(16), batch_size=16, training=True,
                           augment={"rotation": 0.1, "flip": True, "contrast": 0.5}, seed=1)
    out = next(iter(ds))[0].numpy()
    assert out.min() >= 0 and out.max() <= 1
    assert not np.allclose(np.sort(out.ravel()), np.sort(images.ravel()))
    with pytest.raises(ConfigError, match="Unknown augmentation option"):
        next(iter(data.make_dataset(images, np.zeros(16), training=True, augment={"zoom": 0.1})))


def test_real_data_scan_and_patient_split(real_data_root):
    frame = data.scan_dataset(real_data_root)
    counts = frame.groupby(["split", "label_name"]).size().to_dict()
    assert counts == {("test", "NORMAL"): 234, ("test", "PNEUMONIA"): 390,
                      ("train", "NORMAL"): 1341, ("train", "PNEUMONIA"): 3875}
    assert set(frame.subtype) == {"normal", "bacteria", "virus"}
    train, val = data.split_by_patient(frame[frame.split == "train"], 0.2, seed=0)
    assert not set(train.patient_id) & set(val.patient_id)
    assert abs(len(val) / 5216 - 0.2) < 0.01
    images = data.load_images(val.path[:8], size=64)
    assert images.shape == (8, 64, 64, 3) and 0.2 < images.mean() < 0.8


@pytest.fixture
def odd_sized_files(tmp_path):
    """8-bit files of other sizes than the target, as JPEG and PNG, gray and colour."""
    import cv2

    rng = np.random.default_rng(3)
    paths = []
    for i, (h, w, ext) in enumerate([(50, 37, ".png"), (23, 61, ".jpeg"), (64, 64, ".png")]):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        image[..., 1] = image[..., 0]  # X-ray-like: mostly gray, one channel differs
        path = tmp_path / f"img{i}{ext}"
        cv2.imwrite(str(path), image)
        paths.append(path)
    return paths


@pytest.mark.parametrize("interpolation, keras_name", [("pil-nearest", "nearest"), ("pil-bilinear", "bilinear"),
                                                      ("pil-bicubic", "bicubic")])
@pytest.mark.parametrize("channels, color_mode", [(3, "rgb"), (1, "grayscale")])
def test_pil_interpolation_reproduces_keras_load_img_exactly(odd_sized_files, interpolation, keras_name, channels,
                                                             color_mode):
    import keras

    ours = data.load_images(odd_sized_files, 32, channels=channels, interpolation=interpolation)
    theirs = np.stack([keras.utils.img_to_array(keras.utils.load_img(p, color_mode=color_mode, target_size=(32, 32),
                                                                      interpolation=keras_name)) / 255.0
                       for p in odd_sized_files])
    np.testing.assert_array_equal(ours, theirs.astype(np.float32))


@pytest.mark.parametrize("interpolation, flag", [("area", "INTER_AREA"), ("bilinear", "INTER_LINEAR"),
                                                 ("nearest", "INTER_NEAREST")])
def test_opencv_interpolations_are_the_named_method(odd_sized_files, interpolation, flag):
    import cv2

    ours = data.load_images(odd_sized_files, 32, channels=1, interpolation=interpolation)[..., 0]
    gray = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE).astype(np.float32) for p in odd_sized_files]
    expected = np.stack([g if g.shape == (32, 32) else cv2.resize(g, (32, 32), interpolation=getattr(cv2, flag))
                         for g in gray]) / 255.0
    np.testing.assert_allclose(ours, np.clip(expected, 0, 1), atol=1e-6)
    assert not np.array_equal(ours, data.load_images(odd_sized_files, 32, channels=1,
                                                     interpolation="pil-nearest" if interpolation != "nearest"
                                                     else "area")[..., 0])


def test_unknown_interpolation_is_refused(odd_sized_files):
    with pytest.raises(ConfigError, match="'interpolation' parameter of load_images must be one of 'auto'"):
        data.load_images(odd_sized_files, 32, interpolation="lanczos")
