"""Probabilities of one model: predict_proba and the padded batches that keep one traced function."""

import numpy as np

from ..validation import check_images
from .contract import check_classifier


def predict_proba(model, images, *, batch_size=64):
    """Pneumonia probabilities of one model, shape (n_samples,), batched.

    Parameters
    ----------
    model : keras.Model
    images : numpy.ndarray of shape (n_samples, H, W, 3)
    batch_size : int, default=64

    Returns
    -------
    numpy.ndarray of shape (n_samples,), float64

    Raises
    ------
    ModelContractError
        The model does not output one probability per image (see :func:`adapt`).

    Warns
    -----
    ConstantPredictionsWarning
        Nearly the same probability for 8 or more images.
    """
    check_classifier(model, "predict_proba")
    images = _check_images(images, model)
    if len(images) == 0:
        return np.empty(0)
    if model.distribute_strategy.num_replicas_in_sync > 1:
        # predict_on_batch returns one copy of the batch per replica under a mirrored strategy.
        proba = model.predict(images, batch_size=batch_size, verbose=0)
    else:
        # predict_on_batch reuses one compiled function: no per-call tf.data setup as in
        # model.predict, and no eager layer-by-layer dispatch as in model(x).
        proba = np.concatenate([predict_on_padded_batch(model, images[start:start + batch_size], batch_size)
                                for start in range(0, len(images), batch_size)])
    return check_classifier(model, "predict_proba", probabilities=proba, warn_constant=True)


def predict_on_padded_batch(model, batch, batch_size):
    """``model.predict_on_batch`` on a batch padded to ``batch_size`` rows, padding dropped.

    One input shape means one traced function per model: a short last batch would
    retrace it (and TensorFlow would warn about retracing).

    Parameters
    ----------
    model : keras.Model
    batch : numpy.ndarray of shape (n, ...) with 1 <= n <= batch_size
    batch_size : int

    Returns
    -------
    numpy.ndarray of shape (n, ...)
    """
    n = len(batch)
    if n < batch_size:
        batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - n, axis=0)])
    return np.asarray(model.predict_on_batch(batch))[:n]


def _check_images(images, model=None, *, owner="predict_proba", name="images"):
    size = None if model is None else tuple(model.input_shape[1:3])
    return check_images(images, owner=owner, name=name, size=size)

