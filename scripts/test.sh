#!/usr/bin/env bash
# Set up a virtual environment with the test extras and run the whole suite,
# the real-data tests (marker "slow") included.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"
# --durations: the slowest tests in every log, to keep the suite inside its 15-minute budget.
.venv/bin/python -m pytest --doctest-modules pneumoxai tests --durations=15 "$@"
