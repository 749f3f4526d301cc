"""Figures for failure-slice discovery (:mod:`pneumoxai.slices`).

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot, so
report loops do not accumulate open figures; given ``path`` it also saves it, as
:func:`pneumoxai.figures.save_figure` describes. Outcomes (false negative, false
positive, correct) come from :func:`pneumoxai.outcomes.outcome_groups`.
"""

import textwrap

import numpy as np

from ..errors import DataError, param_error
from ..outcomes import OUTCOMES, outcome_groups
from ..validation import UNIT_INTERVAL, Interval, check_grey_images, check_param
from ..slices import slice_mask
from ._style import (
    ERROR_COLORS, OKABE_ITO, OUTCOME_SHORT, SEQUENTIAL_CMAP, finish_figure, new_figure, style,
)

__all__ = ["plot_slice_error_rates", "plot_slice_examples", "plot_feature_distributions", "plot_slice_maps"]

DISTRIBUTION_KINDS = ("hist", "box")
_NOT_FINDING_COLOR = "#999999"
_LABEL_WIDTH = 38  # characters per line of a slice label


def plot_slice_error_rates(slices, *, top=10, overall_rate=None, ax=None, path=None, formats=("png", "pdf")):
    """Horizontal bars of the top slices' error rates with Wilson intervals.

    Parameters
    ----------
    slices : pandas.DataFrame
        Output of :func:`pneumoxai.slices.find_failure_slices` (already ranked).
    top : int, default=10
        Number of leading rows drawn, top to bottom.
    overall_rate : float, default=None
        Error rate over all samples, drawn as a vertical line; defaults to
        ``slices.attrs["overall_error_rate"]``.
    ax : matplotlib.axes.Axes, default=None
        Axes to draw into; a new figure is made otherwise.
    path : str or path-like, default=None
        Where to save the figure: a file name such as ``"slices.png"`` (that one format)
        or a stem such as ``"slices"`` (each of ``formats``); see
        :func:`pneumoxai.figures.save_figure`. Nothing is saved when None.
    formats : tuple of str, default=("png", "pdf")
        Formats written when ``path`` is a stem.

    Returns
    -------
    fig : matplotlib.figure.Figure
        Findings (``q < alpha``) are drawn in vermillion, other slices in grey.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from pneumoxai.slices import find_failure_slices
    >>> from pneumoxai.figures import plot_slice_error_rates
    >>> rng = np.random.default_rng(0)
    >>> frame = pd.DataFrame({"contrast": rng.uniform(size=200)})
    >>> y = rng.integers(0, 2, size=200)
    >>> wrong = (frame["contrast"].to_numpy() < 0.25) & (rng.uniform(size=200) < 0.6)
    >>> found = find_failure_slices(frame, y, np.where(wrong, 1 - y, y) * 0.8 + 0.1)
    >>> fig = plot_slice_error_rates(found, top=3)
    >>> len(fig.axes[0].patches)
    3
    """
    from matplotlib.patches import Patch

    if len(slices) == 0:
        raise DataError("no slices to plot (the slice table is empty)")
    if overall_rate is None:
        if "overall_error_rate" not in slices.attrs:
            raise DataError("overall_rate not given and slices.attrs has no 'overall_error_rate'")
        overall_rate = slices.attrs["overall_error_rate"]
    rows = slices.head(top)
    rate = rows["error_rate"].to_numpy(dtype=float)
    low, high = rows["ci_low"].to_numpy(dtype=float), rows["ci_high"].to_numpy(dtype=float)
    xerr = np.maximum(np.vstack([rate - low, high - rate]), 0.0)  # hand-made tables may carry rounding residue
    finding = rows["finding"].to_numpy(dtype=bool)
    labels = [
        textwrap.fill(f"{s} (n={n})", _LABEL_WIDTH) for s, n in zip(rows["slice"], rows["size"])
    ]
    with style():
        fig, ax = _figure_and_axes(ax, figsize=(7.0, 0.55 * len(rows) + 1.2))
        y = np.arange(len(rows))
        ax.barh(
            y, rate, xerr=xerr, capsize=3, error_kw={"elinewidth": 1},
            color=np.where(finding, ERROR_COLORS["false_negative"], _NOT_FINDING_COLOR),
        )
        line = ax.axvline(overall_rate, color=OKABE_ITO[7], linestyle="--", linewidth=1)
        ax.set_yticks(y, labels)
        ax.invert_yaxis()
        ax.set_xlim(0, min(1.0, max(float(np.nanmax(rows["ci_high"])), overall_rate) * 1.1))
        ax.set_xlabel("error rate (Wilson interval)")
        ax.set_title("Slices with the largest excess error")
        ax.legend(
            [line, Patch(color=ERROR_COLORS["false_negative"]), Patch(color=_NOT_FINDING_COLOR)],
            [f"overall error rate ({overall_rate:.1%})", "finding (BH q < alpha)", "not significant"],
            loc="lower right",
        )
        return finish_figure(fig, path, formats, "plot_slice_error_rates")


def plot_slice_examples(
    slices, frame, images, *, maps=None, y_true=None, y_prob=None, threshold=0.5,
    top=4, n_examples=4, seed=0, title="Examples from the top failure slices", path=None, formats=("png", "pdf"),
):
    """Example images from each of the top slices, misclassified ones first.

    Parameters
    ----------
    slices : pandas.DataFrame
        Output of :func:`pneumoxai.slices.find_failure_slices`.
    frame : pandas.DataFrame of shape (n_samples, n_columns)
        The frame the slices were found in.
    images : array-like of shape (n_samples, H, W) or (n_samples, H, W, 3)
        Intensities in [0, 1]; or any sequence of ``n_samples`` images that an array of
        row numbers indexes (only the shown images are asked for, so a split's images
        can be decoded on demand).
    maps : array-like of shape (n_samples, H, W), default=None
        Saliency or attention maps overlaid semi-transparently.
    y_true, y_prob : array-like of shape (n_samples,), default=None
        When both are given, errors are shown first and each image is titled with
        its outcome (false negative / false positive / correct) and probability.
    threshold : float, default=0.5
        Decision threshold for ``y_prob``.
    top : int, default=4
        Number of slices (rows of the panel).
    n_examples : int, default=4
        Images per slice (columns of the panel).
    seed : int, default=0
        Seed of the random choice among a slice's errors and among its correct calls.
    title : str, default="Examples from the top failure slices"
        The figure's title (e.g. one slice in words when ``top=1``).
    path : str or path-like, default=None
        Where to save the figure; see :func:`plot_slice_error_rates`.
    formats : tuple of str, default=("png", "pdf")
        Formats written when ``path`` is a stem.

    Returns
    -------
    fig : matplotlib.figure.Figure
        ``top x n_examples`` image axes (cells beyond a slice's size are blank).
    """
    if len(slices) == 0:
        raise DataError("no slices to plot (the slice table is empty)")
    if len(images) != len(frame):
        raise DataError(f"plot_slice_examples: images must have shape (n_samples={len(frame)}, H, W) or "
                        f"(n_samples={len(frame)}, H, W, 1 or 3); got {len(images)} images.")
    outcome = None
    if y_true is not None:
        outcome = _frame_outcomes("plot_slice_examples", y_true, y_prob, threshold, len(frame))
    rng = np.random.default_rng(seed)
    rows = slices.head(top)
    shown = [_choose(np.flatnonzero(slice_mask(frame, conds)), outcome, n_examples, rng)
             for conds in rows["conditions"]]
    needed = np.unique(np.concatenate([np.asarray(c, dtype=int) for c in shown]))
    # Only the shown images are read: row i of the frame is row position[i] of these.
    picked = check_grey_images(images[needed], owner="plot_slice_examples", n_samples=len(needed))
    position = dict(zip(needed.tolist(), range(len(needed))))
    if maps is not None and np.shape(maps) != (len(frame), *picked.shape[1:]):
        raise DataError(f"maps must have shape {(len(frame), *picked.shape[1:])}; got {np.shape(maps)}")

    with style():
        fig = new_figure(figsize=(1.9 * n_examples, 2.1 * len(rows)))
        axes = np.atleast_2d(fig.subplots(len(rows), n_examples, squeeze=False))
        for r, (label, chosen) in enumerate(zip(rows["slice"], shown)):
            for c in range(n_examples):
                ax = axes[r, c]
                ax.set_xticks([])
                ax.set_yticks([])
                ax.grid(False)
                if c == 0:
                    ax.set_ylabel(textwrap.fill(label, 24), fontsize=8)
                if c >= len(chosen):
                    ax.axis("off")
                    continue
                i = chosen[c]
                ax.imshow(picked[position[i]], cmap="gray", vmin=0.0, vmax=1.0)
                if maps is not None:
                    ax.imshow(maps[i], cmap=SEQUENTIAL_CMAP, alpha=0.4)
                if outcome is not None:
                    kind = outcome[i]
                    ax.set_title(f"{kind.replace('_', ' ')}\np={np.asarray(y_prob)[i]:.2f}",
                                 fontsize=8, color=ERROR_COLORS[kind])
        fig.suptitle(textwrap.fill(str(title), 90), fontsize=9 if len(str(title)) > 60 else None)
        return finish_figure(fig, path, formats, "plot_slice_examples")


def plot_feature_distributions(
    frame, y_true, y_prob, *, columns=None, threshold=0.5, kind="hist", ncols=4, bins=20, path=None,
    formats=("png", "pdf"),
):
    """Small multiples: each feature's distribution for FNs, FPs and correct calls.

    Parameters
    ----------
    frame : pandas.DataFrame of shape (n_samples, n_columns)
        Features, e.g. :func:`pneumoxai.slices.image_features`.
    y_true, y_prob : array-like of shape (n_samples,)
        0/1 labels and predicted probabilities of pneumonia.
    columns : list of str, default=None
        Columns to draw; None draws all numeric, non-boolean, non-constant columns.
    threshold : float, default=0.5
        Decision threshold for ``y_prob``.
    kind : {"hist", "box"}, default="hist"
        Density-normalised step histograms on shared bins, or box plots.
    ncols : int, default=4
        Panels per row.
    bins : int, default=20
        Histogram bins.
    path : str or path-like, default=None
        Where to save the figure; see :func:`plot_slice_error_rates`.
    formats : tuple of str, default=("png", "pdf")
        Formats written when ``path`` is a stem.

    Returns
    -------
    fig : matplotlib.figure.Figure
        One axes per column; NaN values are left out of each panel.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from pneumoxai.figures import plot_feature_distributions
    >>> rng = np.random.default_rng(0)
    >>> frame = pd.DataFrame({"brightness": rng.uniform(size=50), "contrast": rng.uniform(size=50)})
    >>> fig = plot_feature_distributions(frame, rng.integers(0, 2, 50), rng.uniform(size=50), kind="box")
    >>> [ax.get_title() for ax in fig.axes]
    ['brightness', 'contrast']
    """
    if kind not in DISTRIBUTION_KINDS:
        raise param_error("plot_feature_distributions", "kind", f"one of {DISTRIBUTION_KINDS}", kind)
    outcome = _frame_outcomes("plot_feature_distributions", y_true, y_prob, threshold, len(frame))
    if columns is None:
        columns = [
            c for c in frame.columns
            if frame[c].dtype.kind in "iuf" and frame[c].nunique(dropna=True) > 1
        ]
    if not columns:
        raise DataError("no numeric, non-constant columns to plot")
    nrows = -(-len(columns) // ncols)
    with style():
        fig = new_figure(figsize=(3.0 * min(ncols, len(columns)), 2.4 * nrows))
        axes = fig.subplots(nrows, min(ncols, len(columns)), squeeze=False).ravel()
        for ax in axes[len(columns):]:
            fig.delaxes(ax)
        for ax, col in zip(axes, columns):
            values = frame[col].to_numpy(dtype=float, na_value=np.nan)
            groups = [values[(outcome == g) & np.isfinite(values)] for g in OUTCOMES]
            colors = [ERROR_COLORS[g] for g in OUTCOMES]
            names = [f"{g.replace('_', ' ')} (n={len(v)})" for g, v in zip(OUTCOMES, groups)]
            if kind == "hist":
                edges = np.histogram_bin_edges(values[np.isfinite(values)], bins=bins)
                for v, color, name in zip(groups, colors, names):
                    if len(v):
                        ax.hist(v, bins=edges, density=True, histtype="step", linewidth=1.5,
                                color=color, label=name)
                ax.set_ylabel("density")
            else:
                box = ax.boxplot([v for v in groups], patch_artist=True, widths=0.6)
                for patch, color in zip(box["boxes"], colors):
                    patch.set_facecolor(color)
                    patch.set_alpha(0.5)
                ax.set_xticks(range(1, len(OUTCOMES) + 1), [OUTCOME_SHORT[g] for g in OUTCOMES])
            ax.set_title(str(col))
        handles, labels = axes[0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="outside upper center", ncol=3)
        return finish_figure(fig, path, formats, "plot_feature_distributions")


def _frame_outcomes(owner, y_true, y_prob, threshold, n):
    """Outcome of each of the ``n`` rows of the slice frame."""
    if y_prob is None:
        raise DataError("y_prob is required when y_true is given")
    outcome = outcome_groups(y_true, y_prob, threshold=check_param(owner, "threshold", threshold, UNIT_INTERVAL))
    if len(outcome) != n:
        raise DataError(f"length mismatch: the frame has {n} rows but y_true and y_prob have {len(outcome)}")
    return outcome


def _choose(members, outcome, k, rng):
    """Up to ``k`` members, errors first when outcomes are known; random within each group."""
    members = rng.permutation(members)
    if outcome is not None:
        members = members[np.argsort(outcome[members] == "correct", kind="stable")]
    return members[:k]


def _figure_and_axes(ax, figsize):
    if ax is not None:
        return ax.figure, ax
    fig = new_figure(figsize)
    return fig, fig.add_subplot()



def plot_slice_maps(explanations, mean_maps, *, background=None, mask=None, reference_map=None, top=6,
                    method="Grad-CAM", path=None, formats=("png", "pdf")):
    """Mean attention map of each failure slice's errors, with its zone shift against correct calls.

    Parameters
    ----------
    explanations : pandas.DataFrame
        The table of :func:`pneumoxai.explain.slice_explanations` (``slice``,
        ``n_errors``, ``off_lung_shift``, ``top_zone_shift``).
    mean_maps : array-like of shape (n_slices, H, W)
        Its mean maps, in the same order.
    background : array-like of shape (H, W), default=None
        An image drawn under the maps (e.g. the mean test image), intensities in [0, 1].
    mask : array-like of bool of shape (H, W), default=None
        A lung mask whose outline is drawn on every panel (e.g. the mean mask > 0.5).
    reference_map : array-like of shape (H, W), default=None
        The mean map of correct calls, drawn as the first panel for comparison.
    top : int, default=6
        At most this many slices.
    method : str, default="Grad-CAM"
        Name of the maps, for the title (e.g. "HiResCAM (fused)").
    path : str or path-like, default=None
        Where to save the figure; see :func:`plot_slice_error_rates`.
    formats : tuple of str, default=("png", "pdf")

    Returns
    -------
    fig : matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> table = pd.DataFrame({"slice": ["a == 1"], "n_errors": [5], "off_lung_shift": [0.2],
    ...                       "top_zone_shift": ["off_lung_attention"]})
    >>> len(plot_slice_maps(table, np.ones((1, 8, 8))).axes)
    1
    """
    mean_maps = np.asarray(mean_maps, dtype=np.float32)
    if mean_maps.ndim != 3 or len(mean_maps) != len(explanations):
        raise DataError(f"mean_maps must have shape (n_slices={len(explanations)}, H, W); got {mean_maps.shape}")
    if len(explanations) == 0:
        raise DataError("no slice explanations to plot (the table is empty)")
    check_param("plot_slice_maps", "top", top, (Interval("int", 1, 100),))
    rows = explanations.head(top)
    panels = [("correct calls (reference)", reference_map, "")] if reference_map is not None else []
    for i, (_, row) in enumerate(rows.iterrows()):
        shift = row.get("off_lung_shift", np.nan)
        note = f"{int(row['n_errors'])} errors; off-lung {shift:+.2f}" if np.isfinite(shift) else f"{int(row['n_errors'])} errors"
        panels.append((textwrap.fill(str(row["slice"]), 30), mean_maps[i], note))
    with style():
        fig = new_figure(figsize=(2.4 * len(panels), 2.9))
        axes = np.atleast_1d(fig.subplots(1, len(panels), squeeze=False)[0])
        for ax, (title, heat, note) in zip(axes, panels):
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            if background is not None:
                ax.imshow(np.asarray(background), cmap="gray", vmin=0.0, vmax=1.0)
            ax.imshow(np.asarray(heat), cmap=SEQUENTIAL_CMAP, alpha=0.55 if background is not None else 1.0)
            if mask is not None:
                ax.contour(np.asarray(mask, dtype=float), levels=[0.5], colors="white", linewidths=0.8)
            ax.set_title(title, fontsize=7)
            ax.set_xlabel(note, fontsize=7)
        fig.suptitle(f"Where each failure slice's errors look (mean {method} of the ensemble)")
        return finish_figure(fig, path, formats, "plot_slice_maps")
