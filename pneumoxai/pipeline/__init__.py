"""The stages of a run, each a module of short functions over one run folder.

``pneumoxai run`` calls them in order; each can also run alone (``pneumoxai evaluate``,
``explain``, ``slices``, ``report``, ``analyse``)::

    prepare -> train -> evaluate -> explanations -> failure_slices -> report
    (prepare.py)  (train.py)  (evaluate.py)  (explanations.py)  (failure_slices.py)  (orchestration.py)

Where things are written is decided by :mod:`pneumoxai.run_folder`; the computations are
the public functions of ``data``, ``models``, ``predict``, ``ensemble``, ``metrics``,
``explain`` and ``slices``. Each stage skips work whose inputs have not changed (member
config hash, model file hash, data manifest hash), and writes every artifact atomically.
The per-image work of ``analyse`` (predictions, test-split maps) can be split over jobs and
merged back (``sharding.py``: ``pneumoxai analyse --shard I/N``, ``pneumoxai merge``).
"""

from .evaluate import evaluate_stage, member_predictions
from .explanations import explain_stage
from .failure_slices import slices_stage
from .orchestration import analyse, report_stage, run_all, stage_timings
from .prepare import prepare, prepare_from_lists
from .sharding import analyse_shard, merge_shards, pending_step
from .train import train_members, train_stage, with_imported_members

__all__ = [
    "prepare",
    "prepare_from_lists",
    "train_members",
    "train_stage",
    "with_imported_members",
    "member_predictions",
    "evaluate_stage",
    "explain_stage",
    "slices_stage",
    "report_stage",
    "run_all",
    "analyse",
    "stage_timings",
    "pending_step",
    "analyse_shard",
    "merge_shards",
]
