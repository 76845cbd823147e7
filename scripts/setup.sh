#!/usr/bin/env bash
# Idempotent set-up of a fresh machine: the system packages the project needs, and a virtualenv (.venv)
# with the project and its test tools installed. Sourced or run by scripts/demo.sh and scripts/test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

missing=()
command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)  # tests and the demo generate media with it
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "setup: installing ${missing[*]} with apt-get" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python=${PYTHON:-python3}
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "setup: Python 3.11 or newer is needed (found $("$python" --version))" >&2; exit 1; }
[ -x .venv/bin/python ] || "$python" -m venv .venv
# Reinstall only when the dependency list changed.
stamp=".venv/.installed-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing the project into .venv" >&2
  .venv/bin/python -m pip install -q --upgrade pip
  # torch first, pinned: an unpinned resolve would pull a multi-GB CUDA build. TORCH_SPEC overrides it
  # (e.g. TORCH_SPEC="torch==2.13.0+cu128 --index-url ..." on a GPU machine).
  .venv/bin/python -m pip install -q ${TORCH_SPEC:-torch==2.13.0}
  .venv/bin/python -m pip install -q -e '.[worker,dev]'
  # Lightricks' reference implementation, for the tests that check our loading of official checkpoints
  # and our LoRA files against it. It pins torch~=2.7 and torchaudio (unusable with this torch build), so
  # it goes in without its dependencies; what it needs beyond ours (einops, scipy) is in the dev extra.
  .venv/bin/python -m pip install -q --no-deps ltx-core==1.0.0
  rm -f .venv/.installed-*
  touch "$stamp"
fi
