"""Figures of the shift and referral analyses: risk-coverage curves and where the data moved."""

import numpy as np

from ._style import OKABE_ITO, finish_figure, new_figure, style

__all__ = ["plot_risk_coverage", "plot_feature_shift"]


def plot_risk_coverage(curves, *, path=None, formats=("png", "pdf")):
    """Selective risk against coverage, one line per curve.

    Parameters
    ----------
    curves : dict of str to DataFrame
        Label to a :func:`pneumoxai.referral.risk_coverage` table; labels ending in
        ``"(val)"`` are dashed.
    path, formats
        See :func:`pneumoxai.figures.save_figure`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    with style():
        fig = new_figure((6, 4))
        ax = fig.add_subplot()
        for i, (label, curve) in enumerate(curves.items()):
            ax.plot(curve["coverage"], curve["risk"], color=OKABE_ITO[i % len(OKABE_ITO)],
                    linestyle="--" if label.endswith("(val)") else "-", label=label)
        for share in (0.8, 0.9, 0.95):
            ax.axvline(share, color="grey", linewidth=0.6, linestyle=":")
        ax.set_xlabel("coverage (share of cases kept; the rest referred)")
        ax.set_ylabel("error rate on kept cases")
        ax.set_xlim(0, 1)
        ax.set_ylim(bottom=0)
        ax.legend(loc="upper left")
        ax.set_title("Risk-coverage: refer the least confident cases")
    return finish_figure(fig, path, formats, "plot_risk_coverage")


def plot_feature_shift(table, *, top=10, path=None, formats=("png", "pdf")):
    """The features and slices that moved most: effect per row, findings filled.

    Parameters
    ----------
    table : DataFrame
        From :func:`pneumoxai.shift.feature_shift`.
    top : int, default=10
        Rows shown for the distributions (standardised mean differences) and, separately,
        for the shares of bins and levels.
    path, formats
        See :func:`pneumoxai.figures.save_figure`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    distributions = table[table["level"] == ""]
    shares = table[table["level"] != ""]
    with style():
        fig = new_figure((11, 0.35 * max(top, 4) + 1.2))
        for ax, part, xlabel in zip(fig.subplots(1, 2), (distributions, shares),
                                    ("standardised mean difference (target - reference)",
                                     "share in target - share in reference")):
            part = part.reindex(part["effect"].abs().sort_values(ascending=False).index).head(top)[::-1]
            labels = [f"{f} {lvl}".strip() for f, lvl in zip(part["feature"], part["level"])]
            colors = [OKABE_ITO[3] if e > 0 else OKABE_ITO[0] for e in part["effect"]]
            y = np.arange(len(part))
            ax.barh(y, part["effect"], color=colors, alpha=0.35, edgecolor=colors)
            ax.barh(y[part["finding"].to_numpy(bool)], part["effect"][part["finding"].to_numpy(bool)],
                    color=[c for c, f in zip(colors, part["finding"]) if f])
            ax.set_yticks(y, labels)
            ax.axvline(0, color="black", linewidth=0.8)
            ax.set_xlabel(xlabel)
        fig.suptitle("Where the data moved (filled: q < alpha, Benjamini-Hochberg)")
    return finish_figure(fig, path, formats, "plot_feature_shift")
