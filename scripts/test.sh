#!/usr/bin/env bash
# Set up what is missing (ffmpeg, the virtualenv, Redis, PostgreSQL, Chromium), then run the whole test suite.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
source scripts/services.sh
# The dashboard is tested in a real headless browser (Debian's chromium; only the tests need it).
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || apt_install chromium
exec .venv/bin/python -m pytest "$@"
