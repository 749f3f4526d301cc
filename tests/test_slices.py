"""Known-answer tests for failure-slice discovery (pneumoxai.slices)."""

import re
import sys
import types

import cv2
import numpy as np
import pandas as pd
import pytest
from scipy.signal import convolve2d
from scipy.stats import fisher_exact
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

from pneumoxai import slices
from pneumoxai.errors import ConfigError, DataError
from pneumoxai.slices import (
    MEMBER_SLICE_COLUMNS,
    SLICE_COLUMNS,
    find_failure_slices,
    image_features,
    member_failure_slices,
    slice_frame,
    slice_mask,
    slice_masks_from_labels,
)



def _probs_from_errors(y, wrong):
    """Confident probabilities that are wrong exactly where ``wrong`` is True."""
    return np.where(wrong, 1 - y, y) * 0.8 + 0.1


def _planted(seed=0, n=400):
    """Errors planted in the lowest contrast quartile (rate 0.5) plus 4% noise errors."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "contrast": rng.uniform(0.05, 0.3, size=n),
        "noise": rng.normal(size=n),
        "subtype": pd.Categorical(rng.choice(["normal", "bacteria", "virus"], size=n)),
    })
    y = rng.integers(0, 2, size=n)
    low = frame["contrast"].to_numpy() <= np.quantile(frame["contrast"], 0.25)
    wrong = rng.uniform(size=n) < np.where(low, 0.5, 0.04)
    return frame, y, _probs_from_errors(y, wrong)


def _columns_of(conditions):
    return {c.column for c in conditions}


# --- find_failure_slices: known answers -----------------------------------------

def test_planted_slice_ranks_first_and_noise_column_is_not_flagged():
    frame, y, p = _planted()
    found = find_failure_slices(frame, y, p)
    top = found.iloc[0]
    assert top["finding"] and top["order"] == 1
    assert re.fullmatch(r"contrast <= 0\.\d+", top["slice"])
    assert top["lift"] > 3
    findings = found[found["finding"]]
    assert all("contrast" in _columns_of(c) for c in findings["conditions"])
    noise_only = found[[("contrast" not in _columns_of(c)) for c in found["conditions"]]]
    assert len(noise_only) > 10 and not noise_only["finding"].any()


def test_planted_conjunction_beats_both_single_features():
    rng = np.random.default_rng(1)
    n = 400
    frame = pd.DataFrame({"a": rng.uniform(size=n), "b": rng.uniform(size=n)})
    both = (frame["a"] <= frame["a"].quantile(0.25)) & (frame["b"] <= frame["b"].quantile(0.25))
    y = rng.integers(0, 2, size=n)
    wrong = rng.uniform(size=n) < np.where(both, 0.8, 0.03)
    found = find_failure_slices(frame, y, _probs_from_errors(y, wrong), min_size=15)
    top = found.iloc[0]
    assert top["finding"] and top["order"] == 2
    assert re.fullmatch(r"a <= 0\.\d+ and b <= 0\.\d+", top["slice"])
    best_single = found.loc[found["order"] == 1, "lift"].max()
    assert top["lift"] > 2 * best_single

    singles_only = find_failure_slices(frame, y, _probs_from_errors(y, wrong), max_order=1)
    assert (singles_only["order"] == 1).all()
    assert singles_only["lift"].max() == pytest.approx(best_single)


def test_pure_noise_gives_no_findings():
    rng = np.random.default_rng(2)
    n = 624
    frame = pd.DataFrame({f"f{k}": rng.normal(size=n) for k in range(12)})
    frame["cluster"] = pd.Categorical(rng.integers(0, 6, size=n))
    y = rng.integers(0, 2, size=n)
    found = find_failure_slices(frame, y, _probs_from_errors(y, rng.uniform(size=n) < 0.12))
    assert len(found) > 1000
    assert not found["finding"].any()
    assert (found["p_value"] < 0.05).any()  # raw p-values would have "found" something


def test_statistics_match_scipy_and_statsmodels():
    frame, y, p = _planted()
    found = find_failure_slices(frame, y, p, alpha=0.1)
    errors = (p >= 0.5).astype(int) != y
    n, total = len(y), int(errors.sum())
    for _, row in found.iloc[[0, 5, 50, -1]].iterrows():
        rows = slice_mask(frame, row["conditions"])
        k, s = int(errors[rows].sum()), int(rows.sum())
        assert (row["size"], row["n_errors"]) == (s, k)
        table = [[k, s - k], [total - k, n - s - total + k]]
        assert row["p_value"] == pytest.approx(fisher_exact(table, alternative="greater").pvalue, rel=1e-9)
        lo, hi = proportion_confint(k, s, alpha=0.1, method="wilson")
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((lo, hi))
        assert row["n_fn"] == int((errors & (y == 1) & rows).sum())
        assert row["fpr"] == pytest.approx(row["n_fp"] / row["n_neg"])
        assert row["lift"] == pytest.approx((k / s) / errors.mean())
    q = multipletests(found["p_value"], method="fdr_bh")[1]
    np.testing.assert_allclose(found["q_value"], q)
    assert (found["finding"] == (found["q_value"] < 0.1)).all()
    assert list(found.columns) == list(SLICE_COLUMNS)
    assert found.attrs["overall_error_rate"] == pytest.approx(errors.mean())


def test_sorted_findings_first_then_score():
    found = find_failure_slices(*_planted())
    assert not (np.diff(found["finding"].to_numpy(dtype=int)) > 0).any()  # never non-finding -> finding
    for flag in (True, False):
        scores = found.loc[found["finding"] == flag, "score"].to_numpy()
        assert (np.diff(scores) <= 1e-12).all()
    np.testing.assert_allclose(found["score"], (found["lift"] - 1) * np.sqrt(found["size"]))


def test_bin_labels_are_readable_and_partition_the_column_and_tails_are_the_outer_eighths():
    frame, y, p = _planted()
    found = find_failure_slices(frame, y, p, max_order=1, n_bins=4, min_size=1)
    contrast = found[found["slice"].str.contains("contrast")]
    assert len(contrast) == 6  # 4 bins + 2 tails
    number = r"0\.\d+"
    bins = contrast[contrast["slice"].str.fullmatch(rf"{number} < contrast <= {number}")]
    lower = contrast[contrast["slice"].str.fullmatch(rf"contrast <= {number}")].sort_values("size")
    upper = contrast[contrast["slice"].str.fullmatch(rf"contrast > {number}")].sort_values("size")
    assert len(bins) == 2 and len(lower) == 2 and len(upper) == 2
    # The bins partition the column; each tail holds 1/8 of it, inside the outer bin.
    assert bins["size"].sum() + lower["size"].iloc[1] + upper["size"].iloc[1] == len(frame)
    n = len(frame)
    assert abs(lower["size"].iloc[0] - n / 8) <= 1 and abs(upper["size"].iloc[0] - n / 8) <= 1
    tail_mask = slice_mask(frame, found.loc[upper.index[0], "conditions"])
    assert (frame["contrast"][tail_mask] > frame["contrast"][~tail_mask].max()).all()
    assert set(found.loc[found["slice"].str.startswith("subtype"), "slice"]) == {
        "subtype == bacteria", "subtype == normal", "subtype == virus"
    }


@pytest.mark.parametrize("n_low", [1, 3, 10])
@pytest.mark.parametrize("n_bins", [2, 4, 8])
def test_a_column_mostly_at_its_maximum_splits_the_rest_off_below_it(n_low, n_bins):
    # Every quantile edge equals the maximum: the bins would be one empty label (the CI failure).
    frame, y, p = _planted()
    frame["cluster"] = 2
    frame.loc[: n_low - 1, "cluster"] = np.arange(n_low) % 2
    found = find_failure_slices(frame, y, p, max_order=1, n_bins=n_bins, min_size=1)
    cluster = found[found["slice"].str.startswith("cluster")].set_index("slice")["size"]
    edge = min(n_low - 1, 1)
    assert cluster.to_dict() == {f"cluster <= {edge}": n_low, f"cluster > {edge}": len(frame) - n_low}


def test_min_size_prunes_slices_and_conjunctions():
    frame, y, p = _planted()
    found = find_failure_slices(frame, y, p, min_size=30)
    assert (found["size"] >= 30).all()
    assert (found["order"] == 2).any()
    assert len(found) < len(find_failure_slices(frame, y, p, min_size=20))


def test_constant_column_is_skipped_with_warning():
    frame, y, p = _planted()
    frame["site"] = "A"
    frame["zero"] = 0.0
    with pytest.warns(UserWarning, match=r"constant.*'site', 'zero'"):
        found = find_failure_slices(frame, y, p)
    assert not found["slice"].str.contains("site|zero").any()


def test_nan_rows_fall_in_no_bin():
    frame, y, p = _planted()
    frame.loc[:99, "noise"] = np.nan
    frame["flag"] = pd.Series([True, False] * 200, dtype=object)
    frame.loc[:49, "flag"] = None
    found = find_failure_slices(frame, y, p, max_order=1, min_size=1)
    noise = found[found["slice"].str.contains("noise")]
    noise_rows = np.zeros(len(frame), dtype=int)
    for conds in noise["conditions"]:
        noise_rows += slice_mask(frame, conds)
    # NaN rows are in no slice; the others in exactly one bin, and the outer eighths in a tail too.
    tails = [noise[noise["slice"].str.startswith(side)]["size"].min() for side in ("noise <=", "noise >")]
    assert (noise_rows[:100] == 0).all() and np.isin(noise_rows[100:], (1, 2)).all()
    assert (noise_rows == 2).sum() == sum(tails) and all(abs(t - 300 / 8) <= 1 for t in tails)
    flag = found[found["slice"].str.startswith("flag")]
    assert set(flag["slice"]) == {"flag == True", "flag == False"}
    assert flag["size"].sum() == len(frame) - 50


def test_tiny_dataset_warns_and_returns_empty_table():
    frame, y, p = _planted(n=30)
    with pytest.warns(UserWarning, match="fewer than 2 \\* min_size"):
        found = find_failure_slices(frame, y, p, min_size=20)
    assert found.empty and list(found.columns) == list(SLICE_COLUMNS)


def test_all_columns_constant_returns_empty_table():
    frame = pd.DataFrame({"c": np.ones(50)})
    y = np.tile([0, 1], 25)
    with pytest.warns(UserWarning, match="'c'"):
        found = find_failure_slices(frame, y, _probs_from_errors(y, y == 1))
    assert found.empty and list(found.columns) == list(SLICE_COLUMNS)


_F, _Y, _P = _planted(n=60)


@pytest.mark.parametrize(
    "frame, y_true, y_prob, kwargs, error, match",
    [
        (_F, _Y[:-1], _P, {}, DataError, "59 labels but there are 60"),
        (_F, _Y, np.where(np.arange(60) == 3, np.nan, _P), {}, DataError, "NaN"),
        (_F, np.where(np.arange(60) == 0, 2, _Y), _P, {}, DataError, r"only 0 \(NORMAL\) and 1"),
        (_F, _Y, _P * 2, {}, DataError, r"probabilities in \[0, 1\]"),
        (_F.iloc[:0], _Y[:0], _P[:0], {}, DataError, "empty"),
        (_F, _Y, _P, {"min_size": 0}, ConfigError,
         r"The 'min_size' parameter of find_failure_slices must be an int >= 1; got 0\."),
        (_F, _Y, _P, {"min_size": True}, ConfigError, "'min_size' .* got True"),
        (_F, _Y, _P, {"max_order": 3}, ConfigError, "'max_order' .* must be one of 1, 2; got 3"),
        (_F, _Y, _P, {"n_bins": 1}, ConfigError, r"'n_bins' .* must be an int in \[2, 1000\]; got 1"),
        (_F, _Y, _P, {"alpha": 1.5}, ConfigError, r"'alpha' .* must be a number in \(0, 1\); got 1.5"),
        (_F, _Y, _P, {"threshold": "0.5"}, ConfigError, r"'threshold' .* must be a number in \[0, 1\]; got '0.5'"),
        (_F.to_numpy(), _Y, _P, {}, DataError, "pandas DataFrame"),
        (pd.concat([_F, _F[["noise"]]], axis=1), _Y, _P, {}, DataError, r"duplicated column names: \['noise'\]"),
    ],
    ids=["length", "nan-prob", "y-not-binary", "prob-range", "empty", "min-size", "min-size-bool", "max-order",
         "n-bins", "alpha", "threshold-str", "not-frame", "duplicate-column"],
)
def test_find_failure_slices_rejects_bad_input(frame, y_true, y_prob, kwargs, error, match):
    with pytest.raises(error, match=match):
        find_failure_slices(frame, y_true, y_prob, **kwargs)


# --- member_failure_slices --------------------------------------------------------

def test_member_slices_and_whether_the_ensemble_fixes_them():
    rng = np.random.default_rng(3)
    n = 400
    frame = pd.DataFrame({"contrast": rng.uniform(size=n), "noise": rng.normal(size=n)})
    y = rng.integers(0, 2, size=n)
    low = frame["contrast"].to_numpy() <= frame["contrast"].quantile(0.25)
    high = frame["contrast"].to_numpy() > frame["contrast"].quantile(0.75)
    background = rng.uniform(size=(n, 3)) < 0.03

    def run(bg):
        wrong = np.column_stack([low | bg[:, 0], high | bg[:, 1], bg[:, 2]])
        probs = np.column_stack([_probs_from_errors(y, wrong[:, j]) for j in range(3)])
        return member_failure_slices(frame, y, probs, names=["a", "b", "c"], max_order=1)

    # Background errors only in mid contrast: the two healthy members out-vote the failing one.
    out = run(background & ~(low | high)[:, None])
    assert list(out.columns) == list(MEMBER_SLICE_COLUMNS)
    tops = out.groupby("member", sort=False).head(1).set_index("member")
    assert list(tops.index) == ["a", "b"]  # member c has no failure slice
    assert tops.loc["a", "slice"].startswith("contrast <=")
    assert tops.loc["b", "slice"].startswith("contrast >")
    assert (tops["error_rate"] == 1.0).all() and (tops["ensemble_error_rate"] == 0.0).all()
    assert tops["ensemble_fixes"].all()

    # Background errors everywhere: in a's slice the ensemble now fails whenever b or c
    # slips, so the error rate drops from 100% but a significant excess remains.
    tops = run(background).groupby("member", sort=False).head(1)
    assert (tops["ensemble_error_rate"] < 0.15).all()
    assert (tops["ensemble_p_value"] < 0.05).all() and not tops["ensemble_fixes"].any()

    # All members fail on the same slice: the ensemble keeps the failure.
    same = np.column_stack([_probs_from_errors(y, low)] * 3)
    top = member_failure_slices(frame, y, same, max_order=1).groupby("member").head(1)
    assert list(top["member"]) == ["member_0", "member_1", "member_2"]
    assert not top["ensemble_fixes"].any()
    assert (top["ensemble_error_rate"] == top["error_rate"]).all()


@pytest.mark.parametrize(
    "probs, names, match",
    [
        (np.zeros(60), None, "n_members"),
        (np.zeros((60, 2)), ["a"], "names has 1"),
        (np.zeros((59, 2)), None, "member_probs has 59 rows"),
        (np.full((60, 2), np.nan), None, "without NaN"),
    ],
    ids=["1d", "names", "rows", "nan"],
)
def test_member_failure_slices_rejects_bad_input(probs, names, match):
    with pytest.raises(DataError, match=match):
        member_failure_slices(_F, _Y, probs, names=names)


# --- image_features: agreement with direct OpenCV / NumPy ---------------------------

def _random_images(n=3, h=40, w=36, seed=4):
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.uniform(size=(n * h, w)), (0, 0), 2).reshape(n, h, w)
    return np.clip(base + rng.normal(0, 0.02, size=(n, h, w)), 0, 1)


def _masks(images):
    return images > 0.5


def test_features_match_direct_opencv_and_numpy():
    images = _random_images()
    feats = image_features(images, masks=_masks(images))
    for i, img in enumerate(images):
        u8 = np.rint(img * 255).astype(np.uint8)
        row = feats.iloc[i]
        assert row["sharpness"] == pytest.approx(cv2.Laplacian(u8, cv2.CV_64F).var(), rel=1e-9)
        assert row["edge_density"] == pytest.approx(np.count_nonzero(cv2.Canny(u8, 50, 150)) / u8.size)
        hist = np.bincount(u8.ravel(), minlength=256) / u8.size
        assert row["entropy"] == pytest.approx(-(hist[hist > 0] * np.log2(hist[hist > 0])).sum())
        kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]])
        conv = np.abs(convolve2d(img, kernel, mode="valid")).sum()
        sigma = np.sqrt(np.pi / 2) * conv / (6 * (img.shape[1] - 2) * (img.shape[0] - 2))
        assert row["noise_sigma"] == pytest.approx(sigma)
        p5, p95 = np.percentile(img, [5, 95])
        assert row["contrast_p5_p95"] == pytest.approx(p95 - p5)
        assert row["brightness"] == pytest.approx(img.mean())
        assert row["contrast_std"] == pytest.approx(img.std())
        assert row["dynamic_range"] == pytest.approx(img.max() - img.min())
        assert row["lung_area_fraction"] == pytest.approx(_masks(images)[i].mean())
    assert list(feats.columns) == list(slices.FEATURE_COLUMNS)


def test_rgb_and_float32_inputs_give_the_same_features():
    images = _random_images()
    gray = image_features(images, masks=_masks(images))
    rgb = image_features(np.repeat(images[..., None], 3, axis=-1).astype(np.float32), masks=_masks(images))
    pd.testing.assert_frame_equal(gray, rgb, atol=1e-5)


def test_immerkaer_noise_recovers_known_sigma():
    rng = np.random.default_rng(5)
    ramp = np.linspace(0.3, 0.7, 128)[None, :] * np.ones((128, 1))  # the mask cancels linear ramps
    images = np.clip(ramp + rng.normal(0, 0.03, size=(2, 128, 128)), 0, 1)
    feats = image_features(images, masks=np.ones(images.shape, dtype=bool))
    np.testing.assert_allclose(feats["noise_sigma"], 0.03, rtol=0.05)


def test_corner_marker_border_and_asymmetry_known_answers():
    h = w = 64
    marker = np.full((h, w), 0.4)
    marker[:4, :4] = 1.0  # 16 bright pixels in the top-left 8x8 corner patch
    border = np.full((h, w), 0.6)
    border[:5], border[-5:], border[:, :5], border[:, -5:] = 0, 0, 0, 0
    gradient = np.tile(np.linspace(0.2, 0.8, w), (h, 1))
    feats = image_features(np.stack([marker, border, gradient]), masks=np.ones((3, h, w), dtype=bool))
    assert feats.loc[0, "corner_marker"] == pytest.approx(16 / (4 * 8 * 8))
    assert feats.loc[1, "corner_marker"] == 0
    assert feats.loc[0, "border_fraction"] == 0
    assert feats.loc[1, "border_fraction"] == pytest.approx(4 * 5 / (h + w))
    left, right = gradient[:, :32].mean(), gradient[:, 32:].mean()
    assert feats.loc[2, "lr_asymmetry"] == pytest.approx(abs(left - right) / gradient.mean())
    left, right = marker[:, :32].mean(), marker[:, 32:].mean()
    assert feats.loc[0, "lr_asymmetry"] == pytest.approx(abs(left - right) / marker.mean())


def test_lung_masks_come_from_lung_mask(monkeypatch):
    images = _random_images(n=2)
    fake = types.ModuleType("pneumoxai.lungs")
    fake.lung_mask = lambda imgs: np.ones(np.shape(imgs)[:3], dtype=bool)
    monkeypatch.setitem(sys.modules, "pneumoxai.lungs", fake)
    assert (image_features(images)["lung_area_fraction"] == 1.0).all()


@pytest.mark.parametrize(
    "images, masks, match",
    [
        (np.full((2, 16, 16), 255.0), None, r"scaled to \[0, 1\]"),
        (np.zeros((16, 16)), None, "shape"),
        (np.zeros((2, 4, 16)), None, "at least 8x8"),
        (np.full((2, 16, 16), np.nan), None, "NaN"),
        (np.zeros((2, 16, 16)), np.zeros((2, 8, 8), dtype=bool), "masks must have shape"),
    ],
    ids=["range", "ndim", "too-small", "nan", "mask-shape"],
)
def test_image_features_rejects_bad_input(images, masks, match):
    with pytest.raises(DataError, match=match):
        image_features(images, masks=masks if masks is not None else np.zeros(images.shape[:3], bool))


def test_features_on_a_few_real_radiographs(real_data_root):
    test = real_data_root / "test"
    paths = sorted((test / "NORMAL").glob("*.jpeg"))[:2] + sorted((test / "PNEUMONIA").glob("*.jpeg"))[:2]
    images = np.stack([cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in paths]) / 255.0
    feats = image_features(images, masks=images > 0.4)
    assert np.isfinite(feats.to_numpy()).all()
    assert feats["entropy"].between(4, 8).all()  # real radiographs use most of the grey levels
    assert feats["brightness"].between(0.1, 0.9).all()
    assert (feats["sharpness"] > 0).all() and (feats["noise_sigma"] < 0.1).all()


# --- slice_frame ---------------------------------------------------------------------

def _meta(n=40):
    return pd.DataFrame({
        "path": [f"img{i}.jpeg" for i in range(n)],
        "split": "test",
        "label": np.tile([0, 1], n // 2),
        "label_name": np.tile(["NORMAL", "PNEUMONIA"], n // 2),
        "patient_id": [f"p{i // 4}" if i < 20 else f"q{i}" for i in range(n)],
        "subtype": np.tile(["normal", "bacteria"], n // 2),
    }, index=np.arange(100, 100 + n))


def test_slice_frame_builds_all_column_kinds():
    meta = _meta()
    rng = np.random.default_rng(6)
    member_probs = rng.uniform(size=(40, 3))
    emb = np.concatenate([rng.normal(0, 0.1, (20, 5)), rng.normal(5, 0.1, (20, 5))])
    images = _random_images(n=40, h=16, w=16)
    frame = slice_frame(
        meta, images=images, masks=_masks(images), member_probs=member_probs, embeddings=emb,
        zone_scores={"off_lung_attention": np.linspace(0, 1, 40)}, n_clusters=2, seed=0,
    )
    assert len(frame) == 40 and list(frame.index) == list(range(40))
    assert frame["subtype"].dtype == "category"
    assert list(frame["patient_image_count"].iloc[[0, 19, 20]]) == [4, 4, 1]
    np.testing.assert_allclose(frame["member_std"], member_probs.std(axis=1))
    conf = np.maximum(member_probs.mean(1), 1 - member_probs.mean(1))
    lower = frame["confidence_bin"].astype(str).str.split("-").str[0].astype(float).to_numpy()
    assert ((conf >= lower) & (conf <= lower + 0.1 + 1e-12)).all()
    assert set(frame.columns) >= set(slices.FEATURE_COLUMNS) | {"off_lung_attention", "cluster"}
    assert frame["cluster"].dtype == "category"
    assert frame["cluster"].iloc[:20].nunique() == 1 and frame["cluster"].iloc[20:].nunique() == 1
    assert frame["cluster"].iloc[0] != frame["cluster"].iloc[-1]
    y = meta["label"].to_numpy()
    with pytest.warns(UserWarning, match="'border_fraction', 'corner_marker'"):  # none in noise images
        found = find_failure_slices(frame, y, member_probs.mean(1), min_size=5)
    assert found["slice"].str.contains("cluster == ").any()


@pytest.mark.parametrize(
    "meta, kwargs, error, match",
    [
        (_meta().drop(columns="subtype"), {}, DataError, "subtype"),
        (_meta().iloc[:0], {}, DataError, "empty"),
        (_meta(), {"member_probs": np.zeros((39, 2))}, DataError, "member_probs has 39 rows"),
        (_meta(), {"embeddings": np.zeros((40, 2)), "n_clusters": 41}, ConfigError,
         r"The 'n_clusters' parameter of slice_frame must be in \[1, n_samples=40\]; got 41\."),
    ],
    ids=["missing-column", "empty", "length", "clusters"],
)
def test_slice_frame_rejects_bad_input(meta, kwargs, error, match):
    with pytest.raises(error, match=match):
        slice_frame(meta, **kwargs)


def test_slice_masks_from_labels_rebuild_every_slice_from_the_frame_read_back(tmp_path):
    """What the report does: the labels of failure_slices.csv and slice_features.csv give each slice's rows."""
    frame, y, p = _planted()
    frame["cluster"] = pd.Categorical(np.random.default_rng(1).integers(0, 4, len(frame)))  # numbers in a CSV
    found = find_failure_slices(frame, y, p, min_size=20, n_bins=5)
    frame.to_csv(tmp_path / "features.csv", index=False)
    read_back = pd.read_csv(tmp_path / "features.csv")
    assert read_back["cluster"].dtype.kind == "i" and found["slice"].str.contains("cluster == ").any()
    masks = slice_masks_from_labels(read_back, found["slice"], n_bins=5)
    for label, conditions in zip(found["slice"], found["conditions"]):
        np.testing.assert_array_equal(masks[label], slice_mask(frame, conditions), err_msg=label)
    assert slice_masks_from_labels(read_back, ["contrast <= 0.1 and noise > 9"], n_bins=5) == {
        "contrast <= 0.1 and noise > 9": None}                  # edges no search made: not guessed
    with pytest.raises(ValueError, match="The 'n_bins' parameter of slice_masks_from_labels must be"):
        slice_masks_from_labels(read_back, [], n_bins=1)
