"""Figures for explanations (:mod:`pneumoxai.explain`): where do errors look?

Every function returns a :class:`matplotlib.figure.Figure` (built without pyplot, so
report loops do not accumulate open figures) and, given ``path``, saves it as
``path.png`` and ``path.pdf`` through :func:`pneumoxai._style.save_figure`. No
TensorFlow is imported here: the functions take maps and tables already computed.
"""

from pathlib import Path

import numpy as np

from ._style import DIVERGING_CMAP, ERROR_COLORS, SEQUENTIAL_CMAP, save_figure, style
from .errors import DataError

__all__ = [
    "ERROR_GROUPS", "error_groups", "plot_explanation_gallery", "plot_mean_maps", "plot_zone_attention",
]

#: Outcome groups, in the order rows and bars are drawn.
ERROR_GROUPS = ("false_negative", "false_positive", "correct")
_SHORT = {"false_negative": "FN", "false_positive": "FP", "correct": "correct"}
_OVERLAY_ALPHA = 0.45


def _finish(fig, path):
    if path is not None:
        path = Path(path)
        if path.suffix.lower() in (".png", ".pdf"):
            path = path.with_suffix("")
        save_figure(fig, path)
    return fig


def _new_figure(figsize):
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def error_groups(y_true, y_prob, *, threshold=0.5):
    """Indices of false negatives, false positives and correct calls.

    Parameters
    ----------
    y_true : array_like of {0, 1}, shape (n,)
        1 = PNEUMONIA.
    y_prob : array_like of float, shape (n,)
        P(PNEUMONIA).
    threshold : float, default 0.5

    Returns
    -------
    dict
        :data:`ERROR_GROUPS` name -> int ndarray of indices.
    """
    y = np.asarray(y_true)
    p = np.asarray(y_prob, dtype=float)
    if y.ndim != 1 or p.shape != y.shape or not np.isin(y, (0, 1)).all() or not np.isfinite(p).all():
        raise DataError(
            f"y_true must be 0/1 and y_prob finite, both of shape (n,); got {y.shape} and {p.shape}"
        )
    called = p >= threshold
    return {
        "false_negative": np.flatnonzero((y == 1) & ~called),
        "false_positive": np.flatnonzero((y == 0) & called),
        "correct": np.flatnonzero((y == 1) == called),
    }


def _gray(images, n):
    images = np.asarray(images, dtype=float)
    if images.ndim == 4:
        images = images.mean(axis=-1)
    if images.ndim != 3 or len(images) != n:
        raise DataError(f"images must have shape (n={n}, H, W[, 3]); got {images.shape}")
    return images


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
                             path=None):
    """Overlay gallery: rows are FNs, FPs and correct calls; columns the image and each map.

    False negatives are the most confident misses (lowest probability first), false
    positives the most confident false alarms; correct calls are a seeded random sample.

    Parameters
    ----------
    images : array_like, shape (n, H, W) or (n, H, W, 3)
        Intensities in [0, 1].
    maps : dict of str -> array_like, shape (n, H, W)
        Column title -> maps, e.g. ``{"Grad-CAM": ..., "Grad-CAM++": ..., "SHAP": ...}``.
        Maps with negative values (SHAP) are drawn on a symmetric diverging scale,
        red toward PNEUMONIA.
    y_true, y_prob : array_like, shape (n,)
        0/1 labels (1 = PNEUMONIA) and P(PNEUMONIA).
    threshold : float, default 0.5
    n_per_group : int, default 2
        Rows per outcome group (fewer when a group is smaller).
    seed : int, default 0
        Seeds the sample of correct calls.
    path : str or Path, optional
        File stem to save PNG and PDF.

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
    groups = error_groups(y_true, y_prob, threshold=threshold)
    p = np.asarray(y_prob, dtype=float)
    gray = _gray(images, len(p))
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
    rows = [(g, i) for g in ERROR_GROUPS for i in chosen[g][:n_per_group]]
    if not rows:
        raise DataError("no images to show")
    y = np.asarray(y_true)
    with style():
        fig = _new_figure(figsize=(1.9 * (1 + len(maps)), 2.0 * len(rows)))
        axes = fig.subplots(len(rows), 1 + len(maps), squeeze=False)
        for r, (group, i) in enumerate(rows):
            _bare(axes[r, 0])
            axes[r, 0].imshow(gray[i], cmap="gray", vmin=0.0, vmax=1.0)
            axes[r, 0].set_title(f"{_SHORT[group]}  label {y[i]}  p={p[i]:.2f}", fontsize=8,
                                 color=ERROR_COLORS[group])
            for c, (name, m) in enumerate(maps.items(), start=1):
                _bare(axes[r, c])
                _show_map(axes[r, c], gray[i], m[i], signed[name])
                if r == 0:
                    axes[r, c].set_title(name + (" (signed)" if signed[name] else ""), fontsize=9)
        fig.suptitle("Explanations of errors and correct calls")
        return _finish(fig, path)


def plot_mean_maps(maps, y_true, y_prob, *, images=None, threshold=0.5, path=None):
    """Mean map of each outcome group (FN, FP, correct), optionally over the mean image.

    Parameters
    ----------
    maps : array_like, shape (n, H, W)
    y_true, y_prob : array_like, shape (n,)
    images : array_like, shape (n, H, W) or (n, H, W, 3), optional
        When given, each group's mean image is drawn underneath.
    threshold : float, default 0.5
    path : str or Path, optional
        File stem to save PNG and PDF.

    Returns
    -------
    matplotlib.figure.Figure
        One axes per group, titled with its size; an empty group is left blank.
    """
    groups = error_groups(y_true, y_prob, threshold=threshold)
    n = len(np.asarray(y_prob))
    m = np.asarray(maps, dtype=float)
    if m.ndim != 3 or len(m) != n:
        raise DataError(f"maps must have shape (n={n}, H, W); got {m.shape}")
    gray = None if images is None else _gray(images, n)
    signed = bool((m < 0).any())
    with style():
        fig = _new_figure(figsize=(3.0 * len(ERROR_GROUPS), 3.2))
        for ax, group in zip(fig.subplots(1, len(ERROR_GROUPS)), ERROR_GROUPS):
            _bare(ax)
            idx = groups[group]
            ax.set_title(f"{group.replace('_', ' ')} (n={len(idx)})", color=ERROR_COLORS[group])
            if len(idx) == 0:
                ax.axis("off")
                continue
            background = gray[idx].mean(axis=0) if gray is not None else np.zeros(m.shape[1:])
            _show_map(ax, background, m[idx].mean(axis=0), signed)
        fig.suptitle("Mean explanation map per outcome")
        return _finish(fig, path)


def plot_zone_attention(table, y_true, y_prob, *, threshold=0.5, path=None):
    """Grouped bars: mean share of attention per lung zone (and off-lung), per outcome.

    Parameters
    ----------
    table : pandas.DataFrame, shape (n, k)
        Output of :func:`pneumoxai.explain.zone_attention` (rows aligned with ``y_true``);
        rows with NaN shares (maps without positive mass) are left out.
    y_true, y_prob : array_like, shape (n,)
    threshold : float, default 0.5
    path : str or Path, optional
        File stem to save PNG and PDF.

    Returns
    -------
    matplotlib.figure.Figure
        One bar per (zone, non-empty group), with 95% normal-approximation error bars.
    """
    groups = error_groups(y_true, y_prob, threshold=threshold)
    if len(table) != len(np.asarray(y_prob)):
        raise DataError(f"table has {len(table)} rows but y_prob has {len(np.asarray(y_prob))}")
    values = table.to_numpy(dtype=float)
    columns = [str(c).replace("_", " ") for c in table.columns]
    present = [g for g in ERROR_GROUPS if np.isfinite(values[groups[g]]).all(axis=1).any()]
    if not present:
        raise DataError("no finite rows in the zone-attention table")
    width = 0.8 / len(present)
    x = np.arange(len(columns))
    with style():
        fig = _new_figure(figsize=(max(6.0, 1.0 * len(columns) + 2), 3.6))
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
        return _finish(fig, path)
