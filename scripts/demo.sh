#!/usr/bin/env bash
# Set up (idempotent), then the main job: train LeNet-5-Caffe with a group-horseshoe prior
# on MNIST, compress it to a .kwh file, evaluate the file and print its summary.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
. .venv/bin/activate
if [ -z "${KWH_DATA:-}" ] && [ -d ../shared/data ]; then export KWH_DATA="$(cd ../shared/data && pwd)"; fi
mkdir -p out
kwh compress --model lenet5 --data mnist --prior group-horseshoe \
  --pretrain-epochs "${PRETRAIN_EPOCHS:-2}" --epochs "${EPOCHS:-4}" --out out/lenet5.kwh
kwh evaluate out/lenet5.kwh --data mnist
kwh inspect out/lenet5.kwh
