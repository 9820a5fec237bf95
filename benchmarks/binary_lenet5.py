"""A binary LeNet-5 on MNIST beside the dense net and kwh's compressed ones: error and modelled
energy per correct prediction.

    python -m benchmarks.binary_lenet5 --pretrain-epochs 10 --epochs 15

Trains through kwh.train (``method="binary"``: plain pretraining, then kwh.binarize_ from that
dense start with sign weights and binary activations, latent weights clipped after every
step; one resumable run under <out>_run). Energy: kwh.energy with the default table
(Horowitz 2014, 45 nm) for one MNIST example; binary layers with +-1 inputs are priced as
XNOR + popcount, the first layer (real inputs) as 1-bit-weight MACs, the last layer kept in
float32. The compressed rows are the committed paper-table models
(benchmarks/results/models/lenet5_mnist_<prior>.kwh) with their own test error. Writes
<out>.md and <out>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

import torch

import kwh
from kwh.energy import estimate_energy
from kwh.models import lenet5
from kwh.train import TrainConfig, run_training

from benchmarks.baselines.common import load_data, test_error

SHAPE = (1, 28, 28)
PRIORS = ("log-uniform", "group-nj", "group-horseshoe")


def lenet5_bn() -> torch.nn.Sequential:
    """LeNet-5-Caffe with BatchNorm on each hidden layer's (pooled) pre-activation."""
    nn = torch.nn
    model = nn.Sequential(
        nn.Conv2d(1, 20, 5), nn.MaxPool2d(2), nn.BatchNorm2d(20), nn.ReLU(),
        nn.Conv2d(20, 50, 5), nn.MaxPool2d(2), nn.BatchNorm2d(50), nn.ReLU(),
        nn.Flatten(), nn.Linear(800, 500), nn.BatchNorm1d(500), nn.ReLU(),
        nn.Linear(500, 10))
    model.kwh_input_shape = SHAPE
    return model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.binary_lenet5",
                                description=__doc__.split("\n")[0])
    p.add_argument("--pretrain-epochs", type=int, default=10)
    p.add_argument("--epochs", type=int, default=15, help="binary epochs")
    p.add_argument("--scale", choices=("none", "channel"), default="none")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batchnorm", action="store_true",
                   help="LeNet-5 with BatchNorm after each hidden layer's pooling, before its "
                        "activation (the binary networks of Courbariaux et al. 2016 normalise "
                        "every pre-activation before its sign)")
    p.add_argument("--out", default=None,
                   help="output stem (default benchmarks/results/binary_lenet5[_bn])")
    a = p.parse_args(argv)
    if a.out is None:
        a.out = "benchmarks/results/binary_lenet5" + ("_bn" if a.batchnorm else "")
    net = lenet5_bn if a.batchnorm else lenet5
    torch.set_num_threads(a.threads)
    tdata, data = load_data("mnist", a.data_dir, None, None)
    cfg = TrainConfig(model="lenet5", data="mnist", data_dir=a.data_dir, method="binary",
                      binary_options={"scale": a.scale}, pretrain_epochs=a.pretrain_epochs,
                      epochs=a.epochs, validation=len(tdata.validation), seed=0,
                      threads=a.threads, out_dir=f"{a.out}_run")
    res = run_training(cfg, resume=True, progress=False, model=net(), data=tdata)
    binary = res.model.eval().cpu()
    dense_rec = [r for r in res.log if r.get("event") == "epoch" and r["phase"] == "pretrain"][-1]
    rows = []

    def row(name, model, err, note=""):
        e = estimate_energy(model, SHAPE).with_accuracy(1 - err)
        rows.append({"model": name, "test_error_pct": 100 * err, "energy_nj": 1e9 * e.total_j,
                     "per_correct_nj": 1e9 * e.per_correct_j, "mults": e.mults,
                     "weight_bits": e.weight_bits, "note": note})

    dense = net().eval()  # priced by its shapes: dense fp32, every MAC
    name = "LeNet-5 + BatchNorm" if a.batchnorm else "LeNet-5"
    row(f"dense {name} fp32 (the pretrained start)", dense, dense_rec["test_error"] / 100,
        f"{a.pretrain_epochs} plain epochs")
    row(f"binary {name} (kwh.binarize_, scale {a.scale})", binary, test_error(binary, data),
        f"{a.pretrain_epochs} plain + {a.epochs} binary epochs; first layer 1-bit weights x "
        "real inputs, last layer float32")
    for prior in PRIORS:
        path = Path(f"benchmarks/results/models/lenet5_mnist_{prior}.kwh")
        if path.is_file():
            m = kwh.load(path)
            row(f"kwh {prior} (compressed, {m.kwh_summary['architecture']}, bits "
                f"{m.kwh_summary['bits']})", m, test_error(m, data), str(path))
    base = rows[0]["per_correct_nj"]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    command = "python -m benchmarks.binary_lenet5 " + " ".join(sys.argv[1:] if argv is None
                                                                else argv)
    md = [f"# Binary LeNet-5 on MNIST beside dense and kwh-compressed ({commit})", "",
          f"Command: `{command}`", "",
          f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{a.threads} thread(s). Modelled energy (kwh.energy defaults, Horowitz 2014 45 nm) "
          "for one 28x28 example; per correct prediction = energy / (1 - test error).", "",
          "| model | test error % | energy / inference | per correct prediction | "
          "dense / this | multiplies (XNORs in binary layers) | weight bits | note |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['model']} | {r['test_error_pct']:.2f} | {r['energy_nj']:,.1f} nJ | "
                  f"{r['per_correct_nj']:,.1f} nJ | {base / r['per_correct_nj']:,.0f}x | "
                  f"{r['mults']:,.0f} | {r['weight_bits']:,.0f} | {r['note']} |")
    last = [r for r in res.log if r.get("event") == "epoch"][-1]
    md += ["", f"Binary run: `{cfg.out_dir}`, last epoch test error {last['test_error']:.2f}% "
               f"(validation {last.get('val_error')}%); target <= 1.5%: "
               f"{'met' if rows[1]['test_error_pct'] <= 1.5 else 'not met'}."]
    Path(f"{a.out}.md").write_text("\n".join(md) + "\n")
    Path(f"{a.out}.json").write_text(json.dumps({"command": command, "commit": commit,
                                                 "rows": rows}, indent=1))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
