"""The bad-input corpus, end to end through the command line.

Every case ends in either a finished command whose warnings name the problem, or a
non-zero exit with one readable line; never a traceback, never a half-written artifact.
"""

import errno
import json
import os
import pickle
import re

import cv2
import numpy as np
import pandas as pd
import pytest

from pneumoxai import _io, cli
from pneumoxai.errors import CacheError
from pneumoxai.run_folder import RunFolder

from conftest import write_image

TINY = ("defaults: {weights: null, image_size: 32, dense_units: [8], epochs_frozen: 1, epochs_finetune: 0, "
        "balancing: none, batch_size: 8}\nmembers:\n  - {name: a}\n")


def run_cli(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_line(err):
    lines = [line for line in err.splitlines() if line.startswith("pneumoxai: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


def _break_tree(root, breakage):
    if breakage == "class folder missing":
        for path in (root / "test" / "NORMAL").iterdir():
            path.unlink()
        (root / "test" / "NORMAL").rmdir()
    elif breakage == "empty split":
        for path in (root / "test" / "PNEUMONIA").iterdir():
            path.unlink()
        for path in (root / "test" / "NORMAL").iterdir():
            path.unlink()
    elif breakage == "single-class test set":
        for path in (root / "test" / "NORMAL").iterdir():
            path.unlink()
        (root / "test" / "NORMAL" / "notes.txt").write_text("not an image file name: ignored")
    elif breakage == "only unreadable files in a class":
        for path in (root / "train" / "NORMAL").iterdir():
            path.write_bytes(b"")


@pytest.mark.parametrize("breakage, match", [
    ("class folder missing", r"has no NORMAL/ folder"),
    ("empty split", r"holds no images"),
    ("single-class test set", r"The test data holds 0 NORMAL and \d+ PNEUMONIA images"),
    ("only unreadable files in a class", r"(training|train) data holds 0 NORMAL"),
])
def test_broken_datasets_stop_before_training(make_kaggle_tree, tmp_path, capsys, tiny_config, breakage, match):
    root = make_kaggle_tree(n_per_class=6, size=32)
    _break_tree(root, breakage)
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--data", root, "--config", tiny_config, "--out", run, "--quiet")
    assert code == cli.EXIT_ERROR
    assert re.search(match, error_line(err)), err
    assert not (run / "members" / "a" / "card.json").exists()
    assert not list(run.rglob(".*.tmp")) and not list(run.rglob(".*.json.*"))


@pytest.fixture
def messy_run(make_kaggle_tree, tmp_path_factory, tiny_config):
    """A tree with every kind of awkward file, trained through the CLI once."""
    root = make_kaggle_tree(n_per_class=8, size=32)
    normal, pneumonia = root / "train" / "NORMAL", root / "train" / "PNEUMONIA"
    (normal / "IM-0900-0001.jpeg").write_bytes(b"")  # zero bytes
    good = next(pneumonia.iterdir()).read_bytes()
    (pneumonia / "person900_bacteria_1.jpeg").write_bytes(good[: len(good) // 3])  # truncated
    (pneumonia / "person901_virus_1.jpeg").write_text("not an image, despite its name")
    write_image(normal / "IM-0901-0001.png", np.full((40, 40), 30000, np.uint16))  # 16-bit
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = 90, 128
    write_image(normal / "IM-0902-0001.png", rgba)  # alpha channel
    huge = np.zeros((8192, 8192), np.uint8)
    cv2.circle(huge, (4096, 4096), 3000, 200, -1)
    write_image(pneumonia / "person902_bacteria_1.png", huge)  # 8k x 8k
    leaked = next((root / "test" / "PNEUMONIA").iterdir())
    (pneumonia / "person903_bacteria_1.jpeg").write_bytes(leaked.read_bytes())  # a test image copied into train
    run = tmp_path_factory.mktemp("messy") / "run"
    return root, run, tiny_config


def test_awkward_files_are_loaded_or_skipped_by_name_and_leakage_is_reported(messy_run, capsys, recwarn):
    root, run, config = messy_run
    code, out, err = run_cli(capsys, "train", "--data", root, "--config", config, "--out", run, "--quiet")
    assert code == 0, err
    assert "Traceback" not in err
    messages = [str(w.message) for w in recwarn]  # the CLI prints these as "pneumoxai: warning: ..." lines
    skipped = next(m for m in messages if "Skipped 3 unreadable file(s)" in m)
    for name, why in [("IM-0900-0001.jpeg", "empty file"), ("person901_virus_1.jpeg", "not a decodable image"),
                      ("person900_bacteria_1.jpeg", "")]:
        assert f"{name}: {why}" in skipped
    assert any(re.search(r"1 image\(s\) are byte-identical copies across test/(train|val)", m) for m in messages)
    dataset = pd.read_csv(run / "tables" / "dataset.csv")
    names = set(dataset["path"].map(os.path.basename))
    assert {"IM-0901-0001.png", "IM-0902-0001.png", "person902_bacteria_1.png"} <= names  # 16-bit, RGBA, 8k kept
    assert not {"IM-0900-0001.jpeg", "person901_virus_1.jpeg", "person900_bacteria_1.jpeg"} & names
    duplicates = pd.read_csv(run / "tables" / "duplicates.csv")
    assert sorted(duplicates["role"]) == ["test", "train"] or sorted(duplicates["role"]) == ["test", "val"]
    assert (run / "members" / "a" / "card.json").exists()

    # A members folder written by another pneumoxai version is refused with one line.
    card_path = run / "members" / "a" / "card.json"
    card = json.loads(card_path.read_text())
    card["format"] = 99
    card_path.write_text(json.dumps(card))
    code, _, err = run_cli(capsys, "evaluate", "--run", run)
    assert code == cli.EXIT_ERROR and "card format 99" in error_line(err)


def test_full_disk_gives_one_line_and_no_half_written_artifact(make_kaggle_tree, tmp_path, capsys, monkeypatch,
                                                               tiny_config):
    root = make_kaggle_tree(n_per_class=4, size=32)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("previous")

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_io.os, "fsync", no_space)
    code, _, err = run_cli(capsys, "train", "--data", root, "--config", tiny_config, "--out", run)
    line = error_line(err)
    assert code == cli.EXIT_ERROR and "No space left on device" in line and "run.json" in line  # names the artifact
    assert (run / "config.json").read_text() == "previous"  # the old artifact is intact
    assert sorted(p.name for p in run.iterdir()) == [".lock", "config.json"]  # no temp file; the lock is free
    with RunFolder(run).lock():
        pass


class _Payload:
    """Unpickling this would create ``marker``: proof that code from a file ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_planted_pickle_in_a_cache_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "executed"
    planted = tmp_path / "cache.npz"
    np.savez(planted, proba=np.array([_Payload(str(marker))], dtype=object))
    assert pickle.dumps(_Payload(str(marker)))  # the payload is a real pickle
    with pytest.raises(CacheError, match="corrupt or truncated"):
        _io.load_npz(planted)
    assert not marker.exists()
    with pytest.raises(TypeError, match="never pickles"):
        _io.save_npz(tmp_path / "out.npz", objects=np.array([object()], dtype=object))
