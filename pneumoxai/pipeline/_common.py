"""What the stages share: the dataset table, the members' folders and the evaluation record."""


import logging
import re
import shlex

import numpy as np

from .. import _io
from ..errors import CacheError, RunFolderError
from ..run_folder import DATASET_TABLE, ENSEMBLE_RECORD, RESULTS_TABLE, predictions_table

logger = logging.getLogger("pneumoxai")

#: Side of the maps, masks and images the analyses share (members may differ in input size).
DISPLAY_SIZE = 224
PREDICTION_COLUMNS = ("path", "label", "patient_id", "subtype")


def pack_masks(masks):
    """Bool masks (n, H, W) packed 8 pixels a byte, shape (n, ceil(H * W / 8)): 1/8 of the memory."""
    return np.packbits(masks.reshape(len(masks), -1), axis=1)


def unpack_masks(packed, shape):
    """The bool masks of shape (n, *shape) that :func:`pack_masks` packed."""
    return np.unpackbits(packed, axis=1, count=shape[0] * shape[1]).reshape(-1, *shape).astype(bool)


class PackedMasks(_io.Rows):
    """Bool masks of shape (n, *shape) kept packed (:func:`pack_masks`), unpacked by rows when indexed."""

    dtype = np.dtype(bool)

    def __init__(self, packed, shape):
        self.packed, self.shape = packed, (len(packed), *shape)

    def __getitem__(self, index):
        if np.ndim(index) == 0 and not isinstance(index, slice):
            return self[[index]][0]
        return unpack_masks(self.packed[index], self.shape[1:])


#: What a run folder without its dataset or members needs, on either route.
RUN_FIRST = ("run `pneumoxai train` or `pneumoxai run` first (or `pneumoxai import` for models trained "
             "elsewhere)")
_ROLES = ("train", "val", "test")
_SHA256 = re.compile(r"[0-9a-f]{64}|<missing>")


def load_table(run):
    """``tables/dataset.csv``, refused by name when it is cut short or damaged (checked against ``run.json``)."""
    from ..data import manifest_hash

    table = run.read_table(DATASET_TABLE, columns=("path", "label", "role", "patient_id", "subtype"),
                           required=RUN_FIRST)
    problem = _first_problem(table, ("path", "label", "role"))
    if problem is None and not table["role"].isin(_ROLES).all():
        problem = f"a role outside {list(_ROLES)}"
    if problem is None and "sha256" in table and not table["sha256"].astype(str).map(_SHA256.fullmatch).all():
        problem = "a sha256 that is not a file hash"
    if problem is None and not table["label"].isin((0, 1)).all():
        problem = "a label other than 0 or 1"
    record = run.read_json(run.run_file)
    if problem is None and record is not None and record.get("manifest_hash") != manifest_hash(table):
        problem = "its rows differ from the dataset recorded in run.json"
    if problem is not None:
        raise CacheError(f"{run.table(DATASET_TABLE)} is cut short or damaged ({problem}); delete it and re-run the "
                         "`pneumoxai train`, `run` or `import` command that made the run (its members are kept).")
    return table


def _first_problem(frame, columns):
    """Empty cells in ``columns`` (what a cut-short write leaves), or None. Patient ids may be empty by right."""
    empty = [c for c in columns if frame[c].isna().any()]
    return f"empty cells in {empty}" if empty else None


def run_members(run, config):
    """The members the analyses see (snapshot members expanded), in config order, as
    :class:`~pneumoxai.models.Member` objects."""
    from ..config import analysis_members
    from ..models import Member, is_member_dir
    from ..models.storage import card_problem

    members = []
    for member in analysis_members(config):
        directory = run.analysis_member_dir(member)
        if not is_member_dir(directory):
            if member.get("imported"):
                raise RunFolderError(f"Member {member['name']!r} was imported into {str(run.root)!r} but its folder "
                                     f"is missing; {_remake(run, member)}.")
            raise RunFolderError(f"Member {member['name']!r} is not trained in {str(run.root)!r}; {RUN_FIRST}.")
        problem = card_problem(directory)[1]
        if problem is not None:
            raise RunFolderError(f"The card of member {str(directory)!r} is damaged ({problem}); delete the member's "
                                 f"folder and {_remake(run, member)}.")
        members.append(Member(directory))
    return members


def _remake(run, member):
    """The one command that re-creates a member's folder."""
    if member.get("imported"):
        return (f"import it again with `pneumoxai import --out {shlex.quote(str(run.root))} "
                f"--member {member['name']}=PATH`")
    return f"train it again with `{run.command('train')} --data DIR --config FILE`"


def prediction_options(run, config):
    """How the run predicts its model members: the evaluate stage's batch size, chunk size and TTA, the
    run's interpolation, its prediction cache (the train stage predicts validation the same way)."""
    return {"batch_size": config["evaluate"]["batch_size"], "tta": config["evaluate"]["tta"],
            "chunk_size": config["evaluate"]["chunk_size"], "cache_dir": run.cache("predictions"),
            "interpolation": config["data"]["interpolation"]}


def best_model_member(run, config, *, required=None):
    """The model member (not a predictions file) with the highest test ROC AUC in ``tables/results.csv``;
    None without a model member, or without results when not ``required``."""
    results = run.read_table(RESULTS_TABLE, columns=("model", "roc_auc"), index_col="model", required=required)
    members = [member for member in run_members(run, config) if member.is_model]
    if not members or results is None:
        return None
    return max(members, key=lambda member: results.loc[member.name, "roc_auc"])


def evaluation_record(run):
    """Test-split predictions and the ensemble record written by :func:`evaluate_stage`."""
    needed = f"run `{run.command('evaluate')}` first"
    test_table = predictions_table("test")
    predictions = run.read_table(test_table, columns=PREDICTION_COLUMNS, required=needed)
    record = run.read_json(run.table(ENSEMBLE_RECORD), required=needed)
    for key in ("primary", "members", "thresholds", "best_member"):
        if key not in record:
            raise RunFolderError(f"{run.table(ENSEMBLE_RECORD)} lacks {key!r}; delete it and {needed}.")
    table = load_table(run)
    probabilities = [c for c in predictions.columns if c.startswith("p[")]
    problem = _first_problem(predictions, ["path", "label", *probabilities])
    test_paths = table.loc[table["role"] == "test", "path"]
    if problem is None and (len(predictions) != len(test_paths) or set(predictions["path"]) != set(test_paths)):
        problem = f"{len(predictions)} rows for the {len(test_paths)} test images of tables/{DATASET_TABLE}"
    if problem is None and f"p[{record['primary']}]" not in predictions:
        problem = f"no column p[{record['primary']}]"
    if problem is not None:
        raise CacheError(f"{run.table(test_table)} is cut short or damaged ({problem}); delete it "
                         f"and run `{run.command('evaluate')}`.")
    return predictions, record
