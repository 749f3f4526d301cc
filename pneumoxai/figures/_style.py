"""Shared figure style, figure construction and saving.

Every ``plot_*`` function builds its figure with :func:`new_figure` inside :func:`style`
and ends with :func:`finish_figure`, so all of them save the same way (see
:func:`save_figure`).
"""

import contextlib
import os
from pathlib import Path

from ..errors import param_error

# Okabe & Ito (2008), "Color Universal Design": distinguishable under common colour-vision deficiencies.
OKABE_ITO = (
    "#0072B2", "#E69F00", "#009E73", "#D55E00",
    "#CC79A7", "#56B4E9", "#F0E442", "#000000",
)
# Keyed by pneumoxai.outcomes.OUTCOMES.
ERROR_COLORS = {"false_negative": "#D55E00", "false_positive": "#0072B2", "correct": "#009E73"}
OUTCOME_SHORT = {"false_negative": "FN", "false_positive": "FP", "correct": "correct"}
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


def new_figure(figsize):
    """A constrained-layout figure built without pyplot: it works under any backend and is
    not kept alive by pyplot's figure registry, so report loops do not accumulate figures."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def _supported_formats():
    from matplotlib.backend_bases import FigureCanvasBase

    return tuple(sorted(FigureCanvasBase.get_supported_filetypes()))


def _check_formats(owner, formats):
    supported = _supported_formats()
    if not isinstance(formats, (tuple, list)) or not formats or not all(f in supported for f in formats):
        raise param_error(owner, "formats", f"a non-empty tuple of formats among {supported}", formats)
    return tuple(formats)


def _targets(owner, path, formats):
    """(file, format) pairs that saving to ``path`` writes."""
    formats = _check_formats(owner, formats)
    if not isinstance(path, (str, os.PathLike)):
        raise param_error(owner, "path", "a str or path-like file name or stem", path)
    path = Path(path)
    suffix = path.suffix[1:].lower()
    if suffix in _supported_formats():
        return [(path, suffix)]
    # Appended rather than Path.with_suffix, so a stem such as "run.v2/roc_t0.5" keeps its dots.
    return [(Path(f"{path}.{fmt}"), fmt) for fmt in formats]


def _save(fig, targets):
    from .._io import atomic_path

    with style():  # savefig.dpi and savefig.bbox are read when saving
        for path, fmt in targets:
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format=fmt)
    return [path for path, _ in targets]


def save_figure(fig, path, *, formats=("png", "pdf")):
    """Save ``fig`` atomically, in one format or several; the rule every ``plot_*`` follows.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
    path : str or path-like
        A file name whose suffix names a format matplotlib writes (``"roc.png"``,
        ``"roc.svg"``) saves that one file and ignores ``formats``; any other path is a
        stem, saved as ``path.<fmt>`` for each of ``formats`` (``"roc"`` gives
        ``roc.png`` and ``roc.pdf``). Missing folders are created.
    formats : tuple of str, default=("png", "pdf")
        Formats written when ``path`` is a stem.

    Returns
    -------
    list of pathlib.Path
        The files written, each through a temporary file renamed into place.

    Examples
    --------
    >>> import tempfile
    >>> from matplotlib.figure import Figure
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     [p.name for p in save_figure(Figure(), f"{folder}/fig")]
    ...     [p.name for p in save_figure(Figure(), f"{folder}/fig.svg")]
    ['fig.png', 'fig.pdf']
    ['fig.svg']
    """
    return _save(fig, _targets("save_figure", path, formats))


def finish_figure(fig, path, formats, owner):
    """End of every ``plot_*`` (named ``owner`` in errors): save as :func:`save_figure` does
    when ``path`` is given; return ``fig``."""
    if path is None:
        _check_formats(owner, formats)
    else:
        _save(fig, _targets(owner, path, formats))
    return fig
