"""The report's "Has the data moved?" and "Referral" sections and their summary sentences.

Built from the shift stage's tables (see :mod:`pneumoxai.pipeline.shift`); each function
returns finished HTML (or plain sentences) so :mod:`pneumoxai.report` only places them.
"""

import base64
import html

from .run_folder import (REFERRAL_CURVE_FIGURE, REFERRAL_RULE_TABLE, REFERRAL_SUMMARY_TABLE, REFERRAL_TABLE,
                         SHIFT_TARGETS_RECORD, RunFolder, shift_features_figure, shift_table)

__all__ = ["CONTENTS", "shift_sections", "shift_sentences"]

#: Anchors and titles of the two sections, for the report's table of contents.
CONTENTS = (("shift", "Has the data moved?"), ("referral", "Referral"))
_PNG = b"\x89PNG\r\n\x1a\n"


def _e(value):
    return html.escape("" if value is None else str(value), quote=True)


def _fmt(value, digits=3):
    try:
        value = float(value)
    except (TypeError, ValueError):
        return _e(value)
    if value != value:
        return "—"
    return f"{value:.{digits}f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.1e}"


def _table(frame, columns):
    head = "".join(f"<th>{_e(label)}</th>" for label in columns.values())
    body = "".join("<tr>" + "".join(f"<td class=\"num\">{_fmt(row[c])}</td>" if isinstance(row[c], float)
                                    else f"<td>{_e(row[c])}</td>" for c in columns) + "</tr>"
                   for _, row in frame.iterrows())
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _figure(run, stem, caption):
    path = run.figure(stem)
    if path is None or not path.read_bytes().startswith(_PNG):
        return ""
    src = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img src="{src}" alt="{_e(caption)}"><figcaption>{_e(caption)}</figcaption></figure>'


def _not_run(run, anchor, title, *extra):
    return (f'<section id="{anchor}"><h2>{_e(title)}</h2><p class="notrun">Not run: tables/{shift_table("summary")} is '
            f"missing. Produce it with <code>{_e(run.command('shift'))}</code>.</p>{''.join(extra)}</section>")


def _target_parts(run):
    """A summary table per folder of deployment images added with ``pneumoxai shift --target``."""
    parts = []
    for name, target in (run.read_json(run.table(SHIFT_TARGETS_RECORD)) or {}).items():
        table = _read(run, shift_table("summary", name))
        if table is not None:
            parts.append(f"<h3>Deployment images: {_e(name)} ({int(target['n_images'])} images in "
                         f"<code>{_e(target['folder'])}</code>, no labels)</h3>")
            parts.append(_table(table, {"analysis": "question", "text": "answer"}))
    return parts


def _read(run, name):
    return run.read_table(name, keep_default_na=False, na_values=[""])


def _summary(run):
    table = _read(run, shift_table("summary"))
    return None if table is None else table.set_index("analysis")


def shift_sentences(run_dir):
    """One sentence on the shift and one on referral for the summary (empty when the stage has not run)."""
    run = RunFolder(run_dir)
    summary, rules = _summary(run), _read(run, REFERRAL_RULE_TABLE)
    sentences = []
    if summary is not None:
        output, domain = summary.loc["output shift (Bonferroni)"], summary.loc["domain classifier (image features)"]
        moved = "has moved" if output["p_value"] < 0.05 or domain["p_value"] < 0.05 else "shows no detectable move"
        prevalence = summary.loc["prevalence (BBSE)"]
        true = (f" (true {summary.loc['prevalence (true)', 'value']:.3f})"
                if "prevalence (true)" in summary.index else "")
        sentences.append(
            f"Validation to test, the data {moved}: member/ensemble probabilities KS p = {output['p_value']:.2g}, "
            f"a domain classifier on image features tells the sets apart with ROC AUC {domain['value']:.2f} "
            f"(p = {domain['p_value']:.2g}); the test's PNEUMONIA share is estimated at {prevalence['value']:.3f} "
            f"without its labels{true}, which suggests threshold "
            f"{summary.loc['threshold for the BBSE prevalence', 'value']:.3f}"
            + ("; but the classes themselves moved (label shift violated), so that estimate and threshold are "
               "biased." if "label shift violated" in str(prevalence["text"]) else "."))
    if rules is not None and len(rules):
        rule = rules.iloc[0]
        sentences.append(str(rule["statement"]))
    return sentences


def shift_sections(run_dir):
    """The "Has the data moved?" and "Referral" sections as HTML strings."""
    run = RunFolder(run_dir)
    summary = _read(run, shift_table("summary"))
    if summary is None:
        return [_not_run(run, *CONTENTS[0], *_target_parts(run)), _not_run(run, *CONTENTS[1])]
    moved = _read(run, shift_table("features"))
    output = _read(run, shift_table("output"))
    parts = [
        "<p>Reference: the validation split (where the threshold and the combiners were chosen); target: the test "
        "split. Output shift: two-sample Kolmogorov-Smirnov tests on each member's and the ensemble's "
        "probabilities, combined by Bonferroni (Rabanser et al. 2019) and by a permutation of the largest distance "
        "(exact under any dependence between members). Domain classifier: shrinkage LDA on image features, "
        "5-fold cross-validated by patient, permutation p-value. Prevalence: BBSE (Lipton et al. 2018) and EM on "
        "Platt-calibrated probabilities (Saerens et al. 2002), bootstrap intervals; the threshold is re-chosen "
        "for the estimate (highest expected accuracy at that prevalence, validation sensitivity and "
        "specificity).</p>",
        _table(summary, {"analysis": "question", "text": "answer"}),
    ]
    if output is not None:
        parts.append(_table(output, {"column": "probabilities of", "statistic": "KS distance", "p_value": "p",
                                     "mean_ref": "mean (val)", "mean_target": "mean (test)"}))
    if moved is not None:
        top = moved[moved["finding"].astype(str) == "True"].head(12)
        parts.append(f"<p>{len(moved[moved['finding'].astype(str) == 'True'])} of {len(moved)} feature "
                     "distributions, quartile slices and subtypes differ at q &lt; 0.05 (Benjamini-Hochberg); "
                     "the first 12:</p>")
        parts.append(_table(top, {"feature": "feature", "level": "slice / level", "ref": "val", "target": "test",
                                  "effect": "effect", "q_value": "q"}))
    parts.append(_figure(run, shift_features_figure(), "Where the data moved: standardised mean differences and "
                                                "shares of reference-quartile slices (filled: q < 0.05)."))
    parts += _target_parts(run)
    sections = [f'<section id="shift"><h2>Has the data moved?</h2>{"".join(parts)}</section>']

    table, curves, rules = (_read(run, name) for name in (REFERRAL_TABLE, REFERRAL_SUMMARY_TABLE,
                                                          REFERRAL_RULE_TABLE))
    parts = ["<p>Cases are referred to a radiologist from the least confident up. Confidence: the distance of "
             "the ensemble's probability from its threshold (margin; logit margin: the same on the logit scale, "
             "fair to both sides of a threshold far from 0.5), the members' agreement (minus their "
             "standard deviation), or the mean of their ranks (combined). AURC: mean error rate of the kept cases "
             "over coverages 1/n..1 (Geifman et al.); AUGRC: mean share of all cases both kept and wrong (Traub "
             "et al. 2024). The rule is chosen on validation by Learn-then-Test with exact binomial p-values: "
             "sensitivity on kept cases &ge; 0.95 with 90% confidence if test cases are exchangeable with "
             "validation cases.</p>"]
    if table is not None:
        parts.append(_table(table, {"confidence": "confidence", "referred": "referred", "n_kept": "kept",
                                    "accuracy": "accuracy", "sensitivity": "sensitivity",
                                    "specificity": "specificity"}))
    if curves is not None:
        parts.append(_table(curves, {"confidence": "confidence", "role": "split", "aurc": "AURC", "augrc": "AUGRC",
                                     "error_rate": "error rate (all kept)"}))
    if rules is not None:
        parts.append("<ul>" + "".join(f"<li><strong>{_e(r.confidence)}</strong>: {_e(r.statement)}</li>"
                                      for r in rules.itertuples()) + "</ul>")
    parts.append(_figure(run, REFERRAL_CURVE_FIGURE, "Risk-coverage on test (solid) and validation (dashed)."))
    sections.append(f'<section id="referral"><h2>Referral</h2>{"".join(parts)}</section>')
    return sections
