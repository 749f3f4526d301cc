"""The HTML report and terminal summary: self-contained, faithful to the tables, findings only, escaped."""

import base64
import html
import json
from html.parser import HTMLParser

import cv2
import numpy as np
import pandas as pd
import pytest

from pneumoxai import figures
from pneumoxai.figures import _evaluation as _figures_eval
from pneumoxai.figures import _explanations as _figures_explain
from pneumoxai.figures import _slices as _figures_slices
from pneumoxai.figures import _style
from pneumoxai.errors import RunFolderError
from pneumoxai.metrics import results_table
from pneumoxai.report import summary_text, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
VOID = {"meta", "img", "br", "hr", "link", "input"}
EVAL_FIGURES = ("roc", "pr", "confusion", "reliability", "threshold", "diversity", "ensemble_size")
SLICE_FIGURES = ("slices_top", "slices_examples", "slices_features")
EXPLAIN_FIGURES = ("gallery", "mean_maps", "zone_attention")


class _Collector(HTMLParser):
    """Checks nesting and collects tags, ids, links and text."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.tags, self.ids, self.links, self.imgs, self.text = [], [], set(), [], [], []
        self.errors = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "img":
            self.imgs.append(attrs.get("src", ""))
        for key in ("href", "src"):
            if key in attrs and tag != "img":
                self.links.append(attrs[key])
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:]}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def _parse(text):
    parser = _Collector()
    parser.feed(text)
    parser.close()
    return parser


def _png(path, value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(".png", np.full((4, 6), value, np.uint8))
    path.write_bytes(data.tobytes())


def _slice_row(label, *, size, n_fn, n_pos, n_fp, n_neg, q, finding, overall_error=0.3):
    n_errors = n_fn + n_fp
    rate = n_errors / size
    return {"slice": label, "order": 1, "size": size, "n_errors": n_errors, "error_rate": rate,
            "ci_low": rate / 2, "ci_high": min(1.0, rate * 1.5), "n_pos": n_pos, "n_fn": n_fn,
            "fnr": n_fn / n_pos if n_pos else np.nan, "n_neg": n_neg, "n_fp": n_fp,
            "fpr": n_fp / n_neg if n_neg else np.nan, "lift": rate / overall_error, "p_value": q / 10,
            "q_value": q, "finding": finding, "score": 1.0}


def _write_slices(run, rows):
    pd.DataFrame(rows).to_csv(run / "tables" / "failure_slices.csv", index=False)


@pytest.fixture(scope="module")
def results():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 20)
    probs = {"m1": np.clip(0.3 + 0.4 * y + rng.normal(0, 0.2, 40), 0, 1),
             "m2": np.clip(0.35 + 0.3 * y + rng.normal(0, 0.2, 40), 0, 1)}
    probs["soft voting"] = (probs["m1"] + probs["m2"]) / 2
    return results_table(y, probs, threshold={"m1": 0.5, "m2": 0.55, "soft voting": 0.5}, n_boot=20)


@pytest.fixture
def run(tmp_path, results):
    """A small but complete run folder, as the pipeline stages write it."""
    return make_run(tmp_path / "run", results)


def make_run(root, results):
    """Write the small run folder of the ``run`` fixture at ``root``."""
    tables = root / "tables"
    tables.mkdir(parents=True)
    results.to_csv(tables / "results.csv")
    members = [{"name": name, "backbone": "resnet50", "image_size": 224, "weights": "imagenet",
                "balancing": "class_weight", "seed": i, "bootstrap": False, "learning_rate": 1e-3,
                "dense_units": [32], "dropout": 0.5, "epochs_frozen": 3, "epochs_finetune": 2}
               for i, name in enumerate(("m1", "m2"))]
    config = {"data": {"max_per_class": None}, "members": members,
              "evaluate": {"ci": 0.95, "n_boot": 20, "threshold": "youden"}, "slices": {"alpha": 0.05}}
    (root / "config.json").write_text(json.dumps(config))
    (root / "run.json").write_text(json.dumps({"data_root": "/data/chest_xray", "format": 1}))
    (tables / "ensemble.json").write_text(json.dumps({
        "primary": "soft voting", "members": ["m1", "m2"], "best_member": "m1", "temperature": 1.1,
        "thresholds": {"m1": 0.5, "m2": 0.55, "soft voting": 0.5}, "optimized_weights": {"m1": 0.7, "m2": 0.3}}))
    for i, member in enumerate(members):
        (root / "members" / member["name"]).mkdir(parents=True)
        (root / "members" / member["name"] / "card.json").write_text(json.dumps({
            "config": member, "epochs_run": 4, "seconds_per_epoch": 12.5 + i, "n_train": 80,
            "val_metrics": {"roc_auc": 0.81 + i / 100, "accuracy": 0.75}}))
    roles = ["train"] * 8 + ["val"] * 4 + ["test"] * 6
    pd.DataFrame({"path": [f"/d/{i}.jpeg" for i in range(18)], "split": ["train"] * 12 + ["test"] * 6,
                  "label": [0, 1] * 9, "label_name": ["NORMAL", "PNEUMONIA"] * 9,
                  "patient_id": [f"p{i}" for i in range(18)], "subtype": ["normal", "virus"] * 9,
                  "role": roles}).to_csv(tables / "dataset.csv", index=False)
    pd.DataFrame([{"model_a": "m1", "model_b": "soft voting", "auc_a": 0.8, "auc_b": 0.82, "auc_diff": -0.02,
                   "auc_p": 0.41, "n_only_a_wrong": 3, "n_only_b_wrong": 1, "mcnemar_p": 0.625,
                   "mcnemar_exact": True}]).to_csv(tables / "comparisons.csv", index=False)
    pd.DataFrame([{"member_a": "m1", "member_b": "m2", "disagreement": 0.2, "yules_q": 0.5,
                   "error_correlation": 0.3, "double_fault": 0.1}]).to_csv(tables / "diversity.csv", index=False)
    pd.DataFrame({"n_members": [1, 2], "added": ["m1", "m2"], "members": ["m1", "m1, m2"],
                  "score": [0.8, 0.83]}).to_csv(tables / "ensemble_size.csv", index=False)
    # Overall for "soft voting": read from results.csv by the report.
    _write_slices(root, [
        _slice_row("subtype == virus", size=10, n_fn=9, n_pos=10, n_fp=0, n_neg=0, q=0.004, finding=True),
        _slice_row("brightness <= 0.2", size=8, n_fn=1, n_pos=2, n_fp=5, n_neg=6, q=0.2, finding=False),
    ])
    pd.DataFrame([{"member": "m2", **_slice_row("subtype == virus", size=10, n_fn=10, n_pos=10, n_fp=0, n_neg=0,
                                                q=0.01, finding=True),
                   "ensemble_error_rate": 0.9, "ensemble_fixes": False}]).to_csv(
        tables / "member_failure_slices.csv", index=False)
    pd.DataFrame({"path": ["a", "b", "c", "a"],
                  "group": ["false_negative", "false_negative", "correct", "false_negative"],
                  "method": ["Grad-CAM"] * 3 + ["SHAP"], "right_upper": [0.1, 0.3, 0.2, 0.9],
                  "off_lung_attention": [0.5, 0.3, 0.1, 0.0]}).to_csv(tables / "zone_attention.csv", index=False)
    pd.DataFrame({"measure": ["off_lung_attention, errors"], "value": [0.25], "n": [7]}).to_csv(
        tables / "explain_summary.csv", index=False)
    for stem in EVAL_FIGURES + SLICE_FIGURES + EXPLAIN_FIGURES:
        _png(root / "figures" / f"{stem}.png")
    return root


#: Rows of the browser run's test split that the primary model gets wrong (planted).
BROWSER_ERRORS = [*range(12), 40, 41]


def add_browser_parts(root):
    """Give a run folder what the browsers read: 48 test images on disk, their predictions, a slicing frame with
    three significant slices and maps (every image by Grad-CAM, four images also by the gallery's methods).

    Slice ``a == x`` holds rows 0-15 (errors 0-11), ``b == x`` rows 2-15 and 20-23 (errors 2-11: Jaccard of the
    errors with a's 10/12), ``c == x`` rows 8-11 and 40-47 (errors 8-11, 40, 41: Jaccard with a's 4/14).
    """
    n, tables = 48, root / "tables"
    y = np.tile([0, 1], n // 2)
    wrong = np.isin(np.arange(n), BROWSER_ERRORS)
    p = np.where(wrong, 1 - y, y) * 0.8 + 0.1 + np.linspace(-0.05, 0.05, n)
    shift = np.random.default_rng(0).uniform(-0.04, 0.04, n)  # members rank differently, their mean is p
    probs = {"m1": p + shift, "m2": p - shift}
    probs["soft voting"] = (probs["m1"] + probs["m2"]) / 2
    results_table(y, probs, threshold=0.5, n_boot=20).to_csv(tables / "results.csv")
    ensemble = json.loads((tables / "ensemble.json").read_text())
    ensemble["thresholds"] = {"m1": 0.5, "m2": 0.5, "soft voting": 0.5}
    (tables / "ensemble.json").write_text(json.dumps(ensemble))
    config = json.loads((root / "config.json").read_text())
    config["slices"] = {"alpha": 0.05, "n_bins": 4}
    (root / "config.json").write_text(json.dumps(config))
    rows = np.arange(n)
    frame = pd.DataFrame({"a": np.where(rows < 16, "x", "y"),
                          "b": np.where((rows >= 2) & (rows < 16) | (rows >= 20) & (rows < 24), "x", "y"),
                          "c": np.where((rows >= 8) & (rows < 12) | (rows >= 40), "x", "y")})
    folder = root.parent / "images"
    folder.mkdir(exist_ok=True)
    paths = [str(folder / f"img{i:02d}.png") for i in range(n)]
    grid = np.linspace(0, 1, 48)
    for i, path in enumerate(paths):
        pixels = np.outer(grid, grid) * 200 + 20
        pixels[40:44, i:i + 4] = 0                             # every image differs
        if frame["a"][i] == "x":
            pixels[4:14, 30:44] = 250                          # the marker of slice a
        cv2.imwrite(path, pixels.astype(np.uint8))
    pd.DataFrame({"path": paths, "label": y, "patient_id": [f"t{i}" for i in range(n)], "subtype": "normal",
                  **{f"p[{name}]": v for name, v in probs.items()}}).to_csv(
        tables / "predictions_test.csv", index=False)
    frame.assign(path=paths).to_csv(tables / "slice_features.csv", index=False)
    slice_rows = []
    for column, finding in (("a", True), ("b", True), ("c", True), ("a", False)):
        level = "x" if finding else "y"
        mask = (frame[column] == level).to_numpy()
        slice_rows.append(_slice_row(f"{column} == {level}", size=int(mask.sum()),
                                     n_fn=int((mask & wrong & (y == 1)).sum()), n_pos=int((mask & (y == 1)).sum()),
                                     n_fp=int((mask & wrong & (y == 0)).sum()), n_neg=int((mask & (y == 0)).sum()),
                                     q=0.001 if finding else 0.5, finding=finding, overall_error=wrong.mean()))
    _write_slices(root, slice_rows)
    yy, xx = np.mgrid[:48, :48]
    blobs = np.exp(-((yy - 10 - rows[:, None, None] % 20) ** 2 + (xx - 30) ** 2) / 60.0)
    (root / "maps").mkdir(exist_ok=True)
    np.savez_compressed(root / "maps" / "test_maps.npz", maps=blobs.astype(np.float16), paths=np.array(paths),
                        method=np.array("Grad-CAM"))
    explained = [0, 1, 20, 30]
    np.savez_compressed(root / "maps" / "explain.npz", paths=np.array([paths[i] for i in explained]),
                        group=np.array(["false_negative", "false_positive", "correct", "correct"]),
                        methods=np.array(["Grad-CAM", "SHAP"]), map_0=blobs[explained],
                        map_1=blobs[explained] - blobs[explained][:, ::-1])
    return root


def _section(text, anchor):
    start = text.index(f'<section id="{anchor}">')
    return text[start:text.index("</section>", start)]


def test_report_is_self_contained_html(run):
    path = write_report(run)
    assert path == run / "report.html"
    text = path.read_text(encoding="utf-8")
    parsed = _parse(text)
    assert parsed.errors == [] and parsed.stack == []
    assert {"html", "head", "body", "table", "img"} <= set(parsed.tags)
    assert not {"link", "iframe"} & set(parsed.tags)
    assert parsed.tags.count("script") == 1  # the inline table script; links below would catch a src
    assert len(parsed.imgs) == len(EVAL_FIGURES + SLICE_FIGURES + EXPLAIN_FIGURES)
    for src in parsed.imgs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)
    for link in parsed.links:
        if link.startswith("#"):
            assert link[1:] in parsed.ids
        else:
            assert "://" not in link and (run / link).exists()
    assert not [p.name for p in run.iterdir() if p.name.startswith(".report.html")]  # atomic: no temp left


def test_results_table_matches_csv(run, results):
    text = write_report(run).read_text(encoding="utf-8")
    section = _section(text, "results")
    row = results.loc["m1"]
    expected = f"{row['roc_auc']:.3f} [{row['roc_auc_low']:.2f}, {row['roc_auc_high']:.2f}]"
    assert expected in section
    primary = results.loc["soft voting"]
    assert f"{primary['accuracy']:.3f} [{primary['accuracy_low']:.2f}, {primary['accuracy_high']:.2f}]" in section
    reported_row = section[section.index('<tr class="reported">'):]
    assert "origin (reported)" in reported_row and "reported, not measured" in reported_row
    assert "0.902" in reported_row and "0.960" in reported_row



def _first_cells(section):
    """The first cell of each body row of the section's first table."""
    body = section[section.index("<tbody>"):section.index("</tbody>")]
    return [row.split("</td>", 1)[0].split(">")[-1] for row in body.split("<tr")[1:]]


def test_a_run_of_one_model_reports_that_model_not_ensembles_of_one(run):
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 20)
    p = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.2, 40), 0, 1)
    combiners = ("soft voting", "soft voting (optimized)", "hard voting", "stacking", "soft voting @0.5")
    table = results_table(y, {"m1": p, **{name: p for name in combiners}}, n_boot=20)
    table.to_csv(run / "tables" / "results.csv")
    ensemble = json.loads((run / "tables" / "ensemble.json").read_text())
    (run / "tables" / "ensemble.json").write_text(json.dumps({**ensemble, "members": ["m1"]}))
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "members": config["members"][:1]}))
    text = write_report(run).read_text(encoding="utf-8")
    assert _first_cells(_section(text, "results")) == ["m1 (primary)", "m1 @0.5", "origin (reported)"]
    assert "voting" not in _section(text, "results") and "stacking" not in _section(text, "results")
    assert "Primary model <strong>m1</strong>" in _section(text, "summary")
    assert "primary model (m1)" in _section(text, "summary")
    summary = summary_text(run)
    assert "m1 *" in summary and "voting" not in summary and "* = primary model" in summary
    assert "soft voting (optimized)" in pd.read_csv(run / "tables" / "results.csv")["model"].tolist()  # disk as is

def test_summary_uses_findings_only(run, results):
    text = write_report(run).read_text(encoding="utf-8")
    summary = _section(text, "summary")
    assert "subtype == virus" in summary and "brightness" not in summary
    assert "mostly as missed pneumonia" in summary
    primary = results.loc["soft voting"]
    overall_fnr = primary["fn"] / (primary["fn"] + primary["tp"])
    assert f"(FNR 0.90 vs {overall_fnr:.2f} overall)" in summary and "q = 0.004" in summary
    terminal = summary_text(run)
    assert "subtype == virus" in terminal and "brightness" not in terminal


@pytest.mark.parametrize("p_rise, verdict", [
    (None, ""),  # a table written before the test existed
    (2e-5, " (a significant rise, one-sided Mann-Whitney p = 2.0e-05)"),
    (0.31, " (no significant rise, one-sided Mann-Whitney p = 0.310)"),
])
def test_a_finding_says_where_its_errors_look(run, p_rise, verdict):
    row = {"slice": "subtype == virus", "n_errors": 9, "n_reference": 5, "errors:off_lung_attention": 0.61,
           "correct:off_lung_attention": 0.34, "off_lung_shift": 0.27, "top_zone_shift": "off_lung_attention",
           "faithfulness_errors": 0.21, "faithfulness_correct": 0.33}
    if p_rise is not None:
        row["off_lung_p"] = p_rise
    pd.DataFrame([row]).to_csv(run / "tables" / "slice_explanations.csv", index=False)
    _png(run / "figures" / "slice_maps.png")
    text = write_report(run).read_text(encoding="utf-8")
    sentence = ("Where they look: their maps put 61% of the attention outside the lung fields, against 34% for "
                f"correct calls of the same class{verdict}; the region gaining most attention is outside the lungs.")
    assert sentence in _section(text, "summary")
    slices = _section(text, "slices")
    assert "Where each failure slice" in slices and "0.27" in slices and "0.210" in slices
    assert ("p (rise)" in slices) == (p_rise is not None)
    assert "Where they look" in " ".join(summary_text(run).split())


_WHERE = {"slice": "subtype == virus", "n_errors": 9, "n_reference": 5, "errors:off_lung_attention": 0.61,
          "correct:off_lung_attention": 0.34, "off_lung_shift": 0.27, "top_zone_shift": "off_lung_attention",
          "off_lung_p": 2e-5, "faithfulness_errors": 0.21, "faithfulness_correct": 0.33}


@pytest.mark.parametrize("p_value, changed, rests, verdict", [
    (0.002, 0.714, True, "the calls rest on the top-right corner, outside both lungs."),
    (0.31, 0.714, False, "the calls do not rest on the top-right corner, outside both lungs more than on any other "
                         "region of its size."),
    # Significant, but under the quarter's excess that "rest on" needs (evidence.removal_verdict).
    (0.008, 0.2, False, "a few calls depend on the top-right corner, outside both lungs, but too few to say the "
                        "calls rest on it (it changes 20% more of them than the same area elsewhere; resting on it "
                        "needs at least 25% more)."),
])
def test_a_finding_says_whether_its_calls_rest_on_the_region_its_maps_point_at(run, p_value, changed, rests, verdict):
    row = {**_WHERE, "removal_n_errors": 9, "removal_n_localised": 7, "removal_localised": True,
           "removal_changes_errors": changed, "removal_changes_control": 0.0, "removal_p": p_value,
           "removal_rests_on_region": rests, "removal_place": "top-right corner, outside both lungs",
           "removal_place_share": 1.0}
    pd.DataFrame([row]).to_csv(run / "tables" / "slice_explanations.csv", index=False)
    text = write_report(run).read_text(encoding="utf-8")
    assert ("the region gaining most attention is outside the lungs. Removing the region their maps point at, the "
            "top-right corner, outside both lungs (the region around each map's peak, from 0.5 of its maximum down to "
            f"0.15 of it, then its highest 2%-20% of pixels, inpainted from its surroundings), changes {changed:.0%} of the 7 calls tested by the best member, "
            "against 0% when the same region is "
            f"removed half the image away (one-sided exact McNemar p = {_p(p_value)}): {verdict}"
            ) in html.unescape(_section(text, "summary"))
    slices = _section(text, "slices")
    assert "Region their maps point at" in slices and "<td>top-right corner, outside both lungs</td>" in slices
    assert f"{changed:.2f}" in slices and "Removing the region under the peak" not in text


def test_regions_scattered_over_several_places_are_not_named_as_one(run):
    row = {**_WHERE, "removal_n_errors": 8, "removal_n_localised": 8, "removal_localised": True,
           "removal_changes_errors": 0.0, "removal_changes_control": 0.125, "removal_p": 1.0,
           "removal_rests_on_region": False, "removal_place": "left middle lung zone", "removal_place_share": 0.25}
    pd.DataFrame([row]).to_csv(run / "tables" / "slice_explanations.csv", index=False)
    summary = html.unescape(_section(write_report(run).read_text(encoding="utf-8"), "summary"))
    assert ("Removing the region each map points at (no one place holds most of them; the left middle lung zone "
            "holds 25%; the region around each map's peak, from 0.5 of its maximum down") in summary
    assert "the calls do not rest on where their maps point more than on any other region of its size." in summary


def _p(value):
    return f"{value:.3f}"


def test_maps_that_do_not_localise_name_no_region(run):
    row = {**_WHERE, "top_zone_shift": "left_lower", "removal_n_errors": 9, "removal_n_localised": 2,
           "removal_localised": False, "removal_changes_errors": 0.5, "removal_changes_control": 0.0,
           "removal_p": 0.25, "removal_rests_on_region": False, "removal_place": None, "removal_place_share": None}
    pd.DataFrame([row]).to_csv(run / "tables" / "slice_explanations.csv", index=False)
    summary = html.unescape(_section(write_report(run).read_text(encoding="utf-8"), "summary"))
    assert ("Their maps do not localise the cause: for 7 of the 9 calls tested, the half-maximum region around the "
            "map's peak covers more than a quarter of the image, so no region is named.") in summary
    _assert_names_no_place(summary)
    assert "<td>not localised</td>" in _section(write_report(run).read_text(encoding="utf-8"), "slices")


def _assert_names_no_place(text):
    from pneumoxai.regions import PLACE_WORDS

    named = [words for words in PLACE_WORDS.values() if words in text]
    assert not named and "gaining most attention" not in text and "rest on" not in text, named


def test_a_global_gamma_shortcut_gets_a_sentence_that_names_no_region(run):
    """From planted model to sentence: a model reading the global gamma, its (flat) gradient maps, the region test,
    the slice verdict and the report."""
    from pneumoxai.evidence import region_removal_test
    from pneumoxai.explain import slice_explanations
    from pneumoxai.slices import find_failure_slices

    rng = np.random.default_rng(0)
    n = 40
    x = np.clip(0.45 + rng.normal(0, 0.05, (n, 32, 32, 1)) * np.ones(3), 0, 1).astype(np.float32)
    gamma = np.arange(n) < 16
    x[gamma] = x[gamma] ** 1.6                                # darker everywhere, nowhere in particular
    y = np.zeros(n, int)

    def reads_gamma(images):
        return 1.0 / (1.0 + np.exp(-80 * (0.36 - images.mean(axis=(1, 2, 3)))))
    p = reads_gamma(x)
    maps = np.ones((n, 32, 32))                               # the gradient of a global mean is flat
    result = region_removal_test(reads_gamma, x, maps, lung_masks=np.zeros((n, 32, 32), bool))
    assert not result["localised"].any()
    removal = pd.DataFrame({k: result[k].astype(float) for k in ("call_changed", "control_changed", "localised")})
    removal["places"] = result["places"]
    frame = pd.DataFrame({"gamma": gamma, "noise": rng.random(n)})
    found = find_failure_slices(frame, y, p, min_size=8, max_order=1)
    masks = np.zeros((n, 32, 32), bool)
    masks[:, 8:28, 4:14] = masks[:, 8:28, 18:28] = True
    table, _ = slice_explanations(frame, found, maps, masks, y, p, region_removal=removal)
    assert table["slice"].iloc[0] == "gamma == True" and not table["removal_localised"].iloc[0]
    table["slice"] = "subtype == virus"                      # the run fixture's finding
    table.to_csv(run / "tables" / "slice_explanations.csv", index=False)
    summary = html.unescape(_section(write_report(run).read_text(encoding="utf-8"), "summary"))
    assert "Their maps do not localise the cause: for 16 of the 16 calls tested" in summary
    _assert_names_no_place(summary)


def test_a_planted_top_right_text_strip_is_a_slice_named_top_right(run):
    """From planted images to words: the strip's place has the highest value of its region feature, the slice
    search cuts on a top-right column, and the summary says top-right in words."""
    import cv2

    from pneumoxai.regions import BORDER_PLACES, region_features
    from pneumoxai.slices import find_failure_slices

    rng = np.random.default_rng(1)
    n = 60
    x = np.clip(0.5 + rng.normal(0, 0.02, (n, 48, 48)), 0, 1).astype(np.float32)
    marked = np.arange(n) < 20
    canvas = np.zeros((48, 48), np.uint8)
    cv2.putText(canvas, "PORT", (31, 10), cv2.FONT_HERSHEY_PLAIN, 0.6, 1, 1)
    x[marked, 2:12, 30:47] = 0.1
    x[marked] = np.where(canvas > 0, 0.9, x[marked])
    lungs = np.zeros((n, 48, 48), bool)
    lungs[:, 16:42, 6:20] = lungs[:, 16:42, 28:42] = True
    features = region_features(np.repeat(x[..., None], 3, axis=-1), masks=lungs)
    for measure in ("edge_density", "dark_area"):
        means = features.loc[marked, [f"{measure}_{place}" for place in BORDER_PLACES]].mean()
        assert means.idxmax() == f"{measure}_top_right", means
    y, p = np.zeros(n, int), np.where(marked, 0.9, 0.1)      # every marked image is a false alarm
    with pytest.warns(UserWarning, match="constant"):
        found = find_failure_slices(features, y, p, min_size=10, max_order=1)
    top = found.iloc[0]
    assert top["finding"] and top["n_errors"] == top["size"] == 20 and "top_right" in top["slice"]
    found.drop(columns="conditions").to_csv(run / "tables" / "failure_slices.csv", index=False)
    summary = html.unescape(_section(write_report(run).read_text(encoding="utf-8"), "summary"))
    assert f"<code>{top['slice']}</code> (" in summary and "in the top-right corner" in summary
    assert "in the top-right corner" in summary_text(run)


def test_each_significant_slice_shows_its_images(run):
    _png(run / "figures" / "slice_examples_1.png")
    _png(run / "figures" / "slice_examples_2.png")           # no second significant slice: not shown
    text = write_report(run).read_text(encoding="utf-8")
    slices = _section(text, "slices")
    assert "Images of each significant slice" in slices
    assert "Slice 1, subtype == virus: a few of its images, errors first" in slices and "Slice 2" not in slices
    assert len(_parse(text).imgs) == len(EVAL_FIGURES + SLICE_FIGURES + EXPLAIN_FIGURES) + 1


def test_no_findings_says_none_survived(run):
    _write_slices(run, [_slice_row("subtype == virus", size=10, n_fn=4, n_pos=10, n_fp=0, n_neg=0, q=0.3,
                                   finding=False)])
    summary = _section(write_report(run).read_text(encoding="utf-8"), "summary")
    assert "No slice survived the Benjamini-Hochberg correction at alpha = 0.05 (1 slices tested)" in summary
    assert "subtype == virus" not in summary
    assert "No slice survived" in summary_text(run)


def test_class_mix_caveat_when_miss_rate_is_not_higher(run, results):
    table = results.copy()
    table.loc["soft voting", ["tn", "fp", "fn", "tp"]] = [20, 0, 10, 10]  # error rate 0.25, FNR 0.50
    table.to_csv(run / "tables" / "results.csv")
    _write_slices(run, [_slice_row("subtype == bacteria", size=10, n_fn=4, n_pos=10, n_fp=0, n_neg=0,
                                   q=0.01, finding=True)])
    summary = _section(write_report(run).read_text(encoding="utf-8"), "summary")
    assert "error rate 0.40 vs 0.25 overall" in summary and "FNR 0.40 vs 0.50 overall" in summary
    assert "miss rate is not above the overall miss rate" in summary


def test_data_strings_are_escaped(run):
    evil = "<script>alert(1)</script>"
    _write_slices(run, [_slice_row(f"name == {evil}", size=10, n_fn=9, n_pos=10, n_fp=0, n_neg=0, q=0.001,
                                   finding=True)])
    text = write_report(run).read_text(encoding="utf-8")
    assert "<script>alert" not in text.lower()
    assert "name == &lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert _parse(text).tags.count("script") == 1  # only the report's own table script


def test_missing_optional_parts_give_not_run_notes(run):
    for path in (run / "figures").glob("gallery*"):
        path.unlink()
    for name in ("mean_maps.png", "zone_attention.png", "roc.png"):
        (run / "figures" / name).unlink()
    for name in ("failure_slices.csv", "member_failure_slices.csv", "zone_attention.csv", "diversity.csv",
                 "explain_summary.csv"):
        (run / "tables" / name).unlink()
    text = write_report(run).read_text(encoding="utf-8")
    assert _parse(text).errors == []
    for anchor, stage in (("slices", "slices"), ("explanations", "explain"), ("zones", "explain"),
                          ("curves", "evaluate"), ("ensemble", "evaluate")):
        section = _section(text, anchor)
        assert "Not run" in section and f"pneumoxai {stage} --run" in section, anchor
    assert "pneumoxai slices --run" in _section(text, "summary")
    assert "not run (pneumoxai slices --run" in summary_text(run)


def test_explanations_and_zone_attention_when_present(run):
    text = write_report(run).read_text(encoding="utf-8")
    explanations = _section(text, "explanations")
    assert "maps of false negatives, false positives and correct calls" in explanations
    assert "<td>off_lung_attention, errors</td><td>0.250</td><td>7</td>" in explanations
    zones = _section(text, "zones")
    # Grad-CAM false negatives: right_upper (0.1 + 0.3) / 2, off-lung (0.5 + 0.3) / 2; SHAP kept apart.
    assert ("<td>Grad-CAM</td><td>false_negative</td><td class=\"num\">2</td><td class=\"num\">0.200</td>"
            "<td class=\"num\">0.400</td>") in zones
    assert "<td>SHAP</td><td>false_negative</td><td class=\"num\">1</td><td class=\"num\">0.900</td>" in zones


def test_imported_members_are_shown_with_what_is_known(run):
    cards = {"m1": {"name": "m1", "kind": "model", "imported": True, "source": "/models/user_cnn.keras",
                    "source_sha256": "ab", "input_size": 128, "preprocess": "caffe", "positive_index": 1},
             "m2": {"name": "m2", "kind": "predictions", "imported": True, "source": "/preds/vendor.csv",
                    "source_sha256": "cd", "format": 1, "n_predictions": 40}}
    config = json.loads((run / "config.json").read_text())
    config["members"] = [{"name": "m1", "imported": True, "image_size": 128}, {"name": "m2", "imported": True}]
    (run / "config.json").write_text(json.dumps(config))
    for name, card in cards.items():
        (run / "members" / name / "card.json").write_text(json.dumps(card))
    members = _section(write_report(run).read_text(encoding="utf-8"), "members")
    assert ("imported model from /models/user_cnn.keras; input 128 px, preprocessing caffe, output 1 is PNEUMONIA"
            in members)
    assert "imported predictions from /preds/vendor.csv (40 images)" in members
    assert "None" not in members


def test_members_and_leakage(run):
    table = pd.read_csv(run / "tables" / "dataset.csv")
    table.loc[table["role"] == "test", "patient_id"] = "p0"  # p0 is also a training patient
    table.to_csv(run / "tables" / "dataset.csv", index=False)
    text = write_report(run).read_text(encoding="utf-8")
    assert "Leakage: 1 patient id(s)" in _section(text, "dataset")
    members = _section(text, "members")
    assert "<td>m2</td>" in members and "0.820" in members and "13.5" in members and "4 / 5" in members


def test_summary_text_lists_models_with_intervals(run, results):
    text = summary_text(run)
    row = results.loc["soft voting"]
    line = next(line for line in text.splitlines() if line.strip().startswith("soft voting *"))
    assert f"{row['roc_auc']:.3f} [{row['roc_auc_low']:.2f}, {row['roc_auc_high']:.2f}]" in line
    assert "0.902 (reported)" in text and "Report:" not in text
    write_report(run)
    assert f"Report: {run / 'report.html'}" in summary_text(run)


def test_run_without_results_raises(tmp_path):
    with pytest.raises(RunFolderError, match="pneumoxai evaluate --run"):
        write_report(tmp_path)
    with pytest.raises(RunFolderError, match="no results yet"):
        summary_text(tmp_path / "missing")


def test_figures_module_reexports():
    assert set(figures.__all__) == (set(_figures_eval.__all__) | set(_figures_slices.__all__)
                                    | {"plot_explanation_gallery", "plot_mean_maps", "plot_zone_attention",
                                       "plot_risk_coverage", "plot_feature_shift",
                                       "style", "save_figure", "OKABE_ITO"})
    assert figures.plot_roc is _figures_eval.plot_roc
    assert figures.plot_zone_attention is _figures_explain.plot_zone_attention
    assert figures.OKABE_ITO is _style.OKABE_ITO


def _browser_data(text):
    start = text.index('<script type="application/json" id="browser-data">')
    return json.loads(text[text.index(">", start) + 1:text.index("</script>", start)])


def test_findings_with_mostly_the_same_errors_are_one_finding(run):
    add_browser_parts(run)
    text = write_report(run).read_text(encoding="utf-8")
    summary = html.unescape(_section(text, "summary"))
    assert summary.count("<li><code>") == 2                 # a (with b folded in) and c
    assert ("1 more slice holds mostly the same errors (Jaccard index of the errors >= 0.5 with this slice's): "
            "b == x (Jaccard 0.83, 10 errors shared).") in summary
    assert "<code>c == x</code>" in summary and "c == x (Jaccard" not in summary  # 4 / 14 shared: its own finding
    assert "3 of 4 tested slices are significant" in summary and "leaves 2 distinct findings" in summary
    assert "b == x (Jaccard 0.83, 10 errors shared)" in " ".join(summary_text(run).split())


def test_the_browsers_hold_each_image_once_with_its_maps(run, results):
    add_browser_parts(run)
    text = write_report(run).read_text(encoding="utf-8")
    data = _browser_data(text)
    names = [image["name"] for image in data["images"]]
    rows = sorted({*range(16), *range(20, 24), *range(40, 48)})  # the three slices' images (errors among them)
    assert names == [f"img{i:02d}.png" for i in rows]
    for image in data["images"]:
        assert text.count(image["thumb"]) == 1               # encoded once, referenced by index
    table = pd.read_csv(run / "tables" / "results.csv", index_col="model")
    errors = [names[i] for i in data["errors"]]
    assert sorted(errors) == [f"img{i:02d}.png" for i in BROWSER_ERRORS]
    assert len(errors) == table.loc["soft voting", "fp"] + table.loc["soft voting", "fn"]
    assert [s["label"] for s in data["slices"]] == ["a == x", "b == x", "c == x"]
    assert [names[i] for i in data["slices"][0]["ids"]] == [f"img{i:02d}.png" for i in range(16)]  # errors 0-11 first
    assert [names[i] for i in data["slices"][2]["ids"]] == [f"img{i:02d}.png" for i in (8, 9, 10, 11, 40, 41, *range(
        42, 48))]
    assert data["models"] == ["m1", "m2", "soft voting"] and data["methods"] == ["Grad-CAM", "Grad-CAM (gallery)",
                                                                                "SHAP"]
    by_name = dict(zip(names, data["images"]))
    assert [m is not None for m in by_name["img00.png"]["maps"]] == [True, True, True]
    assert [m is not None for m in by_name["img02.png"]["maps"]] == [True, False, False]
    assert by_name["img00.png"]["outcome"] == "FP" and by_name["img01.png"]["outcome"] == "FN"

    def pixels(uri):
        return cv2.imdecode(np.frombuffer(base64.b64decode(uri.split(",", 1)[1]), np.uint8), cv2.IMREAD_GRAYSCALE)
    marked, plain = pixels(by_name["img00.png"]["thumb"]), pixels(by_name["img20.png"]["thumb"])
    assert marked.shape == (128, 128) and marked[24, 98] > 235 and plain[24, 98] < 200  # slice a's planted marker


def test_without_test_predictions_the_browsers_say_what_they_need(run):
    text = write_report(run).read_text(encoding="utf-8")
    for anchor in ("browser", "errors"):
        assert "Needs tables/predictions_test.csv (pneumoxai evaluate --run" in _section(text, anchor)
    assert 'id="browser-data"' not in text


def test_images_moved_since_the_run_are_shown_by_name_and_counted(run):
    add_browser_parts(run)
    for i in (0, 40):
        (run.parent / "images" / f"img{i:02d}.png").unlink()
    text = write_report(run).read_text(encoding="utf-8")
    assert "2 of 28 images could not be read from their paths (moved since the run?)" in _section(text, "browser")
    thumbs = {image["name"]: image["thumb"] for image in _browser_data(text)["images"]}
    assert [name for name, thumb in thumbs.items() if thumb is None] == ["img00.png", "img40.png"]
