"""Member predictions computed once: batched, optionally test-time augmented, cached by content hash.

The public home of :func:`predict_members` and :func:`predict_embeddings`, which live in
:mod:`pneumoxai.models.cached` beside the member code they run.
"""

from .models.cached import TTA_ROTATIONS, predict_embeddings, predict_members

__all__ = ["TTA_ROTATIONS", "predict_members", "predict_embeddings"]
