"""Command line: ``pneumoxai {run,train,evaluate,explain,slices,report}``.

Every command answers bad input with a non-zero exit and one readable line; ``--debug``
shows the full traceback instead.
"""

import argparse
import contextlib
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
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch progress display")


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
    run.add_argument("--skip", action="append", default=[], choices=["explain", "slices"],
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
                         choices=["gradcam", "gradcam++", "scorecam", "shap", "saliency"])
    explain.add_argument("--max-images", type=int, default=None, metavar="N")

    slices = sub.add_parser("slices", help="failure slices of the ensemble and its members on the test split")
    _add_common(slices, run=True)

    report = sub.add_parser("report", help="write RUN_DIR/report.html from the run's tables and figures")
    _add_common(report, run=True)
    return parser


def _warning_line(message, category, filename, lineno, line=None):
    return f"pneumoxai: warning: {message}\n"


def _configure_runtime():
    # TensorFlow's C++ start-up chatter buries the progress lines users need.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
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
    import matplotlib

    matplotlib.use("Agg")


def _load_run_config(run):
    from .config import parse_config

    return parse_config(run.read_json(run.config_file, required="create it with `pneumoxai train` or `pneumoxai run`"))


def _dispatch(args):
    from . import pipeline
    from .config import load_config
    from .data import find_data_root
    from .errors import RunFolderError
    from .run_folder import RunFolder

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
    run = RunFolder(args.run)
    if not run.root.is_dir():
        raise RunFolderError(f"Run folder {str(run.root)!r} does not exist; create it with `pneumoxai run --out DIR`.")
    config = _load_run_config(run)
    with run.lock():
        if args.command == "evaluate":
            pipeline.evaluate_stage(run, config, verbose=verbose)
            print(run.table("results.md").read_text(), end="")
        elif args.command == "explain":
            pipeline.explain_stage(run, config, methods=args.method, max_images=args.max_images)
        elif args.command == "slices":
            pipeline.slices_stage(run, config)
        elif args.command == "report":
            pipeline.report_stage(run)
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
    _configure_runtime()
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
