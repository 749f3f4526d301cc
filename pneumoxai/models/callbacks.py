"""What runs during training: the cyclic schedule, checkpoints, snapshots, resume state, BN recalibration."""

import logging
import math
from pathlib import Path

import keras
import numpy as np

from .. import _io
from ..config import snapshot_name
from ..errors import ConfigError, param_error
from ..run_folder import RESUME_RECORD_FILE, RESUME_WEIGHTS_FILE
from ..validation import Options, check_param
from .architecture import _uncompiled_copy
from .storage import save_member

_LOG = logging.getLogger("pneumoxai.models")


@keras.saving.register_keras_serializable(package="pneumoxai")
class CyclicSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Cosine (with warm restarts) or one-cycle learning rate, as a function of the step.

    Parameters
    ----------
    base_lr : float
        Peak learning rate.
    total_steps : int
        Optimiser steps of the whole run.
    kind : {"cosine", "onecycle"}, default="cosine"
        ``cosine``: ``cycles`` equal cycles, each decaying from ``base_lr`` to
        ``min_lr`` along half a cosine, then restarting (SGDR, Loshchilov & Hutter 2017;
        snapshot ensembles save a member at the end of each cycle, Huang et al. 2017).
        ``onecycle``: linear warm-up from ``base_lr / 25`` to ``base_lr`` over the
        first ``warmup_fraction`` of the steps, then a cosine decay to ``min_lr``
        (Smith & Topin 2019).
    cycles : int, default=1
    min_lr : float, default=0.0
    warmup_fraction : float, default=0.3

    Examples
    --------
    >>> schedule = CyclicSchedule(1e-3, 100, cycles=2)
    >>> [round(float(schedule(step)), 6) for step in (0, 25, 50, 75)]
    [0.001, 0.0005, 0.001, 0.0005]
    """

    def __init__(self, base_lr, total_steps, kind="cosine", cycles=1, min_lr=0.0, warmup_fraction=0.3):
        check_param("CyclicSchedule", "kind", kind, Options(("cosine", "onecycle")))
        if not isinstance(total_steps, int) or total_steps < cycles or cycles < 1:
            raise param_error("CyclicSchedule", "total_steps", f"an int >= cycles ({cycles})", total_steps)
        self.base_lr, self.total_steps, self.kind = float(base_lr), total_steps, kind
        self.cycles, self.min_lr, self.warmup_fraction = int(cycles), float(min_lr), float(warmup_fraction)

    def __call__(self, step):
        ops = keras.ops
        step = ops.cast(step, "float32")
        if self.kind == "cosine":
            length = self.total_steps / self.cycles
            position = ops.mod(step, length) / length
            return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1.0 + ops.cos(math.pi * position))
        warmup = max(1.0, self.warmup_fraction * self.total_steps)
        start = self.base_lr / 25.0
        rising = start + (self.base_lr - start) * step / warmup
        position = ops.clip((step - warmup) / max(1.0, self.total_steps - warmup), 0.0, 1.0)
        falling = self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1.0 + ops.cos(math.pi * position))
        return ops.where(step < warmup, rising, falling)

    def get_config(self):
        return {"base_lr": self.base_lr, "total_steps": self.total_steps, "kind": self.kind,
                "cycles": self.cycles, "min_lr": self.min_lr, "warmup_fraction": self.warmup_fraction}


class _AtomicCheckpoint(keras.callbacks.Callback):
    """Save the member whenever val_loss improves, via temp file + rename.

    ``member`` is saved rather than the model being fitted, which is only the head
    when phase 1 trains on cached backbone features.
    """

    def __init__(self, path, member, best=np.inf):
        super().__init__()
        self.path = Path(path)
        self.member = member
        self.best = best

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("val_loss")
        if loss is not None and np.isfinite(loss) and loss < self.best:
            self.best = float(loss)
            with _io.atomic_path(self.path, suffix=".keras") as tmp:
                self.member.save(tmp)


class _NonFiniteLoss(keras.callbacks.Callback):
    """Stop at the first NaN/inf loss with a clear error instead of training on garbage."""

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(loss):
            self.model.stop_training = True
            self.nonfinite = True


class _SnapshotSaver(keras.callbacks.Callback):
    """At the end of every learning-rate cycle, save the weights as a member folder.

    The folder is written by :func:`save_member` (model, then card last), so a folder
    with a card always holds a finished snapshot.
    """

    def __init__(self, directory, member, cycle_epochs, n_cycles, recalibrate_images, metadata):
        super().__init__()
        self.directory, self.member = Path(directory), member
        self.cycle_epochs, self.n_cycles = cycle_epochs, n_cycles
        self.recalibrate_images, self.metadata = recalibrate_images, metadata
        self.last = None  # the final snapshot, when this call saved it

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.cycle_epochs:
            return
        index = (epoch + 1) // self.cycle_epochs
        snapshot = _uncompiled_copy(self.member)
        snapshot.set_weights(self.model.get_weights())
        if self.recalibrate_images is not None:
            recalibrate_batchnorm(snapshot, self.recalibrate_images)
        save_member(self.directory / snapshot_name(self.member.name, index), snapshot, {
            **self.metadata, "snapshot": index, "n_snapshots": self.n_cycles, "epoch": epoch + 1,
            "val_loss_at_snapshot": (logs or {}).get("val_loss")})
        if index == self.n_cycles:
            self.last = snapshot


class _ResumeState(keras.callbacks.Callback):
    """Save weights and optimiser state after every epoch, so a killed run resumes there.

    The weights file is written before the small JSON record that names its epoch, each
    atomically: a kill in between costs one epoch, never a mismatched state.
    """

    def __init__(self, directory, fingerprint):
        super().__init__()
        self.directory, self.fingerprint = Path(directory), fingerprint

    @property
    def weights_path(self):
        return self.directory / RESUME_WEIGHTS_FILE

    @property
    def record_path(self):
        return self.directory / RESUME_RECORD_FILE

    def restore(self, model):
        """Load a saved state into ``model`` (compiled); return the epoch to resume from."""
        if not self.record_path.is_file() or not self.weights_path.is_file():
            return 0
        record = _io.read_json(self.record_path)
        if record.get("fingerprint") != self.fingerprint:
            raise ConfigError(f"{str(self.directory)!r} holds the training state of another config or data "
                              "set; delete it (or use another snapshot_dir) to start afresh.")
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(self.weights_path)
        _LOG.info("Resuming training from epoch %d (state in %s).", record["epoch"], self.directory)
        return int(record["epoch"])

    def on_epoch_end(self, epoch, logs=None):
        with _io.atomic_path(self.weights_path, suffix=".weights.h5") as tmp:
            self.model.save_weights(tmp)
        _io.write_json(self.record_path, {"epoch": epoch + 1, "fingerprint": self.fingerprint})


def recalibrate_batchnorm(model, images, *, batch_size=64, max_batches=None):
    """Recompute every batch-norm layer's moving statistics from ``images``.

    The moving averages kept during training mix statistics of older weights; after
    training from scratch they can be far from the final weights' statistics, so
    inference-mode outputs collapse to one class. This pass sets them to the exact
    average of per-batch statistics under the final weights (cumulative averaging, as
    in "precise BN", Wu & Johnson 2021), with dropout off.

    Parameters
    ----------
    model : keras.Model
    images : numpy.ndarray of shape (n_samples, H, W, 3)
        Training images without augmentation.
    batch_size : int, default=64
    max_batches : int, default=None
    """
    bn_layers = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    dropouts = [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    saved = [(layer, layer.momentum, layer.trainable) for layer in bn_layers]
    saved_rates = [(layer, layer.rate) for layer in dropouts]
    try:
        for layer in dropouts:
            layer.rate = 0.0
        for layer in bn_layers:
            layer.trainable = True
        starts = range(0, len(images), batch_size)
        if max_batches is not None:
            starts = list(starts)[:max_batches]
        for count, start in enumerate(starts, start=1):
            for layer in bn_layers:
                # new = old * m + batch * (1 - m) with m = (k-1)/k is the running mean of batch stats.
                layer.momentum = (count - 1) / count
            model(images[start:start + batch_size], training=True)
    finally:
        for layer, momentum, trainable in saved:
            layer.momentum, layer.trainable = momentum, trainable
        for layer, rate in saved_rates:
            layer.rate = rate

