"""Sharded analysis: the per-image work of ``analyse`` split over N jobs, then merged into the run folder.

The per-image work is the members' predictions of the validation and test images and the
chosen map of every test image; everything else (combiners, results, the layer choice, the
gallery, slices, the report) is bounded by the sample sizes of the config and runs once.
The maps need the threshold and the best member, so a run whose explain stage runs takes
two rounds, one otherwise::

    pneumoxai analyse --run R --shard I/N    for I = 1..N: predictions of block I of val and test
    pneumoxai merge --run R                  prediction caches, evaluate, the layer choice (plan.json)
    pneumoxai analyse --run R --shard I/N    for I = 1..N: the chosen maps of block I of test
    pneumoxai merge --run R                  the test-split maps; shift, explain, slices and report

A shard finds its step itself (the same command both rounds), computes block I of the rows
in table order and writes one file, ``shards/<step>/I-of-N.npz`` (a maps shard writes its maps
to ``I-of-N.npy`` a chunk at a time, then that file naming their rows), atomically and without
the run folder's lock, so N jobs share one folder. ``merge`` checks that all N files of the step
are there, that each was computed from the run's current members, images and options (the
keys of the prediction cache; the plan of the maps) and that together they hold every row
once, then writes what a single-process ``analyse`` computes: the prediction cache, which the
evaluate stage reads as it would after computing it, and the test-split maps, which the
explain stage takes instead of mapping the split again (copied a block of rows at a time: no step
holds the maps of the split at once). The shards folder is removed once the
analysis has finished.
"""

import re
import shutil
import threading
from collections import Counter

import numpy as np

from .. import _io
from ..errors import ConfigError, RunFolderError
from ..run_folder import (ENSEMBLE_RECORD, LAYER_CHOICE_TABLE, SHARD_MAPS_FILE, SHARD_MAPS_INDEX, SHARD_PLAN_FILE,
                          predictions_table, shard_file)
from ..validation import Predicate, check_param
from ._common import (DISPLAY_SIZE, best_model_member, evaluation_record, load_table, logger, prediction_options,
                      run_members)

__all__ = ["pending_step", "analyse_shard", "merge_shards"]

_ROLES = ("val", "test")
_SHARD_NAME = re.compile(r"(\d+)-of-(\d+)\.npz")
_SHARD = Predicate(lambda s: len(s) == 2 and all(isinstance(v, (int, np.integer)) for v in s) and 1 <= s[0] <= s[1],
                   "a pair (I, N) of integers with 1 <= I <= N")
#: What each step's shards hold, for messages.
_WHAT = {"predict": "predictions", "maps": "test-split maps"}


def parse_shard(text):
    """``"I/N"`` (shard I of N, counted from 1) as the pair ``(I, N)``; the ``--shard`` option.

    Examples
    --------
    >>> parse_shard("2/8")
    (2, 8)
    >>> parse_shard("3/2")
    Traceback (most recent call last):
    ...
    pneumoxai.errors.ConfigError: --shard takes I/N, shard I of N counted from 1 (1 <= I <= N, ...); got '3/2'.
    """
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if match is None or not 1 <= int(match[1]) <= int(match[2]):
        raise ConfigError(f"--shard takes I/N, shard I of N counted from 1 (1 <= I <= N, e.g. --shard 1/4); "
                          f"got {text!r}.")
    return int(match[1]), int(match[2])


def pending_step(run, config):
    """The per-image work shards do now: ``"predict"``, ``"maps"`` or None.

    ``"predict"`` while a model member's probabilities of the validation or test images are
    not in the prediction cache; ``"maps"`` once :func:`merge_shards` has planned the
    test-split maps and until they are merged; None when nothing per-image is pending.
    """
    members = _model_members(run, config)
    if not members:
        return None
    if _uncached_roles(run, config, load_table(run), members):
        return "predict"
    plan = _current_plan(run, config)
    return "maps" if plan is not None and not _merged_maps_current(run, plan) else None


def analyse_shard(run, config, *, shard):
    """Compute shard ``I`` of ``N`` of the pending per-image work and write it to ``shards/<step>/I-of-N.npz``.

    Parameters
    ----------
    run : RunFolder
    config : dict
        The run's config (``config.json``); every shard must read the same one.
    shard : tuple of (int, int)
        ``(I, N)``: this job takes block ``I`` (from 1) of ``N`` equal blocks of the rows,
        in table order.

    Returns
    -------
    str
        One line: what was written, or that nothing was pending, and the next command.
    """
    index, count = check_param("analyse_shard", "shard", tuple(shard), _SHARD)
    step = pending_step(run, config)
    merge = f"`pneumoxai merge --run {run.root}`"
    if step is None:
        return f"shard {index}/{count}: nothing per-image is pending in {run.root}; next: {merge}."
    path = run.shards(step, shard_file(index, count))
    if step == "predict":
        _io.save_npz(path, **_predict_part(run, config, index, count))
    else:
        path = _maps_part(run, config, index, count)
    return f"shard {index}/{count}: {_WHAT[step]} written to {path}; once all {count} shards are done: {merge}."


def merge_shards(run, config, *, skip=(), verbose="auto"):
    """Merge the finished shards' step into the run folder and run what can run on it.

    After the predictions: the prediction cache is written and the evaluate stage runs;
    when the explain stage is to run, the test-split map is chosen (``tables/layer_choice.*``,
    as the explain stage measures it) and ``"maps"`` is returned: the shards map the
    test split next. Otherwise (and after the maps) ``analyse`` runs on the merged results
    and the ``shards`` folder is removed.

    Returns
    -------
    str or None
        ``"maps"`` when another round of shards is needed, None when the analysis is done.

    Raises
    ------
    RunFolderError
        A shard is missing, of another shard count, computed for other members, images or
        options, or the shards do not hold every row once (the message names the shard and
        the command that redoes it).
    """
    from .evaluate import evaluate_stage
    from .orchestration import _run_stage, analyse, analysis_skips

    if pending_step(run, config) == "predict":
        _merge_predictions(run, config)
    _run_stage(run, config, "evaluate", evaluate_stage, verbose=verbose)
    skip = analysis_skips(run, config, skip)
    if "explain" not in skip and _explain_pending(run, config):
        plan = _current_plan(run, config)
        if plan is None:
            _plan_maps(run, config)
            return "maps"
        if not _merged_maps_current(run, plan):
            _merge_maps(run, plan)
    analyse(run, config, skip=skip, verbose=verbose)
    shutil.rmtree(run.shards(), ignore_errors=True)
    return None


def next_round(run):
    """The line that says what to run after a merge that returned ``"maps"``."""
    return ("merged the predictions and chose the test-split map; next, the maps: run the shards again "
            f"(`{_shard_command(run, 'I', 'N')}` for I = 1..N), then `pneumoxai merge --run {run.root}`.")


def sharded_test_split(run, config, paths, chosen):
    """The layer choice, its scores and the test-split maps of a merged sharded analysis, or None.

    For the explain stage: they are returned when the merge planned them for the run's
    current evaluation, members and options, for these test ``paths`` and gallery images
    ``chosen`` (indices into ``paths``).

    Returns
    -------
    None or tuple of (dict, pandas.DataFrame or None, pneumoxai._io.NpyRows of shape (n_test, DISPLAY_SIZE,
    DISPLAY_SIZE))
        The maps stay on disk (float32) and are read by rows.
    """
    plan = _current_plan(run, config)
    if plan is None or plan["chosen_paths"] != [paths[i] for i in chosen] or not _merged_maps_current(run, plan):
        return None
    merged = _io.load_npz(run.shards(SHARD_MAPS_INDEX))
    if merged["paths"].tolist() != list(paths):
        return None
    table = run.read_table(LAYER_CHOICE_TABLE) if plan["choice"]["n_images"] else None
    return plan["choice"], table, _io.NpyRows(run.shards(SHARD_MAPS_FILE))


# ----------------------------------------------------------------------------- predictions


def _model_members(run, config):
    return [member for member in run_members(run, config) if member.is_model]


def _role_rows(table, role):
    return table[table["role"] == role].reset_index(drop=True)


def _block(n_rows, index, count):
    """Row positions of block ``index`` (from 1) of ``count`` near-equal blocks, in order."""
    return np.array_split(np.arange(n_rows), count)[index - 1]


def _cache_entries(run, config, members, rows):
    """(cache file, key) of each member's column for ``rows``, as the evaluate stage names them."""
    from ..models.cached import prediction_cache_entries

    options = prediction_options(run, config)
    return prediction_cache_entries([member.directory for member in members], rows, cache_dir=options["cache_dir"],
                                    tta=options["tta"], interpolation=options["interpolation"])


def _uncached_roles(run, config, table, members):
    """``{role: cache entries}`` of the roles that some member's cache lacks."""
    entries = {role: _cache_entries(run, config, members, _role_rows(table, role)) for role in _ROLES}
    return {role: found for role, found in entries.items() if not all(path.is_file() for path, _ in found)}


#: (member folder, model hash) -> Keras model: a worker process that runs several shards loads each member once.
_LOADED = {}
_LOADING = threading.Lock()  # a Dask worker with several threads runs shards side by side


def _loaded(members):
    """The members' Keras models, loaded once per process (the last set only, so a long-lived worker stays small)."""
    keys = [(str(member.directory.resolve()), member.content_hash) for member in members]
    with _LOADING:
        if set(keys) != set(_LOADED):
            _LOADED.clear()
            _LOADED.update({key: member.load() for key, member in zip(keys, members)})
        return [_LOADED[key] for key in keys]


def _predict_part(run, config, index, count):
    """Every model member's probabilities of block ``index`` of each uncached role, with the cache keys."""
    from ..predict import predict_members

    table, members = load_table(run), _model_members(run, config)
    options = prediction_options(run, config)
    models = _loaded(members)
    arrays = {}
    for role, entries in _uncached_roles(run, config, table, members).items():
        rows = _role_rows(table, role)
        rows = rows.iloc[_block(len(rows), index, count)]
        arrays[f"keys_{role}"] = np.array([key for _, key in entries])
        arrays[f"paths_{role}"] = rows["path"].to_numpy(str)
        arrays[f"proba_{role}"] = np.empty((0, len(models))) if rows.empty else predict_members(
            models, rows, batch_size=options["batch_size"], tta=options["tta"], progress=False,
            interpolation=options["interpolation"], chunk_size=options["chunk_size"])
    return arrays


def _merge_predictions(run, config):
    """Check the prediction shards and write each uncached member column of val and test to the cache."""
    from ..models.cached import write_prediction_cache

    table, members = load_table(run), _model_members(run, config)
    count, shards = _read_shards(run, "predict")
    columns = []  # every role checked before anything is written: all or nothing
    for role, entries in _uncached_roles(run, config, table, members).items():
        keys = [key for _, key in entries]
        for index, part in shards.items():
            if f"keys_{role}" not in part or part[f"keys_{role}"].tolist() != keys:
                raise _stale(run, "predict", index, count, "other members, images or evaluate.tta / "
                             "data.interpolation than the run's")
        paths = np.concatenate([shards[i][f"paths_{role}"] for i in sorted(shards)])
        _check_rows(run, "predict", count, paths, _role_rows(table, role)["path"], role)
        columns += zip(entries, np.concatenate([shards[i][f"proba_{role}"] for i in sorted(shards)]).T)
    for (path, key), column in columns:
        write_prediction_cache(path, key, column)
    logger.info("merge: predictions of %d shard(s) written to the prediction cache", count)


# ----------------------------------------------------------------------------- maps


def _maps_key(run, config):
    """What the test-split maps depend on: members, options, and the evaluation (threshold, best member)."""
    from ..config import config_hash
    from .orchestration import _stage_key

    evaluation = [run.table(predictions_table("test")), run.table(ENSEMBLE_RECORD)]
    if not all(path.is_file() for path in evaluation):
        return None
    return config_hash({"explain": _stage_key(run, config, "explain"), "interpolation": config["data"]["interpolation"],
                        "evaluation": [_io.sha256_file(path) for path in evaluation]})


def _current_plan(run, config):
    """``shards/plan.json`` when it was made for the run's current evaluation, members and options, else None."""
    plan = run.read_json(run.shards(SHARD_PLAN_FILE))
    return plan if plan is not None and plan.get("key") == _maps_key(run, config) else None


def _merged_maps_current(run, plan):
    path = run.shards(SHARD_MAPS_INDEX)  # written after the maps it names
    if not path.is_file() or not run.shards(SHARD_MAPS_FILE).is_file():
        return False
    with np.load(path, allow_pickle=False) as merged:  # only the key is read, not the paths
        return str(merged["key"]) == plan["key"]


def _explain_pending(run, config):
    from .orchestration import _read_marker, _stage_key

    marker = _read_marker(run, "explain")
    return marker is None or marker.get("key") != _stage_key(run, config, "explain")


def _called(predictions, record):
    """The primary ensemble's 0/1 call of each image, at its validation-chosen threshold."""
    primary = record["primary"]
    return (predictions[f"p[{primary}]"].to_numpy() >= record["thresholds"][primary]).astype(int)


def _plan_maps(run, config):
    """The explain stage's layer choice on the best model member and its gallery, written as the maps' plan."""
    from ..explain import shared_models
    from ..outcomes import explanation_sample
    from .explanations import _choose_test_split_map, _ImagesBySize

    explain_cfg = config["explain"]
    predictions, record = evaluation_record(run)
    predicted = _called(predictions, record)
    chosen = explanation_sample(predictions["label"].to_numpy(), predicted, explain_cfg["max_images"],
                                seed=explain_cfg["seed"])
    paths = [predictions["path"].iloc[i] for i in chosen]
    best = best_model_member(run, config, required=f"run `{run.command('evaluate')}` first")
    with shared_models():
        choice, _ = _choose_test_split_map(run, explain_cfg, best.name, best.load(),
                                           _ImagesBySize(paths, interpolation=config["data"]["interpolation"]),
                                           predicted[chosen].astype(bool))
    _io.write_json(run.shards(SHARD_PLAN_FILE), {"key": _maps_key(run, config), "choice": choice,
                                                 "chosen_paths": paths})


def _maps_part(run, config, index, count):
    """Write the chosen ensemble map of each test image of block ``index`` (float32), a chunk of
    ``evaluate.chunk_size`` images at a time, with the plan's key and the images' paths; returns the maps' path."""
    from ..data import load_images
    from ..explain import shared_models
    from .explanations import _check_explainable, chosen_maps

    plan = _current_plan(run, config)
    predictions, record = evaluation_record(run)
    block = _block(len(predictions), index, count)
    paths, predicted = predictions["path"].to_numpy(str)[block], _called(predictions, record)[block]
    models = _loaded(_model_members(run, config))
    _check_explainable(models)
    sides, chunk = sorted({int(model.input_shape[1]) for model in models}), config["evaluate"]["chunk_size"]
    path = run.shards("maps", shard_file(index, count, suffix=".npy"))
    with shared_models(), _io.npy_rows_writer(path, (len(paths), DISPLAY_SIZE, DISPLAY_SIZE), np.float32,
                                              index_path=run.shards("maps", shard_file(index, count)),
                                              key=np.array(plan["key"]), paths=paths) as write_maps:
        for start in range(0, len(paths), chunk):
            part = paths[start:start + chunk]
            images = {side: load_images(part, side, interpolation=config["data"]["interpolation"]) for side in sides}
            write_maps(chosen_maps(models, images, predicted[start:start + chunk], plan["choice"]))
    return path


def _merge_maps(run, plan):
    """Check the maps shards against the plan and the test split, and write the merged maps for the explain stage."""
    predictions, _ = evaluation_record(run)
    count, shards = _read_shards(run, "maps")
    for index, part in shards.items():
        if str(part["key"]) != plan["key"]:
            raise _stale(run, "maps", index, count, "another evaluation, other members or other options than the "
                         "run's (the merge that planned the maps has been superseded)")
    paths = np.concatenate([shards[i]["paths"] for i in sorted(shards)])
    _check_rows(run, "maps", count, paths, predictions["path"], "test")
    parts = {}
    for index in sorted(shards):
        path = run.shards("maps", shard_file(index, count, suffix=".npy"))
        parts[index] = _io.NpyRows(path) if path.is_file() else None
        if parts[index] is None or len(parts[index]) != len(shards[index]["paths"]):
            raise RunFolderError(f"{path} is missing or does not hold the {len(shards[index]['paths'])} maps "
                                 f"{shard_file(index, count)} names; run `{_shard_command(run, index, count)}` again.")
    # Copied a block of rows at a time: the merge never holds the maps of the split.
    with _io.npy_rows_writer(run.shards(SHARD_MAPS_FILE), (len(paths), DISPLAY_SIZE, DISPLAY_SIZE), np.float32,
                             index_path=run.shards(SHARD_MAPS_INDEX), key=np.array(plan["key"]),
                             paths=paths) as write_maps:
        for index in sorted(parts):
            for rows in _io.iter_rows(parts[index]):
                write_maps(rows)
    logger.info("merge: test-split maps of %d shard(s) merged", count)


# ----------------------------------------------------------------------------- checks


def _shard_command(run, index, count):
    return f"pneumoxai analyse --run {run.root} --shard {index}/{count}"


def _read_shards(run, step):
    """(N, {I: arrays}) of the step's shards; refused by name when one is missing or of another count."""
    folder = run.shards(step)
    found = {}
    for path in sorted(folder.glob("*-of-*.npz")) if folder.is_dir() else ():
        match = _SHARD_NAME.fullmatch(path.name)
        if match:
            found[int(match[1]), int(match[2])] = path
    if not found:
        raise RunFolderError(f"{folder} holds no shards of the {_WHAT[step]}; run `{_shard_command(run, 'I', 'N')}` "
                             f"for I = 1..N first.")
    counts = sorted({count for _, count in found})
    if len(counts) > 1:
        raise RunFolderError(f"{folder} holds shards of {' and '.join(map(str, counts))} jobs (from different "
                             "--shard I/N); delete the files of the count no longer used.")
    count = counts[0]
    missing = [index for index in range(1, count + 1) if (index, count) not in found]
    if missing:
        raise RunFolderError(f"shard(s) {', '.join(f'{i}/{count}' for i in missing)} of the {_WHAT[step]} missing in "
                             f"{folder}; run `{_shard_command(run, missing[0], count)}` (and the others missing), "
                             "or wait for running shards, then merge again.")
    return count, {index: _io.load_npz(found[index, count]) for index in range(1, count + 1)}


def _stale(run, step, index, count, what):
    return RunFolderError(f"shard {index}/{count} in {run.shards(step)} was computed for {what}; delete it and run "
                          f"`{_shard_command(run, index, count)}` again.")


def _check_rows(run, step, count, paths, expected, role):
    """The shards' paths, in shard order, are the role's rows: none missing, none twice."""
    paths, expected = list(paths), list(expected)
    if paths == expected:
        return
    held = Counter(paths)
    missing = [path for path in expected if path not in held]
    twice = sorted(path for path, n in held.items() if n > 1)
    raise RunFolderError(f"the {count} shards in {run.shards(step)} do not hold each {role} image once, in table "
                         f"order ({len(missing)} missing, {len(twice)} more than once, e.g. "
                         f"{(missing or twice or paths)[0]!r}); delete the folder and run the shards again.")
