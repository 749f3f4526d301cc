"""Sharded analysis: `analyse --shard I/N` + `merge`, and a local Dask cluster, give the single-process results."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from pneumoxai import _io, cli, data
from pneumoxai.run_folder import RunFolder

FAST = ["--set", "evaluate.n_boot=20", "--set", "evaluate.stacking_cv=2", "--set", "slices.min_size=4",
        "--set", "slices.max_order=1", "--set", "explain.max_images=4", "--set", "explain.methods=[gradcam]",
        "--set", "explain.layer_choice_images=4"]
#: The shift stage is not sharded and runs on the merged evaluation like every other stage; left out for time.
SKIP = ["--skip", "shift"]


def run_cli(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _model(side, seed, x):
    """A small sigmoid classifier of ``side`` px images whose logit spreads over ``x`` (mean 0, std 2)."""
    import keras

    inputs = keras.Input((side, side, 3))
    h = keras.layers.Conv2D(8, 3, strides=2, activation="relu",
                            kernel_initializer=keras.initializers.GlorotUniform(seed))(inputs)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="prediction")(h))
    features = keras.Model(inputs, h).predict(x, verbose=0)
    direction = np.random.default_rng(seed).normal(size=features.shape[1])
    logit = features @ direction
    model.layers[-1].set_weights([(direction * 2 / logit.std())[:, None].astype(np.float32),
                                  np.array([-2 * logit.mean() / logit.std()], np.float32)])
    return model


@pytest.fixture(scope="module", autouse=True)
def figures_drawn_not_saved():
    """Saving the figures is most of a tiny analysis' time, and they are not compared here."""
    from pneumoxai.figures import _style

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_style, "_save", lambda fig, targets: [path for path, _ in targets])
        yield


def _import_keras():
    import keras

    return keras.__version__


@pytest.fixture(scope="module")
def cluster():
    """A local Dask cluster of two worker processes, or None without the distributed extra.

    Its workers import TensorFlow while this process analyses the reference run (started first).
    """
    try:
        import distributed  # noqa: F401
    except ImportError:
        yield None
        return
    from pneumoxai.distributed import cluster_client

    with cluster_client(workers=2) as client:
        # Held until the cluster closes: Dask may drop the task of a future nobody holds.
        warming = [client.submit(_import_keras, workers=[worker], pure=False)
                   for worker in client.scheduler_info()["workers"]]
        yield client
        client.gather(warming)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cluster):
    """An imported run of two models (32 and 40 px) and a predictions file, analysed in one process,
    and untouched copies of it before the analysis."""
    from conftest import make_tree

    folder = tmp_path_factory.mktemp("sharding")
    root = make_tree(folder, n_per_class=16, size=40)
    paths = data.scan_dataset(root)["path"]
    specs = []
    for name, side, seed in (("a", 32, 0), ("b", 40, 1)):
        _model(side, seed, data.load_images(paths, side)).save(folder / f"{name}.keras")
        specs += ["--member", f"{name}={folder / f'{name}.keras'}"]
    rng = np.random.default_rng(2)
    frame = data.scan_dataset(root)
    probability = np.clip(0.3 + 0.4 * frame["label"] + rng.normal(0, 0.2, len(frame)), 0, 1)
    pd.DataFrame({"path": frame["path"], "probability": probability}).to_csv(folder / "v.csv", index=False)
    base = folder / "base"
    assert cli.main(["import", "--data", str(root), "--out", str(base), *specs, "--member",
                     f"vendor={folder / 'v.csv'}", *FAST]) == 0
    single = folder / "single"
    shutil.copytree(base, single)
    assert cli.main(["analyse", "--run", str(single), "--quiet", *SKIP]) == 0
    return base, single


def _copy(base, target):
    shutil.copytree(base, target)
    return target


def _assert_close(a, b, where):
    """Equal JSON values, numbers to a relative 1e-6 (they derive from predictions equal to 1e-6)."""
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_close(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close(x, y, f"{where}/{i}")
    else:
        assert a == (pytest.approx(b, rel=1e-6) if isinstance(a, float) else b), where


def assert_same_results(single, other):
    """Predictions to 1e-6, every other table equal as a frame, the same layer choice and test-split maps."""
    tables = sorted(p.name for p in (single / "tables").iterdir() if p.name != "timings.csv")
    assert tables == sorted(p.name for p in (other / "tables").iterdir() if p.name != "timings.csv")
    for name in tables:
        if name.endswith(".json"):
            _assert_close(json.loads((single / "tables" / name).read_text()),
                          json.loads((other / "tables" / name).read_text()), name)
        elif name.endswith(".csv"):
            # Columns of measured seconds (the layer choice's speed) are timings, not results.
            a, b = ([pd.read_csv(run / "tables" / name).filter(regex="^(?!seconds)") for run in (single, other)])
            if name.startswith("predictions_"):
                probabilities = [c for c in a.columns if c.startswith("p[")]
                np.testing.assert_allclose(a[probabilities], b[probabilities], rtol=0, atol=1e-6)
            pd.testing.assert_frame_equal(a, b, obj=name)
    index_a, index_b = _io.load_npz(single / "maps" / "test_maps.npz"), _io.load_npz(other / "maps" / "test_maps.npz")
    assert index_a["paths"].tolist() == index_b["paths"].tolist() and str(index_a["method"]) == str(index_b["method"])
    maps_a, maps_b = np.load(single / "maps" / "test_maps.npy"), np.load(other / "maps" / "test_maps.npy")
    assert maps_a.shape == (len(index_a["paths"]), 224, 224) and maps_a.dtype == np.float16
    np.testing.assert_allclose(maps_a.astype(np.float32), maps_b.astype(np.float32), atol=1e-3)
    assert not (other / "shards").exists()  # removed once the analysis finished


def test_two_shards_and_merge_give_the_single_process_results(runs, tmp_path, capsys, monkeypatch):
    from pneumoxai.models import cached
    from pneumoxai.pipeline import explanations

    base, single = runs
    run = _copy(base, tmp_path / "run")
    outs = [run_cli(capsys, "analyse", "--run", run, "--shard", f"{i}/2") for i in (1, 2)]
    assert [code for code, _, _ in outs] == [0, 0], outs
    assert f"predictions written to {run / 'shards' / 'predict' / '2-of-2.npz'}" in outs[1][1]

    def forbidden(*args, **kwargs):
        raise AssertionError("the merge computed what the shards had computed")

    def merge():
        with monkeypatch.context() as patch:  # the merge reads the shards' work; it predicts and maps nothing
            patch.setattr(cached, "_batched", forbidden)
            patch.setattr(explanations, "chosen_maps", forbidden)
            return run_cli(capsys, "merge", "--run", run, "--quiet", *SKIP)

    code, out, err = merge()
    assert code == 0, err
    assert "next, the maps: run the shards again" in out and not (run / "report.html").exists()
    for i in (1, 2):
        assert run_cli(capsys, "analyse", "--run", run, "--shard", f"{i}/2")[0] == 0
    code, _, err = merge()
    assert code == 0, err
    assert_same_results(single, run)


@pytest.mark.parametrize("text", ["3/2", "0/0", "0/2", "two", "1/2/3", "1.5/2"])
def test_a_bad_shard_is_one_line(tmp_path, capsys, text):
    code, _, err = run_cli(capsys, "analyse", "--run", tmp_path, "--shard", text)
    assert code == cli.EXIT_ERROR
    assert err == ("pneumoxai: error: --shard takes I/N, shard I of N counted from 1 (1 <= I <= N, e.g. --shard "
                   f"1/4); got {text!r}.\n")


def test_merge_refuses_a_missing_shard_and_a_shard_of_another_config(runs, tmp_path, capsys):
    base, _ = runs
    run = _copy(base, tmp_path / "run")
    code, _, err = run_cli(capsys, "merge", "--run", run)
    assert code == cli.EXIT_ERROR and "holds no shards of the predictions" in err
    assert run_cli(capsys, "analyse", "--run", run, "--shard", "1/3")[0] == 0
    code, _, err = run_cli(capsys, "merge", "--run", run)
    assert code == cli.EXIT_ERROR and err.count("\n") == 1
    assert f"shard(s) 2/3, 3/3 of the predictions missing in {run / 'shards' / 'predict'}" in err
    assert f"run `pneumoxai analyse --run {run} --shard 2/3`" in err
    other_count = run / "shards" / "predict" / "1-of-2.npz"
    shutil.copy(run / "shards" / "predict" / "1-of-3.npz", other_count)
    code, _, err = run_cli(capsys, "merge", "--run", run)
    assert code == cli.EXIT_ERROR and "holds shards of 2 and 3 jobs (from different --shard I/N)" in err
    other_count.unlink()
    # Shard 2 computed with test-time augmentation, the run's config without: refused by name, nothing merged.
    config = json.loads((run / "config.json").read_text())
    _io.write_json(run / "config.json", {**config, "evaluate": {**config["evaluate"], "tta": True}})
    assert run_cli(capsys, "analyse", "--run", run, "--shard", "2/3")[0] == 0
    _io.write_json(run / "config.json", config)
    assert run_cli(capsys, "analyse", "--run", run, "--shard", "3/3")[0] == 0
    code, _, err = run_cli(capsys, "merge", "--run", run)
    assert code == cli.EXIT_ERROR
    assert f"shard 2/3 in {run / 'shards' / 'predict'} was computed for other members, images or evaluate.tta" in err
    assert not list((run / "cache" / "predictions").glob("*.npz")) and not (run / "tables" / "results.csv").exists()


def test_a_shard_takes_neither_set_nor_skip(tmp_path, capsys):
    code, _, err = run_cli(capsys, "analyse", "--run", tmp_path, "--shard", "1/2", "--skip", "slices")
    assert code == cli.EXIT_ERROR and "--shard takes neither --set nor --skip" in err


def test_a_local_two_worker_dask_cluster_gives_the_single_process_results(runs, cluster, tmp_path):
    if cluster is None:
        pytest.skip("the distributed extra is not installed: pip install -e '.[distributed]'")
    from pneumoxai.config import parse_config
    from pneumoxai.distributed import analyse_on_cluster

    base, single = runs
    run = RunFolder(_copy(base, tmp_path / "run"))
    config = parse_config(json.loads(run.config_file.read_text()))
    assert analyse_on_cluster(run, config, cluster, skip={"shift"}, verbose=0) == 2  # predictions, then maps
    assert_same_results(single, run.root)
