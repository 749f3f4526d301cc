"""Where each failure slice's errors look, against correct calls of the same class."""

import numpy as np
import pandas as pd
import scipy.stats

from .._io import Rows, mean_rows
from ..errors import DataError
from ..lungs import ZONE_COLUMNS
from ..validation import OPEN_UNIT_INTERVAL, check_param
from ._base import _positive_int
from .zone_attention import zone_attention

#: A slice's maps localise when at least this share of its measured errors' maps do.
_LOCALISED_SHARE = 0.5


def _rise_p_value(values, errors, correct, y):
    """One-sided Mann-Whitney p that ``values`` of the errors exceed those of correct calls of their main class."""
    if not errors.any():
        return np.nan
    main_class = np.bincount(y[errors], minlength=2).argmax()
    ok = np.isfinite(values) & (y == main_class)
    a, b = values[errors & ok], values[correct & ok]
    if len(a) < 2 or len(b) < 2:
        return np.nan
    return float(scipy.stats.mannwhitneyu(a, b, alternative="greater").pvalue)


def _checked_per_image(faithfulness, region_removal, n):
    """``faithfulness`` as floats (or None), after checking both per-image inputs have ``n`` rows."""
    if region_removal is not None:
        needed = {"call_changed", "control_changed", "localised", "places"}
        missing = needed - set(getattr(region_removal, "columns", ()))
        if not isinstance(region_removal, pd.DataFrame) or missing or len(region_removal) != n:
            raise DataError(f"region_removal must be a DataFrame of {n} rows with columns call_changed, "
                            f"control_changed, localised and places; got {type(region_removal).__name__}"
                            + (f" lacking {sorted(missing)}" if missing else f" of {len(region_removal)} rows"))
    if faithfulness is None:
        return None
    values = np.asarray(faithfulness, np.float64)
    if values.shape != (n,):
        raise DataError(f"faithfulness must have shape ({n},); got {values.shape}")
    return values


def _removal_row(removal, errors, alpha):
    """The region-removal verdict of one slice's measured errors (``removal_*`` columns)."""
    from collections import Counter

    from ..evidence import removal_verdict

    measured = errors & removal["localised"].notna().to_numpy()
    part = removal[measured]
    verdict = removal_verdict(part["call_changed"].to_numpy(bool), part["control_changed"].to_numpy(bool),
                              part["localised"].to_numpy(bool), alpha=alpha)
    n_localised = verdict["n_localised"]
    localised = n_localised > 0 and n_localised >= _LOCALISED_SHARE * measured.sum()
    places = Counter(str(place) for place, ok in zip(part["places"], part["localised"].to_numpy(bool)) if ok)
    place, count = places.most_common(1)[0] if localised else (None, 0)
    return {"removal_n_errors": int(measured.sum()), "removal_n_localised": n_localised,
            "removal_localised": bool(localised), "removal_changes_errors": verdict["share_changed"],
            "removal_changes_control": verdict["share_control_changed"], "removal_p": verdict["p_value"],
            "removal_rests_on_region": bool(localised and verdict["rests_on_region"]), "removal_place": place,
            "removal_place_share": count / n_localised if localised else np.nan}


#: Maps converted to float64 at once for their zone shares: 256 at 224 px are 100 MB.
_CHUNK = 256


def slice_explanations(frame, slice_table, maps, masks, y_true, y_prob, *, threshold=0.5, faithfulness=None,
                       region_removal=None, alpha=0.05, findings_only=True, max_slices=10):
    """Where in the image each failure slice's errors look, against correct calls of the same class.

    Links "which images" (:func:`pneumoxai.slices.find_failure_slices`) to "where in
    the image" (:func:`zone_attention`). For each slice, its errors are compared with
    the correct calls of the same true class, weighted to the errors' class mix (a
    slice of false positives is compared with true negatives).

    Parameters
    ----------
    frame : pandas.DataFrame, shape (n_samples, n_columns)
        The slicing table the slices were found on.
    slice_table : pandas.DataFrame
        Output of :func:`pneumoxai.slices.find_failure_slices` (with ``conditions``).
    maps : array_like, shape (n_samples, H, W)
        One attention map per image (e.g. of the predicted class), or maps on disk
        (:class:`pneumoxai._io.Rows`, read ``_CHUNK`` rows at a time).
    masks : array_like, shape (n_samples, H, W)
        Bool lung masks or zone ids, as in :func:`zone_attention` (or masks kept packed,
        :class:`pneumoxai._io.Rows`, unpacked ``_CHUNK`` at a time).
    y_true : array_like of {0, 1}, shape (n_samples,)
    y_prob : array_like, shape (n_samples,)
        P(PNEUMONIA); a call is PNEUMONIA when ``y_prob >= threshold``.
    threshold : float, default 0.5
    faithfulness : array_like, shape (n_samples,), optional
        A per-image faithfulness score of ``maps`` (e.g. :func:`deletion_auc` or a ROAD
        gap); its mean over the slice's errors and over the reference is reported.
    region_removal : pandas.DataFrame of n_samples rows, optional
        Per image, what :func:`pneumoxai.evidence.region_removal_test` measured:
        ``call_changed``, ``control_changed`` and ``localised`` (1/0, NaN where not
        measured) and ``places`` (the region in words, None where not localised). Per
        slice, its measured errors give the verdict (:func:`pneumoxai.evidence.removal_verdict`):
        do the errors rest on where their maps point, more than on the same area elsewhere?
    alpha : float, default 0.05
        Level of that verdict's one-sided test.
    findings_only : bool, default True
        Only slices with ``finding`` True (q below the search's alpha).
    max_slices : int, default 10
        At most this many slices, in the table's order.

    Returns
    -------
    table : pandas.DataFrame
        One row per slice: ``slice``, ``n_errors``, ``n_reference``, then for each
        zone column ``z`` of :data:`ZONE_COLUMNS` the mean share ``errors:z`` and
        ``correct:z``, ``off_lung_shift`` (errors minus correct), ``off_lung_p``
        (one-sided Mann-Whitney U p-value that the off-lung shares of the slice's
        errors exceed those of correct calls; errors and correct calls of the errors'
        more common class, so no class mix enters; NaN with fewer than 2 on either
        side), ``top_zone_shift`` (zone with the largest increase), with ``faithfulness``
        ``faithfulness_errors``, ``faithfulness_correct`` and ``faithfulness_n_errors``
        (errors measured), and with ``region_removal``: ``removal_n_errors`` (errors
        measured), ``removal_n_localised`` (of them, maps that localise),
        ``removal_localised`` (at least half of them do), ``removal_changes_errors`` and
        ``removal_changes_control`` (share of the localised errors' calls changed by
        removing the map's region and by removing the same region moved by half the
        image), ``removal_p`` (one-sided exact McNemar), ``removal_rests_on_region``
        (``removal_p < alpha`` and localised), ``removal_place`` (the most common region
        in words among the localised errors; None when not localised) and
        ``removal_place_share`` (its share of them).
    mean_maps : ndarray of float32, shape (n_slices, H, W)
        Mean map of each slice's errors (zeros for a slice without errors).
    """
    from ..slices import slice_mask

    if not isinstance(slice_table, pd.DataFrame) or "conditions" not in slice_table:
        raise DataError("slice_table must be the DataFrame of find_failure_slices, with its 'conditions' column")
    # As given (float16 maps of a large split are not copied to float64 at once), maps on disk read by blocks of rows.
    m = maps if isinstance(maps, Rows) else np.asarray(maps)
    y = np.asarray(y_true)
    p = np.asarray(y_prob, np.float64)
    n = len(frame)
    if m.ndim != 3 or len(m) != n or y.shape != (n,) or p.shape != (n,) or not np.issubdtype(m.dtype, np.number):
        raise DataError(f"maps (n, H, W), y_true and y_prob (n,) must have n = len(frame) = {n} rows; got "
                        f"{m.shape}, {y.shape}, {p.shape}")
    faithfulness = _checked_per_image(faithfulness, region_removal, n)
    max_slices = _positive_int("slice_explanations", "max_slices", max_slices)
    check_param("slice_explanations", "alpha", alpha, OPEN_UNIT_INTERVAL)
    masks = masks if isinstance(masks, Rows) else np.asarray(masks)
    shares = pd.concat([zone_attention(m[i:i + _CHUNK].astype(np.float64), masks[i:i + _CHUNK])
                        for i in range(0, n, _CHUNK)], ignore_index=True)
    wrong = (p >= threshold).astype(int) != y
    chosen = slice_table[slice_table["finding"].astype(bool)] if findings_only else slice_table
    rows, mean_maps = [], []
    for _, found in chosen.head(max_slices).iterrows():
        errors = slice_mask(frame, found["conditions"]) & wrong
        mix = np.bincount(y[errors], minlength=2) / max(1, errors.sum())
        row = {"slice": found["slice"], "n_errors": int(errors.sum()), "n_reference": int((~wrong).sum())}
        reference_weight = np.zeros(n)
        for c in (0, 1):  # each correct call of class c weighs mix[c] / n(correct calls of c)
            correct = ~wrong & (y == c)
            if correct.any():
                reference_weight[correct] = mix[c] / correct.sum()
        for column in ZONE_COLUMNS:
            values = shares[column].to_numpy()
            row[f"errors:{column}"] = float(np.nanmean(values[errors])) if errors.any() else np.nan
            ok = np.isfinite(values) & (reference_weight > 0)
            row[f"correct:{column}"] = (float(np.average(values[ok], weights=reference_weight[ok]))
                                        if ok.any() else np.nan)
        row["off_lung_shift"] = row["errors:off_lung_attention"] - row["correct:off_lung_attention"]
        row["off_lung_p"] = _rise_p_value(shares["off_lung_attention"].to_numpy(), errors, ~wrong, y)
        shifts = {z: row[f"errors:{z}"] - row[f"correct:{z}"] for z in ZONE_COLUMNS}
        finite = {z: v for z, v in shifts.items() if np.isfinite(v)}
        row["top_zone_shift"] = max(finite, key=finite.get) if finite else None
        if faithfulness is not None:
            measured = errors & np.isfinite(faithfulness)
            row["faithfulness_errors"] = float(faithfulness[measured].mean()) if measured.any() else np.nan
            row["faithfulness_n_errors"] = int(measured.sum())
            ok = np.isfinite(faithfulness) & (reference_weight > 0)
            row["faithfulness_correct"] = (float(np.average(faithfulness[ok], weights=reference_weight[ok]))
                                           if ok.any() else np.nan)
        if region_removal is not None:
            row.update(_removal_row(region_removal, errors, alpha))
        rows.append(row)
        mean_maps.append(mean_rows(m, errors, _CHUNK) if errors.any() else np.zeros(m.shape[1:]))
    table = pd.DataFrame(rows, columns=None if rows else ["slice", "n_errors", "n_reference"])
    return table, np.asarray(mean_maps, np.float32).reshape((-1,) + m.shape[1:])
