"""Bayesian Compression's Table 1 side by side with the baselines, from one shared dense start.

    python -m benchmarks.paper_table --net lenet300 --data mnist --budget quick

Per seed: plain pretraining of the net (the shared start), then from copies of it: kwh with
each prior (log-uniform = Sparse VD, group-nj = BC-GNJ, group-horseshoe = BC-GHS: bayesify_,
free energy, kwh.compress, kwh.save), Deep Compression (prune + retrain, k-means, Huffman),
soft weight-sharing (kwh.train method 'sws', kwh.sws.quantize_, the same Huffman file),
Torch-Pruning structured L1 pruning at kwh's best error, and the dense net. Writes
benchmarks/results/paper_table_<net>_<data>.{md,csv,json} and three PNG plots.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from benchmarks.machine import machine_info
from benchmarks.baselines import deep_compression, plots, sparse_file, structured, table
from benchmarks.baselines.common import (INPUT_SHAPES, Clock, check_net_data, count_macs, fit,
                                         load_data, make_net, test_error, throughput,
                                         weighted_layers)
from benchmarks.baselines.kwh_rows import compress_and_save, log_alphas, train_bayes
import kwh
from kwh.app.finetune import finetune, finetune_codebook
from kwh.data import batch_loader
from kwh.sws import mixture_weights, quantize_

PRIORS = {"log-uniform": "kwh Sparse VD (log-uniform)", "group-nj": "kwh BC-GNJ (group-nj)",
          "group-horseshoe": "kwh BC-GHS (group-horseshoe)"}
SWS_LABEL = "Soft weight-sharing (mixture prior + Huffman)"
METHODS = ("dense", *PRIORS, "deep-compression", "soft-weight-sharing", "torch-pruning")
# The tables are written by a run that selects at least these (soft weight-sharing may be left
# out: its mixture prior over every weight makes a step ~5x a plain one on LeNet-5).
TABLE_METHODS = ("dense", *PRIORS, "deep-compression", "torch-pruning")

# pretrain / Bayesian epochs, data limits, Deep Compression rounds, Torch-Pruning fine-tune
# epochs per candidate, timing repeats. "full" is the paper's 200 epochs (Louizos et al. 2017).
BUDGETS = {
    "quick": dict(pretrain_epochs=1, epochs=2, limit_train=2000, limit_test=1000, dc_rounds=2,
                  tp_epochs=0.5, repeats=3),
    "cpu": dict(pretrain_epochs=10, epochs=30, limit_train=None, limit_test=None, dc_rounds=3,
                tp_epochs=1, repeats=5),
    "full": dict(pretrain_epochs=20, epochs=200, limit_train=None, limit_test=None, dc_rounds=5,
                 tp_epochs=5, repeats=5),
}
DC_KEEP = 0.08  # Han et al. 2016 keep 8% of LeNet's weights


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.paper_table", description=__doc__.split("\n")[0])
    p.add_argument("--net", choices=["lenet5", "lenet300", "vgg", "resnet20", "vit"], required=True)
    p.add_argument("--data", choices=["mnist", "fashion-mnist", "cifar10"], required=True)
    p.add_argument("--budget", choices=list(BUDGETS), default="quick")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--data-dir", default=None, help="folder with the data (else KWH_DATA, ...)")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--epochs", type=int, help="Bayesian epochs (overrides the budget)")
    p.add_argument("--pretrain-epochs", type=int, help="dense pretraining epochs (overrides)")
    p.add_argument("--limit-train", type=int, help="first N training examples (overrides)")
    p.add_argument("--limit-test", type=int, help="first N test examples (overrides)")
    p.add_argument("--width", type=float, default=1.0, help="width factor of the VGG-like net and ResNet-20")
    p.add_argument("--dc-keep", type=float, default=DC_KEEP, help="Deep Compression kept fraction")
    p.add_argument("--tp-ratios", type=float, nargs="+", default=list(structured.RATIOS))
    p.add_argument("--device", default="cpu", help="where to train (cpu, cuda); measured on the CPU")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                   help="train and measure only these (each run resumes where it stopped; the "
                        "tables are written when all are selected)")
    p.add_argument("--bits-search", choices=["fit", "raise", "off"], default="fit",
                   help="kwh rows: the accuracy guard of the bits on the validation split "
                        "(kwh.compress bits_search)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (training and timing)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--shrink-patience", type=int, default=0,
                   help="kwh rows: remove groups dead this many epochs in a row while training "
                        "(kwh.train shrink_patience; 0: never)")
    p.add_argument("--kl-compute-power", type=float, default=0.0,
                   help="kwh rows: each layer's KL weighted by its compute ** P "
                        "(kwh.train kl_compute_power; default 0: the free energy)")
    p.add_argument("--kl-warmup-end", type=float, default=None, metavar="FRACTION",
                   help="kwh rows: the KL weight reaches 1 at this fraction of the Bayesian "
                        "epochs (kwh.train kl_warmup_end; default 0.2; 0: no warm-up)")
    p.add_argument("--variance-lr-mult", type=float, default=None,
                   help="kwh rows: step of the log-scale parameters as a multiple of --lr "
                        "(kwh.train variance_lr_mult; default: each prior's own)")
    p.add_argument("--finetune-epochs", type=int, default=0,
                   help="kwh rows: also a row of each compressed model fine-tuned this many "
                        "epochs on its fixed-point grids, pruned weights held at zero "
                        "(kwh.app.finetune; 0: none)")
    p.add_argument("--finetune-lr", type=float, default=1e-3)
    p.add_argument("--finetune-distill", action="store_true",
                   help="kwh rows' fine-tuning distils from the table's dense start "
                        "(kwh.app.finetune's teacher; weight 0.9, T 4)")
    p.add_argument("--sws-option", action="append", type=_sws_option, default=[],
                   metavar="KEY=VALUE", help="soft weight-sharing row: a kwh.train sws_options "
                   "setting (e.g. tau=5e-3, init_std=0.25); repeatable")
    p.add_argument("--sws-finetune-epochs", type=int, default=0,
                   help="soft weight-sharing: also a row of the quantized model whose codebook "
                        "values (and biases) train this many epochs, every weight held to its "
                        "code (kwh.app.finetune.finetune_codebook; 0: none)")
    p.add_argument("--sws-finetune-lr", type=float, default=1e-4)
    p.add_argument("--repeats", type=int, help="timed passes per throughput median (overrides)")
    p.add_argument("--bench-batch", type=int, default=1000, help="images per timed pass")
    a = p.parse_args(argv)
    check_net_data(a.net, a.data)
    cfg = dict(BUDGETS[a.budget])
    for k in ("epochs", "pretrain_epochs", "limit_train", "limit_test", "repeats"):
        if getattr(a, k) is not None:
            if getattr(a, k) < (1 if k != "pretrain_epochs" else 0):
                p.error(f"--{k.replace('_', '-')} must be positive, got {getattr(a, k)}")
            cfg[k] = getattr(a, k)
    if a.kl_warmup_end is not None and not 0 <= a.kl_warmup_end <= 1:
        p.error(f"--kl-warmup-end must be a fraction in [0, 1], got {a.kl_warmup_end}")
    if a.shrink_patience < 0:
        p.error(f"--shrink-patience must be >= 0, got {a.shrink_patience}")
    if a.finetune_epochs < 0 or not 0 < a.finetune_lr < float("inf"):
        p.error("--finetune-epochs must be >= 0 and --finetune-lr positive")
    if a.finetune_distill and not a.finetune_epochs:
        p.error("--finetune-distill goes with --finetune-epochs N")
    if a.sws_finetune_epochs < 0 or not 0 < a.sws_finetune_lr < float("inf"):
        p.error("--sws-finetune-epochs must be >= 0 and --sws-finetune-lr positive")
    if not 0 <= a.kl_compute_power < float("inf"):
        p.error(f"--kl-compute-power must be a finite number >= 0, got {a.kl_compute_power}")
    if a.variance_lr_mult is not None and not a.variance_lr_mult > 0:
        p.error(f"--variance-lr-mult must be positive, got {a.variance_lr_mult}")
    a.cfg = cfg
    a.sws_options = dict(a.sws_option)
    return a


def _sws_option(text: str) -> tuple[str, float | None]:
    key, sep, value = (t.strip() for t in text.partition("="))
    try:
        if not (sep and key and value):
            raise ValueError
        if value.lower() == "none":
            return key, None
        return key, int(value) if value.lstrip("-").isdigit() else float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected KEY=NUMBER (e.g. tau=5e-3), got {text!r}") from None


def measure(model, data, w_orig: int, x_bench, repeats: int) -> dict:
    macs, macs_nz = count_macs(model, data.input_shape)
    return {"error_pct": 100 * test_error(model, data), "arch": table.arch_of(model),
            "macs": macs, "macs_nonzero": macs_nz,
            "images_per_s": throughput(model, x_bench, repeats)}


def fixed_point_symbols(small) -> list[torch.Tensor]:
    """The integers kwh stores: weight * 2**frac_bits per layer (float32 layers: none)."""
    out = []
    for m in weighted_layers(small):
        t = getattr(m, "kwh_frac_bits", None)
        out.append(torch.round(m.weight.detach() * 2.0 ** t).to(torch.int64) if t is not None else None)
    return out


def huffman_file(path, model, symbols: list[torch.Tensor], codebooks=None, frac=None) -> dict:
    """Relative-index CSR + Huffman file of the integer weights (Deep Compression's coding)."""
    layers = []
    for i, (m, s) in enumerate(zip(weighted_layers(model), symbols)):
        d = {"name": f"layer{i}", "shape": list(m.weight.shape), "symbols": s.numpy(),
             "index_bits": 8 if isinstance(m, torch.nn.Conv2d) else 5}
        if codebooks is not None:
            d["codebook"] = codebooks[i]
        if frac is not None:
            d["frac_bits"] = frac[i]
        if m.bias is not None:
            d["bias"] = m.bias.detach().numpy()
        layers.append(d)
    return sparse_file.write(path, layers)


def hist_of(alphas: list[dict]) -> list[dict]:
    out = []
    for d in alphas:
        v = np.asarray(d["log_alpha"])
        counts, edges = np.histogram(v, bins=60)
        out.append({"layer": d["layer"], "threshold": d["threshold"], "counts": counts.tolist(),
                    "edges": edges.tolist(), "kept": int((v < d["threshold"]).sum()), "n": int(v.size)})
    return out


def _val_error(model, tdata) -> float:
    from kwh.compress import evaluate
    from kwh.data import batch_loader
    d = tdata.validation if tdata.validation is not None else tdata.train
    return evaluate(model, batch_loader(d, 1000))["error"]


def run_seed(a, seed: int, tdata, data, files: Path, runs: Path, log) -> tuple[list[dict], dict, dict]:
    """Train (resumably, through kwh.train) and measure every selected method of one seed."""
    cfg = a.cfg
    opts = dict(lr=a.lr, device=a.device, threads=a.threads)
    methods = a.methods
    clock = Clock()
    torch.manual_seed(seed)
    dense = fit(a.net, tdata, runs / "dense", model=make_net(a.net, a.width),
                pretrain_epochs=cfg["pretrain_epochs"], seed=seed, **opts).model.eval().cpu()
    pre_s = clock()
    w_orig = sum(m.weight.numel() for m in weighted_layers(dense))
    nb = a.bench_batch
    x_bench = data.x_test[:nb]
    if len(x_bench) < nb:  # the full timing batch always: repeat test images when there are fewer
        x_bench = x_bench.repeat(nb // len(x_bench) + 1, 1, 1, 1)[:nb]
    reps = cfg["repeats"]
    base = {"seed": seed}
    rows = []
    nl = len(weighted_layers(dense))
    if "dense" in methods:
        nbytes = _save_plain(dense, files / f"seed{seed}_dense.kwh", data)
        r = {**base, "method": "dense (pretrained start)", "bits": "-".join(["32"] * nl),
             **measure(dense, data, w_orig, x_bench, reps),
             **table.rates(dense, w_orig, [32] * nl, True, _payload(dense, data)),
             "max_compression_huffman": None, "file_bytes": nbytes, "wall_s": pre_s,
             "epochs": f"{cfg['pretrain_epochs']} pretrain", "val_error_pct": 100 * _val_error(dense, tdata)}
        rows.append(r)
        log(f"seed {seed}: dense error {r['error_pct']:.2f}% after {cfg['pretrain_epochs']} epochs")

    histories, alphas = {}, {}
    for prior, label in PRIORS.items():
        if prior not in methods:
            continue
        clock = Clock()
        model, hist = train_bayes(a.net, dense, prior, tdata, cfg["epochs"], runs / prior, seed,
                                  shrink_patience=a.shrink_patience,
                                  variance_lr_mult=a.variance_lr_mult,
                                  kl_compute_power=a.kl_compute_power, **opts,
                                  **({} if a.kl_warmup_end is None
                                     else {"kl_warmup_end": a.kl_warmup_end}))
        train_s = sum(h["seconds"] or 0 for h in hist)
        small, nbytes = compress_and_save(model, tdata, files / f"seed{seed}_{prior}.kwh", a.bits_search)
        rows.append(_kwh_row(base, label, small, nbytes, prior, seed, files, data, tdata,
                             w_orig, x_bench, reps, train_s + clock(),
                             f"{cfg['pretrain_epochs']} pretrain + {cfg['epochs']} bayes"))
        log(f"seed {seed}: {label}: error {rows[-1]['error_pct']:.2f}% arch {rows[-1]['arch']} "
            f"bits {rows[-1]['bits']} max compression {rows[-1]['max_compression']:.1f}x "
            f"file {nbytes} B")
        if a.finetune_epochs:
            clock = Clock()
            distilled = "distilled" if a.finetune_distill else ""
            tuned = finetune(small, tdata, a.finetune_epochs,
                             runs / f"{prior}-finetune{'-distill' if distilled else ''}",
                             lr=a.finetune_lr, seed=seed, threads=a.threads, device=a.device,
                             eval_data=batch_loader(tdata.test, 1000),
                             teacher=dense if a.finetune_distill else None)
            stem = f"{prior}_finetuned{'_' + distilled if distilled else ''}"
            tbytes = kwh.save(tuned, files / f"seed{seed}_{stem}.kwh",
                              input_shape=tdata.input_shape)
            flabel = f"{label} + fine-tune{f' ({distilled})' if distilled else ''}"
            rows.append(_kwh_row(base, flabel, tuned, tbytes, stem, seed,
                                 files, data, tdata, w_orig, x_bench, reps, clock(),
                                 f"{cfg['pretrain_epochs']} pretrain + {cfg['epochs']} bayes + "
                                 f"{a.finetune_epochs} fine-tune (lr {a.finetune_lr:g}"
                                 f"{', distilled from the dense start' if distilled else ''})"))
            log(f"seed {seed}: {flabel}: error {rows[-1]['error_pct']:.2f}% max compression "
                f"{rows[-1]['max_compression']:.1f}x file {tbytes} B")
        histories[prior] = hist
        alphas[prior] = hist_of(log_alphas(model))

    if "deep-compression" in methods:
        clock = Clock()
        dc = deep_compression.prune_retrain(a.net, dense, tdata, a.dc_keep, cfg["dc_rounds"],
                                            cfg["epochs"], runs / "deep_compression", seed, **opts)
        dc_pruned_err = 100 * test_error(dc, data)
        shared = deep_compression.share_weights(dc, 8, 5, seed)
        dcf = deep_compression.write_file(files / f"seed{seed}_deep_compression.sphf", shared)
        bits = [d["bits"] for d in shared]
        r = {**base, "method": "Deep Compression (prune+k-means+Huffman)", **measure(dc, data, w_orig, x_bench, reps),
             "bits": "-".join(map(str, bits)), **table.rates(dc, w_orig, bits, False, dcf["payload_bytes"] + dcf["bias_bytes"]),
             "max_compression_huffman": 32 * w_orig / (8 * dcf["payload_bytes"]),
             "file_bytes": dcf["file_bytes"], "wall_s": clock(),
             "epochs": f"{cfg['pretrain_epochs']} pretrain + {cfg['epochs']} retrain ({cfg['dc_rounds']} rounds)",
             "error_before_sharing_pct": dc_pruned_err, "val_error_pct": 100 * _val_error(dc, tdata)}
        rows.append(r)
        log(f"seed {seed}: Deep Compression: error {r['error_pct']:.2f}% (pruned, before sharing "
            f"{dc_pruned_err:.2f}%) max compression {r['max_compression_huffman']:.1f}x (Huffman)")

    if "soft-weight-sharing" in methods:
        clock = Clock()
        res = fit(a.net, tdata, runs / "soft_weight_sharing", model=dense, method="sws",
                  epochs=cfg["epochs"], seed=seed, sws_options=a.sws_options, **opts)
        sws = res.model.eval().cpu()
        trained_err = 100 * test_error(sws, data)
        q = quantize_(sws, res.prior.cpu())
        epochs = f"{cfg['pretrain_epochs']} pretrain + {cfg['epochs']} sws"

        def sws_row(model, q, label: str, stem: str, epochs: str, extra: dict) -> dict:
            swf = deep_compression.write_file(files / f"seed{seed}_{stem}.sphf",
                                              sws_layers(model, q))
            bits = [q.index_bits] * len(weighted_layers(model))
            r = {**base, "method": label, **measure(model, data, w_orig, x_bench, reps),
                 "bits": "-".join(map(str, bits)),
                 **table.rates(model, w_orig, bits, False, swf["payload_bytes"] + swf["bias_bytes"]),
                 "max_compression_huffman": 32 * w_orig / (8 * swf["payload_bytes"]),
                 "file_bytes": swf["file_bytes"], "wall_s": clock(), "epochs": epochs,
                 "error_before_quantization_pct": trained_err, "codebook": q.codebook.tolist(),
                 "components_merged": q.merged, "val_error_pct": 100 * _val_error(model, tdata),
                 **extra}
            rows.append(r)
            log(f"seed {seed}: {label}: error {r['error_pct']:.2f}% (before quantizing "
                f"{trained_err:.2f}%), {len(q.codebook) - 1} nonzero values, nonzero "
                f"{r['nonzero_pct']:.2f}%, max compression {r['max_compression_huffman']:.1f}x "
                f"(Huffman)")
            return r

        plain = sws_row(sws, q, SWS_LABEL, "soft_weight_sharing", epochs, {})
        if a.sws_finetune_epochs:
            tuned, q2 = finetune_codebook(sws, q, tdata, a.sws_finetune_epochs,
                                          runs / "soft_weight_sharing-codebook",
                                          lr=a.sws_finetune_lr, seed=seed, device=a.device,
                                          threads=a.threads)
            sws_row(tuned, q2, SWS_LABEL + " + codebook fine-tune",
                    "soft_weight_sharing_codebook",
                    f"{epochs} + {a.sws_finetune_epochs} codebook (lr {a.sws_finetune_lr:g})",
                    {"error_after_quantization_pct": plain["error_pct"]})

    if "torch-pruning" in methods:
        clock = Clock()
        kwh_val = [x["val_error_pct"] for x in rows if x["method"] in PRIORS.values()]
        target = (min(kwh_val) if kwh_val else 100 * _val_error(dense, tdata)) / 100
        tpm, ratio, tried = structured.search(a.net, dense, tdata, target, cfg["tp_epochs"],
                                              runs / "torch_pruning", seed, a.tp_ratios, **opts)
        nl = len(weighted_layers(tpm))
        r = {**base, "method": f"Torch-Pruning L1 structured (ratio {ratio})", **measure(tpm, data, w_orig, x_bench, reps),
             "bits": "-".join(["32"] * nl), **table.rates(tpm, w_orig, [32] * nl, True, _payload(tpm, data)),
             "max_compression_huffman": None, "file_bytes": _save_plain(tpm, files / f"seed{seed}_torch_pruning.kwh", data),
             "wall_s": clock(), "epochs": f"{cfg['pretrain_epochs']} pretrain + {max(1, math.ceil(cfg['tp_epochs']))} x {len(tried)} fine-tune",
             "tp_tried": tried, "tp_target_val_error_pct": 100 * target,
             "val_error_pct": 100 * _val_error(tpm, tdata)}
        rows.append(r)
        log(f"seed {seed}: Torch-Pruning ratio {ratio}: error {r['error_pct']:.2f}% (validation "
            f"target {100 * target:.2f}%) pruning {r['pruning']:.1f}x")
    return rows, histories, alphas


def _kwh_row(base: dict, label: str, small, nbytes: int, stem: str, seed: int, files: Path,
             data, tdata, w_orig: int, x_bench, reps: int, wall_s: float, epochs: str) -> dict:
    """One kwh row: the compressed model measured, its Huffman file written, its rates."""
    s = small.kwh_summary
    syms = fixed_point_symbols(small)
    frac = [getattr(m, "kwh_frac_bits", None) for m in weighted_layers(small)]
    hf = huffman_file(files / f"seed{seed}_{stem}.sphf", small, syms, frac=frac)
    rt = s["rates"]
    return {**base, "method": label, **measure(small, data, w_orig, x_bench, reps),
            "arch": s["architecture"], "bits": s["bits"], "nonzero_pct": 100 * s["density"],
            "pruning": rt["pruning"], "fast_prediction": rt["fast_prediction"],
            "max_compression": rt["max_compression"],
            "max_compression_huffman": 32 * w_orig / (8 * hf["payload_bytes"]),
            "file_bytes": nbytes, "huffman_file_bytes": hf["file_bytes"], "wall_s": wall_s,
            "epochs": epochs,
            "bayes_eval_error_pct": 100 * s["eval"]["error_before_quantization"],
            "val_error_pct": 100 * _val_error(small, tdata), "bits_guard": s.get("bits_guard")}


def sws_layers(model, q) -> list[dict]:
    """The layers of the soft weight-sharing file: symbols are the quantized codes (0: the zero
    component, pruned; k: codebook entry k), each layer with the merged means as its codebook;
    relative indices at 8 bits for conv, 5 for fc, as Deep Compression's file."""
    names = {id(w): n for n, w in mixture_weights(model)}
    out = []
    for i, m in enumerate(weighted_layers(model)):
        out.append({"name": f"layer{i}", "shape": list(m.weight.shape),
                    "symbols": q.codes[names[id(m.weight)]].numpy(),
                    "codebook": q.codebook[1:].numpy(),
                    "index_bits": 8 if isinstance(m, torch.nn.Conv2d) else 5,
                    "bias": None if m.bias is None else m.bias.detach().numpy()})
    return out


def _payload(model, data) -> int:
    from kwh.format.codec import payload_bytes
    return int(payload_bytes(model, input_shape=data.input_shape))


def _save_plain(model, path: Path, data) -> int:
    from kwh.format.codec import save
    return int(save(model, path, input_shape=data.input_shape))


def main(argv=None) -> int:
    a = parse_args(argv)
    a.argv = argv
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    stem = f"paper_table_{a.net}_{a.data}"
    files = out / f"{stem}_files"
    files.mkdir(parents=True, exist_ok=True)
    log_path = out / f"{stem}.log"
    with open(log_path, "w") as logf:
        return _run(a, out, stem, files, logf)


def _run(a, out: Path, stem: str, files: Path, logf) -> int:
    cfg = a.cfg

    def log(msg: str) -> None:
        print(msg, flush=True)
        logf.write(msg + "\n")
        logf.flush()

    total = Clock()
    info = machine_info()  # the commit the run starts from
    tdata, data = load_data(a.data, a.data_dir, cfg["limit_train"], cfg["limit_test"])
    if data.input_shape != INPUT_SHAPES[a.data]:
        raise ValueError(f"{a.data} images have shape {data.input_shape}, expected {INPUT_SHAPES[a.data]}")
    nval = 0 if tdata.validation is None else len(tdata.validation)
    log(f"{a.net} on {a.data}: {len(data.y_train)} train / {nval} validation / "
        f"{len(data.y_test)} test, budget {a.budget} {cfg}, methods {', '.join(a.methods)}")
    rows, histories, alphas = [], {}, {}
    for seed in a.seeds:
        r, h, al = run_seed(a, seed, tdata, data, files, out / f"{stem}_runs" / f"seed{seed}", log)
        rows += r
        histories[seed], alphas[seed] = h, al
    if not set(TABLE_METHODS) <= set(a.methods):
        _write_selected(a, out, stem, rows, histories, alphas, info, data, total)
        log("trained and measured the selected methods (written to "
            f"{stem}_selected.md/.json); the full tables are written by a run of all methods "
            f"({', '.join(TABLE_METHODS)} at least; finished runs are reused)")
        return 0
    first = a.seeds[0]
    layer_names = [d["layer"] for d in alphas[first]["log-uniform"]]
    plots.error_vs_compression(rows, a.net, out / f"{stem}_error_vs_compression.png")
    plots.alive_units(histories[first], layer_names, out / f"{stem}_alive_units.png")
    plots.log_alpha_histograms(alphas[first], out / f"{stem}_log_alpha.png")
    command = "python -m benchmarks.paper_table " + " ".join(sys.argv[1:] if a.argv is None else a.argv)
    spread = table.spread(rows)
    md = [f"# Bayesian Compression table: {a.net} on {a.data}", "",
          f"Command: `{command}`", "",
          f"Budget `{a.budget}`: {cfg}; {len(data.y_train)} train / {len(data.y_test)} test examples; "
          f"total wall clock {total():.0f} s.", "",
          f"Machine: {info}", "", "## This run", "", table.markdown(rows), ""]
    if spread:
        md += ["## Spread over seeds (mean ± sd)", "",
               table.markdown(spread, ["method", "seeds"] + table.SPREAD,
                              ["method", "seeds"] + table.SPREAD), ""]
    md += ["## Published (Louizos, Ullrich, Welling 2017, Table 1)", "", table.paper_markdown(a.net), "",
           "Rates: pruning = |W| / pruned dense weights (structured) or 1 / (2 density) (unstructured CSR);",
           "fast pred. = 32 |W| / bits of the stored weights; max compr. (file payload) = 32 |W| / bits",
           "of the entropy-coded tensor sections of the method's real file (weights, indices, biases:",
           "13-bit grids in .kwh files since kwh.compress.floats, float32 before and in the baselines' files; the .kwh codec's payload_bytes as kwh_summary counts it; for Deep Compression its",
           "Huffman file's codebooks, tables, streams and biases);",
           "max compr. (Huffman CSR) = the same over the Huffman-coded relative-index CSR streams with",
           "codebooks and code tables of a real file (8-bit gaps conv, 5-bit fc), weights only.",
           "File bytes: the whole real file (.kwh for kwh, dense and Torch-Pruning rows; the",
           "relative-index Huffman file for Deep Compression), headers and biases included.",
           "Deep Compression: 8-bit k-means codebooks for conv, 5-bit for fc, centroids not fine-tuned.",
           *([f"kwh rows '+ fine-tune': the row above it fine-tuned {a.finetune_epochs} epochs at lr "
              f"{a.finetune_lr:g} (Adam, decayed linearly to 0) on the training split, the weights on "
              "their fixed-point grids, pruned weights held at zero: the same architecture, bits and "
              "sparsity (kwh.app.finetune)" + (", the loss distilled from the table's dense start "
              "(weight 0.9 at T = 4, kwh.train.distill)" if a.finetune_distill else "") + "."]
             if a.finetune_epochs else []),
           "Soft weight-sharing: kwh.train method 'sws' from the same dense start for the Bayesian",
           f"rows' epochs (sws_options {a.sws_options or 'defaults'}: 17 components, pi_0 0.999, tau 5e-3",
           "unless set), then kwh.sws.quantize_ (components merged below KL 0.01, each weight to its",
           "most responsible component's mean); the Deep Compression file with the merged means as",
           "codebook and the component indices as symbols; bits = the index width of that codebook.",
           *([f"Soft weight-sharing '+ codebook fine-tune': the quantized model's codebook values and "
              f"biases trained {a.sws_finetune_epochs} epochs at lr {a.sws_finetune_lr:g} (Adam, decayed "
              "linearly to 0), every weight held to its code, zeros at zero: the same codes and "
              "sparsity (kwh.app.finetune.finetune_codebook, Deep Compression's centroid "
              "fine-tuning)."] if a.sws_finetune_epochs else []),
           "Published (Ullrich, Meeds, Welling 2017): LeNet-300-100 64x at 1.94%, LeNet-5-Caffe",
           "162x at 0.97% error.",
           f"Throughput: batch {a.bench_batch}, median of {cfg['repeats']} repeats, torch threads as in Machine.", ""]
    (out / f"{stem}.md").write_text("\n".join(md))
    (out / f"{stem}.csv").write_text(table.csv_text(rows))
    (out / f"{stem}.json").write_text(json.dumps(
        {"command": command, "budget": a.budget, "config": cfg, "machine": info, "rows": rows,
         "spread": spread, "histories": {str(k): v for k, v in histories.items()},
         "log_alpha_histograms": {str(k): v for k, v in alphas.items()}}, indent=1))
    log(f"wrote {out / stem}.md/.csv/.json and plots in {total():.0f} s")
    return 0


def _write_selected(a, out: Path, stem: str, rows: list[dict], histories: dict, alphas: dict,
                    info: dict, data, total) -> None:
    """The rows of a run of some methods only, beside the published table, and the alive
    units of its Bayesian rows."""
    first = a.seeds[0]
    if histories.get(first):
        names = [d["layer"] for d in next(iter(alphas[first].values()))]
        plots.alive_units(histories[first], names, out / f"{stem}_selected_alive_units.png")
    command = "python -m benchmarks.paper_table " + " ".join(sys.argv[1:] if a.argv is None else a.argv)
    md = [f"# Bayesian Compression table, selected methods: {a.net} on {a.data}", "",
          f"Command: `{command}`", "",
          f"Budget `{a.budget}`: {a.cfg}; {len(data.y_train)} train / {len(data.y_test)} test "
          f"examples; methods {', '.join(a.methods)}.", "", f"Machine: {info}", "",
          table.markdown(rows), "", "## Published (Louizos, Ullrich, Welling 2017, Table 1)", "",
          table.paper_markdown(a.net), "",
          "Rates and columns as in the full table (paper_table_README.md).", ""]
    (out / f"{stem}_selected.md").write_text("\n".join(md))
    (out / f"{stem}_selected.json").write_text(json.dumps(
        {"command": command, "budget": a.budget, "config": a.cfg, "machine": info, "rows": rows,
         "histories": {str(k): v for k, v in histories.items()}}, indent=1))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, FileNotFoundError) as e:
        print(f"paper_table: error: {e}", file=sys.stderr)
        sys.exit(2)
