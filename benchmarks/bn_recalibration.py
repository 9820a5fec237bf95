"""Test and validation error of a Bayesian run's checkpoint with the BatchNorm statistics it
holds and with them re-estimated for the deterministic network (kwh.bayes.recalibrate_batchnorm).

    python -m benchmarks.bn_recalibration RUN_DIR [--width 0.5]

``--width``: the run trained paper_table's net at this width factor (ResNet-20: 0.5 is 8
channels), as ``paper_table --width`` and ``threshold_sweep --width`` take it.
"""

from __future__ import annotations

import argparse
import json

import torch

from benchmarks.baselines.common import make_net
from kwh.train import checkpoint_path, load_checkpoint
from kwh.train.data import load_train_data
from kwh.train.evaluate import BN_CALIBRATION, recalibrate_from_inputs, test_metrics


def _error(model, ds) -> float:
    return test_metrics(model, *ds.tensors[:2], 1000, "cpu")["test_error"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--width", type=float, default=None,
                   help="the run's net at this width factor, as paper_table --width built it")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    template = None
    if a.width is not None:  # a run of a resized reference net: its structure comes from here
        cfg0 = json.loads((checkpoint_path(a.run).parent / "config.json").read_text())
        template = make_net(cfg0["model"], a.width)
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
