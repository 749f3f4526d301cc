"""The report stage, the stage cache (input keys, timings) and ``run`` / ``analyse``, which chain the stages."""

import sys
import time

import pandas as pd

from .. import _io
from ..config import config_hash
from ..run_folder import STAGES, TIMINGS_TABLE, ZONE_ATTENTION_ALL_TABLE
from ._common import RUN_FIRST, logger, run_members
from .evaluate import evaluate_stage
from .explanations import MIN_EXPLAIN_SIZE, explain_stage, too_small_to_explain
from .failure_slices import slices_stage
from .shift import shift_stage
from .train import train_stage, with_imported_members


def report_stage(run):
    """Write ``report.html`` from the run folder's tables and figures."""
    from ..report import write_report

    path = write_report(run.root)
    logger.info("report: %s", path)
    return path


def _stage_key(run, config, stage):
    """Hash of everything a stage's output depends on: config sections and upstream artifacts."""
    sections = {"evaluate": ("evaluate",), "explain": ("evaluate", "explain"), "slices": ("evaluate", "slices"),
                "shift": ("evaluate",)}
    # The chunk size changes memory, not outputs: changing it (or its arrival in a config) redoes nothing.
    parts = {name: {k: v for k, v in config[name].items() if k != "chunk_size"} for name in sections[stage]}
    parts["members"] = [member.content_hash for member in run_members(run, config)]
    parts["run"] = run.read_json(run.run_file, required=RUN_FIRST)["manifest_hash"]
    if stage == "slices":
        zone = run.table(ZONE_ATTENTION_ALL_TABLE)
        parts["zones"] = _io.sha256_file(zone) if zone.exists() else None
    return config_hash(parts)


def _run_stage(run, config, stage, function, **kwargs):
    """Run ``function`` unless its recorded input key is unchanged; record the key after success."""
    key = _stage_key(run, config, stage)
    marker = _read_marker(run, stage)
    if marker is not None and marker.get("key") == key:
        logger.info("%s: inputs unchanged, skipped", stage)
        return False
    started = time.perf_counter()
    function(run, config, **kwargs)
    _write_marker(run, stage, started, key=key)
    return True


def _read_marker(run, stage):
    """A stage's record, or None when missing or damaged (the stage then simply runs again)."""
    from ..errors import CacheError

    try:
        return run.read_json(run.stage_marker(stage))
    except CacheError:
        return None


def _write_marker(run, stage, started, **extra):
    _io.write_json(run.stage_marker(stage), {
        **extra, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": time.perf_counter() - started,
        "peak_rss_mb": _peak_rss_mb()})


def _peak_rss_mb():
    """This process's peak resident memory so far (Linux reports KiB, macOS bytes)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def stage_timings(run):
    """Seconds and peak memory of the stages that ran in ``run`` (``tables/timings.csv``).

    Returns
    -------
    pandas.DataFrame
        One row per stage: ``stage``, ``seconds``, ``peak_rss_mb`` (the process's peak
        resident memory when the stage finished), ``finished``.
    """
    columns = ("seconds", "peak_rss_mb", "finished")
    rows = [{"stage": stage, **{k: record.get(k) for k in columns}}
            for stage in STAGES if (record := _read_marker(run, stage)) is not None]
    return pd.DataFrame(rows, columns=["stage", *columns])


def run_all(run, config, data_root, *, skip=(), verbose="auto", strategy="default"):
    """``pneumoxai run``: train, evaluate, explain, slices and report, each resumable.

    Returns
    -------
    str
        The terminal summary (results table and top findings), also printed.
    """
    started = time.perf_counter()
    summary = train_stage(run, config, data_root, verbose=verbose, strategy=strategy)
    if (summary["status"] == "trained").any():
        _write_marker(run, "train", started)
    return analyse(run, with_imported_members(run, config), skip=skip, verbose=verbose, started=started)


def analysis_skips(run, config, skip=()):
    """``skip`` plus the explain stage when it cannot run (no model member, inputs too small); the log says why."""
    skip = set(skip)
    if "explain" not in skip and not any(member.is_model for member in run_members(run, config)):
        logger.info("explain: skipped: every member is an imported predictions file (maps need models)")
        skip.add("explain")
    if "explain" not in skip and too_small_to_explain(config):
        logger.info("explain: skipped: member(s) %s take images below %d px, whose last convolutional map is "
                    "1x1 (constant maps)", ", ".join(too_small_to_explain(config)), MIN_EXPLAIN_SIZE)
        skip.add("explain")
    return skip


def analyse(run, config, *, skip=(), verbose="auto", started=None):
    """``pneumoxai analyse``: evaluate, explain, slices and report on the members already in ``run``.

    Each stage is skipped when its inputs have not changed. Explanations are left out,
    with a line saying why, when no member is a model or the models' inputs are too
    small for class-activation maps.

    Returns
    -------
    str
        The terminal summary (results table and top findings), also printed.
    """
    from ..report import summary_text

    started = time.perf_counter() if started is None else started
    _run_stage(run, config, "evaluate", evaluate_stage, verbose=verbose)
    skip = analysis_skips(run, config, skip)
    for stage, function in (("shift", shift_stage), ("explain", explain_stage), ("slices", slices_stage)):
        if stage not in skip:
            _run_stage(run, config, stage, function)
    _io.write_csv(run.table(TIMINGS_TABLE), stage_timings(run), index=False)
    report_stage(run)
    logger.info("finished in %.0f s; report: %s", time.perf_counter() - started, run.report_file)
    text = summary_text(run.root)
    print(text)
    return text
