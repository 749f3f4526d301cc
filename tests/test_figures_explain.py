"""Explanation figures: the right panels, colours and titles, files written."""

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba

from pneumoxai.figures._explanations import plot_explanation_gallery, plot_mean_maps, plot_zone_attention
from pneumoxai.figures._style import DIVERGING_CMAP, ERROR_COLORS, SEQUENTIAL_CMAP
from pneumoxai.errors import ConfigError, DataError

# Two false negatives (0, 1), one false positive (4), three correct calls (2, 3, 5).
Y = np.array([1, 1, 1, 0, 0, 0])
P = np.array([0.30, 0.10, 0.90, 0.20, 0.80, 0.40])


@pytest.fixture
def arrays():
    rng = np.random.default_rng(0)
    images = rng.random((6, 10, 10, 3))
    cam = rng.random((6, 10, 10))
    shap = rng.normal(size=(6, 10, 10))
    return images, cam, shap


def test_gallery_rows_columns_titles_and_files(arrays, tmp_path):
    images, cam, shap = arrays
    fig = plot_explanation_gallery(images, {"Grad-CAM": cam, "Grad-CAM++": cam, "SHAP": shap}, Y, P,
                                   n_per_group=2, path=tmp_path / "gallery.png")
    axes = np.array(fig.axes).reshape(-1, 4)
    assert axes.shape == (5, 4)  # 2 FN + 1 FP + 2 correct rows; image + 3 maps
    titles = [ax.get_title() for ax in axes[:, 0]]
    assert titles[:3] == ["FN  label 1  p=0.10", "FN  label 1  p=0.30", "FP  label 0  p=0.80"]
    assert all(t.startswith("correct") for t in titles[3:])
    assert to_rgba(axes[0, 0].title.get_color()) == to_rgba(ERROR_COLORS["false_negative"])
    assert [ax.get_title() for ax in axes[0, 1:]] == ["Grad-CAM", "Grad-CAM++", "SHAP (signed)"]
    shap_overlay = axes[0, 3].images[-1]
    assert shap_overlay.get_cmap().name == DIVERGING_CMAP
    assert shap_overlay.get_clim()[0] == -shap_overlay.get_clim()[1]
    assert axes[0, 1].images[-1].get_cmap().name == SEQUENTIAL_CMAP
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gallery.png"]  # the suffix picks the format


def test_mean_maps_per_group(arrays, tmp_path):
    images, cam, _ = arrays
    fig = plot_mean_maps(cam, Y, P, images=images, path=tmp_path / "mean")
    assert [ax.get_title() for ax in fig.axes] == [
        "false negative (n=2)", "false positive (n=1)", "correct (n=3)",
    ]
    np.testing.assert_allclose(fig.axes[0].images[-1].get_array(), cam[[0, 1]].mean(axis=0))
    assert (tmp_path / "mean.png").exists() and (tmp_path / "mean.pdf").exists()
    no_fp = plot_mean_maps(cam, Y, np.where(Y == 1, P, 0.0))
    assert not no_fp.axes[1].axison and no_fp.axes[1].get_title() == "false positive (n=0)"


def test_zone_attention_bars(tmp_path):
    columns = ["right_upper", "left_lower", "off_lung_attention"]
    share = np.tile([0.5, 0.25, 0.25], (6, 1))
    share[1] = [0.1, 0.1, 0.8]
    share[3] = np.nan  # a map without positive mass is left out
    fig = plot_zone_attention(pd.DataFrame(share, columns=columns), Y, P, path=tmp_path / "zones")
    ax = fig.axes[0]
    assert len(ax.patches) == 3 * 3
    fn_bars = [b for b in ax.patches if b.get_facecolor() == to_rgba(ERROR_COLORS["false_negative"])]
    np.testing.assert_allclose([b.get_height() for b in fn_bars], [0.3, 0.175, 0.525])
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["false negative (n=2)", "false positive (n=1)", "correct (n=2)"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["right upper", "left lower", "off lung attention"]
    assert (tmp_path / "zones.png").exists()


@pytest.mark.parametrize("call, match", [
    (lambda a: plot_explanation_gallery(a[0], {"cam": a[1][:3]}, Y, P), "must have shape"),
    (lambda a: plot_explanation_gallery(a[0], {}, Y, P), "maps is empty"),
    (lambda a: plot_explanation_gallery(a[0][:4], {"cam": a[1]}, Y, P), "images must have shape"),
    (lambda a: plot_mean_maps(a[1], Y[:5], P[:5]), "maps must have shape"),
    (lambda a: plot_mean_maps(a[1], Y * 2, P), "only 0 \\(NORMAL\\) and 1"),
    (lambda a: plot_zone_attention(pd.DataFrame(np.ones((2, 3))), Y, P), "rows"),
    (lambda a: plot_zone_attention(pd.DataFrame(np.full((6, 3), np.nan)), Y, P), "no finite rows"),
], ids=["map shape", "no maps", "images", "mean maps", "labels", "table rows", "all NaN"])
def test_bad_inputs(arrays, call, match):
    with pytest.raises(DataError, match=match):
        call(arrays)



@pytest.mark.parametrize("plot", [plot_mean_maps, plot_zone_attention])
def test_threshold_error_names_the_function(arrays, plot):
    first = arrays[1] if plot is plot_mean_maps else pd.DataFrame(np.ones((6, 2)))
    with pytest.raises(ConfigError, match=f"^The 'threshold' parameter of {plot.__name__} must be"):
        plot(first, Y, P, threshold=1.5)
