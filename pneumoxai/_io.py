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
