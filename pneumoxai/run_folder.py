"""The run folder: its layout, the names of the things in it, and the lock that guards it.

Everything a run produces lives in one folder, so any stage can be re-run alone::

    RUN_DIR/
      run.json                  data root, data config and manifest hashes
      config.json               the resolved config of the last invocation
      members/<name>/           model.keras, card.json, train_paths.json
      members/<name>/<name>_snapK/  a snapshot-ensemble member's snapshots, each a member folder
      cache/predictions/        member probabilities keyed by model + data + preprocessing
      cache/embeddings/         penultimate-layer activations for the slices stage
      cache/stages/<stage>.json input key, duration and peak memory of each finished stage
      tables/*.csv, *.md, *.json
      figures/*.png, *.pdf
      maps/*.npz                explanation maps
      shards/<step>/I-of-N.npz  a sharded analysis' per-job parts, until ``pneumoxai merge`` has used them
      report.html

This module is the only place that spells these names: the stages, the member code, the
report and the command line ask :class:`RunFolder` for paths and name files by the
constants below (``RESULTS_TABLE``, ``CARD_FILE``, ...). It never imports TensorFlow.
"""

import contextlib
import fcntl
import os
import shlex
import socket
import tempfile
from pathlib import Path

import pandas as pd

from . import _io
from .errors import CacheError, RunFolderError

__all__ = [
    "RunFolder",
    "RUN_FORMAT",
    "PRIMARY",
    "STAGES",
    "RUN_FILE",
    "CONFIG_FILE",
    "REPORT_FILE",
    "MODEL_FILE",
    "CARD_FILE",
    "PREDICTIONS_FILE",
    "TRAIN_PATHS_FILE",
    "CHECKPOINT_FILE",
    "TRAINING_FILE",
    "SNAPSHOT_STATE",
    "RESUME_WEIGHTS_FILE",
    "RESUME_RECORD_FILE",
    "DATASET_TABLE",
    "DUPLICATES_TABLE",
    "RESULTS_TABLE",
    "RESULTS_MARKDOWN",
    "COMPARISONS_TABLE",
    "DIVERSITY_TABLE",
    "ENSEMBLE_SIZE_TABLE",
    "ENSEMBLE_RECORD",
    "LAYER_CHOICE_TABLE",
    "LAYER_CHOICE_RECORD",
    "ZONE_ATTENTION_ALL_TABLE",
    "ZONE_ATTENTION_TABLE",
    "EXPLAIN_SUMMARY_TABLE",
    "FAILURE_SLICES_TABLE",
    "MEMBER_FAILURE_SLICES_TABLE",
    "SLICE_FEATURES_TABLE",
    "SLICE_EXPLANATIONS_TABLE",
    "SHIFT_TARGETS_RECORD",
    "SHIFT_FEATURES_CACHE",
    "REFERRAL_CURVE_TABLE",
    "REFERRAL_SUMMARY_TABLE",
    "REFERRAL_TABLE",
    "REFERRAL_RULE_TABLE",
    "SHIFT_FEATURES_FIGURE",
    "SHIFT_TABLES",
    "REFERRAL_CURVE_FIGURE",
    "SLICE_EXAMPLES_FIGURE",
    "TIMINGS_TABLE",
    "TEST_MAPS_FILE",
    "TEST_MAPS_INDEX",
    "EXPLAIN_MAPS_FILE",
    "SLICE_MAPS_FILE",
    "SHARD_STEPS",
    "SHARD_PLAN_FILE",
    "SHARD_MAPS_FILE",
    "SHARD_MAPS_INDEX",
    "predictions_table",
    "target_predictions_table",
    "shift_table",
    "shift_features_figure",
    "slice_examples_figure",
    "prediction_cache_file",
    "embedding_cache_file",
    "shard_file",
]

RUN_FORMAT = 1
#: The combiner whose predictions the analyses (slices, explain, report) follow.
PRIMARY = "soft voting"
#: Stages in the order ``pneumoxai run`` runs them.
STAGES = ("train", "evaluate", "shift", "explain", "slices")

RUN_FILE = "run.json"
CONFIG_FILE = "config.json"
REPORT_FILE = "report.html"
LOCK_FILE = ".lock"

# members/<name>/: a member folder (also what save_member writes outside a run folder)
MODEL_FILE = "model.keras"
CARD_FILE = "card.json"
PREDICTIONS_FILE = "predictions.csv"     # an imported predictions member's probabilities
TRAIN_PATHS_FILE = "train_paths.json"    # the images a trained member saw
CHECKPOINT_FILE = "checkpoint.keras"     # best model so far, while training
TRAINING_FILE = "training.json"          # config and data a snapshot-ensemble folder trains
SNAPSHOT_STATE = "_resume"               # resume state of a snapshot-ensemble run ...
RESUME_WEIGHTS_FILE = "state.weights.h5"  # ... its weights and optimiser state
RESUME_RECORD_FILE = "state.json"        # ... and the epoch they belong to

# tables/: prepare and train
DATASET_TABLE = "dataset.csv"
DUPLICATES_TABLE = "duplicates.csv"
# tables/: evaluate
RESULTS_TABLE = "results.csv"
RESULTS_MARKDOWN = "results.md"
COMPARISONS_TABLE = "comparisons.csv"
DIVERSITY_TABLE = "diversity.csv"
ENSEMBLE_SIZE_TABLE = "ensemble_size.csv"
ENSEMBLE_RECORD = "ensemble.json"
# tables/: explain
LAYER_CHOICE_TABLE = "layer_choice.csv"
LAYER_CHOICE_RECORD = "layer_choice.json"
ZONE_ATTENTION_ALL_TABLE = "zone_attention_all.csv"
ZONE_ATTENTION_TABLE = "zone_attention.csv"
EXPLAIN_SUMMARY_TABLE = "explain_summary.csv"
# tables/: slices
FAILURE_SLICES_TABLE = "failure_slices.csv"
MEMBER_FAILURE_SLICES_TABLE = "member_failure_slices.csv"
SLICE_FEATURES_TABLE = "slice_features.csv"
SLICE_EXPLANATIONS_TABLE = "slice_explanations.csv"
# tables/: shift (the per-target tables are named by shift_table)
SHIFT_TARGETS_RECORD = "shift_targets.json"          # deployment folders added with shift --target
SHIFT_FEATURES_CACHE = "shift_image_features.csv"    # image features of val, test and each target
REFERRAL_CURVE_TABLE = "referral_curve.csv"
REFERRAL_SUMMARY_TABLE = "referral_summary.csv"
REFERRAL_TABLE = "referral_table.csv"
REFERRAL_RULE_TABLE = "referral_rule.csv"
# tables/: run
TIMINGS_TABLE = "timings.csv"
# maps/
TEST_MAPS_FILE = "test_maps.npy"     # the chosen map of every test image (float16, read by rows: _io.NpyRows)
TEST_MAPS_INDEX = "test_maps.npz"    # its rows' image paths, the map's name and whether it is signed (older: the maps)
EXPLAIN_MAPS_FILE = "explain.npz"
SLICE_MAPS_FILE = "slice_maps.npz"
# shards/ (pneumoxai analyse --shard I/N, then pneumoxai merge): the steps' folders and the merge's records
SHARD_STEPS = ("predict", "maps")
SHARD_PLAN_FILE = "plan.json"        # the layer choice the maps shards apply
SHARD_MAPS_FILE = "test_maps.npy"    # the merged test-split maps (float32) the explain stage reads by rows
SHARD_MAPS_INDEX = "test_maps.npz"   # the plan's key and the merged maps' image paths
# figures/ (stems; the plotting functions add .png / .pdf)
SHIFT_FEATURES_FIGURE = "shift_features"
REFERRAL_CURVE_FIGURE = "referral_curve"
SLICE_EXAMPLES_FIGURE = "slice_examples"     # one per significant slice, by slice_examples_figure
#: The kinds of table the shift stage writes per target, for :func:`shift_table`.
SHIFT_TABLES = ("summary", "output", "features", "scores")


def predictions_table(role):
    """``predictions_val.csv`` / ``predictions_test.csv``: the evaluate stage's per-image probabilities."""
    return f"predictions_{role}.csv"


def target_predictions_table(target):
    """``predictions_target_<target>.csv``: the members' probabilities of a folder added with shift --target."""
    return predictions_table(f"target_{target}")


def _target_suffix(target):
    return "" if target is None else f"_{target}"


def shift_table(kind, target=None):
    """``shift_<kind>.csv`` for the test split, ``shift_<kind>_<target>.csv`` for a deployment folder.

    ``kind`` is one of ``SHIFT_TABLES``: ``"summary"``, ``"output"``, ``"features"`` or ``"scores"``.

    Examples
    --------
    >>> shift_table("summary"), shift_table("features", "site_b")
    ('shift_summary.csv', 'shift_features_site_b.csv')
    """
    if kind not in SHIFT_TABLES:
        raise ValueError(f"Unknown shift table {kind!r}; one of {SHIFT_TABLES}.")
    return f"shift_{kind}{_target_suffix(target)}.csv"


def shift_features_figure(target=None):
    """Stem of the figure of where the data moved, per target like :func:`shift_table`."""
    return SHIFT_FEATURES_FIGURE + _target_suffix(target)


def slice_examples_figure(rank):
    """Stem of the figure of a few images of the ``rank``-th significant failure slice (1 = first), with maps."""
    return f"{SLICE_EXAMPLES_FIGURE}_{int(rank)}"


def prediction_cache_file(key):
    """The file of one member's cached probabilities in ``cache/predictions``."""
    return f"{key}.npz"


def embedding_cache_file(key):
    """The file of one member's cached embeddings in ``cache/embeddings``."""
    return f"emb-{key}.npz"


def shard_file(index, count, *, suffix=".npz"):
    """One job's part of a sharded step, ``shards/<step>/<index>-of-<count>.npz`` (index from 1); with
    ``suffix=".npy"``, the maps of the job's block of the test split, beside the ``.npz`` that names their rows.

    Examples
    --------
    >>> shard_file(2, 8), shard_file(2, 8, suffix=".npy")
    ('2-of-8.npz', '2-of-8.npy')
    """
    return f"{int(index)}-of-{int(count)}{suffix}"


class RunFolder:
    """Paths into one run folder, its lock, and tolerant readers of what the stages wrote.

    The folder itself is created by :meth:`lock` (or :meth:`check_writable`) when missing,
    so read-only uses never create an empty folder by accident.

    Parameters
    ----------
    root : path-like
        The run folder. An empty string is refused: it would silently mean the current
        directory.

    Examples
    --------
    >>> run = RunFolder("runs/example")
    >>> run.table(RESULTS_TABLE).relative_to(run.root.resolve()).as_posix()
    'tables/results.csv'
    >>> RunFolder("")
    Traceback (most recent call last):
    ...
    pneumoxai.errors.RunFolderError: The run folder path is empty; pass a folder name such as --out runs/cpu.
    """

    def __init__(self, root):
        if not str(root).strip():
            raise RunFolderError("The run folder path is empty; pass a folder name such as --out runs/cpu.")
        self.root = Path(root)

    def __repr__(self):
        return f"RunFolder({str(self.root)!r})"

    # ------------------------------------------------------------------ paths

    def path(self, *parts):
        """A path inside the run folder; refuses names that would escape it."""
        target = self.root.joinpath(*map(str, parts)).resolve()
        root = self.root.resolve()
        if target != root and root not in target.parents:
            raise RunFolderError(f"Path {'/'.join(map(str, parts))!r} would leave the run folder {str(self.root)!r}.")
        return target

    @property
    def run_file(self):
        return self.path(RUN_FILE)

    @property
    def config_file(self):
        return self.path(CONFIG_FILE)

    @property
    def report_file(self):
        return self.path(REPORT_FILE)

    def member_dir(self, name):
        """Folder of a member as trained or imported (``members/<name>``)."""
        return self.path("members", name)

    def analysis_member_dir(self, member):
        """Folder of one of :func:`pneumoxai.config.analysis_members`: ``members/<name>``, or
        ``members/<trained_as>/<name>`` for a snapshot member of a snapshot-ensemble run."""
        if member.get("snapshot"):
            return self.path("members", member["trained_as"], member["name"])
        return self.path("members", member["name"])

    def table(self, name):
        return self.path("tables", name)

    def figure_stem(self, name):
        """Figure path without suffix; the plotting functions add ``.png`` / ``.pdf``."""
        return self.path("figures", name)

    def figure(self, name):
        """The PNG of figure ``name`` if a stage wrote it, else None."""
        path = self.path("figures", f"{name}.png")
        return path if path.is_file() else None

    def cache(self, kind):
        """Cache folder of one kind: ``predictions``, ``embeddings`` or ``stages``."""
        return self.path("cache", kind)

    def maps(self, name):
        return self.path("maps", name)

    def shards(self, *parts):
        """``shards/`` or a path in it (a sharded analysis' parts and the merge's records)."""
        return self.path("shards", *parts)

    def stage_marker(self, stage):
        return self.cache("stages") / f"{stage}.json"

    def command(self, stage):
        """The command line that (re-)runs ``stage`` on this folder, for messages."""
        flag = "--out" if stage in ("train", "run") else "--run"
        return f"pneumoxai {stage} {flag} {shlex.quote(str(self.root))}"

    # ------------------------------------------------------------------ reading

    def read_json(self, path, *, required=None):
        """A JSON file of the run folder, None when absent (or an error naming ``required``).

        A damaged file raises :class:`~pneumoxai.errors.CacheError` naming it.
        """
        path = Path(path)
        if not path.is_file():
            if required is None:
                return None
            raise RunFolderError(f"{str(self.root)!r} has no {path.relative_to(self.root.resolve())}; {required}.")
        data = _io.read_json(path)
        if not isinstance(data, dict):
            raise CacheError(f"{path} does not hold a JSON object; delete it to rebuild.")
        return data

    def read_table(self, name, *, columns=(), required=None, **read_csv):
        """``tables/<name>`` as a DataFrame, None when absent (or an error naming ``required``).

        Parameters
        ----------
        name : str
        columns : sequence of str, default=()
            Columns the caller needs; a file without them (damaged, or from another
            tool) raises :class:`~pneumoxai.errors.CacheError` naming the file and the
            command that rebuilds it, instead of a KeyError deep in a stage.
        required : str, default=None
            What to do when the table is missing ("run `pneumoxai evaluate` first");
            without it a missing table gives None.
        """
        path = self.table(name)
        if not path.is_file():
            if required is None:
                return None
            raise RunFolderError(f"{str(self.root)!r} has no tables/{name}; {required}.")
        try:
            frame = pd.read_csv(path, **read_csv)
        except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise CacheError(f"{path} is not a readable CSV table ({str(exc).splitlines()[0]}); "
                             "delete it and re-run the stage that writes it.") from exc
        missing = [c for c in columns if c not in frame.columns and c != frame.index.name]
        if missing:
            raise CacheError(f"{path} lacks column(s) {missing}: it is damaged or was not written by pneumoxai; "
                             "delete it and re-run the stage that writes it.")
        return frame

    # ------------------------------------------------------------------ writing and locking

    def _remove_orphans(self):
        """Temporary files of writers killed mid-write; members are cleaned under their own locks."""
        for folder in (self.root, self.root / "tables", self.root / "figures", self.root / "maps",
                       *(self.root / "cache" / kind for kind in ("predictions", "embeddings", "stages"))):
            _io.remove_orphan_temp_files(folder)

    def check_writable(self):
        """Create the folder if needed and fail before any work when it cannot be written."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".write-test-"):
                pass
        except OSError as exc:
            raise RunFolderError(f"Run folder {str(self.root)!r} is not writable: {exc.strerror or exc}.") from exc

    @contextlib.contextmanager
    def lock(self):
        """Hold the folder's lock for the duration; a second process gets a clear error.

        The lock is an OS-level ``flock`` on ``.lock``: the kernel releases it when its
        holder exits or is killed, so a crashed run never leaves a stale lock and two
        processes can never both hold it. The file records the holder for the message.
        """
        self.check_writable()
        lock_path = self.root / LOCK_FILE
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.pread(fd, 256, 0).decode(errors="replace").strip() or "unknown"
                raise RunFolderError(
                    f"Run folder {str(self.root)!r} is in use by process {owner}. Wait for it to finish; "
                    "the lock is released when that process ends."
                ) from None
            # The host name matters when jobs on several machines share one run folder.
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}@{socket.gethostname()}".encode(), 0)
            self._remove_orphans()
            yield self
        finally:
            os.close(fd)  # releases the flock; the file stays, so no unlink race between holders
