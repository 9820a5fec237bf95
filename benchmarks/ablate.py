"""Ablations of the training defaults: one `kwh train` run per variant, then kwh.compress.

    python -m benchmarks.ablate --model lenet300 --data mnist --prior log-uniform \
        --epochs 30 --pretrain-epochs 20 --variant base --variant vlr1:variance_lr_mult=1 \
        --out benchmarks/results/ablations/lenet300_svd

A variant is NAME or NAME:key=value,key=value over TrainConfig fields (prior options as
prior.key=value). Every variant starts from the same seeded pretraining (the run's seed fixes
it), trains through kwh.train.run_training with a checkpoint each epoch (an interrupted
ablation reruns only the variants without a result, and resumes the one that was running),
(or, with ``--dense RUN``, from the dense model of that `kwh train` run folder, e.g. a paper
table's shared dense start, with no pretraining of its own) is compressed with the default
CompressConfig, and adds one row to OUT/results.{json,md}: test
error before and after quantization, architecture, bits, nonzero weights, the rates, and the
per-epoch alive units and error from the run's log.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from kwh.app import compress
from kwh.compress import CompressConfig
from kwh.data import batch_loader, get_dataset
from kwh.train import TrainConfig, run_training
from kwh.train.data import load_train_data


def parse_variant(text: str) -> tuple[str, dict, dict]:
    """'name:key=v,prior.key=v' -> (name, TrainConfig overrides, prior options)."""
    name, _, rest = text.partition(":")
    over, prior = {}, {}
    for item in filter(None, rest.split(",")):
        key, eq, raw = item.partition("=")
        if not eq:
            raise SystemExit(f"variant {text!r}: {item!r} is not key=value")
        value = json.loads(raw) if raw[:1] in "-0123456789[{tfn" else raw
        if isinstance(value, list):
            value = tuple(value)
        (prior if key.startswith("prior.") else over)[key.removeprefix("prior.")] = value
    return name, over, prior


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_variant(args, name: str, over: dict, prior: dict, out: Path) -> dict:
    base = dict(model=args.model, data=args.data, prior=args.prior, epochs=args.epochs,
                pretrain_epochs=0 if args.dense else args.pretrain_epochs, seed=args.seed,
                threads=1, out_dir=str(out / name), limit_train=args.limit_train)
    base.update(over)
    cfg = TrainConfig(**base, prior_options=prior)
    start = dense_start(args.dense, out) if args.dense else None
    t0 = time.process_time()
    result = run_training(cfg, resume=True, progress=False, model=start)
    cpu = time.process_time() - t0
    test = get_dataset(cfg.data, "test", cfg.data_dir)
    shape = tuple(test.tensors[0].shape[1:])
    small = compress(result.model.cpu(), CompressConfig(input_shape=shape),
                     eval_data=batch_loader(test, 1000))  # the posterior's bits alone
    s = small.kwh_summary
    val = load_train_data(cfg).validation
    fitted = None
    if val is not None:  # kwh's default: bits fitted on the validation split
        f = compress(result.model.cpu(), CompressConfig(input_shape=shape),
                     eval_data=batch_loader(test, 1000), guard_data=batch_loader(val, 1000))
        fitted = {"bits": f.kwh_summary["bits"], "eval": f.kwh_summary["eval"],
                  "max_compression": f.kwh_summary["rates"]["max_compression"],
                  "kept_bits_rate": kept_bits_rate(f.kwh_summary),
                  "bits_guard": f.kwh_summary["bits_guard"]}
    hist = [r for r in result.log if r.get("event") == "epoch" and r.get("phase") == "bayes"]
    return {"variant": name, "overrides": over, "prior_options": prior,
            "summary": {k: s[k] for k in ("architecture", "bits", "nonzero", "density",
                                          "weights_original", "layers",
                                          "payload_bytes", "rates")},
            "kept_bits_rate": kept_bits_rate(s),
            "eval": s.get("eval"), "fitted_bits": fitted,
            "cpu_seconds_this_call": round(cpu, 1),
            "curve": [{"epoch": r["epoch"], "test_error": r["test_error"],
                       "architecture": r.get("architecture"), "alive": r.get("alive"),
                       "seconds": r.get("seconds"), "cpu_seconds": r.get("cpu_seconds"),
                       "val_error": r.get("val_error")} for r in hist],
            "bayes_cpu_seconds": round(sum(r.get("cpu_seconds") or 0 for r in hist), 1),
            "shrink_events": [r for r in result.log if r.get("event") == "shrink"]}


def dense_start(run: str, out: Path) -> torch.nn.Module:
    """The finished dense net of a plain `kwh train` run folder, read from a copy in OUT/dense
    (so several ablations can start from one folder at once without writing to it)."""
    copy = out / "dense"
    if not (copy / "config.json").is_file():
        shutil.copytree(run, copy, dirs_exist_ok=True)
    cfg = TrainConfig.from_dict(json.loads((copy / "config.json").read_text()))
    cfg = dataclasses.replace(cfg, out_dir=str(copy), threads=1)
    if cfg.epochs != 0:
        raise SystemExit(f"--dense {run}: not a plain run (it has {cfg.epochs} Bayesian epochs)")
    return run_training(cfg, resume=True, progress=False).model.train()


def kept_bits_rate(s: dict) -> float:
    """32 |W| / sum over layers of kept weights x bits (kept: nonzero weights of an
    unstructured prior, the pruned dense architecture's weights of a group prior): the rate
    the issue compares with the authors' code, no index or entropy coding counted."""
    unstructured = s["rates"]["kind"].startswith("csr")
    bits = sum((d["nonzero"] if unstructured else d["weights_pruned_dense"]) * d["bits"]
               for d in s["layers"])
    return 32 * s["weights_original"] / bits


NOTE = ("Error is the test error of the compressed model (before and after quantization) "
        "with the posterior's bits; \"fitted bits\" are kwh.compress's default (bits fitted on "
        "the validation split). \"kept x bits\" = 32 |W| / sum of kept weights x bits (no "
        "indices, no entropy coding).")


def _fitted(f: dict | None) -> str:
    if not f:
        return "-"
    return (f"{f['bits']}, {100 * f['eval']['error_after_quantization']:.2f}, "
            f"{f['max_compression']:.1f}, {f['kept_bits_rate']:.1f}")


def markdown(rows: list[dict], header: str) -> str:
    out = [header, "", "| variant | settings | error % (before -> after quant.) | arch | bits | "
           "nonzero % | max compr. | kept x bits | fitted bits: bits, error %, max compr., kept x bits | "
           "s/epoch | Bayesian CPU s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ev = r.get("eval") or {}
        before, after = ev.get("error_before_quantization"), ev.get("error_after_quantization")
        err = (f"{100 * before:.2f} -> {100 * after:.2f}" if before is not None else "-")
        s = r["summary"]
        sec = [c["seconds"] for c in r["curve"] if c.get("seconds")]
        settings = ", ".join(f"{k}={v}" for k, v in {**r["overrides"], **{f"prior.{k}": v for k, v in r["prior_options"].items()}}.items()) or "defaults"
        out.append(f"| {r['variant']} | {settings} | {err} | {s['architecture']} | {s['bits']} | "
                   f"{100 * s['density']:.2f} | {s['rates']['max_compression']:.1f} | "
                   f"{r.get('kept_bits_rate') or 0:.1f} | {_fitted(r.get('fitted_bits'))} | "
                   f"{sum(sec) / max(1, len(sec)):.1f} | {r.get('bayes_cpu_seconds', '-')} |")
    return "\n".join(out) + "\n"


def plot_alive(rows: list[dict], path: Path, title: str) -> None:
    """Alive units of each layer per Bayesian epoch, one line per variant (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = sorted({k for r in rows for c in r["curve"] for k in (c.get("alive") or {})}, key=int)
    if not layers:
        return
    fig, axes = plt.subplots(1, len(layers), figsize=(4 * len(layers), 3.4), squeeze=False)
    for ax, layer in zip(axes[0], layers):
        for r in rows:
            pts = [(c["epoch"], c["alive"][layer]) for c in r["curve"] if layer in (c.get("alive") or {})]
            if pts:
                ax.plot(*zip(*pts), marker=".", label=r["variant"])
        ax.set_title(f"layer {layer}")
        ax.set_xlabel("Bayesian epoch")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("alive units")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ablate", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="lenet300")
    p.add_argument("--data", default="mnist")
    p.add_argument("--prior", default="log-uniform")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--pretrain-epochs", type=int, default=20)
    p.add_argument("--limit-train", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dense", help="start every variant from the dense model of this `kwh train` "
                   "run folder (e.g. a paper table's runs/seed0/dense) instead of pretraining")
    p.add_argument("--variant", action="append", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    res_path = out / "results.json"
    rows = json.loads(res_path.read_text())["rows"] if res_path.is_file() else []
    done = {r["variant"] for r in rows}
    command = "python -m benchmarks.ablate " + " ".join(sys.argv[1:] if argv is None else argv)
    for text in a.variant:
        name, over, prior = parse_variant(text)
        if name in done:
            continue
        row = run_variant(a, name, over, prior, out)
        row["commit"] = commit()
        rows.append(row)
        info = {"command": command, "machine": {"cpu": platform.processor(), "torch": torch.__version__,
                                                "threads": 1}, "rows": rows}
        res_path.write_text(json.dumps(info, indent=1) + "\n")
        start = f"dense start {a.dense}" if a.dense else f"{a.pretrain_epochs} plain"
        header = (f"# Ablation: {a.model} / {a.data} / {a.prior}, {start} + "
                  f"{a.epochs} Bayesian epochs, seed {a.seed}\n\nCommand: `{command}`\n\n"
                  + NOTE)
        (out / "results.md").write_text(markdown(rows, header) + "\n![alive units per epoch](alive_units.png)\n")
        plot_alive(rows, out / "alive_units.png", f"{a.model} / {a.data} / {a.prior}: alive units")
        print(markdown(rows[-1:], f"## {name}"), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
