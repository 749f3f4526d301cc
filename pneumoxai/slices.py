"""Failure-slice discovery: on which images does a model fail, and is it a real pattern?

The workflow is three steps:

1. :func:`image_features` turns images into interpretable per-image measurements
   (brightness, contrast, sharpness, noise [2]_, borders, corner markers, ...).
2. :func:`slice_frame` joins them with metadata (pneumonia subtype, images per
   patient) and model-derived columns (member disagreement, confidence bin,
   attention outside the lungs, embedding clusters) into one table.
3. :func:`find_failure_slices` searches that table for slices -- quantile bins,
   category levels and conjunctions of two, as SliceLine [1]_ enumerates them --
   whose error rate is higher than the rest of the data, with a Fisher exact test
   per slice and Benjamini-Hochberg correction [3]_ over every slice tested, so
   that a reported finding is unlikely to be noise (error rates with Wilson
   intervals [4]_). :func:`member_failure_slices` does the same per ensemble member
   and reports whether the ensemble repairs each member's failure slice.

References
----------
.. [1] S. Sagadeeva and M. Boehm, "SliceLine: Fast, Linear-Algebra-based Slice
   Finding for ML Model Debugging", SIGMOD 2021. doi:10.1145/3448016.3457323
.. [2] J. Immerkaer, "Fast Noise Variance Estimation", Computer Vision and Image
   Understanding 64(2):300-302, 1996. doi:10.1006/cviu.1996.0060
.. [3] Y. Benjamini and Y. Hochberg, "Controlling the False Discovery Rate",
   J. R. Stat. Soc. B 57(1):289-300, 1995.
.. [4] E. B. Wilson, "Probable Inference, the Law of Succession, and Statistical
   Inference", J. Am. Stat. Assoc. 22(158):209-212, 1927.
"""

import collections.abc
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .data import DEFAULT_CHUNK_SIZE
from .errors import DataError, param_error, short_repr
from .validation import (OPEN_UNIT_INTERVAL, UNIT_INTERVAL, Interval, Options, check_grey_images, check_labels,
                         check_param, check_probabilities)

__all__ = [
    "Condition",
    "image_features",
    "streamed_image_features",
    "slice_frame",
    "find_failure_slices",
    "member_failure_slices",
    "slice_mask",
    "slice_masks_from_labels",
    "SLICE_COLUMNS",
    "MEMBER_SLICE_COLUMNS",
    "DEFAULT_N_BINS",
    "TAIL_QUANTILE",
]

# --- Allowed parameter values and fixed constants, declared once. -------------
MAX_ORDERS = (1, 2)
MIN_BINS = 2
MIN_IMAGE_SIDE = 8  # corner patches need at least one pixel
BLACK_LEVEL = 0.05  # a border row/column whose mean is below this is "near-black"
BRIGHT_LEVEL = 0.95  # corner pixels above this count as burnt-in text/markers
CORNER_FRACTION = 0.125  # each corner patch is H/8 x W/8
CANNY_THRESHOLDS = (50, 150)  # hysteresis thresholds on uint8 intensities
CONFIDENCE_EDGES = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)  # bins of max(p, 1 - p)
_CHUNK = 64  # images per vectorised block: bounds float64 temporaries to ~25 MB at 224 px

FEATURE_COLUMNS = (
    "brightness", "contrast_std", "contrast_p5_p95", "dynamic_range", "sharpness",
    "noise_sigma", "entropy", "edge_density", "border_fraction", "corner_marker",
    "lr_asymmetry", "lung_area_fraction",
)
SLICE_COLUMNS = (
    "slice", "order", "size", "n_errors", "error_rate", "ci_low", "ci_high",
    "n_pos", "n_fn", "fnr", "n_neg", "n_fp", "fpr", "lift", "p_value", "q_value",
    "finding", "score", "conditions",
)
MEMBER_SLICE_COLUMNS = ("member",) + SLICE_COLUMNS + (
    "ensemble_n_errors", "ensemble_error_rate", "ensemble_lift",
    "ensemble_p_value", "ensemble_fixes",
)


# --- Image features -----------------------------------------------------------

def image_features(images, *, masks=None):
    """Interpretable per-image quality and content measurements.

    Parameters
    ----------
    images : ndarray of shape (n_samples, H, W), (n_samples, H, W, 1) or (n_samples, H, W, 3)
        Intensities in [0, 1]. Colour images are averaged over channels (identical
        to channel 0 for grayscale replicated to RGB). ``H, W >= 8``.
    masks : bool ndarray of shape (n_samples, H, W), default=None
        Lung masks. When omitted, :func:`pneumoxai.lungs.lung_mask` computes them;
        if that module is unavailable the ``lung_area_fraction`` column is NaN and
        a warning is issued.

    Returns
    -------
    features : DataFrame of shape (n_samples, 12)
        With ``u8 = rint(255 * clip(gray, 0, 1))`` (the uint8 image OpenCV sees):

        - ``brightness``: mean intensity.
        - ``contrast_std``: standard deviation of intensities.
        - ``contrast_p5_p95``: 95th minus 5th percentile (``np.percentile``, linear).
        - ``dynamic_range``: max minus min.
        - ``sharpness``: variance of the Laplacian of ``u8``, identical to
          ``cv2.Laplacian(u8, cv2.CV_64F).var()`` (3x3 kernel, reflect-101 border).
        - ``noise_sigma``: Immerkaer's fast noise standard deviation [2]_,
          ``sqrt(pi/2) / (6 (W-2) (H-2)) * sum |I * N|`` with
          ``N = [[1,-2,1],[-2,4,-2],[1,-2,1]]`` over interior pixels, in [0, 1] units.
        - ``entropy``: Shannon entropy of the 256-bin histogram of ``u8``, in bits.
        - ``edge_density``: fraction of pixels marked by
          ``cv2.Canny(u8, *CANNY_THRESHOLDS)``.
        - ``border_fraction``: near-black rows and columns (mean below
          ``BLACK_LEVEL``) in unbroken runs from the four edges, divided by
          ``H + W``; measures collimation or padding borders.
        - ``corner_marker``: fraction of pixels above ``BRIGHT_LEVEL`` within the
          four ``round(H/8) x round(W/8)`` corner patches (burnt-in text, L/R markers).
        - ``lr_asymmetry``: ``|mean(left half) - mean(right half)| / mean`` (the
          middle column of an odd width is excluded; NaN for an all-black image).
        - ``lung_area_fraction``: ``masks.mean(axis=(1, 2))``.

    References
    ----------
    .. [2] J. Immerkaer, "Fast Noise Variance Estimation", CVIU 64(2), 1996.

    Examples
    --------
    >>> import numpy as np
    >>> from pneumoxai.slices import image_features
    >>> images = np.full((2, 16, 16), 0.5)
    >>> images[1, :, :8] = 0.25
    >>> masks = np.zeros((2, 16, 16), dtype=bool)
    >>> masks[:, 4:12, 2:14] = True
    >>> feats = image_features(images, masks=masks)
    >>> feats[["brightness", "lr_asymmetry", "lung_area_fraction"]].round(3)
       brightness  lr_asymmetry  lung_area_fraction
    0       0.500         0.000               0.375
    1       0.375         0.667               0.375
    """
    gray = check_grey_images(images, owner="image_features", min_side=MIN_IMAGE_SIDE)
    n = len(gray)
    if masks is None:
        lung_fraction = _lung_fraction_from_model(images)
    else:
        masks = np.asarray(masks)
        if masks.shape != gray.shape:
            raise DataError(f"masks must have shape {gray.shape} (n_samples, H, W); got {masks.shape}")
        lung_fraction = masks.astype(bool).mean(axis=(1, 2))

    blocks = [_features_block(gray[i:i + _CHUNK]) for i in range(0, n, _CHUNK)]
    feats = pd.DataFrame({k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]})
    feats["lung_area_fraction"] = lung_fraction
    return feats[list(FEATURE_COLUMNS)]


def streamed_image_features(paths, size, *, chunk_size=DEFAULT_CHUNK_SIZE, interpolation="auto"):
    """:func:`image_features` of image files decoded ``chunk_size`` at a time, never all held.

    Equal to ``image_features(load_images(paths, size, interpolation=interpolation))``,
    lung masks by :func:`pneumoxai.lungs.lung_mask` included, and with the same warnings:
    one about unreadable files (those have no row), one about lung-segmentation fallbacks.

    Parameters
    ----------
    paths : sequence of str or path-like
    size : int
        Side the images are decoded at.
    chunk_size : int, default=DEFAULT_CHUNK_SIZE
        Files decoded at once (:func:`pneumoxai.data.iter_images`).
    interpolation : str, default="auto"
        As in :func:`pneumoxai.data.load_images`.

    Returns
    -------
    features : DataFrame of shape (n_loaded, 12)
        The columns of :func:`image_features`, one row per readable file, in order.
    """
    from .data import iter_images
    from .lungs import lung_mask, warn_fallback

    check_param("streamed_image_features", "chunk_size", chunk_size, Interval("int", 1, None))
    blocks, n_fallback, n = [], 0, 0
    # One channel: image_features and lung_mask average the channels of grey images anyway.
    for images, _ in iter_images(paths, size, chunk_size=chunk_size, channels=1, interpolation=interpolation):
        if not len(images):
            continue
        with warnings.catch_warnings():  # one fallback warning for all chunks, below
            warnings.simplefilter("ignore", UserWarning)
            masks, fallback = lung_mask(images, return_fallback=True)
        n_fallback, n = n_fallback + int(fallback.sum()), n + len(images)
        blocks.append(image_features(images, masks=masks))
    warn_fallback(n_fallback, n)
    return pd.concat(blocks, ignore_index=True)


def _lung_fraction_from_model(images):
    from .lungs import lung_mask

    return np.asarray(lung_mask(images)).astype(bool).mean(axis=(1, 2))


def _laplacian(u8):
    """The 4-neighbour Laplacian of uint8 images (k, H, W), as ``cv2.Laplacian(img, cv2.CV_64F)``."""
    # numpy's "reflect" padding is OpenCV's BORDER_REFLECT_101 (the Laplacian default).
    p = np.pad(u8.astype(np.float64), ((0, 0), (1, 1), (1, 1)), mode="reflect")
    return p[:, :-2, 1:-1] + p[:, 2:, 1:-1] + p[:, 1:-1, :-2] + p[:, 1:-1, 2:] - 4.0 * p[:, 1:-1, 1:-1]


def _features_block(x):
    """Features of a block of images ``x`` (k, H, W) in [0, 1]; vectorised over k."""
    import cv2

    x = x.astype(np.float64)  # per block, so float32 stacks are never copied whole
    k, h, w = x.shape
    flat = x.reshape(k, -1)
    u8 = np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)
    p5, p95 = np.percentile(flat, [5, 95], axis=1)
    out = {
        "brightness": flat.mean(axis=1),
        "contrast_std": flat.std(axis=1),
        "contrast_p5_p95": p95 - p5,
        "dynamic_range": flat.max(axis=1) - flat.min(axis=1),
    }

    out["sharpness"] = _laplacian(u8).reshape(k, -1).var(axis=1)

    # Immerkaer's mask is separable: [1,-2,1] along columns, then along rows.
    d = x[:, :, :-2] - 2.0 * x[:, :, 1:-1] + x[:, :, 2:]
    d = d[:, :-2] - 2.0 * d[:, 1:-1] + d[:, 2:]
    out["noise_sigma"] = np.sqrt(np.pi / 2.0) * np.abs(d).sum(axis=(1, 2)) / (6.0 * (w - 2) * (h - 2))

    offsets = 256 * np.arange(k)[:, None]
    hist = np.bincount((u8.reshape(k, -1) + offsets).ravel(), minlength=256 * k).reshape(k, 256)
    prob = hist / (h * w)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["entropy"] = -np.where(prob > 0, prob * np.log2(prob), 0.0).sum(axis=1)

    out["edge_density"] = np.array(
        [np.count_nonzero(cv2.Canny(img, *CANNY_THRESHOLDS)) / (h * w) for img in u8]
    )

    black_rows = x.mean(axis=2) < BLACK_LEVEL  # (k, H)
    black_cols = x.mean(axis=1) < BLACK_LEVEL  # (k, W)
    n_rows = np.minimum(_edge_run(black_rows) + _edge_run(black_rows[:, ::-1]), h)
    n_cols = np.minimum(_edge_run(black_cols) + _edge_run(black_cols[:, ::-1]), w)
    out["border_fraction"] = (n_rows + n_cols) / (h + w)

    ph, pw = max(1, round(h * CORNER_FRACTION)), max(1, round(w * CORNER_FRACTION))
    corners = np.concatenate(
        [c.reshape(k, -1) for c in (x[:, :ph, :pw], x[:, :ph, -pw:], x[:, -ph:, :pw], x[:, -ph:, -pw:])],
        axis=1,
    )
    out["corner_marker"] = (corners > BRIGHT_LEVEL).mean(axis=1)

    half = w // 2
    left, right = x[:, :, :half].mean(axis=(1, 2)), x[:, :, w - half:].mean(axis=(1, 2))
    mean = out["brightness"]
    with np.errstate(divide="ignore", invalid="ignore"):
        out["lr_asymmetry"] = np.where(mean > 0, np.abs(left - right) / mean, np.nan)
    return out


def _edge_run(flags):
    """Length of the unbroken run of True at the start of each row of ``flags``."""
    return np.cumprod(flags, axis=1).sum(axis=1)


# --- Slice frame --------------------------------------------------------------

def slice_frame(
    meta_df,
    *,
    images=None,
    masks=None,
    member_probs=None,
    ensemble_prob=None,
    embeddings=None,
    zone_scores=None,
    n_clusters=6,
    seed=0,
):
    """Build the table of candidate slicing columns, one row per image.

    Parameters
    ----------
    meta_df : DataFrame of shape (n_samples, ...)
        The dataset table (columns ``path, split, label, label_name, patient_id,
        subtype``), rows in the same order as every array below.
    images : ndarray of shape (n_samples, H, W) or (n_samples, H, W, 3), default=None
        Intensities in [0, 1]; adds the :func:`image_features` columns.
    masks : bool ndarray of shape (n_samples, H, W), default=None
        Lung masks passed on to :func:`image_features`.
    member_probs : ndarray of shape (n_samples, n_members), default=None
        Per-member pneumonia probabilities; adds ``member_std`` (population
        standard deviation across members, i.e. disagreement).
    ensemble_prob : ndarray of shape (n_samples,), default=None
        Ensemble probability; defaults to the member mean when ``member_probs`` is
        given. Adds ``confidence_bin``: ``max(p, 1 - p)`` binned by ``CONFIDENCE_EDGES``
        into right-closed bins labelled ``"0.5-0.6"`` (0.5 included), ``"0.6-0.7"``, ...
    embeddings : ndarray of shape (n_samples, n_features), default=None
        Adds ``cluster``: k-means labels (``sklearn.cluster.KMeans``,
        ``random_state=seed``) as a categorical column.
    zone_scores : DataFrame or dict of str to ndarray of shape (n_samples,), default=None
        Attention summaries such as ``off_lung_attention``, added as given.
    n_clusters : int, default=6
        Number of k-means clusters.
    seed : int, default=0
        Random state of k-means.

    Returns
    -------
    frame : DataFrame of shape (n_samples, n_columns)
        ``subtype`` (categorical), ``patient_image_count`` (images of the same
        patient within ``meta_df``) and the optional columns above; index
        ``0..n_samples-1``.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from pneumoxai.slices import slice_frame
    >>> meta = pd.DataFrame({"patient_id": ["p1", "p1", "p2"],
    ...                      "subtype": ["virus", "virus", "normal"]})
    >>> frame = slice_frame(meta, member_probs=np.array([[0.9, 0.7], [0.6, 0.6], [0.2, 0.4]]))
    >>> frame[["subtype", "patient_image_count", "member_std", "confidence_bin"]]
      subtype  patient_image_count  member_std confidence_bin
    0   virus                    2         0.1        0.7-0.8
    1   virus                    2         0.0        0.5-0.6
    2  normal                    1         0.1        0.6-0.7
    """
    if not isinstance(meta_df, pd.DataFrame):
        raise DataError(f"meta_df must be a pandas DataFrame; got {type(meta_df).__name__}")
    missing = {"patient_id", "subtype"} - set(meta_df.columns)
    if missing:
        raise DataError(f"meta_df lacks required column(s): {sorted(missing)}")
    n = len(meta_df)
    if n == 0:
        raise DataError("meta_df is empty")
    meta = meta_df.reset_index(drop=True)
    frame = pd.DataFrame({"subtype": meta["subtype"].astype("category")})
    frame["patient_image_count"] = meta.groupby("patient_id", dropna=True)["patient_id"].transform("size")

    if images is not None:
        feats = image_features(images, masks=masks)
        _check_length(feats, n, "images")
        frame = pd.concat([frame, feats], axis=1)

    if member_probs is not None:
        member_probs = _matrix(member_probs, n, "member_probs", "n_members")
        frame["member_std"] = member_probs.std(axis=1)
        if ensemble_prob is None:
            ensemble_prob = member_probs.mean(axis=1)

    if ensemble_prob is not None:
        p = np.asarray(ensemble_prob, dtype=float).ravel()
        _check_length(p, n, "ensemble_prob")
        labels = [f"{a:g}-{b:g}" for a, b in zip(CONFIDENCE_EDGES[:-1], CONFIDENCE_EDGES[1:])]
        frame["confidence_bin"] = pd.cut(
            np.maximum(p, 1.0 - p), bins=CONFIDENCE_EDGES, labels=labels, include_lowest=True
        )

    if zone_scores is not None:
        zones = pd.DataFrame(dict(zone_scores)).reset_index(drop=True)
        _check_length(zones, n, "zone_scores")
        frame = pd.concat([frame, zones], axis=1)

    if embeddings is not None:
        from sklearn.cluster import KMeans

        emb = _matrix(embeddings, n, "embeddings", "n_features")
        if not 1 <= n_clusters <= n:
            raise param_error("slice_frame", "n_clusters", f"in [1, n_samples={n}]", n_clusters)
        km = KMeans(n_clusters=n_clusters, random_state=seed, n_init=10).fit(emb)
        frame["cluster"] = pd.Categorical(km.labels_)
    return frame


def _check_length(obj, n, name):
    if len(obj) != n:
        raise DataError(f"{name} has {len(obj)} rows but meta_df has {n}")


def _matrix(values, n, name, columns):
    """``values`` as a float array (n, n_columns) with one row per row of meta_df."""
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 2:
        raise DataError(f"{name} must have shape (n_samples, {columns}); got {arr.shape}")
    _check_length(arr, n, name)
    return arr


# --- Slice search -------------------------------------------------------------

@dataclass(frozen=True)
class Condition:
    """One predicate on one column: ``low < column <= high`` or ``column == level``.

    ``low``/``high`` of ``None`` mean unbounded; ``label`` is the human-readable form.
    """

    column: Any
    label: str
    low: float | None = None
    high: float | None = None
    level: Any = None

    def mask(self, frame):
        """Boolean array of shape (n_samples,): rows of ``frame`` that satisfy it.

        Missing values never satisfy a condition.
        """
        values = frame[self.column]
        if self.low is None and self.high is None:
            return (values == self.level).fillna(False).to_numpy(dtype=bool)
        v = values.to_numpy(dtype=float, na_value=np.nan)
        keep = np.isfinite(v)
        if self.low is not None:
            keep &= v > self.low
        if self.high is not None:
            keep &= v <= self.high
        return keep

    def __str__(self):
        return self.label


def slice_mask(frame, conditions):
    """Rows of ``frame`` in the slice defined by ``conditions`` (a ``conditions`` cell).

    Parameters
    ----------
    frame : DataFrame of shape (n_samples, n_columns)
    conditions : sequence of Condition

    Returns
    -------
    mask : bool ndarray of shape (n_samples,)
    """
    mask = np.ones(len(frame), dtype=bool)
    for cond in conditions:
        mask &= cond.mask(frame)
    return mask


#: Quantile bins per numeric column.
DEFAULT_N_BINS = 4
#: Each numeric column also gets its two tails beyond these quantiles as slices, so a
#: subgroup smaller than a bin can still be cut out by one threshold. In the planted-marker
#: audit (marked images: 11% of the test split), quartile bins alone gave no slice that was
#: at least 80% marked; the tail ``corner_marker > q(7/8)`` is 92% marked and holds all of
#: them (figures/shortcut_audit/). Finer bins would do it too, but fragment the
#: conjunctions of two numeric columns below ``min_size``.
TAIL_QUANTILE = 1 / 8


def slice_masks_from_labels(frame, labels, *, n_bins=DEFAULT_N_BINS):
    """Rows of each slice named by its label, rebuilt from the frame it was found in.

    ``tables/failure_slices.csv`` keeps the labels, not the conditions; with the slicing
    frame (``tables/slice_features.csv``) and the same ``n_bins``, the search's own
    conditions are rebuilt and each label is split into them (``" and "`` joins a
    conjunction). Labels are rounded, so they are matched to rebuilt conditions, never
    parsed into numbers. Every column's levels are matched too, since a categorical column
    read back from a CSV (the embedding clusters) has become numeric.

    Parameters
    ----------
    frame : DataFrame of shape (n_samples, n_columns)
        The slicing columns :func:`find_failure_slices` searched.
    labels : sequence of str
        The ``slice`` column of its result, or part of it.
    n_bins : int, default=DEFAULT_N_BINS
        As given to :func:`find_failure_slices`.

    Returns
    -------
    dict
        label -> bool ndarray of shape (n_samples,), or None for a label no rebuilt
        conditions spell (a frame other than the one searched).

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> frame = pd.DataFrame({"contrast": np.arange(8) / 8, "view": ["AP", "PA"] * 4})
    >>> masks = slice_masks_from_labels(frame, ["contrast <= 0.219 and view == AP", "age > 3"])
    >>> masks["contrast <= 0.219 and view == AP"].nonzero()[0], masks["age > 3"]
    (array([0]), None)
    """
    if not isinstance(frame, pd.DataFrame):
        raise DataError(f"slice_masks_from_labels: frame must be a pandas DataFrame; got {type(frame).__name__}")
    check_param("slice_masks_from_labels", "n_bins", n_bins, Interval("int", MIN_BINS, 1000))
    single = {}
    for column in frame.columns:
        values = frame[column]
        # A category read back from a CSV (cluster numbers) is numeric there: its levels are tried too.
        for c in _column_conditions(values, column, n_bins) + _column_conditions(values.astype("category"), column, 0):
            single.setdefault(c.label, c)

    def split(parts):
        if not parts:
            return []
        for k in range(1, len(parts) + 1):
            head = " and ".join(parts[:k])
            rest = split(parts[k:]) if head in single else None
            if rest is not None:
                return [single[head], *rest]
        return None

    out = {}
    for label in labels:
        conditions = split(str(label).split(" and "))
        out[label] = None if conditions is None else slice_mask(frame, conditions)
    return out


def find_failure_slices(
    frame, y_true, y_prob, *, threshold=0.5, min_size=20, max_order=2, alpha=0.05, n_bins=DEFAULT_N_BINS
):
    """Find slices of the data where the model errs significantly more often.

    Candidate slices are, for every column of ``frame``: quantile bins of numeric
    columns (``n_bins`` quantiles of the finite values; tied edges merge bins) plus
    their two tails beyond the 1/8 and 7/8 quantiles, and
    the levels of categorical, string and boolean columns. With ``max_order=2``,
    conjunctions of two slices from different columns are added, following the
    lattice search of SliceLine [1]_: only slices with at least ``min_size`` rows
    are extended, conjunctions with fewer than ``min_size`` rows are pruned, and a
    conjunction with exactly the rows of one of its parents is dropped as redundant.
    Constant (or all-missing) columns are skipped with a warning. A missing or
    infinite value is in no slice of its column.

    Every remaining slice is tested against the rest of the data with a one-sided
    Fisher exact test (alternative: the slice's error rate is greater), computed as
    the hypergeometric tail, which equals ``scipy.stats.fisher_exact(...,
    alternative="greater")``. Benjamini-Hochberg [3]_ (``statsmodels``
    ``multipletests(method="fdr_bh")``) adjusts p-values across all tested slices;
    ``finding`` is ``q_value < alpha``.

    Rows are sorted by ``finding`` (findings first), then by
    ``score = (lift - 1) * sqrt(size)``, which is proportional to the z-statistic of
    the slice's excess error rate: a slice ranks high when its error excess is both
    large and supported by many images, so a planted slice outranks its smaller
    sub-slices. Ties go to the larger slice, then alphabetically. Sub-slices of a
    real failure slice are often findings too (see Examples); read the list top-down
    and treat a conjunction as new only when its lift clearly exceeds its parents'.

    Parameters
    ----------
    frame : DataFrame of shape (n_samples, n_columns)
        Slicing columns, e.g. from :func:`slice_frame`. Row ``i`` describes sample ``i``.
    y_true : array-like of shape (n_samples,)
        True labels, 0 (normal) or 1 (pneumonia).
    y_prob : array-like of shape (n_samples,)
        Predicted probability of pneumonia, in [0, 1], without NaN.
    threshold : float, default=0.5
        A sample is called positive when ``y_prob >= threshold``.
    min_size : int, default=20
        Smallest slice reported and extended.
    max_order : {1, 2}, default=2
        Largest number of conditions combined in a slice.
    alpha : float, default=0.05
        False discovery rate for ``finding``; Wilson intervals [4]_ have level ``1 - alpha``.
    n_bins : int, default=DEFAULT_N_BINS
        Quantile bins per numeric column (at least 2). Each numeric column also gets
        its lower and upper tails beyond the :data:`TAIL_QUANTILE` quantiles as slices
        (when they are narrower than a bin).

    Returns
    -------
    slices : DataFrame
        One row per tested slice with columns ``SLICE_COLUMNS``: ``slice`` (label
        such as ``"0.11 < contrast <= 0.15 and subtype == virus"``), ``order``,
        ``size``, ``n_errors``, ``error_rate`` with Wilson bounds ``ci_low``,
        ``ci_high``; ``n_pos``, ``n_fn``, ``fnr`` (false negatives among positives)
        and ``n_neg``, ``n_fp``, ``fpr``; ``lift = error_rate / overall error
        rate``; ``p_value``, ``q_value``, ``finding``, ``score``; ``conditions``
        (tuple of :class:`Condition`, for :func:`slice_mask`). ``slices.attrs``
        holds ``overall_error_rate``, ``n_samples`` and ``n_tested``. With fewer
        than ``2 * min_size`` rows a warning is issued and the frame is empty.

    References
    ----------
    .. [1] Sagadeeva and Boehm, "SliceLine", SIGMOD 2021.
    .. [3] Benjamini and Hochberg, J. R. Stat. Soc. B, 1995.
    .. [4] Wilson, J. Am. Stat. Assoc., 1927.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from pneumoxai.slices import find_failure_slices
    >>> rng = np.random.default_rng(0)
    >>> frame = pd.DataFrame({"contrast": rng.uniform(size=200),
    ...                       "view": rng.choice(["AP", "PA"], size=200)})
    >>> y_true = rng.integers(0, 2, size=200)
    >>> wrong = (frame["contrast"].to_numpy() < 0.25) & (rng.uniform(size=200) < 0.6)
    >>> y_prob = np.where(wrong, 1 - y_true, y_true) * 0.8 + 0.1
    >>> found = find_failure_slices(frame, y_true, y_prob)
    >>> found.loc[found.finding, ["slice", "size", "n_errors"]]
                                  slice  size  n_errors
    0                 contrast <= 0.288    50        27
    1                 contrast <= 0.127    25        16
    2  contrast <= 0.288 and view == AP    30        16
    3  contrast <= 0.288 and view == PA    20        11
    """
    y_true, y_prob = _check_inputs(frame, y_true, y_prob, threshold, min_size, max_order, alpha, n_bins,
                                   owner="find_failure_slices")
    errors = (y_prob >= threshold).astype(int) != y_true
    n = len(frame)
    if n < 2 * min_size:
        warnings.warn(
            f"only {n} samples, fewer than 2 * min_size = {2 * min_size}: no slice can be "
            "compared with a rest of at least min_size; returning no slices",
            stacklevel=2,
        )
        return _empty(SLICE_COLUMNS, errors)
    conditions, masks = _candidates(frame, min_size, max_order, n_bins)
    return _evaluate(conditions, masks, y_true, errors, alpha)


def member_failure_slices(
    frame, y_true, member_probs, ensemble_prob=None, names=None, *,
    threshold=0.5, min_size=20, max_order=2, alpha=0.05, n_bins=DEFAULT_N_BINS,
):
    """Which ensemble member fails where, and does the ensemble repair it?

    Runs the search of :func:`find_failure_slices` for each member (candidate
    slices are built once and shared) and keeps each member's findings. For every
    such slice the ensemble's error count and rate in the slice are added, with its
    lift over the ensemble's own overall error rate and an uncorrected one-sided
    Fisher p-value. ``ensemble_fixes`` is True when the ensemble's error rate in
    the slice is below the member's and not significantly above the ensemble's
    overall rate (``ensemble_p_value >= alpha``); being uncorrected, this is the
    conservative direction for claiming a repair.

    Parameters
    ----------
    frame : DataFrame of shape (n_samples, n_columns)
    y_true : array-like of shape (n_samples,)
        0/1 labels.
    member_probs : array-like of shape (n_samples, n_members)
        Per-member probabilities of pneumonia.
    ensemble_prob : array-like of shape (n_samples,), default=None
        Ensemble probability; default is the mean of ``member_probs``.
    names : sequence of str of length n_members, default=None
        Member names; default ``member_0, member_1, ...``.
    threshold, min_size, max_order, alpha, n_bins
        As in :func:`find_failure_slices`.

    Returns
    -------
    slices : DataFrame
        Columns ``MEMBER_SLICE_COLUMNS``: ``member`` then the columns of
        :func:`find_failure_slices` (findings only), then ``ensemble_n_errors``,
        ``ensemble_error_rate``, ``ensemble_lift``, ``ensemble_p_value``,
        ``ensemble_fixes``. Sorted by member (in ``names`` order), then as in
        :func:`find_failure_slices`.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from pneumoxai.slices import member_failure_slices
    >>> rng = np.random.default_rng(0)
    >>> frame = pd.DataFrame({"contrast": rng.uniform(size=300)})
    >>> y = rng.integers(0, 2, size=300)
    >>> low = frame["contrast"].to_numpy() < 0.25
    >>> member_a = np.where(low, 1 - y, y) * 0.8 + 0.1   # wrong on all low-contrast images
    >>> member_b = y * 0.8 + 0.1                         # always right
    >>> member_c = member_b.copy()
    >>> probs = np.column_stack([member_a, member_b, member_c])
    >>> out = member_failure_slices(frame, y, probs, names=["a", "b", "c"], max_order=1)
    >>> out[["member", "slice", "error_rate", "ensemble_error_rate", "ensemble_fixes"]]
      member              slice  error_rate  ensemble_error_rate  ensemble_fixes
    0      a  contrast <= 0.299        0.88                  0.0            True
    1      a  contrast <= 0.125        1.00                  0.0            True
    """
    probs = np.asarray(member_probs, dtype=float)
    if probs.ndim != 2 or probs.shape[1] == 0:
        raise DataError(f"member_probs must have shape (n_samples, n_members); got {probs.shape}")
    if probs.shape[0] != len(frame):
        raise DataError(f"member_probs has {probs.shape[0]} rows but frame has {len(frame)}")
    if probs.size and (np.isnan(probs).any() or probs.min() < 0.0 or probs.max() > 1.0):
        raise DataError("member_probs must be probabilities in [0, 1] without NaN")
    if ensemble_prob is None:
        ensemble_prob = probs.mean(axis=1)
    names = [f"member_{j}" for j in range(probs.shape[1])] if names is None else list(names)
    if len(names) != probs.shape[1]:
        raise DataError(f"names has {len(names)} entries but member_probs has {probs.shape[1]} columns")
    y_true, ens = _check_inputs(frame, y_true, ensemble_prob, threshold, min_size, max_order, alpha, n_bins,
                                owner="member_failure_slices")
    n = len(frame)
    ens_errors = (ens >= threshold).astype(int) != y_true
    if n < 2 * min_size:
        warnings.warn(
            f"only {n} samples, fewer than 2 * min_size = {2 * min_size}; returning no slices",
            stacklevel=2,
        )
        return _empty(MEMBER_SLICE_COLUMNS, ens_errors)
    conditions, masks = _candidates(frame, min_size, max_order, n_bins)

    parts = []
    for j, name in enumerate(names):
        errors = (probs[:, j] >= threshold).astype(int) != y_true
        found = _evaluate(conditions, masks, y_true, errors, alpha)
        found = found[found["finding"]].copy()
        if found.empty:
            continue
        rows = np.stack([slice_mask(frame, c) for c in found["conditions"]])
        size = rows.sum(axis=1)
        ens_err = rows.astype(float) @ ens_errors.astype(float)
        overall = ens_errors.mean()
        found.insert(0, "member", name)
        found["ensemble_n_errors"] = ens_err.astype(int)
        found["ensemble_error_rate"] = ens_err / size
        with np.errstate(divide="ignore", invalid="ignore"):
            found["ensemble_lift"] = np.where(overall > 0, found["ensemble_error_rate"] / overall, np.nan)
        found["ensemble_p_value"] = _fisher_greater(ens_err, size, ens_errors.sum(), n)
        found["ensemble_fixes"] = (found["ensemble_p_value"] >= alpha) & (
            found["ensemble_error_rate"] < found["error_rate"]
        )
        parts.append(found)
    if not parts:
        return _empty(MEMBER_SLICE_COLUMNS, ens_errors)
    out = pd.concat(parts, ignore_index=True)[list(MEMBER_SLICE_COLUMNS)]
    out.attrs = {"overall_error_rate": float(ens_errors.mean()), "n_samples": n}
    return out


def _check_inputs(frame, y_true, y_prob, threshold, min_size, max_order, alpha, n_bins, *, owner):
    if not isinstance(frame, pd.DataFrame):
        raise DataError(f"frame must be a pandas DataFrame; got {type(frame).__name__}")
    if len(frame) == 0 or frame.shape[1] == 0:
        raise DataError(f"frame is empty (shape {frame.shape}); nothing to slice")
    if frame.columns.duplicated().any():
        dup = sorted({str(c) for c in frame.columns[frame.columns.duplicated()]})
        raise DataError(f"frame has duplicated column names: {dup}")
    for col in frame.columns[frame.dtypes == object]:
        # Levels are compared and counted, so a cell must be hashable (not a list, dict or array).
        bad = next((v for v in frame[col] if not isinstance(v, collections.abc.Hashable)), None)
        if bad is not None:
            raise DataError(f"{owner}: column {str(col)!r} of frame holds {type(bad).__name__} values (e.g. "
                            f"{short_repr(bad, 60)}); a slicing column holds numbers, strings, categories or "
                            "booleans.")
    check_param(owner, "min_size", min_size, Interval("int", 1, None))
    check_param(owner, "max_order", max_order, Options(MAX_ORDERS))
    check_param(owner, "n_bins", n_bins, Interval("int", MIN_BINS, 1000))
    check_param(owner, "alpha", alpha, OPEN_UNIT_INTERVAL)
    check_param(owner, "threshold", threshold, UNIT_INTERVAL)
    y_prob = check_probabilities(np.ravel(y_prob), owner=owner, name="y_prob")
    if len(y_prob) != len(frame):
        raise DataError(f"{owner}: length mismatch: frame has {len(frame)} rows, y_prob {len(y_prob)}.")
    return check_labels(np.ravel(y_true), len(frame), owner=owner, both_classes=False), y_prob


def _candidates(frame, min_size, max_order, n_bins):
    """Order-1 slices of every column, then SliceLine-pruned order-2 conjunctions."""
    conds, masks, cols, constant = [], [], [], []
    for j, col in enumerate(frame.columns):
        col_conds = _column_conditions(frame[col], col, n_bins)
        if not col_conds:
            constant.append(str(col))
            continue
        for c in col_conds:
            conds.append((c,))
            masks.append(c.mask(frame))
            cols.append(j)
    if constant:
        warnings.warn(f"skipping constant or all-missing column(s): {constant}", stacklevel=3)
    if not conds:
        return [], np.zeros((0, len(frame)), dtype=bool)
    masks = np.array(masks)
    size = masks.sum(axis=1)
    keep = (size >= min_size) & (size < len(frame))
    conds = [c for c, k in zip(conds, keep) if k]
    masks, size, cols = masks[keep], size[keep], np.asarray(cols)[keep]
    if max_order == 1 or len(conds) < 2:
        return conds, masks

    m = masks.astype(np.float64)
    pair_size = m @ m.T
    i, j = np.triu_indices(len(conds), k=1)
    # Different columns only (same-column bins/levels are disjoint); enough rows;
    # and not identical to a parent (that would duplicate an order-1 slice).
    ok = (cols[i] != cols[j]) & (pair_size[i, j] >= min_size)
    ok &= (pair_size[i, j] < size[i]) & (pair_size[i, j] < size[j])
    i, j = i[ok], j[ok]
    conds = conds + [conds[a] + conds[b] for a, b in zip(i, j)]
    masks = np.concatenate([masks, masks[i] & masks[j]])
    return conds, masks


def _column_conditions(values, col, n_bins):
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        v = values.to_numpy(dtype=float, na_value=np.nan)
        v = v[np.isfinite(v)]
        if v.size == 0 or v.min() == v.max():
            return []
        edges = np.unique(np.quantile(v, np.arange(1, n_bins) / n_bins))
        edges = edges[edges < v.max()]  # "col > max" would be empty
        if not len(edges):
            # Most rows sit at the maximum: split the rest off below it.
            edges = np.array([v[v < v.max()].max()])
        labels = _format_edges(edges)
        name = str(col)
        bounds = [None, *edges, None]
        out = []
        for k in range(len(bounds) - 1):
            lo, hi = bounds[k], bounds[k + 1]
            if lo is None:
                label = f"{name} <= {labels[k]}"
            elif hi is None:
                label = f"{name} > {labels[k - 1]}"
            else:
                label = f"{labels[k - 1]} < {name} <= {labels[k]}"
            out.append(Condition(col, label, low=lo, high=hi))
        return out + _tail_conditions(v, col, edges)
    levels = pd.unique(values.dropna())
    if len(levels) < 2:
        return []
    if isinstance(values.dtype, pd.CategoricalDtype):
        levels = [lv for lv in values.cat.categories if lv in set(levels)]
    return [Condition(col, f"{col} == {lv}", level=lv) for lv in levels]


def _tail_conditions(v, col, edges):
    """``col <= q(TAIL_QUANTILE)`` and ``col > q(1 - TAIL_QUANTILE)`` where they are narrower than
    the outer bins (their cut points lie strictly inside them) and not empty."""
    low, high = np.quantile(v, [TAIL_QUANTILE, 1 - TAIL_QUANTILE])
    first_edge, last_edge = (edges[0], edges[-1]) if len(edges) else (v.max(), v.min())
    out = []
    if v.min() <= low < first_edge:
        out.append(Condition(col, f"{col} <= {_format_edges([low, *edges])[0]}", high=low))
    if last_edge < high < v.max():
        out.append(Condition(col, f"{col} > {_format_edges([*edges, high])[-1]}", low=high))
    return out


def _format_edges(edges):
    """Shortest significant-digit labels (3 at least) that keep all edges distinct."""
    for digits in range(3, 18):
        labels = [_fmt(e, digits) for e in edges]
        if len(set(labels)) == len(labels):
            return labels
    return [repr(float(e)) for e in edges]


def _fmt(value, digits):
    if float(value).is_integer() and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.{digits}g}"


def _fisher_greater(k, size, total_errors, n):
    """One-sided Fisher exact p-value that a slice holds more errors than chance.

    Equals ``scipy.stats.fisher_exact([[k, size-k], [E-k, n-size-E+k]],
    alternative="greater").pvalue``: the hypergeometric upper tail P(X >= k).
    """
    from scipy.stats import hypergeom

    return hypergeom.sf(np.asarray(k) - 1, n, total_errors, size)


def _evaluate(conditions, masks, y_true, errors, alpha):
    from statsmodels.stats.multitest import multipletests
    from statsmodels.stats.proportion import proportion_confint

    n = len(y_true)
    if not conditions:
        return _empty(SLICE_COLUMNS, errors)
    pos = y_true == 1
    counts = masks.astype(np.float64) @ np.column_stack(
        [np.ones(n), errors, pos, errors & pos, ~pos, errors & ~pos]
    ).astype(np.float64)
    size, n_err, n_pos, n_fn, n_neg, n_fp = np.rint(counts).astype(int).T
    overall = errors.mean()
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = n_err / size
        lift = rate / overall if overall > 0 else np.full(len(size), np.nan)
        fnr = np.where(n_pos > 0, n_fn / n_pos, np.nan)
        fpr = np.where(n_neg > 0, n_fp / n_neg, np.nan)
    p = _fisher_greater(n_err, size, int(errors.sum()), n)
    q = multipletests(p, alpha=alpha, method="fdr_bh")[1]
    ci_low, ci_high = proportion_confint(n_err, size, alpha=alpha, method="wilson")
    # Wilson bounds contain the estimate; clip rounding residue (e.g. 7e-18 at 0 errors).
    ci_low, ci_high = np.minimum(ci_low, rate), np.maximum(ci_high, rate)
    out = pd.DataFrame({
        "slice": [" and ".join(c.label for c in cs) for cs in conditions],
        "order": [len(cs) for cs in conditions],
        "size": size, "n_errors": n_err, "error_rate": rate,
        "ci_low": ci_low, "ci_high": ci_high,
        "n_pos": n_pos, "n_fn": n_fn, "fnr": fnr,
        "n_neg": n_neg, "n_fp": n_fp, "fpr": fpr,
        "lift": lift, "p_value": p, "q_value": q, "finding": q < alpha,
        "score": (lift - 1.0) * np.sqrt(size),
        "conditions": conditions,
    })
    out = out.sort_values(
        ["finding", "score", "size", "slice"], ascending=[False, False, False, True],
        na_position="last", kind="mergesort",
    ).reset_index(drop=True)
    out.attrs = {"overall_error_rate": float(overall), "n_samples": n, "n_tested": len(out)}
    return out


def _empty(columns, errors):
    out = pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    out.attrs = {"overall_error_rate": float(np.mean(errors)), "n_samples": len(errors), "n_tested": 0}
    return out
