"""SHAP attributions of the logit: expected gradients and the partition explainer, and their background.

shap re-seeds NumPy's global RNG; both explainers run under a saved-and-restored global
state (:func:`_isolated_numpy_rng`), so callers' random streams are untouched.
"""

import contextlib
import warnings

import keras
import numpy as np

from ..errors import ConfigError
from ..validation import check_images, check_labels
from ._base import SHAP_METHODS, MapExplainer, _choice, _logit_model, _positive_int, _quiet_keras_inputs, _seed

@contextlib.contextmanager
def _isolated_numpy_rng(seed):
    """Seed NumPy's global RNG for a third-party call, then restore the caller's state."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _import_shap():
    """Import shap on first use (it takes seconds), without its import-time deprecation noise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        import shap
    return shap


class GradientSHAP(MapExplainer):
    """Expected-gradients SHAP (``shap.GradientExplainer``) of the logit, summed over channels.

    Values are in log-odds units; for ``target="pneumonia"`` they add up (in
    expectation) to ``logit(x) - mean logit(background)``.

    Parameters
    ----------
    model : keras.Model
    background : array-like, shape (m, H, W, 3)
        Reference images, e.g. from :func:`background_sample`.
    n_samples : int, default=32
        Background/interpolation samples per image.
    seed : int, default=0
    batch_size : int, default=16
        Gradient evaluations per call (shap evaluates one image's samples per call).
    """

    signed = True

    def __init__(self, model, background, *, n_samples=32, seed=0, batch_size=16):
        super().__init__(model, batch_size=batch_size)
        shap = _import_shap()
        background = check_images(background, model=model, name="background", owner="GradientSHAP")
        self.n_samples = _positive_int("GradientSHAP", "n_samples", n_samples)
        self.seed = _seed("GradientSHAP", seed)
        self._explainer = shap.GradientExplainer(
            _logit_model(model, type(self).__name__), background, batch_size=self.batch_size
        )

    def _explain_batch(self, x, is_pneumonia):
        with _quiet_keras_inputs(), _isolated_numpy_rng(self.seed):
            values = self._explainer.shap_values(x, nsamples=self.n_samples, rseed=self.seed)
        values = np.asarray(values, np.float32).reshape(x.shape).sum(axis=-1)
        return values * np.where(is_pneumonia, 1, -1)[:, None, None]


class PartitionSHAP(MapExplainer):
    """Partition SHAP (``shap.Explainer`` + ``shap.maskers.Image`` blur masker) of the logit.

    Masked regions are replaced by a blurred copy of the image; values in log-odds
    units, summed over channels.

    Parameters
    ----------
    model : keras.Model
    max_evals : int, default=256
        Masked evaluations per image.
    blur : int, default=None
        Blur kernel size in pixels; default a quarter of the image height (a
        smaller blur leaves small bright findings visible when "masked").
    seed : int, default=0
        Seeds shap's tie-breaking draws.
    batch_size : int, default=16
        Masked images per network call.
    """

    signed = True

    def __init__(self, model, *, max_evals=256, blur=None, seed=0, batch_size=16):
        super().__init__(model, batch_size=batch_size)
        self.max_evals = _positive_int("PartitionSHAP", "max_evals", max_evals, minimum=8)
        self.blur = None if blur is None else _positive_int("PartitionSHAP", "blur", blur)
        self.seed = _seed("PartitionSHAP", seed)
        self._logit = _logit_model(model, type(self).__name__)

    def _logit_of(self, masked):
        # A direct call: model.predict()'s per-call setup dominates shap's many small batches.
        return keras.ops.convert_to_numpy(self._logit(np.asarray(masked, np.float32), training=False))

    def _explain_batch(self, x, is_pneumonia):
        shap = _import_shap()
        kernel = self.blur or max(1, x.shape[1] // 4)
        masker = shap.maskers.Image(f"blur({kernel},{kernel})", x.shape[1:])
        explainer = shap.Explainer(self._logit_of, masker, algorithm="partition", output_names=["pneumonia"])
        with _isolated_numpy_rng(self.seed):
            values = explainer(x, max_evals=self.max_evals, batch_size=self.batch_size, silent=True).values
        values = np.asarray(values, np.float32).reshape(x.shape).sum(axis=-1)
        return values * np.where(is_pneumonia, 1, -1)[:, None, None]


def shap_maps(model, images, background=None, *, method="gradient", target="pneumonia",
              n_samples=32, max_evals=256, batch_size=16, seed=0):
    """Signed SHAP attribution maps of the pre-sigmoid logit.

    Parameters
    ----------
    model : keras.Model
    images : array-like, shape (n, H, W, 3)
    background : array-like, shape (m, H, W, 3), default=None
        Required by ``"gradient"`` (e.g. :func:`background_sample`); unused by
        ``"partition"``, whose reference is a blurred copy of each image.
    method : {"gradient", "partition"}, default="gradient"
        Expected gradients (``shap.GradientExplainer``) or the partition explainer
        with a blur masker (model-agnostic, slower).
    target : {"pneumonia", "normal", "predicted"} or array-like of bool, default="pneumonia"
        Sign convention: positive values push toward this class.
    n_samples : int, default=32
        ``"gradient"``: samples per image.
    max_evals : int, default=256
        ``"partition"``: masked evaluations per image.
    batch_size : int, default=16
    seed : int, default=0

    Returns
    -------
    ndarray of float32, shape (n, H, W)
        Attributions summed over channels, in log-odds units.
    """
    _choice("shap_maps", "method", method, SHAP_METHODS)
    _seed("shap_maps", seed)
    if method == "gradient":
        if background is None:
            raise ConfigError("The 'background' parameter of shap_maps is required with method='gradient' "
                              "(see background_sample); got None.")
        explainer = GradientSHAP(model, background, n_samples=n_samples, seed=seed, batch_size=batch_size)
    else:
        if background is not None:
            warnings.warn("background is not used by method='partition' (it blurs each image)", UserWarning,
                          stacklevel=2)
        explainer = PartitionSHAP(model, max_evals=max_evals, seed=seed, batch_size=batch_size)
    return explainer(images, target=target)


def background_sample(images, labels, *, n=32, seed=0):
    """Draw a class-balanced SHAP background: half NORMAL, half PNEUMONIA where possible.

    Parameters
    ----------
    images : array-like, shape (N, H, W, 3)
    labels : array-like of {0, 1}, shape (N,)
        1 = PNEUMONIA.
    n : int, default=32
        Background size (at most N); a class with too few images is topped up from the other.
    seed : int, default=0

    Returns
    -------
    ndarray of float32, shape (min(n, N), H, W, 3)
    """
    x = check_images(images, owner="background_sample")
    y = check_labels(labels, len(x), owner="background_sample", name="labels", both_classes=False)
    n = min(_positive_int("background_sample", "n", n), len(x))
    seed = _seed("background_sample", seed)
    pools = [np.flatnonzero(y == c) for c in (0, 1)]
    take_pos = min(n // 2 + n % 2, len(pools[1]))
    take_neg = min(n - take_pos, len(pools[0]))
    take_pos = n - take_neg
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.choice(pools[0], take_neg, replace=False),
                          rng.choice(pools[1], take_pos, replace=False)])
    return x[np.sort(idx)]
