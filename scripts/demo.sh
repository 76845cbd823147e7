#!/usr/bin/env bash
# Set up what is missing, then run the main job end to end on generated sample data (no services needed).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/ltx2trainer demo --out "${1:-demo-output}"
