"""Known-answer checks of pneumoxai.referral: hand computations, an identity, MAPIE, and the guarantee's coverage."""

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from pneumoxai.errors import ConfigError, DataError, NotFittedError
from pneumoxai.referral import ReferralRule, augrc, aurc, confidence_score, referral_table, risk_coverage


def scores(rng, n, prevalence=0.6, mu=1.5):
    """Labels and p = sigmoid(s), s | y ~ N(+-mu, 1): every population quantity has a closed form."""
    y = (rng.uniform(size=n) < prevalence).astype(int)
    s = rng.normal(np.where(y == 1, mu, -mu), 1)
    return y, 1 / (1 + np.exp(-s))


def population_kept_sensitivity(cutoff, mu=1.5, threshold=0.5):
    """Sensitivity of the kept PNEUMONIA cases when |p - threshold| >= cutoff keeps a case."""
    logit = lambda q: -np.inf if q <= 0 else (np.inf if q >= 1 else np.log(q / (1 - q)))  # noqa: E731
    low, high = logit(threshold - cutoff), logit(threshold + cutoff)
    kept_miss, kept_hit = norm.cdf(low - mu), 1 - norm.cdf(high - mu)
    return kept_hit / (kept_hit + kept_miss)


# --------------------------------------------------------------------------- curves and areas

def test_aurc_equals_a_hand_computation():
    y = np.array([1, 1, 0, 0, 1, 0])
    p = np.array([0.95, 0.3, 0.55, 0.1, 0.7, 0.8])
    # margins .45 .2 .05 .4 .2 .3 -> kept order 0, 3, 5, 1, 4, 2 (ties in input order)
    # errors:  0  0  1  1  0  1 -> selective risks 0, 0, 1/3, 2/4, 2/5, 3/6
    risks = [0, 0, 1 / 3, 2 / 4, 2 / 5, 3 / 6]
    curve = risk_coverage(y, p)
    np.testing.assert_allclose(curve["coverage"], np.arange(1, 7) / 6)
    np.testing.assert_allclose(curve["risk"], risks)
    assert aurc(y, p) == pytest.approx(np.mean(risks))
    assert augrc(y, p) == pytest.approx(np.mean([0, 0, 1, 2, 2, 3]) / 6)
    # A threshold of 0.75: calls 1 0 0 0 0 1, margins .2 .45 .2 .65 .05 .05 -> kept order 3, 1, 0, 2, 4, 5
    # errors:  0  1  0  0  1  1
    curve = risk_coverage(y, p, threshold=0.75)
    np.testing.assert_allclose(curve["risk"], [0, 1 / 2, 1 / 3, 1 / 4, 2 / 5, 3 / 6])


def test_augrc_matches_its_failure_auroc_identity():
    """Without ties AUGRC = (m (m + 1) / 2 + m c (1 - AUROC_f)) / n^2 (Traub et al.'s decomposition)."""
    rng = np.random.default_rng(0)
    y, p = scores(rng, 500)
    confidence = np.abs(p - 0.5)
    correct = (p >= 0.5).astype(int) == y
    m, c, n = (~correct).sum(), correct.sum(), len(y)
    expected = (m * (m + 1) / 2 + m * c * (1 - roc_auc_score(correct, confidence))) / n**2
    assert augrc(y, p) == pytest.approx(expected)
    # And AURC of a perfect ranking is below AURC of a random one.
    assert aurc(y, p, confidence=correct + rng.uniform(0, 0.1, n)) < aurc(y, p, confidence=rng.uniform(size=n))


def test_confidence_options_disagreement_and_combination():
    P = np.array([[0.9, 0.9], [0.2, 0.8], [0.45, 0.55], [0.1, 0.1]])
    p = P.mean(axis=1)
    np.testing.assert_allclose(confidence_score(p, confidence="agreement", P=P), [0, -0.3, -0.05, 0])
    # margin ranks 3.5 1.5 1.5 3.5 (ties averaged), agreement ranks 3.5 1 2 3.5 -> mean / n
    np.testing.assert_allclose(confidence_score(p, confidence="combined", P=P), [7 / 8, 2.5 / 8, 3.5 / 8, 7 / 8])
    # p = .9 .5 .5 .1 -> calls 1 1 1 0; kept order 0, 3, 2 (a false positive), 1
    curve = risk_coverage([1, 1, 0, 0], p, confidence="agreement", P=P)
    np.testing.assert_allclose(curve["risk"], [0, 0, 1 / 3, 1 / 4])


def test_logit_margin_treats_both_sides_of_a_low_threshold_alike():
    p = np.array([0.01, 0.05, 0.2, 0.9])
    logit = np.log(p / (1 - p))
    np.testing.assert_allclose(confidence_score(p, threshold=0.05, confidence="logit_margin"),
                               np.abs(logit - logit[1]))
    # p = 0.01 is as far below 0.05 on the logit scale (1.65) as p = 0.2154 is above it; |p - t| says 0.04 against 0.17.
    assert confidence_score([0.01], threshold=0.05, confidence="logit_margin")[0] == pytest.approx(
        confidence_score([0.2154], threshold=0.05, confidence="logit_margin")[0], rel=0.01)


def test_referral_table_by_hand():
    y = np.array([1, 1, 0, 0, 1, 0, 1, 1, 0, 0])
    p = np.array([0.9, 0.45, 0.52, 0.1, 0.8, 0.2, 0.7, 0.95, 0.3, 0.05])
    table = referral_table(y, p, fractions=(0.1, 0.2))
    # Refer 0.52 (a false positive, margin 0.02) first, then 0.45 (a miss, margin 0.05).
    assert table["n_referred"].tolist() == [0, 1, 2]
    np.testing.assert_allclose(table["accuracy"], [8 / 10, 8 / 9, 1.0])
    np.testing.assert_allclose(table["sensitivity"], [4 / 5, 4 / 5, 1])
    np.testing.assert_allclose(table["specificity"], [4 / 5, 1, 1])


# --------------------------------------------------------------------------- the guarantee

def _violations(rule_of, n_repetitions=500, n_val=1000, target=0.95):
    rng = np.random.default_rng(1)
    failed = 0
    for _ in range(n_repetitions):
        y, p = scores(rng, n_val)
        cutoff = rule_of(y, p)
        failed += cutoff is not None and population_kept_sensitivity(cutoff) < target
    return failed / n_repetitions


def test_referral_guarantee_holds_in_at_least_1_minus_delta_of_500_repetitions():
    delta = 0.1
    rate = _violations(lambda y, p: ReferralRule(target=0.95, delta=delta).fit(y, p).cutoff_)
    # At most delta, plus three binomial standard errors.
    assert rate <= delta + 3 * np.sqrt(delta * (1 - delta) / 500)


def test_the_point_estimate_rule_fails_the_guarantee_often():
    """The known answer can fail: the least referral whose validation sensitivity reaches the target fails ~half."""
    def naive(y, p):
        candidates = ReferralRule(target=0.95, delta=0.1).fit(y, p).candidates_
        reaching = candidates[candidates["sensitivity"] >= 0.95]
        return float(reaching["cutoff"].iloc[0]) if len(reaching) else None

    assert _violations(naive, n_repetitions=200) > 0.2


def test_referral_rule_p_values_and_selection_match_mapie():
    from mapie.risk_control import methods
    from mapie.risk_control.fwer_control import control_fwer

    rng = np.random.default_rng(2)
    y, p = scores(rng, 800)
    rule = ReferralRule(target=0.95, delta=0.1).fit(y, p)
    table = rule.candidates_
    kept = table["n_positives_kept"].to_numpy()
    # MAPIE ceils n * r_hat; keep float noise from pushing an integer count up by one.
    miss_rate = np.maximum(table["misses"].to_numpy() - 1e-9, 0) / kept
    # MAPIE's Learn-then-Test p-value for a binary loss: min(Hoeffding, Bentkus) = the exact binomial tail.
    expected = methods.compute_hoeffding_bentkus_p_value(miss_rate, kept, 0.05, binary=True)[:, 0]
    np.testing.assert_allclose(table["p_value"], expected, rtol=1e-9)
    # Fixed-sequence testing from the most referral down, as MAPIE orders "easiest first".
    rejected = control_fwer(table["p_value"].to_numpy()[::-1], 0.1, fwer_method="fixed_sequence")
    mapie_choice = len(table) - 1 - max(rejected)
    assert table.index[table["rejected"]].min() == mapie_choice
    assert rule.referral_ == pytest.approx(1 - (confidence_score(p) >= rule.cutoff_).mean())


def test_referral_rule_states_when_the_guarantee_did_not_hold():
    rng = np.random.default_rng(3)
    y, p = scores(rng, 1000)
    rule = ReferralRule(target=0.95, delta=0.1).fit(y, p)
    y_new, p_new = scores(rng, 2000, mu=1.5)
    assert rule.evaluate(y_new, p_new)["held"]
    # Shifted: PNEUMONIA cases score lower at the new site.
    y_shift, p_shift = scores(rng, 2000, mu=0.8)
    result = rule.evaluate(y_shift, p_shift)
    assert result["held"] is False and "did NOT hold" in result["statement"]
    assert result["sensitivity"] < 0.95
    impossible = ReferralRule(target=0.999, delta=0.01, max_referral=0.05).fit(y, p)
    assert impossible.cutoff_ is None and impossible.evaluate(y, p)["held"] is None
    # The fixed sequence starts at the most referral and stopped there at once.
    assert "No referral rule was certified: testing from 5% referred downward, the first candidate (refer 5%" in (
        impossible.evaluate(y, p)["statement"])


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("call, error, match", [
    (lambda: aurc([0, 1], [0.2, 0.8], threshold=1.5), ConfigError,
     r"The 'threshold' parameter of risk_coverage must be a number in \[0, 1\]; got 1.5"),
    (lambda: aurc([0, 1], [0.2, 0.8], confidence="entropy"), ConfigError,
     r"The 'confidence' parameter of risk_coverage must be one of 'margin', 'logit_margin', 'agreement', "),
    (lambda: aurc([0, 1], [0.2, 0.8], confidence="agreement"), DataError, r"needs the member probabilities P"),
    (lambda: aurc([0, 1], [0.2, 0.8], confidence=[1.0]), DataError,
     r"risk_coverage: confidence must have shape \(2,\), one number per sample; got shape \(1,\)"),
    (lambda: aurc([0, 2], [0.2, 0.8]), DataError, r"must hold only 0 \(NORMAL\) and 1 \(PNEUMONIA\)"),
    (lambda: referral_table([0, 1], [0.2, 0.8], fractions=[1.0]), ConfigError,
     r"The 'fractions' parameter of referral_table must be"),
    (lambda: ReferralRule(delta=0).fit([0, 1], [0.2, 0.8]), ConfigError,
     r"The 'delta' parameter of ReferralRule must be a number in \(0, 1\); got 0"),
    (lambda: ReferralRule().evaluate([0, 1], [0.2, 0.8]), NotFittedError, r"not fitted yet"),
])
def test_bad_input_gets_one_readable_line(call, error, match):
    with pytest.raises(error, match=match):
        call()
