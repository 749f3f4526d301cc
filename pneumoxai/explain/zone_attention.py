"""Where a map looks: the share of its positive mass in each lung zone and outside the lungs."""

import numpy as np
import pandas as pd

from ..errors import DataError
from ..lungs import ZONE_COLUMNS, ZONE_NAMES, zones

def zone_attention(maps, masks_or_zones):
    """Share of each map's positive mass in the six lung zones and outside the lungs.

    Parameters
    ----------
    maps : array-like, shape (n, H, W)
        Attention or attribution maps; negative values are ignored.
    masks_or_zones : array-like, shape (n, H, W)
        Bool lung masks (split with :func:`zones`) or integer zone
        ids 0..6 (0 = outside the lungs).

    Returns
    -------
    pandas.DataFrame
        One row per image (index ``"image"``); columns :data:`ZONE_COLUMNS`: the six
        zone shares and ``off_lung_attention`` (the share outside the lungs); each
        row sums to 1, or is NaN when a map has no positive mass.
    """
    m = np.asarray(maps, np.float64)
    z = np.asarray(masks_or_zones)
    if m.ndim != 3 or z.shape != m.shape:
        raise DataError(
            f"maps and masks_or_zones must share one (n, H, W) shape; got {m.shape} and {z.shape}"
        )
    if not np.isfinite(m).all():
        raise DataError("maps contain NaN or infinite values")
    if z.dtype == bool:
        z = zones(z)
    elif not np.issubdtype(z.dtype, np.integer) or z.min() < 0 or z.max() > len(ZONE_NAMES):
        raise DataError(f"zone ids must be integers in 0..{len(ZONE_NAMES)}, or pass bool masks")
    n, k = len(m), len(ZONE_NAMES) + 1
    positive = np.clip(m, 0, None)
    ids = z.astype(np.int64) + k * np.arange(n)[:, None, None]
    mass = np.bincount(ids.ravel(), weights=positive.ravel(), minlength=n * k).reshape(n, k)
    total = mass.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, mass / total, np.nan)
    table = pd.DataFrame(np.column_stack([share[:, 1:], share[:, 0]]), columns=list(ZONE_COLUMNS))
    table.index.name = "image"
    return table
