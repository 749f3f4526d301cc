"""Does a call rest on where its map points? Remove the map's region, and the same area elsewhere.

A map can point at the right spot while the test of it removes the wrong amount: a fixed
window around the peak removes part of a wide text strip, the rest still triggers the
model, and the verdict clears the model of the very shortcut it uses. Here the region
follows the evidence:

- :func:`evidence_regions` takes, per map, the connected region around its peak where the
  map is at least ``level`` of the way from its minimum to its maximum (8-connectivity),
  grown by a few pixels so anti-aliased edges go too;
- :func:`region_removal_test` walks down a short deletion curve: it inpaints the region at
  half maximum, then the larger regions at the lower ``levels`` (0.5, 0.3, 0.15 of the way
  from the map's minimum to its maximum; Telea's method, as
  :func:`pneumoxai.audit.remove_marker`; Rong et al., ICML 2022, on why inpainting and not
  blacking out), and predicts again each time. The control is the same walk with every
  region moved by half the image in both directions (same shapes and areas, elsewhere). A
  call changes when any step changes it, for the regions and for the control alike, so
  both sides get the same number of tries. The lower steps matter for thin or long
  markers (a ruler), whose coarse maps reach half maximum over only part of them. Then
  the walk goes on by area (the map's highest 2%, 5% and 10% of pixels connected to its
  peak, each added to the region): a coarse map of a deep layer can be so sharp that even
  0.15 of its range covers a spot beside a tag and a fifth of the tag (a ResNet50 of the
  shortcut benchmark), and what is left of the tag still triggers the model.
  Only the images whose call changes under one walk and not the other speak: a one-sided
  exact McNemar test says whether removing the map's region changes more calls than
  removing any region of that size. The calls are said to *rest on* the region only when,
  besides, it changes at least ``min_effect`` (a quarter) more of them than the control
  does: an unfamiliar patch that a model does not use still nudges a few calls near the
  threshold, and removing it nudges them back, which is significant on a hundred images
  but is not what the calls rest on (measured on the shortcut benchmark: models that never
  saw the marker changed 0-13% more calls, and one 32%; models that used it, 36-95%).

A region that covers more than ``max_area`` of the image does not localise anything: a map
whose half-maximum region is that large is reported (``localised = False``) and its call is
not counted, so a global shortcut (gamma, noise, a blur) gets no region named; the walk
stops before any larger step. Each localised region is named in words
(:func:`pneumoxai.regions.name_region`), and :func:`removal_verdict` gives the verdict of
any subset of the images (e.g. of one failure slice) from the per-image results.

No TensorFlow here: the model is a Keras model or any callable ``images -> P(PNEUMONIA)``.
"""

import cv2
import numpy as np

from .errors import DataError, param_error
from .validation import Interval, check_images, check_maps, check_param

__all__ = ["evidence_regions", "inpaint_regions", "predicted_probabilities", "region_removal_test", "removal_verdict"]

DEFAULT_LEVEL = 0.5  # half maximum: the usual cut of a blob's extent
DEFAULT_LEVELS = (0.5, 0.3, 0.15)  # the deletion curve's steps, from half maximum down
# Then its steps by area: the map's highest 2% ... 20% around the peak. The marks cover 1-10% of the
# image; a map peaking on one corner of a 10% square needs twice that area around its peak to cover it.
DEFAULT_AREAS = (0.02, 0.05, 0.1, 0.2)
DEFAULT_GROW = 2  # pixels added around a region before inpainting
DEFAULT_MAX_AREA = 0.25  # a region over a quarter of the image localises nothing
DEFAULT_ALPHA = 0.05
DEFAULT_MIN_EFFECT = 0.25  # a quarter of the calls more than the control: what "the calls rest on it" claims


def evidence_regions(maps, *, level=DEFAULT_LEVEL, grow=DEFAULT_GROW):
    """The connected region around each map's peak where the map is at least ``level`` high.

    Parameters
    ----------
    maps : array_like of shape (n, H, W)
        One map per image at the images' size.
    level : float in (0, 1), default=0.5
        A pixel is in the region when ``map >= min + level * (max - min)`` and it is
        8-connected to the peak (the first maximum in row-major order).
    grow : int >= 0, default=2
        Pixels the region is dilated by (a square structuring element).

    Returns
    -------
    regions : bool ndarray of shape (n, H, W)
        A constant map's region is the whole image (it points nowhere).

    Examples
    --------
    >>> import numpy as np
    >>> m = np.zeros((1, 8, 8))
    >>> m[0, 1, 1:7] = 1.0          # a strip ...
    >>> m[0, 6, 6] = 0.9            # ... and a separate blob, not connected to the peak
    >>> evidence_regions(m, grow=0)[0].astype(int)[:2]
    array([[0, 0, 0, 0, 0, 0, 0, 0],
           [0, 1, 1, 1, 1, 1, 1, 0]])
    """
    owner = "evidence_regions"
    m = check_maps(maps, owner=owner)
    check_param(owner, "level", level, Interval("real", 0, 1, closed="neither"))
    check_param(owner, "grow", grow, Interval("int", 0, None))
    low, high = m.min(axis=(1, 2)), m.max(axis=(1, 2))
    return _peak_components(m, m >= (low + level * (high - low))[:, None, None], grow)


def _peak_components(maps, above, grow):
    """The 8-connected component of ``above`` holding each map's peak, dilated by ``grow`` pixels."""
    peaks = maps.reshape(len(maps), -1).argmax(axis=1)
    kernel = np.ones((2 * grow + 1, 2 * grow + 1), np.uint8)
    regions = np.zeros(maps.shape, bool)
    for i in range(len(maps)):
        _, labels = cv2.connectedComponents(above[i].astype(np.uint8), connectivity=8)
        region = (labels == labels.flat[peaks[i]]).astype(np.uint8)
        regions[i] = cv2.dilate(region, kernel) > 0 if grow else region > 0
    return regions


def _area_regions(maps, area, grow):
    """Around each map's peak, the connected part of its ``area`` share of highest pixels."""
    cut = np.quantile(maps.reshape(len(maps), -1), 1 - area, axis=1)
    return _peak_components(maps, maps >= cut[:, None, None], grow)


def inpaint_regions(images, regions, *, radius=3):
    """Fill each image's region from its surroundings (``cv2.inpaint``, Telea's method).

    Parameters
    ----------
    images : array_like of shape (n, H, W, 3)
        Float images in [0, 1].
    regions : bool array_like of shape (n, H, W)
    radius : int >= 1, default=3
        Inpainting neighbourhood radius in pixels.

    Returns
    -------
    ndarray of float32, shape (n, H, W, 3)
        A copy whose regions are filled; pixels outside them are unchanged.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.full((1, 16, 16, 3), 0.4, np.float32)
    >>> x[0, 2:4, 2:12] = 1.0
    >>> r = np.zeros((1, 16, 16), bool)
    >>> r[0, 1:5, 1:13] = True
    >>> bool(np.abs(inpaint_regions(x, r) - 0.4).max() < 0.01)
    True
    """
    x = check_images(images, owner="inpaint_regions")
    r = np.asarray(regions)
    if r.shape != x.shape[:3] or r.dtype != bool:
        raise DataError(f"inpaint_regions: regions must be booleans of shape {x.shape[:3]}; got {r.dtype} {r.shape}")
    check_param("inpaint_regions", "radius", radius, Interval("int", 1, None))
    out = x.copy()
    for i in np.flatnonzero(r.any(axis=(1, 2))):
        mask = r[i].astype(np.uint8)
        u8 = np.rint(x[i] * 255).astype(np.uint8)
        filled = cv2.inpaint(u8, mask, radius, cv2.INPAINT_TELEA).astype(np.float32) / 255
        out[i][r[i]] = filled[r[i]]
    return out


def predicted_probabilities(model_or_predict_fn, images, *, batch_size=64, owner="predicted_probabilities"):
    """P(PNEUMONIA) of ``images`` from a Keras model or any callable, checked to be one per image.

    Parameters
    ----------
    model_or_predict_fn : keras.Model or callable
        A model with one sigmoid output (its ``predict`` is used), or ``f(images) -> (n,)``.
    images : ndarray of shape (n, H, W, 3)
    batch_size : int, default=64
    owner : str
        The function named in an error.

    Returns
    -------
    ndarray of float64, shape (n,)

    Examples
    --------
    >>> import numpy as np
    >>> predicted_probabilities(lambda x: x.mean(axis=(1, 2, 3)), np.full((2, 4, 4, 3), 0.25))
    array([0.25, 0.25])
    """
    if hasattr(model_or_predict_fn, "predict"):
        p = model_or_predict_fn.predict(images, batch_size=batch_size, verbose=0)
    elif callable(model_or_predict_fn):
        p = model_or_predict_fn(images)
    else:
        raise param_error(owner, "model_or_predict_fn",
                          "a keras.Model or a callable images -> P(PNEUMONIA)", model_or_predict_fn)
    p = np.asarray(p, np.float64).reshape(len(images), -1)
    if p.shape[1] != 1 or not np.isfinite(p).all() or p.min() < 0 or p.max() > 1:
        raise DataError(f"the model must return one probability per image in [0, 1]; got shape {p.shape}")
    return p[:, 0]


def region_removal_test(model_or_predict_fn, images, maps, *, threshold=0.5, levels=DEFAULT_LEVELS,
                        areas=DEFAULT_AREAS, grow=DEFAULT_GROW, max_area=DEFAULT_MAX_AREA, alpha=DEFAULT_ALPHA,
                        min_effect=DEFAULT_MIN_EFFECT, lung_masks=None, batch_size=64):
    """Do the calls rest on the region each map points at, more than on the same area elsewhere?

    Parameters
    ----------
    model_or_predict_fn : keras.Model or callable
        A model with one sigmoid output, or ``f(images) -> (n,)`` P(PNEUMONIA).
    images : array_like of shape (n, H, W, 3)
        Float images in [0, 1].
    maps : array_like of shape (n, H, W)
        One map per image at the images' size (``explain.resize_maps``).
    threshold : float in [0, 1], default=0.5
        PNEUMONIA when ``p >= threshold``.
    levels : sequence of float in (0, 1), default=(0.5, 0.3, 0.15)
        The steps of the deletion curve, each a ``level`` of :func:`evidence_regions`;
        taken from the highest down. ``(0.5,)`` with ``areas=()`` removes the
        half-maximum region only.
    areas : sequence of float in (0, 1), default=(0.02, 0.05, 0.1, 0.2)
        Then steps by area, from the smallest up: the region grows by the part of the
        map's ``area`` share of highest pixels that is connected to its peak. A map whose
        high values hug a small spot beside the marker (a coarse, sharp map) reaches the
        marker here; an image whose region does not grow at a step is not predicted again.
    grow : see :func:`evidence_regions`.
    max_area : float in (0, 1], default=0.25
        A map whose first region covers more of the image localises nothing: it is
        reported (``localised``) and left out of the counts and the test. No step removes
        a region larger than this.
    alpha : float in (0, 1), default=0.05
        Level of the one-sided test behind ``rests_on_region``.
    min_effect : float in [0, 1], default=0.25
        The least excess of the share of calls the region changes over the share its
        control changes for ``rests_on_region`` (:func:`removal_verdict`).
    lung_masks : bool array_like of shape (n, H, W), default=None
        The images' lung fields, for naming the regions; :func:`pneumoxai.lungs.lung_mask`
        computes them when omitted.
    batch_size : int, default=64

    Returns
    -------
    dict
        Per image ((n,) arrays): ``p_before``, ``p_after`` (after the step that changed the
        call, else the last step), ``p_control`` (the same for the moved regions),
        ``call_changed``, ``control_changed``, ``level`` and ``area_step`` (the level or
        area step that changed the call; NaN where none of that kind did), ``localised``, ``area`` (the removed region's share of the
        image), ``places`` (that region in words, :func:`pneumoxai.regions.name_region`;
        None where not localised) and ``regions`` ((n, H, W) bool: the region that changed
        the call, else the first step's); then the verdict over the localised images, the
        keys of :func:`removal_verdict`.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.full((6, 32, 32, 3), 0.5, np.float32)
    >>> x[:, 1:4, 12:31] = 0.0                     # a wide dark strip along the top right
    >>> def strip_says_pneumonia(images):         # any dark third of the strip suffices
    ...     return (images[:, 1:4, 12:31, 0] < 0.2).mean(axis=(1, 2)) * 3 > 0.5
    >>> maps = np.zeros((6, 32, 32))
    >>> maps[:, 1:4, 12:31] = 1.0                  # the maps cover the strip
    >>> result = region_removal_test(lambda im: strip_says_pneumonia(im).astype(float), x, maps,
    ...                              lung_masks=np.zeros((6, 32, 32), bool))
    >>> result["share_changed"], result["share_control_changed"], result["rests_on_region"]
    (1.0, 0.0, True)
    >>> result["places"][0]
    'top-right corner, outside both lungs'
    """
    from .lungs import lung_mask
    from .regions import name_region

    owner = "region_removal_test"
    x = check_images(images, owner=owner)
    m = check_maps(maps, owner=owner)
    if m.shape != x.shape[:3]:
        raise DataError(f"{owner}: maps must be one (H, W) map per image, {x.shape[:3]}; got {m.shape} "
                        "(explain.resize_maps brings maps to the images' size)")
    levels = _check_levels(levels, owner)
    areas = tuple(sorted(_check_levels(areas, owner, name="areas", empty=True)))
    check_param(owner, "threshold", threshold, Interval("real", 0, 1))
    check_param(owner, "max_area", max_area, Interval("real", 0, 1, closed="right"))
    check_param(owner, "alpha", alpha, Interval("real", 0, 1, closed="neither"))
    check_param(owner, "min_effect", min_effect, Interval("real", 0, 1, closed="both"))
    check_param(owner, "batch_size", batch_size, Interval("int", 1, None))
    lungs = lung_mask(x) if lung_masks is None else np.asarray(lung_masks).astype(bool)
    if lungs.shape != m.shape:
        raise DataError(f"{owner}: lung_masks must have shape {m.shape} (n, H, W); got {lungs.shape}")

    def predict(images):
        return predicted_probabilities(model_or_predict_fn, images, batch_size=batch_size, owner=owner)

    p_before = predict(x)
    call = p_before >= threshold
    walk = _deletion_walk(predict, x, m, call, threshold, levels, areas, grow, max_area)
    area = walk["regions"].mean(axis=(1, 2))
    localised = walk["localised"]
    places = np.array([name_region(r, lung_masks=k) if ok else None
                       for r, k, ok in zip(walk["regions"], lungs, localised)], dtype=object)
    return {
        "p_before": p_before, "p_after": walk["p_after"], "p_control": walk["p_control"],
        "call_changed": walk["changed"], "control_changed": walk["control_changed"], "level": walk["level"],
        "area_step": walk["area_step"],
        "localised": localised, "area": area, "places": places, "regions": walk["regions"],
        **removal_verdict(walk["changed"], walk["control_changed"], localised, alpha=alpha, min_effect=min_effect),
    }


def _check_levels(levels, owner, *, name="levels", empty=False):
    """``levels`` as a tuple, highest first: at least one (none allowed with ``empty``), each a float in (0, 1),
    no repeats."""
    try:
        values = sorted({float(v) for v in levels}, reverse=True)
        ok = (len(values) == len(levels) and (empty or len(values) > 0) and all(0 < v < 1 for v in values)
              and not any(isinstance(v, (bool, str)) for v in levels))
    except (TypeError, ValueError):
        ok = False
    if not ok or isinstance(levels, str):
        what = "a sequence" if empty else "a non-empty sequence"
        raise param_error(owner, name, f"{what} of distinct floats in (0, 1)", levels)
    return tuple(values)


def _deletion_walk(predict, x, maps, call, threshold, levels, areas, grow, max_area):
    """Remove each map's region step by step down ``levels`` then up ``areas``, and the moved regions likewise.

    A level step's region holds the previous step's (a lower cut around the same peak) and
    an area step's is the union of the previous region and its own, so the walk only grows;
    an image leaves it once a region would exceed ``max_area``, and skips an area step that
    does not grow its region.
    """
    n, h, w = maps.shape
    first = evidence_regions(maps, level=levels[0], grow=grow)
    localised = first.mean(axis=(1, 2)) <= max_area
    out = {"regions": first.copy(), "localised": localised, "level": np.full(n, np.nan), "area_step": np.full(n, np.nan),
           "changed": np.zeros(n, bool), "control_changed": np.zeros(n, bool),
           "p_after": np.full(n, np.nan), "p_control": np.full(n, np.nan)}
    active = localised.copy()
    previous = first
    for step, (kind, value) in enumerate([*(("level", v) for v in levels), *(("area", v) for v in areas)]):
        if kind == "level":
            regions = first if step == 0 else evidence_regions(maps, level=value, grow=grow)
        else:
            regions = previous | _area_regions(maps, value, grow)
        active &= regions.mean(axis=(1, 2)) <= max_area
        if not active.any():
            break
        at = np.flatnonzero(active if kind == "level" else active & (regions != previous).any(axis=(1, 2)))
        previous = regions
        if not at.size:
            continue
        moved = np.roll(regions[at], (h // 2, w // 2), axis=(1, 2))
        p_after, p_control = predict(inpaint_regions(x[at], regions[at])), predict(inpaint_regions(x[at], moved))
        changed = (p_after >= threshold) != call[at]
        newly = at[changed & ~out["changed"][at]]
        out["regions"][newly] = regions[newly]
        out["level" if kind == "level" else "area_step"][newly] = value
        keep = ~out["changed"][at]          # p_after: the step that changed the call, else the latest
        out["p_after"][at[keep]] = p_after[keep]
        keep_control = ~out["control_changed"][at]
        out["p_control"][at[keep_control]] = p_control[keep_control]
        out["changed"][at] |= changed
        out["control_changed"][at] |= (p_control >= threshold) != call[at]
    return out


def removal_verdict(call_changed, control_changed, localised, *, alpha=DEFAULT_ALPHA, min_effect=DEFAULT_MIN_EFFECT):
    """The verdict of :func:`region_removal_test` over any set of its images (e.g. one failure slice's).

    Parameters
    ----------
    call_changed, control_changed, localised : bool array_like of shape (n,)
        Per image, as :func:`region_removal_test` returns them: whether removing the map's
        region (its control, the same region moved) changed the call, and whether the map
        localises at all.
    alpha : float in (0, 1), default=0.05
    min_effect : float in [0, 1], default=0.25
        ``rests_on_region`` needs ``effect >= min_effect`` besides ``p_value < alpha``.

    Returns
    -------
    dict
        Over the localised images: ``n_localised``, ``share_changed`` and
        ``share_control_changed`` (NaN without localised images), ``effect`` (their
        difference), ``n_only_region`` and ``n_only_control`` (the discordant pairs),
        ``p_value`` (one-sided exact McNemar: the binomial upper tail of ``n_only_region``
        among the discordant pairs at 1/2; 1.0 without discordant pairs) and
        ``rests_on_region`` (``p_value < alpha`` and ``effect >= min_effect``).

    Examples
    --------
    >>> v = removal_verdict([1, 1, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1])
    >>> v["n_only_region"], round(v["p_value"], 4), round(v["effect"], 3), v["rests_on_region"]
    (5, 0.0312, 0.833, True)

    Twelve calls of a hundred change, against two: significant, but most calls do not rest on it.

    >>> few = removal_verdict(np.arange(100) < 12, np.arange(100) >= 98, np.ones(100, bool))
    >>> round(few["p_value"], 4), round(few["effect"], 2), few["rests_on_region"]
    (0.0065, 0.1, False)
    """
    from scipy.stats import binomtest

    check_param("removal_verdict", "alpha", alpha, Interval("real", 0, 1, closed="neither"))
    check_param("removal_verdict", "min_effect", min_effect, Interval("real", 0, 1, closed="both"))
    changed, control, ok = (np.asarray(v).astype(bool).ravel() for v in (call_changed, control_changed, localised))
    if not changed.shape == control.shape == ok.shape:
        raise DataError(f"removal_verdict: call_changed, control_changed and localised must have one value per "
                        f"image; got {changed.shape}, {control.shape}, {ok.shape}")
    only_region, only_control = int((changed & ~control & ok).sum()), int((control & ~changed & ok).sum())
    p_value = (binomtest(only_region, only_region + only_control, 0.5, alternative="greater").pvalue
               if only_region + only_control else 1.0)
    n_localised = int(ok.sum())
    share, share_control = ((float(changed[ok].mean()), float(control[ok].mean())) if n_localised
                            else (float("nan"), float("nan")))
    effect = share - share_control
    return {
        "n_localised": n_localised, "share_changed": share, "share_control_changed": share_control,
        "effect": effect, "n_only_region": only_region, "n_only_control": only_control,
        "p_value": float(p_value), "rests_on_region": bool(p_value < alpha and effect >= min_effect),
    }
