#!/usr/bin/env bash
# GPU acceptance benchmark of real-size LTX-2.0 / LTX-2.3 LoRA training steps: one table, PASS/FAIL per target.
#   bash bench/gpu_acceptance.sh          # on a GPU (under 8 minutes on one H100/H200)
#   bash bench/gpu_acceptance.sh --cpu    # or REDUCED=1: the reduced CPU check (COMPILE=1 / --compile: compiled blocks)
# Options and columns: bench/gpu_acceptance.py. Works from any directory.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=python
if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" bench/gpu_acceptance.py "$@"
