"""Test and validation error of a Bayesian run's checkpoint with the BatchNorm statistics it
holds and with them re-estimated for the deterministic network (kwh.bayes.recalibrate_batchnorm).

    python -m benchmarks.bn_recalibration RUN_DIR [--model resnet20 --width 8]
"""

from __future__ import annotations

import argparse

import torch

from kwh.train import load_checkpoint
from kwh.train.data import load_train_data
from kwh.train.evaluate import BN_CALIBRATION, recalibrate_from_inputs, test_metrics


def _error(model, ds) -> float:
    return test_metrics(model, *ds.tensors[:2], 1000, "cpu")["test_error"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--model", default=None, help="reference model of a custom run (resnet20)")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    template = None
    if a.model == "resnet20":
        from kwh.models import resnet20
        template = resnet20(width=a.width)
    model, cfg = load_checkpoint(a.run, model=template)
    data = load_train_data(cfg)
    before = _error(model, data.test), _error(model, data.validation)
    n = recalibrate_from_inputs(model, data.train.tensors[0], 500)
    after = _error(model, data.test), _error(model, data.validation)
    print(f"{a.run}: {n} BatchNorm layers; training statistics: test {before[0]:.2f} %, "
          f"validation {before[1]:.2f} %; re-estimated on {BN_CALIBRATION:,} training images: "
          f"test {after[0]:.2f} %, validation {after[1]:.2f} %")


if __name__ == "__main__":
    main()
