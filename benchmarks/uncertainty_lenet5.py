"""Uncertainty of LeNet-5 on MNIST: Bayesian compression priors against dense, MC dropout and
temperature scaling, with OOD detection on Fashion-MNIST (and the reverse pair if asked).

All models are trained and evaluated in the same run on the same examples:
  dense        LeNet-5, Adam 1e-3, batch 100, cross-entropy
  dense + T    the same net, temperature fitted on a held-out split of the training data
  MC dropout   LeNet-5 with Dropout(0.5) on the inputs of both fully connected layers, S samples
  Bayesian     the dense net after --pretrain-epochs, bayesify_(prior), free-energy training,
               S posterior samples (kwh.predict); also its posterior mean (eval mode, pruned,
               float) and the kwh.compress output (pruned + quantized) when kwh.compress imports
Metrics: kwh.metrics (test error, NLL, Brier summed over classes, ECE with 15 equal-width
top-1 confidence bins, OOD AUROC with predictive entropy and with mutual information).

    python benchmarks/uncertainty_lenet5.py            # defaults: the committed results
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import kwh
from kwh import metrics
from kwh.bayes import KLWarmup, bayes_layers
from kwh.bayes.uncertainty import load_ood, predict
from kwh.models import lenet5

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ["train_data", "ood_data", "model", "method", "samples", "epochs", "test_error", "nll",
          "brier", "ece", "auroc_entropy", "auroc_mi", "mean_mi_test", "mean_mi_ood",
          "temperature", "kept", "train_s", "eval_s"]


def log(msg: str):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def lenet5_dropout(p: float = 0.5) -> nn.Sequential:
    """LeNet-5-Caffe with Dropout(p) on the inputs of both fully connected layers."""
    m = lenet5()
    layers = list(m)
    fc = [i for i, layer in enumerate(layers) if isinstance(layer, nn.Linear)]
    for i in reversed(fc):
        layers.insert(i, nn.Dropout(p))
    return nn.Sequential(*layers)


def batches(x, y, batch: int, gen: torch.Generator):
    perm = torch.randperm(len(y), generator=gen)
    for i in range(0, len(y), batch):
        idx = perm[i:i + batch]
        yield x[idx], y[idx]


def train_plain(model: nn.Module, x, y, epochs: int, seed: int, snapshot_at: int | None = None):
    """Adam 1e-3, batch 100, cross-entropy; returns the state after ``snapshot_at`` epochs too."""
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    gen = torch.Generator().manual_seed(seed)
    snap = None
    for epoch in range(epochs):
        model.train()
        for xb, yb in batches(x, y, 100, gen):
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
        log(f"  epoch {epoch + 1}/{epochs} loss {loss.item():.4f}")
        if snapshot_at is not None and epoch + 1 == snapshot_at:
            snap = copy.deepcopy(model.state_dict())
    model.eval()
    return snap


def param_groups(model: nn.Module, lr: float, var_mult: float) -> list[dict]:
    """Means at lr, posterior log-variances at lr * var_mult (Adam steps ~lr whatever the scale)."""
    var = [p for n, p in model.named_parameters() if n.endswith("log_var") or n.endswith("log_sigma2")]
    ids = {id(p) for p in var}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return [{"params": rest, "lr": lr}, {"params": var, "lr": lr * var_mult}]


def train_bayes(model: nn.Module, x, y, epochs: int, seed: int, warmup: KLWarmup, var_mult: float):
    """Free energy (kwh.free_energy) with KL warm-up per fractional epoch; Adam, batch 100."""
    opt = torch.optim.Adam(param_groups(model, 1e-3, var_mult))
    gen = torch.Generator().manual_seed(seed)
    n = len(y)
    steps = (n + 99) // 100
    for epoch in range(epochs):
        model.train()
        for i, (xb, yb) in enumerate(batches(x, y, 100, gen)):
            beta = warmup(epoch + i / steps)
            loss = kwh.free_energy(model, F.cross_entropy(model(xb), yb), n_data=n, kl_weight=beta)
            opt.zero_grad()
            loss.backward()
            opt.step()
        kept = kept_groups(model)
        log(f"  epoch {epoch + 1}/{epochs} free energy {loss.item():.4f} kl_weight {beta:.2f} kept {kept}")
    model.eval()


def kept_groups(model: nn.Module) -> str:
    """Kept groups (units / filters, or weights for log-uniform) per Bayesian layer."""
    return "-".join(str(int(layer.keep_mask().sum())) for _, layer in bayes_layers(model))


def logits_of(model: nn.Module, x, batch: int = 1000) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)]).double()


def score(probs, y, h_in, mi_in, h_out, mi_out, stochastic: bool) -> dict:
    return {
        "test_error": 1.0 - metrics.accuracy(probs, y), "nll": metrics.nll(probs, y),
        "brier": metrics.brier_score(probs, y), "ece": metrics.expected_calibration_error(probs, y),
        "auroc_entropy": metrics.ood_auroc(h_in, h_out),
        "auroc_mi": metrics.ood_auroc(mi_in, mi_out) if stochastic else None,
        "mean_mi_test": float(mi_in.mean()), "mean_mi_ood": float(mi_out.mean()),
    }


def evaluate(model, x_test, y_test, x_ood, samples: int, method: str = "auto"):
    """kwh.predict on test and OOD images; returns (metrics dict, test probs, eval seconds)."""
    t = time.time()
    p_in = predict(model, x_test, samples, method=method)
    p_out = predict(model, x_ood, samples, method=method)
    s = score(p_in.probs, y_test, p_in.entropy, p_in.mutual_information, p_out.entropy,
              p_out.mutual_information, p_in.stochastic)
    s.update(method=p_in.method, samples=p_in.samples)
    return s, p_in.probs, time.time() - t


def entropy_of(p: torch.Tensor) -> torch.Tensor:
    return -torch.special.xlogy(p, p).sum(1)


def run_pair(args, train_name: str, ood_name: str, writer, rel_out: dict):
    """Train every model on ``train_name``, score on its test set and on ``ood_name``."""
    root = args.data_dir
    gen = torch.Generator().manual_seed(args.seed)
    x, y = kwh.get_dataset(train_name, "train", root, limit=args.limit_train or None).tensors
    perm = torch.randperm(len(y), generator=gen)
    hold, tr = perm[:args.holdout], perm[args.holdout:]
    x_tr, y_tr, x_ho, y_ho = x[tr], y[tr], x[hold], y[hold]
    x_te, y_te = kwh.get_dataset(train_name, "test", root).tensors
    x_ood = load_ood(ood_name, train_name, root).tensors[0]
    sub = torch.randperm(len(y_te), generator=gen)[:args.n_test]  # seeded subset, same for all
    x_te, y_te = x_te[sub], y_te[sub]
    x_ood = x_ood[torch.randperm(len(x_ood), generator=gen)[:args.n_ood]]
    log(f"{train_name}: train {len(y_tr)}, held-out {len(y_ho)}, test {len(y_te)}, "
        f"OOD {ood_name} {len(x_ood)}")
    base = {"train_data": train_name, "ood_data": ood_name}

    def emit(row: dict, probs=None):
        full = {**base, **row}
        writer.writerow({k: _fmt(full.get(k)) for k in FIELDS})
        args.csv_file.flush()
        log("  " + ", ".join(f"{k}={_fmt(full.get(k))}" for k in FIELDS[2:]))
        if probs is not None:
            rel = metrics.reliability_data(probs, y_te, 15).to_dict()
            rel_out[f"{train_name}/{row['model']}"] = rel

    total = args.pretrain_epochs + args.bayes_epochs
    dense_epochs = args.dense_epochs or total
    # dense, and its snapshot after the pretraining epochs (the Bayesian nets start there)
    torch.manual_seed(args.seed)
    dense = lenet5()
    log(f"dense LeNet-5, {dense_epochs} epochs")
    t = time.time()
    snap = train_plain(dense, x_tr, y_tr, dense_epochs, args.seed, snapshot_at=args.pretrain_epochs)
    t_dense = time.time() - t
    s, probs, te = evaluate(dense, x_te, y_te, x_ood, 1, "deterministic")
    emit({"model": "dense", "epochs": dense_epochs, "train_s": t_dense, "eval_s": te, **s}, probs)
    # temperature scaling on the held-out split
    temp = metrics.fit_temperature(logits_of(dense, x_ho), y_ho)
    t0 = time.time()
    p_in = metrics.apply_temperature(logits_of(dense, x_te), temp)
    p_out = metrics.apply_temperature(logits_of(dense, x_ood), temp)
    z_in, z_out = torch.zeros(len(p_in)), torch.zeros(len(p_out))
    s = score(p_in, y_te, entropy_of(p_in), z_in, entropy_of(p_out), z_out, False)
    emit({"model": "dense + temperature", "method": "deterministic", "samples": 1,
          "epochs": dense_epochs, "temperature": temp, "train_s": t_dense,
          "eval_s": time.time() - t0, **s}, p_in)
    # MC dropout
    torch.manual_seed(args.seed)
    drop = lenet5_dropout(0.5)
    log(f"LeNet-5 + dropout 0.5 on the fc inputs, {dense_epochs} epochs")
    t = time.time()
    train_plain(drop, x_tr, y_tr, dense_epochs, args.seed)
    t_drop = time.time() - t
    s, probs, te = evaluate(drop, x_te, y_te, x_ood, 1, "deterministic")
    emit({"model": "dropout net (deterministic)", "epochs": dense_epochs, "train_s": t_drop,
          "eval_s": te, **s}, probs)
    s, probs, te = evaluate(drop, x_te, y_te, x_ood, args.samples, "mc-dropout")
    emit({"model": "MC dropout", "epochs": dense_epochs, "train_s": t_drop, "eval_s": te, **s},
         probs)
    # Bayesian LeNet-5 per prior, its posterior mean, and its compressed model
    for prior in args.priors:
        torch.manual_seed(args.seed)
        bnet = lenet5()
        bnet.load_state_dict(snap)
        kwh.bayesify_(bnet, prior)
        log(f"Bayesian LeNet-5 ({prior}): {args.pretrain_epochs} dense + {args.bayes_epochs} "
            "Bayesian epochs")
        t = time.time()
        train_bayes(bnet, x_tr, y_tr, args.bayes_epochs, args.seed,
                    KLWarmup(0.0, args.warmup_epochs), args.var_lr_mult)
        t_b = time.time() - t
        epochs = f"{args.pretrain_epochs}+{args.bayes_epochs}"
        kept = kept_groups(bnet)
        s, probs, te = evaluate(bnet, x_te, y_te, x_ood, args.samples, "bayes")
        emit({"model": f"Bayesian {prior}", "epochs": epochs, "kept": kept, "train_s": t_b,
              "eval_s": te, **s}, probs)
        s, probs, te = evaluate(bnet, x_te, y_te, x_ood, 1, "deterministic")
        emit({"model": f"{prior} posterior mean", "epochs": epochs, "kept": kept, "train_s": t_b,
              "eval_s": te, **s}, probs)
        try:
            small = kwh.compress(bnet, input_shape=(1, 28, 28))
        except Exception as e:  # kwh.compress is optional here: report why it is missing
            log(f"  kwh.compress unavailable: {type(e).__name__}: {e}")
            continue
        summ = getattr(small, "kwh_summary", {})
        arch = f"{summ.get('architecture', '')} bits {summ.get('bits', '?')}"
        s, probs, te = evaluate(small, x_te, y_te, x_ood, 1, "deterministic")
        emit({"model": f"{prior} compressed (kwh.compress)", "epochs": epochs,
              "kept": arch, "train_s": t_b, "eval_s": te, **s}, probs)


def _fmt(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.5g}" if abs(v) < 1e4 else f"{v:.1f}"
    return str(v)


def machine_info() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                                capture_output=True).stdout.strip()
    except OSError:
        commit = "unknown"
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "commit": commit,
            "load_avg_start": os.getloadavg()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=os.environ.get("KWH_DATA"))
    ap.add_argument("--priors", default="group-nj,group-horseshoe")
    ap.add_argument("--pretrain-epochs", type=int, default=2)
    ap.add_argument("--bayes-epochs", type=int, default=3)
    ap.add_argument("--dense-epochs", type=int, default=0, help="0: pretrain + bayes epochs")
    ap.add_argument("--warmup-epochs", type=float, default=1.0)
    ap.add_argument("--var-lr-mult", type=float, default=10.0)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--holdout", type=int, default=5000)
    ap.add_argument("--n-test", type=int, default=3000)
    ap.add_argument("--n-ood", type=int, default=3000)
    ap.add_argument("--limit-train", type=int, default=0, help="smoke tests: first N (0: all)")
    ap.add_argument("--reverse", action="store_true", help="also Fashion-MNIST -> MNIST")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/uncertainty_lenet5"))
    args = ap.parse_args(argv)
    args.priors = [p for p in args.priors.split(",") if p]
    torch.set_num_threads(args.threads)
    info = machine_info()
    info["command"] = " ".join(["python benchmarks/uncertainty_lenet5.py", *sys.argv[1:]])
    info["args"] = {k: v for k, v in vars(args).items() if k != "data_dir"}
    log(json.dumps(info))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rel: dict = {}
    t0 = time.time()
    with open(f"{out}.csv.part", "w", newline="") as f:
        args.csv_file = f
        writer = csv.DictWriter(f, FIELDS)
        writer.writeheader()
        pairs = [("mnist", "fashion-mnist")] + ([("fashion-mnist", "mnist")] if args.reverse else [])
        for train_name, ood_name in pairs:
            run_pair(args, train_name, ood_name, writer, rel)
        del args.csv_file
    info["args"] = {k: v for k, v in vars(args).items() if k != "data_dir"}
    info["wall_s"] = time.time() - t0
    info["load_avg_end"] = os.getloadavg()
    os.replace(f"{out}.csv.part", f"{out}.csv")
    Path(f"{out}_reliability.json.part").write_text(json.dumps(rel, indent=1))
    os.replace(f"{out}_reliability.json.part", f"{out}_reliability.json")
    Path(f"{out}_meta.json.part").write_text(json.dumps(info, indent=1))
    os.replace(f"{out}_meta.json.part", f"{out}_meta.json")
    log(f"done in {info['wall_s']:.0f} s; wrote {out}.csv, {out}_reliability.json, {out}_meta.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
