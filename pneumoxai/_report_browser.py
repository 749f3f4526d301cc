"""The report's slice and error browsers, and which significant slices are one finding.

Both browsers show test images as thumbnails with their label, the members' and the
primary model's probabilities and the explain stage's chosen map as an overlay; a click
opens a larger view with every map method computed for that image. The images, maps and
slices travel as one JSON object inside the page (``<script type="application/json">``),
where each image is encoded once, as a small JPEG data URI, and slices and errors name
images by their index; the template's script draws the grids from it.

Which images a slice holds is not stored by the slices stage: it is rebuilt from
``tables/slice_features.csv`` with :func:`pneumoxai.slices.slice_masks_from_labels` and
kept only when its size and error count match ``tables/failure_slices.csv``.
"""

import base64
import functools
import warnings

import cv2
import numpy as np

from ._io import NpyRows, iter_rows, load_npz
from .errors import CacheError, DataError, SkippedFilesWarning
from .run_folder import EXPLAIN_MAPS_FILE, SLICE_FEATURES_TABLE, TEST_MAPS_FILE, TEST_MAPS_INDEX, predictions_table
from .slices import DEFAULT_N_BINS, slice_masks_from_labels

__all__ = ["OVERLAP", "slice_members", "primary_errors", "browser_data"]

#: Jaccard index of two slices' errors from which the later slice is a variant of the earlier finding.
OVERLAP = 0.5
_THUMB_SIDE = 128      # pixels of an image thumbnail; about 140 px wide in the grid, 256 px in the large view
_MAP_SIDE = 64         # pixels of a map overlay: the maps are smooth, the browser scales them up
_JPEG_QUALITY = 70
_SHOWN_PER_SLICE = 200  # thumbnails drawn per slice, errors first
_OUTCOMES = {(1, 0): "FN", (0, 1): "FP", (1, 1): "TP", (0, 0): "TN"}


def slice_members(run, labels):
    """``{label: bool ndarray over the rows of tables/predictions_test.csv}`` for the slices that can be rebuilt.

    A slice is left out when ``tables/slice_features.csv`` or the predictions are missing, or
    when the rebuilt rows do not give the size and error count of ``tables/failure_slices.csv``.
    """
    features = run.read_table(SLICE_FEATURES_TABLE, columns=("path",))
    predictions = _predictions(run)
    if features is None or predictions is None or not len(labels):
        return {}
    if set(features["path"]) != set(predictions["path"]):
        return {}
    order = features.set_index("path").loc[predictions["path"]].reset_index(drop=True)
    slices_cfg = run.config.get("slices") if isinstance(run.config.get("slices"), dict) else {}
    masks = slice_masks_from_labels(order, list(labels),
                                    n_bins=slices_cfg.get("n_bins", DEFAULT_N_BINS))
    wrong = primary_errors(run)
    table = run.slices.set_index("slice")
    return {label: mask for label, mask in masks.items()
            if mask is not None and int(mask.sum()) == int(table.loc[label, "size"])
            and int((mask & wrong).sum()) == int(table.loc[label, "n_errors"])}


def _predictions(run):
    frame = run.read_table(predictions_table("test"), columns=("path", "label"))
    if frame is None or run.primary is None or f"p[{run.primary}]" not in frame.columns:
        return None
    return frame


def primary_errors(run):
    """Bool ndarray over the rows of ``tables/predictions_test.csv``: the primary model's errors; None without them."""
    predictions = _predictions(run)
    return None if predictions is None else _called(run, predictions) != predictions["label"].to_numpy()


def _called(run, predictions):
    threshold = run.ensemble.get("thresholds", {}).get(run.primary, 0.5)
    return (predictions[f"p[{run.primary}]"].to_numpy() >= threshold).astype(int)


def browser_data(run, members):
    """The browsers' JSON object (None when the run has no test predictions) and what could not be shown.

    Parameters
    ----------
    run : pneumoxai.report._Run
    members : dict
        :func:`slice_members` of the significant slices, in their ranking.

    Returns
    -------
    data : dict or None
        ``methods`` (map names; the first is the map of every test image), ``models``
        (the columns of ``p``: members, then the primary model unless it is the only
        member), ``images`` (``name``, ``label``, ``outcome``, ``p``, ``thumb``, ``maps``:
        one data URI or None per method), ``slices`` (``label``, ``size``, ``ids``: errors
        first, at most ``_SHOWN_PER_SLICE``), ``errors`` (ids of the false negatives, then
        the false positives, the most confident first) and their counts ``n_fn``, ``n_fp``.
    notes : list of str
        What could not be shown, for the sections' text.
    """
    predictions = _predictions(run)
    if predictions is None:
        return None, [f"needs tables/{predictions_table('test')} ({run.command('evaluate')})"]
    y = predictions["label"].to_numpy().astype(int)
    called = _called(run, predictions)
    p = predictions[f"p[{run.primary}]"].to_numpy()
    wrong = called != y
    missed, alarms = np.flatnonzero(wrong & (y == 1)), np.flatnonzero(wrong & (y == 0))
    errors = [*missed[np.argsort(p[missed], kind="stable")], *alarms[np.argsort(-p[alarms], kind="stable")]]
    slices = []
    for label, mask in members.items():
        rows = np.flatnonzero(mask)
        rows = rows[np.argsort(~wrong[rows], kind="stable")]  # errors first, then test order
        slices.append({"label": label, "size": len(rows), "ids": rows[:_SHOWN_PER_SLICE]})
    shown = np.unique(np.concatenate([np.asarray(errors, dtype=int), *[s["ids"] for s in slices]]))
    index = {row: i for i, row in enumerate(shown)}
    models = [m for m in run.members if f"p[{m}]" in predictions.columns]
    models += [run.primary] if run.primary not in models else []
    notes, paths = [], predictions["path"].iloc[shown].tolist()
    thumbs = _thumbnails(paths, notes)
    methods, maps = _maps(run, paths, notes)
    probabilities = predictions[[f"p[{m}]" for m in models]].to_numpy()
    images = [{"name": str(paths[i]).replace("\\", "/").rsplit("/", 1)[-1],
               "label": int(y[row]), "outcome": _OUTCOMES[(int(y[row]), int(called[row]))],
               "p": [round(float(v), 3) for v in probabilities[row]],
               "thumb": thumbs[i], "maps": [m[i] for m in maps]} for i, row in enumerate(shown)]
    for s in slices:
        s["ids"] = [index[row] for row in s["ids"]]
    return {"methods": methods, "models": models, "images": images, "slices": slices,
            "errors": [index[row] for row in errors], "n_fn": int((wrong & (y == 1)).sum()),
            "n_fp": int((wrong & (y == 0)).sum())}, notes


def _jpeg(pixels):
    _, data = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
    return "data:image/jpeg;base64," + base64.b64encode(data.tobytes()).decode("ascii")


def _thumbnails(paths, notes):
    """One grey JPEG data URI per path (None for a file that cannot be read)."""
    from .data import load_images

    if not paths:
        return []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SkippedFilesWarning)  # said once in the section instead
            images, ok = load_images(paths, _THUMB_SIDE, channels=1, return_mask=True)
    except DataError:
        images, ok = np.zeros((0, _THUMB_SIDE, _THUMB_SIDE, 1)), np.zeros(len(paths), bool)
    if not ok.all():
        notes.append(f"{int((~ok).sum())} of {len(paths)} images could not be read from their paths "
                     "(moved since the run?); they are shown by name only")
    uris, loaded = [None] * len(paths), iter(images)
    for i in np.flatnonzero(ok):
        uris[i] = _jpeg(np.rint(next(loaded)[..., 0] * 255).astype(np.uint8))
    return uris


def _maps(run, paths, notes):
    """Map names and, per name, one overlay data URI (or None) per path: the test-split map, then the gallery's."""
    methods, maps = [], []
    for file in (TEST_MAPS_INDEX, EXPLAIN_MAPS_FILE):
        path = run.maps(file)
        if not path.is_file():
            continue
        try:
            data = load_npz(path)
            named = _named_maps(run, file, data)
            where = {str(p): i for i, p in enumerate(data["paths"])}
        except (CacheError, KeyError) as exc:
            notes.append(f"maps/{file} could not be read ({str(exc).splitlines()[0]})")
            continue
        for name, array in named:  # the test-split maps stay on disk: only the shown rows are read
            # The index says whether the maps are signed; older ones do not, and their maps are scanned by blocks.
            signed = (bool(data["signed"]) if "signed" in data
                      else any(bool((part < 0).any()) for part in iter_rows(array)))
            methods.append(name if name not in methods else f"{name} (gallery)")
            maps.append([_overlay(array[where[p]], signed) if p in where else None for p in paths])
    return methods, maps


def _named_maps(run, file, data):
    """``[(method name, maps)]`` of one maps file, as the explain stage saves them (the test-split maps beside
    their index, :class:`~pneumoxai._io.NpyRows`; in the index itself in older run folders)."""
    if file == TEST_MAPS_INDEX:
        maps = data["maps"] if "maps" in data else NpyRows(run.maps(TEST_MAPS_FILE))
        return [(str(data["method"]) if "method" in data else "Grad-CAM", maps)]
    return [(str(name), data[f"map_{i}"]) for i, name in enumerate(data["methods"])]


@functools.lru_cache(maxsize=None)
def _colours(name):
    import matplotlib

    lut = matplotlib.colormaps[name](np.linspace(0, 1, 256))[:, :3]
    return np.rint(lut[:, ::-1] * 255).astype(np.uint8)  # BGR for OpenCV


def _overlay(m, signed):
    """A map as a colour JPEG, on the scales of the report's figures (viridis from 0, RdBu_r symmetric if signed)."""
    from .figures._style import DIVERGING_CMAP, SEQUENTIAL_CMAP

    m = cv2.resize(np.asarray(m, dtype=np.float32), (_MAP_SIDE, _MAP_SIDE), interpolation=cv2.INTER_AREA)
    if signed:
        limit = float(np.abs(m).max()) or 1.0
        scaled, cmap = 0.5 + m / (2 * limit), DIVERGING_CMAP
    else:
        scaled, cmap = m / max(1.0, float(m.max())), SEQUENTIAL_CMAP
    return _jpeg(_colours(cmap)[np.rint(np.clip(scaled, 0, 1) * 255).astype(np.uint8)])
