"""Named places of a chest radiograph, features measured in each, and their names in words.

A failure slice or a map is only useful to an auditor if it says *where*: "edge density
in the top-right corner > 0.21", "the left lower lung zone", not "sharpness > 164".
This module divides an image into places a person would name and measures, in each
place, what burnt-in text, rulers, markers and collimation change:

- eight border places: the cells of a 3 x 3 grid around the centre (four corners, the
  middle of each edge), where hospitals put text, tags and rulers;
- the six lung zones of :func:`pneumoxai.lungs.zones` (right/left x upper/middle/lower,
  in radiological orientation: the image's left half is the patient's right lung).

:func:`region_features` gives, per border place, its brightness against the whole image,
the share of its pixels far darker and far brighter than the image (dark and bright
blobs, either polarity of a tag), its Canny edge density (text and rulers are edges) and its
sharpness (the variance of the Laplacian: a burnt-in mark's step edges are far sharper than
anatomy, whatever its polarity or size); per lung zone, brightness against the whole lung
field, the blob areas, edge density and sharpness.
:func:`peak_features` says, per place, whether an image's map peaks there: a shortcut the
model uses draws its maps wherever it sits, however it looks, so the images a model reads
by one place form a slice named after that place.
:func:`describe_feature` turns a column name into words (:func:`describe_slice` a whole
slice label), and :func:`name_region` names a
boolean region of an image (where a map points) after the place it overlaps most.

No TensorFlow here. Images are float arrays ``(n, H, W, 3)`` in [0, 1].
"""

import re

import cv2
import numpy as np
import pandas as pd

from .errors import DataError
from .lungs import ZONE_NAMES, lung_mask, zones
from .slices import CANNY_THRESHOLDS, _laplacian
from .validation import Interval, check_images, check_maps, check_param

__all__ = [
    "BORDER_PLACES",
    "PLACE_WORDS",
    "REGION_FEATURES",
    "place_masks",
    "region_features",
    "peak_features",
    "prefer_place_names",
    "describe_feature",
    "describe_slice",
    "name_region",
]

#: Border places in the order of :func:`place_masks`.
BORDER_PLACES = ("top_left", "top", "top_right", "right", "bottom_right", "bottom", "bottom_left", "left")
#: How each place reads in a sentence.
PLACE_WORDS = {
    "top_left": "top-left corner", "top": "top edge", "top_right": "top-right corner",
    "right": "right edge", "bottom_right": "bottom-right corner", "bottom": "bottom edge",
    "bottom_left": "bottom-left corner", "left": "left edge",
    **{zone: zone.replace("_", " ") + " lung zone" for zone in ZONE_NAMES},
}
#: Measurement name -> words, for the columns ``<measurement>_<place>``.
REGION_FEATURES = {
    "rel_brightness": "brightness against the image",
    "dark_area": "dark area",
    "bright_area": "bright area",
    "edge_density": "edge density",
    "sharpness": "sharpness",
    "peak": "the map's peak region",
}

BLOB_OFFSET = 0.35  # a pixel this far below (above) the image's median is dark (bright)
_IN_LUNGS = 0.5  # a region at least this much inside the lung fields is named after a zone
_OUTSIDE_LUNGS = 0.1  # ... and one at most this much inside them is "outside both lungs"
_PEAK_REGION_SHARE = 1 / 3  # a place holding this much of a map's peak region is where the map looks


def place_masks(shape):
    """Boolean masks of the eight border places for images of ``shape`` (H, W).

    The image is cut into a 3 x 3 grid of equal cells (thirds of each side); the eight
    cells around the centre are the border places. Equal areas make "the place a marker
    overlaps most" the place holding most of it, whatever its shape.

    Returns
    -------
    dict of str to bool ndarray of shape (H, W)
        Keyed by :data:`BORDER_PLACES`.

    Examples
    --------
    >>> m = place_masks((9, 9))
    >>> m["top_right"].astype(int)[:4]
    array([[0, 0, 0, 0, 0, 0, 1, 1, 1],
           [0, 0, 0, 0, 0, 0, 1, 1, 1],
           [0, 0, 0, 0, 0, 0, 1, 1, 1],
           [0, 0, 0, 0, 0, 0, 0, 0, 0]])
    >>> int(m["top"].sum()), int(m["left"].sum())
    (9, 9)
    """
    h, w = (int(v) for v in shape)
    if min(h, w) < 8:
        raise DataError(f"images must be at least 8x8 pixels to name places; got {h}x{w}")
    row_cuts, col_cuts = (0, round(h / 3), round(2 * h / 3), h), (0, round(w / 3), round(2 * w / 3), w)
    grid = {"top_left": (0, 0), "top": (0, 1), "top_right": (0, 2), "right": (1, 2),
            "bottom_right": (2, 2), "bottom": (2, 1), "bottom_left": (2, 0), "left": (1, 0)}
    masks = {}
    for place in BORDER_PLACES:
        row, col = grid[place]
        mask = np.zeros((h, w), bool)
        mask[row_cuts[row]:row_cuts[row + 1], col_cuts[col]:col_cuts[col + 1]] = True
        masks[place] = mask
    return masks


def region_features(images, *, masks=None):
    """Per-place measurements of burnt-in text, tags, rulers and lung-zone brightness.

    Parameters
    ----------
    images : array_like of shape (n_samples, H, W, 3)
        Intensities in [0, 1]; channels are averaged.
    masks : bool ndarray of shape (n_samples, H, W), default=None
        Lung masks; :func:`pneumoxai.lungs.lung_mask` computes them when omitted.

    Returns
    -------
    features : DataFrame of shape (n_samples, 5 * 14)
        Columns ``<measurement>_<place>`` for the eight border places, then the six lung
        zones: ``rel_brightness`` (the place's mean minus the image's mean; for a zone,
        minus the lung fields' mean), ``dark_area`` and ``bright_area`` (share of its
        pixels more than ``BLOB_OFFSET`` below or above the image's median: a tag of
        either polarity), ``edge_density`` (share of its pixels marked by
        ``cv2.Canny``: text and rulers) and ``sharpness`` (variance over the place of the
        Laplacian of the uint8 image, the global ``sharpness`` of
        :func:`pneumoxai.slices.image_features` measured in one place). NaN where a lung
        zone is empty.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.full((2, 32, 32, 3), 0.5, np.float32)
    >>> x[1, 1:5, 20:31] = 0.05                    # a dark strip in the top-right corner
    >>> lungs = np.zeros((2, 32, 32), bool)
    >>> lungs[:, 10:26, 6:14] = lungs[:, 10:26, 18:26] = True
    >>> f = region_features(x, masks=lungs)
    >>> f[["dark_area_top_right", "dark_area_top_left"]].round(2).values.tolist()
    [[0.0, 0.0], [0.33, 0.0]]
    """
    x = check_images(images, owner="region_features").mean(axis=-1)
    n, h, w = x.shape
    if masks is None:
        masks = lung_mask(x)
    masks = np.asarray(masks).astype(bool)
    if masks.shape != x.shape:
        raise DataError(f"region_features: masks must have shape {x.shape} (n_samples, H, W); got {masks.shape}")
    places = place_masks((h, w))
    flat = x.reshape(n, -1)
    median = np.median(flat, axis=1)[:, None, None]
    dark, bright = x < median - BLOB_OFFSET, x > median + BLOB_OFFSET
    u8 = np.rint(np.clip(x, 0, 1) * 255).astype(np.uint8)
    edges = np.stack([cv2.Canny(img, *CANNY_THRESHOLDS) > 0 for img in u8])
    laplacian = _laplacian(u8)
    out = {}
    for place in BORDER_PLACES:
        sel = places[place]
        out[f"rel_brightness_{place}"] = x[:, sel].mean(axis=1) - flat.mean(axis=1)
        out[f"dark_area_{place}"] = dark[:, sel].mean(axis=1)
        out[f"bright_area_{place}"] = bright[:, sel].mean(axis=1)
        out[f"edge_density_{place}"] = edges[:, sel].mean(axis=1)
        out[f"sharpness_{place}"] = laplacian[:, sel].var(axis=1)
    zone_ids = zones(masks)
    lung_mean = _masked_mean(x, masks)
    for k, zone in enumerate(ZONE_NAMES, start=1):
        sel = zone_ids == k
        out[f"rel_brightness_{zone}"] = _masked_mean(x, sel) - lung_mean
        out[f"dark_area_{zone}"] = _masked_mean(dark, sel)
        out[f"bright_area_{zone}"] = _masked_mean(bright, sel)
        out[f"edge_density_{zone}"] = _masked_mean(edges, sel)
        # E[L^2] - E[L]^2 can round below zero on a flat zone
        out[f"sharpness_{zone}"] = np.maximum(_masked_mean(laplacian**2, sel) - _masked_mean(laplacian, sel) ** 2, 0)
    return pd.DataFrame(out)


def peak_features(maps, *, masks=None):
    """Whether each image's map peaks in each named place: where the model looked.

    A failure slice on these columns reads "the map's peak region in the top-left
    corner": the images the model judged by that place. Unlike :func:`region_features`
    it needs no guess of what a shortcut looks like (bright or dark, a tag or text), only
    that the maps point at it. The peak region is the map's half-maximum region around
    its peak (:func:`pneumoxai.evidence.evidence_regions`); a place holds it when the peak
    lies there or the place holds at least a third of the region, so a text strip across
    two cells marks both rather than splitting its images between them. One boolean per
    place rather than a share of the map: "looked less at the bottom edge" is true of
    every image that looked anywhere else, and a slice named by it would name no place.

    Parameters
    ----------
    maps : array_like of shape (n_samples, H, W)
        One map per image (e.g. ``maps/test_maps.npy`` of a run); the peak is its
        largest value (the first in row-major order on ties).
    masks : bool ndarray of shape (n_samples, H, W), default=None
        Lung masks of the same images; with them the six lung zones get columns too.

    Returns
    -------
    features : DataFrame of shape (n_samples, 8) or (n_samples, 14)
        Boolean columns ``peak_<place>`` for :data:`BORDER_PLACES`, then the lung
        zones. A peak region wholly in the centre cell outside the lung zones is in no place.

    Examples
    --------
    >>> import numpy as np
    >>> maps = np.zeros((3, 9, 9))
    >>> maps[0, 0, 8] = 1.0                        # peaks in the top-right corner
    >>> maps[1, 4, 4] = 1.0                        # in the centre
    >>> maps[2, 1, 1:6] = 1.0                      # a strip across the top-left corner and the top edge
    >>> f = peak_features(maps)
    >>> f[["peak_top_right", "peak_top_left", "peak_top"]].values.tolist()
    [[True, False, False], [False, False, False], [False, True, True]]
    """
    from .evidence import evidence_regions

    m = check_maps(maps, owner="peak_features")
    n, h, w = m.shape
    rows, cols = np.unravel_index(m.reshape(n, -1).argmax(axis=1), (h, w))
    regions = evidence_regions(m, grow=0)
    area = regions.sum(axis=(1, 2))

    def holds(place_masks_):          # (n, H, W) or (H, W) boolean places -> (n,) bool
        held = (regions & place_masks_).sum(axis=(1, 2)) >= _PEAK_REGION_SHARE * area
        at_peak = place_masks_[rows, cols] if place_masks_.ndim == 2 else place_masks_[np.arange(n), rows, cols]
        return held | at_peak

    places = place_masks((h, w))
    out = {f"peak_{place}": holds(places[place]) for place in BORDER_PLACES}
    if masks is not None:
        masks = np.asarray(masks).astype(bool)
        if masks.shape != m.shape:
            raise DataError(f"peak_features: masks must have shape {m.shape} (n_samples, H, W); got {masks.shape}")
        zone_ids = zones(masks)
        for k, zone in enumerate(ZONE_NAMES, start=1):
            out[f"peak_{zone}"] = holds(zone_ids == k)
    return pd.DataFrame(out)


def prefer_place_names(slices, frame, *, min_overlap=0.8):
    """Rank a significant slice named by a map place just above a near-identical one that names none.

    A shortcut changes global measures too (a text strip raises the image's sharpness), so
    "sharpness > 405" and "the map's peak region in the top-right corner" can select nearly
    the same images. Both are findings; the one naming where the model looked is the one
    an auditor can act on. For each finding with no :func:`peak_features` condition, the
    finding with such a condition that shares the most images with it (Jaccard index of
    their image sets at least ``min_overlap``) moves just above it. Nothing else changes:
    no slice is added, dropped or re-tested, so q-values keep their meaning. Global
    shortcuts (a gamma change, a blur) draw maps that peak anywhere, so their slices find
    no such twin and keep their global names.

    Parameters
    ----------
    slices : DataFrame
        :func:`pneumoxai.slices.find_failure_slices` of ``frame``, with its ``conditions``.
    frame : DataFrame of shape (n_samples, n_columns)
        The slicing table the slices were found on.
    min_overlap : float in (0, 1], default=0.8
        Smallest Jaccard index between the two slices' image sets.

    Returns
    -------
    DataFrame
        ``slices`` reordered (index reset).

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from pneumoxai.slices import find_failure_slices
    >>> marked = np.r_[np.ones(30, bool), np.zeros(90, bool)]
    >>> frame = pd.DataFrame({"sharpness": np.where(marked, 2.0, 1.0) + np.arange(120) / 1e3,
    ...                       "peak_top_right": marked & (np.arange(120) < 27)})
    >>> found = find_failure_slices(frame, np.zeros(120, int), np.where(marked, 0.9, 0.1), max_order=1)
    >>> found["slice"].iloc[0]
    'sharpness > 1.34'
    >>> prefer_place_names(found, frame)["slice"].iloc[0]
    'peak_top_right == True'
    """
    from .slices import slice_mask

    check_param("prefer_place_names", "min_overlap", min_overlap, Interval("real", 0, 1, closed="right"))
    findings = np.flatnonzero(slices["finding"].to_numpy(bool)) if len(slices) else np.array([], int)
    members = {i: slice_mask(frame, slices["conditions"].iloc[i]) for i in findings}
    placed = [i for i in findings if any(str(c.column).startswith("peak_") for c in slices["conditions"].iloc[i])]
    order = list(range(len(slices)))
    for i in findings:
        if i in placed:
            continue
        overlap = {j: (members[i] & members[j]).sum() / max((members[i] | members[j]).sum(), 1) for j in placed}
        twin = max(overlap, key=overlap.get, default=None)
        if twin is not None and overlap[twin] >= min_overlap and order.index(twin) > order.index(i):
            order.remove(twin)
            order.insert(order.index(i), twin)
    return slices.iloc[order].reset_index(drop=True)


def _masked_mean(values, masks):
    """Per-image mean of ``values`` over ``masks`` (n, H, W); NaN where a mask is empty."""
    count = masks.sum(axis=(1, 2))
    total = np.where(masks, values, 0).sum(axis=(1, 2), dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def describe_feature(column):
    """A column of :func:`region_features` in words; any other name comes back unchanged.

    Examples
    --------
    >>> describe_feature("edge_density_top_right")
    'edge density in the top-right corner'
    >>> describe_feature("rel_brightness_left_lower")
    'brightness of the left lower lung zone against both lungs'
    >>> describe_feature("sharpness")
    'sharpness'
    """
    for measure, words in REGION_FEATURES.items():
        place = str(column)[len(measure) + 1:]
        if str(column).startswith(measure + "_") and place in PLACE_WORDS:
            if place in ZONE_NAMES and measure == "rel_brightness":
                return f"brightness of the {PLACE_WORDS[place]} against both lungs"
            return f"{words} in the {PLACE_WORDS[place]}"
    return str(column)


def describe_slice(label):
    """A failure slice's label with each :func:`region_features` column in words.

    Parameters
    ----------
    label : str
        A ``slice`` of :func:`pneumoxai.slices.find_failure_slices`.

    Returns
    -------
    str
        The label with every column of :func:`region_features` replaced by
        :func:`describe_feature`; other names and the numbers unchanged.

    Examples
    --------
    >>> describe_slice("edge_density_top_right > 0.021 and subtype == normal")
    'edge density in the top-right corner > 0.021 and subtype == normal'
    >>> describe_slice("peak_top_left == True")
    "the map's peak region in the top-left corner"
    """
    def peak(match):
        words = describe_feature(match.group(1))
        return words if match.group(2) == "True" else words.replace(" in the ", " outside the ", 1)

    label = re.sub(r"\b(peak_[a-z_]+) == (True|False)\b", peak, str(label))
    return re.sub(r"\b[a-z_]+\b", lambda word: describe_feature(word.group()), label)


def name_region(region, *, lung_masks=None):
    """Name a region of an image after the place it overlaps most.

    Parameters
    ----------
    region : bool array_like of shape (H, W)
        Where a map points (e.g. a row of :func:`pneumoxai.evidence.evidence_regions`).
    lung_masks : bool array_like of shape (H, W), default=None
        The image's lung fields. With them, a region at least half inside the lungs is
        named after the lung zone it overlaps most, and one at most a tenth inside them
        gets ", outside both lungs".

    Returns
    -------
    str
        E.g. ``"top-right corner, outside both lungs"``, ``"left lower lung zone"``,
        ``"centre"`` (a region that meets no border place and no lung field).

    Examples
    --------
    >>> import numpy as np
    >>> r = np.zeros((32, 32), bool)
    >>> r[1:4, 22:31] = True
    >>> name_region(r)
    'top-right corner'
    >>> lungs = np.zeros((32, 32), bool)
    >>> lungs[10:26, 4:14] = lungs[10:26, 18:28] = True
    >>> name_region(r, lung_masks=lungs)
    'top-right corner, outside both lungs'
    >>> r2 = np.zeros((32, 32), bool)
    >>> r2[22:25, 20:24] = True
    >>> name_region(r2, lung_masks=lungs)
    'left lower lung zone'
    """
    region = np.asarray(region).astype(bool)
    if region.ndim != 2 or not region.any():
        raise DataError(f"name_region: region must be a non-empty (H, W) boolean mask; got shape {region.shape}")
    if lung_masks is not None:
        lungs = np.asarray(lung_masks).astype(bool)
        if lungs.shape != region.shape:
            raise DataError(f"name_region: lung_masks must have shape {region.shape}; got {lungs.shape}")
        inside = (region & lungs).sum() / region.sum()
        if inside >= _IN_LUNGS:
            zone_ids = zones(lungs[None])[0]
            counts = np.bincount(zone_ids[region & lungs], minlength=len(ZONE_NAMES) + 1)[1:]
            return PLACE_WORDS[ZONE_NAMES[int(counts.argmax())]]
    places = place_masks(region.shape)
    overlap = {place: int((region & places[place]).sum()) for place in BORDER_PLACES}
    best = max(overlap, key=overlap.get)
    name = PLACE_WORDS[best] if overlap[best] > 0 else "centre"
    if lung_masks is not None and inside <= _OUTSIDE_LUNGS:
        name += ", outside both lungs"
    return name
