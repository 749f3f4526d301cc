"""ROAD, remove and debias (Rong et al., ICML 2022): removed pixels imputed from their neighbours."""

import numpy as np
import scipy.sparse
import scipy.sparse.linalg

from ..errors import DataError, param_error
from ..validation import check_images, check_maps
from ._base import ROAD_ORDERS, _check_model, _choice, _positive_int, _predict_proba, _seed, _target_is_pneumonia
from .faithfulness import _PERTURBATION_MAX_BYTES

# ROAD's neighbour weights (Rong et al., 2022): 1/6 for the 4 direct, 1/12 for the 4 diagonal neighbours.
_ROAD_NEIGHBOURS = tuple((dr, dc, 1 / 6 if dr == 0 or dc == 0 else 1 / 12)
                         for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0))


def _impute_one(image, removed):
    """Solve ``x_p = weighted mean of x_q over p's in-image 8-neighbours q`` for every removed p."""
    height, width = removed.shape
    unknown = np.flatnonzero(removed.ravel())
    if unknown.size == 0:
        return image
    slot = np.full(height * width, -1)
    slot[unknown] = np.arange(unknown.size)
    rows, cols = np.divmod(unknown, width)
    flat = image.reshape(height * width, -1).astype(np.float64)
    diag = np.zeros(unknown.size)
    rhs = np.zeros((unknown.size, flat.shape[1]))
    a_rows, a_cols, a_vals = [], [], []
    for dr, dc, weight in _ROAD_NEIGHBOURS:
        r, c = rows + dr, cols + dc
        inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
        who = np.flatnonzero(inside)
        neighbour = r[inside] * width + c[inside]
        diag[who] += weight
        is_unknown = slot[neighbour] >= 0
        a_rows.append(who[is_unknown])
        a_cols.append(slot[neighbour[is_unknown]])
        a_vals.append(np.full(is_unknown.sum(), -weight))
        np.add.at(rhs, who[~is_unknown], weight * flat[neighbour[~is_unknown]])
    a_rows.append(np.arange(unknown.size))
    a_cols.append(np.arange(unknown.size))
    a_vals.append(diag)
    system = scipy.sparse.csc_matrix(
        (np.concatenate(a_vals), (np.concatenate(a_rows), np.concatenate(a_cols))), shape=(unknown.size,) * 2
    )
    # The system is symmetric and diagonally dominant: no pivoting is needed, and a minimum-degree
    # ordering of A^T + A keeps the factors sparser than the default column ordering.
    solved = scipy.sparse.linalg.splu(system, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0,
                                      options={"SymmetricMode": True}).solve(rhs)
    out = flat.copy()
    out[unknown] = solved
    return out.reshape(image.shape)


def road_impute(images, removed, *, noise=0.0, seed=0):
    """ROAD's noisy linear imputation: removed pixels from their neighbours, not black.

    Every removed pixel equals the weighted mean of its in-image 8-neighbours
    (weight 1/6 direct, 1/12 diagonal), removed neighbours included; the resulting
    sparse linear system is solved exactly (``scipy.sparse.linalg.splu``), so holes
    are filled smoothly from their borders. Gaussian noise of std ``noise`` is then
    added to the imputed pixels, as in Rong et al. (ICML 2022).

    Parameters
    ----------
    images : array_like, shape (n, H, W, 3)
        Float images in [0, 1].
    removed : array_like of bool, shape (n, H, W)
        Pixels to impute; each image must keep at least one pixel.
    noise : float, default 0.0
        Std of the noise on imputed pixels (ROAD uses 0.01 on [0, 1] images).
    seed : int, default 0

    Returns
    -------
    ndarray of float32, shape (n, H, W, 3)
        Clipped to [0, 1]; pixels not removed are unchanged.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.zeros((1, 5, 5, 3), np.float32)
    >>> x[0, :, 3:] = 1.0                       # dark left, bright right
    >>> hole = np.zeros((1, 5, 5), bool)
    >>> hole[0, :, 1:4] = True
    >>> road_impute(x, hole)[0, 2, :, 0].round(2)  # a ramp, not a black hole
    array([0.  , 0.25, 0.5 , 0.75, 1.  ], dtype=float32)
    """
    x = check_images(images, owner="road_impute")
    mask = np.asarray(removed)
    if mask.shape != x.shape[:3] or mask.dtype != bool:
        raise DataError(f"removed must be a bool array of shape {x.shape[:3]} (n, H, W); got {mask.dtype} "
                        f"{mask.shape}")
    if mask.reshape(len(x), -1).all(axis=1).any():
        raise DataError("removed covers every pixel of an image: there is nothing to impute from")
    if not np.isfinite(noise) or noise < 0:
        raise param_error("road_impute", "noise", "a number >= 0", noise)
    seed = _seed("road_impute", seed)
    out = np.stack([_impute_one(image, m) for image, m in zip(x, mask)])
    if noise > 0:
        rng = np.random.default_rng(seed)
        out = np.where(mask[..., None], out + rng.normal(0.0, noise, out.shape), out)
    return np.clip(out, 0, 1).astype(np.float32)


def road(model, images, maps, *, order="morf", fractions=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
         noise=0.01, target="pneumonia", batch_size=32, seed=0):
    """ROAD, remove and debias (Rong et al., ICML 2022): the target-class probability as pixels go.

    For each fraction the most (``"morf"``) or least (``"lerf"``) relevant pixels of
    each map are removed and imputed by :func:`road_impute`; all perturbed images of a
    chunk of images are predicted in one call. A faithful map makes the MoRF curve fall
    fast and the LeRF curve stay high. Unlike deletion to black, the imputed image
    carries no hole whose shape leaks which pixels were removed.

    Parameters
    ----------
    model : keras.Model
    images : array_like, shape (n, H, W, 3)
    maps : array_like, shape (n, H, W)
        Higher = more relevant.
    order : {"morf", "lerf"}, default "morf"
    fractions : sequence of float in [0, 1), default 0.1, 0.2, ..., 0.9
    noise : float, default 0.01
        Imputation noise (see :func:`road_impute`).
    target : {"pneumonia", "normal", "predicted"} or array_like of bool, shape (n,)
        Whose probability is tracked (``p`` or ``1 - p``).
    batch_size : int, default 32
    seed : int, default 0

    Returns
    -------
    ndarray of float64, shape (n, len(fractions))
        Target-class probability after each removal fraction.
    """
    _choice("road", "order", order, ROAD_ORDERS)
    _check_model(model, "road")
    x = check_images(images, model=model, owner="road")
    m = check_maps(maps, owner="road", shape=x.shape[:3], dtype=np.float32)
    f = np.asarray(fractions, np.float64)
    if f.ndim != 1 or len(f) == 0 or not np.isfinite(f).all() or (f < 0).any() or (f >= 1).any():
        raise param_error("road", "fractions", "a non-empty sequence of numbers in [0, 1)", fractions)
    batch_size = _positive_int("road", "batch_size", batch_size)
    seed = _seed("road", seed)
    is_pneumonia = _target_is_pneumonia("road", target, model, x, batch_size)
    n, height, width = m.shape
    relevance = m.reshape(n, -1) if order == "morf" else -m.reshape(n, -1)
    order_idx = np.argsort(-relevance, axis=1, kind="stable")
    rank = np.empty_like(order_idx)
    np.put_along_axis(rank, order_idx, np.arange(height * width)[None, :], axis=1)
    counts = np.round(f * height * width).astype(np.int64)
    rng = np.random.default_rng(seed)
    chunk = max(1, _PERTURBATION_MAX_BYTES // (len(f) * x[0].nbytes))
    scores = np.empty((n, len(f)))
    for start in range(0, n, chunk):
        sl = slice(start, start + chunk)
        removed = rank[sl, None, :] < counts[None, :, None]  # (b, k, H*W)
        b = removed.shape[0]
        perturbed = road_impute(np.repeat(x[sl], len(f), axis=0), removed.reshape(b * len(f), height, width),
                                noise=noise, seed=int(rng.integers(2**31 - 1)))
        scores[sl] = _predict_proba(model, perturbed, batch_size).reshape(b, len(f))
    return np.where(is_pneumonia[:, None], scores, 1 - scores)
