"""Stage 5: failure slices of the ensemble and of each member on the test split."""

import time
import warnings
from typing import NamedTuple

import numpy as np
import pandas as pd

from .. import _io
from ..data import DEFAULT_CHUNK_SIZE
from ..errors import RunFolderError
from ..run_folder import (FAILURE_SLICES_TABLE, MEMBER_FAILURE_SLICES_TABLE, SLICE_EXAMPLES_FIGURE,
                          SLICE_EXPLANATIONS_TABLE, SLICE_FEATURES_TABLE, SLICE_MAPS_FILE, TEST_MAPS_FILE,
                          TEST_MAPS_INDEX, ZONE_ATTENTION_ALL_TABLE, slice_examples_figure)
from ._common import (DISPLAY_SIZE, best_model_member, evaluation_record, load_table, logger, pack_masks,
                      PackedMasks, run_members)


def slices_stage(run, config):
    """Failure slices of the primary ensemble and of each member on the test split.

    Slice columns: image characteristics (at 224 px, with lung masks) and the same
    measured per named place (:func:`pneumoxai.regions.region_features`: each corner,
    edge and lung zone), subtype, patient image count, member disagreement, confidence
    bin, k-means clusters of the members' penultimate-layer embeddings, and, when the
    explain stage has mapped the test split, off-lung attention and where each image's
    map peaks by named place (:func:`pneumoxai.regions.peak_features`; a finding named by
    such a place then ranks just above a near-identical one named by a global measure,
    :func:`pneumoxai.regions.prefer_place_names`). Writes
    ``tables/failure_slices.csv``, ``tables/member_failure_slices.csv``,
    ``tables/slice_features.csv`` and figures, one of a few images per significant slice.
    When the explain stage has mapped the test split, each significant slice also gets
    its mean map, its zone attention against correct calls of the same class, the
    faithfulness (deletion AUC) of its maps and whether its errors' calls rest on the
    region their maps point at (:func:`pneumoxai.evidence.region_removal_test` under
    the best model member): ``tables/slice_explanations.csv``,
    ``maps/slice_maps.npz`` and ``figures/slice_maps``.

    Returns
    -------
    pandas.DataFrame
        The failure slices, findings first.
    """
    from ..regions import prefer_place_names
    from ..slices import find_failure_slices, member_failure_slices

    started = time.perf_counter()
    slices_cfg = config["slices"]
    predictions, record = evaluation_record(run)
    names = record["members"]
    y = predictions["label"].to_numpy()
    P = predictions[[f"p[{name}]" for name in names]].to_numpy()
    p_ens = predictions[f"p[{record['primary']}]"].to_numpy()
    threshold = record["thresholds"][record["primary"]]
    test_maps, method = _load_test_maps(run, predictions["path"])
    columns = image_columns(predictions["path"], chunk_size=config["evaluate"]["chunk_size"], maps=test_maps)
    images = _DecodedOnDemand(predictions["path"].tolist())
    frame = _slice_frame(run, config, predictions, columns, P, p_ens)
    options = dict(threshold=threshold, min_size=slices_cfg["min_size"], max_order=slices_cfg["max_order"],
                   alpha=slices_cfg["alpha"], n_bins=slices_cfg["n_bins"])
    found = find_failure_slices(frame, y, p_ens, **options)
    if test_maps is not None:
        found = prefer_place_names(found, frame)
    _io.write_csv(run.table(FAILURE_SLICES_TABLE), found.drop(columns=["conditions"], errors="ignore"), index=False)
    per_member = member_failure_slices(frame, y, P, p_ens, names, **options)
    _io.write_csv(run.table(MEMBER_FAILURE_SLICES_TABLE),
                  per_member.drop(columns=["conditions"], errors="ignore"), index=False)
    _slice_figures(run, found, frame, images, y, p_ens, threshold, test_maps)
    _explain_slices(run, config, found, frame, columns, y, p_ens, threshold, predictions["path"], test_maps, method,
                    record["thresholds"])
    n_findings = int(found["finding"].sum()) if len(found) else 0
    logger.info("slices: %d slices tested-and-kept, %d significant after BH correction, %.1f s", len(found),
                n_findings, time.perf_counter() - started)
    return found


class ImageColumns(NamedTuple):
    """What the slices stage keeps of the test images: one table row per image, and sums."""

    #: :func:`pneumoxai.slices.image_features` with lung masks, shape (n, 12).
    features: pd.DataFrame
    #: :func:`pneumoxai.regions.region_features`, then :func:`~pneumoxai.regions.peak_features` of the maps.
    per_place: pd.DataFrame
    #: Lung masks packed 8 pixels a byte (:func:`numpy.packbits`), shape (n, H * W / 8); None without maps.
    packed_masks: np.ndarray | None
    #: The images' mean, shape (H, W).
    mean_image: np.ndarray
    #: Share of the images whose lung mask covers each pixel, shape (H, W).
    lung_share: np.ndarray

    def masks(self):
        """The lung masks, bool of shape (n, H, W), unpacked by rows when indexed."""
        return PackedMasks(self.packed_masks, self.mean_image.shape)


def image_columns(paths, *, chunk_size=DEFAULT_CHUNK_SIZE, maps=None):
    """The slicing table's image columns, decoding ``chunk_size`` images at DISPLAY_SIZE at a time.

    Equal to computing them on all images at once: lung masks by
    :func:`pneumoxai.lungs.lung_mask` (one fallback warning for all chunks), then
    :func:`pneumoxai.slices.image_features` and :func:`pneumoxai.regions.region_features`
    with those masks, and :func:`pneumoxai.regions.peak_features` of ``maps`` when given.
    Memory holds two chunks of images, whatever the number of files; the masks are kept
    (packed, 1/8 byte a pixel) only when ``maps`` is given, for the slice explanations.

    Parameters
    ----------
    paths : sequence of str
        The test images, every one readable (the prepare stage dropped the others).
    chunk_size : int, default=DEFAULT_CHUNK_SIZE
        Images decoded at once (:func:`pneumoxai.data.iter_images`).
    maps : ndarray or pneumoxai._io.NpyRows of shape (n, DISPLAY_SIZE, DISPLAY_SIZE), default=None
        The explain stage's map of each image (read a chunk of rows at a time).

    Returns
    -------
    ImageColumns
    """
    from ..data import iter_images
    from ..lungs import lung_mask, warn_fallback
    from ..regions import peak_features, region_features
    from ..slices import image_features

    features, per_place, packed = [], [], []
    image_sum = np.zeros((DISPLAY_SIZE, DISPLAY_SIZE))
    mask_sum = np.zeros((DISPLAY_SIZE, DISPLAY_SIZE))
    n_fallback = start = 0
    # Three channels, as before streaming: the channel mean of three equal float32 values is not always the value.
    for images, _ in iter_images(paths, DISPLAY_SIZE, chunk_size=chunk_size):
        with warnings.catch_warnings():  # one fallback warning for all chunks, below
            warnings.simplefilter("ignore", UserWarning)
            masks, fallback = lung_mask(images, return_fallback=True)
        n_fallback += int(fallback.sum())
        features.append(image_features(images, masks=masks))
        places = [region_features(images, masks=masks)]
        if maps is not None:
            places.append(peak_features(maps[start:start + len(images)], masks=masks))
            packed.append(pack_masks(masks))
        per_place.append(pd.concat(places, axis=1))
        image_sum += images.mean(axis=3, dtype=np.float64).sum(axis=0)
        mask_sum += masks.sum(axis=0)
        start += len(images)
    warn_fallback(n_fallback, start, stacklevel=3)
    return ImageColumns(pd.concat(features, ignore_index=True), pd.concat(per_place, ignore_index=True),
                        np.concatenate(packed) if maps is not None else None, image_sum / start, mask_sum / start)


class _DecodedOnDemand:
    """The test images at DISPLAY_SIZE, decoded only when rows are asked for (figures show a few)."""

    def __init__(self, paths):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        from ..data import load_images

        return load_images([self.paths[i] for i in np.atleast_1d(index)], DISPLAY_SIZE)


def _slice_frame(run, config, predictions, columns, P, p_ens):
    """The slicing table: image features with lung masks, the same per named place, metadata, member
    disagreement, embedding clusters, and off-lung attention and where the maps peak, by named place, when the
    explain stage has run."""
    from ..slices import slice_frame

    table = load_table(run)
    test_rows = table[table["role"] == "test"].set_index("path").loc[predictions["path"]].reset_index()
    embeddings = _embeddings(run, config, test_rows)
    frame = slice_frame(test_rows[["path", "split", "label", "label_name", "patient_id", "subtype"]],
                        member_probs=P, ensemble_prob=p_ens, embeddings=embeddings,
                        zone_scores=_off_lung_scores(run, predictions["path"]),
                        n_clusters=config["slices"]["n_clusters"], seed=0)
    # The image features stand where slice_frame(images=...) puts them: after the two metadata columns.
    frame = pd.concat([frame.iloc[:, :2], columns.features, frame.iloc[:, 2:], columns.per_place], axis=1)
    _io.write_csv(run.table(SLICE_FEATURES_TABLE), frame.assign(path=predictions["path"]), index=False)
    return frame


#: Images whose per-image faithfulness is measured for the slice explanations (deletion AUC costs 21 predictions each).
_FAITHFULNESS_IMAGES = 64
#: Errors per explained slice whose calls are tested by removing their maps' region (up to 13 predictions each: before,
#: then each of the walk's six steps and its control).
_REMOVAL_ERRORS = 32
#: Significant slices explained and shown with example images, in the table's order.
_EXPLAINED_SLICES = 10


def _explain_slices(run, config, found, frame, columns, y, p_ens, threshold, paths, maps, method, thresholds):
    """Mean map, zone shift, map faithfulness and region-removal verdict of each significant slice (needs the
    explain stage's maps)."""
    from ..explain import slice_explanations
    from ..figures import plot_slice_maps

    if maps is None or not len(found) or not found["finding"].any():
        why = "no significant slice" if maps is not None else "no maps of the test split (run explain)"
        logger.info("slices: no slice explanations: %s", why)
        return
    faithfulness, removal = _per_image_evidence(run, config, found, frame, maps, y, p_ens, threshold, paths,
                                                thresholds)
    table, mean_maps = slice_explanations(frame, found, maps, columns.masks(), y, p_ens, threshold=threshold,
                                          faithfulness=faithfulness, region_removal=removal,
                                          alpha=config["slices"]["alpha"], max_slices=_EXPLAINED_SLICES)
    _io.write_csv(run.table(SLICE_EXPLANATIONS_TABLE), table, index=False)
    _io.save_npz(run.maps(SLICE_MAPS_FILE), maps=mean_maps.astype(np.float16),
                 slices=table["slice"].to_numpy(dtype=str))
    correct = (p_ens >= threshold).astype(int) == y
    plot_slice_maps(table, mean_maps, background=columns.mean_image, mask=columns.lung_share > 0.5,
                    reference_map=_io.mean_rows(maps, correct), method=method,
                    path=run.figure_stem("slice_maps"))


def _per_image_evidence(run, config, found, frame, maps, y, p_ens, threshold, paths, thresholds):
    """Under the best model member: the deletion AUC of the stored maps (lower = more faithful) for the errors
    of the significant slices and a sample of correct calls (NaN elsewhere), and the region-removal test
    (:func:`pneumoxai.evidence.region_removal_test`) of up to ``_REMOVAL_ERRORS`` errors of each explained
    slice, as the per-image frame ``slice_explanations`` takes; (None, None) without a model member."""
    from ..data import load_images
    from ..evidence import region_removal_test
    from ..explain import deletion_auc, resize_maps
    from ..slices import slice_mask

    best = best_model_member(run, config)
    if best is None:
        return None, None
    model = best.load()
    wrong = (p_ens >= threshold).astype(int) != y
    rng = np.random.default_rng(0)
    slice_errors = [slice_mask(frame, conditions) & wrong
                    for conditions in found.loc[found["finding"].astype(bool), "conditions"]]
    in_slices = np.logical_or.reduce(slice_errors)
    errors = rng.permutation(np.flatnonzero(in_slices))[:_FAITHFULNESS_IMAGES // 2]
    correct = rng.permutation(np.flatnonzero(~wrong))[:_FAITHFULNESS_IMAGES - len(errors)]
    scored = np.sort(np.concatenate([errors, correct]))
    tested = np.unique(np.concatenate([rng.permutation(np.flatnonzero(members))[:_REMOVAL_ERRORS]
                                       for members in slice_errors[:_EXPLAINED_SLICES]]))
    chosen = np.union1d(scored, tested)
    size = int(model.input_shape[1])
    x = load_images([paths[i] for i in chosen], size, interpolation=config["data"]["interpolation"])
    member_maps = resize_maps(maps[chosen], size)
    deletion = np.full(len(y), np.nan)
    at = np.searchsorted(chosen, scored)
    deletion[scored] = deletion_auc(model, x[at], member_maps[at], target=p_ens[scored] >= threshold)
    at = np.searchsorted(chosen, tested)
    result = region_removal_test(model, x[at], member_maps[at], threshold=thresholds[best.name],
                                 alpha=config["slices"]["alpha"])
    removal = pd.DataFrame({column: np.full(len(y), np.nan) for column in ("call_changed", "control_changed",
                                                                           "localised")})
    removal["places"] = None
    for column in ("call_changed", "control_changed", "localised"):
        removal.loc[tested, column] = result[column].astype(float)
    removal.loc[tested, "places"] = result["places"]
    return deletion, removal


def _embeddings(run, config, test_rows):
    """Activations of ``slices.embedding_layer`` of the model members that have it, or None."""
    from ..predict import predict_embeddings

    layer = config["slices"]["embedding_layer"]
    if layer is None:
        return None
    imported = {m["name"] for m in config["members"] if m["imported"]}
    # Members pneumoxai trained all have the head's layers; an imported model is checked.
    members = [member for member in run_members(run, config) if member.is_model
               and (member.name not in imported or layer in member.layer_names())]
    if not members:
        logger.info("slices: no member has the embedding layer %r; the 'cluster' column is left out", layer)
        return None
    return predict_embeddings([member.directory for member in members], test_rows, layer=layer,
                              cache_dir=run.cache("embeddings"), interpolation=config["data"]["interpolation"],
                              chunk_size=config["evaluate"]["chunk_size"])


def _off_lung_scores(run, paths):
    zones = run.read_table(ZONE_ATTENTION_ALL_TABLE, columns=("path", "off_lung_attention"))
    if zones is None or not set(paths) <= set(zones["path"]):
        return None
    return {"off_lung_attention": zones.set_index("path").loc[paths, "off_lung_attention"].to_numpy()}


def _slice_figures(run, found, frame, images, y, p_ens, threshold, maps):
    from .. import figures
    from ..regions import describe_feature, describe_slice

    errors = (p_ens >= threshold).astype(int) != y
    for stale in run.path("figures").glob(f"{SLICE_EXAMPLES_FIGURE}_*"):  # of an earlier run's slices
        stale.unlink()
    if len(found):
        figures.plot_slice_error_rates(found, top=10, overall_rate=float(errors.mean()),
                                       path=run.figure_stem("slices_top"))
        figures.plot_slice_examples(found, frame, images, maps=maps, y_true=y, y_prob=p_ens,
                                    threshold=threshold, top=4, n_examples=4, path=run.figure_stem("slices_examples"))
        significant = found[found["finding"].astype(bool)].head(_EXPLAINED_SLICES)
        for rank, label in enumerate(significant["slice"], start=1):
            figures.plot_slice_examples(significant.iloc[rank - 1:rank], frame, images, maps=maps, y_true=y,
                                        y_prob=p_ens, threshold=threshold, top=1, n_examples=4,
                                        title=describe_slice(label), path=run.figure_stem(slice_examples_figure(rank)))
    # The per-place columns are shown by the slices they define, not as 70 more distributions.
    plain = [column for column in frame.columns if describe_feature(column) == str(column)
             and frame[column].dtype.kind in "iuf" and frame[column].nunique(dropna=True) > 1]
    figures.plot_feature_distributions(frame, y, p_ens, columns=plain, threshold=threshold,
                                       path=run.figure_stem("slices_features"))


def _load_test_maps(run, paths):
    """The explain stage's maps of the whole test split at DISPLAY_SIZE in the order of ``paths`` and the display
    name of their method, or ``(None, None)`` when the stage has not run on these images.

    The maps stay on disk (float16, :class:`pneumoxai._io.NpyRows`) and are read by rows where used; in
    a run folder from before they were stored by rows, ``maps/test_maps.npz`` holds them and they are loaded.
    """
    from ..explain import resize_maps

    index_path = run.maps(TEST_MAPS_INDEX)
    if not index_path.is_file():
        return None, None
    data = _io.load_npz(index_path)
    index = {p: i for i, p in enumerate(data["paths"].astype(str))}
    if not set(paths) <= set(index):
        return None, None
    method = str(data["method"]) if "method" in data else "Grad-CAM"
    rows = [index[p] for p in paths]
    if "maps" in data:
        maps = data["maps"][rows]
        return (maps if maps.shape[1:] == (DISPLAY_SIZE, DISPLAY_SIZE) else resize_maps(maps, DISPLAY_SIZE)), method
    path = run.maps(TEST_MAPS_FILE)
    maps = _io.NpyRows(path) if path.is_file() else None
    if maps is None or len(maps) != len(index):
        raise RunFolderError(f"{path} does not hold the {len(index)} maps {index_path.name} names; re-run the "
                             f"explain stage (`{run.command('explain')}`).")
    # In another order than the explain stage's (not the case in a run), the rows are gathered in memory.
    return (maps if rows == list(range(len(maps))) else maps[rows]), method
