"""What the stages share: the dataset table, the members' folders and the evaluation record."""


import logging

from ..errors import RunFolderError
from ..run_folder import DATASET_TABLE, ENSEMBLE_RECORD, RESULTS_TABLE, predictions_table

logger = logging.getLogger("pneumoxai")

#: Side of the maps, masks and images the analyses share (members may differ in input size).
DISPLAY_SIZE = 224
PREDICTION_COLUMNS = ("path", "label", "patient_id", "subtype")


def load_table(run):
    return run.read_table(DATASET_TABLE, columns=("path", "label", "role", "patient_id", "subtype"),
                          required="run `pneumoxai train` or `pneumoxai run` first")


def run_members(run, config):
    """The members the analyses see (snapshot members expanded), in config order, as
    :class:`~pneumoxai.models.Member` objects."""
    from ..config import analysis_members
    from ..models import Member, is_member_dir

    members = []
    for member in analysis_members(config):
        directory = run.analysis_member_dir(member)
        if not is_member_dir(directory):
            raise RunFolderError(f"Member {member['name']!r} is not trained in {str(run.root)!r}; "
                                 "run `pneumoxai train` (or `pneumoxai run`) first.")
        members.append(Member(directory))
    return members


def prediction_options(run, config):
    """How the run predicts its model members: the evaluate stage's batch size and TTA, the run's
    interpolation, its prediction cache (the train stage predicts validation the same way)."""
    return {"batch_size": config["evaluate"]["batch_size"], "tta": config["evaluate"]["tta"],
            "cache_dir": run.cache("predictions"), "interpolation": config["data"]["interpolation"]}


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
    predictions = run.read_table(predictions_table("test"), columns=PREDICTION_COLUMNS, required=needed)
    record = run.read_json(run.table(ENSEMBLE_RECORD), required=needed)
    for key in ("primary", "members", "thresholds", "best_member"):
        if key not in record:
            raise RunFolderError(f"{run.table(ENSEMBLE_RECORD)} lacks {key!r}; delete it and {needed}.")
    return predictions, record
