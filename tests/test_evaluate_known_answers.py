"""The evaluate stage end to end, on planted member probabilities imported as prediction files (no training).

Every number of ``tables/results.csv`` and ``tables/comparisons.csv`` is recomputed here from the run's own
``predictions_{val,test}.csv`` with scikit-learn / scipy, without pneumoxai's metric code: thresholds from
validation alone, point metrics, the patient-bootstrap intervals by resampling patients directly, DeLong by
its placement-value definition and McNemar by its formula.
"""

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn import metrics as skm

from pneumoxai import cli, data

N_BOOT = 60
CI = 0.9
METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "roc_auc", "average_precision", "mcc",
           "balanced_accuracy", "brier", "ece")
STRENGTHS = {"vendor_a": 0.20, "vendor_b": 0.12, "vendor_c": 0.06}


def _lists(root, seed):
    """Validation and test lists (path, label, patient_id): three images a patient, some patients of both classes."""
    frame = data.scan_dataset(root)
    rng = np.random.default_rng(seed)
    lists = {}
    for role, split in (("val", "train"), ("test", "test")):
        part = frame[frame["split"] == split].sample(frac=1.0, random_state=int(rng.integers(1000)))
        part = part.reset_index(drop=True)[["path", "label"]]
        part["patient_id"] = [f"{role}{i // 3:02d}" for i in range(len(part))]
        lists[role] = part
    return lists


def _member_files(lists, folder, seed, test_probs=None):
    """One predictions file per member: P(PNEUMONIA) = 0.5 +- strength + noise, clipped into (0, 1)."""
    rng, test_rng = np.random.default_rng(seed), np.random.default_rng(seed + 1)
    both = pd.concat([lists["val"], lists["test"]], ignore_index=True)
    specs = []
    for name, strength in STRENGTHS.items():
        prob = np.clip(0.5 + strength * (2 * both["label"] - 1) + rng.normal(0, 0.25, len(both)), 0.01, 0.99)
        if test_probs is not None:
            prob[len(lists["val"]):] = test_probs(test_rng, len(lists["test"]))
        path = folder / f"{name}.csv"
        pd.DataFrame({"path": both["path"], "probability": prob}).to_csv(path, index=False)
        specs += ["--member", f"{name}={path}"]
    return specs


def _import_and_evaluate(lists, folder, specs):
    folder.mkdir()
    for role, table in lists.items():
        table.to_csv(folder / f"{role}.csv", index=False)
    run = folder / "run"
    argv = ["import", "--val-list", folder / "val.csv", "--test-list", folder / "test.csv", "--out", run, *specs,
            "--set", f"evaluate.n_boot={N_BOOT}", "--set", f"evaluate.ci={CI}", "--set", "evaluate.stacking_cv=3"]
    assert cli.main([str(a) for a in argv]) == 0
    assert cli.main(["evaluate", "--run", str(run), "--quiet"]) == 0
    tables = run / "tables"
    return (pd.read_csv(tables / "results.csv", index_col="model"), pd.read_csv(tables / "comparisons.csv"),
            pd.read_csv(tables / "predictions_val.csv"), pd.read_csv(tables / "predictions_test.csv"),
            json.loads((tables / "ensemble.json").read_text()))


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    from conftest import make_tree

    folder = tmp_path_factory.mktemp("evaluate")
    lists = _lists(make_tree(folder, n_per_class=24, size=8), seed=0)
    return lists, folder, _import_and_evaluate(lists, folder / "planted", _member_files(lists, folder, seed=1))


def _youden(y, p):
    """Highest threshold of the largest sensitivity + specificity - 1 (scikit-learn's ROC points)."""
    fpr, tpr, thresholds = skm.roc_curve(y, p, drop_intermediate=False)  # thresholds in decreasing order
    return float(thresholds[np.argmax(tpr - fpr)])


def _metrics(y, p, threshold):
    pred = (p >= threshold).astype(int)
    bins = np.minimum((p * 10).astype(int), 9)  # 10 equal-width bins, the last one closed
    gap = np.bincount(bins, weights=p - y, minlength=10)
    return {
        "accuracy": skm.accuracy_score(y, pred),
        "precision": skm.precision_score(y, pred, zero_division=0),
        "recall": skm.recall_score(y, pred, zero_division=0),
        "specificity": skm.recall_score(y, pred, pos_label=0, zero_division=0),
        "f1": skm.f1_score(y, pred, zero_division=0),
        "roc_auc": skm.roc_auc_score(y, p),
        "average_precision": skm.average_precision_score(y, p),
        "mcc": skm.matthews_corrcoef(y, pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
        "brier": skm.brier_score_loss(y, p),
        "ece": np.abs(gap).sum() / len(y),
    }


def _patient_resamples(y, patients, n_boot, seed):
    """Image indices of each resample: patients drawn with replacement, NORMAL-only patients and patients with
    any PNEUMONIA image drawn separately in their own numbers (one generator, the NORMAL stratum first)."""
    ids = np.array(sorted(set(patients)))
    images = {pid: np.flatnonzero(patients == pid) for pid in ids}
    positive = np.array([y[images[pid]].max() == 1 for pid in ids])
    rng = np.random.default_rng(seed)
    strata = [ids[~positive], ids[positive]]
    draws = [stratum[rng.integers(0, len(stratum), size=(n_boot, len(stratum)))] for stratum in strata]
    return [np.concatenate([images[pid] for pid in np.r_[draws[0][b], draws[1][b]]]) for b in range(n_boot)]


def test_thresholds_are_youden_on_validation_and_every_results_row_is_recomputed(planted):
    _, _, (results, _, val, test, record) = planted
    names = [c[2:-1] for c in test.columns if c.startswith("p[")]
    assert {*STRENGTHS, "soft voting", "soft voting (optimized)", "hard voting", "stacking"} == set(names)
    # The combiners' test scores follow from the members' by definition.
    members = test[[f"p[{m}]" for m in STRENGTHS]].to_numpy()
    np.testing.assert_allclose(test["p[soft voting]"], members.mean(axis=1), atol=1e-12)
    np.testing.assert_allclose(test["p[hard voting]"], (members >= 0.5).mean(axis=1), atol=1e-12)
    weights = np.array([record["optimized_weights"][m] for m in STRENGTHS])
    np.testing.assert_allclose(test["p[soft voting (optimized)]"], members @ weights / weights.sum(), atol=1e-9)

    y_test, patients = test["label"].to_numpy(), test["patient_id"].to_numpy()
    resamples = _patient_resamples(y_test, patients, N_BOOT, seed=0)
    assert max(len(set(patients[i])) for i in resamples) < len(set(patients))  # resamples repeat patients
    expected_rows = {**{n: _youden(val["label"], val[f"p[{n}]"]) for n in names}, "soft voting @0.5": 0.5}
    assert record["thresholds"] == pytest.approx({n: expected_rows[n] for n in names}, abs=1e-12)
    assert set(results.index) == set(expected_rows)  # imported members: no origin row
    for name, threshold in expected_rows.items():
        p = test[f"p[{name.removesuffix(' @0.5')}]"].to_numpy()
        row = results.loc[name]
        assert row["threshold"] == pytest.approx(threshold, abs=1e-12) and row["n"] == len(y_test)
        point = _metrics(y_test, p, threshold)
        assert row[list(METRICS)].to_numpy(float) == pytest.approx([point[m] for m in METRICS], abs=1e-12), name
        (tn, fp), (fn, tp) = skm.confusion_matrix(y_test, (p >= threshold).astype(int))
        assert row[["tn", "fp", "fn", "tp"]].tolist() == [tn, fp, fn, tp]
        # The patient bootstrap, drawn directly: the same seed, the same patients, scikit-learn on each resample.
        boot = pd.DataFrame([_metrics(y_test[i], p[i], threshold) for i in resamples])
        tail = 100 * (1 - CI) / 2
        for metric in METRICS:
            low, high = np.percentile(boot[metric], [tail, 100 - tail])
            assert (row[f"{metric}_low"], row[f"{metric}_high"]) == pytest.approx((low, high), abs=1e-12), \
                (name, metric)


def _delong(y, pa, pb):
    """AUC difference and its variance from placement values (DeLong et al. 1988), by their definition."""
    def placements(p):
        pos, neg = p[y == 1], p[y == 0]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        return psi.mean(axis=1), psi.mean(axis=0)

    (v10a, v01a), (v10b, v01b) = placements(pa), placements(pb)
    s10, s01 = np.cov(v10a, v10b), np.cov(v01a, v01b)
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / len(v10a) + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / len(v01a)
    return v10a.mean() - v10b.mean(), var


def test_every_comparisons_row_is_delong_and_mcnemar_at_the_validation_thresholds(planted):
    _, _, (results, comparisons, _, test, record) = planted
    y = test["label"].to_numpy()
    best = max(STRENGTHS, key=lambda n: skm.roc_auc_score(y, test[f"p[{n}]"]))
    assert record["best_member"] == best
    assert comparisons[["model_a", "model_b"]].values.tolist() == [[best, "soft voting"],
                                                                    ["soft voting", "stacking"]]
    for _, row in comparisons.iterrows():
        a, b = row["model_a"], row["model_b"]
        pa, pb = test[f"p[{a}]"].to_numpy(), test[f"p[{b}]"].to_numpy()
        ta, tb = record["thresholds"][a], record["thresholds"][b]
        assert (row["threshold_a"], row["threshold_b"]) == (ta, tb) == (results.loc[a, "threshold"],
                                                                      results.loc[b, "threshold"])
        diff, var = _delong(y, pa, pb)
        z = diff / np.sqrt(var)
        assert row["auc_a"] == pytest.approx(skm.roc_auc_score(y, pa), abs=1e-12)
        assert row["auc_b"] == pytest.approx(skm.roc_auc_score(y, pb), abs=1e-12)
        assert (row["auc_diff"], row["auc_var"]) == pytest.approx((diff, var), rel=1e-9, abs=1e-15)
        assert (row["auc_z"], row["auc_p"]) == pytest.approx((z, 2 * stats.norm.sf(abs(z))), rel=1e-9)
        wrong_a, wrong_b = (pa >= ta) != y, (pb >= tb) != y
        counts = [np.sum(~wrong_a & ~wrong_b), np.sum(wrong_a & ~wrong_b), np.sum(~wrong_a & wrong_b),
                  np.sum(wrong_a & wrong_b)]
        assert row[["n_both_correct", "n_only_a_wrong", "n_only_b_wrong", "n_both_wrong"]].tolist() == counts
        only_a, only_b = counts[1], counts[2]
        discordant = only_a + only_b
        if discordant < 25:  # exact binomial test on the discordant pairs
            expected = (min(only_a, only_b), stats.binomtest(only_a, discordant, 0.5).pvalue if discordant else 1.0)
        else:  # chi-square with continuity correction
            statistic = (abs(only_a - only_b) - 1) ** 2 / discordant
            expected = (statistic, stats.chi2.sf(statistic, 1))
        assert bool(row["mcnemar_exact"]) == (discordant < 25)
        assert (row["mcnemar_statistic"], row["mcnemar_p"]) == pytest.approx(expected, rel=1e-9)


def test_thresholds_do_not_move_when_the_test_split_changes(planted):
    """Other test probabilities and flipped test labels: every threshold stays, the test metrics move."""
    lists, folder, (results, _, val, _, record) = planted
    changed = {"val": lists["val"], "test": lists["test"].assign(label=lambda t: np.where(t.index % 3 == 0,
                                                                                          1 - t["label"], t["label"]))}
    (folder / "changed_files").mkdir()
    specs = _member_files(changed, folder / "changed_files", seed=1, test_probs=lambda rng, n: rng.uniform(0, 1, n))
    other, _, other_val, other_test, other_record = _import_and_evaluate(changed, folder / "changed", specs)
    pd.testing.assert_frame_equal(other_val, val)
    assert other_record["thresholds"] == record["thresholds"]
    assert (other["threshold"] == results["threshold"]).all()
    assert (other_test["label"] != lists["test"]["label"]).sum() == 16
    assert other.loc["vendor_a", "roc_auc"] < results.loc["vendor_a", "roc_auc"] - 0.2  # the test split did change
