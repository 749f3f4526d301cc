"""Known-answer tests of pneumoxai.metrics against scikit-learn, scipy and hand formulas."""

import sys
from fractions import Fraction

import numpy as np
import pytest
from scipy import special, stats
from sklearn import metrics as skm

from pneumoxai.errors import ConfigError, DataError
from pneumoxai.metrics import (
    METRICS,
    REPORTED_ORIGIN,
    _bootstrap_ci,
    _bootstrap_weights,
    _point_metrics,
    _weighted_metrics,
    choose_threshold,
    compare,
    evaluate,
    expected_calibration_error,
    reliability_bins,
    results_table,
    table_to_markdown,
)


def _data(n=200, seed=0, ties=False):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = special.expit(1.5 * y - 0.75 + rng.normal(size=n))
    return y, (np.round(p, 1) if ties else p)


def _sklearn_metrics(y, p, t):
    pred = (p >= t).astype(int)
    return {
        "accuracy": skm.accuracy_score(y, pred),
        "precision": skm.precision_score(y, pred),
        "recall": skm.recall_score(y, pred),
        "specificity": skm.recall_score(y, pred, pos_label=0),
        "f1": skm.f1_score(y, pred),
        "roc_auc": skm.roc_auc_score(y, p),
        "average_precision": skm.average_precision_score(y, p),
        "mcc": skm.matthews_corrcoef(y, pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
        "brier": skm.brier_score_loss(y, p),
    }


def _ece_by_hand(y, p, n_bins=10):
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        in_bin = (p >= lo) & ((p < hi) if b < n_bins - 1 else (p <= hi))
        if in_bin.any():
            total += in_bin.sum() / p.size * abs(p[in_bin].mean() - y[in_bin].mean())
    return total


# ---------------------------------------------------------------------------- evaluate


@pytest.mark.parametrize("threshold", [0.5, 0.37])
def test_evaluate_point_values_equal_sklearn(threshold):
    y, p = _data()
    res = evaluate(y, p, threshold=threshold, n_boot=0)
    for name, expected in _sklearn_metrics(y, p, threshold).items():
        assert res[name] == pytest.approx(expected, abs=1e-12), name
    assert res["ece"] == pytest.approx(_ece_by_hand(y, p), abs=1e-12)
    assert res["confusion_matrix"] == skm.confusion_matrix(y, (p >= threshold).astype(int)).tolist()
    assert (res["threshold"], res["n"], res["ci"]) == (threshold, 200, {})


def test_bootstrap_metrics_equal_sklearn_on_the_resampled_data():
    # A resample is the data with integer multiplicities; the vectorised metrics on those
    # weights must equal scikit-learn on the explicitly repeated data (ties included).
    y, p = _data(n=60, seed=1, ties=True)
    weights = np.random.default_rng(2).integers(0, 4, size=(3, y.size)).astype(float)
    got = _weighted_metrics(y, p, 0.5, weights)
    for row, w in enumerate(weights.astype(int)):
        expected, _ = _point_metrics(np.repeat(y, w), np.repeat(p, w), 0.5)
        for name in METRICS:
            assert got[name][row] == pytest.approx(expected[name], abs=1e-12), name


def test_bootstrap_resamples_are_stratified_by_class_and_patient():
    y = np.array([0, 0, 0, 1, 1, 1, 1, 0])
    groups = np.array(["a", "a", "b", "b", "c", "d", "d", "e"])  # b is mixed, counts as positive
    w = _bootstrap_weights(y, None, 50, np.random.default_rng(0))
    np.testing.assert_array_equal(w[:, y == 0].sum(axis=1), 4)
    np.testing.assert_array_equal(w[:, y == 1].sum(axis=1), 4)
    w = _bootstrap_weights(y, groups, 50, np.random.default_rng(0))
    # Every image of a patient shares that patient's multiplicity.
    np.testing.assert_array_equal(w[:, 0], w[:, 1])
    np.testing.assert_array_equal(w[:, 2], w[:, 3])
    np.testing.assert_array_equal(w[:, 5], w[:, 6])
    # Two negative patients (a, e) and three positive ones (b, c, d) in every resample.
    np.testing.assert_array_equal(w[:, 0] + w[:, 7], 2)
    np.testing.assert_array_equal(w[:, 2] + w[:, 4] + w[:, 5], 3)


def test_patient_bootstrap_on_duplicated_images_equals_image_bootstrap_of_originals():
    y, p = _data(n=80, seed=3)
    image_level = evaluate(y, p, n_boot=200, seed=5)["ci"]
    y3, p3, patients = np.repeat(y, 3), np.repeat(p, 3), np.repeat(np.arange(y.size), 3)
    grouped = evaluate(y3, p3, n_boot=200, seed=5, groups=patients)["ci"]
    naive = evaluate(y3, p3, n_boot=200, seed=5)["ci"]
    for name in METRICS:
        assert grouped[name] == pytest.approx(image_level[name], abs=1e-12), name
    # Treating the three copies as independent images understates the uncertainty.
    naive_width = naive["roc_auc"][1] - naive["roc_auc"][0]
    assert naive_width < 0.7 * (grouped["roc_auc"][1] - grouped["roc_auc"][0])


def test_bootstrap_ci_covers_true_auc_in_simulation():
    # Binormal scores with unit variances and mean shift d have AUC = Phi(d / sqrt(2)).
    # Calls the interval routine of evaluate directly: scikit-learn's point metrics would
    # make 200 simulations slow, and evaluate's "ci" is this routine's output.
    d, n_per_class, n_sim = 1.0, 40, 200
    true_auc = stats.norm.cdf(d / np.sqrt(2))
    rng = np.random.default_rng(11)
    y = np.repeat([0, 1], n_per_class)
    covered = 0
    for _ in range(n_sim):
        p = special.expit(rng.normal(size=y.size) + d * y)
        low, high = _bootstrap_ci(y, p, 0.5, 200, 0.95, rng, None)["roc_auc"]
        covered += low <= true_auc <= high
    assert 0.90 <= covered / n_sim <= 0.99


def test_bootstrap_is_reproducible_and_leaves_global_rng_alone():
    y, p = _data(n=50)
    state = np.random.get_state()[1].copy()
    first = evaluate(y, p, n_boot=100, seed=7)["ci"]
    assert evaluate(y, p, n_boot=100, seed=7)["ci"] == first
    assert evaluate(y, p, n_boot=100, seed=8)["ci"] != first
    np.testing.assert_array_equal(np.random.get_state()[1], state)


def test_patient_bootstrap_warns_about_single_class_resamples():
    # One patient holds every NORMAL image together with a PNEUMONIA one; resamples
    # that miss that patient have no NORMAL image and cannot give an AUC.
    y = np.array([0, 0, 1, 1, 1, 1])
    p = np.array([0.2, 0.4, 0.6, 0.7, 0.8, 0.3])
    groups = np.array([1, 1, 1, 2, 3, 4])
    with pytest.warns(UserWarning, match="single class"):
        res = evaluate(y, p, n_boot=100, groups=groups)
    assert np.isfinite(res["ci"]["roc_auc"]).all()


# ---------------------------------------------------------------------------- thresholds


def test_choose_threshold_youden_and_f1_are_the_best_candidates():
    y, p = _data(n=120, seed=4, ties=True)
    candidates = np.unique(p)
    youden = [skm.recall_score(y, p >= t) + skm.recall_score(y, p >= t, pos_label=0) - 1 for t in candidates]
    f1 = [skm.f1_score(y, p >= t) for t in candidates]
    assert choose_threshold(y, p) == candidates[np.flatnonzero(np.isclose(youden, max(youden)))].max()
    assert choose_threshold(y, p, method="f1") == candidates[np.flatnonzero(np.isclose(f1, max(f1)))].max()


@pytest.mark.parametrize("target", [0.5, 0.9, 1.0])
def test_choose_threshold_sensitivity_is_highest_reaching_target(target):
    y, p = _data(n=120, seed=4)
    t = choose_threshold(y, p, method="sensitivity", target=target)
    assert skm.recall_score(y, p >= t) >= target
    higher = np.unique(p[p > t])
    assert higher.size == 0 or skm.recall_score(y, p >= higher.min()) < target


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "sensitivity"},
         r"The 'target' parameter of choose_threshold must be a number in \(0, 1\]; got None\."),
        ({"method": "sensitivity", "target": 0.0}, "'target' parameter .* got 0.0"),
        ({"method": "youden", "target": 0.9}, "only used with method='sensitivity'.*; got 0.9"),
        ({"method": "precision"}, "'method' parameter of choose_threshold must be one of 'youden', .*; got 'precision'"),
    ],
)
def test_choose_threshold_rejects_bad_options(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        choose_threshold([0, 1], [0.2, 0.8], **kwargs)


# ---------------------------------------------------------------------------- compare


def _delong_by_hand(y, scores):
    """Structural components (placement values) of DeLong et al. (1988), by loops."""
    pos = [s[y == 1] for s in scores]
    neg = [s[y == 0] for s in scores]
    m, n = len(pos[0]), len(neg[0])

    def psi(a, b):
        return 1.0 if a > b else 0.5 if a == b else 0.0

    v10 = [[sum(psi(x, yy) for yy in ng) / n for x in ps] for ps, ng in zip(pos, neg)]
    v01 = [[sum(psi(x, yy) for x in ps) / m for yy in ng] for ps, ng in zip(pos, neg)]
    aucs = [float(np.mean(v)) for v in v10]
    k = len(scores)
    cov = np.empty((k, k))
    for r in range(k):
        for s in range(k):
            s10 = sum((v10[r][i] - aucs[r]) * (v10[s][i] - aucs[s]) for i in range(m)) / (m - 1)
            s01 = sum((v01[r][j] - aucs[r]) * (v01[s][j] - aucs[s]) for j in range(n)) / (n - 1)
            cov[r, s] = s10 / m + s01 / n
    return aucs, cov


def test_delong_equals_placement_value_formula_on_a_tiny_case():
    y = np.array([0, 1, 0, 1, 1, 0, 1])
    p_a = np.array([0.1, 0.8, 0.4, 0.4, 0.9, 0.3, 0.35])  # ties across classes
    p_b = np.array([0.5, 0.6, 0.2, 0.7, 0.5, 0.1, 0.9])
    (auc_a, auc_b), cov = _delong_by_hand(y, [p_a, p_b])
    res = compare(y, p_a, p_b)
    assert res["auc_a"] == pytest.approx(auc_a) == pytest.approx(skm.roc_auc_score(y, p_a))
    assert res["auc_b"] == pytest.approx(auc_b)
    assert res["auc_var_a"] == pytest.approx(cov[0, 0])
    assert res["auc_var_b"] == pytest.approx(cov[1, 1])
    assert res["auc_cov"] == pytest.approx(cov[0, 1])
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    assert res["auc_var"] == pytest.approx(var)
    z = (auc_a - auc_b) / np.sqrt(var)
    assert res["auc_z"] == pytest.approx(z)
    assert res["auc_p"] == pytest.approx(2 * stats.norm.sf(abs(z)))


def test_delong_variance_exact_fraction():
    # Positives 0.8, 0.4; negatives 0.6, 0.2: V10 = (1, 1/2), V01 = (1/2, 1),
    # S10 = S01 = 1/8, so Var(AUC) = 1/8 / 2 + 1/8 / 2 = 1/8.
    res = compare([1, 1, 0, 0], [0.8, 0.4, 0.6, 0.2], [0.9, 0.1, 0.5, 0.3])
    assert res["auc_a"] == 0.75
    assert Fraction(res["auc_var_a"]).limit_denominator(1000) == Fraction(1, 8)


@pytest.mark.filterwarnings("ignore:The DeLong variance")  # A separates the classes perfectly
def test_mcnemar_counts_and_exact_binomial_p():
    y = np.array([1] * 10 + [0] * 10)
    p_a = np.where(y == 1, 0.9, 0.1)
    p_a[:2] = 0.2  # A misses two positives
    p_b = p_a.copy()
    p_b[2:8] = 0.3  # B misses those two and six more
    res = compare(y, p_a, p_b)
    counts = [res[k] for k in ("n_both_correct", "n_only_a_wrong", "n_only_b_wrong", "n_both_wrong")]
    assert counts == [12, 0, 6, 2]
    assert res["mcnemar_exact"] is True
    assert res["mcnemar_p"] == pytest.approx(stats.binomtest(0, 6, 0.5).pvalue)


def test_mcnemar_uses_corrected_chi_square_from_25_discordant():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p_a = np.where(rng.uniform(size=300) < 0.85, y, 1 - y) * 0.8 + 0.1
    p_b = np.where(rng.uniform(size=300) < 0.75, y, 1 - y) * 0.8 + 0.1
    res = compare(y, p_a, p_b)
    b, c = res["n_only_b_wrong"], res["n_only_a_wrong"]
    assert b + c >= 25 and res["mcnemar_exact"] is False
    chi2 = (abs(b - c) - 1) ** 2 / (b + c)
    assert res["mcnemar_statistic"] == pytest.approx(chi2)
    assert res["mcnemar_p"] == pytest.approx(stats.chi2.sf(chi2, 1))


def test_compare_identical_models_warns_and_gives_nan():
    y, p = _data(n=40)
    with pytest.warns(UserWarning, match="variance of the AUC difference is zero"):
        res = compare(y, p, p)
    assert res["auc_diff"] == 0 and np.isnan(res["auc_p"])
    assert res["mcnemar_p"] == 1.0


@pytest.mark.filterwarnings("ignore:The DeLong variance")  # same ranking by construction
def test_compare_per_model_thresholds():
    y = np.array([0, 0, 1, 1])
    res = compare(y, [0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4], threshold=(0.25, 0.5))
    assert (res["n_only_b_wrong"], res["threshold_a"], res["threshold_b"]) == (2, 0.25, 0.5)


# ---------------------------------------------------------------------------- calibration


def test_reliability_bins_edges_and_counts():
    y = np.array([0, 1, 1, 0, 1])
    p = np.array([0.0, 0.1, 0.15, 0.95, 1.0])
    bins = reliability_bins(y, p)
    assert bins["count"].tolist() == [1, 2, 0, 0, 0, 0, 0, 0, 0, 2]
    assert bins.loc[1, "mean_predicted"] == pytest.approx(0.125)
    assert bins.loc[9, "observed_frequency"] == 0.5
    assert np.isnan(bins.loc[2, "mean_predicted"])
    assert expected_calibration_error(y, p) == pytest.approx(_ece_by_hand(y, p))


# ---------------------------------------------------------------------------- tables


def test_results_table_rows_cis_and_reference():
    y, p = _data(n=60)
    _, q = _data(n=60, seed=9)
    table = results_table(y, {"ens": p, "m1": q}, threshold={"ens": 0.4, "m1": 0.5}, n_boot=100)
    assert list(table.index) == ["ens", "m1", "origin (reported)"]
    assert table["source"].tolist() == ["measured", "measured", "reported"]
    ref = evaluate(y, p, threshold=0.4, n_boot=100)
    for name in METRICS:
        assert table.loc["ens", name] == ref[name]
        assert (table.loc["ens", f"{name}_low"], table.loc["ens", f"{name}_high"]) == ref["ci"][name]
    reported = table.loc["origin (reported)"]
    assert reported[list(REPORTED_ORIGIN)].to_dict() == REPORTED_ORIGIN
    assert reported[["specificity", "mcc", "roc_auc_low", "threshold"]].isna().all()
    assert table.loc["m1", "threshold"] == 0.5


def test_results_table_threshold_dict_must_name_every_model():
    with pytest.raises(ConfigError, match=r"missing \['b'\]"):
        results_table([0, 1], {"a": [0.2, 0.8], "b": [0.3, 0.7]}, threshold={"a": 0.5}, n_boot=0)


def test_table_to_markdown_without_tabulate(monkeypatch):
    monkeypatch.setitem(sys.modules, "tabulate", None)  # importing it would now fail
    y = np.array([0, 0, 1, 1])
    table = results_table(y, {"a": np.array([0.1, 0.6, 0.4, 0.9])}, n_boot=50)
    lines = table_to_markdown(table, metrics=["roc_auc", "specificity"], digits=2).splitlines()
    auc_ci = "{:.2f}, {:.2f}".format(*table.loc["a", ["roc_auc_low", "roc_auc_high"]])
    spec_ci = "{:.2f}, {:.2f}".format(*table.loc["a", ["specificity_low", "specificity_high"]])
    assert lines[0] == "| model | source | roc_auc | specificity |"
    assert lines[2] == f"| a | measured | 0.75 [{auc_ci}] | 0.50 [{spec_ci}] |"
    assert lines[3] == "| origin (reported) | reported | 0.96 | n/a |"


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("y_true", "y_prob", "match"),
    [
        ([0, 1, 1], [0.2, 0.8], "3 labels but there are 2 predictions"),
        ([0, 1], [[0.2], [0.8]], r"must be 1-D .* got shape \(2, 1\)"),
        ([0, 1], [0.2, np.nan], "1 NaN or infinite"),
        ([0, 1], [0.2, 1.3], r"probabilities in \[0, 1\].*not logits"),
        ([0, 1], [-0.1, 0.5], r"probabilities in \[0, 1\]"),
        ([0, 2], [0.2, 0.8], "only 0 .NORMAL. and 1 .PNEUMONIA.; found 2"),
        ([1, 1], [0.2, 0.8], "single class"),
        ([0, 1], ["a", "b"], "numeric probabilities"),
        ([], [], "empty"),
    ],
)
def test_evaluate_rejects_bad_data(y_true, y_prob, match):
    with pytest.raises(DataError, match=match):
        evaluate(y_true, y_prob, n_boot=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"threshold": 1.5}, r"The 'threshold' parameter of evaluate must be a number in \[0, 1\]; got 1.5\."),
        ({"n_boot": -1}, r"'n_boot' parameter of evaluate must be an int in \[0, 1000000\]; got -1"),
        ({"n_boot": 10.5}, r"'n_boot' parameter of evaluate must be an int in \[0, 1000000\]; got 10.5"),
        ({"ci": 1.0}, r"'ci' parameter of evaluate must be a number in \(0, 1\); got 1.0"),
    ],
)
def test_evaluate_rejects_bad_options(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        evaluate([0, 1], [0.2, 0.8], **kwargs)


def test_evaluate_rejects_misshaped_groups():
    with pytest.raises(DataError, match=r"groups must have shape \(2,\)"):
        evaluate([0, 1], [0.2, 0.8], groups=[1, 2, 3])
