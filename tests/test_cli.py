import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sklearn.metrics import roc_auc_score

from pneumoxai import cli
from pneumoxai.models import cached as predict
from pneumoxai.pipeline.evaluate import member_predictions
from pneumoxai.run_folder import RunFolder

SMOKE = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "smoke.yaml"


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("setup, match", [
    (lambda tmp: ["--data", str(tmp / "nowhere"), "--config", str(SMOKE)], "does not exist"),
    (lambda tmp: ["--data", str(tmp), "--config", str(write(tmp / "bad.yaml", "members: [ {name: a"))],
     "is not valid YAML"),
    (lambda tmp: ["--data", str(tmp), "--config", str(write(tmp / "k.yaml", "members:\n  - {name: a, epochz: 1}\n"))],
     r"Unknown config key\(s\) \['epochz'\].*valid keys"),
    (lambda tmp: ["--data", str(tmp), "--config", str(SMOKE), "--set", "defaults.epochs_frozen=-1"],
     r"'epochs_frozen' option .* must be an int in \[0, 10000\]; got -1"),
    (lambda tmp: ["--data", str(tmp), "--config", str(SMOKE), "--set", "defaults.dropout=1.5"],
     r"'dropout' option .* must be a number in \[0, 1\); got 1.5"),
    (lambda tmp: ["--data", str(tmp), "--config", str(tmp / "missing.yaml")], "does not exist"),
])
def test_train_bad_input_one_line_nonzero_exit(tmp_path, capsys, setup, match):
    code, out, err = run_cli(capsys, "train", "--out", str(tmp_path / "run"), *setup(tmp_path))
    assert code == cli.EXIT_ERROR
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("pneumoxai: error: ")
    assert pytest.importorskip("re").search(match, lines[0])
    assert "Traceback" not in err


def test_debug_shows_the_traceback(tmp_path):
    from pneumoxai.errors import DataError

    with pytest.raises(DataError):
        cli.main(["train", "--debug", "--data", str(tmp_path / "nowhere"), "--config", str(SMOKE),
                  "--out", str(tmp_path / "run")])


@pytest.mark.parametrize("command", ["evaluate", "explain", "slices", "report"])
def test_analysis_commands_on_an_empty_folder(tmp_path, capsys, command):
    code, _, err = run_cli(capsys, command, "--run", str(tmp_path))
    assert code == cli.EXIT_ERROR and "has no config.json" in err


HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, b"4242@some-other-node")
print("held", flush=True)
time.sleep(120)
"""


def test_lock_is_refused_while_held_and_free_once_its_holder_is_killed(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"members": [{"name": "a"}]}))
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, _, err = run_cli(capsys, "evaluate", "--run", str(run))
        assert code == cli.EXIT_ERROR and "is in use by process 4242@some-other-node" in err
    finally:
        holder.kill()  # SIGKILL: no clean-up code runs; the kernel releases the lock
        holder.wait()
    code, _, err = run_cli(capsys, "evaluate", "--run", str(run))
    assert "is in use" not in err and "has no tables/dataset.csv" in err and code == cli.EXIT_ERROR


TRY_LOCK = """
import sys, time
from pneumoxai.errors import RunFolderError
from pneumoxai.run_folder import RunFolder
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # start together
try:
    with RunFolder(sys.argv[1]).lock():
        print("got", flush=True)
        time.sleep(3)
except RunFolderError:
    print("refused", flush=True)
"""


@pytest.mark.slow
def test_processes_racing_for_a_lock_never_both_get_it(tmp_path):
    start = time.time() + 4
    racers = [subprocess.Popen([sys.executable, "-c", TRY_LOCK, str(tmp_path / "run"), str(start)],
                               stdout=subprocess.PIPE, text=True) for _ in range(4)]
    outcomes = sorted(p.communicate(timeout=120)[0].strip() for p in racers)
    assert outcomes == ["got", "refused", "refused", "refused"]


def test_unwritable_output_is_reported_before_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli(capsys, "train", "--data", str(tmp_path), "--config", str(SMOKE),
                           "--out", str(blocker / "run"))
    assert code == cli.EXIT_ERROR and "is not writable" in err


def test_version_and_help(capsys):
    from pneumoxai import __version__

    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and out.strip() == f"pneumoxai {__version__}"
    code, out, _ = run_cli(capsys)
    assert code == cli.EXIT_USAGE and "run" in out and "evaluate" in out


def _tiny_tree_config(make_kaggle_tree, tmp_path):
    root = make_kaggle_tree(n_per_class=6, size=32)
    config = write(tmp_path / "tiny.yaml", "defaults: {weights: null, image_size: 32, dense_units: [8], "
                   "epochs_frozen: 1, epochs_finetune: 0, balancing: none, batch_size: 8}\n"
                   "members:\n  - {name: a}\n  - {name: b, seed: 1}\n")
    return root, config


def test_member_jobs_share_the_folder_but_not_a_member(make_kaggle_tree, tmp_path, capsys, monkeypatch):
    # `train --member` takes no folder lock (scheduler jobs train side by side), only the
    # member's own: a second job for a member in training is refused.
    root, config = _tiny_tree_config(make_kaggle_tree, tmp_path)
    run = tmp_path / "run"
    (run / "members" / "a").mkdir(parents=True)
    # Another job's `pneumoxai run` holds the folder, another `train --member a` holds member a.
    holders = [subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock)], stdout=subprocess.PIPE, text=True)
               for lock in (run / ".lock", run / "members" / "a" / ".lock")]
    try:
        assert [h.stdout.readline().strip() for h in holders] == ["held", "held"]
        code, _, err = run_cli(capsys, "train", "--data", str(root), "--config", str(config), "--out", str(run),
                               "--member", "a", "--quiet")
        assert code == cli.EXIT_ERROR and "members/a' is in use by process" in err
        code, out, err = run_cli(capsys, "train", "--data", str(root), "--config", str(config), "--out", str(run),
                                 "--member", "b", "--quiet")
        assert code == 0, err
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()
    assert (run / "members" / "b" / "card.json").exists() and not (run / "members" / "a" / "card.json").exists()
    with RunFolder(run / "members" / "b").lock():  # released after the job
        pass
    # The card's validation AUC comes from the predictions the evaluate stage then reads from its cache.
    def no_model_load(*args):
        raise AssertionError("evaluate predicted the validation split again")
    monkeypatch.setattr(predict, "_member_model", no_model_load)
    folder = RunFolder(run)
    config = json.loads(folder.config_file.read_text())
    config["members"] = [m for m in config["members"] if m["name"] == "b"]
    P_val, val_rows = member_predictions(folder, config, "val")
    card = json.loads((run / "members" / "b" / "card.json").read_text())
    assert card["val_metrics"]["roc_auc"] == pytest.approx(roc_auc_score(val_rows["label"], P_val["b"]))


def test_strategy_flag_reaches_training(monkeypatch, tmp_path, capsys, make_kaggle_tree):
    import pandas as pd

    from pneumoxai.pipeline import train

    seen = {}
    monkeypatch.setattr(train, "train_members", lambda *a, **k: seen.update(k) or pd.DataFrame())
    root, config = _tiny_tree_config(make_kaggle_tree, tmp_path)
    code, _, err = run_cli(capsys, "train", "--data", str(root), "--config", str(config),
                           "--out", str(tmp_path / "run"), "--strategy", "mirrored")
    assert code == 0, err
    assert seen["strategy"] == "mirrored"
    with pytest.raises(SystemExit):
        cli.main(["train", "--data", str(root), "--out", str(tmp_path / "r2"), "--strategy", "horovod"])


def test_warnings_print_as_one_line():
    cli._configure_runtime("report", debug=False)
    import warnings

    assert warnings.formatwarning("leak found", UserWarning, "x.py", 3) == "pneumoxai: warning: leak found\n"
