"""Stage 2: train the members of a config into the run folder (imported members are never trained)."""

import contextlib
import sys
import time

import numpy as np
import pandas as pd

from .. import _io
from ..config import config_hash
from ..errors import ConfigError, RunFolderError
from ..run_folder import RunFolder
from ._common import load_table, logger
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
    _refuse_snapshot_members(config)
    table = prepare(run, data_root, config)
    config = with_imported_members(run, config)
    _io.write_json(run.config_file, config)
    return train_members(run, config, names, table=table, verbose=verbose, strategy=strategy)


def _refuse_snapshot_members(config):
    """Snapshot ensembles train through models.train_member; the run folder cannot hold them yet, so say so up front."""
    snapshot = [m["name"] for m in config["members"] if m["snapshots"] > 1]
    if snapshot:
        raise ConfigError(f"Member(s) {snapshot} set snapshots > 1: a run folder does not yet expand one training "
                          "run into its snapshot members. Train them with pneumoxai.models.train_member("
                          "..., snapshot_dir=...) (see experiments/ablation_cpu.py), or list independent members.")


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
            row = _up_to_date(member, member_dir, wanted, manifest)
            if row is None:
                row = _train_one(run, member, wanted, manifest, cache, distribution, chief, verbose)
            rows.append(row)
    return pd.DataFrame(rows)


def _selected_members(config, names):
    members = config["members"]
    if not names:
        return members
    unknown = sorted(set(names) - {m["name"] for m in members})
    if unknown:
        raise ConfigError(f"Unknown member name(s) {unknown}; the config has {[m['name'] for m in members]}.")
    return [m for m in members if m["name"] in names]


def _up_to_date(member, member_dir, wanted, manifest):
    """The summary row of a member already trained with this config and data, else None."""
    from .. import models

    if not models.is_member_dir(member_dir):
        return None
    try:
        card = models.read_card(member_dir)
    except RunFolderError as exc:
        logger.info("member %s: %s Retraining.", member["name"], exc)
        return None
    if card.get("imported"):
        raise RunFolderError(f"Member {member['name']!r} in {str(member_dir)!r} was imported; pneumoxai never "
                             "retrains or overwrites it. Give the config's member another name.")
    if card.get("config_hash") != wanted or card.get("manifest_hash") != manifest:
        logger.info("member %s: config changed since it was trained; retraining.", member["name"])
        return None
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


def _train_one(run, member, wanted, manifest, cache, distribution, chief, verbose):
    from .. import data as data_mod
    from .. import models

    member_dir = run.member_dir(member["name"])
    logger.info("member %s: training (%s, %d px, weights=%s, balancing=%s, seed=%d, %d replica(s))",
                member["name"], member["backbone"], member["image_size"], member["weights"], member["balancing"],
                member["seed"], distribution.num_replicas_in_sync)
    size = member["image_size"]
    train_images, train_frame = cache.get("train", size)
    val_images, val_frame = cache.get("val", size)
    x, y, paths = _member_data(member, train_images, train_frame)
    x, y, class_weight = data_mod.balance(x, y, member["balancing"], seed=member["seed"])
    started = time.perf_counter()
    with distribution.scope():
        model = models.build_member(size, member["weights"], backbone=member["backbone"], seed=member["seed"],
                                    dense_units=tuple(member["dense_units"]), dropout=member["dropout"],
                                    l2=member["l2"], bn_momentum=member["bn_momentum"],
                                    precision=member["precision"], force_precision=member["force_precision"],
                                    input_norm=member["input_norm"], name=member["name"])
        info = models.train_member(model, x, y, val_images, val_frame["label"].to_numpy(), member,
                                   checkpoint_path=member_dir / "checkpoint.keras" if chief else None,
                                   class_weight=class_weight, verbose=_keras_verbose(verbose))
    val_metrics = _quick_metrics(val_frame["label"].to_numpy(), models.predict_proba(model, val_images))
    if chief:
        _io.write_json(member_dir / "train_paths.json", sorted(set(map(str, paths))))
        models.save_member(member_dir, model, {
            "name": member["name"], "config": member, "config_hash": wanted, "manifest_hash": manifest,
            "seed": member["seed"], "n_train": int(len(x)), "n_train_unique": int(len(set(paths))),
            "n_val": int(len(val_frame)), "history": info["history"], "epochs_run": info["epochs_run"],
            "seconds_per_epoch": info["seconds_per_epoch"], "train_seconds": time.perf_counter() - started,
            "val_metrics": val_metrics,
            "reproducibility": "same seed and config reproduce predictions on CPU to within 1e-5 "
                               "(multi-threaded float reductions are not bit-exact)",
        })
        (member_dir / "checkpoint.keras").unlink(missing_ok=True)
    logger.info("member %s: val AUC %.4f, %.1f s/epoch, %d epochs", member["name"], val_metrics["roc_auc"],
                info["seconds_per_epoch"], info["epochs_run"])
    return {"member": member["name"], "status": "trained", "val_auc": val_metrics["roc_auc"],
            "seconds_per_epoch": info["seconds_per_epoch"]}


def _quick_metrics(y_true, y_prob):
    from sklearn.metrics import accuracy_score, roc_auc_score

    return {"roc_auc": float(roc_auc_score(y_true, y_prob)),
            "accuracy": float(accuracy_score(y_true, y_prob >= 0.5))}
