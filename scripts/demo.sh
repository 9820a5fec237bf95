#!/usr/bin/env bash
# Set up (idempotent, quiet unless it fails), then the main job: LeNet-300-100 on real MNIST,
# a dense start (10 plain epochs), 30 epochs of Sparse VD (log-uniform prior), compressed to a
# .kwh file with bits fitted on the validation split, evaluated from the file. A few minutes
# on two CPU cores; `--resume` reuses a finished run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
if [ -z "${KWH_DATA:-}" ] && [ -d ../shared/data ]; then export KWH_DATA="$(cd ../shared/data && pwd)"; fi
mkdir -p out
echo "== kwh train: a dense start, then the free energy with a sparsity prior (a line per epoch)"
kwh train --model lenet300 --data mnist --prior log-uniform \
  --pretrain-epochs "${PRETRAIN_EPOCHS:-10}" --epochs "${EPOCHS:-30}" \
  --out-dir out/lenet300-run --resume --no-progress
echo "== kwh compress: prune, fold, fit the bits, write the file"
kwh compress --checkpoint out/lenet300-run --out out/lenet300.kwh
echo "== kwh evaluate: the file alone, on the 10,000 test images"
kwh evaluate out/lenet300.kwh --data mnist
