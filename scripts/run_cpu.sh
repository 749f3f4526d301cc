#!/usr/bin/env bash
# Set up a virtual environment and run the main job: the CPU-profile ensemble
# (3 ResNet50 snapshot members at 128 px from one run from scratch) trained, evaluated,
# explained and reported.
# Data: --data DIR, else $PNEUMOXAI_DATA, else ../shared/data/chest_xray if present.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e .
exec .venv/bin/pneumoxai run --config experiments/configs/cpu.yaml --out runs/cpu "$@"
