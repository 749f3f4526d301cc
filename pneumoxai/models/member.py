"""Member: one saved member, whatever it is (a Keras model, an imported predictions file, a snapshot),
and how it is predicted."""

import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import DEFAULT_CHUNK_SIZE
from ..errors import DataError, RunFolderError
from ..run_folder import MODEL_FILE, PREDICTIONS_FILE
# Through the module: every member is loaded by the one storage.load_member.
from . import storage
from .cached import predict_members

def member_kind(card):
    """``"model"`` or ``"predictions"`` for a member card (members pneumoxai trained are models)."""
    return card.get("kind", "model")


class Member:
    """One saved member folder: what it is, its card, its input size, and how it is predicted.

    Every stage asks a member these questions instead of reading its card: a
    predictions file has no model to load, explain or embed, and its probabilities
    are read, not computed.

    Parameters
    ----------
    directory : path-like
        A member folder written by :func:`save_member` or ``pneumoxai import``; its card
        is read (and checked) once, here.

    Attributes
    ----------
    directory : pathlib.Path
    name : str
        The folder's name, which is the member's name in tables.
    card : dict
    kind : {"model", "predictions", "snapshot"}
    is_model : bool
        True for models and snapshots: there is a Keras model to run.
    input_size : int or None
        Side of the model's square input; None for a predictions file.

    Raises
    ------
    RunFolderError
        Not a complete member folder, or a damaged card or one of another card format.

    Examples
    --------
    >>> import tempfile, keras
    >>> folder = Path(tempfile.mkdtemp()) / "m"
    >>> inputs = keras.Input((8, 8, 3))
    >>> pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    >>> model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="prediction")(pooled))
    >>> from pneumoxai.models import save_member
    >>> _ = save_member(folder, model)
    >>> member = Member(folder)
    >>> member.name, member.kind, member.is_model, member.input_size
    ('m', 'model', True, 8)
    """

    def __init__(self, directory):
        self.directory = Path(directory)
        self.card = storage.read_card(self.directory)

    def __repr__(self):
        return f"Member({str(self.directory)!r}, kind={self.kind!r})"

    def __eq__(self, other):
        return isinstance(other, Member) and other.directory == self.directory

    def __hash__(self):
        return hash(self.directory)

    @property
    def name(self):
        return self.directory.name

    @property
    def kind(self):
        if member_kind(self.card) == "predictions":
            return "predictions"
        return "snapshot" if self.card.get("snapshot") else "model"

    @property
    def is_model(self):
        return self.kind != "predictions"

    @property
    def input_size(self):
        return int(self.card["input_size"]) if self.is_model else None

    @property
    def content_hash(self):
        """SHA-256 of what the member's predictions depend on: its model file or its predictions file."""
        return self.card.get("model_sha256") or self.card["predictions_sha256"]

    def load(self):
        """The Keras model (safe mode, checked against its card's hash); see :func:`load_member`."""
        return storage.load_member(self.directory)[0]

    def layer_names(self):
        """Names of the model's top-level layers, read from its ``.keras`` file without building the model.

        What ``model.get_layer`` finds after :meth:`load`, for a few kilobytes of JSON
        instead of deserializing every weight.
        """
        model_path = self.directory / MODEL_FILE
        try:
            with zipfile.ZipFile(model_path) as archive:
                config = json.loads(archive.read("config.json"))  # the Keras archive's own config
            return {layer["config"]["name"] for layer in config["config"]["layers"]}
        except (OSError, KeyError, TypeError, ValueError, zipfile.BadZipFile) as exc:
            raise RunFolderError(f"{str(model_path)!r} is not a readable Keras model file.") from exc

    def file_predictions(self, paths):
        """Probabilities of an imported predictions member for ``paths``, in that order."""
        return predictions_of(self.directory, paths)

    @staticmethod
    def predict_many(members, rows, *, batch_size=64, tta=False, cache_dir=None, progress=True,
                     interpolation="auto", chunk_size=DEFAULT_CHUNK_SIZE):
        """Probabilities of every member for the images of ``rows``, one column per member.

        Models are predicted together by :func:`pneumoxai.predict.predict_members`
        (batched, optionally test-time augmented, cached under ``cache_dir``); a
        predictions file's probabilities are read for the same images.

        Parameters
        ----------
        members : list of Member
        rows : pandas.DataFrame
            Dataset rows with a ``path`` column.
        batch_size, tta, cache_dir, progress, interpolation, chunk_size
            As in :func:`pneumoxai.predict.predict_members` (models only).

        Returns
        -------
        pandas.DataFrame of shape (len(rows), len(members))
            Columns are member names, in the order of ``members``.
        """
        models = [member for member in members if member.is_model]
        columns = {}
        if models:
            P = predict_members([member.directory for member in models], rows, batch_size=batch_size, tta=tta,
                                cache_dir=cache_dir, progress=progress, interpolation=interpolation,
                                chunk_size=chunk_size)
            columns.update(zip(models, P.T))
        paths = rows["path"].tolist()
        return pd.DataFrame({member.name: columns[member] if member.is_model else member.file_predictions(paths)
                             for member in members})


def predictions_of(member_dir, paths):
    """Probabilities of an imported predictions member for ``paths``, in that order."""
    frame = pd.read_csv(Path(member_dir) / PREDICTIONS_FILE).set_index("path")["probability"]
    missing = [p for p in paths if p not in frame.index]
    if missing:
        raise DataError(f"Imported member {Path(member_dir).name!r} has no probability for {len(missing)} image(s), "
                        f"e.g. {missing[0]!r}; import a predictions file that covers the run's images.")
    return frame.loc[list(paths)].to_numpy(dtype=np.float64)
