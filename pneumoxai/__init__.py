"""pneumoxai: ResNet50 ensembles for chest X-ray pneumonia, and where and why they fail.

Submodules are imported on first use, so array-level analyses (``metrics``,
``ensemble`` combiners, ``slices``) do not pay for importing TensorFlow.
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = (
    "data", "models", "ensemble", "calibration", "metrics", "slices", "explain",
    "figures", "report", "cli", "config", "errors", "pipeline",
    "predict", "lungs", "run_folder", "outcomes", "audit", "files",
    "regions", "evidence", "shift", "referral", "importing", "validation",
)

__all__ = list(_SUBMODULES) + ["__version__"]


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'pneumoxai' has no attribute {name!r}")
