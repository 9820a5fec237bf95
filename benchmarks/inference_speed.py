"""CPU inference throughput of a kwh-compressed LeNet-5 against the dense net and torch's pruning.

One trained Bayesian LeNet-5 (a `kwh train` checkpoint, or trained here with kwh.train) gives
four models, timed round-robin in the same process so that machine load hits them alike:
  dense        the same net as plain fp32 layers, posterior means, nothing pruned;
  torch-prune  the dense net with the compressed model's zeros applied by
               torch.nn.utils.prune.custom_from_mask (mask hooks, as torch leaves it);
  torch-prune, removed  the same after prune.remove (zeros baked into dense weights);
  kwh.compress the physically smaller quantized model (kwh.compress, default thresholds).
Throughput: batches of MNIST test images (batch 1000 by default), medians over rounds;
ratios are ratios of medians. Writes benchmarks/results/inference_speed.{md,json}.

    python benchmarks/inference_speed.py --checkpoint RUN_DIR --threads 1
    python benchmarks/inference_speed.py --prior group-nj --pretrain-epochs 2 --epochs 20 \
        --limit-train 5000 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import prune

import kwh
from kwh.bayes import bayes_layers
from kwh.cli.env import collect
from kwh.compress import CompressConfig, evaluate, format_summary
from kwh.data import batch_loader, get_dataset
from kwh.models import lenet5

RESULTS = Path(__file__).resolve().parent / "results"


def trained_model(args) -> tuple[nn.Module, str]:
    """(Bayesian LeNet-5 in eval mode, where it came from)."""
    from kwh.train import TrainConfig, load_checkpoint, run_training

    if args.checkpoint:
        model, config = load_checkpoint(args.checkpoint)
        return model, f"checkpoint {args.checkpoint} ({config.prior}, {config.epochs} epochs)"
    config = TrainConfig(model="lenet5", data="mnist", data_dir=args.data_dir, prior=args.prior,
                         pretrain_epochs=args.pretrain_epochs, epochs=args.epochs,
                         limit_train=args.limit_train, seed=args.seed, threads=args.threads,
                         out_dir=args.out_dir)
    result = run_training(config, progress=False)
    return result.model, (f"trained here: {args.prior}, {args.pretrain_epochs} plain + "
                          f"{args.epochs} Bayesian epochs on {args.limit_train or 60000} examples")


@torch.no_grad()
def dense_twin(bayes: nn.Module) -> nn.Sequential:
    """Plain LeNet-5 with the posterior means of every weight (no mask) and the eval biases."""
    dense = lenet5()
    plain = [m for m in dense if isinstance(m, (nn.Linear, nn.Conv2d))]
    for m, (_, layer) in zip(plain, bayes_layers(bayes)):
        mean, _ = layer.prior.weight_moments()
        m.weight.copy_(mean)
        old = layer.threshold
        layer.threshold = float("inf")  # keep everything: the bias as eval would give it unpruned
        try:
            _, b = layer.eval_weight_bias()
        finally:
            layer.threshold = old
        m.bias.copy_(b)
    return dense.eval()


@torch.no_grad()
def torch_pruned(dense: nn.Sequential, bayes: nn.Module, remove: bool) -> nn.Sequential:
    """The dense twin with the Bayesian keep masks applied by torch.nn.utils.prune."""
    model = copy.deepcopy(dense)
    plain = [m for m in model if isinstance(m, (nn.Linear, nn.Conv2d))]
    for m, (_, layer) in zip(plain, bayes_layers(bayes)):
        prune.custom_from_mask(m, "weight", layer.prior.weight_mask(layer.threshold) > 0)
        if remove:
            prune.remove(m, "weight")
    return model.eval()


def time_round_robin(models: dict[str, nn.Module], x: torch.Tensor, rounds: int,
                     warmup: int) -> dict[str, list[float]]:
    """Seconds per batch for each model, models interleaved within every round."""
    times = {k: [] for k in models}
    with torch.inference_mode():
        for r in range(warmup + rounds):
            for k, m in models.items():
                t0 = time.perf_counter()
                m(x)
                dt = time.perf_counter() - t0
                if r >= warmup:
                    times[k].append(dt)
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default=None, help="a `kwh train` checkpoint or run folder")
    p.add_argument("--prior", default="group-nj")
    p.add_argument("--pretrain-epochs", type=int, default=2)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--limit-train", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", default=str(RESULTS / "inference_speed_run"))
    p.add_argument("--data-dir", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threshold", type=float, default=None,
                   help="log-alpha threshold for every layer (default: each prior's)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.time()
    load_before = os.getloadavg()

    bayes, origin = trained_model(args)
    bayes = bayes.cpu().eval()
    test = get_dataset("mnist", "test", args.data_dir)
    small = kwh.compress(bayes, CompressConfig(threshold=args.threshold, input_shape=(1, 28, 28)),
                         eval_data=batch_loader(test, 1000))
    kwh.save(small, RESULTS / "inference_speed_lenet5.kwh")
    dense = dense_twin(bayes)
    models = {"dense": dense, "torch-prune": torch_pruned(dense, bayes, remove=False),
              "torch-prune, removed": torch_pruned(dense, bayes, remove=True),
              "kwh.compress": small}
    loader = batch_loader(test, 1000)
    errors = {k: evaluate(m, loader)["error"] for k, m in models.items()}
    x = test.tensors[0][:args.batch]  # (B, 1, 28, 28) real MNIST test images

    times = time_round_robin(models, x, args.rounds, args.warmup)
    med = {k: statistics.median(v) for k, v in times.items()}
    s = small.kwh_summary
    rows = [{"model": k, "median_s_per_batch": med[k], "images_per_s": args.batch / med[k],
             "speedup_vs_dense": med["dense"] / med[k], "test_error_pct": 100 * errors[k],
             "q25_s": statistics.quantiles(times[k], n=4)[0],
             "q75_s": statistics.quantiles(times[k], n=4)[2]} for k in models]
    macs = {"dense": s["macs_original"], "torch-prune": s["macs_original"],
            "torch-prune, removed": s["macs_original"], "kwh.compress": s["macs"]}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=Path(__file__).parent).stdout.strip()
    env = collect()
    machine = {"cpu": env["cpu"], "cores": env["cores"], "torch": env["torch"],
               "torch_threads": torch.get_num_threads(), "commit": commit,
               "loadavg_before": load_before, "loadavg_after": os.getloadavg()}
    command = "python benchmarks/inference_speed.py " + " ".join(argv or sys.argv[1:])
    out = {"command": command, "machine": machine, "model_source": origin,
           "batch": args.batch, "rounds": args.rounds, "warmup": args.warmup, "rows": rows,
           "summary": {k: s[k] for k in ("architecture_original", "architecture", "bits",
                                         "macs_original", "macs", "payload_bytes", "rates")},
           "wall_s": time.time() - started}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "inference_speed.json").write_text(json.dumps(out, indent=1))
    (RESULTS / "inference_speed.md").write_text(render(out, macs, format_summary(s)))
    print(render(out, macs, format_summary(s)))
    return 0


def render(out: dict, macs: dict, summary_text: str) -> str:
    m = out["machine"]
    lines = [
        "# Inference throughput: kwh-compressed LeNet-5 vs dense vs torch.nn.utils.prune",
        "",
        f"Command: `{out['command']}`",
        "",
        f"Machine: {m['cpu']}, {m['cores']}; torch {m['torch']}, {m['torch_threads']} thread(s); "
        f"commit {m['commit']}; load average {m['loadavg_before'][0]:.1f} before, "
        f"{m['loadavg_after'][0]:.1f} after (the machine is shared: models are timed "
        "round-robin so load hits them alike).",
        "",
        f"Model: {out['model_source']}. Batch {out['batch']} real MNIST test images, "
        f"{out['warmup']} warm-up rounds, median of {out['rounds']} rounds, torch.inference_mode.",
        "",
        "| model | MACs / image | median s / batch (IQR) | images / s | speed-up vs dense "
        "| test error % |",
        "|---|---|---|---|---|---|",
    ]
    for r in out["rows"]:
        lines.append(f"| {r['model']} | {macs[r['model']]:,} | {r['median_s_per_batch']:.4f} "
                     f"({r['q25_s']:.4f}-{r['q75_s']:.4f}) | {r['images_per_s']:,.0f} | "
                     f"{r['speedup_vs_dense']:.2f}x | {r['test_error_pct']:.2f} |")
    lines += [
        "",
        "torch.nn.utils.prune only zeroes weights: the dense kernels do the same work (with the "
        "mask hook it also multiplies weight x mask on every call). kwh.compress removes the "
        "pruned units, so the kernels are smaller; its weights are fixed-point values held in "
        "float32, so the speed-up is all from the smaller shapes.",
        "",
        "## kwh.compress summary",
        "",
        "```",
        summary_text,
        "```",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
