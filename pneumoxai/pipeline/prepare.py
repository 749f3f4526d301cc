"""Stage 1: scan the data (or read the user's lists), carve the patient-grouped split, record it."""

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .. import _io
from ..config import config_hash
from ..errors import DataError, RunFolderError
from ..run_folder import DATASET_TABLE, DUPLICATES_TABLE, RUN_FORMAT


def prepare(run, data_root, config):
    """Scan the data, carve the patient-grouped validation split, record it in the run folder.

    A run folder is bound to one data config: re-using it with another split (other
    seed, fraction, subset) raises before anything is written.

    Returns
    -------
    pandas.DataFrame
        ``tables/dataset.csv``: the scan table plus ``role`` (train / val / test).
    """
    table, record = dataset_from_scan(run, data_root, config)
    record_dataset(run, table, record)
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
    table, record = dataset_from_lists(run, val_list, test_list, data_root=data_root)
    record_dataset(run, table, record)
    return table


def dataset_from_scan(run, data_root, config):
    """The table and ``run.json`` record of :func:`prepare`, checked against ``run`` but not written."""
    from ..data import file_hashes, manifest_hash

    table = _assign_roles(data_root, config["data"])
    table["sha256"] = file_hashes(table)
    _refuse_conflicting_labels(table)
    record = {"format": RUN_FORMAT, "data_root": str(Path(data_root).resolve()),
              "data_config_hash": config_hash(config["data"]), "manifest_hash": manifest_hash(table)}
    _check_same_data(run, record)
    return table, record


def dataset_from_lists(run, val_list, test_list, *, data_root=None):
    """The table and ``run.json`` record of :func:`prepare_from_lists`, checked against ``run`` but not written."""
    from ..data import file_hashes, manifest_hash

    parts = [_read_list(path, role, data_root) for role, path in (("val", val_list), ("test", test_list))]
    table = pd.concat(parts, ignore_index=True)
    table["sha256"] = file_hashes(table)
    _refuse_conflicting_labels(table)
    record = {"format": RUN_FORMAT, "data_root": str(Path(data_root).resolve()) if data_root else None,
              "data_config_hash": config_hash({"val_list": table.loc[table.role == "val", "path"].tolist()}),
              "manifest_hash": manifest_hash(table)}
    _check_same_data(run, record)
    return table, record


def record_dataset(run, table, record):
    """Write ``run.json``, ``tables/dataset.csv`` and ``tables/duplicates.csv``; warn about leakage."""
    _check_same_data(run, record)  # again: the caller may have checked before taking the folder's lock
    _io.write_json(run.run_file, record)
    _io.write_csv(run.table(DATASET_TABLE), table, index=False)
    if (table["role"] == "train").any():
        _warn_shared_patients(table)
    _record_duplicates(run, table)


def _read_list(path, role, data_root):
    from ..data import CLASS_NAMES
    from ..validation import check_labels

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
    from ..data import scan_dataset, split_by_patient

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
    """Drop files that cannot be decoded (iter_images warns with their names), so every
    later array stays row-aligned."""
    from ..data import iter_images

    ok = np.concatenate([np.zeros(0, bool), *(mask for _, mask in iter_images(frame["path"], 8, channels=1))])
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
    from ..data import find_duplicates

    duplicates = find_duplicates(table, by="role")
    _io.write_csv(run.table(DUPLICATES_TABLE), duplicates, index=False)
    if len(duplicates):
        roles = duplicates.groupby("sha256")["role"].agg(lambda r: "/".join(sorted(set(r))))
        warnings.warn(
            f"{roles.size} image(s) are byte-identical copies across {', '.join(sorted(set(roles)))} "
            f"(e.g. {Path(duplicates['path'].iloc[0]).name}): leakage between training and evaluation data; "
            "see tables/duplicates.csv.", UserWarning, stacklevel=3)
