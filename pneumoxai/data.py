"""Chest X-ray dataset tables, patient-grouped splits, image loading and input pipelines.

A dataset is a row-aligned :class:`pandas.DataFrame` of paths, labels and metadata
(patient, pneumonia subtype), in the spirit of torchxrayvision's datasets, so that
failure slices are DataFrame filters and every array row maps back to a file.

The expected layout is the Kaggle "chest-xray-pneumonia" folder (Kermany, Zhang and
Goldbaum, "Labeled Optical Coherence Tomography (OCT) and Chest X-Ray Images for
Classification", Mendeley Data v2, doi:10.17632/rscbjbr9sj.2; Cell 172(5), 2018)::

    ROOT/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg
"""

import hashlib
import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from .errors import ConfigError, DataError, SkippedFilesWarning
from .validation import SEED, Interval, Options, check_labels, check_param

__all__ = [
    "CLASS_NAMES",
    "BALANCING_METHODS",
    "DATA_ENV_VAR",
    "find_data_root",
    "scan_dataset",
    "manifest_hash",
    "file_hashes",
    "find_duplicates",
    "split_by_patient",
    "patient_folds",
    "load_images",
    "iter_images",
    "DEFAULT_CHUNK_SIZE",
    "INTERPOLATIONS",
    "balance",
    "make_dataset",
]

CLASS_NAMES = ("NORMAL", "PNEUMONIA")
SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
BALANCING_METHODS = ("smote", "class_weight", "oversample", "none")
DATA_ENV_VAR = "PNEUMOXAI_DATA"

_GET_DATA_HELP = (
    "Download the Kaggle dataset 'paultimothymooney/chest-xray-pneumonia' "
    "(https://www.kaggle.com/datasets/paultimothymooney/chest-xray-pneumonia, e.g. "
    "`kaggle datasets download -d paultimothymooney/chest-xray-pneumonia` and unzip it), "
    "then pass the folder that contains train/ and test/ with --data DIR or set "
    f"{DATA_ENV_VAR}=DIR."
)

# Kaggle file names: person<id>_<bacteria|virus>_<n>.jpeg, IM-<id>-<n>.jpeg,
# NORMAL2-IM-<id>-<n>.jpeg. NORMAL2 ids restart from 1, so they are a separate patient namespace.
_PNEUMONIA_NAME = re.compile(r"^(person\d+)_(bacteria|virus)_", re.IGNORECASE)
_NORMAL_NAME = re.compile(r"^((?:NORMAL2-)?IM-\d+)-", re.IGNORECASE)


def find_data_root(data=None):
    """Resolve the dataset folder from an argument, ``$PNEUMOXAI_DATA`` or nearby defaults.

    Parameters
    ----------
    data : str or path-like, default=None
        Explicit folder. Takes precedence over the environment variable.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    DataError
        If no folder is given and none of the defaults holds a dataset; the message says
        how to get the Kaggle folder and where to point pneumoxai.
    """
    if data is not None:
        return Path(data)
    if os.environ.get(DATA_ENV_VAR):
        return Path(os.environ[DATA_ENV_VAR])
    for candidate in (Path("../shared/data/chest_xray"), Path("data/chest_xray"), Path("chest_xray")):
        if (candidate / "train").is_dir():
            return candidate
    raise DataError(f"No chest X-ray dataset given or found. {_GET_DATA_HELP}")


def _parse_name(filename, label):
    """Return (patient_id, subtype) parsed from a Kaggle file name."""
    stem = Path(filename).stem
    match = _PNEUMONIA_NAME.match(stem)
    if match:
        return match.group(1).lower(), match.group(2).lower()
    match = _NORMAL_NAME.match(stem)
    if match:
        return match.group(1).upper(), "normal"
    # Unknown naming scheme: each file is its own patient, so no grouping is invented.
    return stem, "normal" if label == 0 else "unknown"


def scan_dataset(root):
    """Scan a Kaggle-layout chest X-ray folder into a table, one row per image.

    Parameters
    ----------
    root : str or path-like
        Folder holding ``train/`` and ``test/`` (``val/`` optional), each with
        ``NORMAL/`` and ``PNEUMONIA/`` sub-folders.

    Returns
    -------
    pandas.DataFrame
        Columns ``path`` (absolute), ``split`` (as found on disk), ``label``
        (0 NORMAL, 1 PNEUMONIA), ``label_name``, ``patient_id``, ``subtype``
        (normal / bacteria / virus), sorted by split and path. Files are not decoded
        here; unreadable ones are reported by :func:`load_images`.

    Raises
    ------
    DataError
        If ``root`` does not exist, holds no split folder, a split lacks a class
        folder, or a split holds no image.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for split, cls, name in [("train", "NORMAL", "IM-0001-0001.jpeg"),
    ...                          ("train", "PNEUMONIA", "person7_virus_12.jpeg")]:
    ...     (root / split / cls).mkdir(parents=True, exist_ok=True)
    ...     _ = (root / split / cls / name).write_bytes(b"")
    >>> scan_dataset(root)[["split", "label", "patient_id", "subtype"]]
       split  label patient_id subtype
    0  train      0    IM-0001  normal
    1  train      1    person7   virus
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise DataError(f"Dataset folder {str(root)!r} is a file; pass the folder that holds train/ and test/.")
    if not root.is_dir():
        raise DataError(f"Dataset folder {str(root)!r} does not exist. {_GET_DATA_HELP}")
    rows, skipped = [], []
    found_splits = [split for split in SPLITS if (root / split).is_dir()]
    if not found_splits:
        raise DataError(
            f"{str(root)!r} has none of the split folders {list(SPLITS)}; expected the Kaggle "
            f"layout ROOT/train/NORMAL, ROOT/train/PNEUMONIA, ROOT/test/... {_GET_DATA_HELP}"
        )
    for split in found_splits:
        n_before = len(rows)
        for label, class_name in enumerate(CLASS_NAMES):
            class_dir = root / split / class_name
            if not class_dir.is_dir():
                raise DataError(
                    f"Split folder {str(root / split)!r} has no {class_name}/ folder; expected "
                    f"{' and '.join(CLASS_NAMES)} sub-folders."
                )
            for entry in sorted(os.scandir(class_dir), key=lambda e: e.name):
                if not entry.name.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                try:
                    entry.name.encode("utf-8")
                except UnicodeEncodeError:  # the table, its CSV and its hashes need text names
                    skipped.append((os.fsencode(entry.path).decode("utf-8", "backslashreplace"),
                                    "file name is not valid UTF-8; rename it"))
                    continue
                path = _resolved_file(entry, skipped)
                if path is None:
                    continue
                patient_id, subtype = _parse_name(entry.name, label)
                rows.append((path, split, label, class_name, patient_id, subtype))
        if len(rows) == n_before:
            raise DataError(f"Split folder {str(root / split)!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
    if skipped:
        listed = "; ".join(f"{name} ({why})" for name, why in skipped[:5])
        warnings.warn(f"{len(skipped)} file(s) skipped while scanning {str(root)!r}: {listed}"
                      f"{' ...' if len(skipped) > 5 else ''}", SkippedFilesWarning, stacklevel=2)
    frame = pd.DataFrame(rows, columns=["path", "split", "label", "label_name", "patient_id", "subtype"])
    return _one_row_per_file(frame)


def _resolved_file(entry, skipped):
    """The absolute, link-free path of a directory entry that is a file, else None (reasons in ``skipped``)."""
    try:
        if not entry.is_file():
            if entry.is_symlink():
                skipped.append((entry.path, "dangling symbolic link"))
            return None
        return str(Path(entry.path).resolve(strict=True))
    except (OSError, RuntimeError) as exc:  # a symbolic-link loop, or a file that vanished
        skipped.append((entry.path, f"unreadable ({getattr(exc, 'strerror', None) or exc})"))
        return None


def _one_row_per_file(frame):
    """Refuse a file that sits under both labels (a link or copy): one of its labels is wrong.

    The same file twice under one label (a link) is kept once, so no image is scored twice.
    """
    labels = frame.groupby("path")["label"].nunique()
    conflicting = labels.index[labels > 1]
    if len(conflicting):
        raise DataError(f"{len(conflicting)} file(s) are reached from both NORMAL/ and PNEUMONIA/ (symbolic "
                        f"links), e.g. {conflicting[0]!r}: one of the two labels is wrong. Remove the link.")
    repeated = frame.duplicated("path")
    if repeated.any():
        warnings.warn(f"{int(repeated.sum())} file(s) are reached twice through symbolic links "
                      f"(e.g. {frame.loc[repeated, 'path'].iloc[0]!r}); each is kept once.", SkippedFilesWarning,
                      stacklevel=3)
    return frame[~repeated].reset_index(drop=True)


def manifest_hash(frame, content=True):
    """Hash a dataset table: its paths, labels, and (by default) every file's bytes.

    Used as a cache key, so cached predictions are invalidated when any image changes.

    Parameters
    ----------
    frame : pandas.DataFrame
        Table from :func:`scan_dataset` (or a subset of it).
    content : bool, default=True
        Hash file contents (from a ``sha256`` column when the table has one, see
        :func:`file_hashes`); when False only names, sizes and modification times.

    Returns
    -------
    str
        Hex SHA-256 digest.
    """
    digest = hashlib.sha256()
    hashes = _known_hashes(frame) if content else None
    for row, (path, label) in enumerate(zip(frame["path"], frame["label"])):
        digest.update(f"{Path(path).name}\0{int(label)}\0".encode())
        if content:
            digest.update(b"<missing>" if hashes[row] == "<missing>" else bytes.fromhex(hashes[row]))
            continue
        try:
            stat = os.stat(path)
            digest.update(f"{stat.st_size}\0{stat.st_mtime_ns}".encode())
        except OSError:
            digest.update(b"<missing>")
    return digest.hexdigest()


def file_hashes(frame):
    """SHA-256 of every file's bytes (``"<missing>"`` for unreadable ones), row-aligned with ``frame``.

    Parameters
    ----------
    frame : pandas.DataFrame with a ``path`` column

    Returns
    -------
    numpy.ndarray of shape (n_rows,), str
    """

    def digest(path):
        try:
            with open(path, "rb") as fh:
                return hashlib.sha256(fh.read()).hexdigest()
        except OSError:
            return "<missing>"

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return np.array(list(pool.map(digest, frame["path"])), dtype=object).astype(str)


def _known_hashes(frame):
    """The table's ``sha256`` column when it has one (run tables do), else the files' hashes."""
    return frame["sha256"].to_numpy() if "sha256" in frame.columns else file_hashes(frame)


def find_duplicates(frame, *, by="split"):
    """Byte-identical files that sit in more than one group (split or role): leakage.

    Parameters
    ----------
    frame : pandas.DataFrame
        Table with ``path`` and the ``by`` column; a ``sha256`` column is used when
        present (else the files are hashed).
    by : str, default="split"
        Column whose groups must not share an image, e.g. ``"role"`` (train/val/test).

    Returns
    -------
    pandas.DataFrame
        One row per file involved: ``sha256``, ``path``, ``by`` value, ``label``,
        sorted by hash. Empty when no image is shared across groups.

    Examples
    --------
    >>> import tempfile, pathlib, pandas as pd
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> for name, text in [("a.png", "x"), ("b.png", "x"), ("c.png", "y")]:
    ...     _ = (folder / name).write_text(text)
    >>> table = pd.DataFrame({"path": [str(folder / n) for n in ("a.png", "b.png", "c.png")],
    ...                       "split": ["train", "test", "test"], "label": [1, 1, 0]})
    >>> sorted(find_duplicates(table)["split"])
    ['test', 'train']
    """
    if by not in frame.columns:
        raise ConfigError(f"The 'by' parameter of find_duplicates must name a column; got {by!r}.")
    hashes = _known_hashes(frame)
    table = frame.assign(sha256=hashes)
    table = table[table["sha256"] != "<missing>"]
    spread = table.groupby("sha256")[by].nunique()
    shared = table[table["sha256"].isin(spread.index[spread > 1])]
    return shared[["sha256", "path", by, "label"]].sort_values(["sha256", by]).reset_index(drop=True)


def _patient_table(frame):
    """One row per patient: image count and majority label (for stratification)."""
    if frame.empty:
        raise DataError("Cannot split an empty dataset table.")
    return frame.groupby("patient_id", sort=True)["label"].agg(n="size", label=lambda s: int(s.mean() >= 0.5))


def split_by_patient(frame, val_fraction=0.2, seed=0):
    """Split a table into train and validation parts, grouped by patient, stratified by label.

    No patient appears on both sides, unlike a random image-level split, which leaks
    near-duplicate images of one patient into validation and inflates its scores.
    Within each class, patients are shuffled and taken until the class's share of
    validation images reaches ``val_fraction``.

    Parameters
    ----------
    frame : pandas.DataFrame
        Table with ``patient_id`` and ``label`` columns (e.g. the train rows of
        :func:`scan_dataset`).
    val_fraction : float, default=0.2
        Target fraction of images in the validation part, in (0, 1).
    seed : int, default=0
        Seed of the local random generator.

    Returns
    -------
    train_df, val_df : pandas.DataFrame
        Row subsets of ``frame`` (original index kept).

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"patient_id": list("aabbccddeeffgghhiijj"),
    ...                    "label": [0] * 10 + [1] * 10})
    >>> train, val = split_by_patient(df, val_fraction=0.2, seed=0)
    >>> len(val), set(train.patient_id) & set(val.patient_id)
    (4, set())
    """
    check_param("split_by_patient", "val_fraction", val_fraction, Interval("real", 0, 1, closed="neither"))
    check_param("split_by_patient", "seed", seed, SEED)
    patients = _patient_table(frame)
    rng = np.random.default_rng(seed)
    val_patients = []
    for _, group in patients.groupby("label", sort=True):
        order = rng.permutation(len(group))
        counts = group["n"].to_numpy()[order]
        target = val_fraction * counts.sum()
        # Take patients until the cumulative image count first reaches the target.
        n_take = int(np.searchsorted(np.cumsum(counts), target, side="left")) + 1
        n_take = min(max(n_take, 1), len(group) - 1) if len(group) > 1 else 0
        val_patients.extend(group.index.to_numpy()[order[:n_take]])
    is_val = frame["patient_id"].isin(set(val_patients)).to_numpy()
    train_df, val_df = frame[~is_val], frame[is_val]
    if train_df["label"].nunique() < 2 or val_df["label"].nunique() < 2:
        warnings.warn(
            "split_by_patient produced a part with a single class; the table has too few patients per class.",
            UserWarning,
            stacklevel=2,
        )
    return train_df, val_df


def patient_folds(frame, n_splits=5, seed=0):
    """Assign each row a fold id for patient-grouped, label-stratified k-fold training.

    Parameters
    ----------
    frame : pandas.DataFrame
        Table with ``patient_id`` and ``label`` columns.
    n_splits : int, default=5
    seed : int, default=0

    Returns
    -------
    numpy.ndarray of shape (n_rows,)
        Fold id in ``0 .. n_splits - 1`` for every row; rows of one patient share a fold.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    check_param("patient_folds", "seed", seed, SEED)
    n_patients = _patient_table(frame).shape[0]
    # Each fold holds out at least one patient, so there can be no more folds than patients.
    check_param("patient_folds", "n_splits", n_splits, Interval("int", 2, max(n_patients, 2)))
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    folds = np.empty(len(frame), dtype=np.int64)
    for fold, (_, held_out) in enumerate(splitter.split(np.zeros(len(frame)), frame["label"], frame["patient_id"])):
        folds[held_out] = fold
    return folds


#: Resize methods of :func:`load_images`: OpenCV's, or PIL's as ``keras.utils.load_img`` uses them.
INTERPOLATIONS = ("auto", "area", "bilinear", "nearest", "pil-nearest", "pil-bilinear", "pil-bicubic")
_CV2_INTERPOLATION = {"area": cv2.INTER_AREA, "bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}


def _decode_pil(path, size, method, channels):
    """Decode and resize exactly as ``keras.utils.load_img(path, color_mode, target_size, interpolation)``
    followed by ``img_to_array(...) / 255`` does (PIL), so a model trained on Keras' loader sees the same pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            # Keras converts to "L" or "RGB" (8 bits per channel; PIL clips 16-bit files).
            mode = "L" if channels == 1 else "RGB"
            if image.mode != mode:
                image = image.convert(mode)
            if image.size != (size, size):
                resample = {"pil-nearest": Image.NEAREST, "pil-bilinear": Image.BILINEAR,
                            "pil-bicubic": Image.BICUBIC}[method]
                image = image.resize((size, size), resample)
            array = np.asarray(image, dtype=np.float32)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:  # PIL's errors for broken files
        raise ValueError(f"not a decodable image ({exc})") from None
    if min(array.shape[:2]) < 8:
        raise ValueError(f"image too small ({array.shape[1]}x{array.shape[0]})")
    return array.reshape(size, size, channels) / np.float32(255.0)


def _decode(path, size, interpolation="auto"):
    """Decode one radiograph to a (size, size) float32 grayscale array in [0, 1], or raise ValueError."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0:
        raise ValueError("empty file")
    # Grayscale decoding drops alpha and colour in the codec (2.5x faster than decoding
    # colour and converting); ANYDEPTH keeps 16-bit PNGs at full precision.
    image = cv2.imdecode(raw, cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH)
    if image is None:
        raise ValueError("not a decodable image")
    if image.dtype not in (np.uint8, np.uint16, np.float32, np.float64):
        raise ValueError(f"unsupported pixel type {image.dtype}")
    if min(image.shape[:2]) < 8:
        raise ValueError(f"image too small ({image.shape[1]}x{image.shape[0]})")
    integer_max = np.iinfo(image.dtype).max if image.dtype.kind == "u" else None
    image = image.astype(np.float32)
    if image.shape[:2] != (size, size):
        if interpolation == "auto":
            # INTER_AREA averages source pixels when shrinking, which avoids aliasing.
            interpolation = "area" if image.shape[0] > size else "bilinear"
        image = cv2.resize(image, (size, size), interpolation=_CV2_INTERPOLATION[interpolation])
    if integer_max is not None:
        # Integer pixels are finite: scale and clip in place (interpolation can overshoot
        # by a rounding error), no NaN scan.
        image /= np.float32(integer_max)
        return np.clip(image, 0.0, 1.0, out=image)
    if not np.isfinite(image).all():
        raise ValueError("non-finite pixel values")
    return np.clip(image, 0.0, 1.0)


def load_images(paths, size=224, *, channels=3, interpolation="auto", n_jobs=None, return_mask=False):
    """Decode radiographs into a float32 array in [0, 1].

    Images are read as grayscale with OpenCV (8- and 16-bit, with or without alpha),
    resized to ``size`` x ``size`` (see ``interpolation``) and replicated to ``channels``
    channels. Unreadable files (empty, truncated, not an image) are skipped and reported
    by name with the reason in one :class:`~pneumoxai.errors.SkippedFilesWarning`.

    A model's probabilities depend on how its images were resized: pick the method its
    training pipeline used, so predictions are reproduced exactly. The ``pil-*`` methods
    decode with PIL and give exactly what ``keras.utils.load_img(path,
    target_size=(size, size), interpolation=...)`` followed by ``img_to_array(...) / 255``
    gives (``pil-nearest`` is Keras' default); with ``channels=3`` they keep the file's
    RGB channels as Keras does.

    Parameters
    ----------
    paths : sequence of str or path-like, or pandas.DataFrame with a ``path`` column
    size : int, default=224
    channels : {1, 3}, default=3
    interpolation : {"auto", "area", "bilinear", "nearest", "pil-nearest", "pil-bilinear", "pil-bicubic"}, \
default="auto"
        ``auto``: OpenCV's area averaging when shrinking (no aliasing), bilinear when
        enlarging; ``area``, ``bilinear``, ``nearest``: that OpenCV method always;
        ``pil-*``: PIL's, as ``keras.utils.load_img`` uses it. Files already at
        ``size`` are not resized.
    n_jobs : int, default=None
        Decoding threads (OpenCV releases the GIL); defaults to the CPU count.
    return_mask : bool, default=False
        Also return a boolean mask of shape (n_paths,) marking the files that loaded.

    Returns
    -------
    images : numpy.ndarray of shape (n_loaded, size, size, channels), float32
    mask : numpy.ndarray of shape (n_paths,), bool
        Only when ``return_mask`` is True.

    Raises
    ------
    DataError
        If no file at all could be read.
    """
    paths = _check_load_options("load_images", paths, size, channels, interpolation, n_jobs)
    with ThreadPoolExecutor(max_workers=n_jobs or os.cpu_count() or 1) as pool:
        images, ok, skipped = _decode_many(paths, size, channels, interpolation, pool)
    _report_skipped(skipped, len(paths), ok.any())
    return (images, ok) if return_mask else images


#: Images decoded at once by :func:`iter_images` and the streamed predictions: 256 images at
#: 224 px are 154 MB of float32, two such chunks (one decoding while one is used) stay far below
#: a model's own memory, and 256 keeps a 64-image batch full.
DEFAULT_CHUNK_SIZE = 256


def iter_images(paths, size=224, *, chunk_size=DEFAULT_CHUNK_SIZE, channels=3, interpolation="auto", n_jobs=None):
    """Decode radiographs ``chunk_size`` at a time, as :func:`load_images` would decode them all.

    Memory stays bounded by two chunks whatever the number of files: the next chunk is
    decoded (in a thread pool, as :func:`load_images`) while the caller uses the current
    one. The pixels are exactly those of :func:`load_images`; unreadable files are
    reported in the same single :class:`~pneumoxai.errors.SkippedFilesWarning`, issued
    once every chunk has been read.

    Parameters
    ----------
    paths : sequence of str or path-like, or pandas.DataFrame with a ``path`` column
    size, channels, interpolation, n_jobs
        As in :func:`load_images`.
    chunk_size : int, default=DEFAULT_CHUNK_SIZE
        Files decoded at once.

    Yields
    ------
    images : numpy.ndarray of shape (n_loaded, size, size, channels), float32
        The chunk's files that loaded, in order.
    mask : numpy.ndarray of shape (n_chunk,), bool
        Which of the chunk's files loaded; the chunks' masks concatenated are
        :func:`load_images`' ``mask``.

    Raises
    ------
    DataError
        If no file at all could be read (after the last chunk).

    Examples
    --------
    >>> import numpy as np, cv2, tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> paths = [os.path.join(folder, f"{i}.png") for i in range(5)]
    >>> for path in paths:
    ...     _ = cv2.imwrite(path, np.full((16, 16), 255, np.uint8))
    >>> [(images.shape, mask.tolist()) for images, mask in iter_images(paths, 8, chunk_size=2, channels=1)]
    [((2, 8, 8, 1), [True, True]), ((2, 8, 8, 1), [True, True]), ((1, 8, 8, 1), [True])]
    """
    paths = _check_load_options("iter_images", paths, size, channels, interpolation, n_jobs)
    check_param("iter_images", "chunk_size", chunk_size, Interval("int", 1, None))
    skipped, any_ok = [], False
    # One thread runs the next chunk's decoding (itself spread over the pool) while this one is used.
    with ThreadPoolExecutor(max_workers=n_jobs or os.cpu_count() or 1) as pool, \
            ThreadPoolExecutor(max_workers=1) as ahead:
        def decode(start):
            return _decode_many(paths[start:start + chunk_size], size, channels, interpolation, pool)

        pending = ahead.submit(decode, 0) if paths else None
        for start in range(0, len(paths), chunk_size):
            images, ok, chunk_skipped = pending.result()
            if start + chunk_size < len(paths):
                pending = ahead.submit(decode, start + chunk_size)
            skipped += chunk_skipped
            any_ok = any_ok or ok.any()
            yield images, ok
    _report_skipped(skipped, len(paths), any_ok, stacklevel=3)


def _check_load_options(owner, paths, size, channels, interpolation, n_jobs):
    """The paths as a list of str, after checking the decoding options of ``owner``."""
    if isinstance(paths, pd.DataFrame):
        paths = paths["path"].tolist()
    check_param(owner, "size", size, Interval("int", 8, 4096))
    check_param(owner, "channels", channels, Options((1, 3)))
    check_param(owner, "n_jobs", n_jobs, (None, Interval("int", 1, 256)))
    check_param(owner, "interpolation", interpolation, Options(INTERPOLATIONS))
    return [str(p) for p in paths]


def _decode_many(paths, size, channels, interpolation, pool):
    """(the images that loaded, the mask of those that did, [(path, reason)] of the others), decoded in ``pool``."""
    # Each worker writes its image into every channel, so the large output array is
    # filled (and its pages touched) in parallel instead of by a serial np.repeat.
    images = np.empty((len(paths), size, size, channels), dtype=np.float32)
    ok = np.zeros(len(paths), dtype=bool)
    skipped = []

    def work(index):
        try:
            if interpolation.startswith("pil-"):
                images[index] = _decode_pil(paths[index], size, interpolation, channels)
                ok[index] = True
                return
            image = _decode(paths[index], size, interpolation)
            if channels == 3:
                # OpenCV's replication writes the interleaved channels in C, 6x faster
                # than NumPy's broadcast into the strided last axis.
                cv2.cvtColor(image, cv2.COLOR_GRAY2RGB, dst=images[index])
            else:
                images[index, ..., 0] = image
            ok[index] = True
        except (ValueError, OSError, cv2.error) as exc:
            skipped.append((paths[index], str(exc).splitlines()[0] if str(exc) else type(exc).__name__))

    list(pool.map(work, range(len(paths))))
    return (images if ok.all() else images[ok]), ok, skipped


def _report_skipped(skipped, n_paths, any_ok, stacklevel=3):
    """Warn once about every unreadable file; raise when none of ``n_paths`` could be read."""
    if skipped:
        listing = "; ".join(f"{Path(p).name}: {why}" for p, why in sorted(skipped)[:20])
        more = f" (and {len(skipped) - 20} more)" if len(skipped) > 20 else ""
        warnings.warn(f"Skipped {len(skipped)} unreadable file(s): {listing}{more}", SkippedFilesWarning,
                      stacklevel=stacklevel)
    if n_paths and not any_ok:
        raise DataError(f"None of the {n_paths} image file(s) could be read.")


def balance(images, labels, method="none", *, seed=0):
    """Balance the two classes of a training set.

    Parameters
    ----------
    images : numpy.ndarray of shape (n_samples, H, W, C)
    labels : numpy.ndarray of shape (n_samples,)
        0/1 labels.
    method : {"smote", "class_weight", "oversample", "none"}
        ``smote`` synthesises minority images with imbalanced-learn's SMOTE (Chawla
        et al., JAIR 2002) on one channel of the flattened pixels (channels are
        replicas), which keeps the full 224 px train split within a few GB;
        ``oversample`` repeats minority images (RandomOverSampler); ``class_weight``
        leaves the data and returns inverse-frequency weights for the loss.
    seed : int, default=0

    Returns
    -------
    images, labels : numpy.ndarray
        Possibly enlarged arrays (SMOTE samples and repeats are appended).
    class_weight : dict or None
        ``{0: w0, 1: w1}`` for ``class_weight``, otherwise None.
    """
    check_param("balance", "method", method, Options(BALANCING_METHODS))
    check_param("balance", "seed", seed, SEED)
    if len(images) != len(labels):
        raise DataError(f"balance: {len(images)} images but {len(labels)} labels.")
    labels = check_labels(labels, len(images), owner="balance", name="labels", both_classes=False).astype(np.int64)
    counts = np.bincount(labels, minlength=2)
    if (counts == 0).any():
        raise DataError(f"Training data needs both classes; got {counts[0]} NORMAL and {counts[1]} PNEUMONIA images.")
    if method == "none":
        return images, labels, None
    if method == "class_weight":
        weights = len(labels) / (2.0 * counts)
        return images, labels, {0: float(weights[0]), 1: float(weights[1])}
    if method == "oversample":
        from imblearn.over_sampling import RandomOverSampler

        sampler = RandomOverSampler(random_state=seed)
        index, _ = sampler.fit_resample(np.arange(len(labels))[:, None], labels)
        index = index[:, 0]
        return images[index], labels[index], None
    from imblearn.over_sampling import SMOTE

    k_neighbors = min(5, int(counts.min()) - 1)
    if k_neighbors < 1:
        raise DataError(f"SMOTE needs at least 2 images of the minority class; got {int(counts.min())}.")
    n, height, width, n_channels = images.shape
    flat = images[..., 0].reshape(n, -1)
    sampler = SMOTE(k_neighbors=k_neighbors, random_state=seed)
    flat_res, labels_res = sampler.fit_resample(flat, labels)
    synthetic = flat_res[n:].astype(np.float32).reshape(-1, height, width, 1)
    synthetic = np.repeat(synthetic, n_channels, axis=-1)
    return np.concatenate([images, synthetic]), np.asarray(labels_res, dtype=np.int64), None


def make_dataset(images, labels=None, *, batch_size=32, training=False, augment=None, seed=0, size=None):
    """Build a ``tf.data`` pipeline over in-memory images.

    Training pipelines reshuffle every epoch and apply augmentation (random rotation,
    horizontal flip, contrast) on whole batches after batching; evaluation pipelines do
    neither. Both prefetch so the input work overlaps the network's compute.

    Parameters
    ----------
    images : numpy.ndarray of shape (n_samples, H, W, 3), float32 in [0, 1]
    labels : numpy.ndarray of shape (n_samples,), default=None
    batch_size : int, default=32
    training : bool, default=False
    augment : dict, default=None
        ``{"rotation": fraction of a full turn, "flip": bool, "contrast": factor,
        "crop": fraction}``; ``crop`` zooms into a random window up to that fraction
        smaller per side and resizes it back (a random-resized crop of fixed aspect).
        Ignored unless ``training``.
    seed : int, default=0
    size : int, optional
        Resize every batch to ``size`` x ``size`` (after augmentation), e.g. for the
        small early epochs of progressive resizing; None keeps the images' size.

    Returns
    -------
    tf.data.Dataset
        Yields ``images`` or ``(images, labels)`` batches.
    """
    import tensorflow as tf

    check_param("make_dataset", "seed", seed, SEED)
    features = tf.data.Dataset.from_tensor_slices(images)
    dataset = (
        tf.data.Dataset.zip((features, tf.data.Dataset.from_tensor_slices(np.asarray(labels, np.float32))))
        if labels is not None
        else features
    )
    if training:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    if training and augment:
        augmenter = _augmenter(augment, seed)
        if augmenter is not None:
            def apply(x, *rest):
                return (tf.clip_by_value(augmenter(x, training=True), 0.0, 1.0), *rest)

            # Sequential on purpose: the layers draw from one seed-generator state, and
            # parallel calls would race for it, so a seed would not reproduce a run.
            dataset = dataset.map(apply)
    if size is not None and (int(size), int(size)) != tuple(np.shape(images)[1:3]):
        def resize(x, *rest):
            return (tf.image.resize(x, (int(size), int(size)), antialias=True), *rest)

        dataset = dataset.map(resize, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _augmenter(augment, seed):
    import keras

    unknown = set(augment) - {"rotation", "flip", "contrast", "crop"}
    if unknown:
        raise ConfigError(f"Unknown augmentation option(s) {sorted(unknown)}; "
                          "valid: ['contrast', 'crop', 'flip', 'rotation'].")
    layers = []
    if augment.get("rotation"):
        layers.append(keras.layers.RandomRotation(float(augment["rotation"]), fill_mode="constant", seed=seed))
    if augment.get("flip"):
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed + 1))
    if augment.get("contrast"):
        layers.append(keras.layers.RandomContrast(float(augment["contrast"]), seed=seed + 2))
    if augment.get("crop"):
        # A negative zoom factor zooms in: a random window, resized back to the full image.
        crop = float(augment["crop"])
        layers.append(keras.layers.RandomZoom((-crop, 0.0), fill_mode="constant", seed=seed + 3))
    return keras.Sequential(layers, name="augment") if layers else None
