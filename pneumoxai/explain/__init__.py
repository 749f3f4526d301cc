"""Visual explanations for pneumoxai members, and checks that the explanations mean something.

Maps
    Grad-CAM, Grad-CAM++, LayerCAM and HiResCAM are arithmetic on one forward and backward
    pass per batch that gives every explained layer's activations and gradients (the
    formulas of ``tf-keras-vis`` 0.8.7; the layer choice, the ensemble gallery and fused
    maps share that pass across methods and layers); (Faster) Score-CAM and
    vanilla/SmoothGrad saliency wrap ``tf-keras-vis``; expected-gradients and partition
    SHAP wrap ``shap``. Each method is one small class on :class:`MapExplainer`, which
    validates the model once and the images on every call, then explains them in batches
    (never one image per call). Every CAM takes ``layers=``: per-layer maps, upsampled
    and min-max scaled, fused by element-wise maximum (LayerCAM's fusion), so a conv3 map
    gives the fused map 1/8 of the input side (:func:`fusion_layers` names the layers).
Where the model looks
    :func:`zone_attention` splits each map's positive mass over the six lung zones of
    :mod:`pneumoxai.lungs` and the area outside the lungs.
Are the maps faithful?
    :func:`deletion_auc` / :func:`insertion_auc` (Petsiuk, Das & Saenko, "RISE:
    Randomized Input Sampling for Explanation of Black-box Models", BMVC 2018) against
    :func:`random_map_baseline`; ROAD (:func:`road`, Rong et al., "A Consistent and
    Efficient Evaluation Strategy for Attribution Methods", ICML 2022), which fills the
    removed pixels from their neighbours instead of black; the model-parameter
    randomization test :func:`randomization_check` (Adebayo et al., "Sanity Checks for
    Saliency Maps", NeurIPS 2018); all of them per method and layer in :func:`compare_layers`;
    :func:`choose_map` makes the explain stage's whole choice (method, layers, reason).
Per failure slice
    :func:`slice_explanations`: mean map, zone attention against correct calls of the
    same class and faithfulness of each significant slice of
    :func:`pneumoxai.slices.find_failure_slices`.

Model contract: one input ``(H, W, 3)`` in [0, 1] and one sigmoid output ``(n, 1)`` =
P(PNEUMONIA), its activation carried by the output layer (``"prediction"``), and a flat
functional graph so the feature layer (``"conv5_block3_out"`` for ResNet50) is
reachable. :func:`pneumoxai.models.adapt` brings other Keras classifiers (Sequential,
nested backbones, softmax or logit heads, other input scalings) to it.

The single-sigmoid output needs care: tf-keras-vis' Score-CAM applies a softmax to the
model output, which is constantly 1 for one unit and makes every channel weight equal.
:class:`ScoreCAM` therefore rewrites the output as the two logits ``[-z/2, z/2]``
(``z`` = pre-sigmoid logit), whose softmax is exactly ``[1 - p, p]``. The gradient
methods explain ``+z`` (PNEUMONIA) or ``-z`` (NORMAL), tf-keras-vis' ``BinaryScore``, via a
logit model that shares the model's layers with a linear head (``_base.shared_logit_model``;
nothing is re-serialized, so ``Lambda`` and custom layers are explained too). CAMs are
upsampled here, not by tf-keras-vis (see ``cam._upsample``).

shap 0.51 + Keras 3 / TF 2.21: ``shap.GradientExplainer`` runs, but it re-seeds NumPy's
*global* RNG (``np.random.seed(rseed)`` inside ``shap_values``) and the partition
explainer draws tie-breakers from it; both are run under a saved-and-restored global
RNG state (``shap_maps._isolated_numpy_rng``) so callers' random streams are untouched and the
maps are reproducible from ``seed``. Both libraries pass a one-element list to
single-input Keras 3 models, which only triggers a harmless input-structure warning
that is silenced locally. ``shap.DeepExplainer`` is not used: it fails on ResNet ops.

One module per concern: ``_base`` (option values, checks, the logit model, :class:`MapExplainer`),
``layers`` (which layers), ``cam``, ``saliency``, ``shap_maps``, ``ensemble`` (ensemble maps),
``zone_attention``, ``faithfulness`` (deletion / insertion), ``road``, ``sanity`` (randomization check),
``choice`` (layer and method choice) and ``slice_maps`` (maps per failure slice).
"""

from ..lungs import ZONE_COLUMNS, ZONE_NAMES, lung_mask, zones
from ._base import (CAM_METHODS, DOWNSTREAM, FAITHFULNESS_METRICS, METHOD_NAMES, RANDOMIZATION_METHODS, ROAD_ORDERS,
                    SHAP_METHODS, TARGETS, MapExplainer, shared_models)
from .layers import RESNET50_FUSION_LAYERS, feature_map_size, fusion_layers, layer_candidates
from .cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM, gradcam
from .saliency import SaliencyMap, saliency
from .shap_maps import GradientSHAP, PartitionSHAP, background_sample, shap_maps
from .ensemble import ensemble_gradcam, resize_maps
from .zone_attention import zone_attention
from .faithfulness import deletion_auc, insertion_auc, random_map_baseline
from .road import road, road_impute
from .sanity import randomization_check
from .choice import (MAP_CHOICE_METHODS, MAX_RANDOMIZATION_SPEARMAN, choose_map, choose_map_method, chosen_layers,
                     compare_layers)
from .slice_maps import slice_explanations

__all__ = [
    "CAM_METHODS",
    "SHAP_METHODS",
    "TARGETS",
    "FAITHFULNESS_METRICS",
    "RANDOMIZATION_METHODS",
    "DOWNSTREAM",
    "METHOD_NAMES",
    "ZONE_COLUMNS",
    "ZONE_NAMES",
    "MapExplainer",
    "GradCAM",
    "GradCAMPlusPlus",
    "LayerCAM",
    "HiResCAM",
    "ScoreCAM",
    "SaliencyMap",
    "GradientSHAP",
    "PartitionSHAP",
    "ROAD_ORDERS",
    "RESNET50_FUSION_LAYERS",
    "fusion_layers",
    "layer_candidates",
    "choose_map_method",
    "choose_map",
    "chosen_layers",
    "MAP_CHOICE_METHODS",
    "shared_models",
    "MAX_RANDOMIZATION_SPEARMAN",
    "gradcam",
    "ensemble_gradcam",
    "resize_maps",
    "feature_map_size",
    "saliency",
    "shap_maps",
    "background_sample",
    "lung_mask",
    "zones",
    "zone_attention",
    "deletion_auc",
    "insertion_auc",
    "random_map_baseline",
    "road_impute",
    "road",
    "randomization_check",
    "compare_layers",
    "slice_explanations",
]
