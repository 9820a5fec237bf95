"""Modelled energy per correct prediction: dense fp32 LeNet-5 against the kwh-compressed one.

    python benchmarks/energy_lenet5.py --run RUN_DIR     # a `kwh train` run (Bayesian checkpoint)
    python benchmarks/energy_lenet5.py --kwh FILE --dense-accuracy 0.99

With --run, the Bayesian checkpoint is compressed with kwh.compress (default settings) and
saved as a .kwh file; the dense network's accuracy is the test accuracy the run's log records
after its plain pretraining epochs (the dense original, before bayesify_). Accuracies are on
the full MNIST test split. Energy: kwh.energy with the Horowitz 2014 table, then the same
comparison under other hardware assumptions (sensitivity). Writes
benchmarks/results/energy_lenet5.{md,csv,json} with the command and machine info.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shlex
import sys
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.machine import machine_info
from kwh.app import accuracy_on
from kwh.energy import HOROWITZ_45NM, EnergyConfig, estimate_energy
from kwh.energy.format import joules
from kwh.energy.measure import measure_model
from kwh.format.io import atomic_write_bytes
from kwh.models import lenet5

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (1, 28, 28)


def pretrain_accuracy(run: Path) -> tuple[float | None, str]:
    """Test accuracy after the last plain pretraining epoch of a run, from its log.jsonl."""
    recs = [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines() if l.strip()]
    pre = [r for r in recs if r.get("event") == "epoch" and r.get("phase") == "pretrain"]
    if not pre:
        return None, "the run has no pretraining epoch"
    r = pre[-1]
    return 1 - r["test_error"] / 100, (f"dense LeNet-5 after {r['epoch']} plain pretraining "
                                       f"epoch(s) ({run / 'log.jsonl'})")


def compressed_model(args) -> tuple[torch.nn.Module, Path, str]:
    """(compressed model, its .kwh file, provenance) from --kwh or --run."""
    from kwh.format.codec import load, save
    if args.kwh:
        return load(args.kwh), Path(args.kwh), f"given file {args.kwh}"
    import kwh
    from kwh.data import get_dataset
    from kwh.train import load_checkpoint
    model, config = load_checkpoint(args.run)
    x, y = get_dataset("mnist", "test", args.data_dir).tensors
    batches = [(x[i:i + 1000], y[i:i + 1000]) for i in range(0, len(y), 1000)]
    small = kwh.compress(model, threshold=args.threshold, eval_data=batches)
    out = Path(args.out_kwh)
    save(small, out)
    how = ("default thresholds" if args.threshold is None
           else f"log-alpha threshold {args.threshold:g} on every layer")
    train = (f"`kwh train --model {config.model} --data {config.data} --prior {config.prior} "
             f"--pretrain-epochs {config.pretrain_epochs} --epochs {config.epochs} "
             f"--seed {config.seed} --out-dir {args.run}`")
    return load(out), out, (f"kwh.compress ({how}) of the run {train} "
                            f"(final test error {_final_error(Path(args.run))}), saved to {out}")


def _final_error(run: Path) -> str:
    recs = [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines() if l.strip()]
    ep = [r for r in recs if r.get("event") == "epoch"]
    return f"{ep[-1]['test_error']:.2f}%" if ep else "n/a"


@torch.no_grad()
def fixed_point_accuracy(model: torch.nn.Module, bits: int, data_dir: str | None) -> float:
    """Test accuracy with every Linear/Conv2d input rounded to ``bits``-bit fixed point.

    Per layer, the integer part covers the largest |activation| seen on 1,000 training images
    (calibration); the remaining bits - 1 - int bits are the fraction (round half up, clamp).
    """
    import math
    from kwh.data import get_dataset
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    peak = {id(m): 0.0 for m in layers}
    hooks = [m.register_forward_pre_hook(
        lambda m, inp: peak.__setitem__(id(m), max(peak[id(m)], float(inp[0].abs().max()))))
        for m in layers]
    model(get_dataset("mnist", "train", data_dir, limit=1000).tensors[0])
    for h in hooks:
        h.remove()

    def quantize(m, inp):
        int_bits = max(0, math.ceil(math.log2(peak[id(m)] + 1e-12)))
        step = 2.0 ** -(bits - 1 - int_bits)
        top = 2.0 ** int_bits - step
        return (torch.clamp(torch.floor(inp[0] / step + 0.5) * step, -top - step, top),)

    hooks = [m.register_forward_pre_hook(quantize) for m in layers]
    try:
        return accuracy_on(model, "mnist", data_dir)[0]
    finally:
        for h in hooks:
            h.remove()


def sigma_delta(small: torch.nn.Module, args):
    """The compressed model run as a sigma-delta network on moving digits: energy per frame."""
    from kwh.data import sequence_dataset
    from kwh.energy.sigma_delta import estimate_sigma_delta
    from kwh.spike import convert
    x, y = sequence_dataset("mnist", "test", "moving", root=args.data_dir,
                            n_sequences=args.sd_sequences, n_frames=args.sd_frames).tensors
    run = convert(small, args.sd_scale)(x.transpose(0, 1))  # (T, S, 1, 28, 28)
    sd = estimate_sigma_delta(small, run, SHAPE).with_accuracy(run.accuracy(y))
    frame_dense = estimate_energy(small, SHAPE)  # the same model evaluated densely per frame
    frame_dense.with_accuracy(frame_accuracy(small, x, y))
    return sd, frame_dense, args


@torch.no_grad()
def frame_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Per-frame accuracy of the model evaluated densely on every frame of (S, T, ...) x."""
    pred = model(x.flatten(0, 1)).argmax(1).view(x.shape[0], x.shape[1])  # (S, T)
    return float((pred == y[:, None]).double().mean())


def paper_architecture() -> torch.nn.Sequential:
    """LeNet-5 at the BC-GHS result of Louizos et al. 2017 (5-10-76-16, bits 10-10-14-13), built
    by hand with random weights: its energy depends only on shapes, zeros and bit widths."""
    g = torch.Generator().manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(1, 5, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                            torch.nn.Conv2d(5, 10, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                            torch.nn.Flatten(), torch.nn.Linear(160, 16), torch.nn.ReLU(),
                            torch.nn.Linear(16, 10))
    with torch.no_grad():
        for layer, bits in zip((m[0], m[3], m[7], m[9]), (10, 10, 14, 13)):
            t = bits - 2  # fraction bits for |w| < 2: every weight nonzero after rounding
            w = torch.rand(layer.weight.shape, generator=g) * 0.5 + 0.25  # (out, in, ...)
            sign = torch.randint(0, 2, w.shape, generator=g) * 2 - 1
            layer.weight.copy_(torch.floor(w * sign * 2**t + 0.5) / 2**t)
            layer.kwh_bits, layer.kwh_frac_bits = bits, t
        m[7].weight[:, 76:] = 0.0  # 76 of the 160 flattened inputs kept
    return m


SCENARIOS = [
    ("Horowitz 45 nm, act 16 bit, SRAM 1 MB, batch 1 (default)", {}, {}),
    ("activations 8 bit", {"act_bits": 8}, {}),
    ("SRAM 16 MB (dense weights on chip too)", {"sram_kb": 16384}, {}),
    ("SRAM 64 KB", {"sram_kb": 64}, {}),
    ("batch 100 (weights read once per 100 inputs)", {"batch_size": 100}, {}),
    ("DRAM 2.6 nJ / 64 bit (Horowitz high end)", {}, {"dram_pj_per_64bit": 2600.0}),
    ("dense-packed compressed weights (no CSR)", {"weight_format": "dense"}, {}),
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default=str(ROOT / "runs" / "lenet5-mnist-group-horseshoe"))
    p.add_argument("--kwh", default=None, help="use this .kwh file instead of compressing --run")
    p.add_argument("--out-kwh", default="/tmp/energy_lenet5.kwh")
    p.add_argument("--threshold", type=float, default=None, help="log-alpha pruning threshold "
                   "for every layer (default: each prior's own, as kwh.compress)")
    p.add_argument("--dense-accuracy", type=float, default=None)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sd-sequences", type=int, default=20, help="moving-MNIST sequences for "
                   "the sigma-delta version (0: skip it)")
    p.add_argument("--sd-frames", type=int, default=10)
    p.add_argument("--sd-scale", type=float, default=16.0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    small, kwh_path, provenance = compressed_model(args)
    acc_small, n = accuracy_on(small, "mnist", args.data_dir)
    acc_fixed = {b: fixed_point_accuracy(small, b, args.data_dir) for b in (16, 8)}
    if args.dense_accuracy is not None:
        acc_dense, dense_src = args.dense_accuracy, "given (--dense-accuracy)"
    else:
        acc_dense, dense_src = pretrain_accuracy(Path(args.run))
    dense = lenet5()

    rows = []
    base_d = base_s = None
    for name, cfg_kw, table_kw in SCENARIOS:
        cfg, table = EnergyConfig(**cfg_kw), replace(HOROWITZ_45NM, **table_kw)
        d = estimate_energy(dense, SHAPE, table, cfg).with_accuracy(acc_dense)
        s = estimate_energy(small, SHAPE, table, cfg).with_accuracy(acc_small)
        rows.append({"scenario": name, "dense_j": d.total_j, "compressed_j": s.total_j,
                     "dense_per_correct_j": d.per_correct_j,
                     "compressed_per_correct_j": s.per_correct_j,
                     "ratio_per_correct": (d.per_correct_j / s.per_correct_j
                                           if d.per_correct_j else None),
                     "dense_compute_j": d.compute_j, "dense_memory_j": d.memory_j,
                     "compressed_compute_j": s.compute_j, "compressed_memory_j": s.memory_j,
                     "dense_weights_in": d.layers[0].weight_mem,
                     "compressed_weights_in": s.layers[0].weight_mem,
                     "dense_correct_per_kwh": d.correct_per_kwh,
                     "compressed_correct_per_kwh": s.correct_per_kwh,
                     "dense_landauer_ratio": d.landauer_ratio,
                     "compressed_landauer_ratio": s.landauer_ratio})
        if base_d is None:
            base_d, base_s = d, s
    measured = measure_model(small, torch.zeros(256, *SHAPE), window_s=2.0)
    sd = sigma_delta(small, args) if args.sd_sequences > 0 else None
    paper = estimate_energy(paper_architecture(), SHAPE)

    cmd = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    md = render(rows, base_d, base_s, small, kwh_path, provenance, acc_small, n, acc_dense,
                dense_src, measured, cmd, machine_info(), acc_fixed, sd, paper)
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "energy_lenet5.md", md.encode())
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(out / "energy_lenet5.csv", buf.getvalue().encode())
    atomic_write_bytes(out / "energy_lenet5.json", (json.dumps(
        {"dense": base_d.to_dict(), "compressed": base_s.to_dict(), "scenarios": rows,
         "measured": measured.to_dict(), "machine": machine_info(), "command": cmd},
        indent=1) + "\n").encode())
    print(md)
    return 0


def _verdict(ratio: float | None, summ: dict) -> str:
    """One sentence: does this model reach the 100x target, and what limits it."""
    if ratio is None:
        return "No ratio per correct prediction: the dense accuracy is unknown."
    if ratio >= 100:
        return f"Target (>= 100x lower energy per correct prediction): met, {ratio:,.0f}x."
    return (f"Target (>= 100x lower energy per correct prediction): **not met** by this model "
            f"({ratio:,.0f}x). The short run kept {summ.get('architecture', '?')} of "
            f"{summ.get('architecture_original', '?')} units, so the weights still take "
            f"{summ.get('weights_pruned_dense', 0):,} entries; the paper's architecture below "
            "shows what a fully trained BC-GHS LeNet-5 gives under the same energy model.")


def _pct(x: float, total: float) -> str:
    return f"{100 * x / total:.1f}%"


def render(rows, d, s, small, kwh_path, provenance, acc_small, n, acc_dense, dense_src,
           measured, cmd, machine, acc_fixed, sd, paper) -> str:
    summ = getattr(small, "kwh_summary", {}) or {}
    r0 = rows[0]
    lines = [
        "# Energy per correct prediction: dense fp32 LeNet-5 vs kwh-compressed (MNIST)",
        "",
        f"Command: `{cmd}`",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, "
        f"Python {machine['python']}, commit {machine['commit']}.",
        "",
        f"Compressed model: {provenance}; architecture {summ.get('architecture_original', '?')}"
        f" -> {summ.get('architecture', '?')}, bits {summ.get('bits', '?')}, file "
        f"{kwh_path.stat().st_size:,} bytes. Accuracy {100 * acc_small:.2f}% on {n:,} MNIST "
        "test images with float activations; with every layer input rounded to fixed point "
        "(integer bits from the largest activation on 1,000 training images): "
        + ", ".join(f"{b} bit {100 * a:.2f}%" for b, a in acc_fixed.items()) + ".",
        "",
        "Dense model: LeNet-5-Caffe in fp32 (430,500 weights); accuracy "
        + ("n/a" if acc_dense is None else f"{100 * acc_dense:.2f}%") + f" ({dense_src}).",
        "",
        "All energies are modelled (kwh.energy): operations and memory traffic counted from "
        "the actual tensors, priced with Horowitz 2014 (45 nm). Measured energy: "
        + (str(measured) if not hasattr(measured, "total_j") else
           f"{joules(measured.dynamic_per_inference_j)} dynamic per inference "
           f"({measured.counter})") + ".",
        "",
        "## Headline (default assumptions)",
        "",
        "| | dense fp32 | compressed | dense / compressed |",
        "|---|---:|---:|---:|",
        f"| energy per inference | {joules(d.total_j)} | {joules(s.total_j)} | "
        f"{d.total_j / s.total_j:,.0f}x |",
        f"| compute | {joules(d.compute_j)} | {joules(s.compute_j)} | "
        f"{d.compute_j / s.compute_j:,.0f}x |",
        f"| memory | {joules(d.memory_j)} | {joules(s.memory_j)} | "
        f"{d.memory_j / s.memory_j:,.0f}x |",
        f"| multiplies | {d.mults:,.0f} | {s.mults:,.0f} | {d.mults / max(s.mults, 1):,.0f}x |",
        f"| weight bits read | {d.weight_bits:,.0f} | {s.weight_bits:,.0f} | "
        f"{d.weight_bits / s.weight_bits:,.0f}x |",
        f"| weights live in | {d.layers[0].weight_mem} | {s.layers[0].weight_mem} | |",
    ]
    if r0["dense_per_correct_j"]:
        lines += [
            f"| **energy per correct prediction** | {joules(r0['dense_per_correct_j'])} | "
            f"{joules(r0['compressed_per_correct_j'])} | **{r0['ratio_per_correct']:,.0f}x** |",
            f"| correct predictions per kWh | {r0['dense_correct_per_kwh']:.3g} | "
            f"{r0['compressed_correct_per_kwh']:.3g} | |"]
    lines += [
        f"| x Landauer bound of the same ops | {d.landauer_ratio:.3g} | {s.landauer_ratio:.3g}"
        " | |",
        "",
        _verdict(r0["ratio_per_correct"], summ),
        "",
        "## Where the compressed model's energy goes (default assumptions)",
        "",
        "| layer | arithmetic | multiplies | multiply | add | compare | weights | "
        "activations | total | share |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for l in s.layers:
        lines.append(f"| {l.name} | {l.arith} | {l.mults:,.0f} | {joules(l.e_mult)} | "
                     f"{joules(l.e_add)} | {joules(l.e_compare)} | {joules(l.e_weight_mem)} | "
                     f"{joules(l.e_act_mem)} | {joules(l.total_j)} | "
                     f"{_pct(l.total_j, s.total_j)} |")
    tot = {k: sum(getattr(l, k) for l in s.layers)
           for k in ("e_mult", "e_add", "e_compare", "e_weight_mem", "e_act_mem")}
    lines += [f"| **total** | | {s.mults:,.0f} | {joules(tot['e_mult'])} | "
              f"{joules(tot['e_add'])} | {joules(tot['e_compare'])} | "
              f"{joules(tot['e_weight_mem'])} | {joules(tot['e_act_mem'])} | "
              f"{joules(s.total_j)} | 100% |",
              "",
              "Shares of the compressed model's energy: " + ", ".join(
                  f"{k[2:]} {_pct(v, s.total_j)}" for k, v in tot.items()) + ".",
              "",
              "## Sensitivity to the hardware assumptions",
              "",
              "| scenario | dense / inference | compressed / inference | dense weights in | "
              "compressed weights in | dense / compressed per correct |",
              "|---|---:|---:|---|---|---:|"]
    for r in rows:
        ratio = "n/a" if r["ratio_per_correct"] is None else f"{r['ratio_per_correct']:,.0f}x"
        lines.append(f"| {r['scenario']} | {joules(r['dense_j'])} | {joules(r['compressed_j'])}"
                     f" | {r['dense_weights_in']} | {r['compressed_weights_in']} | {ratio} |")
    lines += ["", "## For reference: the paper's BC-GHS architecture, same energy model", "",
              "Louizos et al. 2017 (Table 1) reach 5-10-76-16 with bits 10-10-14-13 after 200 "
              "epochs. Built by hand with random weights (energy depends only on shapes, "
              "zeros and bit widths; accuracy not measured here):", "",
              "| | dense fp32 | paper's BC-GHS architecture | dense / paper arch. |",
              "|---|---:|---:|---:|",
              f"| energy per inference | {joules(d.total_j)} | {joules(paper.total_j)} | "
              f"{d.total_j / paper.total_j:,.0f}x |",
              f"| compute | {joules(d.compute_j)} | {joules(paper.compute_j)} | "
              f"{d.compute_j / paper.compute_j:,.0f}x |",
              f"| memory | {joules(d.memory_j)} | {joules(paper.memory_j)} | "
              f"{d.memory_j / paper.memory_j:,.0f}x |",
              f"| multiplies | {d.mults:,.0f} | {paper.mults:,.0f} | "
              f"{d.mults / paper.mults:,.0f}x |"]
    if sd is not None:
        e, f, a = sd
        lines += ["", "## The compressed model as a sigma-delta network (moving MNIST, per frame)",
                  "",
                  f"{a.sd_sequences} moving-digit sequences x {a.sd_frames} frames from the "
                  f"MNIST test split, scale k = {a.sd_scale:g} on every layer (untrained "
                  "scales), first frame included. Accuracy is per frame.", "",
                  "| | frame by frame (dense) | sigma-delta |", "|---|---:|---:|",
                  f"| energy per frame | {joules(f.total_j)} | {joules(e.total_j)} |",
                  f"| compute | {joules(f.compute_j)} | {joules(e.compute_j)} |",
                  f"| memory | {joules(f.memory_j)} | {joules(e.memory_j)} |",
                  f"| multiplies | {f.mults:,.0f} | {e.mults:,.0f} |",
                  f"| additions | {f.adds:,.0f} | {e.adds:,.0f} |",
                  f"| accuracy per frame | {100 * f.accuracy:.2f}% | {100 * e.accuracy:.2f}% |",
                  f"| energy per correct frame | {joules(f.per_correct_j)} | "
                  f"{joules(e.per_correct_j)} |", "",
                  "The sigma-delta network trades multiplies for additions, but it keeps "
                  "state (the quantizer's previous input and residual, the running sums) that "
                  "is read and written every frame; see kwh.energy.sigma_delta."]
    lines += ["", "Assumptions (kwh.energy.EnergyConfig defaults): plain layers run dense fp32 "
              "(every MAC, zeros included); compressed layers multiply kwh_bits-wide weights by "
              "16-bit fixed-point activations only for nonzero weights, accumulate at the exact "
              "width w + a + ceil(log2 fan-in); ReLU/max-pool comparisons at activation width; "
              "weights read once per inference at their packed width (CSR when smaller), biases "
              "float32; activations read and written once per layer; weights and the largest "
              "layer's activations in a 1 MB SRAM (100 pJ per 64 bits) when they fit together, "
              "else weights from DRAM (640 pJ per 32 bits, Han et al. 2015). Energy per correct "
              "prediction uses the float-activation accuracy; the fixed-point accuracies above "
              "show what 16- and 8-bit activations cost in accuracy.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
