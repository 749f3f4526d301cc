"""Where a member computes: the Keras dtype policy and the tf.distribute strategy."""

import contextlib
import logging
import os
import warnings
from pathlib import Path

import keras

from ..errors import ConfigError, param_error
from ..validation import Options, check_param

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16", "auto")
STRATEGIES = ("default", "mirrored", "multiworker")
_LOG = logging.getLogger("pneumoxai.models")


def _cpu_has_native_bf16():
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _has_gpu():
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def resolve_precision(precision="auto", *, force=False):
    """The Keras dtype policy a member is built with; ``"auto"`` picks it from the hardware.

    Parameters
    ----------
    precision : {"auto", "float32", "mixed_bfloat16", "mixed_float16"}, default="auto"
        ``auto``: ``mixed_bfloat16`` on a GPU or on a CPU whose ``/proc/cpuinfo``
        lists ``avx512_bf16`` or ``amx_bf16`` (1.5-2.5x faster training steps on such a
        CPU), ``float32`` elsewhere; the choice is logged. bfloat16 is never chosen
        where it would be emulated (several times slower than float32).
    force : bool, default=False
        Accept ``mixed_bfloat16`` on a CPU without native support (for testing).

    Returns
    -------
    str
        ``"float32"``, ``"mixed_bfloat16"`` or ``"mixed_float16"``.

    Raises
    ------
    ConfigError
        ``mixed_bfloat16`` asked for on a CPU that would emulate it, without ``force``.

    Examples
    --------
    >>> resolve_precision("float32")
    'float32'
    """
    check_param("resolve_precision", "precision", precision, Options(PRECISIONS))
    if precision == "float32":
        return precision
    native = _has_gpu() or _cpu_has_native_bf16()
    if precision == "auto":
        chosen = "mixed_bfloat16" if native else "float32"
        _LOG.info("precision='auto' chose %r (%s).", chosen,
                  "GPU or CPU with native bfloat16" if native else "no native bfloat16 on this CPU")
        return chosen
    if precision == "mixed_float16" and not _has_gpu():
        warnings.warn("precision='mixed_float16' without a GPU: float16 is emulated on CPUs and slower than "
                      "float32; use 'auto', 'mixed_bfloat16' on CPUs with AVX512-BF16/AMX, or 'float32'.",
                      UserWarning, stacklevel=2)
    if precision == "mixed_bfloat16" and not native and not force:
        raise ConfigError("precision='mixed_bfloat16' needs a GPU or a CPU with native bfloat16 (avx512_bf16 or "
                          "amx_bf16 in /proc/cpuinfo); this CPU would emulate it, several times slower than "
                          "float32. Use precision='auto' or 'float32', or set force_precision=true to run it anyway.")
    return precision


def _model_precision(model):
    """The dtype policy of a member's backbone (its first convolution), e.g. 'mixed_bfloat16'."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            return layer.dtype_policy.name
    return keras.config.dtype_policy().name


@contextlib.contextmanager
def _dtype_policy(precision):
    """Build layers under ``precision`` without leaving Keras' global policy changed."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def get_strategy(name="default", *, devices=None):
    """The ``tf.distribute`` strategy that training runs under.

    Parameters
    ----------
    name : {"default", "mirrored", "multiworker"}, default="default"
        ``default``: one device (TensorFlow's default placement). ``mirrored``:
        synchronous data parallelism over the GPUs of one machine (all of them unless
        ``devices`` is given). ``multiworker``: synchronous data parallelism over
        several machines, configured by the ``TF_CONFIG`` environment variable.
    devices : list of str, default=None
        Devices for ``mirrored``, e.g. ``["/gpu:0", "/gpu:1"]``.

    Returns
    -------
    tf.distribute.Strategy
        Build and train a member inside ``strategy.scope()``; ``batch_size`` stays the
        global batch, split evenly across the replicas.
    """
    import tensorflow as tf

    if name not in STRATEGIES:
        raise param_error("get_strategy", "strategy", f"one of {list(STRATEGIES)}", name)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=devices)
    if not os.environ.get("TF_CONFIG"):
        raise ConfigError("strategy 'multiworker' needs the TF_CONFIG environment variable (the cluster's "
                          "worker addresses and this worker's task); see the README's 'Scaling out'.")
    return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief(strategy):
    """Whether this process writes the run folder (always, except non-chief multi-worker tasks)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "chief" or (not has_chief and task_type == "worker" and task_id == 0)

