"""What the stages share: the dataset table, the members' folders and the evaluation record."""


import logging

from ..errors import RunFolderError

logger = logging.getLogger("pneumoxai")

#: Side of the maps, masks and images the analyses share (members may differ in input size).
DISPLAY_SIZE = 224
PREDICTION_COLUMNS = ("path", "label", "patient_id", "subtype")


def load_table(run):
    return run.read_table("dataset.csv", columns=("path", "label", "role", "patient_id", "subtype"),
                          required="run `pneumoxai train` or `pneumoxai run` first")


def member_dirs(run, config):
    """Folders of the members the analyses see (snapshot members expanded), in config order."""
    from .. import models
    from ..config import analysis_members

    dirs = []
    for member in analysis_members(config):
        directory = run.analysis_member_dir(member)
        if not models.is_member_dir(directory):
            raise RunFolderError(f"Member {member['name']!r} is not trained in {str(run.root)!r}; "
                                 "run `pneumoxai train` (or `pneumoxai run`) first.")
        dirs.append(directory)
    return dirs


def member_kind_of(member_dir):
    from ..importing import member_kind
    from ..models import read_card

    return member_kind(read_card(member_dir))


def best_model_member(run, config, *, required=None):
    """The folder of the model member (not a predictions file) with the highest test ROC AUC in
    ``tables/results.csv``; None without a model member, or without results when not ``required``."""
    results = run.read_table("results.csv", columns=("model", "roc_auc"), index_col="model", required=required)
    dirs = [d for d in member_dirs(run, config) if member_kind_of(d) == "model"]
    if not dirs or results is None:
        return None
    return max(dirs, key=lambda d: results.loc[d.name, "roc_auc"])


def evaluation_record(run):
    """Test-split predictions and the ensemble record written by :func:`evaluate_stage`."""
    needed = f"run `{run.command('evaluate')}` first"
    predictions = run.read_table("predictions_test.csv", columns=PREDICTION_COLUMNS, required=needed)
    record = run.read_json(run.table("ensemble.json"), required=needed)
    for key in ("primary", "members", "thresholds", "best_member"):
        if key not in record:
            raise RunFolderError(f"{run.table('ensemble.json')} lacks {key!r}; delete it and {needed}.")
    return predictions, record
