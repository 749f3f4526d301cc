"""Atomic file writes and content hashes.

Every artifact pneumoxai writes goes to a temporary file in the destination folder
and is renamed into place, so an interrupted run never leaves a half-written file.
"""

import contextlib
import hashlib
import io
import json
import os
import re
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .errors import CacheError


def _file_mode():
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


# mkstemp creates files readable by their owner only; artifacts get the usual
# permissions instead, so a run folder shared by a team (or cluster jobs) stays readable.
_FILE_MODE = _file_mode()


@contextlib.contextmanager
def atomic_path(path, suffix=None):
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=suffix or path.suffix or ".tmp"
    )
    os.close(fd)
    try:
        try:
            yield Path(tmp)
            os.chmod(tmp, _FILE_MODE)
            _fsync(tmp)  # the rename must not reach the disk before the data (power loss)
            os.replace(tmp, path)
        except OSError as exc:
            if exc.filename is not None:
                raise
            # Name the artifact: "No space left on device" alone does not say what was lost.
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def remove_orphan_temp_files(folder):
    """Delete temporary files that :func:`atomic_path` left in ``folder`` when its process was killed.

    Only call it while holding the folder's lock, so no live writer owns them.
    """
    folder = Path(folder)
    if folder.is_dir():
        for orphan in folder.glob(".*.*"):
            if orphan.is_file() and _TEMP_NAME.fullmatch(orphan.name):
                orphan.unlink(missing_ok=True)


# atomic_path's names: "." + target name + "." + 8 random characters + suffix
_TEMP_NAME = re.compile(r"\.(?P<target>.+)\.[a-z0-9_]{8}(?P<suffix>\.[A-Za-z0-9]+)")


def _fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path, data):
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def write_text(path, text):
    write_bytes(path, text.encode("utf-8"))


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj):
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def read_json(path):
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise CacheError(f"{path} is not valid JSON ({exc}); delete it to rebuild.") from exc


def write_csv(path, frame, **kwargs):
    write_text(path, frame.to_csv(**kwargs))


def save_npz(path, **arrays):
    """Write a compressed ``.npz`` atomically; object arrays are refused (no pickle)."""
    buf = io.BytesIO()
    for name, arr in arrays.items():
        if np.asarray(arr).dtype == object:
            raise TypeError(f"Array {name!r} has dtype object; pneumoxai never pickles.")
    np.savez_compressed(buf, **arrays)
    write_bytes(path, buf.getvalue())


def load_npz(path):
    """Load every array of an ``.npz`` written by :func:`save_npz` (never unpickles)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise CacheError(f"{path} is corrupt or truncated ({exc}); delete it to rebuild.") from exc


def sha256_file(path, chunk_size=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- arrays written and read by rows

#: Rows converted or summed at once by :func:`iter_rows` and :func:`mean_rows`: 256 maps at 224 px are 25 MB
#: in float16.
ROW_CHUNK = 256


@contextlib.contextmanager
def npy_rows_writer(path, shape, dtype, *, index_path, **index):
    """Write the ``.npy`` file ``path`` a block of rows at a time, all or nothing, with the ``.npz`` that names its rows.

    Yields ``write(rows)``, which appends rows (of ``shape[1:]``, cast to ``dtype``
    exactly as :meth:`numpy.ndarray.astype` casts) to a temporary file beside ``path``;
    when the block ends with all ``shape[0]`` rows written, the file is renamed onto
    ``path`` and then ``index`` (arrays such as the rows' image paths) is saved to
    ``index_path`` by :func:`save_npz`. ``index_path`` is deleted first, so a reader that
    finds it finds the rows it names, and an interrupted write leaves neither file
    (only an older ``path``, which no index names). The rows go to the file by plain
    writes, not through a memory map, so written pages do not count in the process's
    memory (RSS).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> with npy_rows_writer(folder / "a.npy", (3, 2), np.float16, index_path=folder / "a.npz",
    ...                      names=np.array(["x", "y", "z"])) as write:
    ...     write(np.ones((2, 2)))
    ...     write(np.zeros((1, 2)))
    >>> NpyRows(folder / "a.npy")[1:].tolist(), load_npz(folder / "a.npz")["names"].tolist()
    ([[1.0, 1.0], [0.0, 0.0]], ['x', 'y', 'z'])
    """
    shape, dtype = tuple(int(s) for s in shape), np.dtype(dtype)
    Path(index_path).unlink(missing_ok=True)
    written = 0

    def write(rows):
        nonlocal written
        rows = np.ascontiguousarray(np.asarray(rows).astype(dtype, copy=False))
        if rows.shape[1:] != shape[1:] or written + len(rows) > shape[0]:
            raise ValueError(f"rows of shape {rows.shape} do not fit {written} of {shape} written to {path}")
        if rows.size:  # (a memoryview of no bytes cannot be cast)
            fh.write(memoryview(rows).cast("B"))
        written += len(rows)

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                  "fortran_order": False, "shape": shape})
        yield write
        if written != shape[0]:
            raise ValueError(f"{written} of the {shape[0]} rows of {path} were written; nothing was saved")
    save_npz(index_path, **index)


class Rows:
    """An array kept out of memory (on disk, or packed) whose rows are made when indexed, for the maps or masks
    of a whole split: ``rows[index]`` (an int, a slice, integer or boolean indices along the first
    axis) is an in-memory array. The functions that take such arrays read one a block of rows at a
    time (:func:`iter_rows`, :func:`mean_rows`); ``shape``, ``dtype``, ``ndim`` and ``len`` are those
    of the whole array."""

    shape = ()
    dtype = None

    @property
    def ndim(self):
        return len(self.shape)

    def __len__(self):
        return self.shape[0]


class NpyRows(Rows):
    """A ``.npy`` file on disk whose rows are read when indexed (:class:`Rows`).

    Each read goes through a memory map that is dropped at once, so the pages read do not
    stay in the process's memory.

    Raises
    ------
    CacheError
        The file is not a readable ``.npy`` (e.g. truncated).
    """

    def __init__(self, path):
        self.path = Path(path)
        rows = self._open()
        self.shape, self.dtype = rows.shape, rows.dtype

    def _open(self):
        try:
            return np.load(self.path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise CacheError(f"{self.path} is corrupt or truncated ({exc}); delete it to rebuild.") from exc

    def __getitem__(self, index):
        return np.array(self._open()[index])

    def __repr__(self):
        return f"NpyRows({str(self.path)!r}, shape={self.shape}, dtype={self.dtype})"


def iter_rows(array, chunk_size=ROW_CHUNK):
    """``array[start:start + chunk_size]`` for start = 0, chunk_size, ...: an array or :class:`Rows` by blocks."""
    for start in range(0, len(array), chunk_size):
        yield array[start:start + chunk_size]


def mean_rows(array, index, chunk_size=ROW_CHUNK):
    """``array[index].mean(axis=0, dtype=np.float64)`` read ``chunk_size`` rows at a time (``index``: bool or int).

    The rows are added one after another in float64, as NumPy's mean along the first
    axis adds them, so the result is the same to the last bit.

    Examples
    --------
    >>> a = np.arange(12, dtype=np.float16).reshape(4, 3)
    >>> mean_rows(a, np.array([True, False, True, False]), chunk_size=1).tolist()
    [3.0, 4.0, 5.0]
    """
    index = np.asarray(index)
    index = np.flatnonzero(index) if index.dtype == bool else index.astype(np.intp).ravel()
    total = np.zeros(array.shape[1:], np.float64)
    for start in range(0, len(index), chunk_size):
        for row in array[index[start:start + chunk_size]]:
            total += row
    return total / len(index)
