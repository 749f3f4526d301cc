"""Stage 2: train the members of a config into the run folder (imported members are never trained)."""

import contextlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .. import _io
from ..config import config_hash
from ..errors import ConfigError, RunFolderError
from ..run_folder import CHECKPOINT_FILE, SNAPSHOT_STATE, TRAIN_PATHS_FILE, TRAINING_FILE, RunFolder
from ._common import load_table, logger, prediction_options
from .prepare import prepare


class _ImageCache:
    """Decoded images per (role, size), loaded once per process."""

    def __init__(self, table, interpolation):
        self.table, self.interpolation = table, interpolation
        self._arrays = {}

    def get(self, role, size):
        from ..data import load_images

        if (role, size) not in self._arrays:
            rows = self.table[self.table["role"] == role]
            images, ok = load_images(rows["path"], size, interpolation=self.interpolation, return_mask=True)
            self._arrays[role, size] = (images, rows[ok].reset_index(drop=True))
        return self._arrays[role, size]


def train_stage(run, config, data_root, *, names=None, verbose="auto", strategy="default"):
    """Prepare the split (first time), record the config, and train the members.

    ``config.json`` is written only after the data checks pass, so a rejected call
    never changes what later stages read.
    """
    table = prepare(run, data_root, config)
    config = with_imported_members(run, config)
    _io.write_json(run.config_file, config)
    return train_members(run, config, names, table=table, verbose=verbose, strategy=strategy)


def with_imported_members(run, config):
    """``config`` plus the members imported into ``run`` earlier, which a training config does not list.

    A config member that takes an imported member's name is refused: pneumoxai never
    retrains or overwrites an imported member.
    """
    from ..config import parse_config

    recorded = run.read_json(run.config_file) or {}
    imported = [m for m in recorded.get("members") or [] if isinstance(m, dict) and m.get("imported")]
    names = {m["name"] for m in config["members"]}
    clash = sorted(m["name"] for m in config["members"] if not m["imported"] and m["name"] in
                   {i["name"] for i in imported})
    if clash:
        raise RunFolderError(f"Member(s) {clash} of {str(run.root)!r} were imported; pneumoxai never retrains or "
                             "overwrites an imported member. Give the config's member(s) other names.")
    extra = [m for m in imported if m["name"] not in names]
    if not extra:
        return config
    return parse_config({**config, "members": config["members"] + extra})


def train_members(run, config, names=None, *, table=None, verbose="auto", strategy="default"):
    """Train every member of ``config`` (or those in ``names``) into ``members/<name>/``.

    A member whose card records the same member config and data manifest is skipped;
    one whose config changed is retrained. Each member is trained under its own lock,
    so several processes (one member each, e.g. a Slurm array) can train into one run
    folder. ``strategy`` names a :func:`pneumoxai.models.get_strategy` strategy; under
    ``multiworker`` only the chief writes the member.

    Returns
    -------
    pandas.DataFrame
        One row per member: name, status (trained / skipped), val AUC, seconds per epoch.
    """
    from .. import models

    table = load_table(run) if table is None else table
    manifest = run.read_json(run.run_file, required="run `pneumoxai train` first")["manifest_hash"]
    members = _selected_members(config, names)
    cache = _ImageCache(table, config["data"]["interpolation"])
    distribution = models.get_strategy(strategy)
    chief = models.is_chief(distribution)
    rows = []
    for member in members:
        member_dir = run.member_dir(member["name"])
        if member["imported"]:
            rows.append(_imported_row(member, member_dir))
            continue
        # The lock is taken before the up-to-date check, so two jobs given the same member
        # cannot both train it.
        with RunFolder(member_dir).lock() if chief else contextlib.nullcontext():
            _io.remove_orphan_temp_files(member_dir)  # e.g. a checkpoint cut short by kill -9
            wanted = config_hash(member)
            row = _up_to_date(run, member, wanted, manifest)
            if row is None:
                row = _train_one(run, config, member, wanted, manifest, cache, distribution, chief, verbose)
            rows.append(row)
    return pd.DataFrame(rows)


def _saved_folders(run, member):
    """The member folders one training run of ``member`` writes: its own, or its snapshots'."""
    from ..config import analysis_members

    return [run.analysis_member_dir(m) for m in analysis_members({"members": [member]})]


def _selected_members(config, names):
    members = config["members"]
    if not names:
        return members
    unknown = sorted(set(names) - {m["name"] for m in members})
    if unknown:
        raise ConfigError(f"Unknown member name(s) {unknown}; the config has {[m['name'] for m in members]}.")
    return [m for m in members if m["name"] in names]


def _up_to_date(run, member, wanted, manifest):
    """The summary row of a member already trained with this config and data, else None."""
    from ..models import Member, is_member_dir

    cards = []
    for folder in _saved_folders(run, member):
        if not is_member_dir(folder):
            return None
        try:
            card = Member(folder).card
        except RunFolderError as exc:
            logger.info("member %s: %s Retraining.", member["name"], exc)
            return None
        if card.get("imported"):
            raise RunFolderError(f"Member {member['name']!r} in {str(folder)!r} was imported; pneumoxai never "
                                 "retrains or overwrites it. Give the config's member another name.")
        cards.append(card)
    if any(card.get("config_hash") != wanted or card.get("manifest_hash") != manifest for card in cards):
        logger.info("member %s: config changed since it was trained; retraining.", member["name"])
        return None
    card = cards[-1]
    logger.info("member %s: up to date, skipped", member["name"])
    return {"member": member["name"], "status": "skipped (up to date)",
            "val_auc": card.get("val_metrics", {}).get("roc_auc"), "seconds_per_epoch": card.get("seconds_per_epoch")}


def _imported_row(member, member_dir):
    """Imported members are never trained here: report them, or say how to bring them back."""
    from .. import models

    if not models.is_member_dir(member_dir):
        raise RunFolderError(f"Imported member {member['name']!r} is missing from {str(member_dir)!r}; run "
                             "`pneumoxai import` again (pneumoxai never trains an imported member).")
    logger.info("member %s: imported, never retrained (training options in the config do not apply to it)",
                member["name"])
    return {"member": member["name"], "status": "imported", "val_auc": None, "seconds_per_epoch": None}


def _member_data(config, images, frame):
    """Apply a member's diversity options (subset, bootstrap) to its training rows."""
    rng = np.random.default_rng(config["seed"])
    index = np.arange(len(frame))
    if config["max_train_images"] and config["max_train_images"] < len(index):
        index = np.sort(rng.choice(index, size=config["max_train_images"], replace=False))
    if config["bootstrap"]:
        index = rng.choice(index, size=len(index), replace=True)
    return images[index], frame["label"].to_numpy()[index], frame["path"].to_numpy()[index]


def _keras_verbose(verbose):
    """Keras' progress bar rewrites one line with escape codes: only for a terminal."""
    if verbose == "auto" and not sys.stdout.isatty():
        return 2
    return verbose


def _train_one(run, config, member, wanted, manifest, cache, distribution, chief, verbose):
    from .. import data as data_mod
    from .. import models

    member_dir = run.member_dir(member["name"])
    logger.info("member %s: training (%s, %d px, weights=%s, balancing=%s, seed=%d, %d replica(s)%s)",
                member["name"], member["backbone"], member["image_size"], member["weights"], member["balancing"],
                member["seed"], distribution.num_replicas_in_sync,
                f", {member['snapshots']} snapshots" if member["snapshots"] > 1 else "")
    size = member["image_size"]
    train_images, train_frame = cache.get("train", size)
    val_images, val_frame = cache.get("val", size)
    x, y, paths = _member_data(member, train_images, train_frame)
    x, y, class_weight = data_mod.balance(x, y, member["balancing"], seed=member["seed"])
    record = {"name": member["name"], "config": member, "config_hash": wanted, "manifest_hash": manifest,
              "seed": member["seed"], "n_train": int(len(x)), "n_train_unique": int(len(set(paths))),
              "n_val": int(len(val_frame)),
              "reproducibility": "same seed and config reproduce predictions on CPU to within 1e-5 "
                                 "(multi-threaded float reductions are not bit-exact)"}
    snapshots = member["snapshots"] > 1
    if chief:
        # Before training: a snapshot saved just before a kill is complete, and so must be what it was trained on.
        _io.write_json(member_dir / TRAIN_PATHS_FILE, sorted(set(map(str, paths))))
    started = time.perf_counter()
    with distribution.scope(), _snapshot_folder(member_dir, record, snapshots, chief) as snapshot_dir:
        model = models.build_member(size, member["weights"], backbone=member["backbone"], seed=member["seed"],
                                    dense_units=tuple(member["dense_units"]), dropout=member["dropout"],
                                    l2=member["l2"], bn_momentum=member["bn_momentum"],
                                    precision=member["precision"], force_precision=member["force_precision"],
                                    input_norm=member["input_norm"], name=member["name"])
        checkpoint = member_dir / CHECKPOINT_FILE if chief and not snapshots else None
        info = models.train_member(model, x, y, val_images, val_frame["label"].to_numpy(), member,
                                   checkpoint_path=checkpoint, class_weight=class_weight,
                                   verbose=_keras_verbose(verbose), snapshot_dir=snapshot_dir,
                                   snapshot_metadata=record)
    y_val = val_frame["label"].to_numpy()
    trained = {"history": info["history"], "epochs_run": info["epochs_run"],
               "seconds_per_epoch": info["seconds_per_epoch"], "train_seconds": time.perf_counter() - started}
    if snapshots and chief:
        val_metrics = _finish_snapshots(run, config, member, trained, val_frame)
    elif chief:
        models.save_member(member_dir, model, {**record, **trained})
        (member_dir / CHECKPOINT_FILE).unlink(missing_ok=True)
        val_metrics = _saved_val_metrics(run, config, [member_dir], val_frame)[0]
        models.update_card(member_dir, {"val_metrics": val_metrics})
    else:  # a multi-worker worker saves nothing
        val_metrics = _quick_metrics(y_val, models.predict_proba(model, val_images))
    logger.info("member %s: val AUC %.4f, %.1f s/epoch, %d epochs", member["name"], val_metrics["roc_auc"],
                info["seconds_per_epoch"], info["epochs_run"])
    return {"member": member["name"], "status": "trained", "val_auc": val_metrics["roc_auc"],
            "seconds_per_epoch": info["seconds_per_epoch"]}


@contextlib.contextmanager
def _snapshot_folder(member_dir, record, snapshots, chief):
    """Where a snapshot-ensemble run saves its snapshots and resume state (None for other members).

    The folder's ``training.json`` names the config and data it trains; a folder left by
    another config (changed, then killed mid-run) is cleared first, so its resume state and
    snapshots never mix into this run. Workers other than the chief save into a scratch folder.
    """
    if not snapshots:
        yield None
        return
    if not chief:
        with tempfile.TemporaryDirectory() as scratch:
            yield Path(scratch)
        return
    marker = member_dir / TRAINING_FILE
    wanted = {"config_hash": record["config_hash"], "manifest_hash": record["manifest_hash"]}
    previous = _io.read_json(marker) if marker.is_file() else None
    if previous != wanted:
        shutil.rmtree(member_dir / SNAPSHOT_STATE, ignore_errors=True)
        for stale in member_dir.glob(f"{record['name']}_snap*"):
            shutil.rmtree(stale)
        _io.write_json(marker, wanted)
    yield member_dir


def _finish_snapshots(run, config, member, trained, val_frame):
    """Record each snapshot's name, validation metrics and timing on its card; return the last one's metrics."""
    from ..models import Member, update_card

    folders = _saved_folders(run, member)
    for folder, val_metrics in zip(folders, _saved_val_metrics(run, config, folders, val_frame)):
        logger.info("member %s: val AUC %.4f", folder.name, val_metrics["roc_auc"])
        update_card(folder, {**trained, "name": folder.name, "epochs_run": Member(folder).card["epoch"],
                             "val_metrics": val_metrics})
    return val_metrics


def _saved_val_metrics(run, config, folders, val_frame):
    """Validation metrics of saved members, from predictions put in the cache the evaluate stage reads.

    Predicted as the evaluate stage will predict them (its batch size and TTA setting, the
    run's interpolation), so the validation split is predicted once per member, not twice.
    """
    from ..models import Member

    P = Member.predict_many([Member(folder) for folder in folders], val_frame, **prediction_options(run, config),
                            progress=False)
    y_val = val_frame["label"].to_numpy()
    return [_quick_metrics(y_val, column) for column in P.to_numpy().T]


def _quick_metrics(y_true, y_prob):
    from sklearn.metrics import accuracy_score, roc_auc_score

    return {"roc_auc": float(roc_auc_score(y_true, y_prob)),
            "accuracy": float(accuracy_score(y_true, y_prob >= 0.5))}
