"""CPU inference throughput of a kwh-compressed LeNet-5 against the dense net and torch's pruning.

One trained Bayesian LeNet-5 (a `kwh train` checkpoint, or trained here with kwh.train) gives
the models below, timed round-robin in the same process so that machine load hits them alike:
  dense        the same net as plain fp32 layers, posterior means, nothing pruned;
  torch-prune  the dense net with the compressed model's zeros applied by
               torch.nn.utils.prune.custom_from_mask (mask hooks, as torch leaves it);
  torch-prune, removed  the same after prune.remove (zeros baked into dense weights);
  kwh.compress the physically smaller quantized model (kwh.compress, default thresholds).
The same three pruned variants are also built at the published BC-GHS architecture 5-10-76-16
(Louizos et al. 2017, Table 1): the dense twin zeroed outside that structure, so its speed is
what kwh.compress gives a net pruned as far as the paper's (its error is not meaningful).
Throughput: batches of MNIST test images (batch 1000 by default), medians over rounds;
ratios are ratios of medians. Writes benchmarks/results/inference_speed.{md,json}.

    kwh train --model lenet5 --prior log-uniform --pretrain-epochs 2 --epochs 12 \
        --limit-train 5000 --threads 1 --out-dir benchmarks/results/inference_speed_run
    python benchmarks/inference_speed.py --checkpoint benchmarks/results/inference_speed_run
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
    """(Bayesian LeNet-5 in eval mode, how it was trained)."""
    from kwh.train import TrainConfig, load_checkpoint, run_training

    if args.checkpoint:
        model, c = load_checkpoint(args.checkpoint)
        where = f"checkpoint {args.checkpoint}"
    else:
        c = TrainConfig(model="lenet5", data="mnist", data_dir=args.data_dir, prior=args.prior,
                        pretrain_epochs=args.pretrain_epochs, epochs=args.epochs,
                        limit_train=args.limit_train, seed=args.seed, threads=args.threads,
                        out_dir=args.out_dir)
        model = run_training(c, progress=False).model
        where = "trained by this script"
    how = (f"{where}, written by `kwh train --model {c.model} --data {c.data} --prior {c.prior} "
           f"--pretrain-epochs {c.pretrain_epochs} --epochs {c.epochs} --limit-train "
           f"{c.limit_train} --seed {c.seed} --batch-size {c.batch_size} --lr {c.lr}`")
    return model, how


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


PAPER_GHS = (5, 10, 76, 16)  # Louizos et al. 2017, Table 1: BC-GHS on LeNet-5


@torch.no_grad()
def with_structure(dense: nn.Sequential, arch: tuple[int, int, int, int]) -> nn.Sequential:
    """The dense twin zeroed outside a pruned LeNet-5 architecture (filters, fc input units)."""
    f1, f2, n_in, n_hidden = arch
    model = copy.deepcopy(dense)
    conv1, conv2, fc1, fc2 = [m for m in model if isinstance(m, (nn.Linear, nn.Conv2d))]
    conv1.weight[f1:] = 0
    conv1.bias[f1:] = 0
    conv2.weight[f2:] = 0
    conv2.bias[f2:] = 0
    keep = torch.zeros(fc1.in_features, dtype=torch.bool)
    positions = fc1.in_features // conv2.out_channels  # 16: a 4x4 map per filter
    for c in range(f2):  # spread the kept inputs over the kept filters' positions
        keep[c * positions: c * positions + n_in // f2 + (c < n_in % f2)] = True
    fc1.weight[:, ~keep] = 0
    fc2.weight[:, n_hidden:] = 0
    return model.eval()


@torch.no_grad()
def mask_pruned(dense: nn.Sequential, masks: list[torch.Tensor], remove: bool) -> nn.Sequential:
    """``dense`` with weight masks applied by torch.nn.utils.prune (hooks, or removed)."""
    model = copy.deepcopy(dense)
    plain = [m for m in model if isinstance(m, (nn.Linear, nn.Conv2d))]
    for m, mask in zip(plain, masks):
        prune.custom_from_mask(m, "weight", mask)
        if remove:
            prune.remove(m, "weight")
    return model.eval()


def time_round_robin(models: dict[str, nn.Module], x: torch.Tensor, rounds: int,
                     warmup: int) -> dict[str, dict[str, list[float]]]:
    """Wall and thread-CPU seconds per batch of each model, models interleaved in every round.

    With one torch thread all work runs on this thread, so its CPU time is the compute cost
    without the time the shared machine's scheduler keeps it waiting.
    """
    times = {k: {"wall": [], "cpu": []} for k in models}
    with torch.inference_mode():
        for r in range(warmup + rounds):
            for k, m in models.items():
                w0, c0 = time.perf_counter(), time.thread_time()
                m(x)
                w1, c1 = time.perf_counter(), time.thread_time()
                if r >= warmup:
                    times[k]["wall"].append(w1 - w0)
                    times[k]["cpu"].append(c1 - c0)
    return times


def per_module_ms(model: nn.Sequential, x: torch.Tensor, rounds: int) -> list[float]:
    """Median thread-CPU milliseconds of each module of a chain on x (module by module)."""
    times = [[] for _ in model]
    with torch.inference_mode():
        for _ in range(rounds):
            h = x
            for i, m in enumerate(model):
                t0 = time.thread_time()
                h = m(h)
                times[i].append(time.thread_time() - t0)
    return [1000 * statistics.median(t) for t in times]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default=None, help="a `kwh train` checkpoint or run folder")
    p.add_argument("--prior", default="log-uniform")
    p.add_argument("--pretrain-epochs", type=int, default=2)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--limit-train", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", default=str(RESULTS / "inference_speed_run"))
    p.add_argument("--data-dir", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, nargs="+", default=[1000, 100],
                   help="batch sizes to time (default: 1000 100)")
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
    config = CompressConfig(threshold=args.threshold, input_shape=(1, 28, 28))
    small = kwh.compress(bayes, config, eval_data=batch_loader(test, 1000))
    kwh.save(small, RESULTS / "inference_speed_lenet5.kwh")
    dense = dense_twin(bayes)
    masks = [layer.prior.weight_mask(layer.threshold if args.threshold is None
                                     else args.threshold) > 0 for _, layer in bayes_layers(bayes)]
    paper = with_structure(dense, PAPER_GHS)
    paper_small = kwh.compress(paper, input_shape=(1, 28, 28))
    arch = paper_small.kwh_summary["architecture"]
    assert arch == "-".join(map(str, PAPER_GHS)), arch
    paper_masks = [m.weight != 0 for m in paper if isinstance(m, (nn.Linear, nn.Conv2d))]
    s, ps = small.kwh_summary, paper_small.kwh_summary
    entries = [  # (label, model, MACs per image, report its test error)
        ("dense", dense, s["macs_original"], True),
        ("torch-prune", mask_pruned(dense, masks, False), s["macs_original"], True),
        ("torch-prune, removed", mask_pruned(dense, masks, True), s["macs_original"], True),
        (f"kwh.compress ({s['architecture']})", small, s["macs"], True),
        (f"torch-prune at {arch}", mask_pruned(dense, paper_masks, False), ps["macs_original"],
         False),
        (f"kwh.compress at {arch}", paper_small, ps["macs"], False),
    ]
    models = {label: m for label, m, _, _ in entries}
    loader = batch_loader(test, 1000)
    errors = {label: evaluate(m, loader)["error"] if report else None
              for label, m, _, report in entries}
    rows = []
    for batch in args.batch:
        x = test.tensors[0][:batch]  # (B, 1, 28, 28) real MNIST test images
        times = time_round_robin(models, x, args.rounds, args.warmup)
        wall = {k: statistics.median(v["wall"]) for k, v in times.items()}
        cpu = {k: statistics.median(v["cpu"]) for k, v in times.items()}
        rows += [{"batch": batch, "model": label, "macs_per_image": macs,
                  "median_s_per_batch": wall[label], "images_per_s": batch / wall[label],
                  "speedup_vs_dense": wall["dense"] / wall[label],
                  "q25_s": statistics.quantiles(times[label]["wall"], n=4)[0],
                  "q75_s": statistics.quantiles(times[label]["wall"], n=4)[2],
                  "median_cpu_s_per_batch": cpu[label],
                  "cpu_speedup_vs_dense": cpu["dense"] / cpu[label],
                  "test_error_pct": None if errors[label] is None else 100 * errors[label]}
                 for label, _, macs, _ in entries]
    x = test.tensors[0][:args.batch[0]]
    breakdown = {label: {"modules": [type(m).__name__ for m in models[label]],
                         "ms": per_module_ms(models[label], x, args.rounds)}
                 for label in ("dense", entries[3][0], entries[5][0])}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=Path(__file__).parent).stdout.strip()
    env = collect()
    machine = {"cpu": env["cpu"], "cores": env["cores"], "torch": env["torch"],
               "torch_threads": torch.get_num_threads(), "commit": commit,
               "loadavg_before": load_before, "loadavg_after": os.getloadavg()}
    command = "python benchmarks/inference_speed.py " + " ".join(argv or sys.argv[1:])
    out = {"command": command, "machine": machine, "model_source": origin,
           "batches": args.batch, "rounds": args.rounds, "warmup": args.warmup, "rows": rows,
           "per_module_ms": breakdown,
           "summary": {k: s[k] for k in ("architecture_original", "architecture", "bits",
                                         "macs_original", "macs", "payload_bytes", "rates")},
           "paper_structure": {k: ps[k] for k in ("architecture", "macs_original", "macs",
                                                  "weights_pruned_dense")},
           "wall_s": time.time() - started}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "inference_speed.json").write_text(json.dumps(out, indent=1))
    text = render(out, format_summary(s))
    (RESULTS / "inference_speed.md").write_text(text)
    print(text)
    return 0


def render(out: dict, summary_text: str) -> str:
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
        f"Model: {out['model_source']}.",
        "",
        f"Timing: batches of real MNIST test images, {out['warmup']} warm-up rounds, median of "
        f"{out['rounds']} rounds per batch size, torch.inference_mode; wall clock, and the CPU "
        "time of the (single) computing thread, which leaves out the time the shared machine's "
        "scheduler keeps the process waiting -- a wait of a few ms inflates a fast model's "
        "wall time far more than a slow one's. Test error on all 10,000 test images.",
        "",
        "| batch | model | MACs / image | wall s / batch, median (IQR) | images / s | speed-up "
        "vs dense | CPU s / batch, median | speed-up vs dense (CPU time) | test error % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in out["rows"]:
        err = r["test_error_pct"]
        err = "n/a (structure only)" if err is None else f"{err:.2f}"
        lines.append(f"| {r['batch']} | {r['model']} | {r['macs_per_image']:,} | "
                     f"{r['median_s_per_batch']:.4f} ({r['q25_s']:.4f}-{r['q75_s']:.4f}) | "
                     f"{r['images_per_s']:,.0f} | {r['speedup_vs_dense']:.2f}x | "
                     f"{r['median_cpu_s_per_batch']:.4f} | {r['cpu_speedup_vs_dense']:.2f}x | "
                     f"{err} |")
    lines += ["", "Against the target (kwh.compress >= 10x the dense throughput):", ""]
    for b in out["batches"]:
        rs = [r for r in out["rows"] if r["batch"] == b]
        dense = rs[0]
        for r in rs:
            if r["model"].startswith("kwh.compress"):
                fewer = dense["macs_per_image"] / r["macs_per_image"]
                verdict = {True: "met", False: "not met"}
                lines.append(f"- batch {b}, {r['model']}, {fewer:.1f}x fewer MACs: "
                             f"{r['speedup_vs_dense']:.2f}x by wall clock "
                             f"({verdict[r['speedup_vs_dense'] >= 10]}), "
                             f"{r['cpu_speedup_vs_dense']:.2f}x by CPU time "
                             f"({verdict[r['cpu_speedup_vs_dense'] >= 10]})")
    lines += [
        "",
        "torch.nn.utils.prune only zeroes weights: the dense kernels do the same work (with the "
        "mask hook it also multiplies weight x mask on every call). kwh.compress removes the "
        "pruned units, so the kernels are smaller; its weights are fixed-point values held in "
        "float32, so the speed-up is all from the smaller shapes.",
        "",
        f"## Where the time goes (batch {out['batches'][0]}, median CPU ms per module)",
        "",
    ]
    for label, d in out["per_module_ms"].items():
        cells = ", ".join(f"{n} {t:.1f}" for n, t in zip(d["modules"], d["ms"]))
        lines.append(f"- {label}: {cells} (sum {sum(d['ms']):.1f})")
    lines += [
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
