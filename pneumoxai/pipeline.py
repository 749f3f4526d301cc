"""Run-folder stages: prepare, train, evaluate, explain, slices, report.

Everything a run produces lives in one folder, so any stage can be re-run alone::

    RUN_DIR/
      run.json                  data root, data config and manifest hashes, versions
      config.json               the resolved config of the last invocation
      tables/dataset.csv        every image with its role (train / val / test)
      members/<name>/           model.keras, card.json, train_paths.json
      cache/predictions/        member probabilities keyed by model hash + data hash
      tables/*.csv, *.md        results, diversity, failure slices, zone attention
      figures/*.png, *.pdf
      maps/*.npz                explanation maps
      report.html

Each stage skips work whose inputs have not changed (member config hash, model file
hash, data manifest hash), and writes every artifact atomically.
"""

import contextlib
import os
import socket
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from . import _io
from .config import config_hash
from .errors import ConfigError, DataError, RunFolderError

__all__ = [
    "RunFolder",
    "prepare",
    "train_members",
    "train_stage",
    "member_predictions",
    "evaluate_stage",
    "explain_stage",
    "slices_stage",
    "report_stage",
    "run_all",
    "stage_timings",
]

RUN_FORMAT = 1


class RunFolder:
    """Paths and guarded access to one run folder.

    Parameters
    ----------
    root : path
        The run folder; created when missing.
    """

    def __init__(self, root):
        self.root = Path(root)

    def path(self, *parts):
        """A path inside the run folder; refuses names that would escape it."""
        target = self.root.joinpath(*parts).resolve()
        root = self.root.resolve()
        if target != root and root not in target.parents:
            raise RunFolderError(f"Path {'/'.join(map(str, parts))!r} would leave the run folder {str(self.root)!r}.")
        return target

    def member_dir(self, name):
        return self.path("members", name)

    def table(self, name):
        return self.path("tables", name)

    def figure_stem(self, name):
        return self.path("figures", name)

    def check_writable(self):
        """Fail before any work when the folder cannot be created or written."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-test-{os.getpid()}"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            raise RunFolderError(f"Run folder {str(self.root)!r} is not writable: {exc.strerror or exc}.") from exc

    @contextlib.contextmanager
    def lock(self):
        """Hold ``.lock`` for the duration; a second process gets a clear error."""
        self.check_writable()
        lock_path = self.root / ".lock"
        try:
            fd = os.open(lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            owner = lock_path.read_text(errors="replace").strip() or "unknown"
            pid_text, _, host = owner.partition("@")
            pid = int(pid_text) if pid_text.isdigit() and host in ("", socket.gethostname()) else None
            if pid is not None and not _pid_alive(pid):
                # The holder died (e.g. kill -9): take the lock over rather than block forever.
                lock_path.unlink(missing_ok=True)
                fd = os.open(lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            else:
                raise RunFolderError(
                    f"Run folder {str(self.root)!r} is in use by process {owner} ({lock_path} exists). "
                    "Wait for it to finish, or delete the lock file if that process is gone."
                ) from None
        try:
            # The host name matters when jobs on several machines share one run folder.
            os.write(fd, f"{os.getpid()}@{socket.gethostname()}".encode())
            os.close(fd)
            yield self
        finally:
            lock_path.unlink(missing_ok=True)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _log(message):
    print(f"[pneumoxai] {message}", file=sys.stderr, flush=True)


def prepare(run, data_root, config):
    """Scan the data, carve the patient-grouped validation split, record it in the run folder.

    A run folder is bound to one data config: re-using it with another split (other
    seed, fraction, subset) raises instead of mixing results.

    Returns
    -------
    pandas.DataFrame
        ``tables/dataset.csv``: the scan table plus ``role`` (train / val / test).
    """
    from .data import file_hashes, find_duplicates, manifest_hash, scan_dataset, split_by_patient

    data_cfg = config["data"]
    frame = scan_dataset(data_root)
    train_pool = frame[frame["split"] == "train"]
    test = frame[frame["split"] == data_cfg["test_split"]]
    if test.empty:
        raise DataError(f"{str(data_root)!r} has no '{data_cfg['test_split']}' split to evaluate on.")
    if data_cfg["max_per_class"]:
        train_pool = _subset(train_pool, data_cfg["max_per_class"], data_cfg["subset_seed"])
        test = _subset(test, data_cfg["max_per_class"], data_cfg["subset_seed"])
    train_pool, test = _readable(train_pool), _readable(test)
    train, val = split_by_patient(train_pool, data_cfg["val_fraction"], seed=data_cfg["split_seed"])
    table = pd.concat([train.assign(role="train"), val.assign(role="val"), test.assign(role="test")],
                      ignore_index=True)
    for role, rows in table.groupby("role"):
        counts = np.bincount(rows["label"], minlength=2)
        if (counts == 0).any():
            raise DataError(f"The {role} data holds {counts[0]} NORMAL and {counts[1]} PNEUMONIA images; "
                            "training, validation and testing each need both classes.")
    table["sha256"] = file_hashes(table)
    record = {
        "format": RUN_FORMAT,
        "data_root": str(Path(data_root).resolve()),
        "data_config_hash": config_hash(data_cfg),
        "manifest_hash": manifest_hash(table),
    }
    run_json = run.path("run.json")
    if run_json.exists():
        previous = _io.read_json(run_json)
        if previous.get("format") != RUN_FORMAT:
            raise RunFolderError(f"{str(run.root)!r} was written by another pneumoxai run format; use a new --out.")
        for key, what in (("data_config_hash", "data config"), ("manifest_hash", "dataset contents")):
            if previous.get(key) != record[key]:
                raise RunFolderError(
                    f"Run folder {str(run.root)!r} was made with a different {what}; its members and results "
                    "would be mixed with this run's. Use a new --out folder (or delete this one)."
                )
    _io.write_json(run_json, record)
    _io.write_csv(run.table("dataset.csv"), table, index=False)
    _report_leakage(table)
    duplicates = find_duplicates(table, by="role")
    _io.write_csv(run.table("duplicates.csv"), duplicates, index=False)
    if len(duplicates):
        roles = duplicates.groupby("sha256")["role"].agg(lambda r: "/".join(sorted(set(r))))
        warnings.warn(
            f"{roles.size} image(s) are byte-identical copies across {', '.join(sorted(set(roles)))} "
            f"(e.g. {Path(duplicates['path'].iloc[0]).name}): leakage between training and evaluation data; "
            "see tables/duplicates.csv.", UserWarning, stacklevel=2)
    return table


def _readable(frame):
    """Drop files that cannot be decoded (load_images warns with their names), so every
    later array stays row-aligned."""
    from .data import load_images

    _, ok = load_images(frame["path"], 8, channels=1, return_mask=True)
    return frame[ok]


def _subset(frame, per_class, seed):
    parts = [group.sample(n=min(per_class, len(group)), random_state=seed) for _, group in frame.groupby("label")]
    return pd.concat(parts).sort_index()


def _report_leakage(table):
    """Warn when one patient id sits in both the training data and the test split."""
    train_ids = set(table.loc[table["role"] != "test", "patient_id"])
    shared = sorted(train_ids & set(table.loc[table["role"] == "test", "patient_id"]))
    if shared:
        warnings.warn(
            f"{len(shared)} patient id(s) appear in both the training data and the test split "
            f"(e.g. {', '.join(shared[:5])}); the official split is not patient-disjoint, so test scores "
            "may be optimistic.", UserWarning, stacklevel=3)


def _load_table(run):
    path = run.table("dataset.csv")
    if not path.exists():
        raise RunFolderError(f"{str(run.root)!r} has no tables/dataset.csv; run `pneumoxai train` or `run` first.")
    return pd.read_csv(path)


class _ImageCache:
    """Decoded images per (role, size), loaded once per process."""

    def __init__(self, table):
        self.table = table
        self._arrays = {}

    def get(self, role, size):
        from .data import load_images

        key = (role, size)
        if key not in self._arrays:
            rows = self.table[self.table["role"] == role]
            images, ok = load_images(rows["path"], size, return_mask=True)
            self._arrays[key] = (images, rows[ok].reset_index(drop=True))
        return self._arrays[key]


def _member_data(config, images, frame):
    """Apply a member's diversity options (subset, bootstrap) to its training rows."""
    rng = np.random.default_rng(config["seed"])
    index = np.arange(len(frame))
    if config["max_train_images"] and config["max_train_images"] < len(index):
        index = np.sort(rng.choice(index, size=config["max_train_images"], replace=False))
    if config["bootstrap"]:
        index = rng.choice(index, size=len(index), replace=True)
    return images[index], frame["label"].to_numpy()[index], frame["path"].to_numpy()[index]


def train_members(run, config, names=None, *, table=None, verbose="auto", strategy="default"):
    """Train every member of ``config`` (or those in ``names``) into ``members/<name>/``.

    A member whose card records the same member config and data manifest is skipped;
    one whose config changed is retrained. Each member is trained under its own lock
    (``members/<name>/.lock``), so several processes (one member each, e.g. a Slurm
    array) can train into one run folder. ``strategy`` names a
    :func:`pneumoxai.models.get_strategy` strategy; under ``multiworker`` only the chief
    writes the member.

    Returns
    -------
    pandas.DataFrame
        One row per member: name, status (trained / skipped), val AUC, seconds per epoch.
    """
    from . import models

    table = _load_table(run) if table is None else table
    run_record = _io.read_json(run.path("run.json"))
    members = config["members"]
    if names:
        unknown = sorted(set(names) - {m["name"] for m in members})
        if unknown:
            raise ConfigError(f"Unknown member name(s) {unknown}; the config has {[m['name'] for m in members]}.")
        members = [m for m in members if m["name"] in names]
    cache = _ImageCache(table)
    distribution = models.get_strategy(strategy)
    chief = models.is_chief(distribution)
    rows = []
    for member in members:
        member_dir = run.member_dir(member["name"])
        # The lock is taken before the up-to-date check, so two jobs given the same member
        # cannot both train it.
        with RunFolder(member_dir).lock() if chief else contextlib.nullcontext():
            wanted = config_hash(member)
            skipped = _up_to_date(member, member_dir, wanted, run_record["manifest_hash"])
            rows.append(skipped or _train_one(run, member, wanted, run_record, cache, distribution, chief, verbose))
    return pd.DataFrame(rows)


def _up_to_date(member, member_dir, wanted, manifest):
    """The summary row of a member already trained with this config and data, else None."""
    from . import models

    if not models.is_member_dir(member_dir):
        return None
    card = _io.read_json(member_dir / models.CARD_FILE)
    if card.get("config_hash") != wanted or card.get("manifest_hash") != manifest:
        _log(f"member {member['name']}: config changed since it was trained; retraining.")
        return None
    _log(f"member {member['name']}: up to date, skipped")
    return {"member": member["name"], "status": "skipped (up to date)",
            "val_auc": card.get("val_metrics", {}).get("roc_auc"), "seconds_per_epoch": card.get("seconds_per_epoch")}


def _train_one(run, member, wanted, run_record, cache, distribution, chief, verbose):
    from . import data as data_mod
    from . import models

    member_dir = run.member_dir(member["name"])
    _log(f"member {member['name']}: training ({member['backbone']}, {member['image_size']} px, "
         f"weights={member['weights']}, balancing={member['balancing']}, seed={member['seed']}, "
         f"{distribution.num_replicas_in_sync} replica(s))")
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
                                   class_weight=class_weight, verbose=verbose)
    val_prob = models.predict_proba(model, val_images)
    val_metrics = _quick_metrics(val_frame["label"].to_numpy(), val_prob)
    row = {"member": member["name"], "status": "trained", "val_auc": val_metrics["roc_auc"],
           "seconds_per_epoch": info["seconds_per_epoch"]}
    if not chief:
        return row
    _io.write_json(member_dir / "train_paths.json", sorted(set(map(str, paths))))
    models.save_member(member_dir, model, {
        "name": member["name"],
        "config": member,
        "config_hash": wanted,
        "manifest_hash": run_record["manifest_hash"],
        "seed": member["seed"],
        "n_train": int(len(x)),
        "n_train_unique": int(len(set(paths))),
        "n_val": int(len(val_frame)),
        "history": info["history"],
        "epochs_run": info["epochs_run"],
        "seconds_per_epoch": info["seconds_per_epoch"],
        "train_seconds": time.perf_counter() - started,
        "val_metrics": val_metrics,
        "reproducibility": "same seed and config reproduce predictions on CPU to within 1e-5 "
                           "(multi-threaded float reductions are not bit-exact)",
    })
    (member_dir / "checkpoint.keras").unlink(missing_ok=True)
    _log(f"member {member['name']}: val AUC {val_metrics['roc_auc']:.4f}, "
         f"{info['seconds_per_epoch']:.1f} s/epoch, {info['epochs_run']} epochs")
    return row


def _quick_metrics(y_true, y_prob):
    from sklearn.metrics import accuracy_score, roc_auc_score

    return {"roc_auc": float(roc_auc_score(y_true, y_prob)),
            "accuracy": float(accuracy_score(y_true, y_prob >= 0.5))}


def train_stage(run, config, data_root, *, names=None, verbose="auto", strategy="default"):
    """Record the config, prepare the split (first time) and train the members."""
    _io.write_json(run.path("config.json"), _raw_config(config))
    table = prepare(run, data_root, config)
    return train_members(run, config, names, table=table, verbose=verbose, strategy=strategy)


def _raw_config(config):
    """The resolved config in the shape parse_config accepts (members fully spelled out)."""
    return {key: value for key, value in config.items()}


PRIMARY = "soft voting"


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
    from .ensemble import predict_members

    table = _load_table(run) if table is None else table
    rows = table[table["role"] == role].reset_index(drop=True)
    P = predict_members(_member_dirs(run, config), rows, batch_size=config["evaluate"]["batch_size"],
                        tta=config["evaluate"]["tta"], cache_dir=run.path("cache", "predictions"), progress=progress)
    return pd.DataFrame(P, columns=[m["name"] for m in config["members"]]), rows


def _trained_on(run, config, rows):
    """(n_rows, n_members) bool: was the row in that member's training data."""
    columns = []
    for member in config["members"]:
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
    from . import _figures_eval as fig
    from .ensemble import HardVoting, SoftVoting, Stacking, diversity, ensemble_size_curve
    from .metrics import TemperatureScaling, compare, results_table, table_to_markdown

    started = time.perf_counter()
    evaluate_cfg = config["evaluate"]
    table = _load_table(run)
    progress = verbose != 0
    P_val, val_rows = member_predictions(run, config, "val", table=table, progress=progress)
    P_test, test_rows = member_predictions(run, config, "test", table=table, progress=progress)
    y_val, y_test = val_rows["label"].to_numpy(), test_rows["label"].to_numpy()
    names = list(P_val.columns)

    combiners = {PRIMARY: SoftVoting(), "soft voting (optimized)": SoftVoting(weights="optimize"),
                 "hard voting": HardVoting()}
    smaller_class = int(min(y_val.sum(), len(y_val) - y_val.sum()))
    if len(names) > 1 and smaller_class >= evaluate_cfg["stacking_cv"]:
        combiners["stacking"] = Stacking(cv=evaluate_cfg["stacking_cv"], features="logit")
    elif len(names) > 1:
        warnings.warn(f"Stacking left out: its {evaluate_cfg['stacking_cv']} cross-validation folds need as many "
                      f"validation images of each class, and the smaller class has {smaller_class} "
                      "(lower evaluate.stacking_cv or enlarge the validation split).", UserWarning, stacklevel=2)
    val_probs = {name: P_val[name].to_numpy() for name in names}
    test_probs = {name: P_test[name].to_numpy() for name in names}
    fitted = {}
    for label, combiner in combiners.items():
        if isinstance(combiner, Stacking):
            combiner.fit(P_val, y_val, trained_on=_trained_on(run, config, val_rows), groups=val_rows["patient_id"])
            val_probs[label] = combiner.oof_proba_  # honest val scores for threshold choice
        else:
            combiner.fit(P_val, y_val)
            val_probs[label] = combiner.predict_proba(P_val)
        test_probs[label] = combiner.predict_proba(P_test)
        fitted[label] = combiner
    thresholds = {name: _threshold(y_val, val_probs[name], evaluate_cfg) for name in test_probs}
    results = results_table(y_test, test_probs, threshold=thresholds, n_boot=evaluate_cfg["n_boot"],
                            ci=evaluate_cfg["ci"], seed=0, groups=test_rows["patient_id"].to_numpy())
    # The origin reported metrics at a 0.5 threshold; give the primary ensemble at 0.5 too, for a like-for-like row.
    at_half = results_table(y_test, {f"{PRIMARY} @0.5": test_probs[PRIMARY]}, threshold=0.5,
                            n_boot=evaluate_cfg["n_boot"], ci=evaluate_cfg["ci"], seed=0,
                            groups=test_rows["patient_id"].to_numpy(), reference=False)
    results = pd.concat([results.iloc[:-1], at_half, results.iloc[-1:]])
    _io.write_csv(run.table("results.csv"), results)
    _io.write_text(run.table("results.md"), table_to_markdown(results) + "\n")

    best_member = max(names, key=lambda n: results.loc[n, "roc_auc"])
    pairs = [(best_member, PRIMARY)] + ([(PRIMARY, "stacking")] if "stacking" in test_probs else [])
    comparisons = pd.DataFrame([
        {"model_a": a, "model_b": b, **{k: v for k, v in compare(y_test, test_probs[a], test_probs[b],
                                                               threshold=(thresholds[a], thresholds[b])).items()
                                        if np.isscalar(v)}}
        for a, b in pairs])
    _io.write_csv(run.table("comparisons.csv"), comparisons, index=False)

    frames = {"val": (val_rows, val_probs), "test": (test_rows, test_probs)}
    for role, (rows, probs) in frames.items():
        out = rows[["path", "label", "patient_id", "subtype"]].copy()
        for name, values in probs.items():
            out[f"p[{name}]"] = values
        _io.write_csv(run.table(f"predictions_{role}.csv"), out, index=False)

    if len(names) > 1:
        _io.write_csv(run.table("diversity.csv"), diversity(P_test, y_test, threshold=0.5), index=False)
        size_curve = ensemble_size_curve(P_val, y_val, combiner="soft", metric="roc_auc")
        _io.write_csv(run.table("ensemble_size.csv"), size_curve, index=False)
    calibrator = TemperatureScaling().fit(val_probs[PRIMARY], y_val)
    _io.write_json(run.table("ensemble.json"), {
        "primary": PRIMARY,
        "members": names,
        "thresholds": thresholds,
        "optimized_weights": dict(zip(names, map(float, fitted["soft voting (optimized)"].weights_))),
        "temperature": float(calibrator.temperature_),
        "best_member": best_member,
    })

    stem = run.figure_stem
    models_only = {k: v for k, v in test_probs.items()}
    fig.plot_roc(y_test, models_only, path=stem("roc"))
    fig.plot_pr(y_test, models_only, path=stem("pr"))
    fig.plot_confusion_matrices(y_test, {k: test_probs[k] for k in [best_member, *combiners]},
                                threshold=0.5, path=stem("confusion"))
    fig.plot_reliability(y_test, {PRIMARY: test_probs[PRIMARY],
                                  f"{PRIMARY} (temperature-scaled)": calibrator.predict_proba(test_probs[PRIMARY]),
                                  best_member: test_probs[best_member]}, path=stem("reliability"))
    fig.plot_threshold_analysis(y_test, test_probs[PRIMARY], threshold=thresholds[PRIMARY],
                                path=stem("threshold"))
    if len(names) > 1:
        fig.plot_diversity(pd.read_csv(run.table("diversity.csv")), path=stem("diversity"))
        fig.plot_ensemble_size(size_curve, ylabel="val ROC AUC", path=stem("ensemble_size"))
    _close_figures()
    _log(f"evaluate: {time.perf_counter() - started:.1f} s")
    return results


def _close_figures():
    import matplotlib.pyplot as plt

    plt.close("all")


def _evaluation(run):
    """Test-split predictions and the ensemble record written by :func:`evaluate_stage`."""
    path = run.table("predictions_test.csv")
    if not path.exists():
        raise RunFolderError(f"{str(run.root)!r} has no evaluation yet; run `pneumoxai evaluate --run {run.root}`.")
    return pd.read_csv(path), _io.read_json(run.table("ensemble.json"))


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
    from . import _figures_slices as fig
    from ._lungs import lung_mask
    from ._predict import predict_embeddings
    from .data import load_images
    from .slices import find_failure_slices, member_failure_slices, slice_frame

    started = time.perf_counter()
    slices_cfg = config["slices"]
    predictions, record = _evaluation(run)
    names = record["members"]
    y = predictions["label"].to_numpy()
    P = predictions[[f"p[{name}]" for name in names]].to_numpy()
    p_ens = predictions[f"p[{record['primary']}]"].to_numpy()
    threshold = record["thresholds"][record["primary"]]
    images = load_images(predictions["path"], 224)
    masks = lung_mask(images)
    table = _load_table(run)
    test_rows = table[table["role"] == "test"].set_index("path").loc[predictions["path"]].reset_index()
    embeddings = predict_embeddings(_member_dirs(run, config), test_rows, cache_dir=run.path("cache", "embeddings"))
    zone_scores = None
    zone_path = run.table("zone_attention_all.csv")
    if zone_path.exists():
        zones = pd.read_csv(zone_path).set_index("path")
        if set(predictions["path"]) <= set(zones.index):
            zone_scores = {"off_lung_attention": zones.loc[predictions["path"], "off_lung_attention"].to_numpy()}
    frame = slice_frame(test_rows[["path", "split", "label", "label_name", "patient_id", "subtype"]],
                        images=images, masks=masks, member_probs=P, ensemble_prob=p_ens, embeddings=embeddings,
                        zone_scores=zone_scores, n_clusters=slices_cfg["n_clusters"], seed=0)
    _io.write_csv(run.table("slice_features.csv"), frame.assign(path=predictions["path"]), index=False)
    options = dict(threshold=threshold, min_size=slices_cfg["min_size"], max_order=slices_cfg["max_order"],
                   alpha=slices_cfg["alpha"])
    found = find_failure_slices(frame, y, p_ens, **options)
    _io.write_csv(run.table("failure_slices.csv"), found.drop(columns=["conditions"], errors="ignore"), index=False)
    per_member = member_failure_slices(frame, y, P, p_ens, names, **options)
    _io.write_csv(run.table("member_failure_slices.csv"),
                  per_member.drop(columns=["conditions"], errors="ignore"), index=False)
    errors = (p_ens >= threshold).astype(int) != y
    if len(found):
        fig.plot_slice_error_rates(found, top=10, overall_rate=float(errors.mean()), path=run.figure_stem("slices_top"))
        maps = _load_all_test_maps(run, predictions["path"])
        fig.plot_slice_examples(found, frame, images, maps=maps, y_true=y, y_prob=p_ens, threshold=threshold,
                                top=4, n_examples=4, path=run.figure_stem("slices_examples"))
    fig.plot_feature_distributions(frame, y, p_ens, threshold=threshold, path=run.figure_stem("slices_features"))
    _close_figures()
    _log(f"slices: {len(found)} slices tested-and-kept, {int(found['finding'].sum()) if len(found) else 0} "
         f"significant after BH correction, {time.perf_counter() - started:.1f} s")
    return found


def _load_all_test_maps(run, paths):
    """Grad-CAM maps of the whole test split from the explain stage, at 224 px, or None."""
    import cv2

    path = run.path("maps", "gradcam_test.npz")
    if not path.exists():
        return None
    data = _io.load_npz(path)
    index = {p: i for i, p in enumerate(data["paths"].astype(str))}
    if not set(paths) <= set(index):
        return None
    maps = data["maps"][[index[p] for p in paths]]
    return np.stack([cv2.resize(m, (224, 224), interpolation=cv2.INTER_LINEAR) for m in maps])


def _stage_key(run, config, stage):
    """Hash of everything a stage's output depends on: config sections and upstream artifacts."""
    sections = {"evaluate": ("evaluate",), "explain": ("evaluate", "explain"), "slices": ("evaluate", "slices")}
    parts = {name: config[name] for name in sections[stage]}
    parts["members"] = [_io.read_json(run.member_dir(m["name"]) / "card.json")["model_sha256"]
                        for m in config["members"]]
    parts["run"] = _io.read_json(run.path("run.json"))["manifest_hash"]
    if stage == "slices":
        zone = run.table("zone_attention_all.csv")
        parts["zones"] = _io.sha256_file(zone) if zone.exists() else None
    return config_hash(parts)


def _run_stage(run, config, stage, function, **kwargs):
    """Run ``function`` unless its recorded input key is unchanged; record the key after success."""
    marker = run.path("cache", "stages", f"{stage}.json")
    key = _stage_key(run, config, stage)
    if marker.exists() and _io.read_json(marker).get("key") == key:
        _log(f"{stage}: inputs unchanged, skipped")
        return False
    started = time.perf_counter()
    function(run, config, **kwargs)
    _io.write_json(marker, {"key": key, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                            "seconds": time.perf_counter() - started, "peak_rss_mb": _peak_rss_mb()})
    return True


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
    rows = []
    for stage in ("train", "evaluate", "explain", "slices"):
        marker = run.path("cache", "stages", f"{stage}.json")
        if marker.exists():
            record = _io.read_json(marker)
            rows.append({"stage": stage, **{k: record.get(k) for k in ("seconds", "peak_rss_mb", "finished")}})
    return pd.DataFrame(rows, columns=["stage", "seconds", "peak_rss_mb", "finished"])


def run_all(run, config, data_root, *, skip=(), verbose="auto", strategy="default"):
    """``pneumoxai run``: train, evaluate, explain, slices and report, each resumable.

    Returns
    -------
    str
        The terminal summary (results table and top findings), also printed.
    """
    from .report import summary_text

    started = time.perf_counter()
    summary = train_stage(run, config, data_root, verbose=verbose, strategy=strategy)
    if (summary["status"] == "trained").any():
        _io.write_json(run.path("cache", "stages", "train.json"), {
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": time.perf_counter() - started,
            "peak_rss_mb": _peak_rss_mb()})
    _run_stage(run, config, "evaluate", evaluate_stage, verbose=verbose)
    if "explain" not in skip:
        _run_stage(run, config, "explain", explain_stage)
    if "slices" not in skip:
        _run_stage(run, config, "slices", slices_stage)
    _io.write_csv(run.table("timings.csv"), stage_timings(run), index=False)
    report_stage(run)
    _log(f"run finished in {time.perf_counter() - started:.0f} s; report: {run.path('report.html')}")
    summary = summary_text(run.root)
    print(summary)
    return summary


def report_stage(run):
    """Write ``report.html`` from the run folder's tables and figures."""
    from .report import write_report

    path = write_report(run.root)
    _log(f"report: {path}")
    return path


_DISPLAY_SIZE = 224


def _resize_maps(maps, size):
    import cv2

    if maps.shape[1] == size:
        return maps.astype(np.float32)
    return np.stack([cv2.resize(m, (size, size), interpolation=cv2.INTER_LINEAR) for m in maps]).astype(np.float32)


def _ensemble_maps(member_models, images_by_size, method, target, weights):
    """Weighted mean and spread of member maps at display size (members may differ in input size)."""
    from .explain import ensemble_gradcam, gradcam

    sizes = {int(m.input_shape[1]) for m in member_models}
    if len(sizes) == 1:
        size = sizes.pop()
        combined, spread = ensemble_gradcam(member_models, images_by_size(size), weights=weights, method=method,
                                            target=target)
        return _resize_maps(combined, _DISPLAY_SIZE), _resize_maps(spread, _DISPLAY_SIZE)
    maps = np.stack([_resize_maps(gradcam(m, images_by_size(int(m.input_shape[1])), method=method, target=target),
                                  _DISPLAY_SIZE) for m in member_models])
    w = np.asarray(weights, float) / np.sum(weights)
    combined = np.tensordot(w, maps, axes=1)
    return combined.astype(np.float32), np.sqrt(np.tensordot(w, (maps - combined) ** 2, axes=1)).astype(np.float32)


def _select_for_gallery(y, predicted, max_images, seed=0):
    """Indices of false negatives, false positives and a matched sample of correct calls.

    Errors take two thirds of the budget (split between FN and FP); correct calls are
    drawn with the same class mix as the chosen errors, so maps compare like with like.
    """
    rng = np.random.default_rng(seed)
    fn = np.flatnonzero((y == 1) & (predicted == 0))
    fp = np.flatnonzero((y == 0) & (predicted == 1))
    per_error = max(1, max_images // 3)
    chosen_fn = rng.permutation(fn)[:per_error]
    chosen_fp = rng.permutation(fp)[:per_error]
    n_correct = max(1, max_images - len(chosen_fn) - len(chosen_fp))
    correct_pos = rng.permutation(np.flatnonzero((y == 1) & (predicted == 1)))
    correct_neg = rng.permutation(np.flatnonzero((y == 0) & (predicted == 0)))
    share_pos = len(chosen_fn) / max(1, len(chosen_fn) + len(chosen_fp)) if len(chosen_fn) + len(chosen_fp) else 0.5
    k_pos = int(round(n_correct * share_pos))
    chosen_correct = np.concatenate([correct_pos[:k_pos], correct_neg[:n_correct - k_pos]])
    return np.concatenate([chosen_fn, chosen_fp, chosen_correct]).astype(int)


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
    from . import _figures_explain as fig
    from ._lungs import lung_mask
    from .data import load_images
    from .explain import (background_sample, deletion_auc, random_map_baseline, shap_maps, zone_attention,
                          gradcam)
    from .models import load_member

    started = time.perf_counter()
    explain_cfg = config["explain"]
    methods = methods or explain_cfg["methods"]
    max_images = max_images or explain_cfg["max_images"]
    predictions, record = _evaluation(run)
    y = predictions["label"].to_numpy()
    p_ens = predictions[f"p[{record['primary']}]"].to_numpy()
    threshold = record["thresholds"][record["primary"]]
    predicted = (p_ens >= threshold).astype(int)
    member_models = [load_member(d)[0] for d in _member_dirs(run, config)]
    weights = np.ones(len(member_models))
    paths = predictions["path"].tolist()
    cache = {}

    def images_by_size(size, index=None):
        if size not in cache:
            cache[size] = load_images(paths, size)
        return cache[size] if index is None else cache[size][index]

    display = images_by_size(_DISPLAY_SIZE)
    masks = lung_mask(display)
    all_maps, _ = _ensemble_maps(member_models, images_by_size, "gradcam", predicted.astype(bool), weights)
    zones_all = zone_attention(all_maps, masks)
    zones_all.insert(0, "path", paths)
    _io.write_csv(run.table("zone_attention_all.csv"), zones_all, index=False)
    _io.save_npz(run.path("maps", "gradcam_test.npz"), maps=all_maps.astype(np.float16),
                 paths=np.array(paths, dtype=str))

    chosen = _select_for_gallery(y, predicted, max_images, seed=explain_cfg["seed"])
    group = np.where(y[chosen] == predicted[chosen], "correct", np.where(y[chosen] == 1, "false_negative",
                                                                          "false_positive"))
    target = predicted[chosen].astype(bool)
    subset_maps = {}
    labels_of = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "scorecam": "Score-CAM",
                 "saliency": "Saliency", "shap": "SHAP"}
    for method in methods:
        if method in ("gradcam", "gradcam++", "scorecam"):
            subset_maps[labels_of[method]] = _ensemble_maps(
                member_models, lambda s: images_by_size(s, chosen), method, target, weights)[0]
        elif method == "shap":
            table = _load_table(run)
            train_rows = table[table["role"] == "train"]
            per_member = []
            for model in member_models:
                size = int(model.input_shape[1])
                pool = train_rows.sample(n=min(len(train_rows), 20 * explain_cfg["shap_background"]),
                                         random_state=explain_cfg["seed"])
                background = background_sample(load_images(pool["path"], size), pool["label"].to_numpy(),
                                               n=explain_cfg["shap_background"], seed=explain_cfg["seed"])
                per_member.append(_resize_maps(shap_maps(model, images_by_size(size, chosen), background,
                                                         n_samples=explain_cfg["shap_samples"], target=target,
                                                         seed=explain_cfg["seed"]), _DISPLAY_SIZE))
            subset_maps["SHAP"] = np.mean(per_member, axis=0).astype(np.float32)
        elif method == "saliency":
            from .explain import saliency

            subset_maps["Saliency"] = np.mean([_resize_maps(saliency(m, images_by_size(int(m.input_shape[1]), chosen),
                                                                     target=target), _DISPLAY_SIZE)
                                               for m in member_models], axis=0)
    arrays = {f"map_{i}": maps for i, maps in enumerate(subset_maps.values())}
    _io.save_npz(run.path("maps", "explain.npz"), paths=np.array([paths[i] for i in chosen], dtype=str),
                 group=group.astype(str), methods=np.array(list(subset_maps), dtype=str), **arrays)
    zone_rows = []
    for label, maps in subset_maps.items():
        shares = zone_attention(np.clip(maps, 0, None), masks[chosen])
        shares.insert(0, "method", label)
        shares.insert(0, "group", group)
        shares.insert(0, "path", [paths[i] for i in chosen])
        zone_rows.append(shares)
    _io.write_csv(run.table("zone_attention.csv"), pd.concat(zone_rows, ignore_index=True), index=False)

    best = record["members"].index(record["best_member"])
    best_model = member_models[best]
    size = int(best_model.input_shape[1])
    x = images_by_size(size, chosen)
    best_maps = gradcam(best_model, x, target=target)
    deletion = deletion_auc(best_model, x, best_maps, target=target)
    random_deletion = random_map_baseline(best_model, x, metric="deletion", target=target)
    errors = predicted != y
    summary = pd.DataFrame([
        {"measure": "off_lung_attention (Grad-CAM, ensemble), errors", "value": zones_all.loc[errors, "off_lung_attention"].mean(), "n": int(errors.sum())},
        {"measure": "off_lung_attention (Grad-CAM, ensemble), correct", "value": zones_all.loc[~errors, "off_lung_attention"].mean(), "n": int((~errors).sum())},
        {"measure": f"deletion AUC, Grad-CAM of {record['best_member']} (lower = more faithful)", "value": float(np.mean(deletion)), "n": len(chosen)},
        {"measure": f"deletion AUC, random maps, {record['best_member']}", "value": float(np.mean(random_deletion)), "n": len(chosen)},
        {"measure": "lung mask area fraction (test mean)", "value": float(masks.mean()), "n": len(masks)},
    ])
    _io.write_csv(run.table("explain_summary.csv"), summary, index=False)

    fig.plot_explanation_gallery(display[chosen], subset_maps, y[chosen], p_ens[chosen], threshold=threshold,
                                 n_per_group=3, path=run.figure_stem("gallery"))
    fig.plot_mean_maps(all_maps, y, p_ens, images=display, threshold=threshold, path=run.figure_stem("mean_maps"))
    fig.plot_zone_attention(zones_all.drop(columns=["path"]), y, p_ens, threshold=threshold,
                            path=run.figure_stem("zone_attention"))
    _close_figures()
    _log(f"explain: {len(chosen)} images x {len(subset_maps)} methods, all {len(paths)} test images with "
         f"Grad-CAM, {time.perf_counter() - started:.1f} s")
