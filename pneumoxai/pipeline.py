"""The stages of a run, each a short function over one run folder.

``pneumoxai run`` calls them in order; each can also run alone (``pneumoxai evaluate``,
``explain``, ``slices``, ``report``)::

    prepare -> train_stage -> evaluate_stage -> explain_stage -> slices_stage -> report_stage

Where things are written is decided by :mod:`pneumoxai.run_folder`; the computations
are the public functions of ``data``, ``models``, ``predict``, ``ensemble``,
``metrics``, ``explain`` and ``slices``. Each stage skips work whose inputs have not
changed (member config hash, model file hash, data manifest hash), and writes every
artifact atomically.
"""

import contextlib
import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from . import _io
from .config import config_hash
from .errors import ConfigError, DataError, RunFolderError
from .run_folder import PRIMARY, RUN_FORMAT, STAGES, RunFolder

__all__ = [
    "prepare",
    "train_members",
    "train_stage",
    "member_predictions",
    "evaluate_stage",
    "explain_stage",
    "slices_stage",
    "report_stage",
    "run_all",
    "analyse",
    "prepare_from_lists",
    "with_imported_members",
    "stage_timings",
]

logger = logging.getLogger("pneumoxai")

#: Side of the maps, masks and images the analyses share (members may differ in input size).
DISPLAY_SIZE = 224
_PREDICTION_COLUMNS = ("path", "label", "patient_id", "subtype")


# =========================================================================== prepare


def prepare(run, data_root, config):
    """Scan the data, carve the patient-grouped validation split, record it in the run folder.

    A run folder is bound to one data config: re-using it with another split (other
    seed, fraction, subset) raises before anything is written.

    Returns
    -------
    pandas.DataFrame
        ``tables/dataset.csv``: the scan table plus ``role`` (train / val / test).
    """
    from .data import file_hashes, manifest_hash

    table = _assign_roles(data_root, config["data"])
    table["sha256"] = file_hashes(table)
    _refuse_conflicting_labels(table)
    record = {"format": RUN_FORMAT, "data_root": str(Path(data_root).resolve()),
              "data_config_hash": config_hash(config["data"]), "manifest_hash": manifest_hash(table)}
    _check_same_data(run, record)
    _io.write_json(run.run_file, record)
    _io.write_csv(run.table("dataset.csv"), table, index=False)
    _warn_shared_patients(table)
    _record_duplicates(run, table)
    return table


def prepare_from_lists(run, val_list, test_list, config, *, data_root=None):
    """Record a dataset given as two lists of images (validation and test) instead of a folder scan.

    Each list is a CSV with ``path`` and ``label`` (0 NORMAL, 1 PNEUMONIA) columns and an
    optional ``patient_id``; relative paths are resolved against ``data_root``. Used
    when imported members were validated and tested on images of the user's choosing.

    Returns
    -------
    pandas.DataFrame
        ``tables/dataset.csv`` (roles ``val`` and ``test``).
    """
    from .data import file_hashes, manifest_hash

    parts = [_read_list(path, role, data_root) for role, path in (("val", val_list), ("test", test_list))]
    table = pd.concat(parts, ignore_index=True)
    table["sha256"] = file_hashes(table)
    _refuse_conflicting_labels(table)
    record = {"format": RUN_FORMAT, "data_root": str(Path(data_root).resolve()) if data_root else None,
              "data_config_hash": config_hash({"val_list": table.loc[table.role == "val", "path"].tolist()}),
              "manifest_hash": manifest_hash(table)}
    _check_same_data(run, record)
    _io.write_json(run.run_file, record)
    _io.write_csv(run.table("dataset.csv"), table, index=False)
    _record_duplicates(run, table)
    return table


def _read_list(path, role, data_root):
    from .data import CLASS_NAMES
    from .validation import check_labels

    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"The {role} list {str(path)!r} could not be read: {str(exc).splitlines()[0]}") from None
    missing = [c for c in ("path", "label") if c not in frame.columns]
    if missing or frame.empty:
        raise DataError(f"The {role} list {str(path)!r} needs rows with 'path' and 'label' columns; "
                        f"missing {missing or 'rows'}.")
    base = Path(data_root) if data_root else Path(path).resolve().parent
    paths = [str((base / p).resolve()) for p in frame["path"].astype(str)]
    labels = check_labels(frame["label"].to_numpy(), len(frame), owner=f"the {role} list", name="label")
    patients = frame["patient_id"].astype(str) if "patient_id" in frame else pd.Series(paths)
    out = pd.DataFrame({"path": paths, "split": role, "label": labels,
                        "label_name": [CLASS_NAMES[v] for v in labels], "patient_id": patients.to_numpy(),
                        "subtype": np.where(labels == 1, "pneumonia", "normal"), "role": role})
    unreadable = len(out) - len(_readable(out))
    if unreadable:
        raise DataError(f"{unreadable} image(s) of the {role} list cannot be read (see the warning above); "
                        "fix or drop them so predictions stay row-aligned.")
    return out


def _assign_roles(data_root, data_cfg):
    from .data import scan_dataset, split_by_patient

    frame = scan_dataset(data_root)
    train_pool = frame[frame["split"] == "train"]
    test = frame[frame["split"] == data_cfg["test_split"]]
    if test.empty:
        raise DataError(f"{str(data_root)!r} has no '{data_cfg['test_split']}' split to evaluate on.")
    if data_cfg["max_per_class"]:
        train_pool = _subset(train_pool, data_cfg["max_per_class"], data_cfg["subset_seed"])
        test = _subset(test, data_cfg["max_per_class"], data_cfg["subset_seed"])
    train, val = split_by_patient(_readable(train_pool), data_cfg["val_fraction"], seed=data_cfg["split_seed"])
    table = pd.concat([train.assign(role="train"), val.assign(role="val"), _readable(test).assign(role="test")],
                      ignore_index=True)
    for role, rows in table.groupby("role"):
        counts = np.bincount(rows["label"], minlength=2)
        if (counts == 0).any():
            raise DataError(f"The {role} data holds {counts[0]} NORMAL and {counts[1]} PNEUMONIA images; "
                            "training, validation and testing each need both classes.")
    return table


def _refuse_conflicting_labels(table):
    """Byte-identical images under both labels: one of the labels is wrong, so no result can be trusted."""
    labels = table.groupby("sha256")["label"].nunique()
    conflicting = table[table["sha256"].isin(labels.index[labels > 1])].sort_values("sha256")
    if len(conflicting):
        examples = ", ".join(Path(p).name for p in conflicting["path"].head(4))
        raise DataError(f"{conflicting['sha256'].nunique()} image(s) are stored under both NORMAL and PNEUMONIA "
                        f"as byte-identical files ({examples}): one label of each is wrong. Remove the copies.")


def _readable(frame):
    """Drop files that cannot be decoded (load_images warns with their names), so every
    later array stays row-aligned."""
    from .data import load_images

    _, ok = load_images(frame["path"], 8, channels=1, return_mask=True)
    return frame[ok]


def _subset(frame, per_class, seed):
    parts = [group.sample(n=min(per_class, len(group)), random_state=seed) for _, group in frame.groupby("label")]
    return pd.concat(parts).sort_index()


def _check_same_data(run, record):
    previous = run.read_json(run.run_file)
    if previous is None:
        return
    if previous.get("format") != RUN_FORMAT:
        raise RunFolderError(f"{str(run.root)!r} was written by another pneumoxai run format; use a new --out.")
    for key, what in (("data_config_hash", "data config"), ("manifest_hash", "dataset contents")):
        if previous.get(key) != record[key]:
            raise RunFolderError(
                f"Run folder {str(run.root)!r} was made with a different {what}; its members and results "
                "would be mixed with this run's. Use a new --out folder (or delete this one).")


def _warn_shared_patients(table):
    """Warn when one patient id sits in both the training data and the test split."""
    train_ids = set(table.loc[table["role"] != "test", "patient_id"])
    shared = sorted(train_ids & set(table.loc[table["role"] == "test", "patient_id"]))
    if shared:
        warnings.warn(
            f"{len(shared)} patient id(s) appear in both the training data and the test split "
            f"(e.g. {', '.join(shared[:5])}); the official split is not patient-disjoint, so test scores "
            "may be optimistic.", UserWarning, stacklevel=3)


def _record_duplicates(run, table):
    from .data import find_duplicates

    duplicates = find_duplicates(table, by="role")
    _io.write_csv(run.table("duplicates.csv"), duplicates, index=False)
    if len(duplicates):
        roles = duplicates.groupby("sha256")["role"].agg(lambda r: "/".join(sorted(set(r))))
        warnings.warn(
            f"{roles.size} image(s) are byte-identical copies across {', '.join(sorted(set(roles)))} "
            f"(e.g. {Path(duplicates['path'].iloc[0]).name}): leakage between training and evaluation data; "
            "see tables/duplicates.csv.", UserWarning, stacklevel=3)


def _load_table(run):
    return run.read_table("dataset.csv", columns=("path", "label", "role", "patient_id", "subtype"),
                          required="run `pneumoxai train` or `pneumoxai run` first")


# =========================================================================== train


class _ImageCache:
    """Decoded images per (role, size), loaded once per process."""

    def __init__(self, table):
        self.table = table
        self._arrays = {}

    def get(self, role, size):
        from .data import load_images

        if (role, size) not in self._arrays:
            rows = self.table[self.table["role"] == role]
            images, ok = load_images(rows["path"], size, return_mask=True)
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
    from .config import parse_config

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
    from . import models

    table = _load_table(run) if table is None else table
    manifest = run.read_json(run.run_file, required="run `pneumoxai train` first")["manifest_hash"]
    members = _selected_members(config, names)
    cache = _ImageCache(table)
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
    from . import models

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
    from . import models

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
    from . import data as data_mod
    from . import models

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
                                    precision=member["precision"], name=member["name"])
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


# =========================================================================== evaluate


def _member_dirs(run, config):
    from . import models

    dirs = []
    for member in config["members"]:
        directory = run.member_dir(member["name"])
        if not models.is_member_dir(directory):
            raise RunFolderError(f"Member {member['name']!r} is not trained in {str(run.root)!r}; "
                                 "run `pneumoxai train` (or `pneumoxai run`) first.")
        dirs.append(directory)
    return dirs


def member_predictions(run, config, role, *, table=None, progress=True):
    """Member probabilities for one role (val / test), from the run's content-hash cache.

    Returns
    -------
    P : pandas.DataFrame of shape (n_samples, n_members)
        Columns are member names.
    rows : pandas.DataFrame
        The dataset rows, aligned with ``P``.
    """
    from .importing import predictions_of
    from .predict import predict_members

    table = _load_table(run) if table is None else table
    rows = table[table["role"] == role].reset_index(drop=True)
    dirs = _member_dirs(run, config)
    model_dirs = [d for d in dirs if _kind(d) == "model"]
    columns = {}
    if model_dirs:
        P = predict_members(model_dirs, rows, batch_size=config["evaluate"]["batch_size"],
                            tta=config["evaluate"]["tta"], cache_dir=run.cache("predictions"), progress=progress)
        columns.update(zip(model_dirs, P.T))
    for directory in dirs:
        if directory not in columns:
            columns[directory] = predictions_of(directory, rows["path"].tolist())
    return pd.DataFrame({d.name: columns[d] for d in dirs}), rows


def _kind(member_dir):
    from .importing import member_kind
    from .models import read_card

    return member_kind(read_card(member_dir))


def _trained_on(run, config, rows):
    """(n_rows, n_members) bool: was the row in that member's training data."""
    columns = []
    for member in config["members"]:
        if member["imported"]:
            # Its training images are unknown here; `pneumoxai import` told the user to keep them out.
            columns.append(np.zeros(len(rows), dtype=bool))
            continue
        paths = set(_io.read_json(run.member_dir(member["name"]) / "train_paths.json"))
        columns.append(rows["path"].isin(paths).to_numpy())
    return np.column_stack(columns)


def _threshold(y_val, p_val, evaluate_cfg):
    from .metrics import choose_threshold

    method = evaluate_cfg["threshold"]
    if not isinstance(method, str):
        return float(method)
    target = evaluate_cfg["target_sensitivity"] if method == "sensitivity" else None
    return float(choose_threshold(y_val, p_val, method=method, target=target))


def evaluate_stage(run, config, *, verbose="auto"):
    """Member predictions on val and test, combiners fitted on val, results on test.

    Combiners that learn (optimized soft voting, stacking) are fitted on the
    patient-grouped validation split, which no member was trained on (checked against
    each member's recorded training files). Each model's threshold is chosen on
    validation data (``evaluate.threshold``) and applied unchanged to the test split.

    Writes ``tables/results.csv``, ``tables/results.md``, ``tables/predictions_{val,test}.csv``,
    ``tables/comparisons.csv``, ``tables/diversity.csv``, ``tables/ensemble_size.csv``,
    ``tables/ensemble.json`` and the evaluation figures.

    Returns
    -------
    pandas.DataFrame
        The results table.
    """
    started = time.perf_counter()
    table = _load_table(run)
    P_val, val_rows = member_predictions(run, config, "val", table=table, progress=verbose != 0)
    P_test, test_rows = member_predictions(run, config, "test", table=table, progress=verbose != 0)
    val_probs, test_probs, fitted = _fit_combiners(run, config, P_val, val_rows, P_test)
    y_val, y_test = val_rows["label"].to_numpy(), test_rows["label"].to_numpy()
    thresholds = {name: _threshold(y_val, val_probs[name], config["evaluate"]) for name in test_probs}
    # The origin's reported row belongs beside its own recipe, not beside models pneumoxai did not train.
    origin_recipe = not any(m["imported"] for m in config["members"])
    results = _results(run, config["evaluate"], y_test, test_probs, thresholds, test_rows["patient_id"].to_numpy(),
                       reference=origin_recipe)
    names = list(P_val.columns)
    best_member = max(names, key=lambda n: results.loc[n, "roc_auc"])
    _write_comparisons(run, y_test, test_probs, thresholds, best_member)
    for role, rows, probs in (("val", val_rows, val_probs), ("test", test_rows, test_probs)):
        _write_predictions(run, role, rows, probs)
    calibrator = _write_ensemble_record(run, names, val_probs, y_val, thresholds, fitted, best_member)
    size_curve = _write_diversity(run, P_val, y_val, P_test, y_test)
    _evaluation_figures(run, y_test, test_probs, thresholds, best_member, list(fitted), calibrator, size_curve)
    logger.info("evaluate: %.1f s", time.perf_counter() - started)
    return results


def _fit_combiners(run, config, P_val, val_rows, P_test):
    """Fit every combiner on validation predictions; return val and test probabilities of all models."""
    from .ensemble import HardVoting, SoftVoting, Stacking

    names = list(P_val.columns)
    y_val = val_rows["label"].to_numpy()
    combiners = {PRIMARY: SoftVoting(), "soft voting (optimized)": SoftVoting(weights="optimize"),
                 "hard voting": HardVoting()}
    folds = config["evaluate"]["stacking_cv"]
    smaller_class = int(min(y_val.sum(), len(y_val) - y_val.sum()))
    if len(names) > 1 and smaller_class >= folds:
        combiners["stacking"] = Stacking(cv=folds, features="logit")
    elif len(names) > 1:
        warnings.warn(f"Stacking left out: its {folds} cross-validation folds need as many validation images of "
                      f"each class, and the smaller class has {smaller_class} (lower evaluate.stacking_cv or "
                      "enlarge the validation split).", UserWarning, stacklevel=3)
    val_probs = {name: P_val[name].to_numpy() for name in names}
    test_probs = {name: P_test[name].to_numpy() for name in names}
    for label, combiner in combiners.items():
        if isinstance(combiner, Stacking):
            combiner.fit(P_val, y_val, trained_on=_trained_on(run, config, val_rows), groups=val_rows["patient_id"])
            val_probs[label] = combiner.oof_proba_[:, 1]  # honest val scores for the threshold choice
        else:
            val_probs[label] = combiner.fit(P_val, y_val).predict_proba(P_val)[:, 1]
        test_probs[label] = combiner.predict_proba(P_test)[:, 1]
    return val_probs, test_probs, combiners


def _results(run, evaluate_cfg, y_test, test_probs, thresholds, groups, *, reference):
    """The results table, with the primary ensemble at 0.5 too (the origin reported at 0.5)."""
    from .metrics import results_table, table_to_markdown

    options = dict(n_boot=evaluate_cfg["n_boot"], ci=evaluate_cfg["ci"], seed=0, groups=groups)
    results = results_table(y_test, test_probs, threshold=thresholds, reference=reference, **options)
    at_half = results_table(y_test, {f"{PRIMARY} @0.5": test_probs[PRIMARY]}, threshold=0.5, reference=False,
                            **options)
    split = len(results) - 1 if reference else len(results)
    results = pd.concat([results.iloc[:split], at_half, results.iloc[split:]])
    _io.write_csv(run.table("results.csv"), results)
    _io.write_text(run.table("results.md"), table_to_markdown(results) + "\n")
    return results


def _write_comparisons(run, y_test, test_probs, thresholds, best_member):
    """Paired tests: the ensemble against its best member, and stacking against soft voting."""
    from .metrics import compare

    pairs = [(best_member, PRIMARY)] + ([(PRIMARY, "stacking")] if "stacking" in test_probs else [])
    rows = []
    for a, b in pairs:
        result = compare(y_test, test_probs[a], test_probs[b], threshold=(thresholds[a], thresholds[b]))
        rows.append({"model_a": a, "model_b": b, **{k: v for k, v in result.items() if np.isscalar(v)}})
    _io.write_csv(run.table("comparisons.csv"), pd.DataFrame(rows), index=False)


def _write_predictions(run, role, rows, probs):
    out = rows[list(_PREDICTION_COLUMNS)].copy()
    for name, values in probs.items():
        out[f"p[{name}]"] = values
    _io.write_csv(run.table(f"predictions_{role}.csv"), out, index=False)


def _write_ensemble_record(run, names, val_probs, y_val, thresholds, fitted, best_member):
    from .calibration import TemperatureScaling

    calibrator = TemperatureScaling().fit(val_probs[PRIMARY], y_val)
    _io.write_json(run.table("ensemble.json"), {
        "primary": PRIMARY,
        "members": names,
        "thresholds": thresholds,
        "optimized_weights": dict(zip(names, map(float, fitted["soft voting (optimized)"].weights_))),
        "temperature": float(calibrator.temperature_),
        "best_member": best_member,
    })
    return calibrator


def _write_diversity(run, P_val, y_val, P_test, y_test):
    """Pairwise diversity on test and the greedy ensemble-size curve on val (None for one member)."""
    from .ensemble import diversity, ensemble_size_curve

    if P_val.shape[1] < 2:
        return None
    _io.write_csv(run.table("diversity.csv"), diversity(P_test, y_test, threshold=0.5), index=False)
    size_curve = ensemble_size_curve(P_val, y_val, combiner="soft", metric="roc_auc")
    _io.write_csv(run.table("ensemble_size.csv"), size_curve, index=False)
    return size_curve


def _evaluation_figures(run, y_test, test_probs, thresholds, best_member, combiners, calibrator, size_curve):
    from . import figures

    stem = run.figure_stem
    figures.plot_roc(y_test, test_probs, path=stem("roc"))
    figures.plot_pr(y_test, test_probs, path=stem("pr"))
    figures.plot_confusion_matrices(y_test, {k: test_probs[k] for k in [best_member, *combiners]},
                                    threshold=0.5, path=stem("confusion"))
    figures.plot_reliability(y_test, {
        PRIMARY: test_probs[PRIMARY],
        f"{PRIMARY} (temperature-scaled)": calibrator.predict_proba(test_probs[PRIMARY])[:, 1],
        best_member: test_probs[best_member]}, path=stem("reliability"))
    figures.plot_threshold_analysis(y_test, test_probs[PRIMARY], threshold=thresholds[PRIMARY],
                                    path=stem("threshold"))
    if size_curve is not None:
        figures.plot_diversity(run.read_table("diversity.csv"), path=stem("diversity"))
        figures.plot_ensemble_size(size_curve, ylabel="val ROC AUC", path=stem("ensemble_size"))


def _evaluation(run):
    """Test-split predictions and the ensemble record written by :func:`evaluate_stage`."""
    needed = f"run `{run.command('evaluate')}` first"
    predictions = run.read_table("predictions_test.csv", columns=_PREDICTION_COLUMNS, required=needed)
    record = run.read_json(run.table("ensemble.json"), required=needed)
    for key in ("primary", "members", "thresholds", "best_member"):
        if key not in record:
            raise RunFolderError(f"{run.table('ensemble.json')} lacks {key!r}; delete it and {needed}.")
    return predictions, record


# =========================================================================== explain


def explain_stage(run, config, *, methods=None, max_images=None):
    """Grad-CAM / Grad-CAM++ / SHAP maps of the primary ensemble's errors on the test split.

    - Every test image gets the ensemble's Grad-CAM of its predicted class (the class
      that drove the call) and its lung-zone attention shares
      (``tables/zone_attention_all.csv``, ``maps/gradcam_test.npz``): the slices stage
      uses the off-lung share as a slicing column.
    - False negatives, false positives and a class-matched sample of correct calls
      (``explain.max_images`` in all) get every configured method (ensemble maps are
      member maps averaged with the soft-voting weights; the SHAP map of the ensemble is
      the mean of the members' logit SHAP maps, an approximation since SHAP values of
      an averaged probability are not the average of logit attributions), saved to
      ``maps/explain.npz`` with ``tables/zone_attention.csv``.
    - Faithfulness for the best member: deletion AUC of its Grad-CAM against random maps
      (``tables/explain_summary.csv``).
    """
    from .lungs import lung_mask
    from .models import load_member

    started = time.perf_counter()
    explain_cfg = config["explain"]
    predictions, record = _evaluation(run)
    y = predictions["label"].to_numpy()
    p_ens = predictions[f"p[{record['primary']}]"].to_numpy()
    threshold = record["thresholds"][record["primary"]]
    predicted = (p_ens >= threshold).astype(int)
    model_dirs = [d for d in _member_dirs(run, config) if _kind(d) == "model"]
    if not model_dirs:
        raise ConfigError("explain: every member is an imported predictions file; maps need models "
                          "(import a .keras model, or leave the stage out with `pneumoxai run --skip explain`).")
    left_out = sorted({d.name for d in _member_dirs(run, config)} - {d.name for d in model_dirs})
    if left_out:
        logger.info("explain: member(s) %s are prediction files; the maps come from the model members only",
                    ", ".join(left_out))
    member_models = [load_member(d)[0] for d in model_dirs]
    _check_explainable(member_models)
    images = _ImagesBySize(predictions["path"].tolist())
    masks = lung_mask(images.at(DISPLAY_SIZE))
    all_maps, zones_all = _test_split_maps(run, member_models, images, predicted, masks)
    chosen = _select_for_gallery(y, predicted, max_images or explain_cfg["max_images"], seed=explain_cfg["seed"])
    subset_maps = _gallery_maps(run, config, member_models, images.subset(chosen), predicted[chosen].astype(bool),
                                methods or explain_cfg["methods"])
    _write_gallery(run, images.paths, chosen, y, predicted, subset_maps, masks)
    _faithfulness_summary(run, record, member_models, images.subset(chosen), predicted[chosen].astype(bool),
                          zones_all, predicted != y, masks)
    _explain_figures(run, images.at(DISPLAY_SIZE), chosen, subset_maps, all_maps, zones_all, y, p_ens, threshold)
    logger.info("explain: %d images x %d methods, all %d test images with Grad-CAM, %.1f s", len(chosen),
                len(subset_maps), len(images.paths), time.perf_counter() - started)


#: Below this input side a ResNet50's last convolutional map is 1x1 and every class-activation map is constant.
MIN_EXPLAIN_SIZE = 64


def _too_small_to_explain(config):
    return [m["name"] for m in config["members"] if m["image_size"] < MIN_EXPLAIN_SIZE]


def _check_explainable(member_models):
    from .explain import feature_map_size

    flat = [(m.name, feature_map_size(m)) for m in member_models]
    too_coarse = [f"{name} ({h}x{w})" for name, (h, w) in flat if min(h, w) < 2]
    if too_coarse:
        raise ConfigError(f"explain: the last convolutional map of member(s) {', '.join(too_coarse)} is 1 pixel "
                          f"wide, so every class-activation map is constant; train with image_size >= "
                          f"{MIN_EXPLAIN_SIZE}, or leave the stage out (pneumoxai run --skip explain).")


class _ImagesBySize:
    """The test images decoded once per input size; :meth:`subset` shares the decoded arrays."""

    def __init__(self, paths, index=None, decoded=None):
        self.paths = paths
        self.index = index
        self._decoded = {} if decoded is None else decoded

    def at(self, size):
        from .data import load_images

        if size not in self._decoded:
            self._decoded[size] = load_images(self.paths, size)
        array = self._decoded[size]
        return array if self.index is None else array[self.index]

    def for_models(self, models):
        """``{input side: images}`` for every input side among ``models``."""
        return {int(m.input_shape[1]): self.at(int(m.input_shape[1])) for m in models}

    def subset(self, index):
        return _ImagesBySize(self.paths, index, self._decoded)


def _test_split_maps(run, member_models, images, predicted, masks):
    """Ensemble Grad-CAM of the predicted class for every test image, and its zone attention."""
    from .explain import ensemble_gradcam, zone_attention

    all_maps, _ = ensemble_gradcam(member_models, images.for_models(member_models), target=predicted.astype(bool),
                                   size=DISPLAY_SIZE)
    zones_all = zone_attention(all_maps, masks)
    zones_all.insert(0, "path", images.paths)
    _io.write_csv(run.table("zone_attention_all.csv"), zones_all, index=False)
    _io.save_npz(run.maps("gradcam_test.npz"), maps=all_maps.astype(np.float16),
                 paths=np.array(images.paths, dtype=str))
    return all_maps, zones_all


def _select_for_gallery(y, predicted, max_images, seed=0):
    """Indices of false negatives, false positives and a matched sample of correct calls.

    Errors take two thirds of the budget (split between FN and FP); correct calls are
    drawn with the same class mix as the chosen errors, so maps compare like with like.
    """
    from .outcomes import outcome_groups

    rng = np.random.default_rng(seed)
    outcome = outcome_groups(y, predicted, threshold=0.5)
    per_error = max(1, max_images // 3)
    chosen_fn = rng.permutation(np.flatnonzero(outcome == "false_negative"))[:per_error]
    chosen_fp = rng.permutation(np.flatnonzero(outcome == "false_positive"))[:per_error]
    n_correct = max(1, max_images - len(chosen_fn) - len(chosen_fp))
    n_errors = len(chosen_fn) + len(chosen_fp)
    k_pos = int(round(n_correct * (len(chosen_fn) / n_errors if n_errors else 0.5)))
    correct = outcome == "correct"
    correct_pos = rng.permutation(np.flatnonzero(correct & (y == 1)))
    correct_neg = rng.permutation(np.flatnonzero(correct & (y == 0)))
    chosen_correct = np.concatenate([correct_pos[:k_pos], correct_neg[:n_correct - k_pos]])
    return np.concatenate([chosen_fn, chosen_fp, chosen_correct]).astype(int)


_METHOD_LABELS = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "scorecam": "Score-CAM",
                  "saliency": "Saliency", "shap": "SHAP"}


def _gallery_maps(run, config, member_models, images, target, methods):
    """``{method label: ensemble maps at DISPLAY_SIZE}`` for the gallery images."""
    from .explain import ensemble_gradcam, resize_maps, saliency

    maps = {}
    for method in methods:
        if method in ("gradcam", "gradcam++", "scorecam"):
            maps[_METHOD_LABELS[method]] = ensemble_gradcam(member_models, images.for_models(member_models),
                                                            method=method, target=target, size=DISPLAY_SIZE)[0]
        elif method == "shap":
            maps["SHAP"] = _ensemble_shap(run, config["explain"], member_models, images, target)
        elif method == "saliency":
            maps["Saliency"] = np.mean([resize_maps(saliency(m, images.at(int(m.input_shape[1])), target=target),
                                                    DISPLAY_SIZE) for m in member_models], axis=0)
    return maps


def _ensemble_shap(run, explain_cfg, member_models, images, target):
    """Mean of the members' logit SHAP maps, each against a class-balanced training background."""
    from .data import load_images
    from .explain import background_sample, resize_maps, shap_maps

    table = _load_table(run)
    train_rows = table[table["role"] == "train"]
    pool = train_rows.sample(n=min(len(train_rows), 20 * explain_cfg["shap_background"]),
                             random_state=explain_cfg["seed"])
    per_member = []
    for model in member_models:
        size = int(model.input_shape[1])
        background = background_sample(load_images(pool["path"], size), pool["label"].to_numpy(),
                                       n=explain_cfg["shap_background"], seed=explain_cfg["seed"])
        maps = shap_maps(model, images.at(size), background, n_samples=explain_cfg["shap_samples"], target=target,
                         seed=explain_cfg["seed"])
        per_member.append(resize_maps(maps, DISPLAY_SIZE))
    return np.mean(per_member, axis=0).astype(np.float32)


def _write_gallery(run, paths, chosen, y, predicted, subset_maps, masks):
    from .explain import zone_attention
    from .outcomes import outcome_groups

    group = outcome_groups(y[chosen], predicted[chosen], threshold=0.5)
    chosen_paths = [paths[i] for i in chosen]
    arrays = {f"map_{i}": maps for i, maps in enumerate(subset_maps.values())}
    _io.save_npz(run.maps("explain.npz"), paths=np.array(chosen_paths, dtype=str), group=group.astype(str),
                 methods=np.array(list(subset_maps), dtype=str), **arrays)
    zone_rows = []
    for label, maps in subset_maps.items():
        shares = zone_attention(np.clip(maps, 0, None), masks[chosen])
        shares.insert(0, "method", label)
        shares.insert(0, "group", group)
        shares.insert(0, "path", chosen_paths)
        zone_rows.append(shares)
    _io.write_csv(run.table("zone_attention.csv"), pd.concat(zone_rows, ignore_index=True), index=False)


def _faithfulness_summary(run, record, member_models, images, target, zones_all, errors, masks):
    """Off-lung attention of errors vs correct calls, and deletion AUC of the best member against random maps."""
    from .explain import deletion_auc, gradcam, random_map_baseline

    best_name = record["best_member"]
    best_model = member_models[record["members"].index(best_name)]
    x = images.at(int(best_model.input_shape[1]))
    deletion = deletion_auc(best_model, x, gradcam(best_model, x, target=target), target=target)
    random_deletion = random_map_baseline(best_model, x, metric="deletion", target=target)
    off_lung = zones_all["off_lung_attention"]
    summary = pd.DataFrame([
        {"measure": "off_lung_attention (Grad-CAM, ensemble), errors", "value": off_lung[errors].mean(),
         "n": int(errors.sum())},
        {"measure": "off_lung_attention (Grad-CAM, ensemble), correct", "value": off_lung[~errors].mean(),
         "n": int((~errors).sum())},
        {"measure": f"deletion AUC, Grad-CAM of {best_name} (lower = more faithful)",
         "value": float(np.mean(deletion)), "n": len(x)},
        {"measure": f"deletion AUC, random maps, {best_name}", "value": float(np.mean(random_deletion)), "n": len(x)},
        {"measure": "lung mask area fraction (test mean)", "value": float(masks.mean()), "n": len(masks)},
    ])
    _io.write_csv(run.table("explain_summary.csv"), summary, index=False)


def _explain_figures(run, display, chosen, subset_maps, all_maps, zones_all, y, p_ens, threshold):
    from . import figures

    figures.plot_explanation_gallery(display[chosen], subset_maps, y[chosen], p_ens[chosen], threshold=threshold,
                                     n_per_group=3, path=run.figure_stem("gallery"))
    figures.plot_mean_maps(all_maps, y, p_ens, images=display, threshold=threshold, path=run.figure_stem("mean_maps"))
    figures.plot_zone_attention(zones_all.drop(columns=["path"]), y, p_ens, threshold=threshold,
                                path=run.figure_stem("zone_attention"))


# =========================================================================== slices


def slices_stage(run, config):
    """Failure slices of the primary ensemble and of each member on the test split.

    Slice columns: image characteristics (at 224 px, with lung masks), subtype,
    patient image count, member disagreement, confidence bin, k-means clusters of the
    members' penultimate-layer embeddings, and off-lung attention when the explain
    stage has produced it. Writes ``tables/failure_slices.csv``,
    ``tables/member_failure_slices.csv``, ``tables/slice_features.csv`` and figures.

    Returns
    -------
    pandas.DataFrame
        The failure slices, findings first.
    """
    from .data import load_images
    from .slices import find_failure_slices, member_failure_slices

    started = time.perf_counter()
    slices_cfg = config["slices"]
    predictions, record = _evaluation(run)
    names = record["members"]
    y = predictions["label"].to_numpy()
    P = predictions[[f"p[{name}]" for name in names]].to_numpy()
    p_ens = predictions[f"p[{record['primary']}]"].to_numpy()
    threshold = record["thresholds"][record["primary"]]
    images = load_images(predictions["path"], DISPLAY_SIZE)
    frame = _slice_frame(run, config, predictions, images, P, p_ens)
    options = dict(threshold=threshold, min_size=slices_cfg["min_size"], max_order=slices_cfg["max_order"],
                   alpha=slices_cfg["alpha"])
    found = find_failure_slices(frame, y, p_ens, **options)
    _io.write_csv(run.table("failure_slices.csv"), found.drop(columns=["conditions"], errors="ignore"), index=False)
    per_member = member_failure_slices(frame, y, P, p_ens, names, **options)
    _io.write_csv(run.table("member_failure_slices.csv"),
                  per_member.drop(columns=["conditions"], errors="ignore"), index=False)
    _slice_figures(run, found, frame, images, y, p_ens, threshold, predictions["path"])
    n_findings = int(found["finding"].sum()) if len(found) else 0
    logger.info("slices: %d slices tested-and-kept, %d significant after BH correction, %.1f s", len(found),
                n_findings, time.perf_counter() - started)
    return found


def _slice_frame(run, config, predictions, images, P, p_ens):
    """The slicing table: image features with lung masks, metadata, member disagreement, embedding clusters,
    and off-lung attention when the explain stage has run."""
    from .lungs import lung_mask
    from .slices import slice_frame

    table = _load_table(run)
    test_rows = table[table["role"] == "test"].set_index("path").loc[predictions["path"]].reset_index()
    embeddings = _embeddings(run, config, test_rows)
    frame = slice_frame(test_rows[["path", "split", "label", "label_name", "patient_id", "subtype"]],
                        images=images, masks=lung_mask(images), member_probs=P, ensemble_prob=p_ens,
                        embeddings=embeddings, zone_scores=_off_lung_scores(run, predictions["path"]),
                        n_clusters=config["slices"]["n_clusters"], seed=0)
    _io.write_csv(run.table("slice_features.csv"), frame.assign(path=predictions["path"]), index=False)
    return frame


def _embeddings(run, config, test_rows):
    """Activations of ``slices.embedding_layer`` of the model members that have it, or None."""
    from .models import load_member
    from .predict import predict_embeddings

    layer = config["slices"]["embedding_layer"]
    if layer is None:
        return None
    imported = {m["name"] for m in config["members"] if m["imported"]}
    # Members pneumoxai trained all have the head's layers; an imported model is checked.
    dirs = [d for d in _member_dirs(run, config) if _kind(d) == "model"
            and (d.name not in imported or layer in {lyr.name for lyr in load_member(d)[0].layers})]
    if not dirs:
        logger.info("slices: no member has the embedding layer %r; the 'cluster' column is left out", layer)
        return None
    return predict_embeddings(dirs, test_rows, layer=layer, cache_dir=run.cache("embeddings"))


def _off_lung_scores(run, paths):
    zones = run.read_table("zone_attention_all.csv", columns=("path", "off_lung_attention"))
    if zones is None or not set(paths) <= set(zones["path"]):
        return None
    return {"off_lung_attention": zones.set_index("path").loc[paths, "off_lung_attention"].to_numpy()}


def _slice_figures(run, found, frame, images, y, p_ens, threshold, paths):
    from . import figures

    errors = (p_ens >= threshold).astype(int) != y
    if len(found):
        figures.plot_slice_error_rates(found, top=10, overall_rate=float(errors.mean()),
                                       path=run.figure_stem("slices_top"))
        figures.plot_slice_examples(found, frame, images, maps=_load_test_maps(run, paths), y_true=y, y_prob=p_ens,
                                    threshold=threshold, top=4, n_examples=4, path=run.figure_stem("slices_examples"))
    figures.plot_feature_distributions(frame, y, p_ens, threshold=threshold, path=run.figure_stem("slices_features"))


def _load_test_maps(run, paths):
    """Grad-CAM maps of the whole test split from the explain stage, at DISPLAY_SIZE, or None."""
    from .explain import resize_maps

    path = run.maps("gradcam_test.npz")
    if not path.exists():
        return None
    data = _io.load_npz(path)
    index = {p: i for i, p in enumerate(data["paths"].astype(str))}
    if not set(paths) <= set(index):
        return None
    return resize_maps(data["maps"][[index[p] for p in paths]], DISPLAY_SIZE)


# =========================================================================== report and run


def report_stage(run):
    """Write ``report.html`` from the run folder's tables and figures."""
    from .report import write_report

    path = write_report(run.root)
    logger.info("report: %s", path)
    return path


def _stage_key(run, config, stage):
    """Hash of everything a stage's output depends on: config sections and upstream artifacts."""
    sections = {"evaluate": ("evaluate",), "explain": ("evaluate", "explain"), "slices": ("evaluate", "slices")}
    parts = {name: config[name] for name in sections[stage]}
    from .models import read_card

    cards = [read_card(run.member_dir(m["name"])) for m in config["members"]]
    parts["members"] = [card.get("model_sha256") or card["predictions_sha256"] for card in cards]
    parts["run"] = run.read_json(run.run_file, required="run `pneumoxai train` first")["manifest_hash"]
    if stage == "slices":
        zone = run.table("zone_attention_all.csv")
        parts["zones"] = _io.sha256_file(zone) if zone.exists() else None
    return config_hash(parts)


def _run_stage(run, config, stage, function, **kwargs):
    """Run ``function`` unless its recorded input key is unchanged; record the key after success."""
    key = _stage_key(run, config, stage)
    marker = _read_marker(run, stage)
    if marker is not None and marker.get("key") == key:
        logger.info("%s: inputs unchanged, skipped", stage)
        return False
    started = time.perf_counter()
    function(run, config, **kwargs)
    _write_marker(run, stage, started, key=key)
    return True


def _read_marker(run, stage):
    """A stage's record, or None when missing or damaged (the stage then simply runs again)."""
    from .errors import CacheError

    try:
        return run.read_json(run.stage_marker(stage))
    except CacheError:
        return None


def _write_marker(run, stage, started, **extra):
    _io.write_json(run.stage_marker(stage), {
        **extra, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": time.perf_counter() - started,
        "peak_rss_mb": _peak_rss_mb()})


def _peak_rss_mb():
    """This process's peak resident memory so far (Linux reports KiB, macOS bytes)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def stage_timings(run):
    """Seconds and peak memory of the stages that ran in ``run`` (``tables/timings.csv``).

    Returns
    -------
    pandas.DataFrame
        One row per stage: ``stage``, ``seconds``, ``peak_rss_mb`` (the process's peak
        resident memory when the stage finished), ``finished``.
    """
    columns = ("seconds", "peak_rss_mb", "finished")
    rows = [{"stage": stage, **{k: record.get(k) for k in columns}}
            for stage in STAGES if (record := _read_marker(run, stage)) is not None]
    return pd.DataFrame(rows, columns=["stage", *columns])


def run_all(run, config, data_root, *, skip=(), verbose="auto", strategy="default"):
    """``pneumoxai run``: train, evaluate, explain, slices and report, each resumable.

    Returns
    -------
    str
        The terminal summary (results table and top findings), also printed.
    """
    started = time.perf_counter()
    summary = train_stage(run, config, data_root, verbose=verbose, strategy=strategy)
    if (summary["status"] == "trained").any():
        _write_marker(run, "train", started)
    return analyse(run, with_imported_members(run, config), skip=skip, verbose=verbose, started=started)


def analyse(run, config, *, skip=(), verbose="auto", started=None):
    """``pneumoxai analyse``: evaluate, explain, slices and report on the members already in ``run``.

    Each stage is skipped when its inputs have not changed. Explanations are left out,
    with a line saying why, when no member is a model or the models' inputs are too
    small for class-activation maps.

    Returns
    -------
    str
        The terminal summary (results table and top findings), also printed.
    """
    from .report import summary_text

    started = time.perf_counter() if started is None else started
    _run_stage(run, config, "evaluate", evaluate_stage, verbose=verbose)
    skip = set(skip)
    if "explain" not in skip and all(_kind(d) == "predictions" for d in _member_dirs(run, config)):
        logger.info("explain: skipped: every member is an imported predictions file (maps need models)")
        skip.add("explain")
    if "explain" not in skip and _too_small_to_explain(config):
        logger.info("explain: skipped: member(s) %s take images below %d px, whose last convolutional map is "
                    "1x1 (constant maps)", ", ".join(_too_small_to_explain(config)), MIN_EXPLAIN_SIZE)
        skip.add("explain")
    for stage, function in (("explain", explain_stage), ("slices", slices_stage)):
        if stage not in skip:
            _run_stage(run, config, stage, function)
    _io.write_csv(run.table("timings.csv"), stage_timings(run), index=False)
    report_stage(run)
    logger.info("finished in %.0f s; report: %s", time.perf_counter() - started, run.report_file)
    text = summary_text(run.root)
    print(text)
    return text
