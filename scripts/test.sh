#!/usr/bin/env bash
# Set up (idempotent, quiet) and run the test suite (CPU only). Extra arguments go to pytest,
# e.g. `bash scripts/test.sh -m slow` for the long tier.
# The report's browser test renders in headless Chromium: as root with apt-get, this script
# installs Debian's chromium package once (KWH_NO_BROWSER=1 skips that; the test then skips).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -z "${KWH_NO_BROWSER:-}" ] && ! command -v chromium >/dev/null 2>&1 \
   && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "test: installing Debian's chromium for the report's browser test (KWH_NO_BROWSER=1 skips)"
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } >/dev/null 2>&1 \
    || echo "chromium could not be installed: the report's browser test will skip" >&2
fi
. .venv/bin/activate
if [ -z "${KWH_DATA:-}" ] && [ -d ../shared/data ]; then export KWH_DATA="$(cd ../shared/data && pwd)"; fi
exec python -m pytest -q -p no:cacheprovider "$@"
