#!/usr/bin/env bash
# Set up (idempotent) and run the default, CPU-only test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
. .venv/bin/activate
if [ -z "${KWH_DATA:-}" ] && [ -d ../shared/data ]; then export KWH_DATA="$(cd ../shared/data && pwd)"; fi
exec python -m pytest -q "$@"
