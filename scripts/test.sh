#!/usr/bin/env bash
# Set up a virtual environment with the test, docs and distributed extras and run the whole suite,
# the real-data tests and the docs build (marker "slow") included.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# The distributed extra (Dask, ~5 MB, ~12 s) lets tests/test_sharding.py run the analysis on a local cluster.
.venv/bin/python -m pip install -q -e ".[test,docs,distributed]"
# --durations: the slowest tests in every log, to keep the suite inside its 15-minute budget.
# Two workers, one test file each at a time (--dist loadfile), so a module's fixture (the
# real-data smoke run) is built once; the many single-threaded tests overlap the TensorFlow ones.
# -rs: skipped tests and why (the browser tests skip where Chromium could not be installed).
.venv/bin/python -m pytest --doctest-modules pneumoxai tests --durations=15 -rs -n 2 --dist loadfile "$@"
