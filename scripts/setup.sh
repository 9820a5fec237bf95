#!/usr/bin/env bash
# Creates .venv (if missing) and installs torch (CPU build), then kwh with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
if ! python -c "import torch" >/dev/null 2>&1; then
  # Pinned first: an unpinned torch would pull a multi-GB CUDA build on CPU-only machines.
  pip install --quiet "torch==${KWH_TORCH_VERSION:-2.13.0}"
fi
pip install --quiet -e ".[test,bench]"
# Point the loaders at the shared data sets when they sit beside the checkout.
if [ -z "${KWH_DATA:-}" ] && [ -d ../shared/data ]; then
  echo "data: KWH_DATA will point at $(cd ../shared/data && pwd)"
fi
