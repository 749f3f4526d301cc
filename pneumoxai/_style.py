"""Shared figure style: one colour-blind-safe palette and readable defaults."""

import contextlib

# Okabe & Ito (2008), "Color Universal Design": distinguishable under common colour-vision deficiencies.
OKABE_ITO = (
    "#0072B2", "#E69F00", "#009E73", "#D55E00",
    "#CC79A7", "#56B4E9", "#F0E442", "#000000",
)
ERROR_COLORS = {"false_negative": "#D55E00", "false_positive": "#0072B2", "correct": "#009E73"}
SEQUENTIAL_CMAP = "viridis"
DIVERGING_CMAP = "RdBu_r"  # signed maps (SHAP): red pushes toward PNEUMONIA

RC_PARAMS = {
    "figure.dpi": 110,
    "savefig.dpi": 200,
    "savefig.bbox": "tight",
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
}


@contextlib.contextmanager
def style():
    """Apply pneumoxai's matplotlib style inside a ``with`` block."""
    import matplotlib as mpl
    from cycler import cycler

    params = dict(RC_PARAMS, **{"axes.prop_cycle": cycler(color=OKABE_ITO)})
    with mpl.rc_context(params):
        yield


def save_figure(fig, path_stem, formats=("png", "pdf")):
    """Save ``fig`` atomically as ``path_stem.<fmt>`` for each format; return the paths."""
    from pathlib import Path

    from ._io import atomic_path

    paths = []
    for fmt in formats:
        path = Path(f"{path_stem}.{fmt}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt)
        paths.append(path)
    return paths
