"""The trained mixture of a soft weight-sharing run, read from its checkpoint: each component's
mean, width and mixing proportion, and how the covered weights spread in magnitude.

    python -m benchmarks.sws_mixture RUN [RUN ...]

RUN: a `kwh train --method sws` run folder (e.g. a paper table's runs/seed0/soft_weight_sharing).
Shows why quantizing a run costs what it does: a zero component wider than the weights that
carry signal sends them to zero (kwh.sws.quantize_ takes the most responsible component).
"""

from __future__ import annotations

import argparse
import math
import sys

import torch

from kwh.sws import mixture_weights
from kwh.train import load_checkpoint


def describe(run: str) -> dict:
    """Components (the zero one first) and the weights' magnitudes of one run."""
    model, config = load_checkpoint(run)
    if config.method != "sws":
        raise SystemExit(f"{run}: a --method {config.method} run, not soft weight-sharing")
    from safetensors import safe_open

    from kwh.train.checkpoint import checkpoint_path
    with safe_open(str(checkpoint_path(run)), "pt") as f:
        keys = list(f.keys())
        prior = {k.split("/")[-1]: f.get_tensor(k) for k in keys
                 if k.startswith("sws/") and k.split("/")[-1] in ("means", "log_vars", "mix_logits")}
    if len(prior) != 3:
        raise SystemExit(f"{run}: no mixture prior in the checkpoint")
    w = torch.cat([p.detach().reshape(-1) for _, p in mixture_weights(model)]).abs()
    pi_rest = (1 - config.sws_settings()["zero_mix"]) * torch.softmax(prior["mix_logits"], 0)
    return {"run": run, "tau": config.sws_settings()["tau"],
            "sigma_zero": math.exp(0.5 * float(prior["log_vars"][0])),
            "means": [round(float(m), 3) for m in prior["means"]],
            "sigmas": [round(math.exp(0.5 * float(v)), 3) for v in prior["log_vars"][1:]],
            "pi": [float(p) for p in pi_rest], "weights": w.numel(),
            "above_0.05": float((w > 0.05).float().mean()),
            "above_0.1": float((w > 0.1).float().mean())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sws_mixture",
                                description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+")
    for run in p.parse_args(argv).runs:
        d = describe(run)
        print(f"{d['run']}: tau {d['tau']:g}, zero component sigma {d['sigma_zero']:.3f}; "
              f"{d['weights']:,} weights, |w| > 0.05: {100 * d['above_0.05']:.1f} %, "
              f"> 0.1: {100 * d['above_0.1']:.1f} %")
        print(f"  means  {d['means']}")
        print(f"  sigmas {d['sigmas']}")
        print(f"  pi     {['%.1e' % x for x in d['pi']]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
