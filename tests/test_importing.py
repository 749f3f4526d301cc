"""`pneumoxai import` / `analyse`: members trained elsewhere, analysed without ever being retrained."""

import json
import os

import numpy as np
import pandas as pd
import pytest

from pneumoxai import cli, data, models, pipeline
from pneumoxai.config import parse_config
from pneumoxai.errors import DataError
from pneumoxai.importing import read_predictions_file
from pneumoxai.run_folder import RunFolder

FAST = ["--set", "evaluate.n_boot=20", "--set", "evaluate.stacking_cv=2", "--set", "slices.min_size=2",
        "--set", "explain.max_images=4", "--set", "explain.methods=[gradcam]"]


def run_cli(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _planted_predictions(root, path, seed, strength=0.35):
    """Probabilities that rank PNEUMONIA above NORMAL with noise; relative paths, as another framework writes."""
    frame = data.scan_dataset(root)
    rng = np.random.default_rng(seed)
    prob = np.clip(0.5 + strength * (2 * frame["label"] - 1) + rng.normal(0, 0.2, len(frame)), 0, 1)
    rel = [os.path.relpath(p, root) for p in frame["path"]]
    pd.DataFrame({"path": rel, "probability": prob}).to_csv(path, index=False)
    return frame.assign(probability=prob)


@pytest.fixture
def imported(make_kaggle_tree, tmp_path, capsys):
    root = make_kaggle_tree(n_per_class=12, size=32)
    truth = {name: _planted_predictions(root, tmp_path / f"{name}.csv", seed)
             for name, seed in (("vendor_a", 0), ("vendor_b", 1))}
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "import", "--data", root, "--out", run,
                             "--member", f"vendor_a={tmp_path / 'vendor_a.csv'}",
                             "--member", f"vendor_b={tmp_path / 'vendor_b.csv'}", *FAST)
    assert code == 0, err
    assert "pneumoxai analyse --run" in out
    return root, run, truth


def test_imported_predictions_are_evaluated_as_given(imported, capsys):
    root, run, truth = imported
    code, _, err = run_cli(capsys, "analyse", "--run", run)
    assert code == 0, err
    assert "explain: skipped: every member is an imported predictions file" in err
    predictions = pd.read_csv(run / "tables" / "predictions_test.csv")
    for name, frame in truth.items():
        expected = frame.set_index("path").loc[predictions["path"], "probability"].to_numpy()
        np.testing.assert_allclose(predictions[f"p[{name}]"], expected)  # merged on path, row-aligned
    results = pd.read_csv(run / "tables" / "results.csv", index_col="model")
    assert "origin (reported)" not in results.index  # not the origin's recipe
    assert {"vendor_a", "vendor_b", "soft voting"} <= set(results.index)
    assert (run / "report.html").is_file() and (run / "tables" / "failure_slices.csv").is_file()


def test_imported_members_are_read_only_and_never_retrained(imported, capsys, monkeypatch):
    root, run, _ = imported
    card = run / "members" / "vendor_a" / "card.json"
    assert not os.access(card, os.W_OK) or os.geteuid() == 0  # root ignores permission bits
    assert not (os.stat(card).st_mode & 0o222)

    def forbidden(*args, **kwargs):
        raise AssertionError("an imported member was trained")

    monkeypatch.setattr(models, "train_member", forbidden)
    config = run.parent / "clash.yaml"
    config.write_text("defaults: {weights: null, image_size: 32, dense_units: [8], epochs_frozen: 1, "
                      "epochs_finetune: 0, batch_size: 8}\nmembers:\n  - name: vendor_a\n")
    code, _, err = run_cli(capsys, "train", "--data", root, "--config", config, "--out", run)
    assert code == cli.EXIT_ERROR and "were imported; pneumoxai never retrains or overwrites" in err
    before = card.read_bytes()
    code, _, err = run_cli(capsys, "import", "--data", root, "--out", run, "--member", f"vendor_a={config}")
    assert code == cli.EXIT_ERROR and "neither a model" in err
    other = run.parent / "other.csv"
    _planted_predictions(root, other, seed=5)
    code, _, err = run_cli(capsys, "import", "--data", root, "--out", run, "--member", f"vendor_a={other}")
    assert code == cli.EXIT_ERROR and "never overwrites a member" in err
    assert card.read_bytes() == before


def test_a_training_config_keeps_the_imported_members(imported):
    _, run, _ = imported
    trained = parse_config({"members": [{"name": "own", "weights": None, "image_size": 32}]})
    merged = pipeline.with_imported_members(RunFolder(run), trained)
    assert [m["name"] for m in merged["members"]] == ["own", "vendor_a", "vendor_b"]
    assert [m["imported"] for m in merged["members"]] == [False, True, True]


def test_a_parquet_predictions_file_reads_like_the_csv(tmp_path):
    frame = pd.DataFrame({"path": ["test/NORMAL/a.jpeg", "/abs/b.jpeg"], "probability": [0.25, 0.75]})
    frame.to_parquet(tmp_path / "p.parquet")
    frame.to_csv(tmp_path / "p.csv", index=False)
    parquet = read_predictions_file(tmp_path / "p.parquet", data_root=tmp_path)
    pd.testing.assert_frame_equal(parquet, read_predictions_file(tmp_path / "p.csv", data_root=tmp_path))
    assert parquet["path"].tolist() == [str(tmp_path / "test/NORMAL/a.jpeg"), "/abs/b.jpeg"]


@pytest.mark.parametrize("content, match", [
    ("path,prob\nx,0.5\n", r"lacks column\(s\) \['probability'\]"),
    ("path,probability\nx,1.5\n", r"probabilities in \[0, 1\]"),
    ("path,probability\nx,0.5\nx,0.6\n", "lists 1 image"),
    ("path,probability\nx,abc\n", "numeric probabilities"),
])
def test_bad_prediction_files_are_refused(tmp_path, content, match):
    path = tmp_path / "p.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=match):
        read_predictions_file(path, data_root=tmp_path)


def test_predictions_missing_for_test_images_are_refused(make_kaggle_tree, tmp_path, capsys):
    root = make_kaggle_tree(n_per_class=6, size=32)
    _planted_predictions(root, tmp_path / "p.csv", seed=0)
    frame = pd.read_csv(tmp_path / "p.csv")
    frame[~frame["path"].str.startswith("test/")].to_csv(tmp_path / "p.csv", index=False)
    code, _, err = run_cli(capsys, "import", "--data", root, "--out", tmp_path / "run", "--member",
                           f"p={tmp_path / 'p.csv'}")
    assert code == cli.EXIT_ERROR and "has no probability for 12 of the" in err


@pytest.mark.parametrize("spec", ["model.keras", "=model.keras", "name="])
def test_a_member_spec_without_a_name_is_refused_before_any_work(tmp_path, capsys, spec):
    code, _, err = run_cli(capsys, "import", "--data", tmp_path, "--out", tmp_path / "run", "--member", spec)
    assert code == cli.EXIT_ERROR and err.count("\n") == 1
    assert "must look like NAME=PATH" in err
    assert not (tmp_path / "run").exists()


def test_user_given_validation_and_test_lists(make_kaggle_tree, tmp_path, capsys):
    root = make_kaggle_tree(n_per_class=8, size=32)
    frame = data.scan_dataset(root)
    val = frame[frame["split"] == "train"][["path", "label", "patient_id"]]
    test = frame[frame["split"] == "test"][["path", "label"]]
    val.to_csv(tmp_path / "val.csv", index=False)
    test.to_csv(tmp_path / "test.csv", index=False)
    _planted_predictions(root, tmp_path / "p.csv", seed=0)
    preds = pd.read_csv(tmp_path / "p.csv")
    preds["path"] = [str(root / p) for p in preds["path"]]
    preds.to_csv(tmp_path / "p.csv", index=False)
    code, _, err = run_cli(capsys, "import", "--val-list", tmp_path / "val.csv", "--test-list", tmp_path / "test.csv",
                           "--out", tmp_path / "run", "--member", f"p={tmp_path / 'p.csv'}", *FAST)
    assert code == 0, err
    table = pd.read_csv(tmp_path / "run" / "tables" / "dataset.csv")
    assert table.groupby("role").size().to_dict() == {"test": 16, "val": 16}
    card = json.loads((tmp_path / "run" / "members" / "p" / "card.json").read_text())
    assert card["kind"] == "predictions" and card["imported"] and card["n_predictions"] == 32


def _caffe_softmax_model(size=32):
    """A small classifier trained elsewhere: caffe-preprocessed input, 2-unit softmax head (unit 1 = PNEUMONIA)."""
    import keras

    small = keras.initializers.RandomNormal(stddev=0.02, seed=0)  # caffe input spans about +-150
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu", kernel_initializer=small)(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu", kernel_initializer=small)(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))


def _spread_the_head(model, caffe_images):
    """Set the softmax head so the PNEUMONIA logit has mean 0 and std 2 on these images (no saturation)."""
    import keras

    features = keras.Model(model.inputs, model.get_layer("gap").output).predict(caffe_images, verbose=0)
    direction = np.random.default_rng(0).normal(size=features.shape[1])
    logit = features @ direction
    kernel = np.zeros((features.shape[1], 2), np.float32)
    kernel[:, 1] = direction * 2 / logit.std()
    model.layers[-1].set_weights([kernel, np.array([0.0, -2 * logit.mean() / logit.std()], np.float32)])


def test_an_imported_model_gives_its_own_probabilities_and_is_explained(make_kaggle_tree, tmp_path, capsys):
    import keras

    root = make_kaggle_tree(n_per_class=12, size=32)
    model = _caffe_softmax_model()
    x_all = data.load_images(data.scan_dataset(root)["path"], 32)
    _spread_the_head(model, keras.applications.resnet50.preprocess_input(x_all * 255.0))
    model.save(tmp_path / "theirs.keras")
    _planted_predictions(root, tmp_path / "vendor.csv", seed=3)
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "import", "--data", root, "--out", run,
                           "--member", f"theirs={tmp_path / 'theirs.keras'}", "--preprocess", "theirs=caffe",
                           "--member", f"vendor={tmp_path / 'vendor.csv'}", *FAST)
    assert code == 0, err
    code, _, err = run_cli(capsys, "analyse", "--run", run)
    assert code == 0, err
    assert "member(s) vendor are prediction files; the maps come from the model members only" in err
    predictions = pd.read_csv(run / "tables" / "predictions_test.csv")
    x = data.load_images(predictions["path"], 32)
    own = model.predict(keras.applications.resnet50.preprocess_input(x * 255.0), verbose=0)[:, 1]
    assert own.std() > 0.01  # a model that tells images apart, so the comparison means something
    assert np.abs(predictions["p[theirs]"].to_numpy() - own).max() < 1e-5
    assert (run / "maps" / "test_maps.npz").is_file() and (run / "figures" / "gallery.png").is_file()
    card = json.loads((run / "members" / "theirs" / "card.json").read_text())
    assert card["imported"] and card["kind"] == "model" and card["preprocess"] == "caffe"
    # The report's members table says what is known of both, never "None".
    report = (run / "report.html").read_text(encoding="utf-8")
    members = report[report.index('<section id="members">'):report.index("</section>", report.index('id="members"'))]
    assert f"imported model from {(tmp_path / 'theirs.keras').resolve()}; input 32 px, preprocessing caffe" in members
    assert f"imported predictions from {(tmp_path / 'vendor.csv').resolve()}" in members and "None" not in members
    # The slices stage looks for its embedding layer in the file, without loading the model.
    loaded, _ = models.load_member(run / "members" / "theirs")
    assert models.Member(run / "members" / "theirs").layer_names() == {layer.name for layer in loaded.layers}


def test_deployment_prevalence_sets_the_threshold_on_validation(make_kaggle_tree, tmp_path, capsys):
    from pneumoxai.metrics import prevalence_threshold

    root = make_kaggle_tree(n_per_class=12, size=32)
    _planted_predictions(root, tmp_path / "p.csv", seed=4)
    run = tmp_path / "run"
    assert run_cli(capsys, "import", "--data", root, "--out", run, "--member", f"p={tmp_path / 'p.csv'}", *FAST,
                   "--set", "evaluate.deployment_prevalence=0.3")[0] == 0
    code, _, err = run_cli(capsys, "analyse", "--run", run, "--skip", "slices")
    assert code == 0, err
    val = pd.read_csv(run / "tables" / "predictions_val.csv")
    thresholds = json.loads((run / "tables" / "ensemble.json").read_text())["thresholds"]
    assert thresholds["p"] == pytest.approx(prevalence_threshold(val["label"], val["p[p]"], 0.3))


def _lists_of(root, folder):
    """The documented list route's two CSVs: the tree's train/ images as the validation list, test/ as the test list."""
    frame = data.scan_dataset(root)
    for role, split in (("val", "train"), ("test", "test")):
        frame.loc[frame["split"] == split, ["path", "label", "patient_id"]].to_csv(folder / f"{role}.csv", index=False)
    return folder / "val.csv", folder / "test.csv"


def test_the_documented_list_import_route_runs_with_the_default_config(make_kaggle_tree, tmp_path, capsys):
    """README's route: `import --val-list --test-list --member --preprocess --positive-index`, then `analyse`,
    nothing else set. The run has no training images, so SHAP's background comes from the validation images."""
    import keras

    root = make_kaggle_tree(n_per_class=4, size=32)
    model = _caffe_softmax_model()
    _spread_the_head(model, keras.applications.resnet50.preprocess_input(
        data.load_images(data.scan_dataset(root)["path"], 32) * 255.0))
    model.save(tmp_path / "model.keras")
    val, test = _lists_of(root, tmp_path)
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "import", "--val-list", val, "--test-list", test, "--member",
                             f"m={tmp_path / 'model.keras'}", "--preprocess", "m=caffe", "--positive-index", "m=1",
                             "--out", run)
    assert code == 0, err
    assert f"Next: pneumoxai analyse --run {run}" in out
    code, _, err = run_cli(capsys, "analyse", "--run", run)
    assert code == 0, err
    assert "explain: SHAP background from the 8 validation images (the run has no training images)" in err
    with np.load(run / "maps" / "explain.npz") as maps:
        methods, shap, paths = list(maps["methods"]), maps["map_2"], maps["paths"]
    assert methods == ["Grad-CAM", "Grad-CAM++", "SHAP"]  # the default explain.methods
    assert len(paths) == 8 and shap.shape == (8, 224, 224) and np.abs(shap).max() > 0
    assert (run / "report.html").is_file()


def _tree_hashes(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_refused_import_leaves_the_run_folder_byte_identical(make_kaggle_tree, tmp_path, capsys):
    root = make_kaggle_tree(n_per_class=6, size=32)
    for name, seed in (("a", 0), ("c", 2)):
        _planted_predictions(root, tmp_path / f"{name}.csv", seed)
    pd.read_csv(tmp_path / "a.csv").rename(columns={"probability": "prob"}).to_csv(tmp_path / "bad.csv", index=False)
    run = tmp_path / "run"
    fresh = ["--data", root, "--member", f"c={tmp_path / 'c.csv'}", "--member", f"bad={tmp_path / 'bad.csv'}"]

    # A new folder is not even created.
    code, _, err = run_cli(capsys, "import", "--out", run, *fresh)
    assert code == cli.EXIT_ERROR and not run.exists()
    assert "lacks column(s) ['probability']" in err and "Nothing was imported" in err

    # An existing run: the good members before and after the bad one are not written either.
    assert run_cli(capsys, "import", "--out", run, "--data", root, "--member", f"a={tmp_path / 'a.csv'}")[0] == 0
    before = _tree_hashes(run)
    code, _, err = run_cli(capsys, "import", "--out", run, "--member", f"a={tmp_path / 'a.csv'}", *fresh)
    assert code == cli.EXIT_ERROR and err.count("\n") == 1
    assert "pneumoxai: error: Predictions file" in err and "lacks column(s) ['probability']" in err
    assert (f"Nothing was imported and {str(run)!r} is unchanged; fix this and run the same `pneumoxai import` "
            "again") in err
    assert _tree_hashes(run) == before  # every file byte-identical, none added (the lock file too: same process)


def test_analysis_options_can_be_set_on_an_existing_run(imported, capsys):
    _, run, _ = imported
    code, _, err = run_cli(capsys, "evaluate", "--run", run, "--quiet", "--set", "evaluate.threshold=0.3")
    assert code == 0, err
    thresholds = json.loads((run / "tables" / "ensemble.json").read_text())["thresholds"]
    assert set(thresholds.values()) == {0.3}
    assert json.loads((run / "config.json").read_text())["evaluate"]["threshold"] == 0.3  # recorded for report
