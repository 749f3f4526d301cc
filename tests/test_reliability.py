"""Bad-input corpus: every class of failure the reliability audit found, one parametrised case each.

Each case is fed through the public entry point a user would call (the CLI or the Python
API) and must end in a pneumoxai error (one line from the CLI) or a correct result, never a
traceback from deep inside NumPy, pandas or Keras, and never a half-written artifact.
"""

import json
import os
import re
import zipfile

import numpy as np
import pandas as pd
import pytest

from pneumoxai import _io, cli, data, metrics, models, pipeline, run_folder
from pneumoxai.config import parse_config
from pneumoxai.errors import (CacheError, ConfigError, DataError, RunFolderError, SkippedFilesWarning,
                              UnsafeModelError, WeightsUnavailableError)
from pneumoxai.predict import predict_members
from pneumoxai.run_folder import RunFolder
from pneumoxai.slices import find_failure_slices

TINY = {"defaults": {"weights": None, "image_size": 32, "dense_units": [8], "epochs_frozen": 1,
                     "epochs_finetune": 0, "batch_size": 8, "balancing": "class_weight"},
        "members": [{"name": "m"}]}


def one_line_error(capsys, argv):
    code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == cli.EXIT_ERROR, err
    assert len(err) == 1 and err[0].startswith("pneumoxai: error: "), err
    return err[0]


# --------------------------------------------------------------------------- silent wrong results


def test_same_bytes_under_both_labels_is_refused(make_kaggle_tree, tmp_path):
    root = make_kaggle_tree(n_per_class=6)
    normal = sorted((root / "train" / "NORMAL").iterdir())[0]
    (root / "train" / "PNEUMONIA" / "person9999_bacteria_1.jpeg").write_bytes(normal.read_bytes())
    with pytest.raises(DataError, match="under both NORMAL and PNEUMONIA"):
        pipeline.prepare(RunFolder(tmp_path / "run"), root, parse_config({**TINY, "data": {"val_fraction": 0.3}}))
    assert not (tmp_path / "run" / "tables" / "dataset.csv").exists()


def test_symlink_from_the_other_label_is_refused(make_kaggle_tree):
    root = make_kaggle_tree(n_per_class=4)
    target = sorted((root / "test" / "PNEUMONIA").iterdir())[0]
    os.symlink(target, root / "test" / "NORMAL" / "IM-7777-0001.jpeg")
    with pytest.raises(DataError, match="reached from both NORMAL/ and PNEUMONIA/"):
        data.scan_dataset(root)


@pytest.mark.parametrize("make_link, reason", [
    (lambda folder: os.symlink(folder / "missing.jpeg", folder / "IM-8888-0001.jpeg"), "dangling symbolic link"),
    (lambda folder: (os.symlink(folder / "IM-8888-0002.jpeg", folder / "IM-8888-0001.jpeg"),
                     os.symlink(folder / "IM-8888-0001.jpeg", folder / "IM-8888-0002.jpeg")), "unreadable"),
], ids=["dangling", "loop"])
def test_broken_links_are_skipped_and_named(make_kaggle_tree, make_link, reason):
    root = make_kaggle_tree(n_per_class=4)
    make_link(root / "train" / "NORMAL")
    with pytest.warns(SkippedFilesWarning, match=f"IM-8888-0001.jpeg \\({reason}"):
        frame = data.scan_dataset(root)
    assert len(frame) == 16 and frame["path"].is_unique


def test_a_file_name_that_is_not_utf8_is_skipped_and_named(make_kaggle_tree):
    root = make_kaggle_tree(n_per_class=4)
    folder = os.fsencode(root / "train" / "NORMAL")
    with open(folder + b"/IM-8888-\xff.jpeg", "wb") as fh:
        fh.write((root / "train" / "NORMAL" / "IM-0000-0000.jpeg").read_bytes())
    with pytest.warns(SkippedFilesWarning, match=r"IM-8888-\\xff.jpeg \(file name is not valid UTF-8; rename it\)"):
        frame = data.scan_dataset(root)
    assert len(frame) == 16


def test_a_one_member_comparison_says_why_delong_is_undefined():
    with pytest.warns(UserWarning, match=r"rank the images identically \(an ensemble of one member is that member\)"):
        result = metrics.compare([0, 1, 0, 1, 1], [0.2, 0.7, 0.4, 0.6, 0.3], [0.2, 0.7, 0.4, 0.6, 0.3])
    assert result["auc_diff"] == 0 and np.isnan(result["auc_p"])


def test_a_file_linked_twice_under_one_label_is_scored_once(make_kaggle_tree):
    root = make_kaggle_tree(n_per_class=4)
    target = sorted((root / "test" / "NORMAL").iterdir())[0]
    os.symlink(target, root / "test" / "NORMAL" / "IM-6666-0001.jpeg")
    with pytest.warns(SkippedFilesWarning, match="reached twice"):
        frame = data.scan_dataset(root)
    assert frame["path"].is_unique and (frame["split"] == "test").sum() == 8


@pytest.mark.parametrize("labels, match", [
    ([0, 0.5, 1, 1], r"labels must hold only 0 \(NORMAL\) and 1 \(PNEUMONIA\); found 0.5"),
    ([0, 1, 1], "4 images but 3 labels"),
    (["0", "1", "1", "0"], "found '0', '1'"),
])
def test_balance_refuses_labels_it_would_silently_change(labels, match):
    with pytest.raises(DataError, match=match):
        data.balance(np.zeros((4, 8, 8, 3), np.float32), labels, "oversample")


def _mean_model(size=8):
    import keras

    inputs = keras.Input((size, size, 3), name="image")
    pooled = keras.layers.GlobalAveragePooling2D(name="head_pool")(inputs)
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="prediction")(pooled))


@pytest.mark.parametrize("images, match", [
    (np.full((2, 8, 8, 3), np.nan, np.float32), "has 384 NaN or infinite values"),
    (np.full((2, 8, 8, 3), 200.0, np.float32), r"must be scaled to \[0, 1\]"),
    ([np.zeros((8, 8, 3)), np.zeros((4, 8, 3))], "ragged sequence"),
    (np.full((2, 8, 8, 3), "x"), "real numeric array"),
])
def test_predict_members_refuses_images_it_would_score_wrongly(images, match):
    with pytest.raises(DataError, match=match):
        predict_members([_mean_model()], images, progress=False)


def test_unknown_card_format_is_refused_even_when_the_cache_hits(tmp_path):
    member = tmp_path / "member"
    models.save_member(member, _mean_model(), {"name": "m"})
    images = np.random.default_rng(0).random((3, 8, 8, 3)).astype(np.float32)
    cache = tmp_path / "cache"
    predict_members([member], images, cache_dir=cache, progress=False)
    card = json.loads((member / "card.json").read_text())
    (member / "card.json").write_text(json.dumps({**card, "format": 99}))
    with pytest.raises(RunFolderError, match="card format 99"):
        predict_members([member], images, cache_dir=cache, progress=False)


def test_a_corrupt_prediction_cache_is_rebuilt(tmp_path):
    images = np.random.default_rng(0).random((3, 8, 8, 3)).astype(np.float32)
    model = _mean_model()
    first = predict_members([model], images, cache_dir=tmp_path, progress=False)
    (entry,) = tmp_path.glob("*.npz")
    raw = bytearray(entry.read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 16] = b"\x00" * 16  # damage the compressed stream, not the zip index
    entry.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="corrupt"):
        again = predict_members([model], images, cache_dir=tmp_path, progress=False)
    np.testing.assert_allclose(again, first)


def test_empty_output_folder_is_refused(capsys, tmp_path):
    line = one_line_error(capsys, ["run", "--out", "", "--data", tmp_path])
    assert "run folder path is empty" in line


# --------------------------------------------------------------------------- one line instead of a traceback


_FORTY = pd.DataFrame({"patient_id": [f"p{i}" for i in range(40)], "label": [0, 1] * 20})


@pytest.mark.parametrize("call, error, match", [
    (lambda: data.split_by_patient(pd.DataFrame({"patient_id": ["a"], "label": [0]}), seed=-1), ConfigError,
     "'seed' parameter of split_by_patient"),
    (lambda: data.load_images([], size="abc"), ConfigError, "'size' parameter of load_images"),
    (lambda: data.load_images([], size=10**6), ConfigError, r"an int in \[8, 4096\]; got 1000000"),
    (lambda: predict_members([_mean_model()], np.zeros((1, 8, 8, 3)), batch_size=0), ConfigError,
     "'batch_size' parameter of predict_members"),
    (lambda: models.build_member(32, weights=None, seed=0, precision="int8"), ConfigError,
     "'precision' parameter of build_member"),
    (lambda: metrics.evaluate([0, 1, 0, 1], [0.2, 0.8, 0.4, 0.6], seed=-1), ConfigError,
     r"'seed' parameter of evaluate must be an int in \[0, 4294967295\]; got -1"),
    (lambda: data.patient_folds(_FORTY, n_splits="abc"), ConfigError,
     r"'n_splits' parameter of patient_folds must be an int in \[2, 40\]; got 'abc'"),
    (lambda: data.patient_folds(_FORTY, n_splits=100), ConfigError, r"must be an int in \[2, 40\]; got 100"),
    (lambda: data.patient_folds(_FORTY, seed=-1), ConfigError, "'seed' parameter of patient_folds"),
    (lambda: data.split_by_patient(_FORTY, "abc"), ConfigError,
     r"'val_fraction' parameter of split_by_patient must be a number in \(0, 1\); got 'abc'"),
    (lambda: find_failure_slices(pd.DataFrame({"c": [[1, 2]] * 40}), _FORTY["label"], np.full(40, 0.5)), DataError,
     "column 'c' of frame holds list values"),
    (lambda: find_failure_slices(pd.DataFrame({"c": [{"a": 1}] * 40}), _FORTY["label"], np.full(40, 0.5)),
     DataError, "column 'c' of frame holds dict values"),
])
def test_api_parameters_are_checked_at_the_boundary(call, error, match):
    with pytest.raises(error, match=match):
        call()


_IMAGES = np.random.default_rng(0).random((4, 8, 8, 3)).astype(np.float32)
_Y, _P = np.array([0, 1, 0, 1]), np.array([0.2, 0.8, 0.3, 0.6])


def _explain():
    from pneumoxai import explain

    return explain


# Every public function that takes seed= checks it with validation.SEED before NumPy, shap or imblearn sees it.
SEEDS = {
    "shap_maps": lambda: _explain().shap_maps(_mean_model(), _IMAGES, _IMAGES, seed=-1),
    "shap_maps partition": lambda: _explain().shap_maps(_mean_model(), _IMAGES, method="partition", seed=-1),
    "GradientSHAP": lambda: _explain().GradientSHAP(_mean_model(), _IMAGES, seed=-1),
    "PartitionSHAP": lambda: _explain().PartitionSHAP(_mean_model(), seed=-1),
    "SaliencyMap": lambda: _explain().SaliencyMap(_mean_model(), seed=-1),
    "saliency": lambda: _explain().saliency(_mean_model(), _IMAGES, seed=-1),
    "background_sample": lambda: _explain().background_sample(_IMAGES, _Y, seed=-1),
    "road_impute": lambda: _explain().road_impute(_IMAGES, np.zeros((4, 8, 8), bool), seed=-1),
    "road": lambda: _explain().road(_mean_model(), _IMAGES, _IMAGES[..., 0], seed=-1),
    "random_map_baseline": lambda: _explain().random_map_baseline(_mean_model(), _IMAGES, seed=-1),
    "randomization_check": lambda: _explain().randomization_check(_mean_model(), _IMAGES, method="saliency", seed=-1),
    "compare_layers": lambda: _explain().compare_layers(_mean_model(), _IMAGES, ["image"], seed=-1),
    "choose_map": lambda: _explain().choose_map(_mean_model(), seed=-1),
    "explanation_sample": lambda: __import__("pneumoxai.outcomes").outcomes.explanation_sample(_Y, _P, 2, seed=-1),
    "balance": lambda: data.balance(_IMAGES, _Y, "oversample", seed=-1),
    "make_dataset": lambda: data.make_dataset(_IMAGES, _Y, seed=-1),
    "build_member": lambda: models.build_member(32, weights=None, seed=-1),
    "plot_explanation_gallery": lambda: __import__("pneumoxai.figures").figures.plot_explanation_gallery(
        _IMAGES[..., 0], {"m": _IMAGES[..., 0]}, _Y, _P, seed=-1),
    "results_table": lambda: metrics.results_table(_Y, {"m": _P}, seed=-1),
    "evaluate": lambda: metrics.evaluate(_Y, _P, seed=-1),
}


@pytest.mark.parametrize("owner", SEEDS)
def test_every_public_seed_is_checked_in_one_line(owner):
    with pytest.raises(ConfigError, match=rf"^The 'seed' parameter of {owner.split()[0]} must be an int in "
                                          r"\[0, 4294967295\]; got -1\.$"):
        SEEDS[owner]()


def _run_folder_with(tmp_path, **files):
    run = tmp_path / "run"
    (run / "tables").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(TINY))
    for name, text in files.items():
        path = run / name.replace("__", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return run


@pytest.mark.parametrize("command, files, match", [
    ("report", {"tables__results.csv": "a,b\n1,2\n"}, "not a readable CSV table"),
    ("report", {"tables__results.csv": b"\x00\xff\xfe garbage"}, "lacks column|not a readable CSV"),
    ("slices", {"tables__predictions_test.csv": "path\nx\n", "tables__ensemble.json": "{}"}, "lacks column"),
    ("slices", {"tables__predictions_test.csv": "path,label,patient_id,subtype\nx,0,p,normal\n",
                "tables__ensemble.json": "[1, 2]"}, "does not hold a JSON object"),
    ("explain", {"tables__predictions_test.csv": "path,label,patient_id,subtype\nx,0,p,normal\n",
                 "tables__ensemble.json": "{\"primary\": \"soft voting\"}"}, "lacks 'members'"),
    ("evaluate", {"tables__dataset.csv": "path,label\nx,0\n"}, "lacks column"),
    ("evaluate", {"config.json": "{not json"}, "is not valid JSON"),
])
def test_damaged_run_folder_files_give_one_line(capsys, tmp_path, command, files, match):
    run = _run_folder_with(tmp_path, **files)
    line = one_line_error(capsys, [command, "--run", run])
    assert re.search(match, line), line


@pytest.mark.parametrize("argv, match", [
    (["explain", "--run", "{run}", "--max-images", "-5"], r"--max-images must be an int in \[1, 10000\]; got -5\.$"),
    (["analyse", "--run", "{run}", "--set", "defaults.seed=1"], "on an existing run, --set changes evaluate, explain"),
    (["evaluate", "--run", "{run}", "--set", "explain.max_images=0"], "'max_images' option in 'explain'"),
    (["train", "--config", "{tmp}", "--data", "{tmp}", "--out", "{tmp}/out"], r"is a folder; pass a YAML or JSON"),
    (["train", "--data", "{run}/config.json", "--out", "{tmp}/out"], "is a file; pass the folder that holds train/"),
    (["evaluate", "--run", "{run}/config.json"], "is a file, not a run folder"),
], ids=["max-images", "set-member-option", "set-out-of-range", "config-dir", "data-file", "run-file"])
def test_misused_options_name_what_they_got(capsys, tmp_path, argv, match):
    run = _run_folder_with(tmp_path)
    config = (run / "config.json").read_bytes()
    line = one_line_error(capsys, [a.format(run=run, tmp=tmp_path) for a in argv])
    assert re.search(match, line), line
    assert (run / "config.json").read_bytes() == config  # a refused --set records nothing


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory):
    """A run made by the list-import route with one tiny model member, evaluated once (copied per case)."""
    from conftest import write_image

    base = tmp_path_factory.mktemp("evaluated")
    rng = np.random.default_rng(0)
    for role in ("val", "test"):
        paths = [write_image(base / "images" / f"{role}_{label}_{i}.png",
                             rng.integers(0, 256, (16, 16), dtype=np.uint8) // (2 - label))
                 for label in (0, 1) for i in range(6)]
        pd.DataFrame({"path": paths, "label": [0] * 6 + [1] * 6}).to_csv(base / f"{role}.csv", index=False)
    _mean_model(32).save(base / "m.keras")
    run = base / "run"
    argv = ["import", "--val-list", base / "val.csv", "--test-list", base / "test.csv", "--out", run,
            "--member", f"m={base / 'm.keras'}", "--set", "evaluate.n_boot=20"]
    assert cli.main([str(a) for a in argv]) == 0
    assert cli.main(["evaluate", "--run", str(run), "--quiet"]) == 0
    return run


def _cut_short(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])


def _drop_last_row(path):
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))


def _card_input_size_abc(path):
    os.chmod(path, 0o644)
    path.write_text(json.dumps({**json.loads(path.read_text()), "input_size": "abc"}))


def _card_format_2(path):
    os.chmod(path, 0o644)
    path.write_text(json.dumps({**json.loads(path.read_text()), "format": 2}))


@pytest.mark.parametrize("command, damaged, damage, match", [
    ("evaluate", "tables/dataset.csv", _cut_short,
     r"dataset.csv is cut short or damaged \(.*\); delete it and re-run the `pneumoxai train`, `run` or `import`"),
    ("evaluate", "tables/dataset.csv", _drop_last_row, r"its rows differ from the dataset recorded in run.json"),
    ("slices", "tables/predictions_test.csv", _cut_short,
     r"predictions_test.csv is cut short or damaged \(.*\); delete it and run `pneumoxai evaluate --run .*run`"),
    ("explain", "tables/predictions_test.csv", _drop_last_row, r"\(11 rows for the 12 test images"),
    ("evaluate", "members/m/card.json", _card_input_size_abc,
     r"card of member .* is damaged \(input_size 'abc' in card.json is not an int in \[8, 4096\]\); delete the "
     r"member's folder "
     r"and import it again with `pneumoxai import --out .*run --member m=PATH`"),
    ("evaluate", "members/m/card.json", _cut_short,
     r"card of member .* is damaged \(card.json is not valid JSON: .*\); delete the member's folder and import it "
     r"again with `pneumoxai import --out .*run --member m=PATH`\.$"),
    ("evaluate", "members/m/card.json", _card_format_2,
     r"is damaged \(card.json has card format 2; this version reads format 1\); delete the member's folder and "
     r"import it again"),
], ids=["dataset-cut", "dataset-row-lost", "predictions-cut", "predictions-row-lost", "card-input-size", "card-cut",
        "card-format"])
def test_damaged_files_of_a_real_run_are_named_with_their_fix(evaluated_run, tmp_path, capsys, command, damaged,
                                                              damage, match):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(evaluated_run, run)
    damage(run / damaged)
    line = one_line_error(capsys, [command, "--run", run])
    assert re.search(match, line), line


def _card_binary(path):
    path.write_bytes(b"\x00\xff\xfe garbage")


def _card_list(path):
    path.write_text("[1, 2]")


@pytest.mark.parametrize("damage, problem", [
    (_cut_short, r"card.json is not valid JSON: Unterminated string"),
    (_card_binary, r"card.json is not valid JSON: 'utf-8' codec can't decode"),
    (_card_list, r"card.json holds a list, not a JSON object"),
    (_card_format_2, r"card.json has card format 2; this version reads format 1"),
    (_card_input_size_abc, r"input_size 'abc' in card.json is not an int in \[8, 4096\]"),
], ids=["cut", "binary", "list", "format", "input-size"])
def test_a_damaged_card_gives_one_line_with_one_fix_through_the_api(tmp_path, damage, problem):
    folder = tmp_path / "m"
    models.save_member(folder, _mean_model(), {"name": "m"})
    damage(folder / "card.json")
    for call in (lambda: models.read_card(folder),
                 lambda: predict_members([folder], np.zeros((8, 8, 8, 3)), progress=False)):
        with pytest.raises(RunFolderError, match=rf"^The card of member '.*m' is damaged \({problem}.*\); delete "
                                                 r"the member's folder and train or import it again\.$") as info:
            call()
        assert str(info.value).count("delete") == 1 and "\n" not in str(info.value)


def _hostile_keras_file(path, patch):
    """A real .keras archive whose config names ``patch`` (module, class) where a layer should be."""
    models.save_member(path.parent, _mean_model(), {"name": "m"})
    archive = path.parent / "model.keras"
    with zipfile.ZipFile(archive) as zf:
        entries = {name: zf.read(name) for name in zf.namelist()}
    config = json.loads(entries["config.json"])
    config["config"]["layers"][1].update(patch)
    entries["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(archive, "w") as zf:
        for name, payload in entries.items():
            zf.writestr(name, payload)
    card = json.loads((path.parent / "card.json").read_text())
    card["model_sha256"] = _io.sha256_file(archive)  # the attacker also rewrote the card
    (path.parent / "card.json").write_text(json.dumps(card))
    return path.parent


@pytest.mark.parametrize("patch", [
    {"module": "os", "class_name": "system", "registered_name": None},
    {"module": "builtins", "class_name": "eval", "registered_name": None},
    {"module": None, "class_name": "NotRegisteredAnywhere", "registered_name": "evil>NotRegisteredAnywhere"},
    {"class_name": "TFSMLayer", "module": "keras.layers"},
], ids=["os.system", "eval", "unregistered", "tfsm"])
def test_hostile_model_files_are_refused_in_one_error(tmp_path, patch):
    member = _hostile_keras_file(tmp_path / "member" / "model.keras", patch)
    with pytest.raises(UnsafeModelError, match="^Refusing to load ") as info:
        models.load_member(member)
    assert "\n" not in str(info.value) and "model.keras" in str(info.value)
    if patch["class_name"] == "TFSMLayer":
        assert "TFSMLayer" in str(info.value)


def test_a_vocabulary_file_outside_the_archive_is_named_not_blamed_on_a_lambda_layer(tmp_path):
    vocabulary = tmp_path / "vocabulary.txt"
    vocabulary.write_text("a\nb\n")
    member = _hostile_keras_file(tmp_path / "member" / "model.keras", {
        "class_name": "StringLookup", "module": "keras.layers", "registered_name": None,
        "config": {"name": "lookup", "vocabulary": str(vocabulary)}})
    with pytest.raises(UnsafeModelError, match=r"^Refusing to load .*model.keras': its StringLookup layer \['lookup'\] "
                                               r"only loads with safe_mode=False \('Requested the loading of a "
                                               r"vocabulary file outside of the model archive'\)") as info:
        models.load_member(member)
    assert "Lambda" not in str(info.value) and "\n" not in str(info.value)


def test_a_file_that_is_not_a_weights_file_is_one_error(tmp_path):
    fake = tmp_path / "resnet50_notop.h5"
    fake.write_bytes(b"not an HDF5 file at all")
    with pytest.raises(WeightsUnavailableError, match=r"is not a weights file for ResNet50 .*Received: weights="):
        models.build_member(32, weights=str(fake))


def test_members_too_small_for_class_activation_maps_are_refused_by_explain():
    from pneumoxai.explain import feature_map_size
    from pneumoxai.pipeline.explanations import _check_explainable

    small, large = (models.build_member(side, weights=None, dense_units=(4,)) for side in (32, 64))
    assert feature_map_size(small) == (1, 1) and feature_map_size(large) == (2, 2)
    _check_explainable([large])
    with pytest.raises(ConfigError, match=r"member\(s\) member \(1x1\) is 1 pixel wide.*image_size >= 64"):
        _check_explainable([large, small])


# --------------------------------------------------------------------------- faults


def test_orphan_temp_files_are_removed_when_the_folder_is_locked_again(tmp_path):
    run = RunFolder(tmp_path / "run")
    with run.lock():
        pass
    orphan = run.root / "tables" / ".results.csv.ab12cd34.csv"
    orphan.parent.mkdir()
    orphan.write_text("half")
    keep = run.root / "tables" / "results.csv"
    keep.write_text("whole")
    with run.lock():
        assert not orphan.exists() and keep.exists()
    assert not list(run.root.glob(".write-test-*"))


def test_a_full_disk_names_the_artifact(tmp_path, monkeypatch):
    def no_space(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    target = tmp_path / "tables" / "results.csv"
    with pytest.raises(OSError, match="No space left on device") as info:
        _io.write_text(target, "x")
    assert info.value.filename == str(target)
    assert not target.exists() and not list(target.parent.iterdir())


def test_damaged_json_cache_files_are_cache_errors(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("{")
    with pytest.raises(CacheError, match="not valid JSON"):
        _io.read_json(path)
    assert RunFolder(tmp_path).read_json(tmp_path / "missing.json") is None


def test_config_errors_never_echo_a_huge_value():
    with pytest.raises(ConfigError) as info:
        parse_config({"members": [{"name": "m", "seed": "9" * 10**6}]})
    assert len(str(info.value)) < 400


def test_cli_error_after_tensorflow_loaded_is_one_line(tmp_path):
    """A subprocess, so TensorFlow's start-up output (on file descriptor 2) would show if not silenced."""
    import subprocess
    import sys

    run = _run_folder_with(tmp_path, **{"tables__dataset.csv": "path,label\nx,0\n"})
    result = subprocess.run([sys.executable, "-m", "pneumoxai.cli", "evaluate", "--run", str(run)],
                            capture_output=True, text=True, timeout=300,
                            env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"})
    assert result.returncode == cli.EXIT_ERROR
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr
    assert result.stderr.startswith("pneumoxai: error: ") and "lacks column" in result.stderr


# --------------------------------------------------------------------------- accepted options work end to end


# input_norm: a member option that must reach every saved snapshot.
SNAPSHOT_DEFAULTS = {**TINY["defaults"], "schedule": "cosine", "epochs_frozen": 2, "input_norm": "standardize"}


def _snapshot_config(tmp_path, snapshots):
    config = tmp_path / f"snap{snapshots}.yaml"
    config.write_text(json.dumps({**TINY, "defaults": {**SNAPSHOT_DEFAULTS, "snapshots": snapshots}}))
    return config


def test_a_snapshot_ensemble_member_trains_into_the_run_folder_as_its_snapshots(make_kaggle_tree, tmp_path, capsys,
                                                                               monkeypatch):
    root, run = make_kaggle_tree(n_per_class=6, size=32), tmp_path / "run"
    train = ["train", "--data", root, "--out", run, "--quiet"]
    assert cli.main([str(a) for a in train + ["--config", _snapshot_config(tmp_path, 2)]]) == 0, capsys.readouterr()
    folders = [run / "members" / "m" / f"m_snap{k}" for k in (1, 2)]
    cards = [models.read_card(folder) for folder in folders]
    assert [c["name"] for c in cards] == ["m_snap1", "m_snap2"] and [c["epochs_run"] for c in cards] == [1, 2]
    assert all(0 <= c["val_metrics"]["roc_auc"] <= 1 and c["config"]["snapshots"] == 2 for c in cards)
    assert not (run / "members" / "m" / run_folder.SNAPSHOT_STATE).exists()  # resume state gone once finished
    first, second = (models.load_member(f)[0] for f in folders)
    assert first.get_layer("preprocess").input_norm == second.get_layer("preprocess").input_norm == "standardize"
    assert max(np.abs(a - b).max() for a, b in zip(first.get_weights(), second.get_weights())) > 1e-4  # two models

    # The analyses see the snapshots as members: one column each, and their soft vote.
    assert cli.main(["evaluate", "--run", str(run), "--quiet"]) == 0, capsys.readouterr().err
    results = pd.read_csv(run / "tables" / "results.csv", index_col="model")
    assert {"m_snap1", "m_snap2", "soft voting"} <= set(results.index)
    test = pd.read_csv(run / "tables" / "predictions_test.csv")
    np.testing.assert_allclose(test["p[soft voting]"], (test["p[m_snap1]"] + test["p[m_snap2]"]) / 2, atol=1e-6)

    # Up to date: nothing trains again.
    monkeypatch.setattr(models, "train_member", lambda *a, **k: pytest.fail("retrained an up-to-date member"))
    assert cli.main([str(a) for a in train + ["--config", _snapshot_config(tmp_path, 2)]]) == 0
    monkeypatch.undo()

    # A changed config retrains, and the old run's extra snapshot does not linger among the members.
    (run / "members" / "m" / "m_snap3").mkdir()
    assert cli.main([str(a) for a in train + ["--config", _snapshot_config(tmp_path, 2)
                                              ] + ["--set", "defaults.seed=5"]]) == 0, capsys.readouterr().err
    assert sorted(p.name for p in (run / "members" / "m").iterdir() if p.is_dir()) == ["m_snap1", "m_snap2"]
    assert models.read_card(folders[0])["seed"] == 5


@pytest.mark.parametrize("overrides, match", [
    ({"schedule": "plateau"}, "needs schedule='cosine'"),
    ({"epochs_frozen": 3}, "must divide the epochs"),
])
def test_inconsistent_snapshot_members_are_refused_before_training(make_kaggle_tree, tmp_path, capsys, overrides,
                                                                  match):
    root = make_kaggle_tree(n_per_class=4, size=32)
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({**TINY, "defaults": {**SNAPSHOT_DEFAULTS, "snapshots": 2, **overrides}}))
    line = one_line_error(capsys, ["train", "--data", root, "--config", config, "--out", tmp_path / "run"])
    assert re.search(match, line), line
    assert not (tmp_path / "run" / "members" / "m").exists()


def test_prediction_cache_and_pixels_follow_the_interpolation(tmp_path):
    import cv2

    paths = []
    for i in range(3):
        image = np.random.default_rng(i).integers(0, 256, (40, 29, 3), dtype=np.uint8)
        cv2.imwrite(str(tmp_path / f"{i}.png"), image)
        paths.append(str(tmp_path / f"{i}.png"))
    table = pd.DataFrame({"path": paths, "label": [0, 1, 0]})
    model = _mean_model()
    cache = tmp_path / "cache"
    for interpolation in ("area", "pil-nearest"):
        got = predict_members([model], table, cache_dir=cache, interpolation=interpolation, progress=False)[:, 0]
        own = model.predict(data.load_images(paths, 8, interpolation=interpolation), verbose=0)[:, 0]
        np.testing.assert_allclose(got, own, rtol=1e-6)
    assert len(list(cache.glob("*.npz"))) == 2  # one cache entry per resize method
