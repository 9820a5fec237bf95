"""Experiment: give the horseshoe's log-scale means the log-variances' larger Adam step.

kwh.bayes.optim puts only the log-variances in the 10x-lr group. The group-horseshoe scale z
is log-normal with location (a_mu + b_mu + sa_mu + sb_mu) / 2: these means are log-space
too, start ~17 nats from where an unneeded group settles (non-centred init, tau0 = 1e-5),
and move at most about lr per Adam step. This runs `kwh train`'s engine with those four
means moved into the larger-step group as well, everything else unchanged, to see whether
conv filters then prune in a short run. An experiment, not a library change.

    python benchmarks/train_ghs_scale_lr.py --pretrain-epochs 2 --epochs 12 \
        --out-dir benchmarks/results/train_lenet5_mnist_ghs/e12_scale_lr
"""

from __future__ import annotations

import argparse
import logging
import sys

import kwh.bayes.optim as optim
from kwh.train import TrainConfig, run_training

SCALE_MEANS = {"a_mu", "b_mu", "sa_mu", "sb_mu"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pretrain-epochs", type=int, default=2)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out-dir", required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="kwh: %(message)s", stream=sys.stderr)
    plain = optim.is_variance_parameter
    optim.is_variance_parameter = lambda name: plain(name) or name.rsplit(".", 1)[-1] in SCALE_MEANS
    config = TrainConfig(model="lenet5", data="mnist", prior="group-horseshoe",
                         pretrain_epochs=args.pretrain_epochs, epochs=args.epochs,
                         threads=args.threads, out_dir=args.out_dir)
    result = run_training(config, resume=True, progress=False)
    last = result.history[-1]
    print(f"test error {last['test_error']:.2f}%; alive "
          + ", ".join(f"{n}: {last['alive'][n]}/{last['total'][n]}" for n in last["alive"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
