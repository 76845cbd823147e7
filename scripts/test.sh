#!/usr/bin/env bash
# Set up what is missing (ffmpeg, the virtualenv, Redis, PostgreSQL), then run the whole test suite.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
source scripts/services.sh
exec .venv/bin/python -m pytest "$@"
