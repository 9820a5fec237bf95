"""Error against compression along the pruning threshold of one trained Bayesian run.

    python -m benchmarks.threshold_sweep benchmarks/results/paper_table_lenet5_mnist_runs/seed0/log-uniform \
        --thresholds 3 4 5 6 7 --match-val-error 0.58 --out benchmarks/results/threshold_sweep_lenet5_mnist_svd

One posterior gives a family of compressed models: a higher log-alpha threshold keeps more
weights (or groups), a lower one prunes more. For each threshold the run's model is compressed
exactly as the paper table does (kwh.compress, bits guarded on the run's validation split),
its real .kwh payload counted, and its error measured on the validation split and the test
set. ``--match-val-error E`` picks, among the thresholds, the most compressed model whose
validation error is at most E percent (e.g. Deep Compression's validation error in the same
table): the rate "at equal error", chosen on held-out training data, never on the test set.
``--only GLOB`` sweeps the threshold of the matching layers only (fnmatch on qualified layer
names, e.g. ``'*.attn.out'`` for the attention heads of kwh.models.vit), the others keeping
their posterior's threshold.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import platform
import subprocess
import sys
from pathlib import Path

import torch

import kwh
from benchmarks.baselines.common import load_data, make_net
from kwh.app import LoadedModel, load_model
from kwh.train import checkpoint_path, load_checkpoint
from kwh.bayes import BayesLayer
from kwh.app.finetune import DISTILL_TEMPERATURE, DISTILL_WEIGHT, finetune
from kwh.compress import CompressConfig, evaluate
from kwh.compress.config import FLOAT_BITS
from kwh.data import batch_loader


def sweep(run: str, thresholds: list[float], files: Path | None = None, finetune_epochs: int = 0,
          finetune_lr: float = 1e-3, runs: Path | None = None,
          only: str | None = None, teacher: torch.nn.Module | None = None,
          width: float | None = None, bits_search: str = "fit", prune_search: str = "off",
          prune_tolerance: float = 0.1,
          float_bits: int = FLOAT_BITS,
          bits_tolerance: float | None = None,
          fixed: dict[str, float] | None = None) -> tuple[list[dict], dict]:
    """One row per threshold: errors (validation, test, before quantization), rates, bytes;
    with ``finetune_epochs``, the same of the fine-tuned model under "finetuned" (distilled
    from ``teacher`` when given). ``only``: a glob of layer names whose threshold is swept;
    the others keep the posterior's. ``width``: the run trained paper_table's net at this
    width factor (ResNet-20, the VGG-like net). ``prune_search``: kwh.compress's per-layer
    threshold search on the validation split from each row's threshold ("fit": fewest
    nonzero weights, "fit-macs": fewest nonzero multiplications). ``float_bits``: the
    magnitude bits of the biases' and norms' grids (kwh.compress.floats). ``bits_tolerance``:
    the validation error (points) the guarded bits may cost (kwh.compress's default when
    None). ``fixed``: {GLOB: threshold} for layers held at a threshold of their own along the
    sweep (they win over the swept one)."""
    if width is not None:  # a run of a resized reference net: its structure comes from here
        cfg0 = json.loads((checkpoint_path(run).parent / "config.json").read_text())
        template = make_net(cfg0["model"], width)
        model, _ = load_checkpoint(run, model=template)
        loaded = LoadedModel(model.eval(), None, str(run), checkpoint_path(run), cfg0["data"],
                             "checkpoint")
    else:
        loaded = load_model(run)
    if loaded.kind == "dense-checkpoint":
        raise SystemExit(f"{run}: a plain run's dense net; give a Bayesian run (its posterior "
                         "is what the threshold prunes)")
    if loaded.kind != "checkpoint":
        raise SystemExit(f"{run}: not a `kwh train` run folder or checkpoint")
    swept = None
    if only is not None:
        swept = [n for n, m in loaded.model.named_modules()
                 if isinstance(m, BayesLayer) and fnmatch.fnmatchcase(n, only)]
        if not swept:
            raise SystemExit(f"--only {only!r} matches no Bayesian layer of {run}")
    cfg = json.loads((Path(loaded.path).parent / "config.json").read_text())
    tdata, _ = load_data(cfg["data"], cfg.get("data_dir"), cfg.get("limit_train"),
                         cfg.get("limit_test"), cfg.get("validation"))
    if tdata.validation is None:
        raise SystemExit(f"{run}: the run held out no validation split to choose on")
    val, test = batch_loader(tdata.validation, 1000), batch_loader(tdata.test, 1000)
    held = {}
    for glob, value in (fixed or {}).items():
        names = [n for n, m in loaded.model.named_modules()
                 if isinstance(m, BayesLayer) and fnmatch.fnmatchcase(n, glob)]
        if not names:
            raise SystemExit(f"--set {glob}={value:g} matches no Bayesian layer of {run}")
        held.update(dict.fromkeys(names, value))
    guard = {} if bits_tolerance is None else dict(bits_tolerance=bits_tolerance)
    rows = []
    for t in thresholds:
        by_layer = dict(threshold=t) if swept is None else dict(thresholds=dict.fromkeys(swept, t))
        if held:
            by_layer["thresholds"] = {**by_layer.get("thresholds", {}), **held}
        small = kwh.compress(loaded.model, CompressConfig(input_shape=tdata.input_shape,
                                                          bits_search=bits_search,
                                                          prune_search=prune_search,
                                                          prune_tolerance=prune_tolerance,
                                                          float_bits=float_bits, **by_layer,
                                                          **guard),
                             eval_data=test, guard_data=val)
        s = small.kwh_summary
        nbytes = bare = None
        if files is not None:
            nbytes = kwh.save(small, files / f"threshold_{t:g}.kwh", input_shape=tdata.input_shape)
            bare = kwh.save(small, files / f"threshold_{t:g}_bare.kwh",
                            input_shape=tdata.input_shape, summary=False)
        rows.append({"threshold": t, "val_error_pct": 100 * evaluate(small, val)["error"],
                     "test_error_pct": 100 * s["eval"]["error_after_quantization"],
                     "test_error_before_quant_pct": 100 * s["eval"]["error_before_quantization"],
                     "architecture": s["architecture"], "bits": s["bits"],
                     "nonzero_pct": 100 * s["density"],
                     "max_compression": s["rates"]["max_compression"],
                     "fast_prediction": s["rates"]["fast_prediction"], "file_bytes": nbytes,
                     "file_bytes_bare": bare, "macs": s["macs"],
                     "macs_nonzero": s["macs_nonzero"], "macs_original": s["macs_original"],
                     "fp32_original_bytes": s["size_fp32_original_bytes"],
                     "prune_guard": s.get("prune_guard"),
                     "float_bits": (s.get("float_grids") or {}).get("bits"),
                     "bits_tolerance": (s.get("bits_guard") or {}).get("tolerance_pp")})
        print(f"threshold {t:g}: val {rows[-1]['val_error_pct']:.2f}% test "
              f"{rows[-1]['test_error_pct']:.2f}% at {rows[-1]['max_compression']:.1f}x "
              f"({s['architecture']}, bits {s['bits']})", flush=True)
        if finetune_epochs:
            tuned = finetune(small, tdata, finetune_epochs, (runs or Path("runs")) / f"threshold_{t:g}",
                             lr=finetune_lr, seed=cfg.get("seed", 0), eval_data=test,
                             teacher=teacher)
            ts = tuned.kwh_summary
            fb = fbare = None
            if files is not None:
                fb = kwh.save(tuned, files / f"threshold_{t:g}_finetuned.kwh",
                              input_shape=tdata.input_shape)
                fbare = kwh.save(tuned, files / f"threshold_{t:g}_finetuned_bare.kwh",
                                 input_shape=tdata.input_shape, summary=False)
            rows[-1]["finetuned"] = {
                "val_error_pct": 100 * ts["finetune"]["validation_error_after"],
                "test_error_pct": 100 * ts["eval"]["error_after_finetune"],
                "nonzero_pct": 100 * ts["density"],
                "max_compression": ts["rates"]["max_compression"], "file_bytes": fb,
                "file_bytes_bare": fbare, "macs_nonzero": ts["macs_nonzero"]}
            f = rows[-1]["finetuned"]
            print(f"  fine-tuned {finetune_epochs} epochs: val {f['val_error_pct']:.2f}% test "
                  f"{f['test_error_pct']:.2f}% at {f['max_compression']:.1f}x", flush=True)
    return rows, cfg


def _bytes(r: dict) -> str:
    """'file (bare)' bytes of a row, or '-' when no files were written."""
    if r.get("file_bytes") is None:
        return "-"
    return f"{r['file_bytes']:,} ({r['file_bytes_bare']:,})"


def pick(rows: list[dict], max_val_error: float, key: str | None = None) -> dict | None:
    """The most compressed row whose validation error is at most ``max_val_error`` percent
    (``key``: judge the row's ``row[key]`` numbers instead, e.g. "finetuned")."""
    def of(r):
        return r if key is None else r[key]
    ok = [r for r in rows if of(r)["val_error_pct"] <= max_val_error + 1e-9]
    return max(ok, key=lambda r: of(r)["max_compression"]) if ok else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.threshold_sweep",
                                description=__doc__.split("\n")[0])
    p.add_argument("run", help="a Bayesian `kwh train` run folder (e.g. a paper table's runs/seed0/log-uniform)")
    p.add_argument("--thresholds", type=float, nargs="+", required=True)
    p.add_argument("--match-val-error", type=float, default=None,
                   help="pick the most compressed threshold at or below this validation error (%%)")
    p.add_argument("--out", required=True, help="output stem: OUT.md, OUT.json, OUT_files/")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--finetune-epochs", type=int, default=0,
                   help="also fine-tune each model this many epochs on its fixed-point grids "
                        "(kwh.app.finetune) and choose among the fine-tuned ones")
    p.add_argument("--finetune-lr", type=float, default=1e-3)
    p.add_argument("--finetune-teacher", default=None, metavar="MODEL",
                   help="distil the fine-tuning from this model (kwh.app.finetune's teacher; "
                        "e.g. the run's dense start, a plain run folder)")
    p.add_argument("--bits-search", choices=["fit", "raise", "off"], default="fit",
                   help="kwh.compress's accuracy guard of the bits on the validation split")
    p.add_argument("--prune-search", choices=["off", "fit", "fit-macs"], default="off",
                   help="kwh.compress's per-layer threshold search on the validation split, "
                        "from each row's threshold (fit: fewest nonzero weights; fit-macs: "
                        "fewest nonzero multiplications)")
    p.add_argument("--prune-tolerance", type=float, default=0.1,
                   help="the validation error (points) the search may cost")
    p.add_argument("--width", type=float, default=None,
                   help="the run's net at this width factor, as paper_table --width built it "
                        "(ResNet-20: 0.5 is 8 channels)")
    p.add_argument("--float-bits", type=int, default=FLOAT_BITS, metavar="BITS",
                   help="magnitude bits of the biases' and norms' fixed-point grids "
                        f"(kwh.compress's float_bits; default {FLOAT_BITS})")
    p.add_argument("--bits-tolerance", type=float, default=None, metavar="POINTS",
                   help="the validation error the guarded bits may cost (kwh.compress's "
                        f"bits_tolerance; default {CompressConfig().bits_tolerance:g}); the "
                        "fine-tuning on the grids may win it back")
    p.add_argument("--set", action="append", default=[], metavar="GLOB=T",
                   help="hold the layers matching GLOB at log-alpha threshold T in every row "
                        "(wins over the swept threshold; repeatable), e.g. 'layer1.*=0'")
    p.add_argument("--only", default=None, metavar="GLOB",
                   help="sweep only the layers whose names match GLOB (e.g. '*.attn.out'); the "
                        "others keep their posterior's threshold")
    a = p.parse_args(argv)
    if a.finetune_epochs < 0 or not 0 < a.finetune_lr < float("inf"):
        p.error("--finetune-epochs must be >= 0 and --finetune-lr positive")
    if a.finetune_teacher and not a.finetune_epochs:
        p.error("--finetune-teacher goes with --finetune-epochs N")
    fixed = {}
    for item in a.set:
        glob, _, value = item.rpartition("=")
        try:
            t = float(value)
        except ValueError:
            t = math.nan
        if not glob or not math.isfinite(t):
            p.error(f"--set {item!r}: give GLOB=THRESHOLD, e.g. 'layer1.*=0'")
        fixed[glob] = t
    teacher = load_model(a.finetune_teacher).model if a.finetune_teacher else None
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    files = Path(f"{out}_files")
    files.mkdir(parents=True, exist_ok=True)
    rows, cfg = sweep(a.run, sorted(a.thresholds), files, a.finetune_epochs, a.finetune_lr,
                      Path(f"{out}_runs"), a.only, teacher, a.width, a.bits_search,
                      a.prune_search, a.prune_tolerance, a.float_bits, a.bits_tolerance,
                      fixed)
    ft = "finetuned" if a.finetune_epochs else None
    chosen = None if a.match_val_error is None else pick(rows, a.match_val_error, ft)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    command = "python -m benchmarks.threshold_sweep " + " ".join(sys.argv[1:] if argv is None else argv)
    md = [f"# Error against compression along the pruning threshold: {cfg['model']} / "
          f"{cfg['data']} / {cfg['prior']} ({commit})", "", f"Command: `{command}`", "",
          f"Run: `{a.run}` ({cfg['epochs']} Bayesian epochs). Machine: "
          f"{platform.machine()}, torch {torch.__version__}, {a.threads} thread(s). Each row: "
          "kwh.compress at that log-alpha threshold, " +
          (f"bits guarded on the run's validation split ({a.bits_search}, <= "
           f"{CompressConfig().bits_tolerance if a.bits_tolerance is None else a.bits_tolerance:g}"
           " points)"
           if a.bits_search != "off" else "the posterior's bits (no guard)") +
          f", biases and norms on {a.float_bits}-bit grids, rate from the real .kwh payload "
          "(32 |W| / payload bits)." +
          (f" Per-layer thresholds then searched on the validation split from the row's "
           f"(kwh.compress prune_search={a.prune_search}, tolerance {a.prune_tolerance:g} "
           "points)." if a.prune_search != "off" else "") +
          " MACs: multiplications by nonzero weights per example (the dense original's in "
          "the title); file: the .kwh file's bytes, and without its summary (bare)." +
          (f" The threshold is that of the layers matching `{a.only}` only; the others keep "
           "their posterior's." if a.only else "") +
          (" Held in every row: " + ", ".join(f"`{g}` at {t:g}" for g, t in fixed.items()) +
           "." if fixed else "") +
          (f" Fine-tuned: {a.finetune_epochs} epochs at lr {a.finetune_lr:g} (Adam, decayed "
           "linearly to 0) on the run's training split, weights on their fixed-point grids, "
           "pruned weights held at zero (kwh.app.finetune); same architecture and bits." +
           (f" Distilled from `{a.finetune_teacher}` (weight {DISTILL_WEIGHT:g}, temperature "
            f"{DISTILL_TEMPERATURE:g}, kwh.train.distill)." if a.finetune_teacher else "")
           if ft else ""), "",
          f"Dense original: {rows[0]['macs_original']:,} MACs, "
          f"{rows[0]['fp32_original_bytes']:,} B in float32." if rows else "", "",
          "| threshold | val error % | test error % (before quant.) | architecture | bits | "
          "nonzero % | MACs (nonzero) | max compr. | fast pred. | file B (bare) |" +
          (" fine-tuned: val error % | test error % | max compr. | file B (bare) |" if ft else ""),
          "|---|---|---|---|---|---|---|---|---|---|" + ("---|---|---|---|" if ft else "")]
    for r in rows:
        mark = " **(chosen)**" if r is chosen else ""
        line = (f"| {r['threshold']:g}{mark} | {r['val_error_pct']:.2f} | {r['test_error_pct']:.2f} "
                f"({r['test_error_before_quant_pct']:.2f}) | {r['architecture']} | {r['bits']} | "
                f"{r['nonzero_pct']:.2f} | {r['macs_nonzero']:,} | {r['max_compression']:.1f} | "
                f"{r['fast_prediction']:.1f} | {_bytes(r)} |")
        if ft:
            f = r["finetuned"]
            line += (f" {f['val_error_pct']:.2f} | {f['test_error_pct']:.2f} | "
                     f"{f['max_compression']:.1f} | {_bytes(f)} |")
        md.append(line)
    if a.match_val_error is not None:
        c = None if chosen is None else (chosen[ft] if ft else chosen)
        md += ["", f"Chosen on {'fine-tuned ' if ft else ''}validation error <= "
               f"{a.match_val_error:.2f}%: " +
               (f"threshold {chosen['threshold']:g}, test error {c['test_error_pct']:.2f}% at "
                f"{c['max_compression']:.1f}x" if chosen else "no threshold qualifies") + "."]
    Path(f"{out}.md").write_text("\n".join(md) + "\n")
    Path(f"{out}.json").write_text(json.dumps({"command": command, "commit": commit, "run": a.run,
                                               "rows": rows, "chosen": chosen,
                                               "match_val_error": a.match_val_error,
                                               "finetune_epochs": a.finetune_epochs,
                                               "finetune_lr": a.finetune_lr,
                                               "finetune_teacher": a.finetune_teacher},
                      indent=1) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
