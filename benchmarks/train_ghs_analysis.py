"""What a trained group-horseshoe model keeps, and why: per-layer scale statistics and thresholds.

For each Bayesian layer: the groups' E[z], the variance v of log z (the pruning statistic is
log alpha = log(exp(v) - 1), GroupHorseshoe docstring), and the size of each group's
effective weights E[w]; then the test error and kept groups when the log-alpha threshold is
moved. Reads a checkpoint written by `kwh train`.

    python benchmarks/train_ghs_analysis.py benchmarks/results/train_lenet5_mnist_ghs
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from kwh.bayes import bayes_layers
from kwh.data import get_dataset
from kwh.train import load_checkpoint
from kwh.train.evaluate import test_metrics

THRESHOLDS = (-1.0, -2.0, -3.0, -4.0)


def group_table(model) -> list[str]:
    lines = ["| layer | groups | E[z] median (min..max) | v median (min..max) | "
             "log alpha median (max) | group rms of E[w], median (min) |", "|---|---|---|---|---|---|"]
    for name, layer in bayes_layers(model):
        prior = layer.prior
        m, v = prior.log_z_moments()
        ez, _ = prior.scale_moments()
        la = prior.log_alpha()
        w, _ = prior.weight_moments()
        dims = [d for d in range(w.dim()) if d != prior.group_dim]
        rms = w.pow(2).mean(dim=dims).sqrt()
        f = lambda t: t.detach().double().cpu().numpy()  # noqa: E731
        ez, v, la, rms = f(ez), f(v), f(la), f(rms)
        lines.append(f"| {name} | {len(ez)} | {np.median(ez):.3g} ({ez.min():.3g}..{ez.max():.3g}) | "
                     f"{np.median(v):.3g} ({v.min():.3g}..{v.max():.3g}) | {np.median(la):.2f} "
                     f"({la.max():.2f}) | {np.median(rms):.3g} ({rms.min():.3g}) |")
    return lines


def threshold_table(model, x, y) -> list[str]:
    """Kept groups (keep_mask, then after kwh.compress propagates them) and error per threshold."""
    import kwh.compress

    lines = ["| threshold | kept groups per layer (keep_mask) | after propagation (kwh.compress) "
             "| test error (%) |", "|---|---|---|---|"]
    layers = [m for _, m in bayes_layers(model)]
    for t in THRESHOLDS:
        for m in layers:
            m.threshold = t
        kept = "-".join(str(int(m.keep_mask().sum())) for m in layers)
        small = kwh.compress(model, kwh.compress.CompressConfig(
            input_shape=tuple(x.shape[1:]), quantize=False, threshold=t))
        err = test_metrics(model, x, y, 1000, torch.device("cpu"))["test_error"]
        lines.append(f"| {t:g} | {kept} | {small.kwh_summary['architecture']} | {err:.2f} |")
    for m in layers:
        m.threshold = None
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="run folder or checkpoint file")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=None, help="also write the tables to this markdown file")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model, config = load_checkpoint(args.run)
    if config.prior != "group-horseshoe":
        sys.exit(f"{args.run} was trained with {config.prior}, not group-horseshoe")
    test = get_dataset(config.data, "test", args.data_dir)
    x, y = test.tensors
    with torch.no_grad():
        text = "\n".join(["Group scales of the trained model:", "", *group_table(model), "",
                          "Moving the log-alpha threshold (the prior's default is "
                          f"{model[0].prior.threshold:g}):", "", *threshold_table(model, x, y)])
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
