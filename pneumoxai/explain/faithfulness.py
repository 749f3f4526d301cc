"""Are the maps faithful? Deletion and insertion AUC (Petsiuk et al., RISE, BMVC 2018) against random maps."""

import numpy as np
import scipy.ndimage

from ..errors import param_error
from ..validation import check_images, check_maps
from ._base import (FAITHFULNESS_METRICS, _check_model, _choice, _positive_int, _predict_proba, _seed,
                    _target_is_pneumonia)

_PERTURBATION_MAX_BYTES = 2**28  # cap on the perturbed copies of deletion/insertion


def _baseline_images(owner, x, baseline):
    if isinstance(baseline, str):
        if baseline != "blur":
            raise param_error(owner, "baseline", "a number in [0, 1] or 'blur'", baseline)
        sigma = max(1.0, x.shape[1] / 20)  # ~11 px at 224, as RISE's insertion blur
        return scipy.ndimage.gaussian_filter(x, sigma=(0, sigma, sigma, 0))
    if not np.isscalar(baseline) or not 0 <= baseline <= 1:
        raise param_error(owner, "baseline", "a number in [0, 1] or 'blur'", baseline)
    return np.full_like(x, baseline)


def _perturbation_auc(owner, model, images, maps, *, insert, steps, baseline, target, batch_size):
    """AUC of the target-class probability while pixels are deleted/inserted by saliency."""
    _check_model(model, owner)
    x = check_images(images, model=model, owner=owner)
    m = check_maps(maps, owner=owner, shape=x.shape[:3], dtype=np.float32)
    steps = _positive_int(owner, "steps", steps)
    batch_size = _positive_int(owner, "batch_size", batch_size)
    is_pneumonia = _target_is_pneumonia(owner, target, model, x, batch_size)
    base = _baseline_images(owner, x, baseline)
    n, height, width = m.shape
    # rank[i, p] = position of pixel p in image i's saliency order (0 = most salient).
    order = np.argsort(-m.reshape(n, -1), axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(height * width)[None, :], axis=1)
    rank = rank.reshape(n, height, width, 1)
    counts = np.round(np.linspace(0, height * width, steps + 1)).astype(np.int64)
    per_image_bytes = (steps + 1) * x[0].nbytes
    chunk = max(1, _PERTURBATION_MAX_BYTES // per_image_bytes)
    scores = np.empty((steps + 1, n))
    for start in range(0, n, chunk):  # every step of a chunk of images in one predict()
        sl = slice(start, start + chunk)
        first = (rank[None, sl] < counts[:, None, None, None, None])  # (steps+1, b, H, W, 1)
        shown, hidden = (x[sl], base[sl]) if insert else (base[sl], x[sl])
        perturbed = np.where(first, shown[None], hidden[None]).reshape((-1,) + x.shape[1:])
        scores[:, sl] = _predict_proba(model, perturbed, batch_size).reshape(first.shape[:2])
    scores = np.where(is_pneumonia[None, :], scores, 1 - scores)
    return np.trapezoid(scores, dx=1 / steps, axis=0)


def deletion_auc(model, images, maps, *, steps=20, baseline=0.0, target="pneumonia", batch_size=32):
    """Deletion metric (Petsiuk et al., BMVC 2018): lower is more faithful.

    The most salient pixels are replaced by ``baseline`` in ``steps`` equal increments
    and the target-class probability is integrated over the deleted fraction [0, 1].

    Parameters
    ----------
    model : keras.Model
    images : array-like, shape (n, H, W, 3)
    maps : array-like, shape (n, H, W)
        Higher = more important (signed maps rank by value).
    steps : int, default=20
    baseline : float in [0, 1] or "blur", default=0.0
        Replacement value, or a Gaussian-blurred copy of the image.
    target : {"pneumonia", "normal", "predicted"} or array-like of bool, shape (n,)
        Whose probability is tracked (``p`` or ``1 - p``).
    batch_size : int, default=32
        Perturbed images per network call (all steps are predicted together).

    Returns
    -------
    ndarray of float64, shape (n,)
        Per-image area under the probability curve, in [0, 1].
    """
    return _perturbation_auc("deletion_auc", model, images, maps, insert=False, steps=steps, baseline=baseline,
                             target=target, batch_size=batch_size)


def insertion_auc(model, images, maps, *, steps=20, baseline="blur", target="pneumonia", batch_size=32):
    """Insertion metric (Petsiuk et al., BMVC 2018): higher is more faithful.

    Starting from ``baseline`` (a blurred image by default, as in RISE), the most
    salient pixels are restored first. Parameters and return as in :func:`deletion_auc`.
    """
    return _perturbation_auc("insertion_auc", model, images, maps, insert=True, steps=steps, baseline=baseline,
                             target=target, batch_size=batch_size)


def random_map_baseline(model, images, *, metric="deletion", n_maps=3, steps=20, baseline=None,
                        target="pneumonia", batch_size=32, seed=0):
    """Deletion/insertion AUC of uniformly random maps, the chance level to beat.

    Parameters
    ----------
    metric : {"deletion", "insertion"}, default="deletion"
    n_maps : int, default=3
        Random maps per image, averaged.
    baseline : float or "blur", default=None
        Default: the metric's own default (0.0 for deletion, "blur" for insertion).
    seed : int, default=0
    model, images, steps, target, batch_size
        As in :func:`deletion_auc`.

    Returns
    -------
    ndarray of float64, shape (n,)
        Mean AUC over the random maps.
    """
    _choice("random_map_baseline", "metric", metric, FAITHFULNESS_METRICS)
    n_maps = _positive_int("random_map_baseline", "n_maps", n_maps)
    seed = _seed("random_map_baseline", seed)
    x = check_images(images, owner="random_map_baseline")
    if baseline is None:
        baseline = 0.0 if metric == "deletion" else "blur"
    if not isinstance(target, str):  # per-image targets follow the repeated images
        target = np.tile(np.asarray(target), n_maps)
    maps = np.random.default_rng(seed).random((n_maps,) + x.shape[:3], dtype=np.float32)
    auc = _perturbation_auc("random_map_baseline", model, np.tile(x, (n_maps, 1, 1, 1)),
                            maps.reshape((-1,) + x.shape[1:3]), insert=metric == "insertion", steps=steps,
                            baseline=baseline, target=target, batch_size=batch_size)
    return auc.reshape(n_maps, len(x)).mean(axis=0)
