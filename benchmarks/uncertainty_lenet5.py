"""Uncertainty of LeNet-5 on MNIST: Bayesian compression priors against dense, MC dropout and
temperature scaling, with OOD detection on Fashion-MNIST (and the reverse pair if asked).

All models are trained and evaluated in the same run on the same examples, every one by
kwh.train.run_training (Adam lr 1e-3 constant, batch 100, a resumable run each under
<out>_runs/<data>/; a finished run is reused):
  dense        LeNet-5, cross-entropy, as two consecutive runs (the second from the first's
               model): one ends after --pretrain-epochs, where the Bayesian nets start
  dense + T    the same net, temperature fitted on a held-out split of the training data
  MC dropout   LeNet-5 with Dropout(0.5) on the inputs of both fully connected layers, S samples
  Bayesian     the dense net after --pretrain-epochs, bayesify_(prior), free-energy training
               (KL weight 0 -> 1 over --warmup-epochs, log-scale parameters at lr x
               --var-lr-mult), S posterior samples (kwh.predict); also its posterior mean
               (eval mode, pruned, float) and the kwh.compress output (pruned + quantized)
Metrics: kwh.metrics (test error, NLL, Brier summed over classes, ECE with 15 equal-width
top-1 confidence bins, OOD AUROC with predictive entropy and with mutual information).

    python benchmarks/uncertainty_lenet5.py            # defaults: the committed results
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from benchmarks.machine import machine_info
import kwh
from kwh import metrics
from kwh.app.evaluate import load_ood
from kwh.bayes import bayes_layers
from kwh.bayes.uncertainty import predict
from kwh.models import lenet5
from kwh.train import TrainData, TrainResult

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python benchmarks/uncertainty_lenet5.py`
    sys.path.insert(0, str(ROOT))

from benchmarks.baselines.common import fit, load_data  # noqa: E402

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


def log_run(res: TrainResult, what: str, offset: int = 0) -> None:
    """One line per epoch of a kwh.train run (and any rollback), from its log; epochs are
    numbered from ``offset`` (the epochs of the run this one goes on from)."""
    for r in res.log:
        if r.get("event") != "epoch":
            log(f"  {what}: {r}")
            continue
        line = (f"  {what} epoch {offset + r['epoch']} ({r['phase']}): train loss "
                f"{r['train_loss']:.4f}, test error {r['test_error']:.2f}%")
        if "val_error" in r:
            line += f", held-out error {r['val_error']:.2f}%"
        if r["phase"] == "bayes":
            kept = "-".join(map(str, r["alive"].values()))
            line += f", kl_weight {r['kl_weight']:.2f}, kept {kept}"
        log(line + f", {r['seconds']:.0f} s")


def train_seconds(*results: TrainResult) -> float:
    """Wall seconds of the runs' epochs (each with its end-of-epoch evaluation), from the logs."""
    return sum(r.get("seconds", 0.0) for res in results for r in res.log
               if r.get("event") == "epoch")


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


def evaluate(model, x_test, y_test, x_ood, samples: int, method: str = "auto", store=None):
    """kwh.predict on test and OOD images (over ``store``'s weight samples when given);
    returns (metrics dict, test probs, eval seconds)."""
    t = time.time()
    extra = {} if store is None else {"store": store}
    p_in = predict(model, x_test, samples, method=method, **extra)
    p_out = predict(model, x_ood, samples, method=method, **extra)
    s = score(p_in.probs, y_test, p_in.entropy, p_in.mutual_information, p_out.entropy,
              p_out.mutual_information, p_in.stochastic)
    s.update(method=p_in.method, samples=p_in.samples)
    return s, p_in.probs, time.time() - t


def entropy_of(p: torch.Tensor) -> torch.Tensor:
    return -torch.special.xlogy(p, p).sum(1)


def dense_rows(dense, epochs, t_dense: float, x_ho, y_ho, x_te, y_te, x_ood, emit) -> None:
    """The dense net's row, and its row with a temperature fitted on the held-out split."""
    s, probs, te = evaluate(dense, x_te, y_te, x_ood, 1, "deterministic")
    emit({"model": "dense", "epochs": epochs, "train_s": t_dense, "eval_s": te, **s}, probs)
    temp = metrics.fit_temperature(logits_of(dense, x_ho), y_ho)
    t0 = time.time()
    p_in = metrics.apply_temperature(logits_of(dense, x_te), temp)
    p_out = metrics.apply_temperature(logits_of(dense, x_ood), temp)
    z_in, z_out = torch.zeros(len(p_in)), torch.zeros(len(p_out))
    s = score(p_in, y_te, entropy_of(p_in), z_in, entropy_of(p_out), z_out, False)
    emit({"model": "dense + temperature", "method": "deterministic", "samples": 1,
          "epochs": epochs, "temperature": temp, "train_s": t_dense,
          "eval_s": time.time() - t0, **s}, p_in)


def bayes_rows(bnet, epochs: str, t_b: float, x_te, y_te, x_ood, samples: int, prior: str,
               emit) -> None:
    """A Bayesian net's sampled predictive and its posterior mean."""
    kept = kept_groups(bnet)
    s, probs, te = evaluate(bnet, x_te, y_te, x_ood, samples, "bayes")
    emit({"model": f"Bayesian {prior}", "epochs": epochs, "kept": kept, "train_s": t_b,
          "eval_s": te, **s}, probs)
    s, probs, te = evaluate(bnet, x_te, y_te, x_ood, 1, "deterministic")
    emit({"model": f"{prior} posterior mean", "epochs": epochs, "kept": kept, "train_s": t_b,
          "eval_s": te, **s}, probs)


def run_pair(args, train_name: str, ood_name: str, writer, rel_out: dict):
    """Train every model on ``train_name``, score on its test set and on ``ood_name``."""
    root = args.data_dir
    gen = torch.Generator().manual_seed(args.seed)
    if args.from_runs:  # the paper table's split: the last 1/12 of the training set held out
        tdata_pt, _ = load_data(train_name, root, args.limit_train or None, None)
        x_tr, y_tr = tdata_pt.train.tensors
        x_ho, y_ho = tdata_pt.validation.tensors
    else:
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

    tdata = TrainData(TensorDataset(x_tr, y_tr),
                      TensorDataset(x_ho, y_ho) if len(y_ho) else None,
                      TensorDataset(x_te, y_te), train_name)
    runs = Path(f"{args.out}_runs") / train_name
    opts = dict(seed=args.seed, threads=args.threads, lr_decay="constant",
                limit_train=args.limit_train or None)
    if args.from_runs:
        return _from_runs(args, train_name, tdata_pt, runs, (x_ho, y_ho, x_te, y_te, x_ood),
                          emit)
    total = args.pretrain_epochs + args.bayes_epochs
    dense_epochs = args.dense_epochs or total
    # dense in two consecutive runs: the first ends at the Bayesian nets' start (or at the
    # dense net when that is shorter), the second goes on from its model to the other
    torch.manual_seed(args.seed)
    init = lenet5()  # the dropout net below starts from the same weights
    first = min(args.pretrain_epochs, dense_epochs)
    rest = max(args.pretrain_epochs, dense_epochs) - first
    log(f"dense LeNet-5, {dense_epochs} epochs (Bayesian start after {args.pretrain_epochs})")
    run_a = fit("lenet5", tdata, runs / f"dense_e{first}", model=init, pretrain_epochs=first,
                **opts)
    log_run(run_a, "dense")
    run_b = run_a
    if rest:
        run_b = fit("lenet5", tdata, runs / f"dense_e{first}+{rest}", model=run_a.model,
                    pretrain_epochs=rest, **opts)
        log_run(run_b, "dense", offset=first)
    dense_runs = (run_a, run_b) if dense_epochs > args.pretrain_epochs else (run_a,)
    start = (run_a if dense_epochs >= args.pretrain_epochs else run_b).model.eval().cpu()
    dense = dense_runs[-1].model.eval().cpu()
    t_dense = train_seconds(*dense_runs)
    dense_rows(dense, dense_epochs, t_dense, x_ho, y_ho, x_te, y_te, x_ood, emit)
    # MC dropout
    torch.manual_seed(args.seed)
    drop = lenet5_dropout(0.5)
    log(f"LeNet-5 + dropout 0.5 on the fc inputs, {dense_epochs} epochs")
    res = fit("custom", tdata, runs / f"dropout_e{dense_epochs}", model=drop,
              pretrain_epochs=dense_epochs, **opts)
    log_run(res, "dropout")
    drop, t_drop = res.model.eval().cpu(), train_seconds(res)
    s, probs, te = evaluate(drop, x_te, y_te, x_ood, 1, "deterministic")
    emit({"model": "dropout net (deterministic)", "epochs": dense_epochs, "train_s": t_drop,
          "eval_s": te, **s}, probs)
    s, probs, te = evaluate(drop, x_te, y_te, x_ood, args.samples, "mc-dropout")
    emit({"model": "MC dropout", "epochs": dense_epochs, "train_s": t_drop, "eval_s": te, **s},
         probs)
    # Bayesian LeNet-5 per prior from the dense start, its posterior mean, its compressed model
    warmup_end = min(1.0, args.warmup_epochs / max(1, args.bayes_epochs))  # of Bayesian epochs
    for prior in args.priors:
        log(f"Bayesian LeNet-5 ({prior}): {args.pretrain_epochs} dense + {args.bayes_epochs} "
            "Bayesian epochs")
        epochs = f"{args.pretrain_epochs}+{args.bayes_epochs}"
        res = fit("lenet5", tdata, runs / f"{prior}_e{epochs}", model=start, prior=prior,
                  epochs=args.bayes_epochs, variance_lr_mult=args.var_lr_mult,
                  kl_warmup_start=0.0, kl_warmup_end=warmup_end, **opts)
        log_run(res, prior)
        bnet, t_b = res.model.eval().cpu(), train_seconds(res)
        bayes_rows(bnet, epochs, t_b, x_te, y_te, x_ood, args.samples, prior, emit)
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


def _from_runs(args, train_name: str, tdata: TrainData, runs: Path, tensors, emit) -> None:
    """The dense and Bayesian LeNet-5 of a paper-table run folder (``--from-runs``: its
    ``dense`` run and one run per prior, reloaded with the arguments the table trained them
    with), beside temperature scaling and an MC-dropout net trained here on the same split."""
    x_ho, y_ho, x_te, y_te, x_ood = tensors
    src = Path(args.from_runs)
    same = dict(seed=args.seed, threads=args.threads, lr=1e-3, device="cpu")
    log(f"dense LeNet-5 and Bayesian nets from {src}")
    dense_res = fit("lenet5", tdata, src / "dense", model=lenet5(),
                    pretrain_epochs=args.pretrain_epochs, **same)
    dense, t_dense = dense_res.model.eval().cpu(), train_seconds(dense_res)
    dense_rows(dense, args.pretrain_epochs, t_dense, x_ho, y_ho, x_te, y_te, x_ood, emit)
    torch.manual_seed(args.seed)
    log(f"LeNet-5 + dropout 0.5 on the fc inputs, {args.pretrain_epochs} epochs (as the dense)")
    res = fit("custom", tdata, runs / f"dropout_e{args.pretrain_epochs}_tablesplit",
              model=lenet5_dropout(0.5), pretrain_epochs=args.pretrain_epochs, **same)
    drop, t_drop = res.model.eval().cpu(), train_seconds(res)
    s, probs, te = evaluate(drop, x_te, y_te, x_ood, args.samples, "mc-dropout")
    emit({"model": "MC dropout", "epochs": args.pretrain_epochs, "train_s": t_drop,
          "eval_s": te, **s}, probs)
    if args.sgld_epochs:
        # SGLD from the same dense start (Welling and Teh 2011): kwh.train's method "sgld",
        # constant step, burn-in one epoch, a sample every thin steps
        opts = {"burn_in_epochs": 1, "thin_steps": args.sgld_thin, "max_samples": 50}
        if args.sgld_lr:
            opts["lr"] = args.sgld_lr
        log(f"SGLD from the dense start: {args.sgld_epochs} epochs, {opts}")
        res = fit("lenet5", tdata, runs / f"sgld_e{args.sgld_epochs}_tablesplit", model=dense,
                  method="sgld", epochs=args.sgld_epochs, sgld_options=opts, **same)
        store = res.samples
        net, t_s = res.model.eval().cpu(), train_seconds(res)
        s, probs, te = evaluate(net, x_te, y_te, x_ood, args.samples, "samples", store=store)
        emit({"model": "SGLD", "epochs": f"{args.pretrain_epochs}+{args.sgld_epochs}",
              "kept": f"{len(store)} samples held", "train_s": t_s, "eval_s": te, **s}, probs)
    for prior in args.priors:
        res = fit("lenet5", tdata, src / prior, model=dense, prior=prior,
                  epochs=args.bayes_epochs, shrink_patience=args.shrink_patience, **same)
        bnet, t_b = res.model.eval().cpu(), train_seconds(res)
        epochs = f"{args.pretrain_epochs}+{args.bayes_epochs}"
        bayes_rows(bnet, epochs, t_b, x_te, y_te, x_ood, args.samples, prior, emit)


def _fmt(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.5g}" if abs(v) < 1e4 else f"{v:.1f}"
    return str(v)


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
    ap.add_argument("--from-runs", default=None,
                    help="a paper-table run folder (e.g. benchmarks/results/"
                         "paper_table_lenet5_mnist_runs/seed0): its dense and Bayesian runs are "
                         "reloaded instead of trained (give the table's --pretrain-epochs, "
                         "--bayes-epochs and --shrink-patience)")
    ap.add_argument("--shrink-patience", type=int, default=0)
    ap.add_argument("--sgld-epochs", type=int, default=0,
                    help="with --from-runs: also sample the dense net's posterior with SGLD "
                         "for this many epochs (kwh train --method sgld); 0: no SGLD row")
    ap.add_argument("--sgld-lr", type=float, default=None, help="SGLD step (default: kwh's)")
    ap.add_argument("--sgld-thin", type=int, default=100, help="steps between kept samples")
    args = ap.parse_args(argv)
    args.priors = [p for p in args.priors.split(",") if p]
    if args.pretrain_epochs < 1:
        ap.error("--pretrain-epochs must be >= 1: the Bayesian nets start from that dense net")
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
