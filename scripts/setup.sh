#!/usr/bin/env bash
# Creates .venv (if missing) and installs torch (CPU build), then kwh with its test extras.
# Quiet: pip's output goes to .venv/setup.log and is shown only if something fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
log=.venv/setup.log
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv and installing torch ${KWH_TORCH_VERSION:-2.13.0} (CPU) and kwh (a few minutes the first time)"
  "$PY" -m venv .venv
fi
. .venv/bin/activate
run() { "$@" >>"$log" 2>&1 || { echo "setup failed: $*" >&2; tail -n 40 "$log" >&2; exit 1; }; }
: >"$log"
if ! python -c "import torch" >/dev/null 2>&1; then
  # Pinned first: an unpinned torch would pull a multi-GB CUDA build on CPU-only machines.
  run pip install --quiet "torch==${KWH_TORCH_VERSION:-2.13.0}"
fi
run pip install --quiet -e ".[test,bench]"
