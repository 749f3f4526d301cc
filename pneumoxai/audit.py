"""Building blocks of a shortcut audit: plant a marker, remove it, and see what changes.

Shortcut learning in chest radiographs (DeGrave, Janizek & Lee, "AI for radiographic
COVID-19 detection selects shortcuts over signal", Nature Machine Intelligence 3, 2021)
often runs through burnt-in text and laterality markers. These functions let an audit
plant such a marker with a known answer and check the analysis finds it:

- :func:`marker_box` and :func:`stamp_marker` draw a bright tag with a letter into
  one corner (OpenCV), like the "L"/"R" tags hospitals put on films;
- :func:`remove_marker` inpaints a box from its surrounding background
  (``cv2.inpaint``, Telea's method), the counterfactual "same image, no marker";
- :func:`counterfactual_flip_rate` is the share of a model's errors that become
  correct calls once the marker is removed;
- :func:`peak_in_box` is the share of attention maps whose maximum lies in the box;
- :func:`peak_removal_effect` inpaints a window around each map's peak and predicts
  again: does the call depend on where the map points?
- :func:`marker_attention_test` asks whether the maps of marked images peak in the box
  more often than the maps of the same images without the marker (a paired test),
  optionally counting only the peaks whose removal changes the call.

Boxes are ``(r0, c0, r1, c1)`` pixel rows/columns, end-exclusive, as NumPy slices.
Images are float arrays ``(n, H, W, 3)`` in [0, 1], as everywhere in pneumoxai.
"""

import warnings

import cv2
import numpy as np

from .errors import DataError, param_error
from .evidence import inpaint_regions, predicted_probabilities
from .validation import Interval, Options, check_images, check_labels, check_maps, check_param, is_valid

__all__ = [
    "CORNERS",
    "marker_box",
    "stamp_marker",
    "remove_marker",
    "counterfactual_flip_rate",
    "peak_in_box",
    "peak_removal_effect",
    "marker_attention_test",
    "pointing_tolerance",
]

#: Allowed values of the ``corner`` parameter.
CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_LETTER_FILL = 0.7  # the letter's height as a share of the tag's side


def _check_box(box, shape, owner, n=None):
    """Return boxes as an int array (k, 4) with k = 1 or n, inside an ``shape`` = (H, W) image."""
    b = np.asarray(box)
    if b.ndim == 1:
        b = b[None]
    ok = b.ndim == 2 and b.shape[1] == 4 and (len(b) == 1 or len(b) == n) and np.issubdtype(b.dtype, np.integer)
    if ok:
        r0, c0, r1, c1 = b.T
        ok = bool(((0 <= r0) & (r0 < r1) & (r1 <= shape[0]) & (0 <= c0) & (c0 < c1) & (c1 <= shape[1])).all())
    if not ok:
        expected = "integer (r0, c0, r1, c1) with 0 <= r0 < r1 <= H and 0 <= c0 < c1 <= W"
        expected += f" (H, W = {shape[0]}, {shape[1]})" + (f", or an ({n}, 4) array of them" if n else "")
        raise param_error(owner, "box", expected, box)
    return b.astype(np.int64)


def marker_box(image_size, *, corner="top_left", size=None, margin=None):
    """Pixel box of a square marker in one corner.

    Parameters
    ----------
    image_size : int or (int, int)
        Image side, or ``(H, W)``.
    corner : {"top_left", "top_right", "bottom_left", "bottom_right"}, default "top_left"
    size : int, optional
        Side of the tag in pixels; default ``round(3 * min(H, W) / 16)`` (12 px at 64).
    margin : int, optional
        Gap between the tag and the image edges; default ``round(min(H, W) / 32)``.

    Returns
    -------
    tuple of int
        ``(r0, c0, r1, c1)``, end-exclusive.

    Examples
    --------
    >>> marker_box(64)
    (2, 2, 14, 14)
    >>> marker_box((64, 80), corner="bottom_right", size=10, margin=0)
    (54, 70, 64, 80)
    """
    side_spec = Interval("int", 8, None)
    pair = np.shape(image_size) == (2,) and all(is_valid(v, side_spec) for v in image_size)
    if not (pair or is_valid(image_size, side_spec)):
        raise param_error("marker_box", "image_size", "an int >= 8 or a pair of them", image_size)
    h, w = (int(v) for v in image_size) if pair else (int(image_size),) * 2
    check_param("marker_box", "corner", corner, Options(CORNERS))
    side = min(h, w)
    size = round(3 * side / 16) if size is None else check_param("marker_box", "size", size,
                                                                  Interval("int", 4, side))
    margin = round(side / 32) if margin is None else check_param("marker_box", "margin", margin,
                                                                  Interval("int", 0, side - size))
    r0 = margin if corner.startswith("top") else h - margin - size
    c0 = margin if corner.endswith("left") else w - margin - size
    return (int(r0), int(c0), int(r0 + size), int(c0 + size))


def _tag(size, letter, intensity):
    """A ``size`` x ``size`` bright tag with a dark letter, float32 in [0, 1]."""
    tag = np.full((size, size), 255, np.uint8)  # cv2.putText draws on 8-bit images only
    scale, thickness = 1.0, max(1, size // 8)
    (width, height), _ = cv2.getTextSize(letter, _FONT, scale, thickness)
    scale *= _LETTER_FILL * size / max(width, height)
    (width, height), _ = cv2.getTextSize(letter, _FONT, scale, thickness)
    origin = ((size - width) // 2, (size + height) // 2)  # cv2 puts text by its bottom-left corner
    cv2.putText(tag, letter, origin, _FONT, scale, 0, thickness, cv2.LINE_AA)
    return tag.astype(np.float32) * (intensity / 255)


def stamp_marker(images, *, corner="top_left", size=None, margin=None, letter="L", intensity=1.0):
    """Stamp a bright tag with a letter into one corner of every image.

    Parameters
    ----------
    images : array_like, shape (n, H, W, 3)
        Float images in [0, 1].
    corner, size, margin
        As in :func:`marker_box`.
    letter : str, default "L"
        Drawn dark on the tag with ``cv2.putText`` (anti-aliased), sized to 70% of it.
    intensity : float in (0, 1], default 1.0
        Brightness of the tag.

    Returns
    -------
    ndarray of float32, shape (n, H, W, 3)
        A stamped copy (the input is not modified); the tag covers
        ``marker_box((H, W), corner=corner, size=size, margin=margin)``.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.full((2, 64, 64, 3), 0.3, np.float32)
    >>> marked = stamp_marker(x)
    >>> r0, c0, r1, c1 = marker_box(64)
    >>> float(marked[0, r0, c0, 0]), bool((marked[:, r0:r1, c0:c1] < 0.5).any())  # a dark letter
    (1.0, True)
    >>> bool((np.delete(marked, np.s_[r0:r1], axis=1) == 0.3).all())  # nothing else changes
    True
    """
    x = check_images(images, owner="stamp_marker")
    if not isinstance(letter, str) or len(letter.strip()) == 0:
        raise param_error("stamp_marker", "letter", "a non-empty string", letter)
    check_param("stamp_marker", "intensity", intensity, Interval("real", 0, 1, closed="right"))
    r0, c0, r1, c1 = marker_box(x.shape[1:3], corner=corner, size=size, margin=margin)
    out = x.copy()
    out[:, r0:r1, c0:c1, :] = _tag(r1 - r0, letter, float(intensity))[None, :, :, None]
    return out


def remove_marker(images, box, *, grow=1, radius=3):
    """Inpaint ``box`` from its surroundings (``cv2.inpaint``, Telea's method).

    Parameters
    ----------
    images : array_like, shape (n, H, W, 3)
        Float images in [0, 1].
    box : (r0, c0, r1, c1) or array_like of int, shape (n, 4)
        One box for all images, or one per image.
    grow : int, default 1
        Pixels added around the box, so anti-aliased edges go too.
    radius : int, default 3
        Inpainting neighbourhood radius in pixels.

    Returns
    -------
    ndarray of float32, shape (n, H, W, 3)
        A copy whose (grown) box is filled from the background around it; pixels
        outside it are unchanged.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.full((1, 32, 32, 3), 0.4, np.float32)
    >>> marked = stamp_marker(x, size=8)
    >>> clean = remove_marker(marked, marker_box(32, size=8))
    >>> bool(np.abs(clean - 0.4).max() < 0.01)
    True
    """
    x = check_images(images, owner="remove_marker")
    boxes = _check_box(box, x.shape[1:3], "remove_marker", n=len(x))
    check_param("remove_marker", "grow", grow, Interval("int", 0, None))
    check_param("remove_marker", "radius", radius, Interval("int", 1, None))
    regions = np.zeros(x.shape[:3], bool)
    for i in range(len(x)):
        r0, c0, r1, c1 = boxes[min(i, len(boxes) - 1)]
        regions[i, max(0, r0 - grow):r1 + grow, max(0, c0 - grow):c1 + grow] = True
    return inpaint_regions(x, regions, radius=radius)


def _probabilities(model_or_predict_fn, images, batch_size, owner="counterfactual_flip_rate"):
    return predicted_probabilities(model_or_predict_fn, images, batch_size=batch_size, owner=owner)


def counterfactual_flip_rate(model_or_predict_fn, images, y_true, box, *, threshold=0.5, batch_size=64):
    """Share of the model's errors that become correct calls once ``box`` is inpainted.

    Parameters
    ----------
    model_or_predict_fn : keras.Model or callable
        A model with a single sigmoid output, or ``f(images) -> (n,)`` P(PNEUMONIA).
    images : array_like, shape (n, H, W, 3)
    y_true : array_like of {0, 1}, shape (n,)
        1 = PNEUMONIA.
    box : (r0, c0, r1, c1) or array_like of int, shape (n, 4)
        Passed to :func:`remove_marker`.
    threshold : float in [0, 1], default 0.5
        PNEUMONIA when ``p >= threshold``.
    batch_size : int, default 64

    Returns
    -------
    float
        ``n(error before and correct after) / n(error before)``; NaN (with a
        warning) when the model makes no error on ``images``.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.full((4, 32, 32, 3), 0.3, np.float32)
    >>> box = marker_box(32, size=8)
    >>> x[:2] = stamp_marker(x[:2], size=8)
    >>> def bright_corner_says_pneumonia(images):  # a pure shortcut "model"
    ...     r0, c0, r1, c1 = box
    ...     return images[:, r0:r1, c0:c1].mean(axis=(1, 2, 3))
    >>> counterfactual_flip_rate(bright_corner_says_pneumonia, x, [0, 0, 0, 0], box)
    1.0
    """
    x = check_images(images, owner="counterfactual_flip_rate")
    y = check_labels(y_true, len(x), owner="counterfactual_flip_rate", both_classes=False)
    check_param("counterfactual_flip_rate", "threshold", threshold, Interval("real", 0, 1))
    check_param("counterfactual_flip_rate", "batch_size", batch_size, Interval("int", 1, None))
    before = (_probabilities(model_or_predict_fn, x, batch_size) >= threshold).astype(int) != y
    if not before.any():
        warnings.warn("the model makes no error on these images; the flip rate is undefined (NaN)",
                      UserWarning, stacklevel=2)
        return float("nan")
    boxes = _check_box(box, x.shape[1:3], "counterfactual_flip_rate", n=len(x))
    errors = np.flatnonzero(before)
    cleaned = remove_marker(x[errors], boxes if len(boxes) == 1 else boxes[errors])
    after = (_probabilities(model_or_predict_fn, cleaned, batch_size) >= threshold).astype(int) != y[errors]
    return float((~after).mean())


def pointing_tolerance(size):
    """Pixels of slack of the standard pointing game at image side ``size``: 15 px at 224 px
    (Zhang et al. 2018, "Top-down neural attention by excitation backprop"), scaled.

    Examples
    --------
    >>> pointing_tolerance(224), pointing_tolerance(64), pointing_tolerance(128)
    (15, 4, 9)
    """
    check_param("pointing_tolerance", "size", size, Interval("int", 1, None))
    return int(round(15 * size / 224))


def peak_in_box(maps, box, *, tolerance=0):
    """Share of maps whose maximum lies inside ``box`` (the pointing game on one box).

    Parameters
    ----------
    maps : array_like, shape (n, H, W)
        Attention maps; ties go to the first maximum in row-major order.
    box : (r0, c0, r1, c1) or array_like of int, shape (n, 4)
    tolerance : int, default 0
        Pixels the box is grown by on every side (Zhang et al.'s pointing game allows
        15 px at 224 px, about 4 px at 64). Upsampled coarse maps peak on a plateau
        that starts at the image corner, so a marker set in from the edge needs it.

    Returns
    -------
    float
        In [0, 1].

    Examples
    --------
    >>> import numpy as np
    >>> maps = np.zeros((2, 16, 16))
    >>> maps[0, 2, 3] = 1.0   # inside
    >>> maps[1, 10, 10] = 1.0  # outside
    >>> peak_in_box(maps, (0, 0, 4, 4))
    0.5
    >>> peak_in_box(maps, (4, 4, 8, 8), tolerance=2)  # (2, 3) is within 2 px of the box
    0.5
    """
    return float(_peaks_in_box(maps, box, tolerance, "peak_in_box").mean())


def _peaks(m):
    """Row and column of each map's maximum, the first in row-major order on ties."""
    return np.unravel_index(m.reshape(len(m), -1).argmax(axis=1), m.shape[1:])


def _peaks_in_box(maps, box, tolerance, owner):
    """(n,) bool: does each map's maximum lie within ``tolerance`` px of its box."""
    m = check_maps(maps, owner=owner)
    boxes = _check_box(box, m.shape[1:], owner, n=len(m))
    check_param(owner, "tolerance", tolerance, Interval("int", 0, None))
    rows, cols = _peaks(m)
    r0, c0, r1, c1 = boxes.T
    t = tolerance
    return (rows >= r0 - t) & (rows < r1 + t) & (cols >= c0 - t) & (cols < c1 + t)


def peak_removal_effect(model_or_predict_fn, images, maps, *, size, threshold=0.5, batch_size=64):
    """Does the call depend on where the map points? Inpaint a window around each peak and predict again.

    A map can peak on something salient that the model barely uses (a bright, sharp-edged
    tag draws a mid-layer CAM whatever the model makes of it). Removing the pixels under
    the peak, by inpainting from their surroundings as :func:`remove_marker` does (not by
    blacking them out, which leaves the data distribution; Rong et al., "A consistent and
    efficient evaluation strategy for attribution methods", ICML 2022), and predicting
    again tells a peak the call rests on from one it does not.

    Parameters
    ----------
    model_or_predict_fn : keras.Model or callable
        A model with a single sigmoid output, or ``f(images) -> (n,)`` P(PNEUMONIA).
    images : array_like, shape (n, H, W, 3)
        Float images in [0, 1].
    maps : array_like, shape (n, H, W)
        One map per image at the images' size (``explain.resize_maps`` brings coarser
        maps there).
    size : int
        Side in pixels of the square window removed around each peak; the window is
        shifted to lie inside the image, so every image loses the same area (plus the
        1 px :func:`remove_marker` grows a box by).
    threshold : float in [0, 1], default 0.5
        PNEUMONIA when ``p >= threshold``.
    batch_size : int, default 64

    Returns
    -------
    dict
        ``p_before`` and ``p_after``, (n,) P(PNEUMONIA) of the images and of their copies
        with the window removed; ``call_changed``, (n,) bool, the two calls differ;
        ``windows``, (n, 4) int, each removed window as ``(r0, c0, r1, c1)``.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.full((2, 32, 32, 3), 0.3, np.float32)
    >>> x = stamp_marker(x, size=8)                      # both images carry the tag
    >>> def bright_corner_says_pneumonia(images):
    ...     return images[:, 1:9, 1:9].mean(axis=(1, 2, 3))
    >>> maps = np.zeros((2, 32, 32))
    >>> maps[0, 4, 4] = 1.0                              # points at the tag
    >>> maps[1, 24, 24] = 1.0                            # points elsewhere
    >>> effect = peak_removal_effect(bright_corner_says_pneumonia, x, maps, size=12)
    >>> effect["call_changed"].tolist(), effect["windows"].tolist()
    ([True, False], [[0, 0, 12, 12], [18, 18, 30, 30]])
    """
    owner = "peak_removal_effect"
    x = check_images(images, owner=owner)
    m = check_maps(maps, owner=owner)
    if m.shape != x.shape[:3]:
        raise DataError(f"maps must be one (H, W) map per image, {x.shape[:3]}; got {m.shape} "
                        "(explain.resize_maps brings maps to the images' size)")
    h, w = x.shape[1:3]
    check_param(owner, "size", size, Interval("int", 1, min(h, w)))
    check_param(owner, "threshold", threshold, Interval("real", 0, 1))
    check_param(owner, "batch_size", batch_size, Interval("int", 1, None))
    rows, cols = _peaks(m)
    r0 = np.clip(rows - size // 2, 0, h - size)
    c0 = np.clip(cols - size // 2, 0, w - size)
    windows = np.stack([r0, c0, r0 + size, c0 + size], axis=1).astype(np.int64)
    p_before = _probabilities(model_or_predict_fn, x, batch_size, owner)
    p_after = _probabilities(model_or_predict_fn, remove_marker(x, windows), batch_size, owner)
    return {"p_before": p_before, "p_after": p_after,
            "call_changed": (p_before >= threshold) != (p_after >= threshold), "windows": windows}


def marker_attention_test(maps_marked, maps_clean, box, *, tolerance=0, changed_marked=None, changed_clean=None):
    """Does the marker draw the maps' peaks? A paired test on the same images with and without it.

    Each image's map peaks in ``box`` or not, once on the marked copy and once on the clean
    one. Only the discordant pairs speak: under "the marker does not draw the peak" an
    image is as likely to move into the box as out of it, so the one-sided exact McNemar
    test is a binomial test of ``n_into`` out of ``n_into + n_out_of`` at 1/2
    (McNemar 1947). A corner that attracts peaks anyway (an upsampled coarse map's
    plateau, a bright film edge) counts on both sides and does not make a finding.

    Parameters
    ----------
    maps_marked, maps_clean : array_like, shape (n, H, W)
        Maps of the same ``n`` images, with and without the marker, row-aligned.
    box : (r0, c0, r1, c1) or array_like of int, shape (n, 4)
    tolerance : int, default 0
        As in :func:`peak_in_box`.
    changed_marked, changed_clean : array_like of bool, shape (n,), optional
        Whether removing the region under each map's peak changes the call
        (``call_changed`` of :func:`peak_removal_effect`) on each copy. Given both, a peak
        counts as in the box only where it did: attention the call rests on, not a
        salient tag that draws the map while the model makes nothing of it.

    Returns
    -------
    dict
        ``share_marked`` and ``share_clean`` (share of peaks in the box that count), ``n_into``
        (peak in the box only with the marker), ``n_out_of`` (only without it),
        ``p_value`` (one-sided; 1.0 when no pair differs) and ``moved_into``, the (n,)
        bool mask of the images counted in ``n_into`` (to set against what the marker
        does to each image's prediction).

    Examples
    --------
    >>> import numpy as np
    >>> clean = np.zeros((10, 16, 16))
    >>> clean[:, 12, 12] = 1.0            # every clean map peaks far from the box
    >>> marked = clean.copy()
    >>> marked[:8, 1, 1] = 2.0            # the marker draws 8 of the 10 peaks
    >>> result = marker_attention_test(marked, clean, (0, 0, 4, 4))
    >>> result["n_into"], result["n_out_of"], round(result["p_value"], 4)
    (8, 0, 0.0039)
    >>> calls_rest_on_peak = np.arange(10) < 3  # removing the peak changes 3 marked calls, no clean one
    >>> marker_attention_test(marked, clean, (0, 0, 4, 4), changed_marked=calls_rest_on_peak,
    ...                       changed_clean=np.zeros(10, bool))["n_into"]
    3
    """
    from scipy.stats import binomtest

    marked = _peaks_in_box(maps_marked, box, tolerance, "marker_attention_test")
    clean = _peaks_in_box(maps_clean, box, tolerance, "marker_attention_test")
    if len(marked) != len(clean):
        raise DataError(f"maps_marked and maps_clean must map the same images; got {len(marked)} and {len(clean)} maps")
    if (changed_marked is None) != (changed_clean is None):
        raise DataError("give both changed_marked and changed_clean, or neither: the test compares the two copies alike")
    if changed_marked is not None:
        changed = {"changed_marked": np.asarray(changed_marked), "changed_clean": np.asarray(changed_clean)}
        for name, values in changed.items():
            if values.shape != marked.shape or values.dtype != bool:
                raise DataError(f"{name} must be {len(marked)} booleans, one per map; got {values.dtype} "
                                f"of shape {values.shape}")
        marked, clean = marked & changed["changed_marked"], clean & changed["changed_clean"]
    n_into, n_out_of = int((marked & ~clean).sum()), int((clean & ~marked).sum())
    p_value = (binomtest(n_into, n_into + n_out_of, 0.5, alternative="greater").pvalue
               if n_into + n_out_of else 1.0)
    return {"share_marked": float(marked.mean()), "share_clean": float(clean.mean()),
            "n_into": n_into, "n_out_of": n_out_of, "p_value": float(p_value), "moved_into": marked & ~clean}
