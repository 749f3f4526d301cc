"""The shift stage on a small run folder built from synthetic images and predictions (no TensorFlow)."""

import json

import cv2
import numpy as np
import pandas as pd
import pytest

from pneumoxai.errors import DataError
from pneumoxai.pipeline.shift import REFERRED, shift_stage
from pneumoxai.run_folder import RunFolder

N = 80  # images per split


def _split(tmp_path, rng, role, gamma):
    """Images whose PNEUMONIA ones have a bright disc; two members score disc contrast plus brightness."""
    side = 32
    yy, xx = np.mgrid[:side, :side]
    disc = ((yy - side / 2) ** 2 + (xx - side / 2) ** 2) < (side / 4) ** 2
    rows = []
    for i in range(N):
        y = int(rng.uniform() < 0.6)
        image = rng.uniform(0.2, 0.5) + rng.normal(0, 0.03, (side, side)) + y * disc * rng.normal(0.3, 0.1)
        image = np.clip(image, 0, 1) ** gamma
        path = tmp_path / "images" / role / f"person{i}_{role}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), np.rint(image * 255).astype(np.uint8))
        contrast = image[disc].mean() - image[~disc].mean()
        logits = [12 * contrast + 6 * image.mean() - 3.5, 10 * contrast + 8 * image.mean() - 4]
        rows.append({"path": str(path), "label": y, "patient_id": f"{role}{i}",
                     "subtype": ("bacteria" if i % 3 else "virus") if y else "normal",
                     **{f"p[m{j}]": 1 / (1 + np.exp(-lg)) for j, lg in enumerate(logits)}})
    frame = pd.DataFrame(rows)
    frame["p[soft voting]"] = frame[["p[m0]", "p[m1]"]].mean(axis=1)
    return frame


@pytest.fixture
def shifted_run(tmp_path, monkeypatch):
    import pneumoxai.pipeline.shift as stage

    monkeypatch.setattr(stage, "N_PERMUTATIONS", 19)
    monkeypatch.setattr(stage, "N_BOOT", 20)
    rng = np.random.default_rng(0)
    run = RunFolder(tmp_path / "run")
    (run.root / "tables").mkdir(parents=True)
    _split(tmp_path, rng, "val", 1.0).to_csv(run.table("predictions_val.csv"), index=False)
    _split(tmp_path, rng, "test", 2.0).to_csv(run.table("predictions_test.csv"), index=False)
    run.table("ensemble.json").write_text(json.dumps({"primary": "soft voting", "members": ["m0", "m1"],
                                                      "thresholds": {"soft voting": 0.5}}))
    return run


def test_shift_stage_finds_the_planted_gamma_and_writes_the_referral_tables(shifted_run):
    from pneumoxai.referral import aurc

    run = shifted_run
    summary = shift_stage(run).set_index("analysis")
    assert summary.loc["output shift (Bonferroni)", "p_value"] < 0.05
    assert summary.loc["domain classifier (image features)", "value"] > 0.6
    # Every test image went through gamma 2, so each class moved too (not only the class mix).
    assert summary.loc["output shift within NORMAL (Bonferroni)", "p_value"] < 0.05
    assert "label shift violated (the NORMAL" in summary.loc["prevalence (BBSE)", "text"]
    assert 0 <= summary.loc["threshold for the true prevalence", "value"] <= 1
    assert summary.loc["prevalence (true)", "value"] == pytest.approx(pd.read_csv(run.table(
        "predictions_test.csv"))["label"].mean())
    features = pd.read_csv(run.table("shift_features.csv"), keep_default_na=False)
    assert features.iloc[0]["feature"] in {"brightness", "contrast_std", "dynamic_range", "entropy"}
    output = pd.read_csv(run.table("shift_output.csv"))
    assert output["column"].tolist() == ["p[m0]", "p[m1]", "p[soft voting]"]
    test = pd.read_csv(run.table("predictions_test.csv"))
    table = pd.read_csv(run.table("referral_table.csv"))
    assert table.loc[table["confidence"] == "margin", "referred"].tolist() == [0, *REFERRED]
    referral = pd.read_csv(run.table("referral_summary.csv")).set_index(["confidence", "role"])
    assert referral.loc[("margin", "test"), "aurc"] == pytest.approx(aurc(test["label"], test["p[soft voting]"]))
    rule = pd.read_csv(run.table("referral_rule.csv"))
    assert set(rule["confidence"]) == {"margin", "logit_margin", "agreement", "combined"}
    for stem in ("shift_features", "referral_curve"):
        assert run.figure(stem) is not None
    # The features are cached per path and role: a second run reads them back.
    cached = pd.read_csv(run.table("shift_image_features.csv"))
    assert sorted(cached["role"].unique()) == ["test", "val"] and len(cached) == 2 * N


def test_shift_stage_needs_the_evaluate_stage(tmp_path):
    from pneumoxai.errors import RunFolderError

    with pytest.raises(RunFolderError, match=r"has no tables/ensemble.json; run `pneumoxai evaluate"):
        shift_stage(RunFolder(tmp_path))


def test_shift_target_refuses_an_empty_folder(shifted_run, tmp_path):
    from pneumoxai.pipeline.shift import _folder_images

    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"holds no images"):
        _folder_images(tmp_path / "empty")


def test_report_sections_and_summary_sentences(shifted_run):
    from pneumoxai._report_shift import shift_sections, shift_sentences

    run = shifted_run
    assert "Not run" in shift_sections(run.root)[0] and shift_sentences(run.root) == []
    shift_stage(run)
    moved, referral = shift_sections(run.root)
    assert moved.startswith('<section id="shift"><h2>Has the data moved?</h2>') and "data:image/png;base64," in moved
    assert referral.startswith('<section id="referral"><h2>Referral</h2>') and "guarantee" in referral
    sentence, rule = shift_sentences(run.root)
    summary = pd.read_csv(run.table("shift_summary.csv")).set_index("analysis")
    assert sentence.startswith("Validation to test, the data has moved")
    assert f"(true {summary.loc['prevalence (true)', 'value']:.3f})" in sentence
    assert rule == pd.read_csv(run.table("referral_rule.csv"))["statement"].iloc[0]


def test_an_unlabelled_target_gets_the_shift_tables_without_truth(shifted_run):
    from pneumoxai.pipeline.shift import _record, _shift_analysis

    run = shifted_run
    val = pd.read_csv(run.table("predictions_val.csv"))
    target = pd.read_csv(run.table("predictions_test.csv")).drop(columns=["label", "patient_id", "subtype"])
    summary = _shift_analysis(run, _record(run), val, target, name="site_b").set_index("analysis")
    assert "prevalence (true)" not in summary.index and "(true" not in summary.loc["prevalence (EM)", "text"]
    assert run.table("shift_features_site_b.csv").is_file() and run.figure("shift_features_site_b") is not None
    assert not run.table("referral_rule.csv").exists()  # referral needs labels
    from pneumoxai import _io
    from pneumoxai._report_shift import shift_sections

    _io.write_json(run.table("shift_targets.json"), {"site_b": {"folder": "/data/site_b", "n_images": N}})
    assert f"Deployment images: site_b ({N} images in <code>/data/site_b</code>" in shift_sections(run.root)[0]


def test_cli_shift_on_a_folder_without_a_run(tmp_path, capsys):
    from pneumoxai import cli

    code = cli.main(["shift", "--run", str(tmp_path), "--target", str(tmp_path)])
    assert code == cli.EXIT_ERROR and "has no config.json" in capsys.readouterr().err


class _FakeMember:
    def __init__(self, name, is_model=True):
        self.name, self.is_model = name, is_model


def test_shift_target_averages_the_members_and_records_the_folder(shifted_run, tmp_path, monkeypatch):
    """shift --target wiring, with the members' predictions stood in by the test split's (no TensorFlow)."""
    import pneumoxai.pipeline.shift as stage
    from pneumoxai.errors import RunFolderError
    from pneumoxai.models import Member

    run = shifted_run
    known = pd.read_csv(run.table("predictions_test.csv")).set_index("path")
    config = {"evaluate": {"batch_size": 8, "tta": False, "chunk_size": 16}, "data": {"interpolation": "auto"}}
    predicted = lambda members, rows, **options: known.loc[rows["path"], ["p[m0]", "p[m1]"]].set_axis(  # noqa: E731
        ["m0", "m1"], axis=1).reset_index(drop=True)
    monkeypatch.setattr(Member, "predict_many", staticmethod(predicted))
    monkeypatch.setattr(stage, "run_members", lambda run, config: [_FakeMember("m0"), _FakeMember("m1")])
    stage.shift_target(run, config, tmp_path / "images" / "test", name="site_b")
    target = pd.read_csv(run.table("predictions_target_site_b.csv")).set_index("path")
    assert len(target) == N
    np.testing.assert_allclose(target["p[soft voting]"], known.loc[target.index, "p[soft voting]"])
    assert json.loads(run.table("shift_targets.json").read_text())["site_b"]["n_images"] == N
    assert pd.read_csv(run.table("shift_summary_site_b.csv"))["analysis"].iloc[0] == "output shift (Bonferroni)"

    monkeypatch.setattr(stage, "run_members", lambda run, config: [_FakeMember("m0"), _FakeMember("p", False)])
    with pytest.raises(RunFolderError, match=r"Member\(s\) \['p'\] are imported prediction files"):
        stage.shift_target(run, config, tmp_path / "images" / "test", name="site_c")
