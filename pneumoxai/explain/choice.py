"""Which map to trust: every CAM method on every candidate layer set measured, and one chosen by a fixed rule."""

import hashlib
import time
import warnings

import numpy as np
import pandas as pd

from ..errors import param_error
from ..validation import Interval, check_images, check_param
from ._base import CAM_METHODS, DOWNSTREAM, _check_model, _choice, _seed, _target_is_pneumonia, shared_models
from .cam import GRADIENT_CAM_METHODS, _cam_explainer, _GradientCAMs
from .faithfulness import deletion_auc
from .layers import _feature_layers, feature_map_size, fusion_layers, layer_candidates
from .road import road
from .sanity import _copy_refusal, _explain_randomized, _layers_to_randomize, _randomized_copy, _spearman_rows


def _nanmedian(values):
    """Median of the finite values; NaN, without a warning, when there is none."""
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else float("nan")


def _candidates(methods, layers):
    """Check ``methods`` and ``layers`` of :func:`compare_layers`; return the layer sets as tuples."""
    if isinstance(methods, str) or not len(methods):
        raise param_error("compare_layers", "methods", "a non-empty list drawn from " + ", ".join(CAM_METHODS),
                          methods)
    for method in methods:
        _choice("compare_layers", "methods", method, CAM_METHODS)
    if isinstance(layers, str) or not len(layers):
        raise param_error("compare_layers", "layers", "a non-empty list of layer names or lists of names", layers)
    return [(entry,) if isinstance(entry, str) else tuple(entry) for entry in layers]


def _randomized_copies(model, specs, n_randomized, seed):
    """Each candidate's randomized copy of ``model``, as :func:`randomization_check` builds it.

    Built before any map, so bad layer names or ``n_randomized`` fail first; candidates that
    re-initialise the same layers share one copy. A model that cannot be copied (Lambda or
    custom layers) gets a warning and no copies: its randomization check is skipped, and
    the refusal is returned with the copies (None otherwise).
    """
    copies, randomized = {}, {}
    refusal = _copy_refusal("compare_layers", model)
    for spec in specs:
        explained = _feature_layers("compare_layers", model, None, spec)
        names = tuple(_layers_to_randomize("compare_layers", model, n_randomized, explained, name="n_randomized"))
        if names not in copies and not refusal:
            copies[names] = _randomized_copy(model, names, seed)
        randomized[spec] = copies.get(names)
    if refusal:
        warnings.warn(f"{refusal} The randomization check is skipped (randomization_spearman is NaN).", UserWarning,
                      stacklevel=3)
    return randomized, refusal


def compare_layers(model, images, layers, *, methods=("gradcam", "layercam"), target="predicted", steps=20,
                   fractions=(0.1, 0.3, 0.5, 0.7, 0.9), n_randomized=DOWNSTREAM, batch_size=16, max_n=32, seed=0):
    """Faithfulness, randomization and cost of each CAM method on each layer (or fused layers).

    Layer choice by measurement: for every (method, layer) pair the maps of ``images``
    are timed and scored by deletion AUC (lower is better), ROAD MoRF/LeRF
    (:func:`road`; ``road_gap = road_lerf - road_morf``, higher is better) and the
    model-randomization Spearman correlation (:func:`randomization_check`, lower is
    better). A ``"random"`` row gives the chance level of uniformly random maps.

    Parameters
    ----------
    model : keras.Model
    images : array_like, shape (n, H, W, 3)
    layers : sequence of (str or sequence of str)
        Layers to compare; a sequence of names is one fused entry (e.g.
        :func:`fusion_layers`), labelled by joining its names with ``"+"``.
    methods : sequence of str, default ("gradcam", "layercam")
        Drawn from :data:`CAM_METHODS`.
    target : {"pneumonia", "normal", "predicted"} or array_like of bool, default "predicted"
        Resolved once, so every method explains the same classes.
    steps : int, default 20
        Deletion steps.
    fractions : sequence of float, default (0.1, 0.3, 0.5, 0.7, 0.9)
        ROAD removal fractions.
    n_randomized : int or "downstream", default "downstream"
        Weighted layers re-initialised by the randomization check: the top
        ``n_randomized``, or every one after each candidate's shallowest layer
        (:func:`randomization_check`), so a conv3 map is not judged by a check that
        leaves conv4 and conv5 trained.
    batch_size, max_n, seed
        As in :func:`gradcam` and :func:`randomization_check`.

    Returns
    -------
    pandas.DataFrame
        One row per (method, layer) plus the ``"random"`` row; columns ``method``,
        ``layer``, ``map_side`` (side of the finest feature map), ``deletion_auc``,
        ``road_morf``, ``road_lerf``, ``road_gap`` (means over images and fractions),
        ``randomization_spearman`` (median over images with a non-constant map; NaN
        when re-initialisation leaves every map constant, or when the model has Lambda or custom
        layers and cannot be copied: a warning says the check is skipped, and
        ``table.attrs["randomization_skipped"]`` holds why) and ``seconds_per_image``.
    """
    # One block: the model (and each randomized copy) is checked once and explained through one logit model.
    with shared_models():
        _check_model(model, "compare_layers")
        seed = _seed("compare_layers", seed)
        x = check_images(images, model=model, owner="compare_layers")
        specs = _candidates(methods, layers)
        is_pneumonia = _target_is_pneumonia("compare_layers", target, model, x, batch_size)

        scored = {}  # identical maps (Grad-CAM and HiResCAM of a pooled head's last layer) are scored once

        def scores(maps):
            key = hashlib.sha1(maps.tobytes()).hexdigest()
            if key not in scored:
                morf = road(model, x, maps, order="morf", fractions=fractions, target=is_pneumonia, seed=seed).mean()
                lerf = road(model, x, maps, order="lerf", fractions=fractions, target=is_pneumonia, seed=seed).mean()
                deletion = deletion_auc(model, x, maps, steps=steps, target=is_pneumonia).mean()
                scored[key] = {"deletion_auc": deletion, "road_morf": morf, "road_lerf": lerf,
                               "road_gap": lerf - morf}
            return scored[key]

        randomized, skipped = _randomized_copies(model, specs, n_randomized, seed)
        maps, seconds = _candidate_maps(model, x, is_pneumonia, methods, specs, batch_size, max_n)
        maps_randomized = {}
        for copy in {id(c): c for c in randomized.values() if c is not None}.values():
            # The candidates that re-initialise the same layers are explained on their copy together.
            on_copy = [spec for spec in specs if randomized[spec] is copy]
            maps_randomized.update(_explain_randomized(lambda m: _candidate_maps(
                m, x, is_pneumonia, methods, on_copy, batch_size, max_n, together=True)[0], copy))
        rows = []
        for method in methods:
            for spec in specs:
                spearman = np.nan
                if randomized[spec] is not None:
                    spearman = _nanmedian(_spearman_rows(maps[method, spec], maps_randomized[method, spec]))
                rows.append({"method": method, "layer": "+".join(spec),
                             "map_side": max(int(model.get_layer(name).output.shape[1]) for name in spec),
                             **scores(maps[method, spec]), "randomization_spearman": spearman,
                             "seconds_per_image": seconds[method, spec]})
        chance = np.random.default_rng(seed).random(x.shape[:3], dtype=np.float32)
        rows.append({"method": "random", "layer": "", "map_side": x.shape[1], **scores(chance),
                     "randomization_spearman": np.nan, "seconds_per_image": np.nan})
        table = pd.DataFrame(rows)
        if skipped:
            table.attrs["randomization_skipped"] = skipped
        return table


def _candidate_maps(model, x, is_pneumonia, methods, specs, batch_size, max_n, *, together=False):
    """``{(method, layers): maps}`` and ``{(method, layers): seconds per image}`` of every candidate.

    The gradient methods of one layer set share one forward and backward pass per batch, so a
    candidate's seconds are that pass and its own arithmetic; Score-CAM is timed on its own.
    ``together``: one pass over every layer set's layers instead (the seconds are then not each set's).
    """
    maps, seconds = {}, {}
    shared = [method for method in methods if method in GRADIENT_CAM_METHODS]
    for group in [specs] if together else [[spec] for spec in specs]:
        if shared:
            requests = [(method, spec) for spec in group for method in shared]
            explainer = _GradientCAMs(model, requests, batch_size=batch_size)
            for request, request_maps, cost in zip(requests, explainer(x, target=is_pneumonia),
                                                   explainer.seconds_per_image_):
                maps[request], seconds[request] = request_maps, cost
    for spec in specs:
        for method in methods:
            if method not in shared:
                started = time.perf_counter()
                maps[method, spec] = _cam_explainer("compare_layers", model, method, None, batch_size, max_n,
                                                    layers=spec)(x, target=is_pneumonia)
                seconds[method, spec] = (time.perf_counter() - started) / len(x)
    return maps, seconds


#: A map whose median Spearman correlation with the maps of a model with re-initialised top
#: layers reaches this does not depend on what the model learned (Adebayo et al. 2018).
MAX_RANDOMIZATION_SPEARMAN = 0.9
#: ROAD gaps closer than this are a tie, which the finer map wins.
ROAD_GAP_TIE = 0.02


def choose_map_method(table, *, max_randomization=MAX_RANDOMIZATION_SPEARMAN, tie=ROAD_GAP_TIE):
    """The map method and layers to trust, chosen from a :func:`compare_layers` table by a fixed rule.

    Rule: drop candidates that fail the model-randomization check (median Spearman
    ``>= max_randomization``: the map barely changes when the model's top layers are
    re-initialised, Adebayo et al. 2018) or are no more faithful than random maps (ROAD
    gap, LeRF minus MoRF, at or below the ``"random"`` row's; Rong et al. 2022); among the
    rest take the largest ROAD gap, a gap within ``tie`` of the best going to the finer map
    (then the faster one). Without any candidate left, Grad-CAM on the last layer listed
    for it is kept as the conventional default, and the reason says so. When
    :func:`compare_layers` skipped the randomization check (a model with Lambda or custom
    layers, recorded in ``table.attrs["randomization_skipped"]``), only the ROAD rule
    applies and the reason says the check was skipped.

    Parameters
    ----------
    table : pandas.DataFrame
        Output of :func:`compare_layers` (columns ``method``, ``layer``, ``map_side``,
        ``road_gap``, ``randomization_spearman``, ``seconds_per_image``), with its
        ``"random"`` row.
    max_randomization : float, default=MAX_RANDOMIZATION_SPEARMAN
    tie : float, default=ROAD_GAP_TIE

    Returns
    -------
    choice : dict
        ``method``, ``layer`` (as in the table, fused layers joined by ``"+"``),
        ``map_side``, ``road_gap``, ``randomization_spearman`` and ``reason`` (one sentence).
    table : pandas.DataFrame
        ``table`` plus ``passes_randomization``, ``beats_random`` and ``chosen``.

    Examples
    --------
    >>> import pandas as pd
    >>> table = pd.DataFrame({"method": ["gradcam", "layercam", "layercam", "random"],
    ...                       "layer": ["c5", "c5", "c3+c4+c5", ""], "map_side": [2, 2, 8, 64],
    ...                       "road_gap": [0.20, 0.10, 0.19, 0.01],
    ...                       "randomization_spearman": [0.95, 0.6, 0.5, float("nan")],
    ...                       "seconds_per_image": [0.1, 0.2, 0.4, float("nan")]})
    >>> choice, _ = choose_map_method(table)
    >>> choice["method"], choice["layer"]
    ('layercam', 'c3+c4+c5')
    """
    needed = {"method", "layer", "map_side", "road_gap", "randomization_spearman", "seconds_per_image"}
    if not isinstance(table, pd.DataFrame) or not needed <= set(table.columns) or not (table["method"] == "random").any():
        raise param_error("choose_map_method", "table", "the DataFrame compare_layers returns (with its 'random' row)",
                          table)
    check_param("choose_map_method", "max_randomization", max_randomization, Interval("real", 0, 1, closed="right"))
    check_param("choose_map_method", "tie", tie, Interval("real", 0, None))
    chance = float(table.loc[table["method"] == "random", "road_gap"].iloc[0])
    table = table.copy()
    candidates = table["method"] != "random"
    skipped = table.attrs.get("randomization_skipped")
    table["passes_randomization"] = candidates & (
        bool(skipped) | (table["randomization_spearman"].fillna(1.0) < max_randomization))
    check = (f"the randomization check (Spearman < {max_randomization})" if not skipped else
             "the randomization check (skipped: the model has Lambda or custom layers and cannot be copied)")
    table["beats_random"] = candidates & (table["road_gap"] > chance)
    eligible = table[table["passes_randomization"] & table["beats_random"]]
    if len(eligible):
        best_gap = eligible["road_gap"].max()
        close = eligible[eligible["road_gap"] >= best_gap - tie]
        index = close.sort_values(["map_side", "seconds_per_image"], ascending=[False, True]).index[0]
        row = table.loc[index]
        tied = f"; the finest map among gaps within {tie} of the best" if len(close) > 1 else ""
        reason = (f"{row['method']} on {row['layer']} has the largest ROAD gap ({row['road_gap']:.3f}, random maps "
                  f"{chance:.3f}{tied}) among the {len(eligible)} of {int(candidates.sum())} candidates that pass "
                  f"{check} and beat random maps.")
    else:
        fallback = table[candidates & (table["method"] == "gradcam")]
        index = fallback.index[0] if len(fallback) else table[candidates].index[0]
        row = table.loc[index]
        reason = (f"no candidate both passes {check} and beats "
                  f"random maps (ROAD gap {chance:.3f}); {row['method']} on {row['layer']} is kept as the "
                  "conventional default, and its maps should be read with that caution.")
    table["chosen"] = table.index == index
    choice = {"method": row["method"], "layer": row["layer"], "map_side": int(row["map_side"]),
              "road_gap": float(row["road_gap"]), "randomization_spearman": float(row["randomization_spearman"]),
              "reason": reason}
    return choice, table


#: CAM methods :func:`choose_map` compares by default: one weight per channel, and per position.
MAP_CHOICE_METHODS = ("gradcam", "layercam", "hirescam")


def choose_map(model, images=None, *, target="predicted", methods=MAP_CHOICE_METHODS, seed=0,
               not_measured="no images given"):
    """The explain stage's whole map choice for one model: which method, which layers, and why.

    Every method of ``methods`` on every layer set of :func:`layer_candidates` (each
    stage output alone, then all fused) is scored by :func:`compare_layers` (ROAD,
    deletion, and the randomization check of every weighted layer after the map's own,
    ``n_randomized="downstream"``), and one is chosen by :func:`choose_map_method`.
    Without images nothing is measured and Grad-CAM on the last stage is the choice.

    Parameters
    ----------
    model : keras.Model
    images : array-like of shape (n_samples, H, W, 3), default=None
        Images to measure on (the explain stage takes its gallery's first
        ``explain.layer_choice_images``); None measures nothing.
    target : {"pneumonia", "normal", "predicted"} or array-like of bool of shape (n_samples,)
        As in :func:`compare_layers`.
    methods : sequence of str, default=MAP_CHOICE_METHODS
        Drawn from :data:`CAM_METHODS`.
    seed : int, default=0
    not_measured : str, default="no images given"
        Why nothing was measured, for the reason when ``images`` is None.

    Returns
    -------
    choice : dict
        As :func:`choose_map_method`'s (``method``, ``layer``, ``map_side``, ``road_gap``,
        ``randomization_spearman``, ``reason``; unmeasured: the first three and
        ``reason``), plus ``fused`` (bool), ``stages`` (the chosen layers as stage
        indices counted from the last, -1 = last, so members of other architectures map
        the choice onto their own layers with :func:`chosen_layers`) and ``n_images``.
    table : pandas.DataFrame or None
        The scored :func:`compare_layers` table with ``chosen``; None when unmeasured.

    Examples
    --------
    >>> import keras
    >>> inputs = keras.Input((16, 16, 3), name="image")
    >>> h = keras.layers.Conv2D(4, 3, padding="same", name="conv_a")(inputs)
    >>> h = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="conv_b")(h)
    >>> out = keras.layers.Dense(1, activation="sigmoid", name="prediction")(
    ...     keras.layers.GlobalAveragePooling2D()(h))
    >>> choice, table = choose_map(keras.Model(inputs, out))
    >>> choice["method"], choice["layer"], choice["stages"], table is None
    ('gradcam', 'conv_b', [-1], True)
    """
    _seed("choose_map", seed)
    stages = fusion_layers(model)
    if images is None:
        choice, table = {"method": "gradcam", "layer": stages[-1], "map_side": int(feature_map_size(model)[0]),
                         "reason": f"not measured ({not_measured}): Grad-CAM on the last convolutional layer, "
                                   "the conventional default."}, None
    else:
        table = compare_layers(model, images, layer_candidates(model), methods=methods, target=target,
                               n_randomized=DOWNSTREAM, seed=seed)
        choice, table = choose_map_method(table)
    chosen = [stages.index(name) - len(stages) for name in choice["layer"].split("+")]
    n_images = 0 if table is None else len(images)
    return {**choice, "fused": len(chosen) > 1, "stages": chosen, "n_images": n_images}, table


def chosen_layers(model, choice):
    """``model``'s layers at the stages of a :func:`choose_map` choice; fewer stages give its finest instead.

    Parameters
    ----------
    model : keras.Model
    choice : dict
        The choice of :func:`choose_map` (its ``stages``), made on this or another member.

    Returns
    -------
    tuple of str
        Layer names for :func:`gradcam`'s ``layers=``.

    Examples
    --------
    >>> import keras
    >>> inputs = keras.Input((8, 8, 3))
    >>> h = keras.layers.Conv2D(2, 3, name="only_stage")(inputs)
    >>> model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(keras.layers.Flatten()(h)))
    >>> chosen_layers(model, {"stages": [-3, -1]})  # a choice fused over three stages; this member has one
    ('only_stage',)
    """
    stages = fusion_layers(model)
    return tuple(dict.fromkeys(stages[max(stage, -len(stages))] for stage in choice["stages"]))
