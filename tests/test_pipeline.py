"""End to end: `pneumoxai run` on a small real subset with tiny members (smoke config)."""

import base64
import html
import html.parser
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pneumoxai import cli, explain, models
from pneumoxai.data import load_images
from pneumoxai.errors import RunFolderError
from pneumoxai.explain import chosen_layers
from pneumoxai.report import write_report
from pneumoxai.run_folder import RunFolder

pytestmark = pytest.mark.slow

SMOKE = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "smoke.yaml"
TABLES = ("dataset.csv", "results.csv", "results.md", "predictions_val.csv", "predictions_test.csv",
          "comparisons.csv", "diversity.csv", "ensemble_size.csv", "ensemble.json", "zone_attention.csv",
          "zone_attention_all.csv", "explain_summary.csv", "failure_slices.csv", "member_failure_slices.csv",
          "slice_features.csv", "timings.csv", "shift_summary.csv", "shift_output.csv", "shift_features.csv",
          "shift_scores.csv", "referral_curve.csv", "referral_summary.csv", "referral_table.csv", "referral_rule.csv")
FIGURES = ("roc", "pr", "confusion", "reliability", "threshold", "diversity", "ensemble_size", "gallery",
           "mean_maps", "zone_attention", "slices_features", "shift_features", "referral_curve")


def assert_lock_free(folder):
    """The lock file may stay behind; what matters is that no process holds it."""
    with RunFolder(folder).lock():
        pass


def _wait_for(path, process):
    """True once ``path`` exists; False if ``process`` exits first."""
    while not path.exists():
        if process.poll() is not None:
            return path.exists()
        time.sleep(0.5)
    return True


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, real_data_root):
    """A run interrupted by SIGKILL after its first member, then resumed to completion."""
    out = tmp_path_factory.mktemp("smoke") / "run"
    argv = ["run", "--data", str(real_data_root), "--config", str(SMOKE), "--out", str(out), "--quiet"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    process = subprocess.Popen([sys.executable, "-m", "pneumoxai.cli", *argv], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_card = out / "members" / "smoke_a" / "card.json"
    reached = _wait_for(first_card, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert reached, "the first member was never saved"
    interrupted_card = first_card.read_text()
    assert not (out / "members" / "smoke_b" / "card.json").exists()
    assert cli.main(argv) == 0
    return out, argv, interrupted_card


def test_run_writes_every_table_and_figure(smoke_run):
    out, _, _ = smoke_run
    for name in TABLES:
        assert (out / "tables" / name).is_file(), name
    for stem in FIGURES:
        assert (out / "figures" / f"{stem}.png").is_file() and (out / "figures" / f"{stem}.pdf").is_file(), stem
    results = pd.read_csv(out / "tables" / "results.csv", index_col="model")
    assert {"smoke_a", "smoke_b", "soft voting", "stacking", "origin (reported)"} <= set(results.index)
    assert results.loc["origin (reported)", "accuracy"] == pytest.approx(0.902)
    dataset = pd.read_csv(out / "tables" / "dataset.csv")
    assert dataset.groupby(["role", "label"]).size().loc["test"].tolist() == [30, 30]
    assert not set(dataset[dataset.role == "train"].patient_id) & set(dataset[dataset.role == "val"].patient_id)
    assert not list(out.rglob(".*.tmp")) and not list(out.rglob(".write-test-*"))
    assert_lock_free(out)
    gallery = np.load(out / "maps" / "explain.npz")
    assert list(gallery["methods"]) == ["Grad-CAM", "HiResCAM (fused)", "SHAP"]
    # Slice explanations exist exactly when a slice is significant (see the planted finding below for their content).
    findings = pd.read_csv(out / "tables" / "failure_slices.csv")["finding"]
    assert (out / "tables" / "slice_explanations.csv").is_file() == bool(findings.any())
    timings = pd.read_csv(out / "tables" / "timings.csv", index_col="stage")
    assert list(timings.index) == ["train", "evaluate", "shift", "explain", "slices"]
    assert (timings["seconds"] > 0).all() and (timings["peak_rss_mb"] > 100).all()


@pytest.fixture(scope="module")
def planted_finding(smoke_run, tmp_path_factory):
    """A copy of the smoke run whose slices stage ran again with its top slice made a finding (60 test images
    make no slice significant); with what the stage passed to ``slice_explanations``."""
    from pneumoxai import slices
    from pneumoxai.config import load_config
    from pneumoxai.pipeline import failure_slices

    out, _, _ = smoke_run
    run = RunFolder(shutil.copytree(out, tmp_path_factory.mktemp("planted") / "run"))
    find, slice_explanations, passed = slices.find_failure_slices, explain.slice_explanations, {}

    def top_slice_is_a_finding(*args, **kwargs):
        found = find(*args, **kwargs)
        found["finding"] = found.index == found.index[0]
        return found

    def spy(*args, **kwargs):
        passed.update(zip(("frame", "slice_table", "maps", "masks", "y_true", "y_prob"), args), **kwargs)
        return slice_explanations(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(slices, "find_failure_slices", top_slice_is_a_finding)
        patch.setattr(explain, "slice_explanations", spy)
        failure_slices.slices_stage(run, load_config(SMOKE))
    return run, passed


def test_a_planted_finding_is_explained_by_its_errors_maps_and_faithfulness(planted_finding):
    from pneumoxai.slices import slice_mask

    run, passed = planted_finding
    findings = pd.read_csv(run.table("failure_slices.csv"))
    assert findings["finding"].tolist() == [True] + [False] * (len(findings) - 1)
    explained = pd.read_csv(run.table("slice_explanations.csv"))
    assert explained["slice"].tolist() == [findings["slice"].iloc[0]] and run.figure_stem("slice_maps").with_suffix(
        ".png").is_file()
    # Each column is the mean over the slice's errors of what the stage measured per image.
    errors = slice_mask(passed["frame"], passed["slice_table"]["conditions"].iloc[0]) & (
        (passed["y_prob"] >= passed["threshold"]).astype(int) != passed["y_true"])
    row = explained.iloc[0]
    assert row["n_errors"] == errors.sum() > 0
    measured = errors & np.isfinite(passed["faithfulness"])
    assert row["faithfulness_n_errors"] == measured.sum() > 0  # under 64 images every error is measured
    assert row["faithfulness_errors"] == pytest.approx(passed["faithfulness"][measured].mean(), abs=1e-12)
    assert 0 < row["faithfulness_errors"] < 1
    removal = passed["region_removal"]
    tested = errors & removal["localised"].notna().to_numpy()
    assert row["removal_n_errors"] == tested.sum() == min(errors.sum(), 32)
    localised = tested & (removal["localised"] == 1).to_numpy()
    assert row["removal_n_localised"] == localised.sum()
    if row["removal_localised"]:
        assert row["removal_changes_errors"] == pytest.approx(removal["call_changed"][localised].mean())
        assert row["removal_place"] == Counter(removal["places"][localised]).most_common(1)[0][0]
    else:
        assert pd.isna(row["removal_place"])
    # A few images of the slice with their maps, in the report under its label.
    assert run.figure_stem("slice_examples_1").with_suffix(".png").is_file()
    report = write_report(run.root).read_text(encoding="utf-8")
    assert "Images of each significant slice" in report and "Slice 1, " in report
    # The slicing table measures every named place.
    features = pd.read_csv(run.table("slice_features.csv"))
    assert {"edge_density_top_right", "dark_area_bottom_left", "rel_brightness_left_lower"} <= set(features.columns)


def test_slice_explanations_ask_whether_the_best_members_calls_rest_on_the_maps_region(planted_finding):
    from pneumoxai.config import load_config
    from pneumoxai.evidence import region_removal_test
    from pneumoxai.pipeline import failure_slices

    run, passed = planted_finding
    config = load_config(SMOKE)
    table = pd.read_csv(run.table("slice_explanations.csv"))
    assert {"removal_n_errors", "removal_changes_errors", "removal_changes_control", "removal_p",
            "removal_localised", "removal_place"} <= set(table.columns)

    # The same measurement from the run's files and the public API: the best member, its own threshold, the
    # stored maps at its input size, the deletion walk from the half-maximum region against the same regions shifted.
    predictions = pd.read_csv(run.table("predictions_test.csv"))
    record = json.loads(run.table("ensemble.json").read_text())
    results = pd.read_csv(run.table("results.csv"), index_col="model")
    best = results.loc[["smoke_a", "smoke_b"], "roc_auc"].idxmax()
    model = models.load_member(run.path("members") / best)[0]
    size = int(model.input_shape[1])
    removal = passed["region_removal"]
    tested = np.flatnonzero(removal["localised"].notna().to_numpy())
    x = load_images(predictions["path"].iloc[tested], size, interpolation=config["data"]["interpolation"])
    maps = explain.resize_maps(failure_slices._load_test_maps(run, predictions["path"])[0][tested], size)
    result = region_removal_test(model, x, maps, threshold=record["thresholds"][best])
    for column in ("call_changed", "control_changed", "localised"):
        np.testing.assert_array_equal(removal[column].to_numpy()[tested], result[column].astype(float))
    assert list(removal["places"].iloc[tested]) == list(result["places"])


def test_test_split_maps_are_the_measured_choice_among_every_stage_alone_and_fused(smoke_run):
    out, _, _ = smoke_run
    table = pd.read_csv(out / "tables" / "layer_choice.csv")
    choice = json.loads((out / "tables" / "layer_choice.json").read_text())
    members = [models.load_member(out / "members" / name)[0] for name in ("smoke_a", "smoke_b")]
    stages = explain.fusion_layers(members[0])
    for _, candidates in table[table["method"] != "random"].groupby("method"):
        assert sorted(candidates["layer"]) == sorted([*stages, "+".join(stages)])
    assert table.loc[table["chosen"], ["method", "layer"]].values.tolist() == [[choice["method"], choice["layer"]]]
    assert "+".join(chosen_layers(members[0], choice)) == choice["layer"]
    # The summary's faithfulness is the choice's own measurement of the chosen map and of random maps.
    summary = pd.read_csv(out / "tables" / "explain_summary.csv").set_index("measure")
    for column, word in (("deletion_auc", "deletion AUC"), ("road_gap", "ROAD gap")):
        measured = summary.loc[summary.index.str.startswith(word), "value"]
        assert measured.tolist() == pytest.approx([table.loc[table["chosen"], column].item(),
                                                   table.loc[table["method"] == "random", column].item()])
        assert "random maps" in measured.index[1]

    # The whole test split's maps are that choice's ensemble maps of the predicted class.
    saved = {**np.load(out / "maps" / "test_maps.npz"), "maps": np.load(out / "maps" / "test_maps.npy")}
    predictions = pd.read_csv(out / "tables" / "predictions_test.csv")
    record = json.loads((out / "tables" / "ensemble.json").read_text())
    predicted = predictions[f"p[{record['primary']}]"].to_numpy() >= record["thresholds"][record["primary"]]
    expected, _ = explain.ensemble_gradcam(members, load_images(predictions["path"], 64), method=choice["method"],
                                           layers=lambda m: chosen_layers(m, choice), target=predicted,
                                           size=saved["maps"].shape[1])
    assert list(saved["paths"]) == predictions["path"].tolist()
    np.testing.assert_allclose(saved["maps"], expected, atol=2e-3)  # saved as float16


def test_gallery_maps_are_each_methods_own_ensemble_maps(smoke_run):
    """The gallery's CAMs come from one shared pass per member and batch; each equals its method's own maps."""
    out, _, _ = smoke_run
    gallery = np.load(out / "maps" / "explain.npz")
    members = [models.load_member(out / "members" / name)[0] for name in ("smoke_a", "smoke_b")]
    predictions = pd.read_csv(out / "tables" / "predictions_test.csv").set_index("path")
    record = json.loads((out / "tables" / "ensemble.json").read_text())
    paths = list(gallery["paths"])
    predicted = (predictions.loc[paths, f"p[{record['primary']}]"].to_numpy()
                 >= record["thresholds"][record["primary"]])
    images = load_images(paths, 64)
    for i, (label, method, layers) in enumerate([("Grad-CAM", "gradcam", None),
                                                 ("HiResCAM (fused)", "hirescam", "auto")]):
        assert gallery["methods"][i] == label
        expected, _ = explain.ensemble_gradcam(members, images, method=method, layers=layers, target=predicted,
                                               size=gallery[f"map_{i}"].shape[1])
        assert expected.std() > 0.01
        np.testing.assert_allclose(gallery[f"map_{i}"], expected, atol=1e-5)


def test_interrupted_run_resumed_without_retraining_the_finished_member(smoke_run):
    out, _, interrupted_card = smoke_run
    assert (out / "members" / "smoke_a" / "card.json").read_text() == interrupted_card
    assert models.is_member_dir(out / "members" / "smoke_b")


class _Collector(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources, self.links, self.stack = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.sources.append(attrs.get("src", ""))
        if tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])


def test_report_is_html_and_references_only_existing_files(smoke_run):
    out, _, _ = smoke_run
    text = (out / "report.html").read_text()
    parser = _Collector()
    parser.feed(text)
    assert text.lstrip().lower().startswith("<!doctype html")
    # PNG figures; a large gallery of X-rays as JPEG (the report's size limit)
    assert parser.sources and all(src.startswith(("data:image/png;base64,", "data:image/jpeg;base64,"))
                                  for src in parser.sources)
    for link in parser.links:
        if not link.startswith(("#", "http", "data:")):
            assert (out / link).exists(), link
    assert "origin" in text.lower()


def test_rerun_does_no_training_and_no_prediction(smoke_run, monkeypatch, capsys):
    out, argv, _ = smoke_run

    def forbidden(*args, **kwargs):
        raise AssertionError("work was redone although its inputs did not change")

    monkeypatch.setattr(models, "train_member", forbidden)
    monkeypatch.setattr(models.storage, "load_member", forbidden)
    before = {p: p.stat().st_mtime_ns for p in (out / "cache").rglob("*.npz")}
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    for line in ("member smoke_a: up to date, skipped", "member smoke_b: up to date, skipped",
                 "evaluate: inputs unchanged, skipped", "explain: inputs unchanged, skipped",
                 "slices: inputs unchanged, skipped"):
        assert line in err
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())

    # `pneumoxai evaluate` alone re-uses the cached predictions and prints the results table.
    assert cli.main(["evaluate", "--run", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    results = pd.read_csv(out / "tables" / "results.csv", index_col="model")
    assert f"{results.loc['soft voting', 'roc_auc']:.3f}" in printed and "origin (reported)" in printed
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())


def test_run_folder_from_another_config_is_not_mixed(smoke_run, capsys):
    out, argv, _ = smoke_run
    recorded = (out / "config.json").read_bytes()
    code = cli.main([*argv, "--set", "data.split_seed=1"])
    assert code == cli.EXIT_ERROR
    assert "different data config" in capsys.readouterr().err
    # The rejected call must not leave its config behind for the next `evaluate`.
    assert (out / "config.json").read_bytes() == recorded
    with pytest.raises(RunFolderError):
        cli.main([*argv, "--set", "data.split_seed=1", "--debug"])


def test_report_of_a_copied_run_embeds_every_figure_and_names_the_top_finding(planted_finding, tmp_path):
    run = Path(shutil.copytree(planted_finding[0].root, tmp_path / "run",
                               ignore=shutil.ignore_patterns("cache", "*.pdf", "members")))
    text = write_report(run).read_text(encoding="utf-8")
    parser = _Collector()
    parser.feed(text)
    assert len(parser.sources) == len(list((run / "figures").glob("*.png")))
    magic = {"data:image/png": b"\x89PNG\r\n\x1a\n", "data:image/jpeg": b"\xff\xd8\xff"}
    assert all(base64.b64decode(s.split(",", 1)[1]).startswith(magic[s.split(";", 1)[0]]) for s in parser.sources)
    results = pd.read_csv(run / "tables" / "results.csv", index_col="model")
    assert f"{results.loc['smoke_a', 'accuracy']:.3f}" in text
    findings = pd.read_csv(run / "tables" / "failure_slices.csv")
    assert html.escape(findings.loc[findings["finding"], "slice"].item()) in text
