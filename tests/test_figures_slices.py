"""Figures for failure slices: right number of bars/axes, files written."""

import numpy as np
import pandas as pd
import pytest

from pneumoxai.figures._slices import (
    plot_feature_distributions,
    plot_slice_error_rates,
    plot_slice_examples,
)
from pneumoxai import figures
from pneumoxai.figures._style import ERROR_COLORS
from pneumoxai.errors import ConfigError, DataError
from pneumoxai.slices import find_failure_slices


@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(0)
    n = 200
    frame = pd.DataFrame({
        "contrast": rng.uniform(size=n),
        "noise": rng.normal(size=n),
        "subtype": rng.choice(["normal", "virus"], size=n),
    })
    y = rng.integers(0, 2, size=n)
    wrong = rng.uniform(size=n) < np.where(frame["contrast"] < 0.25, 0.6, 0.05)
    prob = np.where(wrong, 1 - y, y) * 0.8 + 0.1
    images = rng.uniform(size=(n, 12, 12))
    return frame, y, prob, images, find_failure_slices(frame, y, prob)


def test_error_rate_bars(planted, tmp_path):
    _, _, _, _, found = planted
    fig = plot_slice_error_rates(found, top=6, path=tmp_path / "bars")
    ax = fig.axes[0]
    bars = ax.patches
    assert len(bars) == 6
    assert [t.get_text().replace("\n", " ").split(" (n=")[0] for t in ax.get_yticklabels()] == list(
        found["slice"].head(6)
    )
    vermillion = tuple(int(ERROR_COLORS["false_negative"][i:i + 2], 16) / 255 for i in (1, 3, 5))
    is_finding = [bar.get_facecolor()[:3] == pytest.approx(vermillion) for bar in bars]
    assert is_finding == list(found["finding"].head(6))
    overall = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert overall[0].get_xdata()[0] == pytest.approx(found.attrs["overall_error_rate"])
    assert (tmp_path / "bars.png").stat().st_size > 0 and (tmp_path / "bars.pdf").exists()


def test_error_rate_bars_needs_overall_rate_without_attrs(planted):
    found = planted[4].copy()
    found.attrs = {}
    with pytest.raises(DataError, match="overall_rate"):
        plot_slice_error_rates(found)
    assert len(plot_slice_error_rates(found, top=3, overall_rate=0.1).axes[0].patches) == 3


def test_example_panel_with_maps(planted, tmp_path):
    frame, y, prob, images, found = planted
    fig = plot_slice_examples(
        found, frame, images, maps=images[..., ::-1], y_true=y, y_prob=prob, top=3, n_examples=4,
        path=tmp_path / "examples.png",
    )
    assert len(fig.axes) == 12
    first_row = fig.axes[:4]
    assert all(len(ax.images) == 2 for ax in first_row)  # radiograph + overlaid map
    # The top slice is a failure slice with many errors, so its examples are errors.
    assert all(ax.get_title().split("\n")[0] in ("false negative", "false positive") for ax in first_row)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["examples.png"]  # the suffix picks the format


def test_feature_distributions_small_multiples(planted, tmp_path):
    frame, y, prob, _, _ = planted
    frame = frame.assign(extra=np.arange(len(frame)), const=1.0)
    fig = plot_feature_distributions(frame, y, prob, ncols=2, path=tmp_path / "dist")
    assert [ax.get_title() for ax in fig.axes] == ["contrast", "noise", "extra"]
    called = prob >= 0.5
    counts = [np.sum((y == 1) & ~called), np.sum((y == 0) & called), np.sum((y == 1) == called)]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        f"false negative (n={counts[0]})", f"false positive (n={counts[1]})", f"correct (n={counts[2]})",
    ]
    assert (tmp_path / "dist.png").exists()
    box = plot_feature_distributions(frame, y, prob, columns=["contrast"], kind="box")
    assert len(box.axes) == 1
    assert [t.get_text() for t in box.axes[0].get_xticklabels()] == ["FN", "FP", "correct"]


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda f, y, p, i, s: plot_feature_distributions(f, y, p, kind="violin"), ConfigError,
         "'kind' parameter of plot_feature_distributions .* got 'violin'"),
        (lambda f, y, p, i, s: plot_slice_error_rates(s.iloc[:0]), DataError, "empty"),
        (lambda f, y, p, i, s: plot_slice_examples(s, f, i[:5]), DataError, "images must have shape"),
        (lambda f, y, p, i, s: plot_feature_distributions(f, y[:5], p), DataError, "5 labels but there are 200 predictions"),
        (lambda f, y, p, i, s: plot_feature_distributions(f.iloc[:5], y, p), DataError,
         "length mismatch: the frame has 5 rows but y_true and y_prob have 200"),
        (lambda f, y, p, i, s: plot_slice_examples(s, f, i, y_true=y, threshold=-1), DataError,
         "y_prob is required"),
        (lambda f, y, p, i, s: plot_slice_examples(s, f, i, y_true=y, y_prob=p, threshold=-1), ConfigError,
         "^The 'threshold' parameter of plot_slice_examples must be a number in"),
    ],
    ids=["kind", "empty", "image-count", "label-length", "frame-length", "no-prob", "threshold"],
)
def test_figures_reject_bad_input(planted, call, error, match):
    frame, y, prob, images, found = planted
    with pytest.raises(error, match=match):
        call(frame, y, prob, images, found)


def test_slice_maps_panel_per_slice_with_the_reference_first():
    table = pd.DataFrame({"slice": ["a == 1", "b > 2"], "n_errors": [5, 3], "off_lung_shift": [0.25, np.nan],
                          "top_zone_shift": ["off_lung_attention", None]})
    maps = np.stack([np.eye(8), np.fliplr(np.eye(8))])
    fig = figures.plot_slice_maps(table, maps, reference_map=np.zeros((8, 8)), method="HiResCAM (fused)")
    assert fig._suptitle.get_text().endswith("(mean HiResCAM (fused) of the ensemble)")
    axes = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in axes] == ["correct calls (reference)", "a == 1", "b > 2"]
    assert axes[1].get_xlabel() == "5 errors; off-lung +0.25" and axes[2].get_xlabel() == "3 errors"
    np.testing.assert_array_equal(axes[2].images[-1].get_array(), maps[1])
    with pytest.raises(DataError, match=r"mean_maps must have shape \(n_slices=2"):
        figures.plot_slice_maps(table, maps[:1])
