"""train_member: the training phases, progressive sizes, snapshots and resume, feature caching."""

import functools
import math
import shutil
import time
from pathlib import Path

import keras
import numpy as np

from ..config import MEMBER_SPEC, check_training_modes, snapshot_name
from ..errors import ConfigError, DataError
from ..run_folder import SNAPSHOT_STATE
from .architecture import _flexible_twin, _freeze_backbone, _head_model, _set_trainable
from .callbacks import (CyclicSchedule, _AtomicCheckpoint, _NonFiniteLoss, _ResumeState, _SnapshotSaver,
                        recalibrate_batchnorm)
from .precision import _model_precision
from .predict import _check_images

SCHEDULES = ("plateau", "cosine", "onecycle")


def _size_segments(sizes, epochs):
    """Split ``epochs`` over ``sizes`` in order, the remainder going to the last: [(size, start, end)]."""
    base, extra = divmod(epochs, len(sizes))
    segments, start = [], 0
    for position, size in enumerate(sizes):
        end = start + base + (extra if position == len(sizes) - 1 else 0)
        if end > start:
            segments.append((size, start, end))
        start = end
    return segments


def _check_training_modes(config, snapshot_dir):
    check_training_modes(config)
    if config["snapshots"] > 1 and snapshot_dir is None:
        raise ConfigError(f"snapshots={config['snapshots']} needs a snapshot_dir to save the snapshot members in.")


def _full_member_config(config):
    """``config`` with every member option (defaults filled in); unknown options are refused."""
    unknown = set(config) - set(MEMBER_SPEC)
    if unknown:
        raise ConfigError(f"Unknown member option(s) {sorted(unknown)}; valid: {sorted(MEMBER_SPEC)}.")
    return {key: config.get(key, default) for key, (default, _) in MEMBER_SPEC.items()}


def _check_training_labels(train_images, train_labels, val_images, val_labels):
    for name, labels, images in (("train", train_labels, train_images), ("val", val_labels, val_images)):
        labels = np.asarray(labels)
        if len(labels) != len(images):
            raise DataError(f"{name} has {len(images)} images but {len(labels)} labels.")
        if len(np.unique(labels)) < 2:
            raise DataError(f"The {name} data holds a single class; both NORMAL and PNEUMONIA are needed.")


def _training_phases(config, pretrained):
    """``(phase, epochs, learning rate)``: frozen then fine-tuned with pretrained weights, else one full phase."""
    if pretrained:
        return [("frozen", config["epochs_frozen"], config["learning_rate"]),
                ("finetune", config["epochs_finetune"], config["finetune_learning_rate"])]
    return [("full", config["epochs_frozen"] + config["epochs_finetune"], config["learning_rate"])]


def _compile_phase(fitted, config, learning_rate, total_steps):
    """Adam or AdamW, at a constant rate (plateau schedule) or a planned cyclic one over ``total_steps``."""
    if config["schedule"] != "plateau":
        learning_rate = CyclicSchedule(learning_rate, total_steps, kind=config["schedule"],
                                       cycles=config["snapshots"], min_lr=config["min_learning_rate"])
    optimizer = (keras.optimizers.AdamW(learning_rate, weight_decay=config["weight_decay"])
                 if config["weight_decay"] else keras.optimizers.Adam(learning_rate))
    fitted.compile(
        optimizer=optimizer,
        loss=keras.losses.BinaryCrossentropy(label_smoothing=config["label_smoothing"]),
        metrics=[keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="accuracy")],
        jit_compile=config["jit_compile"],
    )
    # Without a distribution strategy Keras creates the optimizer's variables inside the first traced
    # train step, and TensorFlow then traces that step twice: half of a small member's training time.
    with fitted.distribute_strategy.scope():
        fitted.optimizer.build(fitted.trainable_variables)


def _schedule_callbacks(config):
    """Early stopping and LR reduction on plateau; a planned schedule runs its whole course."""
    if config["schedule"] != "plateau":
        return []
    return [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=config["early_stopping_patience"],
                                      restore_best_weights=True),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=config["reduce_lr_factor"],
                                          patience=config["reduce_lr_patience"], min_lr=config["min_learning_rate"]),
    ]


def train_member(model, train_images, train_labels, val_images, val_labels, config, *,
                 checkpoint_path=None, class_weight=None, verbose="auto", snapshot_dir=None,
                 snapshot_metadata=None, callbacks=()):
    """Train a member with the origin's two-phase recipe, or a scheduled from-scratch run.

    Phase 1 trains the head with the backbone frozen (``epochs_frozen``), phase 2
    fine-tunes the backbone from ``finetune_from`` on (``epochs_finetune``, lower
    learning rate, pretrained batch-norm layers kept in inference mode). With
    ``weights=None`` nothing is pretrained, so the backbone is trained from the start
    (batch norm included) and only the first phase runs, for
    ``epochs_frozen + epochs_finetune`` epochs.

    ``schedule="plateau"`` (the origin's): Adam, early stopping on val loss (best
    weights restored) and learning-rate reduction on plateau. ``"cosine"`` and
    ``"onecycle"`` follow a planned :class:`CyclicSchedule` for the whole phase, with no
    early stopping. ``weight_decay > 0`` uses AdamW; ``label_smoothing`` smooths the
    binary cross-entropy targets. A checkpoint is kept at the lowest val loss.

    Snapshot ensembles (``snapshots=N`` with ``schedule="cosine"``, ``weights=None``):
    N cosine cycles in one run; at the end of cycle k the weights are saved as a
    member folder ``snapshot_dir/{name}_snap{k}`` (BN recalibrated if
    ``recalibrate_bn``), and after every epoch the weights and optimiser state go to
    ``snapshot_dir/_resume``, so calling again after a kill resumes at the last finished
    epoch without retraining finished snapshots.

    ``progressive_sizes`` (``weights=None``): the epochs are split over these training
    sizes in order (batches resized on the fly); the member keeps its own input size
    ``image_size`` for inference, which may exceed the last training size (FixRes).

    With ``cache_features`` (pretrained weights only), phase 1 computes the frozen
    backbone's pooled features once and trains the head on them: an order of magnitude
    faster, at the cost of no augmentation in phase 1. Call inside ``strategy.scope()``
    (see :func:`get_strategy`) to train on several devices; ``jit_compile`` turns on XLA.

    Parameters
    ----------
    model : keras.Model
        From :func:`build_member`.
    train_images, val_images : numpy.ndarray of shape (n, H, W, 3)
    train_labels, val_labels : numpy.ndarray of shape (n,)
    config : dict
        A member config (see :data:`pneumoxai.config.MEMBER_SPEC`).
    checkpoint_path : path, default=None
        Where the best model is written (atomically) during training.
    class_weight : dict, default=None
        From :func:`pneumoxai.data.balance` with ``balancing="class_weight"``.
    verbose : "auto", 0, 1 or 2
        Keras progress display.
    snapshot_dir : path, optional
        Folder for snapshot members and the resume state; needed when ``snapshots > 1``,
        optional otherwise (it then makes the run resumable).
    snapshot_metadata : dict, optional
        Added to every snapshot's card (e.g. config and data hashes).
    callbacks : sequence of keras.callbacks.Callback, default=()
        Extra callbacks, run after the built-in ones.

    Returns
    -------
    dict
        ``history`` (per-epoch metrics of each phase), ``seconds_per_epoch``,
        ``epochs_run`` (this call), ``best_val_loss``, ``precision`` (the dtype policy
        trained under), ``snapshots`` (saved snapshot folders).
    """
    config = _full_member_config(config)
    train_images = _check_images(train_images, model, owner="train_member", name="train_images")
    val_images = _check_images(val_images, model, owner="train_member", name="val_images")
    _check_training_labels(train_images, train_labels, val_images, val_labels)
    pretrained = config["weights"] is not None
    phases = _training_phases(config, pretrained)
    if config["cache_features"] and not pretrained:
        raise ConfigError("cache_features needs pretrained backbone weights (a frozen phase 1); "
                          f"got weights={config['weights']!r}.")
    _check_training_modes(config, snapshot_dir)
    training = _Training(model, (train_images, train_labels, val_images, val_labels), config,
                         checkpoint_path=checkpoint_path, class_weight=class_weight, verbose=verbose,
                         snapshot_dir=snapshot_dir, snapshot_metadata=snapshot_metadata, callbacks=callbacks)
    for phase, epochs, learning_rate in phases:
        if epochs:
            training.run_phase(phase, epochs, learning_rate)
    if config["recalibrate_bn"] and not training.recalibrated:
        recalibrate_batchnorm(model, train_images)
    return training.summary(pretrained)


class _Training:
    """One :func:`train_member` call across its phases: the data, the checkpoint, and what the phases record.

    ``data`` is ``(train_images, train_labels, val_images, val_labels)``, checked.
    """

    def __init__(self, model, data, config, *, checkpoint_path, class_weight, verbose, snapshot_dir,
                 snapshot_metadata, callbacks):
        self.model, self.config = model, config
        self.train_images, self.train_labels, self.val_images, self.val_labels = data
        self.class_weight, self.verbose, self.extra_callbacks = class_weight, verbose, list(callbacks)
        self.snapshot_dir, self.snapshot_metadata = snapshot_dir, snapshot_metadata
        self.size = int(model.input_shape[1])
        self.sizes = list(config["progressive_sizes"] or [self.size])
        self.augment = dict(config["augment"] or {})
        if config["random_crop"]:
            self.augment["crop"] = config["random_crop"]
        self.checkpoint = _AtomicCheckpoint(checkpoint_path, model) if checkpoint_path else None
        self.history, self.timings, self.best, self.saved, self.recalibrated = {}, [], np.inf, [], False

    def run_phase(self, phase, epochs, learning_rate):
        """Train one phase (``frozen``, ``finetune`` or ``full``) for ``epochs`` epochs."""
        fitted, segments, cached = self._phase_model(phase, epochs)
        steps = math.ceil(len(self.train_images) / self.config["batch_size"]) * epochs
        _compile_phase(fitted, self.config, learning_rate, steps)
        guard = _NonFiniteLoss()
        phase_callbacks, saver, start_epoch = self._phase_callbacks(phase, fitted, epochs, guard)
        started = time.perf_counter()
        phase_history = _fit_segments(fitted, segments, start_epoch, functools.partial(self._datasets, cached),
                                      self.class_weight, phase_callbacks, guard, self.verbose)
        self.timings.append((time.perf_counter() - started, len(phase_history.get("loss", []))))
        self._finish_phase(phase, fitted, phase_history, saver)

    def _phase_model(self, phase, epochs):
        """(model the phase fits, its ``(size, first, last)`` segments, cached feature datasets or None).

        The fitted model is the member itself, a size-free twin of it (progressive
        sizes), or its head alone on cached backbone features.
        """
        model, config = self.model, self.config
        fitted = model
        if phase == "frozen":
            _freeze_backbone(model, True)
        elif phase == "finetune":
            _set_trainable(model, config["finetune_from"])
        else:
            _freeze_backbone(model, False)
            if self.sizes != [self.size]:
                fitted = _flexible_twin(model)
        segments = _size_segments(self.sizes, epochs) if phase == "full" else [(self.size, 0, epochs)]
        cached = None
        if phase == "frozen" and config["cache_features"]:
            fitted = _head_model(model)
            cached = _feature_datasets(model, self.train_images, self.train_labels, self.val_images, self.val_labels,
                                       config)
            segments = [(None, 0, epochs)]
        return fitted, segments, cached

    def _phase_callbacks(self, phase, fitted, epochs, guard):
        """(callbacks, snapshot saver or None, epoch to resume from) of one phase."""
        config = self.config
        phase_callbacks = _schedule_callbacks(config) + [guard]
        if self.checkpoint is not None:
            self.checkpoint.member = fitted if fitted is not self.model and phase == "full" else self.model
            phase_callbacks.append(self.checkpoint)
        start_epoch, saver = 0, None
        if self.snapshot_dir is not None and phase == "full":
            if config["snapshots"] > 1:
                saver = _SnapshotSaver(
                    self.snapshot_dir, self.model, epochs // config["snapshots"], config["snapshots"],
                    self.train_images if config["recalibrate_bn"] else None,
                    {"config": config, "n_train": int(len(self.train_images)), **(self.snapshot_metadata or {})})
                phase_callbacks.append(saver)
            # After the snapshot saver: a kill between the two re-runs the epoch and re-saves its snapshot.
            resume = _ResumeState(Path(self.snapshot_dir) / SNAPSHOT_STATE, _fingerprint(config, self.train_labels))
            start_epoch = resume.restore(fitted)
            phase_callbacks.append(resume)
        phase_callbacks.extend(self.extra_callbacks)
        return phase_callbacks, saver, start_epoch

    def _datasets(self, cached, segment_size, first):
        """Training and validation datasets of a segment (resized to ``segment_size``), or the cached features."""
        from ..data import make_dataset

        if segment_size is None:  # phase 1 on cached backbone features
            return cached
        config = self.config
        return (make_dataset(self.train_images, self.train_labels, batch_size=config["batch_size"], training=True,
                             augment=self.augment, seed=int(config["seed"]) + first, size=segment_size),
                make_dataset(self.val_images, self.val_labels, batch_size=max(64, config["batch_size"]),
                             size=segment_size))

    def _finish_phase(self, phase, fitted, phase_history, saver):
        """Record the phase and bring its weights back into the member."""
        model = self.model
        self.history[phase] = phase_history
        if phase_history.get("val_loss"):
            self.best = min(self.best, float(np.nanmin(phase_history["val_loss"])))
        if saver is not None and saver.last is not None:
            # The last snapshot is these weights, already BN-recalibrated: no second pass.
            model.set_weights(saver.last.get_weights())
            self.recalibrated = True
        elif fitted is not model and phase == "full":
            model.set_weights(fitted.get_weights())
        if self.snapshot_dir is not None and phase == "full":
            n_snapshots = self.config["snapshots"]
            self.saved = [Path(self.snapshot_dir) / snapshot_name(model.name, k) for k in range(1, n_snapshots + 1)
                          if n_snapshots > 1]
            shutil.rmtree(Path(self.snapshot_dir) / SNAPSHOT_STATE, ignore_errors=True)

    def summary(self, pretrained):
        """What :func:`train_member` returns."""
        total_time = sum(t for t, _ in self.timings)
        total_epochs = sum(n for _, n in self.timings)
        return {
            "history": self.history,
            "epochs_run": total_epochs,
            "seconds_per_epoch": total_time / total_epochs if total_epochs else float("nan"),
            "train_seconds": total_time,
            "best_val_loss": self.best,
            "phase1_cached_features": bool(pretrained and self.config["cache_features"]),
            "precision": _model_precision(self.model),
            "snapshots": [str(path) for path in self.saved],
        }


def _fit_segments(fitted, segments, start_epoch, datasets, class_weight, callbacks, guard, verbose):
    """Fit over a phase's ``(input size, first epoch, last epoch)`` segments from ``start_epoch`` on.

    Returns the phase's per-epoch history; stops early when a callback stops training
    and raises on a NaN or infinite loss.
    """
    history = {}
    for segment_size, first, last in segments:
        if last <= start_epoch:
            continue
        fit_train, fit_val = datasets(segment_size, first)
        # shuffle=False: the tf.data pipeline already reshuffles every epoch with its own seed.
        fit = fitted.fit(fit_train, validation_data=fit_val, epochs=last, initial_epoch=max(first, start_epoch),
                         class_weight=class_weight, callbacks=callbacks, verbose=verbose, shuffle=False)
        for key, values in fit.history.items():
            history.setdefault(key, []).extend(float(v) for v in values)
        if getattr(guard, "nonfinite", False):
            raise DataError("Training loss became NaN or infinite; lower the learning rate or check the images.")
        if fitted.stop_training:
            break
    return history


def _fingerprint(config, train_labels):
    """What a resume state must match: the member config and the training labels."""
    import hashlib
    import json

    text = json.dumps(config, sort_keys=True, default=str) + np.asarray(train_labels).tobytes().hex()
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _feature_datasets(model, train_images, train_labels, val_images, val_labels, config):
    """Pooled features of the frozen backbone, computed once, as training and validation datasets."""
    from ..data import make_dataset

    extractor = keras.Model(model.inputs, model.get_layer("head_pool").output)
    batch = max(64, config["batch_size"])

    def features(images):
        return np.concatenate([np.asarray(extractor.predict_on_batch(images[start:start + batch]), np.float32)
                               for start in range(0, len(images), batch)])

    train = make_dataset(features(train_images), train_labels, batch_size=config["batch_size"], training=True,
                         seed=int(config["seed"]))
    val = make_dataset(features(val_images), val_labels, batch_size=batch)
    return train, val

