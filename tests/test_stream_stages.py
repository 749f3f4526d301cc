"""The stages read images in chunks: each streamed result equals the one computed on all images at once."""

import warnings

import numpy as np
import pandas as pd
import pytest

from conftest import write_image
from pneumoxai import _io, data
from pneumoxai.errors import SkippedFilesWarning
from pneumoxai.pipeline._common import DISPLAY_SIZE
from pneumoxai.pipeline.explanations import SPLIT_MAPS_SIGNED
from pneumoxai.pipeline.failure_slices import image_columns

N_IMAGES = 13


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    """Radiograph-like images: a bright frame with two dark lung fields of random width, a bright corner tag."""
    folder = tmp_path_factory.mktemp("stages")
    rng = np.random.default_rng(3)
    out = []
    for i in range(N_IMAGES):
        image = np.clip(rng.normal(180, 25, (96, 88)), 0, 255)
        for left in (10, 50):
            image[20:80, left:left + rng.integers(14, 28)] *= rng.uniform(0.2, 0.5)
        image[:8, :rng.integers(4, 20)] = 255
        out.append(str(write_image(folder / f"x{i:02d}.png", image.astype(np.uint8))))
    return out


def test_image_columns_equal_those_of_all_images_at_once(paths):
    from pneumoxai.lungs import lung_mask
    from pneumoxai.regions import peak_features, region_features
    from pneumoxai.slices import image_features

    maps = np.random.default_rng(0).random((N_IMAGES, DISPLAY_SIZE, DISPLAY_SIZE)).astype(np.float32)
    with warnings.catch_warnings(record=True) as whole_warnings:
        warnings.simplefilter("always")
        images = data.load_images(paths, DISPLAY_SIZE)
        masks = lung_mask(images)
    with warnings.catch_warnings(record=True) as streamed_warnings:
        warnings.simplefilter("always")
        streamed = image_columns(paths, chunk_size=5, maps=maps)  # chunks of 5, 5 and 3
    assert [str(w.message) for w in streamed_warnings] == [str(w.message) for w in whole_warnings]
    pd.testing.assert_frame_equal(streamed.features, image_features(images, masks=masks), rtol=1e-6)
    whole_places = pd.concat([region_features(images, masks=masks), peak_features(maps, masks=masks)], axis=1)
    pd.testing.assert_frame_equal(streamed.per_place, whole_places, rtol=1e-6)
    np.testing.assert_array_equal(streamed.masks()[:], masks)
    np.testing.assert_array_equal(streamed.masks()[3], masks[3])
    np.testing.assert_allclose(streamed.mean_image, images.mean(axis=(0, 3)), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(streamed.lung_share, masks.mean(axis=0), rtol=1e-12)
    assert streamed.features["lr_asymmetry"].std() > 0.01  # the images differ, so a row mix-up would show


def test_image_columns_without_maps_keep_no_masks_and_decode_in_bounded_chunks(paths, monkeypatch):
    sizes, original = [], data._decode_many

    def recording(chunk, *args):
        sizes.append(len(chunk))
        return original(chunk, *args)

    monkeypatch.setattr(data, "_decode_many", recording)
    columns = image_columns(paths, chunk_size=4)
    assert sizes == [4, 4, 4, 1]
    assert columns.packed_masks is None
    assert len(columns.per_place) == N_IMAGES and not columns.per_place.columns.str.startswith("peak_").any()


def test_slice_examples_ask_only_for_the_shown_images(paths):
    from pneumoxai.figures import plot_slice_examples
    from pneumoxai.slices import Condition

    images = data.load_images(paths, 32)
    frame = pd.DataFrame({"bright": np.arange(N_IMAGES) % 2 == 0})
    found = pd.DataFrame({"slice": ["bright"], "conditions": [[Condition("bright", "bright", level=True)]]})
    asked = []

    class OnDemand:
        def __len__(self):
            return N_IMAGES

        def __getitem__(self, index):
            asked.extend(np.atleast_1d(index).tolist())
            return images[index]

    y = np.arange(N_IMAGES) % 3 == 0
    p = np.linspace(0.1, 0.9, N_IMAGES)
    whole = plot_slice_examples(found, frame, images, y_true=y, y_prob=p, top=1, n_examples=3)
    lazy = plot_slice_examples(found, frame, OnDemand(), y_true=y, y_prob=p, top=1, n_examples=3)
    assert len(asked) == 3 and all(i % 2 == 0 for i in asked)
    shown = [[im.get_array() for ax in fig.axes for im in ax.get_images()] for fig in (whole, lazy)]
    assert len(shown[0]) == 3
    for a, b in zip(*shown):
        np.testing.assert_array_equal(a, b)


def test_prepare_drops_the_unreadable_files_as_the_whole_array_route_did(paths, tmp_path):
    from pneumoxai.pipeline.prepare import _readable

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    frame = pd.DataFrame({"path": [paths[0], str(broken), *paths[1:4]]})
    with pytest.warns(SkippedFilesWarning, match=r"Skipped 1 unreadable file\(s\): broken.png"):
        kept = _readable(frame)
    assert kept["path"].tolist() == [paths[0], *paths[1:4]]


def _member(side, seed):
    import keras

    inputs = keras.Input((side, side, 3))
    h = keras.layers.Conv2D(4, 3, activation="relu", name="last_conv",
                            kernel_initializer=keras.initializers.GlorotUniform(seed))(inputs)
    x = keras.layers.GlobalAveragePooling2D()(h)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="prediction",
                                 kernel_initializer=keras.initializers.GlorotUniform(seed + 1))(x)
    return keras.Model(inputs, outputs)


def test_test_split_maps_read_in_chunks_equal_those_of_all_images_at_once(paths, tmp_path):
    from pneumoxai import _io
    from pneumoxai.explain import chosen_layers, ensemble_gradcam, zone_attention
    from pneumoxai.lungs import lung_mask
    from pneumoxai.outcomes import outcome_groups
    from pneumoxai.pipeline.explanations import _test_split_maps
    from pneumoxai.run_folder import RunFolder

    members = [_member(32, 0), _member(48, 4)]
    y = np.arange(N_IMAGES) % 2
    predicted = (np.arange(N_IMAGES) % 3 == 0).astype(int)
    choice = {"method": "gradcam", "stages": [-1], "fused": False, "layer": "last_conv"}
    run = RunFolder(tmp_path / "run")
    split = _test_split_maps(run, members, paths, y, predicted, choice, interpolation="auto", chunk_size=5)

    display = data.load_images(paths, DISPLAY_SIZE)
    masks = lung_mask(display)
    whole, _ = ensemble_gradcam(members, {32: data.load_images(paths, 32), 48: data.load_images(paths, 48)},
                                method="gradcam", layers=lambda m: chosen_layers(m, choice),
                                target=predicted.astype(bool), size=DISPLAY_SIZE)
    assert whole.std() > 0.01
    # Kept (and saved, as before) in float16: equal to within its rounding; the zones and means below use float32.
    np.testing.assert_allclose(split.maps[:].astype(np.float32), whole, atol=1e-3)
    zones = zone_attention(whole, masks)
    pd.testing.assert_frame_equal(split.zones.drop(columns=["path"]), zones, rtol=1e-6, atol=1e-6)
    assert split.zones["path"].tolist() == paths
    np.testing.assert_array_equal(split.masks[np.array([2, 7])], masks[[2, 7]])
    assert split.lung_fraction == pytest.approx(masks.mean(), rel=1e-12)
    groups = outcome_groups(y, predicted)
    for group, (image, mean_map) in split.group_means.items():
        np.testing.assert_allclose(image, display[groups == group].mean(axis=(0, 3)), atol=1e-6)
        np.testing.assert_allclose(mean_map, whole[groups == group].mean(axis=0), atol=1e-6)
    # Written a chunk at a time: bit for bit the float16 of the maps of all images at once.
    np.testing.assert_array_equal(np.load(run.maps("test_maps.npy")), whole.astype(np.float16))
    saved = _io.load_npz(run.maps("test_maps.npz"))
    assert saved["paths"].tolist() == paths and set(saved) == {"paths", "method", "signed"}
    assert bool(saved["signed"]) == bool((whole < 0).any()) == SPLIT_MAPS_SIGNED


def _slice_case():
    """A slice whose errors' maps look at a corner, with its maps, masks and slice explanations."""
    from pneumoxai import explain, slices

    rng = np.random.default_rng(2)
    n, side = 600, 16  # three chunks of zone shares
    marker = np.arange(n) < 90
    frame = pd.DataFrame({"marker": marker, "noise": rng.random(n)})
    y = rng.integers(0, 2, n)
    y[:90] = 0
    p = np.where(y == 1, 0.9, 0.1)
    p[:90] = 0.8
    p[rng.random(n) < 0.05] = 0.5  # a few errors outside the slice
    masks = np.zeros((n, side, side), bool)
    masks[:, 4:13, 2:7] = masks[:, 4:13, 9:14] = True
    maps = rng.random((n, side, side)).astype(np.float16)
    maps[:90, :3, :3] += np.float16(4.0)  # the marker slice looks at a corner
    found = slices.find_failure_slices(frame, y, p, min_size=20)
    return (frame, found, maps, masks, y, p), explain.slice_explanations(frame, found, maps, masks, y, p)


def test_slice_explanations_of_float16_maps_in_chunks_equal_the_float64_whole_array_ones():
    from pneumoxai import explain

    (frame, found, maps, masks, y, p), (table, mean_maps) = _slice_case()
    marker = frame["marker"].to_numpy()
    errors = marker & ((p >= 0.5).astype(int) != y)
    shares = explain.zone_attention(maps.astype(np.float64), masks)
    top = table.set_index("slice").loc["marker == True"]
    assert top["errors:off_lung_attention"] == pytest.approx(shares["off_lung_attention"][errors].mean(), rel=1e-9)
    assert top["errors:off_lung_attention"] > 0.5
    at = list(table["slice"]).index("marker == True")
    np.testing.assert_allclose(mean_maps[at], maps.astype(np.float64)[errors].mean(axis=0), rtol=1e-6)


def test_slice_explanations_of_maps_on_disk_and_packed_masks_equal_those_of_the_arrays(tmp_path):
    from pneumoxai import _io, explain
    from pneumoxai.pipeline._common import PackedMasks, pack_masks

    (frame, found, maps, masks, y, p), (table, mean_maps) = _slice_case()
    with _io.npy_rows_writer(tmp_path / "m.npy", maps.shape, np.float16, index_path=tmp_path / "m.npz") as write:
        for rows in _io.iter_rows(maps, 97):
            write(rows)
    rows_table, rows_means = explain.slice_explanations(frame, found, _io.NpyRows(tmp_path / "m.npy"),
                                                        PackedMasks(pack_masks(masks), masks.shape[1:]), y, p)
    pd.testing.assert_frame_equal(rows_table, table, check_exact=True)
    np.testing.assert_array_equal(rows_means, mean_maps)


def test_mean_maps_from_group_sums_draw_what_the_whole_arrays_draw():
    from pneumoxai.figures import plot_mean_maps
    from pneumoxai.outcomes import OUTCOMES, outcome_groups

    rng = np.random.default_rng(4)
    images, maps = rng.random((30, 12, 12, 3)), rng.random((30, 12, 12)).astype(np.float16)
    y, p = rng.integers(0, 2, 30), rng.random(30)
    groups = outcome_groups(y, p)
    means = {g: (images[groups == g].mean(axis=(0, 3)), maps[groups == g].mean(axis=0, dtype=np.float64))
             for g in OUTCOMES if (groups == g).any()}
    whole = plot_mean_maps(maps, y, p, images=images)
    summed = plot_mean_maps(maps, y, p, group_means=means)
    drawn = [[np.asarray(im.get_array()) for ax in fig.axes for im in ax.get_images()] for fig in (whole, summed)]
    assert len(drawn[0]) == 2 * len(means)
    for a, b in zip(*drawn):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


class _UnreadableRows(_io.Rows):
    """Maps on disk that fail the test when any row is read: the readers told the sign must not scan them."""

    def __init__(self, shape):
        self.shape, self.dtype = shape, np.dtype(np.float16)

    def __getitem__(self, index):
        pytest.fail(f"rows {index} were read")


@pytest.mark.parametrize("signed, cmap", [(True, "DIVERGING_CMAP"), (False, "SEQUENTIAL_CMAP")])
def test_mean_maps_told_the_sign_read_no_map_and_draw_on_that_scale(signed, cmap):
    from pneumoxai.figures import _style, plot_mean_maps
    from pneumoxai.outcomes import OUTCOMES

    y, p = np.array([1, 1, 0, 0]), np.array([0.2, 0.9, 0.7, 0.1])
    means = {g: (np.zeros((6, 6)), np.full((6, 6), 0.5)) for g in OUTCOMES}
    fig = plot_mean_maps(_UnreadableRows((4, 6, 6)), y, p, group_means=means, signed=signed)
    assert {im.get_cmap().name for ax in fig.axes for im in ax.get_images()[1:]} == {getattr(_style, cmap)}


def test_the_test_split_maps_are_unsigned_as_every_cam_is():
    from pneumoxai.explain.cam import _CAM_CLASSES

    assert SPLIT_MAPS_SIGNED is False and not any(cls.signed for cls in _CAM_CLASSES.values())


def test_rows_written_in_uneven_blocks_are_the_float16_of_the_whole_array_and_read_back_by_rows(tmp_path):
    from pneumoxai import _io

    # Values that float16 rounds (and some it cannot hold: inf), so a different cast would show.
    whole = np.random.default_rng(4).normal(0, 3e3, (23, 7, 5)).astype(np.float32)
    with _io.npy_rows_writer(tmp_path / "m.npy", whole.shape, np.float16, index_path=tmp_path / "m.npz",
                             names=np.arange(23)) as write:
        for start, stop in ((0, 1), (1, 9), (9, 9), (9, 23)):
            write(whole[start:stop])
    stored = np.load(tmp_path / "m.npy")
    assert stored.dtype == np.float16
    np.testing.assert_array_equal(stored, whole.astype(np.float16))
    rows = _io.NpyRows(tmp_path / "m.npy")
    assert (rows.shape, rows.dtype, len(rows)) == (whole.shape, np.float16, 23)
    picked = np.zeros(23, bool)
    picked[[2, 5, 21]] = True
    for index in (4, slice(3, 11), [20, 1, 1], picked):
        np.testing.assert_array_equal(rows[index], stored[index])
    np.testing.assert_array_equal(np.concatenate(list(_io.iter_rows(rows, 4))), stored)
    for index in (picked, np.array([20, 1, 1, 7])):  # NumPy's mean to the last bit
        assert np.array_equal(_io.mean_rows(rows, index, chunk_size=2), stored[index].mean(axis=0, dtype=np.float64))
    assert _io.load_npz(tmp_path / "m.npz")["names"].tolist() == list(range(23))


def test_an_interrupted_or_short_rows_write_leaves_no_file_and_no_stale_index(tmp_path):
    from pneumoxai import _io

    _io.save_npz(tmp_path / "m.npz", names=np.arange(3))  # an earlier run's index: it must not outlive its rows
    with pytest.raises(RuntimeError, match="killed"):
        with _io.npy_rows_writer(tmp_path / "m.npy", (3, 2), np.float16, index_path=tmp_path / "m.npz") as write:
            write(np.ones((2, 2)))
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match=r"2 of the 3 rows of .*m.npy were written; nothing was saved"):
        with _io.npy_rows_writer(tmp_path / "m.npy", (3, 2), np.float16, index_path=tmp_path / "m.npz") as write:
            write(np.ones((2, 2)))
    with pytest.raises(ValueError, match="do not fit"):
        with _io.npy_rows_writer(tmp_path / "m.npy", (3, 2), np.float16, index_path=tmp_path / "m.npz") as write:
            write(np.ones((4, 2)))
    assert list(tmp_path.iterdir()) == []


class _Member:
    input_shape = (None, DISPLAY_SIZE, DISPLAY_SIZE, 3)


def _fake_split(monkeypatch, fail_at=None):
    """The explain stage's test-split loop on synthetic images (named by number) and a per-image map rule; its
    ``fail_at``-th chunk of maps raises, as a killed job would stop."""
    from pneumoxai import lungs
    from pneumoxai.pipeline import explanations

    def images(paths, size, **kwargs):
        value = np.array([int(p) for p in paths], np.float32)[:, None, None, None]
        return np.broadcast_to((np.sin(value + np.arange(size)[:, None, None] / 9.0) + 1) / 2,
                               (len(paths), size, size, 3)).astype(np.float32)

    calls = []

    def maps(member_models, images_by_side, predicted, choice):
        x = images_by_side[DISPLAY_SIZE][..., 0]
        calls.append(len(x))
        if len(calls) == fail_at:
            raise RuntimeError("killed")
        return (np.cos(x * 40.0) * 2e3 + np.asarray(predicted)[:, None, None]).astype(np.float32)

    monkeypatch.setattr(data, "load_images", images)
    monkeypatch.setattr(lungs, "lung_mask", lambda x, return_fallback: (x[..., 0] > 0.5, np.zeros(len(x), bool)))
    monkeypatch.setattr(explanations, "chosen_maps", maps)
    return images, maps


def _split_maps(run, n, chunk_size=16):
    from pneumoxai.pipeline.explanations import _test_split_maps

    paths = [str(i) for i in range(n)]
    y, predicted = np.arange(n) % 2, (np.arange(n) % 3 == 0).astype(int)
    choice = {"method": "gradcam", "stages": [-1], "fused": False, "layer": "last_conv"}
    return _test_split_maps(run, [_Member()], paths, y, predicted, choice, interpolation="auto",
                            chunk_size=chunk_size), predicted


def test_test_split_maps_stream_to_disk_bit_for_bit_all_or_nothing(monkeypatch, tmp_path):
    from pneumoxai.pipeline.failure_slices import _load_test_maps
    from pneumoxai.run_folder import RunFolder

    images, maps = _fake_split(monkeypatch)
    run = RunFolder(tmp_path / "run")
    split, predicted = _split_maps(run, 45)
    paths = [str(i) for i in range(45)]
    whole = maps(None, {DISPLAY_SIZE: images(paths, DISPLAY_SIZE)}, predicted, None)
    np.testing.assert_array_equal(np.load(run.maps("test_maps.npy")), whole.astype(np.float16))
    loaded, method = _load_test_maps(run, pd.Series(paths))
    assert method == "Grad-CAM" and loaded.shape == whole.shape
    np.testing.assert_array_equal(loaded[[44, 3]], whole[[44, 3]].astype(np.float16))

    _fake_split(monkeypatch, fail_at=3)  # killed in the last chunk: the earlier run's maps are no longer named
    with pytest.raises(RuntimeError, match="killed"):
        _split_maps(run, 45)
    assert sorted(p.name for p in run.path("maps").iterdir()) == ["test_maps.npy"]
    assert _load_test_maps(run, pd.Series(paths)) == (None, None)


def test_test_split_maps_memory_does_not_grow_with_the_split(monkeypatch, tmp_path):
    """Four times the images: the traced peak grows by the packed masks and zone rows (~8 KB an image), not by
    the maps (100 KB an image in float16), which a stage holding them all would add."""
    import tracemalloc

    from pneumoxai.run_folder import RunFolder

    _fake_split(monkeypatch)
    _split_maps(RunFolder(tmp_path / "warm"), 16)  # the modules' first imports and caches are not the stage's
    peaks = []
    for n in (48, 192):
        tracemalloc.start()
        _split_maps(RunFolder(tmp_path / f"run{n}"), n)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    per_image = (peaks[1] - peaks[0]) / (192 - 48)
    assert per_image < 20e3, f"{per_image / 1e3:.0f} KB more per image"


def test_the_report_browser_shows_the_maps_on_disk_as_it_showed_them_from_the_npz(monkeypatch, tmp_path):
    from pneumoxai import _io
    from pneumoxai._report_browser import _maps
    from pneumoxai.run_folder import RunFolder

    maps = np.random.default_rng(5).random((12, 40, 40)).astype(np.float16)
    maps[10, 0, 0] = -1  # one negative value in a map not shown: every map is drawn on the signed scale
    paths = np.array([f"img{i}.png" for i in range(12)])
    old, new = RunFolder(tmp_path / "old"), RunFolder(tmp_path / "new")
    _io.save_npz(old.maps("test_maps.npz"), maps=maps, paths=paths, method=np.array("LayerCAM (fused)"))
    with _io.npy_rows_writer(new.maps("test_maps.npy"), maps.shape, np.float16, index_path=new.maps("test_maps.npz"),
                             paths=paths, method=np.array("LayerCAM (fused)")) as write:
        for rows in _io.iter_rows(maps, 5):
            write(rows)
    shown, notes = [paths[7], "elsewhere.png", paths[2]], []
    methods, uris = _maps(new, shown, notes)
    assert (methods, uris) == _maps(old, shown, notes)
    assert methods == ["LayerCAM (fused)"] and uris[0][1] is None and uris[0][0] != uris[0][2] and not notes
    maps[10, 0, 0] = 1
    _io.save_npz(old.maps("test_maps.npz"), maps=maps, paths=paths, method=np.array("LayerCAM (fused)"))
    assert _maps(old, shown, notes)[1] != uris  # the scale the negative value chose shows in the overlays

    # An index that says whether the maps are signed: only the shown rows are read, on the scale it names.
    read = []
    monkeypatch.setattr(_io.NpyRows, "__getitem__", lambda self, index: read.append(index) or maps[index])
    _io.save_npz(new.maps("test_maps.npz"), paths=paths, method=np.array("LayerCAM (fused)"), signed=np.array(True))
    assert _maps(new, shown, notes)[1] == uris and read == [7, 2]


def test_the_slices_stage_reads_an_older_run_folders_maps_and_names_a_missing_maps_file(tmp_path):
    from pneumoxai import _io
    from pneumoxai.errors import RunFolderError
    from pneumoxai.pipeline.failure_slices import _load_test_maps
    from pneumoxai.run_folder import RunFolder

    maps = np.random.default_rng(6).random((4, DISPLAY_SIZE, DISPLAY_SIZE)).astype(np.float16)
    paths = np.array(["a.png", "b.png", "c.png", "d.png"])
    run = RunFolder(tmp_path / "run")
    _io.save_npz(run.maps("test_maps.npz"), maps=maps, paths=paths, method=np.array("HiResCAM (fused)"))
    loaded, method = _load_test_maps(run, pd.Series(paths[[2, 0]]))  # maps inside the index, as before
    np.testing.assert_array_equal(loaded, maps[[2, 0]])
    assert method == "HiResCAM (fused)"
    _io.save_npz(run.maps("test_maps.npz"), paths=paths, method=np.array("HiResCAM (fused)"))
    with pytest.raises(RunFolderError, match=r"test_maps.npy does not hold the 4 maps test_maps.npz names; re-run "
                                             r"the explain stage \(`pneumoxai explain --run .*`\)"):
        _load_test_maps(run, pd.Series(paths))
