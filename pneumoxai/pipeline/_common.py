"""What the stages share: the dataset table, the members' folders and the evaluation record."""


import logging
import re
import shlex

from ..errors import CacheError, RunFolderError, short_repr
from ..validation import Interval, is_valid

logger = logging.getLogger("pneumoxai")

#: Side of the maps, masks and images the analyses share (members may differ in input size).
DISPLAY_SIZE = 224
PREDICTION_COLUMNS = ("path", "label", "patient_id", "subtype")


#: What a run folder without its dataset or members needs, on either route.
RUN_FIRST = ("run `pneumoxai train` or `pneumoxai run` first (or `pneumoxai import` for models trained "
             "elsewhere)")
_ROLES = ("train", "val", "test")
_SHA256 = re.compile(r"[0-9a-f]{64}|<missing>")


def load_table(run):
    """``tables/dataset.csv``, refused by name when it is cut short or damaged (checked against ``run.json``)."""
    from ..data import manifest_hash

    table = run.read_table("dataset.csv", columns=("path", "label", "role", "patient_id", "subtype"),
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
        raise CacheError(f"{run.table('dataset.csv')} is cut short or damaged ({problem}); delete it and re-run the "
                         "`pneumoxai train`, `run` or `import` command that made the run (its members are kept).")
    return table


def _first_problem(frame, columns):
    """Empty cells in ``columns`` (what a cut-short write leaves), or None. Patient ids may be empty by right."""
    empty = [c for c in columns if frame[c].isna().any()]
    return f"empty cells in {empty}" if empty else None


def member_dirs(run, config):
    """Folders of the members the analyses see (snapshot members expanded), in config order."""
    from .. import models
    from ..config import analysis_members
    from ..importing import member_kind

    dirs = []
    for member in analysis_members(config):
        directory = run.analysis_member_dir(member)
        if not models.is_member_dir(directory):
            if member.get("imported"):
                raise RunFolderError(f"Member {member['name']!r} was imported into {str(run.root)!r} but its folder "
                                     f"is missing; {_remake(run, member)}.")
            raise RunFolderError(f"Member {member['name']!r} is not trained in {str(run.root)!r}; {RUN_FIRST}.")
        card = models.read_card(directory)
        size = card.get("input_size")
        if member_kind(card) == "model" and not is_valid(size, _INPUT_SIZE):
            raise RunFolderError(f"The card of member {str(directory)!r} is damaged (input_size {short_repr(size)} is "
                                 f"not {_INPUT_SIZE}); delete the member's folder and {_remake(run, member)}.")
        dirs.append(directory)
    return dirs


#: The image sides pneumoxai.data.load_images makes.
_INPUT_SIZE = Interval("int", 8, 4096)


def _remake(run, member):
    """The one command that re-creates a member's folder."""
    if member.get("imported"):
        return (f"import it again with `pneumoxai import --out {shlex.quote(str(run.root))} "
                f"--member {member['name']}=PATH`")
    return f"train it again with `{run.command('train')} --data DIR --config FILE`"


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
    table = load_table(run)
    probabilities = [c for c in predictions.columns if c.startswith("p[")]
    problem = _first_problem(predictions, ["path", "label", *probabilities])
    test_paths = table.loc[table["role"] == "test", "path"]
    if problem is None and (len(predictions) != len(test_paths) or set(predictions["path"]) != set(test_paths)):
        problem = f"{len(predictions)} rows for the {len(test_paths)} test images of tables/dataset.csv"
    if problem is None and f"p[{record['primary']}]" not in predictions:
        problem = f"no column p[{record['primary']}]"
    if problem is not None:
        raise CacheError(f"{run.table('predictions_test.csv')} is cut short or damaged ({problem}); delete it "
                         f"and run `{run.command('evaluate')}`.")
    return predictions, record
