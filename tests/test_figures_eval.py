"""Evaluation figures: expected axes and lines, and PNGs written where asked."""

import numpy as np
import pytest
from matplotlib.figure import Figure
from scipy import special

from pneumoxai._figures_eval import (
    plot_confusion_matrices,
    plot_diversity,
    plot_ensemble_size,
    plot_pr,
    plot_reliability,
    plot_roc,
    plot_threshold_analysis,
)
from pneumoxai.ensemble import diversity, ensemble_size_curve
from pneumoxai.errors import ConfigError, DataError
from pneumoxai.metrics import choose_threshold

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
