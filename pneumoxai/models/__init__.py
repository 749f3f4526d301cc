"""ResNet50 (and DenseNet121 / EfficientNetB0) ensemble members: build, train, save, load, predict.

Members are flat Keras functional models: the backbone's layers are layers of the member
itself (``member.get_layer("conv5_block3_out")`` works), which is what Grad-CAM tools need.
Inputs are images in [0, 1] with 3 channels; a :class:`BackbonePreprocess` layer inside
the model maps them to what each backbone's pretrained weights expect.

Layer names: ``image`` (input), ``preprocess``, backbone layers as in
``keras.applications``, then ``head_pool``, ``head_dense1``, ``head_bn1``,
``head_dropout1``, ``head_dense2``, ``head_bn2``, ``head_dropout2``, ``prediction``.

Model contract, for members and any other model given to pneumoxai: one input of
(n, H, W, 3) float32 images in [0, 1], one (n, 1) output = P(PNEUMONIA) from a
sigmoid ``Dense`` layer named ``prediction``, a flat graph. :func:`check_classifier`
enforces it at every entry point; :func:`adapt` brings other Keras classifiers to it.

A run's member, whatever it is (a Keras model, an imported predictions file, a
snapshot), is a :class:`Member`: its kind, card, input size and how it is predicted.

One module per concern::

    preprocess.py    in-model preprocessing layers
    precision.py     dtype policy, distribution strategy
    architecture.py  backbones, build_member, trainable sets
    contract.py      check_classifier and adapt
    predict.py       predict_proba and padded batches
    cached.py        many members' predictions and embeddings, cached by content hash
    storage.py       the member folder: save, load, card
    member.py        Member: a model, a predictions file or a snapshot, and how to predict it
    callbacks.py     cyclic schedule, checkpoint, snapshots, resume state, BN recalibration
    training.py      train_member and its phases
"""

# The light imports first, so config errors surface before TensorFlow loads.
from ..config import snapshot_name
from .architecture import BACKBONES, build_member
from .callbacks import CyclicSchedule, recalibrate_batchnorm
from .contract import adapt, check_classifier
from .member import Member
from .precision import PRECISIONS, STRATEGIES, get_strategy, is_chief, resolve_precision
from .predict import predict_on_padded_batch, predict_proba
from .preprocess import PREPROCESS_MODES, BackbonePreprocess
from .storage import CARD_FORMAT, is_member_dir, load_member, load_model_file, read_card, save_member, update_card
from .training import SCHEDULES, train_member

__all__ = [
    "BACKBONES",
    "CARD_FORMAT",
    "PRECISIONS",
    "STRATEGIES",
    "PREPROCESS_MODES",
    "SCHEDULES",
    "BackbonePreprocess",
    "CyclicSchedule",
    "Member",
    "adapt",
    "check_classifier",
    "build_member",
    "resolve_precision",
    "get_strategy",
    "is_chief",
    "snapshot_name",
    "train_member",
    "recalibrate_batchnorm",
    "predict_proba",
    "predict_on_padded_batch",
    "save_member",
    "load_member",
    "load_model_file",
    "read_card",
    "update_card",
    "is_member_dir",
]
