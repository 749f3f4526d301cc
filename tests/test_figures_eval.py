"""Evaluation figures: expected axes and lines; every plot_* saves files by one rule."""

import inspect

import numpy as np
import pytest
from matplotlib.figure import Figure
from scipy import special

from pneumoxai import figures
from pneumoxai.figures._evaluation import (
    plot_confusion_matrices,
    plot_diversity,
    plot_ensemble_size,
    plot_pr,
    plot_reliability,
    plot_roc,
    plot_threshold_analysis,
)
from pneumoxai.figures._style import save_figure
from pneumoxai.ensemble import diversity, ensemble_size_curve
from pneumoxai.errors import ConfigError, DataError
from pneumoxai.metrics import choose_threshold
from pneumoxai.slices import find_failure_slices

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 80)
    P = special.expit((2 * y - 1)[:, None] + rng.normal(scale=1.2, size=(80, 3)))
    return y, P


def _is_png(path):
    return path.read_bytes()[:8] == PNG_MAGIC


def test_roc_has_a_line_per_model_plus_chance_and_auc_in_legend(data, tmp_path):
    y, P = data
    fig = plot_roc(y, {"m0": P[:, 0], "m1": P[:, 1]}, path=tmp_path / "roc", formats=("png",))
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert len(fig.axes[0].lines) == 3
    assert labels[0].startswith("m0 (AUC = ") and labels[-1] == "chance"
    assert _is_png(tmp_path / "roc.png")


def test_pr_accepts_a_single_array_and_path_with_suffix(data, tmp_path):
    y, P = data
    fig = plot_pr(y, P[:, 0], path=tmp_path / "pr.png")
    assert len(fig.axes[0].lines) == 2
    assert fig.axes[0].lines[1].get_ydata()[0] == pytest.approx(y.mean())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pr.png"]


def test_confusion_matrices_one_axes_per_model_with_counts(data, tmp_path):
    y, P = data
    probs = {f"m{j}": P[:, j] for j in range(3)}
    fig = plot_confusion_matrices(y, probs, threshold={"m0": 0.3, "m1": 0.5, "m2": 0.7},
                                  path=tmp_path / "cm", formats=("png",))
    assert len(fig.axes) == 3
    first_cell = fig.axes[0].texts[0].get_text().split("\n")[0]
    assert int(first_cell) == np.sum((y == 0) & (P[:, 0] < 0.3))
    assert _is_png(tmp_path / "cm.png")
    with pytest.raises(ConfigError, match=r"no entry for models \['m2'\]"):
        plot_confusion_matrices(y, probs, threshold={"m0": 0.3, "m1": 0.5})


def test_reliability_has_diagram_and_counts(data, tmp_path):
    y, P = data
    fig = plot_reliability(y, {"m0": P[:, 0], "m1": P[:, 1]}, n_bins=5, path=tmp_path / "rel",
                           formats=("png",))
    top, bottom = fig.axes
    assert len(top.lines) == 3 and len(bottom.patches) == 10
    assert sum(p.get_height() for p in bottom.patches) == 2 * y.size
    assert _is_png(tmp_path / "rel.png")


def test_threshold_analysis_marks_the_chosen_threshold(data, tmp_path):
    y, P = data
    fig = plot_threshold_analysis(y, P[:, 0], method="sensitivity", target=0.9,
                                  path=tmp_path / "thr", formats=("png",))
    ax = fig.axes[0]
    assert len(ax.lines) == 4
    assert ax.lines[3].get_xdata()[0] == choose_threshold(y, P[:, 0], method="sensitivity", target=0.9)
    assert _is_png(tmp_path / "thr.png")


def test_diversity_heatmap_is_symmetric_with_colorbar(data, tmp_path):
    y, P = data
    table = diversity(P, y)
    fig = plot_diversity(table, measure="yules_q", path=tmp_path / "div", formats=("png",))
    assert len(fig.axes) == 2
    matrix = fig.axes[0].images[0].get_array()
    np.testing.assert_allclose(matrix, matrix.T)
    assert matrix[0, 1] == pytest.approx(table.loc[0, "yules_q"])
    assert _is_png(tmp_path / "div.png")
    with pytest.raises(ConfigError, match="'measure' parameter of plot_diversity must be one of"):
        plot_diversity(table, measure="kappa")


def test_ensemble_size_plots_one_point_per_step(data, tmp_path):
    y, P = data
    curve = ensemble_size_curve(P, y)
    fig = plot_ensemble_size(curve, ylabel="ROC AUC", path=tmp_path / "size", formats=("png",))
    line = fig.axes[0].lines[0]
    np.testing.assert_allclose(line.get_ydata(), curve["score"])
    assert [t.get_text() for t in fig.axes[0].texts] == [f"+{name}" for name in curve["added"]]
    assert _is_png(tmp_path / "size.png")
    with pytest.raises(DataError, match="curve lacks columns"):
        plot_ensemble_size(curve.drop(columns="score"))


# ---------------------------------------------------------------- one saving rule for every plot_*

def _plot_calls():
    """Every public plot_* with tiny valid inputs, as name -> call(**save_options)."""
    import pandas as pd

    from pneumoxai.referral import risk_coverage

    rng = np.random.default_rng(1)
    n = 80
    y = np.tile([0, 1], n // 2)
    P = special.expit((2 * y - 1)[:, None] + rng.normal(size=(n, 2)))
    frame = pd.DataFrame({"contrast": rng.uniform(size=n)})
    p = np.where(frame["contrast"] < 0.3, 1 - y, y) * 0.8 + 0.1  # a planted failure slice
    found = find_failure_slices(frame, y, p)
    images, maps = rng.uniform(size=(n, 8, 8)), rng.uniform(size=(n, 8, 8))
    zones = pd.DataFrame({"lungs": rng.uniform(size=n)}).assign(off_lung=lambda t: 1 - t["lungs"])
    return {
        "plot_roc": lambda **kw: figures.plot_roc(y, p, **kw),
        "plot_pr": lambda **kw: figures.plot_pr(y, p, **kw),
        "plot_confusion_matrices": lambda **kw: figures.plot_confusion_matrices(y, p, **kw),
        "plot_reliability": lambda **kw: figures.plot_reliability(y, p, n_bins=3, **kw),
        "plot_threshold_analysis": lambda **kw: figures.plot_threshold_analysis(y, p, **kw),
        "plot_diversity": lambda **kw: figures.plot_diversity(diversity(P, y), **kw),
        "plot_ensemble_size": lambda **kw: figures.plot_ensemble_size(ensemble_size_curve(P, y), **kw),
        "plot_slice_error_rates": lambda **kw: figures.plot_slice_error_rates(found, top=2, **kw),
        "plot_slice_examples": lambda **kw: figures.plot_slice_examples(found, frame, images, top=1,
                                                                        n_examples=1, **kw),
        "plot_feature_distributions": lambda **kw: figures.plot_feature_distributions(frame, y, p, **kw),
        "plot_explanation_gallery": lambda **kw: figures.plot_explanation_gallery(
            images, {"map": maps}, y, p, n_per_group=1, **kw),
        "plot_mean_maps": lambda **kw: figures.plot_mean_maps(maps, y, p, **kw),
        "plot_zone_attention": lambda **kw: figures.plot_zone_attention(zones, y, p, **kw),
        "plot_slice_maps": lambda **kw: figures.plot_slice_maps(
            pd.DataFrame({"slice": ["contrast <= 0.3"], "n_errors": [20], "off_lung_shift": [0.1]}),
            maps[:1], background=images[0], mask=maps[0] > 0.5, reference_map=maps[1], **kw),
        "plot_risk_coverage": lambda **kw: figures.plot_risk_coverage({"margin (test)": risk_coverage(y, p)}, **kw),
        "plot_feature_shift": lambda **kw: figures.plot_feature_shift(pd.DataFrame(
            {"feature": ["contrast", "contrast"], "level": ["", "Q1"], "effect": [0.5, -0.1],
             "finding": [True, False]}), **kw),
    }


PLOT_NAMES = sorted(name for name in figures.__all__ if name.startswith("plot_"))
MAGIC = {"png": PNG_MAGIC, "pdf": b"%PDF-", "svg": b"<?xml"}


@pytest.fixture(scope="module")
def plot_calls():
    calls = _plot_calls()
    assert sorted(calls) == PLOT_NAMES  # a new plot_* must join this test
    return calls


@pytest.mark.parametrize("name", PLOT_NAMES)
def test_every_plot_takes_the_same_keyword_only_path_and_formats(name):
    params = inspect.signature(getattr(figures, name)).parameters
    for option, default in (("path", None), ("formats", ("png", "pdf"))):
        assert params[option].kind is inspect.Parameter.KEYWORD_ONLY and params[option].default == default


@pytest.mark.parametrize("path, options, written", [
    ("x.png", {"formats": ("svg",)}, ["x.png"]),  # a format suffix wins over formats
    ("x", {}, ["x.pdf", "x.png"]),
    ("x", {"formats": ("svg",)}, ["x.svg"]),
], ids=["file name", "stem, default formats", "stem, svg"])
@pytest.mark.parametrize("name", PLOT_NAMES)
def test_every_plot_saves_by_the_same_rule(plot_calls, tmp_path, name, path, options, written):
    fig = plot_calls[name](path=tmp_path / path, **options)
    assert isinstance(fig, Figure)
    assert sorted(p.name for p in tmp_path.iterdir()) == written  # no temporary files left behind
    for file in written:
        assert (tmp_path / file).read_bytes().startswith(MAGIC[file.split(".")[1]])


@pytest.mark.parametrize("options, match", [
    ({"formats": "png"}, r"'formats' parameter of plot_roc must be a non-empty tuple of formats among \("),
    ({"formats": ()}, r"'formats' parameter of plot_roc .*; got \(\)"),
    ({"formats": ("png", "docx")}, r"'formats' parameter of plot_roc .*; got \('png', 'docx'\)"),
    ({"path": 3}, r"^The 'path' parameter of plot_roc must be a str or path-like file name or stem; got 3\.$"),
], ids=["str", "empty", "unknown", "path"])
def test_bad_save_options_name_the_plot(data, tmp_path, options, match):
    y, P = data
    with pytest.raises(ConfigError, match=match):
        plot_roc(y, P[:, 0], **{"path": tmp_path / "roc", **options})
    assert list(tmp_path.iterdir()) == []


def test_save_figure_keeps_dots_of_a_stem_and_returns_the_files(tmp_path):
    fig = Figure()
    assert save_figure(fig, tmp_path / "sub" / "roc_t0.5") == [tmp_path / "sub" / "roc_t0.5.png",
                                                               tmp_path / "sub" / "roc_t0.5.pdf"]
    assert save_figure(fig, str(tmp_path / "roc.PDF"), formats=("png",)) == [tmp_path / "roc.PDF"]
    assert (tmp_path / "roc.PDF").read_bytes().startswith(b"%PDF-")
    with pytest.raises(ConfigError, match="'formats' parameter of save_figure"):
        save_figure(fig, tmp_path / "roc", formats=("docx",))
