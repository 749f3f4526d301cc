"""Atomic file writes and JSON reads for scripts built on pneumoxai.

The same writers the pipeline uses for every artifact: each writes a temporary file in
the destination folder and renames it into place, so an interrupted script never leaves
a half-written table. Experiments and user scripts import them from here (the
implementation lives in a private module).

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "result.json"
>>> write_json(path, {"auc": 0.9})
>>> read_json(path)
{'auc': 0.9}
"""

from ._io import read_json, write_csv, write_json, write_text

__all__ = ["read_json", "write_csv", "write_json", "write_text"]
