"""Evaluation figures: ROC and PR curves, confusion matrices, calibration, thresholds,
member diversity and ensemble size.

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot, so it
works under any backend (including ``Agg``), never opens a window and is not kept alive
by pyplot's figure registry. When ``path`` is given the figure is also saved, as
:func:`pneumoxai.figures.save_figure` describes.
"""

import numpy as np
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

from ..errors import ConfigError, DataError, param_error
from ..metrics import choose_threshold, expected_calibration_error, reliability_bins
from ..validation import UNIT_INTERVAL, Interval, check_binary, check_param
from ._style import OKABE_ITO, SEQUENTIAL_CMAP, finish_figure, new_figure, style

__all__ = [
    "plot_roc",
    "plot_pr",
    "plot_confusion_matrices",
    "plot_reliability",
    "plot_threshold_analysis",
    "plot_diversity",
    "plot_ensemble_size",
]

_DIVERSITY_MEASURES = ("disagreement", "yules_q", "error_correlation", "double_fault")


def _as_models(owner, y_true, probs):
    """Checked labels and a dict name -> checked probabilities (a bare array is ``"model"``)."""
    if isinstance(probs, dict):
        if not probs:
            raise DataError("probs is an empty dict; pass at least one model.")
    else:
        probs = {"model": probs}
    checked = {name: check_binary(y_true, p, owner=owner, name=name) for name, p in probs.items()}
    y = next(iter(checked.values()))[0]
    return y, {name: p for name, (_, p) in checked.items()}


def plot_roc(y_true, probs, *, title="ROC curve", path=None, formats=("png", "pdf")):
    """ROC curves of one or more models, with the AUC of each in the legend.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        0/1 labels, 1 = PNEUMONIA.
    probs : dict of str -> array-like of shape (n_samples,), or array-like
        Probability of PNEUMONIA per model.
    title : str, default="ROC curve"
    path : str or path-like, default=None
        Where to save the figure: a file name such as ``"roc.png"`` (that one format) or a
        stem such as ``"roc"`` (each of ``formats``); see
        :func:`pneumoxai.figures.save_figure`. Nothing is saved when None.
    formats : tuple of str, default=("png", "pdf")
        Formats written when ``path`` is a stem.

    Returns
    -------
    matplotlib.figure.Figure
        One axes: a line per model plus the chance diagonal.

    Examples
    --------
    >>> fig = plot_roc([0, 0, 1, 1], {"a": [0.1, 0.6, 0.4, 0.9], "b": [0.2, 0.3, 0.7, 0.8]})
    >>> len(fig.axes[0].lines)
    3
    """
    y, models = _as_models("plot_roc", y_true, probs)
    with style():
        fig = new_figure(figsize=(4.8, 4.4))
        ax = fig.subplots()
        for name, p in models.items():
            fpr, tpr, _ = roc_curve(y, p)
            ax.plot(fpr, tpr, label=f"{name} (AUC = {auc(fpr, tpr):.3f})")
        ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="chance")
        ax.set(xlabel="False positive rate (1 - specificity)", ylabel="True positive rate (sensitivity)",
               xlim=(0, 1), ylim=(0, 1.01), title=title, aspect="equal")
        ax.legend(loc="lower right")
        return finish_figure(fig, path, formats, "plot_roc")


def plot_pr(y_true, probs, *, title="Precision-recall curve", path=None, formats=("png", "pdf")):
    """Precision-recall curves, average precision in the legend, prevalence as baseline.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        0/1 labels, 1 = PNEUMONIA.
    probs : dict of str -> array-like of shape (n_samples,), or array-like
        Probability of PNEUMONIA per model.
    title : str, default="Precision-recall curve"
    path : str or path-like, default=None
        Where to save the figure; see :func:`plot_roc`.
    formats : tuple of str, default=("png", "pdf")
        Formats written when ``path`` is a stem.

    Returns
    -------
    matplotlib.figure.Figure
        One axes: a line per model plus the prevalence line.

    Examples
    --------
    >>> fig = plot_pr([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9])
    >>> len(fig.axes[0].lines)
    2
    """
    y, models = _as_models("plot_pr", y_true, probs)
    with style():
        fig = new_figure(figsize=(4.8, 4.4))
        ax = fig.subplots()
        for name, p in models.items():
            precision, recall, _ = precision_recall_curve(y, p)
            ax.step(recall, precision, where="post",
                    label=f"{name} (AP = {average_precision_score(y, p):.3f})")
        prevalence = float(np.mean(y))
        ax.axhline(prevalence, linestyle="--", color="0.6", linewidth=1,
                   label=f"prevalence = {prevalence:.2f}")
        ax.set(xlabel="Recall (sensitivity)", ylabel="Precision (PPV)", xlim=(0, 1), ylim=(0, 1.01),
               title=title)
        ax.legend(loc="lower left")
        return finish_figure(fig, path, formats, "plot_pr")


def plot_confusion_matrices(y_true, probs, *, threshold=0.5, path=None, formats=("png", "pdf")):
    """One confusion matrix per model, with counts and row percentages.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        0/1 labels, 1 = PNEUMONIA.
    probs : dict of str -> array-like of shape (n_samples,), or array-like
        Probability of PNEUMONIA per model.
    threshold : float or dict of str -> float, default=0.5
        Decision threshold, shared or per model.
    path : str or path-like, default=None
        Where to save the figure; see :func:`plot_roc`.
    formats : tuple of str, default=("png", "pdf")
        Formats written when ``path`` is a stem.

    Returns
    -------
    matplotlib.figure.Figure
        One axes per model.

    Examples
    --------
    >>> fig = plot_confusion_matrices([0, 0, 1, 1], {"a": [0.1, 0.6, 0.4, 0.9], "b": [0.2, 0.3, 0.7, 0.8]})
    >>> len(fig.axes)
    2
    """
    y, models = _as_models("plot_confusion_matrices", y_true, probs)
    if isinstance(threshold, dict):
        missing = sorted(set(models) - set(threshold))
        if missing:
            raise ConfigError(f"threshold dict has no entry for models {missing}.")
        thresholds = {name: check_param("plot_confusion_matrices", "threshold", threshold[name], UNIT_INTERVAL) for name in models}
    else:
        thresholds = dict.fromkeys(models, check_param("plot_confusion_matrices", "threshold", threshold, UNIT_INTERVAL))
    with style():
        fig = new_figure(figsize=(1.2 + 3.0 * len(models), 3.4))
        axes = np.atleast_1d(fig.subplots(1, len(models), sharey=True))
        for k, (ax, (name, p)) in enumerate(zip(axes, models.items())):
            pred = (p >= thresholds[name]).astype(int)
            cm = np.array([[np.sum((y == t) & (pred == q)) for q in (0, 1)] for t in (0, 1)])
            share = cm / cm.sum(axis=1, keepdims=True)
            ax.imshow(share, cmap=SEQUENTIAL_CMAP, vmin=0, vmax=1)
            for t in (0, 1):
                for q in (0, 1):
                    ax.text(q, t, f"{cm[t, q]}\n{share[t, q]:.0%}", ha="center", va="center",
                            color="white" if share[t, q] < 0.6 else "black")
            ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["NORMAL", "PNEUMONIA"],
                   yticklabels=["NORMAL", "PNEUMONIA"], xlabel="Predicted",
                   ylabel="True" if k == 0 else "", title=f"{name} (t = {thresholds[name]:.2f})")
            ax.grid(False)
        return finish_figure(fig, path, formats, "plot_confusion_matrices")


def plot_reliability(y_true, probs, *, n_bins=10, path=None, formats=("png", "pdf")):
    """Reliability diagram: observed PNEUMONIA frequency against mean predicted probability.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        0/1 labels, 1 = PNEUMONIA.
    probs : dict of str -> array-like of shape (n_samples,), or array-like
        Probability of PNEUMONIA per model.
    n_bins : int, default=10
        Equal-width bins, as in :func:`pneumoxai.metrics.reliability_bins`.
    path : str or path-like, default=None
        Where to save the figure; see :func:`plot_roc`.
    formats : tuple of str, default=("png", "pdf")
        Formats written when ``path`` is a stem.

    Returns
    -------
    matplotlib.figure.Figure
        Two axes: the diagram (a line per model, ECE in the legend, plus the diagonal) and
        below it the number of images per bin.

    Examples
    --------
    >>> fig = plot_reliability([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9], n_bins=5)
    >>> len(fig.axes), len(fig.axes[0].lines)
    (2, 2)
    """
    y, models = _as_models("plot_reliability", y_true, probs)
    check_param("plot_reliability", "n_bins", n_bins, Interval("int", 1, 10_000))
    with style():
        fig = new_figure(figsize=(4.8, 5.4))
        top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
        top.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="perfect calibration")
        width = 1.0 / n_bins / (len(models) + 1)
        for k, (name, p) in enumerate(models.items()):
            bins = reliability_bins(y, p, n_bins=n_bins)
            ece = expected_calibration_error(y, p, n_bins=n_bins)
            filled = bins[bins["count"] > 0]
            line, = top.plot(filled["mean_predicted"], filled["observed_frequency"], marker="o",
                             label=f"{name} (ECE = {ece:.3f})")
            bottom.bar(bins["bin_lower"] + (k + 0.5) * width, bins["count"], width=width,
                       color=line.get_color())
        top.set(ylabel="Observed PNEUMONIA frequency", xlim=(0, 1), ylim=(0, 1), title="Reliability diagram")
        top.legend(loc="upper left")
        bottom.set(xlabel="Mean predicted probability", ylabel="Images")
        return finish_figure(fig, path, formats, "plot_reliability")


def plot_threshold_analysis(y_true, y_prob, *, threshold=None, method="youden", target=None,
                            path=None, formats=("png", "pdf")):
    """Sensitivity, specificity and F1 against the decision threshold.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        0/1 labels, 1 = PNEUMONIA.
    y_prob : array-like of shape (n_samples,)
        Probability of PNEUMONIA of one model.
    threshold : float, default=None
        Threshold to mark; by default chosen by
        :func:`pneumoxai.metrics.choose_threshold` with ``method`` and ``target``.
    method : {"youden", "sensitivity", "f1"}, default="youden"
        Passed to :func:`pneumoxai.metrics.choose_threshold` when ``threshold`` is None.
    target : float, default=None
        Required sensitivity for ``method="sensitivity"``, passed on likewise.
    path : str or path-like, default=None
        Where to save the figure; see :func:`plot_roc`.
    formats : tuple of str, default=("png", "pdf")
        Formats written when ``path`` is a stem.

    Returns
    -------
    matplotlib.figure.Figure
        One axes: three curves and a vertical line at the marked threshold.

    Examples
    --------
    >>> fig = plot_threshold_analysis([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9])
    >>> len(fig.axes[0].lines)
    4
    """
    y, p = check_binary(y_true, y_prob, owner="plot_threshold_analysis")
    if threshold is None:
        threshold = choose_threshold(y, p, method=method, target=target)
        how = method
    else:
        threshold = check_param("plot_threshold_analysis", "threshold", threshold, UNIT_INTERVAL)
        how = "given"
    grid = np.linspace(0, 1, 201)
    # Count predictions >= t for every grid threshold at once.
    tp = np.sum(y == 1) - np.searchsorted(np.sort(p[y == 1]), grid, side="left")
    fp = np.sum(y == 0) - np.searchsorted(np.sort(p[y == 0]), grid, side="left")
    n_pos, n_neg = np.sum(y == 1), np.sum(y == 0)
    with style():
        fig = new_figure(figsize=(5.6, 4.0))
        ax = fig.subplots()
        ax.plot(grid, tp / n_pos, color=OKABE_ITO[3], label="sensitivity")
        ax.plot(grid, 1 - fp / n_neg, color=OKABE_ITO[0], label="specificity")
        ax.plot(grid, 2 * tp / (tp + fp + n_pos), color=OKABE_ITO[2], label="F1")
        ax.axvline(threshold, color=OKABE_ITO[7], linestyle=":", label=f"threshold = {threshold:.3f} ({how})")
        ax.set(xlabel="Decision threshold", ylabel="Value", xlim=(0, 1), ylim=(0, 1.01),
               title="Threshold analysis")
        ax.legend(loc="lower left")
        return finish_figure(fig, path, formats, "plot_threshold_analysis")


def plot_diversity(table, *, measure="disagreement", path=None, formats=("png", "pdf")):
    """Heatmap of one pairwise diversity measure between ensemble members.

    Parameters
    ----------
    table : pandas.DataFrame
        Output of :func:`pneumoxai.ensemble.diversity`.
    measure : {"disagreement", "yules_q", "error_correlation", "double_fault"}, default="disagreement"
    path : str or path-like, default=None
        Where to save the figure; see :func:`plot_roc`.
    formats : tuple of str, default=("png", "pdf")
        Formats written when ``path`` is a stem.

    Returns
    -------
    matplotlib.figure.Figure
        The heatmap axes and its colour bar; the diagonal is left blank.

    Examples
    --------
    >>> from pneumoxai.ensemble import diversity
    >>> table = diversity([[0.9, 0.2, 0.7], [0.8, 0.7, 0.4], [0.1, 0.6, 0.3]], [1, 1, 0])
    >>> len(plot_diversity(table).axes)
    2
    """
    if measure not in _DIVERSITY_MEASURES:
        raise param_error("plot_diversity", "measure", f"one of {_DIVERSITY_MEASURES}", measure)
    missing = {"member_a", "member_b", measure} - set(table.columns)
    if missing:
        raise DataError(f"table lacks columns {sorted(missing)}; pass the output of ensemble.diversity.")
    names = list(dict.fromkeys([*table["member_a"], *table["member_b"]]))
    index = {name: i for i, name in enumerate(names)}
    matrix = np.full((len(names), len(names)), np.nan)
    for a, b, value in zip(table["member_a"], table["member_b"], table[measure]):
        matrix[index[a], index[b]] = matrix[index[b], index[a]] = value
    # Q and rho range over [-1, 1]; disagreement and double fault over [0, 1].
    vmin = -1.0 if measure in ("yules_q", "error_correlation") else 0.0
    size = 1.2 + 0.6 * len(names)
    with style():
        fig = new_figure(figsize=(size + 1.2, size))
        ax = fig.subplots()
        image = ax.imshow(matrix, cmap=SEQUENTIAL_CMAP, vmin=vmin, vmax=1.0)
        for i in range(len(names)):
            for j in range(len(names)):
                if np.isfinite(matrix[i, j]):
                    ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=8,
                            color="white" if matrix[i, j] < (vmin + 1) / 2 else "black")
        ax.set(xticks=range(len(names)), yticks=range(len(names)), title=measure.replace("_", " "))
        ax.set_xticklabels(names, rotation=45, ha="right")
        ax.set_yticklabels(names)
        ax.grid(False)
        fig.colorbar(image, ax=ax, shrink=0.8)
        return finish_figure(fig, path, formats, "plot_diversity")


def plot_ensemble_size(curve, *, ylabel="Score", path=None, formats=("png", "pdf")):
    """Score against the number of members from greedy forward selection.

    Parameters
    ----------
    curve : pandas.DataFrame
        Output of :func:`pneumoxai.ensemble.ensemble_size_curve`.
    ylabel : str, default="Score"
        Name of the metric the curve was built with.
    path : str or path-like, default=None
        Where to save the figure; see :func:`plot_roc`.
    formats : tuple of str, default=("png", "pdf")
        Formats written when ``path`` is a stem.

    Returns
    -------
    matplotlib.figure.Figure
        One axes with one line; each point is labelled with the member it added.

    Examples
    --------
    >>> from pneumoxai.ensemble import ensemble_size_curve
    >>> curve = ensemble_size_curve([[0.9, 0.4], [0.8, 0.6], [0.2, 0.7], [0.3, 0.1]], [1, 1, 0, 0])
    >>> len(plot_ensemble_size(curve).axes[0].lines)
    1
    """
    missing = {"n_members", "added", "score"} - set(curve.columns)
    if missing:
        raise DataError(f"curve lacks columns {sorted(missing)}; pass the output of ensemble_size_curve.")
    with style():
        fig = new_figure(figsize=(5.6, 3.8))
        ax = fig.subplots()
        ax.plot(curve["n_members"], curve["score"], marker="o")
        for n, score, added in zip(curve["n_members"], curve["score"], curve["added"]):
            ax.annotate(f"+{added}", (n, score), textcoords="offset points", xytext=(0, 6),
                        ha="center", fontsize=8)
        ax.set(xlabel="Members (greedy forward selection)", ylabel=ylabel,
               xticks=list(curve["n_members"]), title="Ensemble size")
        return finish_figure(fig, path, formats, "plot_ensemble_size")
