"""Stage 5: failure slices of the ensemble and of each member on the test split."""

import time

from .. import _io
from ._common import DISPLAY_SIZE, evaluation_record, load_table, logger, member_dirs, member_kind_of


def slices_stage(run, config):
    """Failure slices of the primary ensemble and of each member on the test split.

    Slice columns: image characteristics (at 224 px, with lung masks), subtype,
    patient image count, member disagreement, confidence bin, k-means clusters of the
    members' penultimate-layer embeddings, and off-lung attention when the explain
    stage has produced it. Writes ``tables/failure_slices.csv``,
    ``tables/member_failure_slices.csv``, ``tables/slice_features.csv`` and figures.

    Returns
    -------
    pandas.DataFrame
        The failure slices, findings first.
    """
    from ..data import load_images
    from ..slices import find_failure_slices, member_failure_slices

    started = time.perf_counter()
    slices_cfg = config["slices"]
    predictions, record = evaluation_record(run)
    names = record["members"]
    y = predictions["label"].to_numpy()
    P = predictions[[f"p[{name}]" for name in names]].to_numpy()
    p_ens = predictions[f"p[{record['primary']}]"].to_numpy()
    threshold = record["thresholds"][record["primary"]]
    images = load_images(predictions["path"], DISPLAY_SIZE)
    frame = _slice_frame(run, config, predictions, images, P, p_ens)
    options = dict(threshold=threshold, min_size=slices_cfg["min_size"], max_order=slices_cfg["max_order"],
                   alpha=slices_cfg["alpha"])
    found = find_failure_slices(frame, y, p_ens, **options)
    _io.write_csv(run.table("failure_slices.csv"), found.drop(columns=["conditions"], errors="ignore"), index=False)
    per_member = member_failure_slices(frame, y, P, p_ens, names, **options)
    _io.write_csv(run.table("member_failure_slices.csv"),
                  per_member.drop(columns=["conditions"], errors="ignore"), index=False)
    _slice_figures(run, found, frame, images, y, p_ens, threshold, predictions["path"])
    n_findings = int(found["finding"].sum()) if len(found) else 0
    logger.info("slices: %d slices tested-and-kept, %d significant after BH correction, %.1f s", len(found),
                n_findings, time.perf_counter() - started)
    return found


def _slice_frame(run, config, predictions, images, P, p_ens):
    """The slicing table: image features with lung masks, metadata, member disagreement, embedding clusters,
    and off-lung attention when the explain stage has run."""
    from ..lungs import lung_mask
    from ..slices import slice_frame

    table = load_table(run)
    test_rows = table[table["role"] == "test"].set_index("path").loc[predictions["path"]].reset_index()
    embeddings = _embeddings(run, config, test_rows)
    frame = slice_frame(test_rows[["path", "split", "label", "label_name", "patient_id", "subtype"]],
                        images=images, masks=lung_mask(images), member_probs=P, ensemble_prob=p_ens,
                        embeddings=embeddings, zone_scores=_off_lung_scores(run, predictions["path"]),
                        n_clusters=config["slices"]["n_clusters"], seed=0)
    _io.write_csv(run.table("slice_features.csv"), frame.assign(path=predictions["path"]), index=False)
    return frame


def _embeddings(run, config, test_rows):
    """Activations of ``slices.embedding_layer`` of the model members that have it, or None."""
    from ..models import load_member
    from ..predict import predict_embeddings

    layer = config["slices"]["embedding_layer"]
    if layer is None:
        return None
    imported = {m["name"] for m in config["members"] if m["imported"]}
    # Members pneumoxai trained all have the head's layers; an imported model is checked.
    dirs = [d for d in member_dirs(run, config) if member_kind_of(d) == "model"
            and (d.name not in imported or layer in {lyr.name for lyr in load_member(d)[0].layers})]
    if not dirs:
        logger.info("slices: no member has the embedding layer %r; the 'cluster' column is left out", layer)
        return None
    return predict_embeddings(dirs, test_rows, layer=layer, cache_dir=run.cache("embeddings"))


def _off_lung_scores(run, paths):
    zones = run.read_table("zone_attention_all.csv", columns=("path", "off_lung_attention"))
    if zones is None or not set(paths) <= set(zones["path"]):
        return None
    return {"off_lung_attention": zones.set_index("path").loc[paths, "off_lung_attention"].to_numpy()}


def _slice_figures(run, found, frame, images, y, p_ens, threshold, paths):
    from .. import figures

    errors = (p_ens >= threshold).astype(int) != y
    if len(found):
        figures.plot_slice_error_rates(found, top=10, overall_rate=float(errors.mean()),
                                       path=run.figure_stem("slices_top"))
        figures.plot_slice_examples(found, frame, images, maps=_load_test_maps(run, paths), y_true=y, y_prob=p_ens,
                                    threshold=threshold, top=4, n_examples=4, path=run.figure_stem("slices_examples"))
    figures.plot_feature_distributions(frame, y, p_ens, threshold=threshold, path=run.figure_stem("slices_features"))


def _load_test_maps(run, paths):
    """Grad-CAM maps of the whole test split from the explain stage, at DISPLAY_SIZE, or None."""
    from ..explain import resize_maps

    path = run.maps("gradcam_test.npz")
    if not path.exists():
        return None
    data = _io.load_npz(path)
    index = {p: i for i, p in enumerate(data["paths"].astype(str))}
    if not set(paths) <= set(index):
        return None
    return resize_maps(data["maps"][[index[p] for p in paths]], DISPLAY_SIZE)
