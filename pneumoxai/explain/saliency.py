"""Gradient saliency: vanilla gradients and SmoothGrad."""

import warnings

import numpy as np

with warnings.catch_warnings():
    # tf-keras-vis 0.8.7 imports zoom from the deprecated scipy.ndimage.interpolation.
    warnings.simplefilter("ignore", DeprecationWarning)
    from tf_keras_vis.saliency import Saliency
    from tf_keras_vis.utils.scores import BinaryScore

from ..errors import param_error
from ._base import MapExplainer, _logit_model, _minmax, _positive_int, _quiet_keras_inputs, _seed

class SaliencyMap(MapExplainer):
    """Vanilla gradient saliency (Simonyan et al., 2014) or SmoothGrad (Smilkov et al., 2017).

    ``|d score / d pixel|``, max over channels, scaled to [0, 1] per image.

    Parameters
    ----------
    model : keras.Model
    smooth_samples : int, default=0
        0 for vanilla gradients; otherwise noisy copies averaged (SmoothGrad).
    noise : float, default=0.2
        SmoothGrad noise std as a fraction of each image's intensity range.
    seed : int, default=0
        Seeds the SmoothGrad noise (drawn here, not from NumPy's global RNG as
        tf-keras-vis would); one stream per explainer.
    batch_size : int, default=16
        Network inputs per call: SmoothGrad explains ``batch_size // smooth_samples``
        images (at least one) per call, all their noisy copies at once.
    """

    def __init__(self, model, *, smooth_samples=0, noise=0.2, seed=0, batch_size=16):
        super().__init__(model, batch_size=batch_size)
        self.smooth_samples = _positive_int("SaliencyMap", "smooth_samples", smooth_samples, minimum=0)
        if not np.isfinite(noise) or noise <= 0:
            raise param_error("SaliencyMap", "noise", "a positive number", noise)
        self.noise = float(noise)
        self._rng = np.random.default_rng(_seed("SaliencyMap", seed))
        self._vis = Saliency(_logit_model(model, type(self).__name__), clone=False)

    def _images_per_call(self, shape):
        return max(1, self.batch_size // max(1, self.smooth_samples))

    def _explain_batch(self, x, is_pneumonia):
        if self.smooth_samples == 0:
            with _quiet_keras_inputs():
                grads = self._vis(BinaryScore(is_pneumonia.tolist()), x, normalize_map=False)
            return _minmax(np.asarray(grads))
        k = self.smooth_samples
        sigma = self.noise * np.ptp(x.reshape(len(x), -1), axis=1)
        noisy = x + self._rng.standard_normal((k,) + x.shape, np.float32) * sigma[:, None, None, None]
        with _quiet_keras_inputs():
            grads = self._vis(
                BinaryScore(np.tile(is_pneumonia, k).tolist()), noisy.reshape((-1,) + x.shape[1:]),
                keepdims=True, normalize_map=False,
            )
        return _minmax(np.asarray(grads).reshape((k,) + x.shape).mean(axis=0).max(axis=-1))


def saliency(model, images, *, smooth_samples=0, noise=0.2, target="pneumonia", batch_size=16, seed=0):
    """Gradient saliency baselines: vanilla (``smooth_samples=0``) or SmoothGrad.

    Parameters and errors as in :class:`SaliencyMap` and :func:`gradcam`.

    Returns
    -------
    ndarray of float32, shape (n, H, W)
        Maps in [0, 1].
    """
    _seed("saliency", seed)
    explainer = SaliencyMap(model, smooth_samples=smooth_samples, noise=noise, seed=seed,
                            batch_size=batch_size)
    return explainer(images, target=target)
