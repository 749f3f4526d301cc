"""Command line: ``pneumoxai {run,train,evaluate,explain,slices,shift,report,import,analyse,merge}``.

Every command answers bad input with a non-zero exit and one readable line; ``--debug``
shows the full traceback instead.
"""

import argparse
import contextlib
import importlib
import logging
import os
import sys
import warnings

__all__ = ["main", "build_parser"]

EXIT_USAGE = 2
EXIT_ERROR = 1


def _add_common(parser, *, data=False, config=False, out=False, run=False):
    if data:
        parser.add_argument("--data", metavar="DIR",
                            help="dataset folder (Kaggle layout); default: $PNEUMOXAI_DATA")
    if config:
        parser.add_argument("--config", metavar="FILE", help="YAML/JSON run config (see experiments/configs/)")
        parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                            help="override a config value, e.g. --set defaults.epochs_frozen=2 (repeatable)")
    if out:
        parser.add_argument("--out", metavar="RUN_DIR", required=True, help="run folder to write into")
    if run:
        parser.add_argument("--run", metavar="RUN_DIR", required=True, help="an existing run folder")
        parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                            help="override an analysis option of the run's config.json and record it there, e.g. "
                                 "--set explain.methods=[gradcam] (sections: " + ", ".join(_ANALYSIS_SECTIONS)
                                 + "; repeatable)")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch progress display")


#: What ``--set`` may change on a run whose members exist: the analyses, and how images are resized for them.
_ANALYSIS_SECTIONS = ("evaluate", "explain", "slices", "data.interpolation")


def _add_strategy(parser):
    parser.add_argument("--strategy", default="default", choices=["default", "mirrored", "multiworker"],
                        help="tf.distribute strategy for training: one device, all GPUs of this machine, "
                             "or several machines configured by TF_CONFIG")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="pneumoxai",
        description="Train chest X-ray pneumonia ensembles and find where and why they misdiagnose.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="train, evaluate, explain, slices and report into one run folder")
    _add_common(run, data=True, config=True, out=True)
    run.add_argument("--skip", action="append", default=[], choices=["explain", "slices", "shift"],
                     help="leave out an analysis stage")
    _add_strategy(run)

    train = sub.add_parser("train", help="train the config's members into RUN_DIR/members/")
    _add_common(train, data=True, config=True, out=True)
    train.add_argument("--member", action="append", default=[], metavar="NAME",
                       help="train only this member (repeatable); lets a scheduler train members in parallel")
    _add_strategy(train)

    evaluate = sub.add_parser("evaluate", help="member predictions, combiners, results table with CIs")
    _add_common(evaluate, run=True)

    explain = sub.add_parser("explain", help="Grad-CAM / SHAP maps of the ensemble's errors on the test split")
    _add_common(explain, run=True)
    explain.add_argument("--method", action="append", default=None,
                         choices=["gradcam", "gradcam++", "layercam", "hirescam", "scorecam", "shap", "saliency"])
    explain.add_argument("--max-images", type=int, default=None, metavar="N")

    slices = sub.add_parser("slices", help="failure slices of the ensemble and its members on the test split")
    _add_common(slices, run=True)

    shift = sub.add_parser("shift", help="has the data moved? validation against test, or against --target DIR; "
                                         "referral of the least confident cases")
    _add_common(shift, run=True)
    shift.add_argument("--target", metavar="DIR", help="a folder of unlabelled deployment images to compare with "
                                                       "the validation split (no labels needed)")

    report = sub.add_parser("report", help="write RUN_DIR/report.html from the run's tables and figures")
    _add_common(report, run=True)

    imports = sub.add_parser("import", help="register models or prediction files trained elsewhere as members "
                                            "of a run folder (never retrained or overwritten)")
    _add_common(imports, data=True, config=True, out=True)
    imports.add_argument("--member", action="append", required=True, metavar="NAME=PATH",
                         help="a .keras model or a .csv/.parquet predictions file (path, probability); repeatable")
    imports.add_argument("--preprocess", action="append", default=[], metavar="NAME=MODE",
                         help="what a model expects: caffe, torch, tf, 0-255 or 0-1 (default 0-1)")
    imports.add_argument("--positive-index", action="append", default=[], metavar="NAME=INDEX",
                         help="which unit of a 2-unit softmax model is PNEUMONIA (default 1)")
    imports.add_argument("--val-list", metavar="CSV", help="validation images (path, label[, patient_id]) instead "
                                                           "of the patient-grouped split of --data's train/")
    imports.add_argument("--test-list", metavar="CSV", help="test images (path, label[, patient_id]); with --val-list")

    _add_analyse(sub)
    return parser


def _add_analyse(sub):
    """``analyse`` (in this process, as shard I of N, or on a Dask cluster) and ``merge``."""
    analyse = sub.add_parser("analyse", help="evaluate, explain, slices and report on the members in RUN_DIR")
    _add_common(analyse, run=True)
    _add_skip(analyse)
    where = analyse.add_mutually_exclusive_group()
    where.add_argument("--shard", metavar="I/N", help="compute only block I of N of the per-image work (predictions, "
                                                     "then test-split maps) into RUN_DIR/shards/, e.g. one Slurm "
                                                     "array task each; then `pneumoxai merge`")
    where.add_argument("--workers", type=int, metavar="N", help="spread the per-image work over a local Dask "
                                                                "cluster of N worker processes (the distributed extra)")
    where.add_argument("--scheduler", metavar="ADDRESS", help="spread the per-image work over the workers of a "
                                                              "running Dask scheduler, e.g. tcp://head:8786")

    merge = sub.add_parser("merge", help="check the shards of `analyse --shard I/N` and merge them into RUN_DIR, "
                                         "then run the stages that can run (a second round of shards maps the "
                                         "test split)")
    _add_common(merge, run=True)
    _add_skip(merge)


def _add_skip(parser):
    parser.add_argument("--skip", action="append", default=[], choices=["explain", "slices", "shift"],
                        help="leave out an analysis stage")


def _warning_line(message, category, filename, lineno, line=None):
    return f"pneumoxai: warning: {message}\n"


def _configure_runtime(command, debug):
    # TensorFlow's C++ log lines (e.g. a failed CUDA probe on a CPU machine) bury the one
    # line users need; --debug keeps them.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if debug else "3")
    import matplotlib

    matplotlib.use("Agg")
    if command != "report" and not debug:
        _import_tensorflow_quietly()
    # A warning is one readable line, like an error, not a file:line dump.
    warnings.formatwarning = _warning_line
    logger = logging.getLogger("pneumoxai")
    if not any(isinstance(h, _StderrLines) for h in logger.handlers):
        logger.addHandler(_StderrLines())
    logger.setLevel(logging.INFO)


class _StderrLines(logging.Handler):
    """Progress lines to whatever ``sys.stderr`` is at the time (so in-process callers can capture them)."""

    def emit(self, record):
        sys.stderr.write(f"[pneumoxai] {record.getMessage()}\n")
        sys.stderr.flush()


def _import_tensorflow_quietly():
    """Import TensorFlow with file descriptor 2 pointed at /dev/null.

    TensorFlow's C++ start-up lines (absl, oneDNN, CUDA probing) are written to fd 2
    before any Python or environment log setting applies, so an error would otherwise
    reach the user under half a dozen lines of noise. Python exceptions still propagate.
    """
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        sys.stderr.flush()
        os.dup2(devnull, 2)
        importlib.import_module("tensorflow")
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _load_run_config(run, overrides):
    """The run's config.json with ``--set`` overrides of the analysis sections applied (and recorded)."""
    from . import _io
    from .config import apply_overrides, parse_config
    from .errors import ConfigError
    from .pipeline._common import RUN_FIRST

    raw = run.read_json(run.config_file, required=RUN_FIRST)
    if not overrides:
        return parse_config(raw)
    for item in overrides:
        target = item.partition("=")[0].strip()
        if target.split(".")[0] not in _ANALYSIS_SECTIONS and target not in _ANALYSIS_SECTIONS:
            raise ConfigError(f"--set {item!r}: on an existing run, --set changes {', '.join(_ANALYSIS_SECTIONS)}; "
                              "member and data options take effect when members are trained or imported "
                              "(pneumoxai train/run/import --set ...).")
    config = parse_config(apply_overrides(raw, overrides))
    _io.write_json(run.config_file, config)
    return config


def _dispatch(args):
    from . import pipeline
    from .config import EXPLAIN_SPEC, load_config
    from .data import find_data_root
    from .errors import ConfigError, RunFolderError
    from .run_folder import RESULTS_MARKDOWN, RunFolder
    from .validation import describe, is_valid

    verbose = 0 if args.quiet else "auto"
    if args.command in ("run", "train"):
        config = load_config(args.config, args.overrides)
        data_root = find_data_root(args.data)
        run = RunFolder(args.out)
        # Jobs that each train named members share the folder; members carry their own locks.
        with contextlib.nullcontext() if args.command == "train" and args.member else run.lock():
            if args.command == "train":
                summary = pipeline.train_stage(run, config, data_root, names=args.member or None, verbose=verbose,
                                               strategy=args.strategy)
                print(summary.to_string(index=False))
            else:
                pipeline.run_all(run, config, data_root, skip=set(args.skip), verbose=verbose,
                                 strategy=args.strategy)
        return 0
    if args.command == "import":
        return _import(args)
    run = RunFolder(args.run)
    if not run.root.is_dir():
        what = "is a file, not a run folder" if run.root.exists() else "does not exist"
        raise RunFolderError(f"Run folder {str(run.root)!r} {what}; create one with `pneumoxai run --out DIR` (or "
                             "`pneumoxai import --out DIR` for models trained elsewhere).")
    max_images = EXPLAIN_SPEC["max_images"][1]  # the flag overrides explain.max_images, so it has its bounds
    if args.command == "explain" and args.max_images is not None and not is_valid(args.max_images, max_images):
        raise ConfigError(f"--max-images must be {describe(max_images)}; got {args.max_images}.")
    if args.command == "analyse" and args.shard is not None:
        return _analyse_shard(args, run)  # shards share the folder without its lock, each writing its own file
    with run.lock():
        config = _load_run_config(run, args.overrides)
        if args.command == "evaluate":
            pipeline.evaluate_stage(run, config, verbose=verbose)
            print(run.table(RESULTS_MARKDOWN).read_text(), end="")
        elif args.command == "explain":
            pipeline.explain_stage(run, config, methods=args.method, max_images=args.max_images)
        elif args.command == "slices":
            pipeline.slices_stage(run, config)
        elif args.command == "shift":
            from .pipeline.shift import shift_stage, shift_target

            summary = shift_stage(run, config) if args.target is None else shift_target(run, config, args.target)
            print("\n".join(f"{row.analysis}: {row.text}" for row in summary.itertuples()))
        elif args.command == "report":
            pipeline.report_stage(run)
        elif args.command in ("analyse", "merge"):
            _analyse(args, run, config, verbose)
    return 0


def _analyse_shard(args, run):
    from .errors import ConfigError
    from .pipeline.sharding import analyse_shard, parse_shard

    shard = parse_shard(args.shard)
    if args.overrides or args.skip:
        raise ConfigError("--shard takes neither --set nor --skip: every shard reads the run's config.json as it is, "
                          "and `pneumoxai merge` (which takes --skip) runs the stages.")
    print(analyse_shard(run, _load_run_config(run, []), shard=shard))
    return 0


def _analyse(args, run, config, verbose):
    """``analyse`` in this process or on a Dask cluster, or ``merge``."""
    from . import pipeline

    if args.command == "merge":
        from .pipeline.sharding import next_round

        if pipeline.merge_shards(run, config, skip=set(args.skip), verbose=verbose) == "maps":
            print(next_round(run))
    elif args.workers is not None or args.scheduler is not None:
        from .distributed import analyse_on_cluster, cluster_client
        from .errors import ConfigError

        if args.workers is not None and args.workers < 1:
            raise ConfigError(f"--workers takes a number of worker processes >= 1; got {args.workers}.")
        with cluster_client(workers=args.workers, scheduler=args.scheduler) as client:
            analyse_on_cluster(run, config, client, skip=set(args.skip), verbose=verbose)
    else:
        pipeline.analyse(run, config, skip=set(args.skip), verbose=verbose)


def _pairs(items, option, convert=str):
    from .errors import ConfigError

    pairs = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"{option} takes NAME=VALUE; got {item!r}.")
        try:
            pairs[name] = convert(value)
        except ValueError:
            raise ConfigError(f"{option} {item!r}: {value!r} is not valid here.") from None
    return pairs


def _import(args):
    from . import _io, pipeline
    from .config import apply_overrides, load_config, parse_config
    from .data import find_data_root
    from .errors import ConfigError, PneumoxaiError
    from .importing import check_imports, parse_member_spec, planned_config, write_imports
    from .pipeline.prepare import dataset_from_lists, dataset_from_scan, record_dataset
    from .run_folder import RunFolder

    names = [parse_member_spec(spec)[0] for spec in args.member]
    members = [{"name": name, "imported": True} for name in names]
    # The members are the imported ones; a --config contributes its data, evaluate, explain and slices sections.
    base = {"members": members} if args.config is None else {**load_config(args.config), "members": members}
    config = parse_config(apply_overrides(base, args.overrides))
    if (args.val_list is None) != (args.test_list is None):
        raise ConfigError("--val-list and --test-list go together (or neither: the split of --data is used).")
    run = RunFolder(args.out)
    # All or nothing: every member is checked before the folder is touched, so a refusal leaves it as it was.
    try:
        if args.val_list:
            data_root = args.data
            table, record = dataset_from_lists(run, args.val_list, args.test_list, data_root=data_root)
        else:
            data_root = find_data_root(args.data)
            table, record = dataset_from_scan(run, data_root, config)
        plan = check_imports(run, args.member, data_root=data_root, table=table,
                             preprocess=_pairs(args.preprocess, "--preprocess"),
                             positive_index=_pairs(args.positive_index, "--positive-index", int))
        config = pipeline.with_imported_members(run, parse_config(planned_config({**config, "members": []}, plan)))
    except PneumoxaiError as exc:
        raise type(exc)(f"{str(exc).rstrip('.')}. Nothing was imported and {str(run.root)!r} is unchanged; fix "
                        "this and run the same `pneumoxai import` again.") from exc
    with run.lock():
        record_dataset(run, table, record)
        write_imports(run, plan)
        _io.write_json(run.config_file, config)
    print(f"Imported {len(names)} member(s) into {run.root}. pneumoxai cannot see which images they were trained "
          "on: keep the validation and test images out of their training data, or the combiners and results "
          f"are optimistic. Next: pneumoxai analyse --run {run.root}")
    return 0


def main(argv=None):
    """Entry point of the ``pneumoxai`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from . import __version__

        print(f"pneumoxai {__version__}")
        return 0
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    _configure_runtime(args.command, args.debug)
    from .errors import PneumoxaiError

    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        print("pneumoxai: interrupted; finished stages are kept, re-run to continue.", file=sys.stderr)
        return 130
    except (PneumoxaiError, OSError) as exc:
        if args.debug:
            raise
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"pneumoxai: error: {message}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
