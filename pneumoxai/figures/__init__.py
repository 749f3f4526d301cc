"""Figures of a pneumoxai run, in four families.

Evaluation
    :func:`plot_roc`, :func:`plot_pr`, :func:`plot_confusion_matrices`,
    :func:`plot_reliability` (calibration), :func:`plot_threshold_analysis` (metrics
    against the decision threshold), :func:`plot_diversity` (pairwise member
    diversity) and :func:`plot_ensemble_size` (score as members are added).
Failure slices
    :func:`plot_slice_error_rates` (error rate of the top slices with intervals),
    :func:`plot_slice_examples` (images drawn from each slice) and
    :func:`plot_feature_distributions` (image features of errors against correct calls).
Explanations
    :func:`plot_explanation_gallery` (Grad-CAM / SHAP overlays of false negatives,
    false positives and correct calls), :func:`plot_mean_maps` (mean map per outcome)
    and :func:`plot_zone_attention` (share of attention per lung zone and off-lung).
Shift and referral
    :func:`plot_feature_shift` (the features and slices that moved between two sets)
    and :func:`plot_risk_coverage` (error rate of the kept cases against coverage).

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot, so
it works under any backend and is not kept alive by pyplot's figure registry. Every
function takes keyword-only ``path=None, formats=("png", "pdf")`` and saves the same
way as :func:`save_figure`: a ``path`` whose suffix names a format (``"roc.svg"``)
writes that one file, any other ``path`` is a stem written once per format
(``"roc"`` gives ``roc.png`` and ``roc.pdf``), each file atomically. :func:`style`
applies the shared style (colour-blind-safe :data:`OKABE_ITO` palette). Outcome
groups (false negative, false positive, correct) come from
:func:`pneumoxai.outcomes.outcome_groups`.

One private module per family (``_evaluation``, ``_slices``, ``_explanations``, ``_shift``) and
``_style`` (palette, figure creation and saving) that they share.
"""

from . import _evaluation, _explanations, _shift, _slices
from ._evaluation import *  # noqa: F401,F403 (the names of each family's __all__)
from ._explanations import *  # noqa: F401,F403
from ._shift import *  # noqa: F401,F403
from ._slices import *  # noqa: F401,F403
from ._style import OKABE_ITO, save_figure, style

__all__ = (_evaluation.__all__ + _slices.__all__ + _explanations.__all__ + _shift.__all__
           + ["style", "save_figure", "OKABE_ITO"])
