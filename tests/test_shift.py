"""Known-answer checks of pneumoxai.shift on synthetic images scored by a fixed model."""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ks_2samp
from sklearn.metrics import roc_auc_score

from pneumoxai.errors import ConfigError, DataError
from pneumoxai.shift import domain_classifier, estimate_prevalence, feature_shift, output_shift_test, shift_harm

SIDE = 16
_yy, _xx = np.mgrid[:SIDE, :SIDE]
DISC = ((_yy - SIDE / 2) ** 2 + (_xx - SIDE / 2) ** 2) < (SIDE / 4) ** 2
# The real split sizes: ~1000 validation images (20% of the training patients), 624 test images.
N_REF, N_TARGET = 1000, 624


def images(n, rng, prevalence=0.6):
    """Grey images with a random brightness; PNEUMONIA adds a bright central disc of random strength."""
    y = (rng.uniform(size=n) < prevalence).astype(int)
    x = rng.uniform(0.15, 0.55, size=(n, 1, 1)) + rng.normal(0, 0.05, size=(n, SIDE, SIDE))
    x = x + y[:, None, None] * DISC * rng.normal(0.25, 0.1, size=(n, 1, 1))
    return np.clip(x, 0, 1), y


def model(x):
    """A fixed three-member ensemble (ROC AUC ~0.97) that, like a CNN, also responds to overall brightness.

    Columns: the three members and their mean (the ensemble); they correlate at r > 0.98."""
    centre, ring = x[:, DISC].mean(axis=1), x[:, ~DISC].mean(axis=1)
    logits = np.column_stack([10 * (centre - ring) + 10 * centre - 4.5, 8 * (centre - ring) + 12 * centre - 5.2,
                              12 * (centre - ring) + 9 * centre - 4.3])
    P = 1 / (1 + np.exp(-logits))
    return np.column_stack([P, P.mean(axis=1)])


def features(x):
    return pd.DataFrame({"brightness": x.mean(axis=(1, 2)), "contrast": x.std(axis=(1, 2)),
                         "centre": x[:, DISC].mean(axis=1)})


def gamma_shifted(rng, n=N_TARGET, gamma=1.5):
    """Target images of which the first half went through gamma ``gamma``."""
    x, y = images(n, rng)
    x[: n // 2] = x[: n // 2] ** gamma
    return x, y


# --------------------------------------------------------------------------- output shift

def _no_shift_p_values(combine, n_splits=200, **options):
    rng = np.random.default_rng(1)
    p = []
    for split in range(n_splits):
        x, _ = images(600, rng)
        P, order = model(x), rng.permutation(600)
        p.append(output_shift_test(P[order[:300]], P[order[300:]], combine=combine, random_state=split,
                                   **options)["p_value"])
    return np.array(p)


def test_output_shift_single_column_false_alarms_near_alpha():
    """One column: the KS p-values of two halves of one set are uniform, 2-8% fall below 0.05."""
    rng = np.random.default_rng(2)
    p = []
    for _ in range(300):
        x, _ = images(600, rng)
        probs, order = model(x)[:, 3], rng.permutation(600)
        p.append(output_shift_test(probs[order[:300]], probs[order[300:]])["p_value"])
    p = np.array(p)
    assert 0.02 <= (p < 0.05).mean() <= 0.08
    assert 0.4 <= np.median(p) <= 0.6


def test_output_shift_permutation_false_alarms_near_alpha_with_correlated_members():
    rate = (_no_shift_p_values("permutation", n_permutations=200) < 0.05).mean()
    assert 0.02 <= rate <= 0.08


def test_output_shift_bonferroni_is_conservative_with_correlated_members():
    """Bonferroni never exceeds alpha; with members at r > 0.98 it falls well below it (measured ~1%)."""
    rate = (_no_shift_p_values("bonferroni") < 0.05).mean()
    assert rate <= 0.05


@pytest.mark.parametrize("combine, power", [("bonferroni", 0.9), ("permutation", 0.9)])
def test_output_shift_detects_gamma_on_half_the_target(combine, power):
    rng = np.random.default_rng(3)
    detected = [output_shift_test(model(images(N_REF, rng)[0]), model(gamma_shifted(rng)[0]), combine=combine,
                                  n_permutations=200, random_state=r)["p_value"] < 0.05 for r in range(50)]
    assert np.mean(detected) >= power


def test_output_shift_columns_match_scipy():
    rng = np.random.default_rng(4)
    ref, target = model(images(300, rng)[0]), model(gamma_shifted(rng, 200)[0])
    result = output_shift_test(pd.DataFrame(ref, columns=list("abcd")), target)
    expected = [ks_2samp(ref[:, j], target[:, j]) for j in range(4)]
    assert result["table"]["column"].tolist() == list("abcd")
    np.testing.assert_allclose(result["table"]["statistic"], [e.statistic for e in expected])
    np.testing.assert_allclose(result["table"]["p_value"], [e.pvalue for e in expected])
    assert result["p_value"] == pytest.approx(min(1, 4 * min(e.pvalue for e in expected)))


def test_output_shift_permutation_statistic_handles_ties_like_scipy():
    rng = np.random.default_rng(5)
    ref, target = np.round(rng.uniform(size=80), 1), np.round(rng.uniform(size=60) ** 1.3, 1)
    result = output_shift_test(ref, target, combine="permutation", n_permutations=99)
    assert result["statistic"] == pytest.approx(ks_2samp(ref, target).statistic)
    assert result["p_value"] >= 0.01


# --------------------------------------------------------------------------- domain classifier, where, harm

def test_domain_classifier_sizes_the_shift_and_finds_the_shifted_images():
    rng = np.random.default_rng(6)
    x_ref, _ = images(200, rng)
    x_target, _ = gamma_shifted(rng, 200)
    result = domain_classifier(features(x_ref), features(x_target), cv=3, n_permutations=19)
    # Half the target moved, along a direction brightness varies on anyway: a moderate AUC (0.61), but the
    # smallest p-value 19 permutations can give.
    assert result["auc"] > 0.58 and result["p_value"] == pytest.approx(0.05)
    # The gamma-shifted half of the target looks more target-like than the untouched half.
    assert roc_auc_score(np.r_[np.ones(100), np.zeros(100)], result["score_target"]) > 0.7
    x_same, _ = images(200, rng)
    same = domain_classifier(features(x_ref), features(x_same), cv=3, n_permutations=19)
    assert 0.35 < same["auc"] < 0.65 and same["p_value"] > 0.05


def test_domain_classifier_keeps_patients_in_one_fold():
    """Eight near-identical images per patient: grouped folds cannot memorise the patient, ungrouped ones can."""
    rng = np.random.default_rng(7)
    patients = rng.normal(size=(60, 5))
    X = np.repeat(patients, 8, axis=0) + rng.normal(0, 0.01, size=(480, 5))
    groups = np.repeat(np.arange(60), 8)
    from sklearn.neighbors import KNeighborsClassifier

    knn = KNeighborsClassifier(n_neighbors=1)
    grouped = domain_classifier(X[:240], X[240:], groups_ref=groups[:240], groups_target=groups[240:],
                                estimator=knn, n_permutations=0)
    assert 0.3 < grouped["auc"] < 0.7 and np.isnan(grouped["p_value"])
    # Same features split by image: each image's patient-mates are in the training folds.
    mixed = rng.permutation(480)
    ungrouped = domain_classifier(X[mixed[:240]], X[mixed[240:]], estimator=knn, n_permutations=0)
    assert 0.3 < ungrouped["auc"] < 0.7
    # Labels by patient but no groups: the 1-NN finds a patient-mate in training, AUC near 1.
    leaky = domain_classifier(X[:240], X[240:], estimator=knn, n_permutations=0)
    assert leaky["auc"] > 0.95


def test_feature_shift_finds_brightness_and_subtype_with_bh_q_values():
    rng = np.random.default_rng(8)
    x_ref, _ = images(300, rng)
    x_target, _ = gamma_shifted(rng, 300)
    ref = features(x_ref).assign(subtype=np.where(rng.uniform(size=300) < 0.3, "viral", "bacterial"))
    target = features(x_target).assign(subtype=np.where(rng.uniform(size=300) < 0.6, "viral", "bacterial"))
    table = feature_shift(ref, target)
    found = table[table["finding"]]
    assert {"brightness", "centre", "subtype"} <= set(found["feature"])
    row = table[(table["feature"] == "brightness") & (table["level"] == "")].iloc[0]
    assert row["effect"] < 0 and row["statistic"] == pytest.approx(ks_2samp(ref["brightness"],
                                                                            target["brightness"]).statistic)
    # Slices: the reference quartiles of brightness hold a quarter of the reference each; gamma darkens half
    # the target, so its darkest quartile fills up.
    bins = table[(table["feature"] == "brightness") & (table["level"] != "")].sort_values("level")
    np.testing.assert_allclose(bins["ref"], 0.25, atol=0.01)
    darkest = bins[bins["level"].str.startswith("[-inf")].iloc[0]
    assert darkest["target"] > 0.4 and darkest["finding"]
    viral = table[(table["feature"] == "subtype") & (table["level"] == "viral")].iloc[0]
    assert viral["ref"] == pytest.approx((ref["subtype"] == "viral").mean())
    from statsmodels.stats.multitest import multipletests

    np.testing.assert_allclose(table["q_value"], multipletests(table["p_value"], method="fdr_bh")[1])


def test_shift_harm_compares_target_like_images_with_all():
    y = np.array([0, 1] * 50)
    p = np.where(y == 1, 0.9, 0.1)
    score = np.arange(100.0)
    p[-10:] = 1 - p[-10:]  # the ten most target-like images are all wrong
    harm = shift_harm(y, p, score, top=0.1)
    assert harm["accuracy_target_like"] == 0 and harm["accuracy_all"] == 0.9 and harm["accuracy_rest"] == 1
    assert harm["difference"] == pytest.approx(-0.9) and harm["p_value"] < 1e-6


# --------------------------------------------------------------------------- prior shift

def _resampled(rng, x, y, prevalence, n):
    """``n`` images drawn from (x, y) so that a share ``prevalence`` is PNEUMONIA (label shift only)."""
    n_pos = int(round(prevalence * n))
    chosen = np.r_[rng.choice(np.flatnonzero(y == 1), n_pos, replace=False),
                   rng.choice(np.flatnonzero(y == 0), n - n_pos, replace=False)]
    return x[chosen], y[chosen]


@pytest.mark.parametrize("method", ["bbse", "em"])
@pytest.mark.parametrize("prevalence", [0.4, 0.8])
def test_estimate_prevalence_recovers_planted_prior_shift(method, prevalence):
    rng = np.random.default_rng(9)
    x_ref, y_ref = images(N_REF, rng, prevalence=0.74)  # the validation split's mix
    pool_x, pool_y = images(4000, rng, prevalence=0.5)
    x_target, y_target = _resampled(rng, pool_x, pool_y, prevalence, N_TARGET)
    p_ref, p_target = model(x_ref)[:, 3], model(x_target)[:, 3]
    result = estimate_prevalence(y_ref, p_ref, p_target, method=method, n_boot=100, random_state=0)
    assert abs(result["prevalence"] - prevalence) <= 0.05
    assert result["ci_low"] <= prevalence <= result["ci_high"]
    assert result["ci_high"] - result["ci_low"] < 0.2
    assert result["reference_prevalence"] == pytest.approx(y_ref.mean())


def test_estimate_prevalence_threshold_follows_the_estimate():
    """More PNEUMONIA expected -> a lower threshold (more positive calls), by prevalence_threshold's rule."""
    from pneumoxai.metrics import prevalence_threshold

    rng = np.random.default_rng(10)
    x_ref, y_ref = images(N_REF, rng, prevalence=0.5)
    p_ref = model(x_ref)[:, 3]
    low = estimate_prevalence(y_ref, p_ref, model(images(600, rng, prevalence=0.2)[0])[:, 3], n_boot=0)
    high = estimate_prevalence(y_ref, p_ref, model(images(600, rng, prevalence=0.9)[0])[:, 3], n_boot=0)
    assert low["threshold"] > high["threshold"]
    assert high["threshold"] == prevalence_threshold(y_ref, p_ref, high["prevalence"])
    assert np.isnan(low["ci_low"]) and np.isnan(low["ci_high"])


def test_estimate_prevalence_bbse_is_the_adjusted_count_by_hand():
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.7, 0.2, 0.6, 0.1, 0.2, 0.3])  # tpr 3/4, fpr 1/4
    q = np.array([0.9, 0.9, 0.1, 0.1])  # half positive calls -> (0.5 - 0.25) / 0.5 = 0.5
    assert estimate_prevalence(y, p, q, n_boot=0)["prevalence"] == pytest.approx(0.5)


def test_estimate_prevalence_is_reproducible_without_global_seed():
    rng = np.random.default_rng(11)
    x, y = images(300, rng)
    p, q = model(x)[:, 3], model(images(300, rng)[0])[:, 3]
    a = estimate_prevalence(y, p, q, method="em", n_boot=30, random_state=5)
    np.random.seed(123)
    b = estimate_prevalence(y, p, q, method="em", n_boot=30, random_state=5)
    assert a == b


def test_a_fold_that_trains_on_one_side_scores_that_side():
    from pneumoxai.shift import _default_domain_estimator, _out_of_fold

    X, d = np.random.default_rng(0).normal(size=(6, 2)), np.array([0, 0, 1, 1, 1, 1])
    score = _out_of_fold(_default_domain_estimator(), X, d, [(np.arange(2, 6), np.arange(2))])
    assert score[:2].tolist() == [1.0, 1.0]


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("call, error, match", [
    (lambda: estimate_prevalence([0, 1], [0.2, 0.8], [0.5], method="ml"), ConfigError,
     r"The 'method' parameter of estimate_prevalence must be one of 'bbse', 'em'; got 'ml'"),
    (lambda: estimate_prevalence([0, 1], [0.2, 0.8], [0.5], n_boot=-1), ConfigError,
     r"The 'n_boot' parameter of estimate_prevalence must be an int >= 0; got -1"),
    (lambda: estimate_prevalence([0, 1], [0.2, 1.8], [0.5]), DataError, r"estimate_prevalence: p_ref must hold "),
    (lambda: estimate_prevalence([0, 1], [0.8, 0.2], [0.5]), DataError, r"do not separate the classes"),
    (lambda: output_shift_test(np.ones((5, 2)) / 2, np.ones((5, 3)) / 2), DataError,
     r"P_ref has 2 columns but P_target has 3"),
    (lambda: output_shift_test([0.5], [0.5], combine="fisher"), ConfigError,
     r"The 'combine' parameter of output_shift_test must be"),
    (lambda: domain_classifier(np.zeros((10, 2)), np.zeros((10, 2)), cv=1), ConfigError,
     r"The 'cv' parameter of domain_classifier must be an int >= 2; got 1"),
    (lambda: domain_classifier(np.zeros((10, 2)), np.zeros((10, 2)), groups_ref=np.arange(10)), DataError,
     r"pass both groups_ref and groups_target"),
    (lambda: domain_classifier(np.full((10, 2), np.nan), np.zeros((10, 2))), DataError,
     r"X_ref has 20 NaN or infinite values"),
    (lambda: feature_shift(pd.DataFrame({"a": [1.0]}), pd.DataFrame({"b": [1.0]})), DataError,
     r"F_target lacks column\(s\) \['a'\]"),
    (lambda: feature_shift(pd.DataFrame({"a": [1.0]}), pd.DataFrame({"a": [1.0]}), n_bins=1), ConfigError,
     r"The 'n_bins' parameter of feature_shift must be an int in \[0, 0\] or an int >= 2; got 1"),
    (lambda: shift_harm([0, 1], [0.2, 0.8], [1.0, 2.0], top=1), ConfigError,
     r"The 'top' parameter of shift_harm must be a number in \(0, 1\); got 1"),
    (lambda: shift_harm([0, 1], [0.2, 0.8], [1.0]), DataError,
     r"shift_harm: score_ref must have shape \(2,\), one number per sample; got shape \(1,\)"),
    (lambda: domain_classifier(np.zeros(10), np.zeros((10, 2))), DataError,
     r"domain_classifier: X_ref must be a non-empty 2-D array \(n_samples, n_features\); got shape \(10,\)"),
    (lambda: domain_classifier([["a", "b"]] * 10, np.zeros((10, 2))), DataError,
     r"domain_classifier: X_ref must be a real numeric array; got dtype <U1"),
])
def test_bad_input_gets_one_readable_line(call, error, match):
    with pytest.raises(error, match=match):
        call()
