"""The run report: one self-contained HTML file, and the terminal summary of ``pneumoxai run``.

:func:`write_report` reads only what the stages left in the run folder
(``run.json``, ``config.json``, ``tables/``, ``members/*/card.json``,
``figures/*.png``) and writes ``RUN_DIR/report.html``: figures are embedded as base64
PNG data URIs, and the page skeleton, its CSS and a small script that makes every table
sortable and filterable come inline from the Jinja2 template
``pneumoxai/templates/report.html.j2``, so the file can be mailed or archived alone and
opened from disk with no network. The page reads the same without the script.
A stage that has not run yet (explanations, failure slices) gives a "not run" note
naming the command that produces it instead of an error.

The "Where misdiagnoses occur" summary is written only from slices whose
Benjamini-Hochberg q-value is below ``slices.alpha`` (``finding`` in
``tables/failure_slices.csv``); when there are none it says so.

Every string taken from the data (file names, slice labels, member names) is
HTML-escaped: section markup is built with :func:`_tag`, which escapes anything that is not
already :class:`_Html`, and the template escapes the rest (autoescape).
"""

import base64
import datetime
import html
import math
import textwrap

import pandas as pd

from . import _io
from ._report_browser import OVERLAP, browser_data, primary_errors, slice_members
from ._report_shift import CONTENTS as _SHIFT_CONTENTS, shift_sections, shift_sentences
from .config import analysis_members
from .lungs import ZONE_COLUMNS
from .metrics import ORIGIN_ROW
from .evidence import DEFAULT_AREAS, DEFAULT_LEVELS, DEFAULT_MIN_EFFECT
from .regions import describe_slice
from .errors import CacheError, RunFolderError
from .run_folder import (CARD_FILE, COMPARISONS_TABLE, DATASET_TABLE, DIVERSITY_TABLE, ENSEMBLE_RECORD,
                         ENSEMBLE_SIZE_TABLE, EXPLAIN_SUMMARY_TABLE, FAILURE_SLICES_TABLE, LAYER_CHOICE_RECORD,
                         LAYER_CHOICE_TABLE, MEMBER_FAILURE_SLICES_TABLE, PRIMARY, RESULTS_TABLE,
                         SLICE_EXPLANATIONS_TABLE, ZONE_ATTENTION_TABLE, RunFolder, slice_examples_figure)

__all__ = ["write_report", "summary_text"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_ROLES = ("train", "val", "test")
_TEMPLATE = "report.html.j2"  # pneumoxai/templates/: the page skeleton, its CSS and script
_FINDINGS_SHOWN = 5  # distinct findings in the summary; the full list is in the slices section
_SLICES_SHOWN = 15  # significant slices beyond which their table scrolls in its box; member slices shown
_SLICE_FIGURES_SHOWN = 10  # figures of a few images per significant slice (the slices stage draws as many)
_LARGE_FIGURE = 256 * 1024  # bytes of PNG from which a figure is tried as JPEG (galleries of X-rays)
_VOID = frozenset({"img", "br", "hr", "input"})

# (column, header) of the results table; metric columns get "[low, high]" from <metric>_low/_high.
_RESULT_METRICS = (
    ("accuracy", "Accuracy"), ("recall", "Sensitivity"), ("specificity", "Specificity"),
    ("precision", "Precision"), ("f1", "F1"), ("roc_auc", "ROC AUC"), ("average_precision", "AP"),
    ("mcc", "MCC"), ("brier", "Brier"), ("ece", "ECE"),
)
_SUMMARY_METRICS = (("accuracy", "accuracy"), ("recall", "sensitivity"), ("specificity", "specificity"),
                    ("roc_auc", "ROC AUC"))

# The removal walk of evidence.region_removal_test with its defaults, as the report states it.
_REMOVAL_WALK = (f"from {DEFAULT_LEVELS[0]:g} of its maximum down to {DEFAULT_LEVELS[-1]:g} of it, then its highest "
                 f"{DEFAULT_AREAS[0]:.0%}-{DEFAULT_AREAS[-1]:.0%} of pixels")


# --------------------------------------------------------------------------- markup


class _Html(str):
    """Markup that is already safe; every other string is escaped when emitted."""


def _esc(value):
    if isinstance(value, _Html):
        return value
    if isinstance(value, (list, tuple)):
        return _Html("".join(_esc(v) for v in value))
    return _Html(html.escape("" if value is None else str(value), quote=True))


def _tag(tag, /, *children, **attrs):
    """``<tag attrs>children</tag>``; ``class_`` gives ``class``; None attributes are left out."""
    text = "".join(f' {key.rstrip("_")}="{html.escape(str(value), quote=True)}"'
                   for key, value in attrs.items() if value is not None)
    if tag in _VOID:
        return _Html(f"<{tag}{text}>")
    return _Html(f"<{tag}{text}>{_esc(list(children))}</{tag}>")


def _table(headers, rows, *, caption=None, row_classes=None, numeric=(), tall=False):
    """An HTML table; ``numeric`` holds the column indices that are right-aligned; ``tall`` scrolls its rows."""
    head = _tag("thead", _tag("tr", [_tag("th", h) for h in headers]))
    body = []
    for i, row in enumerate(rows):
        cells = [_tag("td", c, class_="num" if j in numeric else None) for j, c in enumerate(row)]
        body.append(_tag("tr", cells, class_=row_classes[i] if row_classes else None))
    parts = [_tag("caption", caption)] if caption else []
    return _tag("div", _tag("table", parts, head, _tag("tbody", body)), class_="scroll tall" if tall else "scroll")


def _note_not_run(what, command):
    return _tag("p", "Not run: ", what, " is missing. Produce it with ", _tag("code", command), ".",
                class_="notrun")


# --------------------------------------------------------------------------- numbers


def _missing(value):
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def _num(value, digits=3):
    return "—" if _missing(value) else f"{float(value):.{digits}f}"


def _with_ci(row, metric):
    """``"0.912 [0.89, 0.93]"``; the bare value when the row has no interval."""
    text = _num(row.get(metric))
    low, high = row.get(f"{metric}_low"), row.get(f"{metric}_high")
    if text != "—" and not _missing(low) and not _missing(high):
        text += f" [{low:.2f}, {high:.2f}]"
    return text


def _p(value):
    if _missing(value):
        return "—"
    return f"{value:.3f}" if value >= 0.001 else f"{value:.1e}"


def _count(value):
    return "—" if _missing(value) else str(int(value))


def _rate_of(k, n):
    """``"0.74 (14/19)"``, or a dash when the slice has no such images."""
    return "—" if _missing(n) or int(n) == 0 else f"{k / n:.2f} ({int(k)}/{int(n)})"


# --------------------------------------------------------------------------- reading


class _Run(RunFolder):
    """Everything the report reads from one run folder; optional parts are None when absent."""

    def __init__(self, run_dir):
        super().__init__(run_dir)
        self.results = self.read_table(
            RESULTS_TABLE, columns=("model", "source", "threshold", "tn", "fp", "fn", "tp"), index_col="model",
            required=f"run `{self.command('evaluate')}` (or `pneumoxai run`) first (no results yet)")
        self.run_record = self.read_json(self.run_file) or {}
        self.config = self.read_json(self.config_file) or {}
        self.ensemble = self.read_json(self.table(ENSEMBLE_RECORD)) or {}
        self.dataset = self.read_table(DATASET_TABLE, columns=("role", "label"))
        self.comparisons = self.read_table(COMPARISONS_TABLE)
        self.diversity = self.read_table(DIVERSITY_TABLE)
        self.ensemble_size = self.read_table(ENSEMBLE_SIZE_TABLE)
        slice_columns = ("slice", "finding", "size", "n_errors", "n_fn", "n_fp", "q_value")
        self.slices = self.read_table(FAILURE_SLICES_TABLE, columns=slice_columns)
        self.member_slices = self.read_table(MEMBER_FAILURE_SLICES_TABLE, columns=slice_columns)
        self.explain_summary = self.read_table(EXPLAIN_SUMMARY_TABLE, columns=("measure", "value"))
        self.layer_choice = self.read_json(self.table(LAYER_CHOICE_RECORD))
        self.layer_candidates = self.read_table(
            LAYER_CHOICE_TABLE, columns=("method", "layer", "map_side", "road_gap", "randomization_spearman", "chosen"))
        self.slice_explanations = self.read_table(
            SLICE_EXPLANATIONS_TABLE, columns=("slice", "n_errors", "errors:off_lung_attention",
                                               "correct:off_lung_attention", "off_lung_shift", "top_zone_shift"))
        self.zones = self.read_table(ZONE_ATTENTION_TABLE)
        for frame in (self.slices, self.member_slices):
            if frame is not None:
                # Hand-written or re-saved CSVs may hold "True"/"False" as text.
                frame["finding"] = frame["finding"].astype(str).str.strip().str.lower().isin(("true", "1"))
        primary = self.ensemble.get("primary", PRIMARY)
        measured = self.results.index[self.results["source"] == "measured"]
        self.primary = primary if primary in self.results.index else (measured[0] if len(measured) else None)
        self._member_folders = self._analysis_member_folders(self.config.get("members"))
        self.members = list(self._member_folders) or list(self.ensemble.get("members", []))
        self.noun = "ensemble"  # what the primary model is, in sentences
        self._keep_only_model()
        slices_cfg = self.config.get("slices")
        self.alpha = slices_cfg.get("alpha", 0.05) if isinstance(slices_cfg, dict) else 0.05
        significant = [] if self.slices is None else self.slices.loc[self.slices["finding"], "slice"].astype(str)
        self.members_of = slice_members(self, significant)  # {slice label: its test images as a mask}
        wrong = primary_errors(self) if self.members_of else None
        self.errors_of = {label: mask & wrong for label, mask in self.members_of.items()}  # ... and its errors

    def _keep_only_model(self):
        """A run of one model reports that model: combiners of one member are that member again.

        ``tables/results.csv`` keeps its combiner rows (the evaluate stage writes them for any
        number of members); here they are dropped, the primary's 0.5-threshold row is named
        after the model, and the model becomes the primary.
        """
        names = list(self.ensemble.get("members") or self.members)
        if len(names) != 1 or names[0] not in self.results.index:
            return
        name, results = names[0], self.results
        at_half = results.loc[[f"{self.primary} @0.5"]] if f"{self.primary} @0.5" in results.index else results[:0]
        self.results = pd.concat([results.loc[[name]], at_half.rename(index=lambda _: f"{name} @0.5"),
                                  results[results["source"] == "reported"]])
        self.primary, self.noun = name, "model"

    def _analysis_member_folders(self, members):
        """{analysis member name: folder}, snapshot members expanded; {} for a config it cannot read."""
        if not isinstance(members, list):
            return {}
        members = [m for m in members if isinstance(m, dict) and isinstance(m.get("name"), str)]
        if any(not isinstance(m.get("snapshots", 1), int) for m in members):
            return {}
        try:
            return {m["name"]: self.analysis_member_dir(m) for m in analysis_members({"members": members})}
        except RunFolderError:  # a hand-edited name that would leave the folder
            return {}

    def card(self, name):
        try:
            return self.read_json(self._member_folders.get(name, self.member_dir(name)) / CARD_FILE)
        except (CacheError, RunFolderError):
            return None

    def overall(self):
        """Error, miss and false-alarm rates of the primary model over the whole test split."""
        row = self.results.loc[self.primary]
        tn, fp, fn, tp = (float(row[k]) for k in ("tn", "fp", "fn", "tp"))
        return {"error_rate": (fp + fn) / (tn + fp + fn + tp),
                "fnr": fn / (fn + tp) if fn + tp else math.nan,
                "fpr": fp / (fp + tn) if fp + tn else math.nan}


# --------------------------------------------------------------------------- findings


def _findings(run):
    """Significant slices, those whose errors are mostly the same images grouped into one finding.

    In the ranking of ``failure_slices.csv``, a slice joins the first earlier finding whose
    lead slice has mostly the same errors: a Jaccard index (errors in both over errors in
    either) of at least ``OVERLAP`` (0.5). Errors, not all images, because a finding is about
    where errors concentrate: a slice of 44 false alarms inside one of 73 images with 68
    false alarms is the same finding. It is compared with the lead only, so a chain of slices
    each overlapping the next cannot drift away from what the finding describes. Without
    the slices' images (no ``tables/slice_features.csv``), slices with identical counts are
    grouped instead.

    Returns
    -------
    list of dict
        ``kind`` (missed pneumonia / false alarms / errors of both kinds), ``labels``
        (the lead first), the lead's ``row`` and ``variants``: ``(label, jaccard, shared)``
        per later slice, ``shared`` being the errors in both (both None when grouped by counts).
    """
    if run.slices is None or not len(run.slices):
        return []
    keys = ("size", "n_errors", "n_fn", "n_fp", "q_value")
    groups = []
    for _, row in run.slices[run.slices["finding"]].iterrows():
        label = str(row["slice"])
        errors = run.errors_of.get(label)
        for group in groups:
            lead = run.errors_of.get(group["labels"][0])
            if errors is not None and lead is not None:
                shared = int((errors & lead).sum())
                jaccard = shared / max(1, int((errors | lead).sum()))
                if jaccard >= OVERLAP:
                    group["variants"].append((label, jaccard, shared))
                    break
            elif all(row[k] == group["row"][k] for k in keys):
                group["variants"].append((label, None, None))
                break
        else:
            kind = ("missed pneumonia" if row["n_fn"] > row["n_fp"] else
                    "false alarms" if row["n_fp"] > row["n_fn"] else "errors of both kinds")
            groups.append({"kind": kind, "labels": [label], "row": row, "variants": []})
            continue
        group["labels"].append(label)
    return groups


def _variants_text(finding, shown=3):
    """The slices folded into a finding and how many of its errors they share; "" when none."""
    variants = finding["variants"]
    if not variants:
        return ""
    if variants[0][1] is None:
        return f" Same counts: {'; '.join(label for label, _, _ in variants)}."
    named = "; ".join(f"{label} (Jaccard {jaccard:.2f}, {shared} errors shared)"
                      for label, jaccard, shared in variants[:shown])
    more = f"; and {len(variants) - shown} more" if len(variants) > shown else ""
    return (f" {len(variants)} more slice{'s' if len(variants) > 1 else ''} hold{'' if len(variants) > 1 else 's'} "
            f"mostly the same errors (Jaccard index of the errors >= {OVERLAP} with this slice's): {named}{more}.")


def _finding_text(finding, overall, run=None):
    """One plain-text sentence for a finding; only numbers from the tables, no interpretation.

    With the slice explanations of ``run``, a second sentence says where in the image the
    slice's errors look compared with correct calls of the same class.
    """
    row = finding["row"]
    parts = [f"{int(row['n_errors'])} of {int(row['size'])} images misclassified "
             f"(error rate {row['error_rate']:.2f} vs {overall['error_rate']:.2f} overall, q = {_p(row['q_value'])})"]
    if row["n_fn"] > 0:
        parts.append(f"{int(row['n_fn'])} of {int(row['n_pos'])} pneumonia images missed "
                     f"(FNR {row['fnr']:.2f} vs {overall['fnr']:.2f} overall)")
    if row["n_fp"] > 0:
        parts.append(f"{int(row['n_fp'])} of {int(row['n_neg'])} normal images flagged "
                     f"(FPR {row['fpr']:.2f} vs {overall['fpr']:.2f} overall)")
    text = "; ".join(parts) + "."
    # The slice test is on the error rate, which a slice can exceed through its class mix alone.
    if finding["kind"] == "missed pneumonia" and not row["fnr"] > overall["fnr"]:
        text += (" Within the slice the miss rate is not above the overall miss rate: the excess error "
                 "comes from its share of pneumonia images, not from worse detection.")
    elif finding["kind"] == "false alarms" and not row["fpr"] > overall["fpr"]:
        text += (" Within the slice the false-alarm rate is not above the overall rate: the excess error "
                 "comes from its share of normal images.")
    return text + _variants_text(finding) + _where_text(run, finding["labels"])


def _where_text(run, labels):
    """Where a slice's errors look (ensemble Grad-CAM), from ``tables/slice_explanations.csv``."""
    table = None if run is None else run.slice_explanations
    if table is None:
        return ""
    rows = table[table["slice"].isin(labels)]
    if rows.empty:
        return ""
    r = rows.iloc[0]
    errors, correct = r["errors:off_lung_attention"], r["correct:off_lung_attention"]
    if not (math.isfinite(errors) and math.isfinite(correct)):
        return ""
    text = (f" Where they look: their maps put {errors:.0%} of the attention outside the lung fields, against "
            f"{correct:.0%} for correct calls of the same class")
    p_rise = r.get("off_lung_p")
    if not _missing(p_rise):
        verdict = "a significant rise" if p_rise < run.alpha else "no significant rise"
        text += f" ({verdict}, one-sided Mann-Whitney p = {_p(p_rise)})"
    removal = _removal_text(r, run.alpha)
    zone = r["top_zone_shift"]
    # Maps that do not localise the cause name no place, not even the zone that gained most.
    if isinstance(zone, str) and zone and not (removal and not _truthy(r.get("removal_localised"))):
        text += f"; the region gaining most attention is {'outside the lungs' if zone == 'off_lung_attention' else 'the ' + zone.replace('_', ' ') + ' zone'}"
    return text + "." + (f" {removal}." if removal else "")


def _truthy(value):
    """A boolean cell of a CSV read back (True, "True", 1)."""
    return str(value).strip().lower() in ("true", "1", "1.0")


def _removal_text(r, alpha):
    """Do the slice's errors rest on the region their maps point at? From the ``removal_*`` columns of
    ``tables/slice_explanations.csv`` (:func:`pneumoxai.evidence.region_removal_test`); None when not measured."""
    measured = r.get("removal_n_errors")
    if _missing(measured) or not int(measured):
        return None
    n, n_localised = int(measured), int(r["removal_n_localised"])
    if not _truthy(r.get("removal_localised")):
        return (f"Their maps do not localise the cause: for {n - n_localised} of the {n} calls tested, the "
                "half-maximum region around the map's peak covers more than a quarter of the image, so no region "
                "is named")
    place, share = f"the {r['removal_place']}", r.get("removal_place_share")
    if _missing(share) or share >= 0.5:
        lead, target = f"Removing the region their maps point at, {place} (", place
    else:  # a place only some of the regions lie in is not where the calls rest
        lead, target = (f"Removing the region each map points at (no one place holds most of them; {place} holds "
                        f"{share:.0%}; "), "where their maps point"
    return (f"{lead}the region around each map's peak, {_REMOVAL_WALK}, inpainted from its surroundings), changes "
            f"{r['removal_changes_errors']:.0%} of the {n_localised} calls tested by the best member, against "
            f"{r['removal_changes_control']:.0%} when the same region is removed half the image away (one-sided "
            f"exact McNemar p = {_p(r['removal_p'])}): " + _removal_verdict_words(r, alpha, target))


def _removal_verdict_words(r, alpha, target):
    if r["removal_p"] >= alpha:
        return f"the calls do not rest on {target} more than on any other region of its size"
    if _truthy(r.get("removal_rests_on_region")):
        return f"the calls rest on {target}"
    # Significant, but under evidence.DEFAULT_MIN_EFFECT: a patch the model does not use nudges a few calls.
    return (f"a few calls depend on {target}, but too few to say the calls rest on it (it changes "
            f"{r['removal_changes_errors'] - r['removal_changes_control']:.0%} more of them than the same area "
            f"elsewhere; resting on it needs at least {DEFAULT_MIN_EFFECT:.0%} more)")


def _in_words(label):
    """``" (edge density in the top-right corner > 0.021)"`` for a slice on place features, else ``""``."""
    words = describe_slice(label)
    return f" ({words})" if words != str(label) else ""


def _no_findings_text(run):
    return (f"No slice survived the Benjamini-Hochberg correction at alpha = {run.alpha} "
            f"({len(run.slices)} slices tested), so this run supports no claim about where "
            "misdiagnoses concentrate.")


# The slice test is on the error rate, so the headings claim error concentration and name the error kind.
_KIND_HEADINGS = {"missed pneumonia": "Errors concentrate in these slices, mostly as missed pneumonia:",
                  "false alarms": "Errors concentrate in these slices, mostly as false alarms:",
                  "errors of both kinds": "Errors concentrate in these slices, as missed pneumonia and false "
                                          "alarms alike:"}


def _origin_text(run):
    """How far the primary ensemble is from the origin's reported numbers, and why they differ."""
    reported = run.results.loc[ORIGIN_ROW] if ORIGIN_ROW in run.results.index else None
    if reported is None or run.primary is None:
        return None
    primary = run.results.loc[run.primary]
    at_half_name = f"{run.primary} @0.5"
    at_half = run.results.loc[at_half_name] if at_half_name in run.results.index else None
    acc_row, where = (at_half, "at the origin's 0.5 threshold") if at_half is not None else (
        primary, f"at its validation-chosen threshold {primary['threshold']:.3f}")
    acc_diff = (acc_row["accuracy"] - reported["accuracy"]) * 100
    auc_diff = primary["roc_auc"] - reported["roc_auc"]
    text = (f"Against the origin's reported test figures (accuracy {reported['accuracy']:.3f}, ROC AUC "
            f"{reported['roc_auc']:.3f}), the primary {run.noun} ({run.primary}) reaches accuracy "
            f"{_with_ci(acc_row, 'accuracy')} {where}, {abs(acc_diff):.1f} percentage points "
            f"{_above_below(acc_diff)}, and ROC AUC {_with_ci(primary, 'roc_auc')}, {abs(auc_diff):.3f} "
            f"{_above_below(auc_diff)}. The numbers are not like-for-like: the origin started from ImageNet weights "
            "and chose its model on a random validation split that puts images of one patient on both sides "
            "(patient leakage, which flatters validation), while this run validates on a patient-grouped split")
    weights = sorted({str(m.get("weights") or "none (random initialisation)") for m in run.config.get("members", [])})
    if weights:
        text += f" and its members used weights = {', '.join(weights)}"
    max_per_class = run.config.get("data", {}).get("max_per_class")
    if max_per_class:
        text += (f"; it is also scored on a subset of the test split (n = {int(primary['n'])}, "
                 f"data.max_per_class = {max_per_class}), hence the wide intervals")
    return text + "."


def _above_below(difference):
    return "above" if difference >= 0 else "below"


# --------------------------------------------------------------------------- sections


def _figure(run, stem, caption, stage):
    path = run.figure(stem)
    if path is None:
        return _note_not_run(f"figures/{stem}.png", run.command(stage))
    data = path.read_bytes()
    if not data.startswith(_PNG_SIGNATURE):
        return _tag("p", f"figures/{stem}.png is not a PNG file; re-run ", _tag("code", run.command(stage)), ".",
                    class_="warn")
    return _tag("figure", _tag("img", src=_image_uri(data), alt=caption), _tag("figcaption", caption))


def _image_uri(png):
    """A figure as a data URI: PNG, or JPEG for a large picture of images (galleries) where that halves it."""
    if len(png) > _LARGE_FIGURE:
        import cv2
        import numpy as np

        pixels = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
        if pixels is not None and pixels.ndim == 3 and pixels.shape[2] == 4:  # transparent parts become white
            alpha = pixels[..., 3:] / 255.0
            pixels = np.rint(pixels[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)
        ok, jpeg = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 85]) if pixels is not None else (False, None)
        if ok and 2 * len(jpeg) < len(png):
            return "data:image/jpeg;base64," + base64.b64encode(jpeg.tobytes()).decode("ascii")
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _section(anchor, title, *body):
    return _tag("section", _tag("h2", title), *body, id=anchor)


def _summary_section(run):
    body = []
    if run.primary is not None:
        row = run.results.loc[run.primary]
        metrics = ", ".join(f"{label} {_with_ci(row, m)}" for m, label in _SUMMARY_METRICS)
        body.append(_tag("p", f"Primary {run.noun} ", _tag("strong", run.primary), f" on {int(row['n'])} test images "
                          f"(threshold {row['threshold']:.3f}): {metrics}."))
    findings = _findings(run)
    if run.slices is None:
        body.append(_note_not_run("the failure-slice analysis (tables/failure_slices.csv)", run.command("slices")))
    elif not findings:
        body.append(_tag("p", _no_findings_text(run)))
    else:
        overall = run.overall()
        shown = findings[:_FINDINGS_SHOWN]
        for kind, heading in _KIND_HEADINGS.items():
            items = [_tag("li", _tag("code", f["labels"][0]), _in_words(f["labels"][0]), ": ",
                          _finding_text(f, overall, run), _all_variants(f)) for f in shown if f["kind"] == kind]
            if items:
                body.append(_tag("div", _tag("p", _tag("strong", heading)), _tag("ul", items), class_="finding"))
        n_sig = int(run.slices["finding"].sum())
        grouped = (f"a slice whose errors overlap those of a higher-ranked finding's slice by a Jaccard index of at "
                   f"least {OVERLAP} is folded into that finding" if run.members_of else
                   "slices with identical counts are folded into one finding")
        body.append(_tag("p", f"{n_sig} of {len(run.slices)} tested slices are significant after "
                              f"Benjamini-Hochberg correction at alpha = {run.alpha}; {grouped}, which leaves "
                              f"{len(findings)} distinct findings, the first {len(shown)} shown above. Every "
                              "significant slice, with its images, is in ", _tag("a", "Failure slices", href="#slices"),
                         " and the ", _tag("a", "slice browser", href="#browser"), "."))
    body += [_tag("p", sentence) for sentence in shift_sentences(run.root)]
    origin = _origin_text(run)
    if origin:
        body.append(_tag("p", origin))
    return _section("summary", "Where misdiagnoses occur", *body)


def _all_variants(finding):
    """Every slice folded into a finding, with its overlap, in a disclosure that needs no script."""
    variants = finding["variants"]
    if len(variants) <= 3 or variants[0][1] is None:
        return ""
    items = [_tag("li", _tag("code", label), f": Jaccard {jaccard:.2f}, {shared} errors shared")
             for label, jaccard, shared in variants]
    return _tag("details", _tag("summary", f"All {len(variants)} slices with mostly the same errors"),
                _tag("ul", items))


def _dataset_section(run):
    table = run.dataset
    if table is None:
        return _section("dataset", "Dataset", _note_not_run(
            f"tables/{DATASET_TABLE}", run.command("train")))
    roles = [r for r in _ROLES if r in set(table["role"])]
    classes = sorted(table["label_name"].astype(str).unique())
    rows = []
    for role in roles:
        part = table[table["role"] == role]
        counts = part["label_name"].astype(str).value_counts()
        rows.append([role, *[str(counts.get(c, 0)) for c in classes], str(len(part)),
                     str(part["patient_id"].nunique())])
    body = [_table(["Role", *classes, "Images", "Patients"], rows, numeric=range(1, len(classes) + 3))]
    subtypes = pd.crosstab(table["role"], table["subtype"].astype(str)).reindex(roles)
    body.append(_table(["Role", *subtypes.columns], [[r, *map(str, subtypes.loc[r])] for r in roles],
                       caption="Images per subtype (from the file names).",
                       numeric=range(1, len(subtypes.columns) + 1)))
    ids = {role: set(table.loc[table["role"] == role, "patient_id"].astype(str)) for role in roles}
    leaked = sorted((ids.get("train", set()) | ids.get("val", set())) & ids.get("test", set()))
    if leaked:
        body.append(_tag("p", f"Leakage: {len(leaked)} patient id(s) appear in both the training data (train + val) "
                              f"and the test split (e.g. {', '.join(leaked[:5])}). The official split is not "
                              "patient-disjoint, so test scores may be optimistic.", class_="warn"))
    else:
        body.append(_tag("p", "No patient id appears in both the training data (train + val) and the test split."))
    if ids.get("train", set()) & ids.get("val", set()):
        body.append(_tag("p", "Patients are shared between train and val: validation scores are optimistic.",
                         class_="warn"))
    root = run.run_record.get("data_root")
    if root:
        body.append(_tag("p", "Data root: ", _tag("code", root), class_="meta"))
    return _section("dataset", "Dataset", *body)


def _members_section(run):
    if not run.members:
        return _section("members", "Ensemble members", _tag("p", "config.json lists no members."))
    weights = run.ensemble.get("optimized_weights", {})
    rows = []
    for name in run.members:
        card = run.card(name)
        if card is None:
            rows.append([name, "not trained (no readable card.json)", *["—"] * 6])
            continue
        cfg = card.get("config", {})
        if card.get("imported"):
            setup, epochs = _imported_setup(card), "—"
        else:
            setup = (f"{cfg.get('backbone')} @ {cfg.get('image_size')} px, weights {cfg.get('weights') or 'none'}, "
                     f"{cfg.get('balancing')}, seed {cfg.get('seed')}{', bootstrap' if cfg.get('bootstrap') else ''}; "
                     f"lr {cfg.get('learning_rate')}, dense {cfg.get('dense_units')}, dropout {cfg.get('dropout')}")
            planned = (cfg.get("epochs_frozen") or 0) + (cfg.get("epochs_finetune") or 0)
            epochs = f"{card.get('epochs_run', '—')} / {planned}"
        val = card.get("val_metrics", {})
        rows.append([name, setup, epochs,
                     _num(card.get("seconds_per_epoch"), 1), _count(card.get("n_train")), _num(val.get("roc_auc")),
                     _num(val.get("accuracy")), _num(weights.get(name))])
    headers = ["Member", "Configuration", "Epochs run / planned", "s / epoch", "Train images", "Val AUC",
               "Val accuracy", "Weight (optimized voting)"]
    body = [_table(headers, rows, numeric=range(2, 8))]
    extra = []
    if "best_member" in run.ensemble:
        extra.append(f"best member on test ROC AUC: {run.ensemble['best_member']}")
    if "temperature" in run.ensemble:
        extra.append(f"temperature of the primary {run.noun} fitted on val: {run.ensemble['temperature']:.3f}")
    if extra:
        text = "; ".join(extra)
        body.append(_tag("p", text[0].upper() + text[1:] + "."))
    return _section("members", "Ensemble members", *body)


def _imported_setup(card):
    """What is known of an imported member (kind, source file, preprocessing, input size), never "None"."""
    source = card.get("source") or "an unrecorded file"
    if card.get("kind") == "predictions":
        n = card.get("n_predictions")
        return f"imported predictions from {source}" + (f" ({int(n)} images)" if not _missing(n) else "")
    known = [f"input {int(card['input_size'])} px" if not _missing(card.get("input_size")) else None,
             f"preprocessing {card['preprocess']}" if card.get("preprocess") else "preprocessing custom (not recorded)",
             f"output {card['positive_index']} is PNEUMONIA" if not _missing(card.get("positive_index")) else None]
    return f"imported model from {source}; " + ", ".join(k for k in known if k)


def _results_section(run):
    results, evaluate = run.results, run.config.get("evaluate", {})
    rows, classes = [], []
    for name, row in results.iterrows():
        reported = row["source"] == "reported"
        label = name + (" (primary)" if name == run.primary else "")
        cells = [label, "reported, not measured" if reported else row["source"], _num(row.get("threshold"))]
        cells += [_with_ci(row, m) for m, _ in _RESULT_METRICS]
        cells.append("—" if reported else " / ".join(_count(row[k]) for k in ("tn", "fp", "fn", "tp")))
        rows.append(cells)
        classes.append("reported" if reported else "primary" if name == run.primary else None)
    n = results.loc[results["source"] == "measured", "n"]
    caption = (f"Test split, n = {int(n.iloc[0]) if len(n) else '?'} images. Point value "
               f"[{evaluate.get('ci', 0.95):.0%} percentile bootstrap interval, {evaluate.get('n_boot', '?')} "
               "resamples of patients within class]. Thresholds chosen on the validation split "
               f"({evaluate.get('threshold', '?')})")
    if any(str(name).endswith(" @0.5") for name in results.index):
        caption += "; the '@0.5' row uses 0.5 like the origin"
    caption += (". The origin row quotes the original project's published figures; it was not re-measured here.")
    headers = ["Model", "Source", "Threshold", *[h for _, h in _RESULT_METRICS], "TN / FP / FN / TP"]
    body = [_table(headers, rows, caption=caption, row_classes=classes, numeric=range(2, len(headers)))]
    return _section("results", "Results", *body)


def _curves_sections(run):
    evaluate = "evaluate"
    return [
        _section("curves", "ROC and precision-recall curves",
                 _figure(run, "roc", "ROC curves of members and combiners on the test split.", evaluate),
                 _figure(run, "pr", "Precision-recall curves on the test split.", evaluate)),
        _section("confusion", "Confusion matrices",
                 _figure(run, "confusion", "Confusion matrices at threshold 0.5 (best member and combiners).",
                         evaluate)),
        _section("calibration", "Calibration",
                 _figure(run, "reliability", "Reliability diagram: predicted probability against observed "
                                             "frequency, with expected calibration error.", evaluate)),
        _section("threshold", "Threshold analysis",
                 _figure(run, "threshold", f"Sensitivity, specificity and related metrics of the primary {run.noun} "
                                           "against the decision threshold; the marker is the validation-chosen "
                                           "threshold.", evaluate)),
    ]


def _comparisons_section(run):
    frame = run.comparisons
    if frame is None:
        return _section("comparisons", "Model comparisons",
                        _note_not_run(f"tables/{COMPARISONS_TABLE}", run.command("evaluate")))
    rows = [[r["model_a"], r["model_b"], _num(r["auc_a"]), _num(r["auc_b"]), _num(r["auc_diff"]), _p(r["auc_p"]),
             _count(r["n_only_a_wrong"]), _count(r["n_only_b_wrong"]), _p(r["mcnemar_p"]),
             "exact" if str(r.get("mcnemar_exact")).lower() == "true" else "chi-square"]
            for _, r in frame.iterrows()]
    headers = ["Model A", "Model B", "AUC A", "AUC B", "AUC A − B", "DeLong p", "Only A wrong", "Only B wrong",
               "McNemar p", "McNemar test"]
    caption = ("DeLong's test compares paired ROC AUCs; McNemar's test compares the paired errors at each "
               "model's threshold. p-values are per comparison, not corrected for multiplicity.")
    return _section("comparisons", "Model comparisons", _table(headers, rows, caption=caption, numeric=range(2, 9)))


def _ensemble_section(run):
    body = []
    single = len(run.members) < 2
    for frame, stem, name, title in ((run.diversity, "diversity", DIVERSITY_TABLE, "Member diversity"),
                                     (run.ensemble_size, "ensemble_size", ENSEMBLE_SIZE_TABLE, "Ensemble size")):
        body.append(_tag("h3", title))
        if frame is None and single:
            body.append(_tag("p", "Needs at least two members."))
            continue
        if frame is None:
            body.append(_note_not_run(f"tables/{name}", run.command("evaluate")))
            continue
        if stem == "diversity":
            rows = [[f"{r['member_a']} / {r['member_b']}", _num(r["disagreement"]), _num(r["yules_q"]),
                     _num(r["error_correlation"]), _num(r["double_fault"])] for _, r in frame.iterrows()]
            body.append(_table(["Pair", "Disagreement", "Yule's Q", "Error correlation", "Double fault"], rows,
                               caption="On the test split at threshold 0.5; lower Q and error correlation mean "
                                       "more complementary members.", numeric=range(1, 5)))
            body.append(_figure(run, stem, "Pairwise diversity of the members.", "evaluate"))
        else:
            rows = [[_count(r["n_members"]), r["added"], _num(r["score"])] for _, r in frame.iterrows()]
            body.append(_table(["Members", "Added", "Score"], rows,
                               caption="Greedy forward selection on the validation split (soft voting, ROC AUC).",
                               numeric=(0, 2)))
            body.append(_figure(run, stem, "Validation score as members are added.", "evaluate"))
    return _section("ensemble", "Diversity and ensemble size", *body)


def _slices_section(run):
    frame = run.slices
    if frame is None:
        return _section("slices", "Failure slices",
                        _note_not_run(f"tables/{FAILURE_SLICES_TABLE}", run.command("slices")))
    significant = frame[frame["finding"]]
    shown = significant if len(significant) else frame.head(5)
    rows = [[r["slice"], _count(r["size"]), _count(r["n_errors"]),
             f"{_num(r['error_rate'], 2)} [{_num(r['ci_low'], 2)}, {_num(r['ci_high'], 2)}]",
             _rate_of(r["n_fn"], r["n_pos"]), _rate_of(r["n_fp"], r["n_neg"]), _num(r["lift"], 2),
             _p(r["p_value"]), _p(r["q_value"]), "yes" if r["finding"] else "no"] for _, r in shown.iterrows()]
    headers = ["Slice", "Images", "Errors", "Error rate [CI]", "FNR (FN / pos)", "FPR (FP / neg)", "Lift",
               "p", "q (BH)", "Significant"]
    if len(significant):
        caption = (f"{len(significant)} of {len(frame)} tested slices are significant (q < {run.alpha}), all shown, "
                   "ranked by (lift − 1)·√size. One-sided Fisher exact test of the slice's error rate against the "
                   "rest; Wilson intervals. Click a row to see its images in the slice browser below.")
    else:
        caption = (f"None of the {len(frame)} tested slices is significant at q < {run.alpha}; the five strongest "
                   "are shown for transparency only and support no claim.")
    body = [_table(headers, rows, caption=caption, numeric=range(1, 9), tall=len(rows) > _SLICES_SHOWN)]
    body.append(_figure(run, "slices_top", "Error rate of the top slices, with the overall error rate.", "slices"))
    body.append(_figure(run, "slices_examples", "Example images from the top slices.", "slices"))
    body.append(_figure(run, "slices_features", "Image features of errors against correct calls.", "slices"))
    body.extend(_slice_images_part(run, significant))
    body.extend(_slice_explanations_part(run))
    body.append(_tag("h3", "Per-member failure slices"))
    members = run.member_slices
    if members is None:
        body.append(_note_not_run(f"tables/{MEMBER_FAILURE_SLICES_TABLE}", run.command("slices")))
    elif not members["finding"].any():
        body.append(_tag("p", "No member has a failure slice that survives the correction."))
    else:
        rows = [[r["member"], r["slice"], _count(r["size"]), _num(r["error_rate"], 2), _p(r["q_value"]),
                 _num(r["ensemble_error_rate"], 2),
                 "yes" if str(r["ensemble_fixes"]).lower() == "true" else "no"]
                for _, r in members[members["finding"]].head(_SLICES_SHOWN).iterrows()]
        body.append(_table(["Member", "Slice", "Images", "Member error rate", "q (BH)", "Ensemble error rate",
                            "Ensemble repairs it"], rows, numeric=range(2, 6)))
    return _section("slices", "Failure slices", *body)


def _slice_images_part(run, significant):
    """A few images of each significant slice with their maps, as the slices stage drew them."""
    body = []
    for rank, label in enumerate(significant["slice"].head(_SLICE_FIGURES_SHOWN), start=1):
        stem = slice_examples_figure(rank)
        if run.figure(stem) is not None:
            body.append(_figure(run, stem, f"Slice {rank}, {label}{_in_words(label)}: a few of its images, errors "
                                           "first, with the map of the predicted class.", "slices"))
    return [_tag("h3", "Images of each significant slice"), *body] if body else []


def _slice_explanations_part(run):
    """Which images (the slice) linked to where in the image (its errors' maps against correct calls)."""
    table = run.slice_explanations
    if table is None:
        return []
    body = [_tag("h3", "Where each failure slice's errors look")]
    faithful = "faithfulness_errors" in table.columns
    removed = "removal_changes_errors" in table.columns
    tested = "off_lung_p" in table.columns
    rows = []
    for _, r in table.iterrows():
        row = [r["slice"], _count(r["n_errors"]), _num(r["errors:off_lung_attention"], 2),
               _num(r["correct:off_lung_attention"], 2), _num(r["off_lung_shift"], 2)]
        row += [_p(r["off_lung_p"])] if tested else []
        row.append(str(r["top_zone_shift"]).replace("_", " "))
        if faithful:
            row += [_num(r["faithfulness_errors"], 3), _num(r["faithfulness_correct"], 3)]
        if removed:
            localised = _truthy(r["removal_localised"])
            row += [_count(r["removal_n_errors"]), r["removal_place"] if localised else "not localised",
                    _num(r["removal_changes_errors"], 2), _num(r["removal_changes_control"], 2),
                    _p(r["removal_p"])]
        rows.append(row)
    headers = (["Slice", "Errors", "Off-lung share (errors)", "Off-lung share (correct)", "Shift"]
               + (["p (rise)"] if tested else []) + ["Zone gaining most"])
    if faithful:
        headers += ["Deletion AUC (errors)", "Deletion AUC (correct)"]
    if removed:
        headers += ["Errors tested", "Region their maps point at", "Removing it changes call",
                    "Removing it elsewhere changes call", "p (McNemar)"]
    numeric = [i for i, header in enumerate(headers)
               if i and header not in ("Zone gaining most", "Region their maps point at")]
    test = (" p (rise): one-sided Mann-Whitney U test that the errors' off-lung shares exceed those of correct "
            "calls of their class." if tested else "")
    body.append(_table(headers, rows, numeric=numeric, caption=(
        f"Ensemble {_map_name(run)} of the predicted class. Each slice's errors are compared with the correct calls "
        f"of the same true class, weighted to the errors' class mix.{test} Deletion AUC of the best model member on "
        "a sample (lower = the map points at what drives the call)."
        + (" Region removal: for 32 errors sampled per slice (all when fewer), the best member predicts again "
           "with the region around each map's peak inpainted from its surroundings, at half maximum and then at 0.3 "
           "and 0.15 of it, then grown to the map's highest 2%, 5% and 10% of pixels around the peak (a call changes when any step changes it; steps over a quarter of the image are not taken), "
           "and with the same regions shifted by half the image; the share of the calls each changes, over the errors "
           "whose half-maximum region covers at most a quarter of the image (a slice is 'not localised' when fewer than half of them do), and "
           "the one-sided exact McNemar p that the region changes more calls than its shifted copy."
           if removed else ""))))
    body.append(_figure(run, "slice_maps", "Mean map of each slice's errors beside the correct calls' mean map; "
                                          "white: mean lung outline.", "slices"))
    return body


def _browser_sections(run, data, notes):
    """The slice browser and the error browser: static controls here, the grids drawn by the page's script."""
    problems = [_tag("p", note[0].upper() + note[1:] + ".", class_="warn") for note in notes]
    if data is None:
        return [_section(anchor, title, *problems) for anchor, title in (("browser", "Slice browser"),
                                                                          ("errors", "Error browser"))]
    needs_js = _tag("p", "The browsers need JavaScript; everything else in this report reads without it.",
                    class_="needs-js")
    models = data["models"]
    probabilities = (f"the probability of pneumonia from {'each member and ' if len(models) > 1 else ''}"
                     f"the primary {run.noun} ({run.primary})")
    map_words = f"the {data['methods'][0]} map of the predicted class" if data["methods"] else None

    def controls(kind):
        toggle = (_tag("label", _tag("input", type="checkbox", class_="map-toggle", checked="checked",
                                     **{"data-grid": f"{kind}-grid"}), f" Show {map_words}")
                  if map_words else _tag("span", "No maps: the explain stage has not run."))
        return [toggle, _tag("p", "", id=f"{kind}-count", class_="count", **{"aria-live": "polite"}),
                _tag("div", "", id=f"{kind}-grid", class_="grid")]

    how = (f"Each image shows its file name, true label and outcome (TP, TN, FP, FN), {probabilities}"
           + (f", and {map_words} over it" if map_words else "") + ". Click an image for a larger view with "
           "every map method computed for it.")
    if data["slices"]:
        options = [_tag("option", "Choose a significant slice…", value="")]
        options += [_tag("option", f"{s['label']}{_in_words(s['label'])} ({s['size']} images)", value=str(i))
                    for i, s in enumerate(data["slices"])]
        chooser = [_tag("label", "Slice: ", _tag("select", options, id="slice-select"), class_="chooser"),
                   *controls("slice")]
    else:
        why = ("no slice is significant" if run.slices is None or not run.slices["finding"].any() else
               "the slices' images could not be rebuilt from tables/slice_features.csv")
        chooser = [_tag("p", f"Nothing to browse: {why}.")]
    browser = _section("browser", "Slice browser", _tag("p", "Choose a significant slice, or click its row in the "
                                                             "table above, to see its images, errors first. ", how),
                       needs_js, *problems, *chooser)
    errors = _section("errors", "Error browser",
                      _tag("p", f"Every error of the primary {run.noun} ({run.primary}) at its threshold: "
                                f"{data['n_fn']} false negatives, then {data['n_fp']} false positives, the most "
                                f"confident first. {how}"), needs_js, *controls("error"))
    return [browser, errors]


def _map_name(run):
    """The method behind the test-split maps (chosen by the explain stage), for captions."""
    choice = run.layer_choice or {}
    if not isinstance(choice.get("method"), str):
        return "Grad-CAM"
    return f"{choice['method']} ({'fused over ' + choice['layer'] if choice.get('fused') else choice.get('layer')})"


def _layer_choice_paragraphs(run):
    """Which map explains the whole test split, why, and the candidates it was chosen from."""
    choice = run.layer_choice
    if not isinstance(choice, dict) or "reason" not in choice:
        return []
    side = choice.get("map_side")
    body = [_tag("p", f"Maps of the whole test split (zone attention, mean maps, failure slices): {_map_name(run)}"
                      f"{f', {side}x{side} before upsampling' if side else ''}, measured on "
                      f"{choice.get('n_images', '?')} images of member {choice.get('member', '?')}. Why: "
                      f"{choice['reason']}")]
    frame = run.layer_candidates
    if frame is not None:
        rows = [[r.method, r.layer if isinstance(r.layer, str) else "", str(r.map_side), _num(r.road_gap), _num(r.randomization_spearman),
                 "yes" if str(r.chosen).lower() in ("true", "1") else ""] for r in frame.itertuples(index=False)]
        body.append(_table(["Method", "Layers", "Map side", "ROAD gap (higher = more faithful)",
                            "Randomization Spearman (lower = passes)", "Chosen"], rows, numeric=(2, 3, 4),
                           caption="Candidate maps (tables/layer_choice.csv); the random row is the chance level."))
    return body


def _explain_section(run):
    figures = run.path("figures")
    galleries = sorted(figures.glob("gallery*.png"))
    mean_maps = sorted(figures.glob("mean_maps*.png"))
    if not galleries and not mean_maps and run.explain_summary is None:
        return _section("explanations", "Explanations of errors",
                        _note_not_run("the explanation stage (figures/gallery*.png)", run.command("explain")))
    body = []
    for path in galleries:
        method = path.stem.removeprefix("gallery").strip("_").replace("_", " ")
        body.append(_figure(run, path.stem, f"{method + ': ' if method else ''}maps of false negatives, false "
                                            "positives and correct calls (one column per method).", "explain"))
    for path in mean_maps:
        body.append(_figure(run, path.stem, "Mean map per outcome group (false negative, false positive, correct).",
                            "explain"))
    body += _layer_choice_paragraphs(run)
    if run.explain_summary is not None:
        frame = run.explain_summary
        rows = [[_num(v) if isinstance(v, float) else v for v in r] for r in frame.itertuples(index=False)]
        body.append(_table(list(frame.columns), rows, caption="Summary of the explanation stage "
                                                               "(tables/explain_summary.csv)."))
    return _section("explanations", "Explanations of errors", *body)


def _zones_section(run):
    if run.zones is None and run.figure("zone_attention") is None:
        return _section("zones", "Zone attention",
                        _note_not_run(f"tables/{ZONE_ATTENTION_TABLE}", run.command("explain")))
    body = []
    frame = run.zones
    if frame is not None:
        shares = [c for c in ZONE_COLUMNS if c in frame.columns]
        keys = [c for c in ("method", "group") if c in frame.columns]
        parts = frame.groupby(keys, sort=False) if keys else [(("all images",), frame)]
        keys = keys or ["images"]
        rows = [[*name, str(len(part)), *[_num(part[c].mean()) for c in shares]] for name, part in parts]
        body.append(_table([*keys, "n", *[c.replace("_", " ") for c in shares]], rows,
                           caption="Mean share of each map's positive mass per lung zone and outside the lungs "
                                   "(off-lung attention).", numeric=range(len(keys), len(keys) + len(shares) + 1)))
    body.append(_figure(run, "zone_attention", "Share of attention per lung zone, by outcome.", "explain"))
    return _section("zones", "Zone attention", *body)


_CONTENTS = (("summary", "Where misdiagnoses occur"), ("dataset", "Dataset"), ("members", "Ensemble members"),
             ("results", "Results"), ("curves", "ROC and PR curves"), ("confusion", "Confusion matrices"),
             ("calibration", "Calibration"), ("threshold", "Threshold analysis"),
             ("comparisons", "Model comparisons"), ("ensemble", "Diversity and ensemble size"),
             ("slices", "Failure slices"), ("browser", "Slice browser"), ("errors", "Error browser"),
             ("explanations", "Explanations of errors"), ("zones", "Zone attention"))


def _document(run):
    import jinja2
    from markupsafe import Markup

    from . import __version__

    env = jinja2.Environment(loader=jinja2.PackageLoader("pneumoxai", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    data, notes = browser_data(run, run.members_of)
    sections = [_summary_section(run), _dataset_section(run), _members_section(run), _results_section(run),
                *_curves_sections(run), _comparisons_section(run), _ensemble_section(run), _slices_section(run),
                *_browser_sections(run, data, notes), _explain_section(run), _zones_section(run),
                *shift_sections(run.root)]
    return env.get_template(_TEMPLATE).render(
        title=f"pneumoxai report: {run.root.resolve().name}", run_dir=str(run.root.resolve()),
        generated=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), version=__version__,
        contents=_CONTENTS + _SHIFT_CONTENTS, sections=[Markup(section) for section in sections], browser=data)


# --------------------------------------------------------------------------- public


def write_report(run_dir):
    """Write ``RUN_DIR/report.html``: one self-contained HTML file describing the run.

    Parameters
    ----------
    run_dir : str or Path
        A run folder that has at least been evaluated (``tables/results.csv``).

    Returns
    -------
    Path
        The report file, written atomically.

    Raises
    ------
    RunFolderError
        When the run folder has no results yet; the message names the command to run.

    Notes
    -----
    Sections: where misdiagnoses occur (from significant failure slices only) with a
    comparison to the origin's reported figures, dataset, members, results with
    intervals, ROC/PR curves, confusion matrices, calibration, threshold analysis,
    DeLong/McNemar comparisons, diversity and ensemble size, failure slices,
    explanation galleries and zone attention. Figures are embedded as base64 PNG data
    URIs and the CSS and script are inline, so the file needs nothing beside it. Every
    table can be sorted (click a header) and filtered (the box above it).

    Examples
    --------
    >>> from pneumoxai.report import write_report
    >>> write_report("runs/full")  # doctest: +SKIP
    PosixPath('runs/full/report.html')
    """
    run = _Run(run_dir)
    path = run.report_file
    _io.write_text(path, _document(run))
    return path


def summary_text(run_dir):
    """A compact plain-text summary of a run for the terminal.

    Parameters
    ----------
    run_dir : str or Path
        A run folder that has at least been evaluated (``tables/results.csv``).

    Returns
    -------
    str
        The results of members and combiners with intervals (the origin's row marked
        as reported), then the significant failure slices (or a line saying none
        survived the correction), then the report path when it exists.

    Raises
    ------
    RunFolderError
        When the run folder has no results yet.
    """
    run = _Run(run_dir)
    evaluate = run.config.get("evaluate", {})
    headers = ["model", "threshold", *[label for _, label in _SUMMARY_METRICS]]
    rows = []
    for name, row in run.results.iterrows():
        if row["source"] == "reported":
            rows.append([name, "-", *[f"{_num(row.get(m))} (reported)" if not _missing(row.get(m)) else "-"
                                      for m, _ in _SUMMARY_METRICS]])
        else:
            rows.append([name + (" *" if name == run.primary else ""), _num(row["threshold"]),
                         *[_with_ci(row, m) for m, _ in _SUMMARY_METRICS]])
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    n = run.results.loc[run.results["source"] == "measured", "n"]
    lines = [f"Results on the test split (n = {int(n.iloc[0]) if len(n) else '?'}; "
             f"{evaluate.get('ci', 0.95):.0%} patient-bootstrap intervals; * = primary {run.noun}):"]
    lines += ["  " + "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [headers, *rows]]
    lines.append("")
    findings = _findings(run)
    if run.slices is None:
        lines.append(f"Failure slices: not run ({run.command('slices')}).")
    elif not findings:
        lines.append(textwrap.fill(_no_findings_text(run), width=100))
    else:
        overall = run.overall()
        lines.append(f"Where misdiagnoses occur (significant after Benjamini-Hochberg at alpha = {run.alpha}):")
        for finding in findings[:_FINDINGS_SHOWN]:
            label = finding["labels"][0]
            lines.append(textwrap.fill(f"{label}{_in_words(label)} ({finding['kind']}): "
                                       f"{_finding_text(finding, overall, run)}",
                                       width=100, initial_indent="  - ", subsequent_indent="    "))
    for sentence in shift_sentences(run.root):
        lines += ["", textwrap.fill(sentence, width=100)]
    report = run.report_file
    if report.is_file():
        lines += ["", f"Report: {report}"]
    return "\n".join(lines)
