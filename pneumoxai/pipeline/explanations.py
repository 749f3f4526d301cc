"""Stage 4: class-activation and SHAP maps of the ensemble's errors, zone attention, faithfulness."""

import time
import warnings
from typing import NamedTuple

import numpy as np
import pandas as pd

from .. import _io
from ..errors import ConfigError
from ..run_folder import (EXPLAIN_MAPS_FILE, EXPLAIN_SUMMARY_TABLE, LAYER_CHOICE_RECORD, LAYER_CHOICE_TABLE,
                          TEST_MAPS_FILE, TEST_MAPS_INDEX, ZONE_ATTENTION_ALL_TABLE, ZONE_ATTENTION_TABLE)
from ._common import (DISPLAY_SIZE, PackedMasks, best_model_member, evaluation_record, load_table, logger,
                      pack_masks, run_members)


def explain_stage(run, config, *, methods=None, max_images=None):
    """Class-activation and SHAP maps of the primary ensemble's errors on the test split.

    - Layer choice by measurement: on the best model member and the first
      ``explain.layer_choice_images`` of the gallery images (false negatives, false
      positives and correct calls in turn), Grad-CAM and the configured CAM methods, each
      on every stage output of :func:`~pneumoxai.explain.fusion_layers` alone and fused
      over them, are scored for faithfulness (ROAD) and the model-randomization check,
      and one is chosen by a fixed rule (``tables/layer_choice.csv`` / ``.json``, with
      the reason).
    - Every test image gets the ensemble's chosen map of its predicted class (the class
      that drove the call) and its lung-zone attention shares
      (``tables/zone_attention_all.csv``; ``maps/test_maps.npy``, written a chunk at a
      time, with ``maps/test_maps.npz`` naming its rows): the slices stage
      uses the off-lung share as a slicing column and the maps per failure slice.
    - False negatives, false positives and a class-matched sample of correct calls
      (``explain.max_images`` in all) get every configured method (ensemble maps are
      member maps averaged with the soft-voting weights; the SHAP map of the ensemble is
      the mean of the members' logit SHAP maps, an approximation since SHAP values of
      an averaged probability are not the average of logit attributions), saved to
      ``maps/explain.npz`` with ``tables/zone_attention.csv``.
    - Faithfulness for the best member: deletion AUC and ROAD gap of its chosen maps
      against random maps, as the layer choice measured them (``tables/explain_summary.csv``).
    """
    from ..explain import shared_models
    from ..outcomes import explanation_sample
    from .sharding import sharded_test_split

    started = time.perf_counter()
    explain_cfg = config["explain"]
    predictions, record = evaluation_record(run)
    y = predictions["label"].to_numpy()
    p_ens = predictions[f"p[{record['primary']}]"].to_numpy()
    threshold = record["thresholds"][record["primary"]]
    predicted = (p_ens >= threshold).astype(int)
    members = run_members(run, config)
    model_members = [member for member in members if member.is_model]
    if not model_members:
        raise ConfigError("explain: every member is an imported predictions file; maps need models "
                          "(import a .keras model, or leave the stage out with `pneumoxai run --skip explain`).")
    left_out = sorted(member.name for member in members if not member.is_model)
    if left_out:
        logger.info("explain: member(s) %s are prediction files; the maps come from the model members only",
                    ", ".join(left_out))
    member_models = [member.load() for member in model_members]
    _check_explainable(member_models)
    paths = predictions["path"].tolist()
    chosen = explanation_sample(y, predicted, max_images or explain_cfg["max_images"], seed=explain_cfg["seed"])
    # Only the explained sample is held as images; the whole split is read in chunks.
    sample = _ImagesBySize([paths[i] for i in chosen], interpolation=config["data"]["interpolation"])
    best = best_model_member(run, config, required=f"run `{run.command('evaluate')}` first")
    best_model = member_models[model_members.index(best)]
    # A sharded analysis has measured the choice and mapped the test split in its shards already.
    sharded = sharded_test_split(run, config, paths, chosen)
    # Every method and layer set of a member explains through one logit model of it.
    with shared_models():
        if sharded is None:
            choice, choice_table = _choose_test_split_map(run, explain_cfg, best.name, best_model, sample,
                                                          predicted[chosen].astype(bool))
        else:
            choice, choice_table = sharded[:2]
        split = _test_split_maps(run, member_models, paths, y, predicted, choice,
                                 interpolation=config["data"]["interpolation"],
                                 chunk_size=config["evaluate"]["chunk_size"],
                                 sharded_maps=None if sharded is None else sharded[2])
        subset_maps = _gallery_maps(run, config, member_models, sample, predicted[chosen].astype(bool),
                                    methods or explain_cfg["methods"])
        _write_gallery(run, paths, chosen, y, predicted, subset_maps, split.masks[chosen])
    _faithfulness_summary(run, best.name, split.zones, predicted != y, split.lung_fraction, len(paths), choice,
                          choice_table)
    _explain_figures(run, sample.at(DISPLAY_SIZE), chosen, subset_maps, split, y, p_ens, threshold)
    logger.info("explain: %d images x %d methods, all %d test images with %s, %.1f s", len(chosen),
                len(subset_maps), len(paths), map_label(choice), time.perf_counter() - started)


#: Below this input side a ResNet50's last convolutional map is 1x1 and every class-activation map is constant.
MIN_EXPLAIN_SIZE = 64


def too_small_to_explain(config):
    """pneumoxai's own members below MIN_EXPLAIN_SIZE; an imported model's maps are checked in the stage."""
    return [m["name"] for m in config["members"] if m["image_size"] < MIN_EXPLAIN_SIZE and not m["imported"]]


def _check_explainable(member_models):
    from ..explain import feature_map_size

    flat = [(m.name, feature_map_size(m)) for m in member_models]
    too_coarse = [f"{name} ({h}x{w})" for name, (h, w) in flat if min(h, w) < 2]
    if too_coarse:
        raise ConfigError(f"explain: the last convolutional map of member(s) {', '.join(too_coarse)} is 1 pixel "
                          f"wide, so every class-activation map is constant; train with image_size >= "
                          f"{MIN_EXPLAIN_SIZE}, or leave the stage out (pneumoxai run --skip explain).")


class _ImagesBySize:
    """A few images (the explained sample), decoded once per input size."""

    def __init__(self, paths, interpolation="auto"):
        self.paths, self.interpolation = paths, interpolation
        self._decoded = {}

    def at(self, size):
        from ..data import load_images

        if size not in self._decoded:
            self._decoded[size] = load_images(self.paths, size, interpolation=self.interpolation)
        return self._decoded[size]

    def for_models(self, models):
        """``{input side: images}`` for every input side among ``models``."""
        return {int(m.input_shape[1]): self.at(int(m.input_shape[1])) for m in models}


#: Map methods the whole test split can be explained with (one ensemble map per image).
TEST_SPLIT_METHODS = ("gradcam", "gradcam++", "layercam", "hirescam")


def _choose_test_split_map(run, explain_cfg, member_name, model, images, target):
    """Measure the candidate maps on the best member and pick one by :func:`explain.choose_map`.

    Candidates: Grad-CAM and the configured methods of :data:`TEST_SPLIT_METHODS`, each on
    every layer set of :func:`explain.layer_candidates` (every stage alone, then fused). Writes
    ``tables/layer_choice.csv`` (every candidate's scores) and ``tables/layer_choice.json``
    (the choice and its reason); with ``explain.layer_choice_images: 0`` nothing is
    measured and Grad-CAM on the last layer is recorded as an unmeasured default. Returns the
    choice and the scored table (None when nothing was measured).
    """
    from ..explain import choose_map

    n_images = min(explain_cfg["layer_choice_images"], len(target))
    methods = [m for m in TEST_SPLIT_METHODS if m == "gradcam" or m in explain_cfg["methods"]]
    x = images.at(int(model.input_shape[1]))[:n_images] if n_images else None
    choice, table = choose_map(model, x, target=target[:n_images], methods=methods, seed=explain_cfg["seed"],
                               not_measured="explain.layer_choice_images is 0")
    if table is not None:
        _io.write_csv(run.table(LAYER_CHOICE_TABLE), table, index=False)
    choice = {**choice, "member": member_name}
    _io.write_json(run.table(LAYER_CHOICE_RECORD), choice)
    logger.info("explain: test-split maps by %s on %s (%s)", choice["method"], choice["layer"], choice["reason"])
    return choice, table


def map_label(choice):
    """Display name of the chosen test-split map, e.g. "LayerCAM (fused)" or "HiResCAM (conv3_block4_out)"."""
    from ..explain import METHOD_NAMES

    if choice["fused"] or choice["stages"] == [-1]:
        return _method_label(choice["method"], fused=choice["fused"])
    return f"{METHOD_NAMES[choice['method']]} ({choice['layer']})"


def chosen_maps(member_models, images, predicted, choice):
    """The ensemble map of the chosen method and layers of each image's predicted class, at DISPLAY_SIZE.

    ``images`` holds the images at each member's input side (``{side: array}``, as
    :func:`~pneumoxai.explain.ensemble_gradcam` takes them); each image's map depends on it
    alone, so the test split can be mapped in parts (the shards of a sharded analysis).
    """
    from ..explain import chosen_layers, ensemble_gradcam

    return ensemble_gradcam(member_models, images, method=choice["method"], layers=lambda m: chosen_layers(m, choice),
                            target=np.asarray(predicted).astype(bool), size=DISPLAY_SIZE)[0]


#: Whether the test-split maps are signed: they are CAMs, in [0, 1] (``MapExplainer.signed`` is False for each),
#: so their readers need not scan every map for a negative value.
SPLIT_MAPS_SIGNED = False


class SplitMaps(NamedTuple):
    """The chosen map of every test image, what is measured on it, and the sums the figures need."""

    #: The maps at DISPLAY_SIZE, float16, shape (n, H, W): ``maps/test_maps.npy`` on disk, read by rows.
    maps: _io.NpyRows
    #: :func:`pneumoxai.explain.zone_attention` of each map, with the image's path first.
    zones: pd.DataFrame
    #: The lung masks, bool of shape (n, H, W), kept packed 8 pixels a byte and unpacked by rows when indexed.
    masks: PackedMasks
    #: Mean lung-mask share of the image area over the split.
    lung_fraction: float
    #: ``{outcome group: (mean image, mean map)}``, each of shape (H, W), for the groups with images.
    group_means: dict


def _test_split_maps(run, member_models, paths, y, predicted, choice, *, interpolation, chunk_size,
                     sharded_maps=None):
    """The chosen ensemble map of the predicted class for every test image (``sharded_maps``, float32 of shape
    (n, DISPLAY_SIZE, DISPLAY_SIZE) read by rows, when the shards of a sharded analysis computed them), and its
    zone attention.

    The images are decoded ``chunk_size`` at a time (at each member's input side and at
    DISPLAY_SIZE for the lung masks) and each chunk's maps are written to ``maps/test_maps.npy``
    (float16) before the next is read, so neither the images nor the maps of the split are held
    at once; the maps equal those of the whole split mapped at once (each image's map depends on
    that image only).
    """
    from ..data import load_images
    from ..explain import zone_attention
    from ..lungs import lung_mask, warn_fallback
    from ..outcomes import outcome_groups

    sizes = sorted({int(m.input_shape[1]) for m in member_models})
    groups = outcome_groups(y, predicted, threshold=0.5)
    zones, packed, n_fallback, n_lung = [], [], 0, 0
    sums = {}
    path = run.maps(TEST_MAPS_FILE)
    # Each chunk's maps go to disk as they are made: memory holds one chunk of maps, whatever the split's size.
    with _io.npy_rows_writer(path, (len(paths), DISPLAY_SIZE, DISPLAY_SIZE), np.float16,
                             index_path=run.maps(TEST_MAPS_INDEX), paths=np.array(paths, dtype=str),
                             method=np.array(map_label(choice)), signed=np.array(SPLIT_MAPS_SIGNED)) as write_maps:
        for start in range(0, len(paths), chunk_size):
            chunk = paths[start:start + chunk_size]
            display = load_images(chunk, DISPLAY_SIZE, interpolation=interpolation)
            with warnings.catch_warnings():  # one fallback warning for all chunks, below
                warnings.simplefilter("ignore", UserWarning)
                masks, fallback = lung_mask(display, return_fallback=True)
            n_fallback, n_lung = n_fallback + int(fallback.sum()), n_lung + int(masks.sum())
            if sharded_maps is None:
                images = {size: display if size == DISPLAY_SIZE
                          else load_images(chunk, size, interpolation=interpolation) for size in sizes}
                chunk_maps = chosen_maps(member_models, images, predicted[start:start + chunk_size], choice)
            else:
                chunk_maps = sharded_maps[start:start + chunk_size]
            zones.append(zone_attention(chunk_maps, masks))
            write_maps(chunk_maps)
            packed.append(pack_masks(masks))
            for group in np.unique(groups[start:start + chunk_size]):
                at = groups[start:start + chunk_size] == group
                image_sum, map_sum, n = sums.get(group, (0.0, 0.0, 0))
                sums[group] = (image_sum + display[at].mean(axis=3, dtype=np.float64).sum(axis=0),
                               map_sum + chunk_maps[at].sum(axis=0, dtype=np.float64), n + int(at.sum()))
    warn_fallback(n_fallback, len(paths), stacklevel=3)
    zones_all = pd.concat(zones, ignore_index=True).rename_axis(zones[0].index.name)
    zones_all.insert(0, "path", paths)
    _io.write_csv(run.table(ZONE_ATTENTION_ALL_TABLE), zones_all, index=False)
    return SplitMaps(_io.NpyRows(path), zones_all, PackedMasks(np.concatenate(packed), (DISPLAY_SIZE,) * 2),
                     n_lung / (len(paths) * DISPLAY_SIZE ** 2),
                     {group: (image_sum / n, map_sum / n) for group, (image_sum, map_sum, n) in sums.items()})


def _method_label(method, *, fused):
    from ..explain import METHOD_NAMES

    return f"{METHOD_NAMES[method]} (fused)" if fused else METHOD_NAMES[method]


# Maps fused over several layers (finer than the last block's), the others from the last block.
_FUSED_METHODS = ("layercam", "hirescam")


def _gallery_maps(run, config, member_models, images, target, methods):
    """``{method label: ensemble maps at DISPLAY_SIZE}`` for the gallery images.

    The gradient CAM methods come from one forward and backward pass per member and batch.
    """
    from ..explain import ensemble_gradcam, resize_maps, saliency
    from ..explain.ensemble import _ensemble_gradient_cams

    shared = [method for method in methods if method in ("gradcam", "gradcam++", *_FUSED_METHODS)]
    shared_maps = dict(zip(shared, _ensemble_gradient_cams(
        member_models, images.for_models(member_models),
        [(method, "auto" if method in _FUSED_METHODS else None) for method in shared],
        target=target, size=DISPLAY_SIZE))) if shared else {}
    maps = {}
    for method in methods:
        if method in shared_maps:
            maps[_method_label(method, fused=method in _FUSED_METHODS)] = shared_maps[method]
        elif method == "scorecam":
            maps[_method_label(method, fused=False)] = ensemble_gradcam(
                member_models, images.for_models(member_models), method=method, target=target, size=DISPLAY_SIZE)[0]
        elif method == "shap":
            maps["SHAP"] = _ensemble_shap(run, config["explain"], member_models, images, target)
        elif method == "saliency":
            maps["Saliency"] = np.mean([resize_maps(saliency(m, images.at(int(m.input_shape[1])), target=target),
                                                    DISPLAY_SIZE) for m in member_models], axis=0)
    return maps


def _ensemble_shap(run, explain_cfg, member_models, images, target):
    """Mean of the members' logit SHAP maps, each against a class-balanced background of training images
    (of validation images when the run has none, as after an import from lists; the log says so)."""
    from ..data import load_images
    from ..explain import background_sample, resize_maps, shap_maps

    table = load_table(run)
    rows = table[table["role"] == "train"]
    if rows.empty:
        rows = table[table["role"] == "val"]
        logger.info("explain: SHAP background from the %d validation images (the run has no training images)",
                    len(rows))
    pool = rows.sample(n=min(len(rows), 20 * explain_cfg["shap_background"]), random_state=explain_cfg["seed"])
    per_member, backgrounds = [], {}
    for model in member_models:
        size = int(model.input_shape[1])
        if size not in backgrounds:  # members of one input size share the decoded pool's sample
            backgrounds[size] = background_sample(load_images(pool["path"], size), pool["label"].to_numpy(),
                                                  n=explain_cfg["shap_background"], seed=explain_cfg["seed"])
        background = backgrounds[size]
        maps = shap_maps(model, images.at(size), background, n_samples=explain_cfg["shap_samples"], target=target,
                         seed=explain_cfg["seed"])
        per_member.append(resize_maps(maps, DISPLAY_SIZE))
    return np.mean(per_member, axis=0).astype(np.float32)


def _write_gallery(run, paths, chosen, y, predicted, subset_maps, chosen_masks):
    from ..explain import zone_attention
    from ..outcomes import outcome_groups

    group = outcome_groups(y[chosen], predicted[chosen], threshold=0.5)
    chosen_paths = [paths[i] for i in chosen]
    arrays = {f"map_{i}": maps for i, maps in enumerate(subset_maps.values())}
    _io.save_npz(run.maps(EXPLAIN_MAPS_FILE), paths=np.array(chosen_paths, dtype=str), group=group.astype(str),
                 methods=np.array(list(subset_maps), dtype=str), **arrays)
    zone_rows = []
    for label, maps in subset_maps.items():
        shares = zone_attention(np.clip(maps, 0, None), chosen_masks)
        shares.insert(0, "method", label)
        shares.insert(0, "group", group)
        shares.insert(0, "path", chosen_paths)
        zone_rows.append(shares)
    _io.write_csv(run.table(ZONE_ATTENTION_TABLE), pd.concat(zone_rows, ignore_index=True), index=False)


def _faithfulness_summary(run, best_name, zones_all, errors, lung_fraction, n_images, choice, choice_table):
    """Off-lung attention of errors vs correct calls; the chosen map's faithfulness from the layer choice's table.

    The deletion AUC and ROAD gap are the ones the choice measured on the best model member (and
    random maps on the same images), so the stage does not compute them twice.
    """
    off_lung = zones_all["off_lung_attention"]
    label = map_label(choice)
    rows = [
        {"measure": f"off_lung_attention ({label}, ensemble), errors", "value": off_lung[errors].mean(),
         "n": int(errors.sum())},
        {"measure": f"off_lung_attention ({label}, ensemble), correct", "value": off_lung[~errors].mean(),
         "n": int((~errors).sum())},
    ]
    if choice_table is not None:
        chosen = choice_table[choice_table["chosen"]].iloc[0]
        chance = choice_table[choice_table["method"] == "random"].iloc[0]
        rows += [
            {"measure": f"deletion AUC, {label} of {best_name} (lower = more faithful)",
             "value": float(chosen["deletion_auc"]), "n": choice["n_images"]},
            {"measure": f"deletion AUC, random maps, {best_name}", "value": float(chance["deletion_auc"]),
             "n": choice["n_images"]},
            {"measure": f"ROAD gap, {label} of {best_name} (higher = more faithful)",
             "value": float(chosen["road_gap"]), "n": choice["n_images"]},
            {"measure": f"ROAD gap, random maps, {best_name}", "value": float(chance["road_gap"]),
             "n": choice["n_images"]},
        ]
    rows.append({"measure": "lung mask area fraction (test mean)", "value": lung_fraction, "n": n_images})
    _io.write_csv(run.table(EXPLAIN_SUMMARY_TABLE), pd.DataFrame(rows), index=False)


def _explain_figures(run, display, chosen, subset_maps, split, y, p_ens, threshold):
    from .. import figures

    figures.plot_explanation_gallery(display, subset_maps, y[chosen], p_ens[chosen], threshold=threshold,
                                     n_per_group=3, path=run.figure_stem("gallery"))
    figures.plot_mean_maps(split.maps, y, p_ens, group_means=split.group_means, signed=SPLIT_MAPS_SIGNED,
                           threshold=threshold, path=run.figure_stem("mean_maps"))
    figures.plot_zone_attention(split.zones.drop(columns=["path"]), y, p_ens, threshold=threshold,
                                path=run.figure_stem("zone_attention"))
