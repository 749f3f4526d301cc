"""Classical lung-field estimate and lung zones for frontal chest radiographs.

No TensorFlow here: :mod:`pneumoxai.slices` imports this module for array-level
analyses. The segmentation is a deliberately simple OpenCV pipeline, good enough to
ask "does the model look at the lungs?"; it is not a diagnostic segmentation.

Pipeline (on a 128x128 working copy, so the parameters do not depend on resolution):

1. histogram equalisation and a Gaussian blur that melts ribs into the lung field;
2. the mediastinum is the brightest column band near the centre, the cut between lungs;
3. dark air outside the body (connected to the left/right border) is excluded;
4. lung cores are the darkest pixels inside a generous two-ellipse search region
   (below both a percentile and the region's Otsu level), opened;
5. the largest plausible core on each side of the cut is grown (hysteresis) into the
   pixels below the Otsu level connected to it, thin bridges (to the shoulders) are
   cut by an opening, then the lung is closed and hole-filled;
6. a side with no plausible core (or a blank image) falls back to a fixed elliptical
   prior, reported by ``return_fallback`` and a warning.

Orientation follows radiological convention: the image's left half shows the
patient's right lung.
"""

import warnings

import cv2
import numpy as np

from .errors import DataError
from .validation import check_grey_images

__all__ = ["ZONE_NAMES", "ZONE_COLUMNS", "lung_mask", "zones"]

#: Zone ids 1..6 in :func:`zones` index this tuple at ``id - 1``; 0 is outside the lungs.
ZONE_NAMES = (
    "right_upper", "right_middle", "right_lower",
    "left_upper", "left_middle", "left_lower",
)
#: Columns of the zone-attention tables: the six zones' shares, then the share outside the lungs.
ZONE_COLUMNS = ZONE_NAMES + ("off_lung_attention",)

_WORK = 128  # working resolution of the segmentation
_DARK_PERCENTILE = 42  # lung cores are at most this darkest share of the search region
_GROW_PERCENTILES = (35, 55)  # bounds on the (Otsu) level lungs are grown to
_OUTSIDE_FACTOR = 0.5  # outside air is darker than this fraction of the Otsu threshold
_MIN_AREA = 0.02  # a lung below this share of the image is implausible
_MIN_HEIGHT = 0.25  # ... and so is one shorter than this share of the image height
_MIN_CONTRAST = 0.05  # intensity range below which an image is treated as blank


def _ellipses(half_width, half_height):
    """Two lung-shaped ellipses on the working grid, one per side."""
    canvas = np.zeros((_WORK, _WORK), np.uint8)
    for centre_x in (0.30, 0.70):
        cv2.ellipse(
            canvas, (round(centre_x * _WORK), round(0.5 * _WORK)),
            (round(half_width * _WORK), round(half_height * _WORK)), 0, 0, 360, 1, -1,
        )
    return canvas.astype(bool)


_SEARCH_REGION = _ellipses(0.22, 0.42)  # generous: lungs of squashed 224x224 crops are wide
_FALLBACK_PRIOR = _ellipses(0.14, 0.33)  # a typical lung field, used when segmentation fails
_COLUMNS = np.arange(_WORK)


def _disk(size):
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))


def _outside_air(blurred_light):
    """Dark air connected to the left/right border, limited to the outer quarters."""
    threshold, _ = cv2.threshold(blurred_light, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    low = (blurred_light < threshold * _OUTSIDE_FACTOR).astype(np.uint8)
    _, labels = cv2.connectedComponents(low, connectivity=4)
    edge_labels = np.unique(np.concatenate([labels[:, 0], labels[:, -1]]))
    outside = np.isin(labels, edge_labels[edge_labels > 0])
    # A very dark lung can touch the border through a thin chest wall: never let the
    # flood reach the central half, where the lungs are.
    outside[:, _WORK // 4: 3 * _WORK // 4] = False
    return cv2.dilate(outside.astype(np.uint8), _disk(5)).astype(bool)


def _fill_holes(mask):
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros(mask.shape, np.uint8)
    cv2.drawContours(filled, contours, -1, 1, thickness=-1)
    return filled.astype(bool)


def _grow(core, grow_labels):
    """``core`` grown into the loose-threshold components it overlaps, minus thin bridges."""
    touched = np.unique(grow_labels[core])
    grown = core | np.isin(grow_labels, touched[touched > 0])
    # The looser threshold can reach the shoulders over the apex through a narrow neck;
    # a wide opening cuts such bridges, and only the part holding the core is kept.
    opened = cv2.morphologyEx(grown.astype(np.uint8), cv2.MORPH_OPEN, _disk(9))
    _, labels = cv2.connectedComponents(opened, connectivity=4)
    overlap = np.bincount(labels[core], minlength=labels.max() + 1)
    overlap[0] = 0
    return (labels == np.argmax(overlap)) if overlap.any() else core


def _segment(gray):
    """Lung mask of one (H, W) image on the working grid, and whether a prior was used."""
    small = cv2.resize(gray, (_WORK, _WORK), interpolation=cv2.INTER_AREA)
    if np.ptp(small) < _MIN_CONTRAST:  # blank or near-uniform: nothing to segment
        return _FALLBACK_PRIOR.copy(), True
    equalised = cv2.equalizeHist(np.round(small * 255).astype(np.uint8))
    blurred = cv2.GaussianBlur(equalised, (0, 0), 3).astype(np.float32)

    band = blurred[_WORK // 4: 3 * _WORK // 4].mean(axis=0)
    lo, hi = round(0.38 * _WORK), round(0.62 * _WORK)
    midline = lo + int(np.argmax(band[lo:hi]))

    region = _SEARCH_REGION & ~_outside_air(cv2.GaussianBlur(equalised, (0, 0), 1.5))
    # Otsu separates lung from tissue when the histogram is bimodal; the percentile
    # bounds keep it sane when it is not (opacified lungs, low contrast).
    values = blurred[region]
    otsu, _ = cv2.threshold(values.astype(np.uint8), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    loose_level = np.clip(otsu, *np.percentile(values, _GROW_PERCENTILES))
    dark = (blurred <= min(np.percentile(values, _DARK_PERCENTILE), loose_level)) & region
    dark[:, midline - 2: midline + 3] = False  # keep the two lungs apart across the trachea
    dark = cv2.morphologyEx(dark.astype(np.uint8), cv2.MORPH_OPEN, _disk(5))

    # Hysteresis: a looser threshold, kept only where it touches a chosen lung core.
    loose = (blurred <= loose_level) & region
    loose[:, midline - 2: midline + 3] = False
    _, grow_labels = cv2.connectedComponents(loose.astype(np.uint8), connectivity=4)
    _, labels, stats, centroids = cv2.connectedComponentsWithStats(dark, connectivity=4)
    areas = stats[:, cv2.CC_STAT_AREA]
    plausible = (
        (areas >= _MIN_AREA * _WORK**2)
        & (stats[:, cv2.CC_STAT_HEIGHT] >= _MIN_HEIGHT * _WORK)
        & (centroids[:, 1] > 0.2 * _WORK) & (centroids[:, 1] < 0.8 * _WORK)
    )
    plausible[0] = False  # background label
    mask = np.zeros((_WORK, _WORK), bool)
    used_prior = False
    for on_right_of_image in (False, True):
        side = plausible & ((centroids[:, 0] >= midline) == on_right_of_image)
        if side.any():
            best = int(np.argmax(np.where(side, areas, -1)))
            lung = _grow(labels == best, grow_labels)
            lung = cv2.morphologyEx(lung.astype(np.uint8), cv2.MORPH_CLOSE, _disk(11))
            mask |= _fill_holes(lung)
        else:
            used_prior = True
            mask |= _FALLBACK_PRIOR & ((_COLUMNS >= _WORK // 2) == on_right_of_image)
    return mask, used_prior


def lung_mask(images, *, return_fallback=False):
    """Estimate the lung fields of frontal chest radiographs.

    Parameters
    ----------
    images : array-like, shape (n, H, W) or (n, H, W, 1 | 3)
        Radiographs scaled to [0, 1]; colour channels are averaged.
    return_fallback : bool, default=False
        Also return which images used the elliptical prior for at least one lung.

    Returns
    -------
    masks : ndarray of bool, shape (n, H, W)
        True on the estimated lung fields.
    fallback : ndarray of bool, shape (n,)
        Only when ``return_fallback``: True where a lung could not be segmented and the
        fixed elliptical prior stands in for it.

    Raises
    ------
    DataError
        Wrong shape, empty batch, non-finite values or values outside [0, 1].

    Warns
    -----
    UserWarning
        With the number of images that fell back on the prior.
    """
    gray = check_grey_images(images, owner="lung_mask").astype(np.float32, copy=False)
    n, height, width = gray.shape
    masks = np.empty((n, height, width), bool)
    fallback = np.zeros(n, bool)
    for i, image in enumerate(gray):  # OpenCV works on one 2-D image at a time
        small, fallback[i] = _segment(image)
        # Linear upsampling then 0.5 threshold gives smoother edges than nearest.
        masks[i] = cv2.resize(small.astype(np.float32), (width, height)) >= 0.5
    warn_fallback(int(fallback.sum()), n, stacklevel=3)
    return (masks, fallback) if return_fallback else masks


def warn_fallback(n_fallback, n, *, stacklevel=2):
    """The one warning of :func:`lung_mask` about images whose lungs the prior stands in for (none if 0)."""
    if n_fallback:
        warnings.warn(f"lung segmentation found no plausible lung on at least one side in {n_fallback} of {n} "
                      "images; the fixed elliptical prior stands in there", UserWarning, stacklevel=stacklevel)


def zones(masks):
    """Split lung masks into six zones: right/left lung x upper/middle/lower third.

    The two lungs are separated at the emptiest mask column in the central band (the
    mediastinum); each lung's vertical extent is cut into thirds.

    Parameters
    ----------
    masks : array-like of bool, shape (n, H, W)
        Lung masks, e.g. from :func:`lung_mask`.

    Returns
    -------
    ndarray of int8, shape (n, H, W)
        0 outside the lungs, ``k`` in 1..6 for zone ``ZONE_NAMES[k - 1]``. The image's
        left half is the patient's right lung (zones 1-3).

    Raises
    ------
    DataError
        If ``masks`` is not a 3-D array.

    Examples
    --------
    >>> import numpy as np
    >>> m = np.zeros((1, 6, 8), bool)
    >>> m[0, :, 1:3] = m[0, :, 5:7] = True
    >>> zones(m)[0]
    array([[0, 1, 1, 0, 0, 4, 4, 0],
           [0, 1, 1, 0, 0, 4, 4, 0],
           [0, 2, 2, 0, 0, 5, 5, 0],
           [0, 2, 2, 0, 0, 5, 5, 0],
           [0, 3, 3, 0, 0, 6, 6, 0],
           [0, 3, 3, 0, 0, 6, 6, 0]], dtype=int8)
    """
    masks = np.asarray(masks).astype(bool)
    if masks.ndim != 3:
        raise DataError(f"masks must have shape (n, H, W); got shape {masks.shape}")
    _, height, width = masks.shape
    out = np.zeros(masks.shape, np.int8)
    columns = np.arange(width)
    rows = np.arange(height)[:, None]
    lo, hi = round(0.3 * width), max(round(0.7 * width), round(0.3 * width) + 1)
    for i, mask in enumerate(masks):
        occupancy = mask[:, lo:hi].sum(axis=0)
        empty = np.flatnonzero(occupancy == occupancy.min()) + lo
        midline = empty[np.argmin(np.abs(empty - (width - 1) / 2))] + 0.5
        for first_zone, side in ((1, columns < midline), (4, columns >= midline)):
            lung = mask & side
            lung_rows = np.flatnonzero(lung.any(axis=1))
            if lung_rows.size == 0:
                continue
            top, extent = lung_rows[0], lung_rows[-1] - lung_rows[0] + 1
            third = np.minimum((rows - top) * 3 // extent, 2)
            out[i][lung] = (first_zone + np.broadcast_to(third, mask.shape))[lung]
    return out
