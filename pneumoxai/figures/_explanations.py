"""Figures for explanations (:mod:`pneumoxai.explain`): where do errors look?

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot, so
report loops do not accumulate open figures; given ``path`` it also saves it, as
:func:`pneumoxai.figures.save_figure` describes. Outcomes (false negative, false
positive, correct) come from :func:`pneumoxai.outcomes.outcome_groups`. No TensorFlow is
imported here: the functions take maps and tables already computed.
"""

import numpy as np

from .._io import Rows, iter_rows, mean_rows
from ..errors import DataError
from ..validation import BOOLEAN, SEED, UNIT_INTERVAL, check_grey_images, check_param
from ..outcomes import OUTCOMES, outcome_groups
from ._style import (
    DIVERGING_CMAP, ERROR_COLORS, OUTCOME_SHORT, SEQUENTIAL_CMAP, finish_figure, new_figure, style,
)

__all__ = ["plot_explanation_gallery", "plot_mean_maps", "plot_zone_attention"]

_OVERLAY_ALPHA = 0.45


def _indices_by_outcome(owner, y_true, y_prob, threshold):
    """:data:`~pneumoxai.outcomes.OUTCOMES` name -> int ndarray of the samples with that outcome."""
    outcome = outcome_groups(y_true, y_prob, threshold=check_param(owner, "threshold", threshold, UNIT_INTERVAL))
    return {name: np.flatnonzero(outcome == name) for name in OUTCOMES}


def _check_map(name, m, shape):
    m = np.asarray(m, dtype=float)
    if m.shape != shape:
        raise DataError(f"map {name!r} must have shape {shape}; got {m.shape}")
    return m


def _show_map(ax, image, m, signed):
    """Grey image with a map overlay; signed maps use a symmetric diverging scale."""
    ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0)
    if signed:
        limit = float(np.abs(m).max()) or 1.0
        ax.imshow(m, cmap=DIVERGING_CMAP, vmin=-limit, vmax=limit, alpha=_OVERLAY_ALPHA)
    else:
        ax.imshow(m, cmap=SEQUENTIAL_CMAP, vmin=0.0, vmax=max(1.0, float(m.max())), alpha=_OVERLAY_ALPHA)


def _bare(ax):
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def plot_explanation_gallery(images, maps, y_true, y_prob, *, threshold=0.5, n_per_group=2, seed=0,
                             path=None, formats=("png", "pdf")):
    """Overlay gallery: rows are FNs, FPs and correct calls; columns the image and each map.

    False negatives are the most confident misses (lowest probability first), false
    positives the most confident false alarms; correct calls are a seeded random sample.

    Parameters
    ----------
    images : array-like of shape (n_samples, H, W) or (n_samples, H, W, 3)
        Intensities in [0, 1].
    maps : dict of str -> array-like of shape (n_samples, H, W)
        Column title -> maps, e.g. ``{"Grad-CAM": ..., "Grad-CAM++": ..., "SHAP": ...}``.
        Maps with negative values (SHAP) are drawn on a symmetric diverging scale,
        red toward PNEUMONIA.
    y_true : array-like of shape (n_samples,)
        0/1 labels, 1 = PNEUMONIA.
    y_prob : array-like of shape (n_samples,)
        Predicted probability of PNEUMONIA.
    threshold : float, default=0.5
        Decision threshold for ``y_prob``.
    n_per_group : int, default=2
        Rows per outcome group (fewer when a group is smaller).
    seed : int, default=0
        Seeds the sample of correct calls.
    path : str or path-like, default=None
        Where to save the figure: a file name such as ``"gallery.png"`` (that one format)
        or a stem such as ``"gallery"`` (each of ``formats``); see
        :func:`pneumoxai.figures.save_figure`. Nothing is saved when None.
    formats : tuple of str, default=("png", "pdf")
        Formats written when ``path`` is a stem.

    Returns
    -------
    matplotlib.figure.Figure
        ``rows x (1 + len(maps))`` axes; each row's image title gives the outcome,
        the label and the probability.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y, p = np.array([1, 1, 0, 0]), np.array([0.2, 0.9, 0.7, 0.1])
    >>> fig = plot_explanation_gallery(rng.random((4, 8, 8)), {"Grad-CAM": rng.random((4, 8, 8))}, y, p)
    >>> len(fig.axes), fig.axes[0].get_title()
    (8, 'FN  label 1  p=0.20')
    """
    check_param("plot_explanation_gallery", "seed", seed, SEED)
    groups = _indices_by_outcome("plot_explanation_gallery", y_true, y_prob, threshold)
    p = np.asarray(y_prob, dtype=float)
    gray = check_grey_images(images, owner="plot_explanation_gallery", n_samples=len(p))
    if not maps:
        raise DataError("maps is empty: give at least one name -> (n, H, W) array")
    maps = {name: _check_map(name, m, gray.shape) for name, m in maps.items()}
    signed = {name: bool((m < 0).any()) for name, m in maps.items()}
    rng = np.random.default_rng(seed)
    chosen = {
        "false_negative": groups["false_negative"][np.argsort(p[groups["false_negative"]], kind="stable")],
        "false_positive": groups["false_positive"][np.argsort(-p[groups["false_positive"]], kind="stable")],
        "correct": rng.permutation(groups["correct"]),
    }
    rows = [(g, i) for g in OUTCOMES for i in chosen[g][:n_per_group]]
    if not rows:
        raise DataError("no images to show")
    y = np.asarray(y_true)
    with style():
        fig = new_figure(figsize=(1.9 * (1 + len(maps)), 2.0 * len(rows)))
        axes = fig.subplots(len(rows), 1 + len(maps), squeeze=False)
        for r, (group, i) in enumerate(rows):
            _bare(axes[r, 0])
            axes[r, 0].imshow(gray[i], cmap="gray", vmin=0.0, vmax=1.0)
            axes[r, 0].set_title(f"{OUTCOME_SHORT[group]}  label {y[i]}  p={p[i]:.2f}", fontsize=8,
                                 color=ERROR_COLORS[group])
            for c, (name, m) in enumerate(maps.items(), start=1):
                _bare(axes[r, c])
                _show_map(axes[r, c], gray[i], m[i], signed[name])
                if r == 0:
                    axes[r, c].set_title(name + (" (signed)" if signed[name] else ""), fontsize=9)
        fig.suptitle("Explanations of errors and correct calls")
        return finish_figure(fig, path, formats, "plot_explanation_gallery")


def plot_mean_maps(maps, y_true, y_prob, *, images=None, group_means=None, signed=None, threshold=0.5, path=None,
                   formats=("png", "pdf")):
    """Mean map of each outcome group (FN, FP, correct), optionally over the mean image.

    Parameters
    ----------
    maps : array-like of shape (n_samples, H, W)
        One explanation map per image (or maps kept on disk, :class:`pneumoxai._io.Rows`,
        read a block of rows at a time).
    y_true : array-like of shape (n_samples,)
        0/1 labels, 1 = PNEUMONIA.
    y_prob : array-like of shape (n_samples,)
        Predicted probability of PNEUMONIA.
    images : array-like of shape (n_samples, H, W) or (n_samples, H, W, 3), default=None
        When given, each group's mean image is drawn underneath.
    group_means : dict of str to (ndarray of shape (H, W), ndarray of shape (H, W)), default=None
        ``{outcome: (mean image, mean map)}`` of each group with images, already
        averaged (as a caller that reads the images in chunks sums them); drawn instead
        of the means of ``images`` and ``maps``.
    signed : bool, default=None
        Whether the maps are signed attributions (drawn on a symmetric diverging scale)
        or relevance in [0, 1]; None reads it from the values (signed if any is
        negative), a pass over every map, which a caller that knows the method skips.
    threshold : float, default=0.5
        Decision threshold for ``y_prob``.
    path : str or path-like, default=None
        Where to save the figure; see :func:`plot_explanation_gallery`.
    formats : tuple of str, default=("png", "pdf")
        Formats written when ``path`` is a stem.

    Returns
    -------
    matplotlib.figure.Figure
        One axes per group, titled with its size; an empty group is left blank.

    Examples
    --------
    >>> import numpy as np
    >>> maps = np.random.default_rng(0).random((4, 8, 8))
    >>> fig = plot_mean_maps(maps, [1, 1, 0, 0], [0.2, 0.9, 0.7, 0.1])
    >>> [ax.get_title() for ax in fig.axes]
    ['false negative (n=1)', 'false positive (n=1)', 'correct (n=2)']
    """
    groups = _indices_by_outcome("plot_mean_maps", y_true, y_prob, threshold)
    n = len(np.asarray(y_prob))
    # No float64 copy of every map: only each group's mean is drawn; maps on disk are read a block at a time.
    m = maps if isinstance(maps, Rows) else np.asarray(maps)
    if m.ndim != 3 or len(m) != n or not np.issubdtype(m.dtype, np.number):
        raise DataError(f"maps must have shape (n={n}, H, W); got {m.shape}")
    gray = None if images is None else check_grey_images(images, owner="plot_mean_maps", n_samples=n)
    if check_param("plot_mean_maps", "signed", signed, (None, BOOLEAN)) is None:
        signed = any(bool(part.min() < 0) for part in iter_rows(m))
    with style():
        fig = new_figure(figsize=(3.0 * len(OUTCOMES), 3.2))
        for ax, group in zip(fig.subplots(1, len(OUTCOMES)), OUTCOMES):
            _bare(ax)
            idx = groups[group]
            ax.set_title(f"{group.replace('_', ' ')} (n={len(idx)})", color=ERROR_COLORS[group])
            if len(idx) == 0:
                ax.axis("off")
                continue
            if group_means is not None:
                background, mean_map = group_means[group]
            else:
                background = gray[idx].mean(axis=0) if gray is not None else np.zeros(m.shape[1:])
                mean_map = mean_rows(m, idx)
            _show_map(ax, background, mean_map, signed)
        fig.suptitle("Mean explanation map per outcome")
        return finish_figure(fig, path, formats, "plot_mean_maps")


def plot_zone_attention(table, y_true, y_prob, *, threshold=0.5, path=None, formats=("png", "pdf")):
    """Grouped bars: mean share of attention per lung zone (and off-lung), per outcome.

    Parameters
    ----------
    table : pandas.DataFrame of shape (n_samples, n_zones)
        Output of :func:`pneumoxai.explain.zone_attention` (rows aligned with ``y_true``);
        rows with NaN shares (maps without positive mass) are left out.
    y_true : array-like of shape (n_samples,)
        0/1 labels, 1 = PNEUMONIA.
    y_prob : array-like of shape (n_samples,)
        Predicted probability of PNEUMONIA.
    threshold : float, default=0.5
        Decision threshold for ``y_prob``.
    path : str or path-like, default=None
        Where to save the figure; see :func:`plot_explanation_gallery`.
    formats : tuple of str, default=("png", "pdf")
        Formats written when ``path`` is a stem.

    Returns
    -------
    matplotlib.figure.Figure
        One bar per (zone, non-empty group), with 95% normal-approximation error bars.

    Examples
    --------
    >>> import pandas as pd
    >>> table = pd.DataFrame({"lungs": [0.2, 0.9, 0.8, 0.6], "off_lung": [0.8, 0.1, 0.2, 0.4]})
    >>> fig = plot_zone_attention(table, [1, 1, 0, 0], [0.2, 0.9, 0.7, 0.1])
    >>> len(fig.axes[0].patches)
    6
    """
    groups = _indices_by_outcome("plot_zone_attention", y_true, y_prob, threshold)
    if len(table) != len(np.asarray(y_prob)):
        raise DataError(f"table has {len(table)} rows but y_prob has {len(np.asarray(y_prob))}")
    values = table.to_numpy(dtype=float)
    columns = [str(c).replace("_", " ") for c in table.columns]
    present = [g for g in OUTCOMES if np.isfinite(values[groups[g]]).all(axis=1).any()]
    if not present:
        raise DataError("no finite rows in the zone-attention table")
    width = 0.8 / len(present)
    x = np.arange(len(columns))
    with style():
        fig = new_figure(figsize=(max(6.0, 1.0 * len(columns) + 2), 3.6))
        ax = fig.subplots()
        for k, group in enumerate(present):
            rows = values[groups[group]]
            rows = rows[np.isfinite(rows).all(axis=1)]
            mean = rows.mean(axis=0)
            half = 1.96 * rows.std(axis=0, ddof=1) / np.sqrt(len(rows)) if len(rows) > 1 else None
            ax.bar(x + (k - (len(present) - 1) / 2) * width, mean, width, yerr=half, capsize=2,
                   color=ERROR_COLORS[group], label=f"{group.replace('_', ' ')} (n={len(rows)})")
        ax.set_xticks(x, columns, rotation=30, ha="right")
        ax.set_ylabel("share of positive attention")
        ax.set_ylim(0, 1)
        ax.legend()
        ax.set_title("Where the maps put their mass, by outcome")
        return finish_figure(fig, path, formats, "plot_zone_attention")
