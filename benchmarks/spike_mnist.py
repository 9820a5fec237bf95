"""Sigma-delta LeNet-5 on moving MNIST: dense MACs vs sigma-delta additions per frame.

Trains LeNet-5-Caffe on MNIST through kwh.train (or loads a checkpoint), builds moving-digit
sequences with kwh.data.sequences (test split for evaluation, train split for scale training
and selection), learns one scale per layer for each lambda (O'Connor and Welling 2016,
section 5), and runs dense, rounding, sigma-delta and send-on-threshold networks on the same
frames. The training runs (resumable, reused when finished) go under <out>_runs/.

    python benchmarks/spike_mnist.py                # writes benchmarks/results/spike_mnist.*

Savings are counted operations (additions vs multiply-accumulates), not wall-clock: the
simulation runs dense tensor ops on CPU and is slower than the dense network.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.utils.data import TensorDataset

from benchmarks.machine import machine_info
from kwh.data import batch_loader, load_mnist, normalization, sequence_dataset
from kwh.models import lenet5
from kwh.spike import (DenseFrameNet, RoundingNet, SigmaDeltaNet, ThresholdNet, build_plan,
                       summarize, sweep_lambda, train_scales)
from kwh.train import TrainData, TrainResult

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT) not in sys.path:  # run as `python benchmarks/spike_mnist.py`
    sys.path.insert(0, str(ROOT))

from benchmarks.baselines.common import fit  # noqa: E402


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=os.environ.get("KWH_DATA"))
    p.add_argument("--checkpoint", default=str(ROOT / "out" / "spike_lenet5.safetensors"),
                   help="LeNet-5 weights; trained and written here when missing")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--limit-train", type=int, default=0,
                   help="smoke tests: train the LeNet-5 on the first N MNIST images (0: all)")
    p.add_argument("--train-shift", type=float, default=4.0,
                   help="random translation (px) while training, as the sequences move")
    p.add_argument("--frames", type=int, default=20)
    p.add_argument("--sequences", type=int, default=500, help="test sequences")
    p.add_argument("--train-sequences", type=int, default=128, help="for scale training")
    p.add_argument("--fit-frames", type=int, default=10, help="frames of those sequences")
    p.add_argument("--val-sequences", type=int, default=300, help="for choosing lambda")
    p.add_argument("--compressed", default=None, metavar="FILE",
                   help="a kwh-compressed LeNet-5 (.kwh) to run as a sigma-delta net too")
    p.add_argument("--compress-prior", default="log-uniform",
                   help="prior for that compression run (log-uniform prunes single weights "
                        "within a short CPU budget)")
    p.add_argument("--compress-epochs", type=int, default=4,
                   help="when no --compressed file: compress the LeNet-5 with kwh first "
                        "(this many epochs; 0 to skip)")
    p.add_argument("--compress-limit", type=int, default=10000,
                   help="training examples for that compression run")
    p.add_argument("--lambdas", default="0,0.01,0.03,0.1,0.3,1,3")
    p.add_argument("--thresholds", default="0,0.1,0.2,0.4,0.8,1.6")
    p.add_argument("--init-scale", type=float, default=4.0)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--max-loss-pp", type=float, default=0.5, help="accuracy budget (pp)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(RESULTS / "spike_mnist"))
    return p.parse_args()


def shift(x: torch.Tensor, max_shift: float, gen: torch.Generator) -> torch.Tensor:
    """Random sub-pixel translation within +-max_shift px (background kept), like the sequences."""
    mean, std = normalization("mnist")
    theta = torch.zeros(len(x), 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, :, 2] = (torch.rand(len(x), 2, generator=gen) * 2 - 1) * 2 * max_shift / x.shape[-1]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    moved = F.grid_sample(x * std + mean, grid, align_corners=False)  # (B, 1, 28, 28) in [0, 1]
    return (moved - mean) / std


def shifted_mnist(data_dir: str | None, limit: int | None, max_shift: float,
                  seed: int) -> TensorDataset:
    """MNIST training images (the first ``limit``; None: all), each moved once by shift()."""
    x, y = load_mnist("train", data_dir, limit=limit).tensors  # (N, 1, 28, 28), (N,)
    if max_shift > 0:
        gen = torch.Generator().manual_seed(seed)
        x = torch.cat([shift(x[i:i + 10000], max_shift, gen) for i in range(0, len(x), 10000)])
    return TensorDataset(x, y)


def runs_dir(args) -> Path:
    """Where the training runs of this benchmark go: next to its results."""
    out = Path(args.out)
    return out.with_name(out.name + "_runs")


def print_run(res: TrainResult, what: str) -> None:
    """One line per epoch of a kwh.train run (and any rollback), from its log."""
    for r in res.log:
        if r.get("event") != "epoch":
            print(f"{what}: {r}", flush=True)
            continue
        line = (f"{what} epoch {r['epoch']}: train loss {r['train_loss']:.4f}, static test "
                f"error {r['test_error']:.2f} %")
        if r["phase"] == "bayes":
            line += f", kl_weight {r['kl_weight']:.2f}, alive {list(r['alive'].values())}"
        print(line + f", {r['seconds']:.0f} s", flush=True)


def train_lenet5(args) -> torch.nn.Sequential:
    """LeNet-5-Caffe trained by kwh.train: Adam (lr 1e-3, constant, batch 128) on normalised
    MNIST, each image shifted once at random by up to --train-shift px."""
    limit = args.limit_train or None
    data = TrainData(shifted_mnist(args.data_dir, limit, args.train_shift, args.seed), None,
                     load_mnist("test", args.data_dir), "mnist")
    name = f"lenet5_e{args.epochs}_shift{args.train_shift:g}" + (f"_n{limit}" if limit else "")
    res = fit("lenet5", data, runs_dir(args) / name, pretrain_epochs=args.epochs,
              batch_size=128, lr_decay="constant", limit_train=limit, seed=args.seed,
              threads=args.threads)
    print_run(res, "dense")
    return res.model.eval().cpu()


def load_or_train(args) -> torch.nn.Sequential:
    path = Path(args.checkpoint)
    if path.exists():
        model = lenet5()
        model.load_state_dict(load_file(str(path)))
        print(f"loaded {path}")
        return model.eval()
    model = train_lenet5(args)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    os.replace(tmp, path)
    return model


def static_accuracy(model, data_dir) -> float:
    test = load_mnist("test", data_dir)
    with torch.no_grad():
        pred = torch.cat([model(x).argmax(1) for x, _ in batch_loader(test, 1000)])
    return float((pred == test.tensors[1]).double().mean())


def sequences(split: str, n: int, frames: int, seed: int, data_dir) -> tuple[torch.Tensor, torch.Tensor]:
    """Moving-digit sequences, time-major (T, S, 1, 28, 28), labels (S,)."""
    ds = sequence_dataset("mnist", split, "moving", root=data_dir, n_sequences=n,
                          n_frames=frames, seed=seed)
    x, y = ds.tensors
    return x.transpose(0, 1).contiguous(), y


def _best(points, base_val: float, budget_pp: float):
    """(setting, val row) with the most steady-state saving within the accuracy budget."""
    ok = [(k, r) for k, r in points if 100 * (base_val - r.accuracy) <= budget_pp]
    return max(ok, key=lambda p: p[1].steady_saving, default=(None, None))


def choose_on_validation(args, plan, x_fit, x_val, y_val):
    """Scales per lambda (trained on x_fit); the lambda and the send-on-threshold threshold
    with the most steady-state saving on validation sequences within the accuracy budget."""
    lambdas = [float(v) for v in args.lambdas.split(",")]
    thresholds = [float(v) for v in args.thresholds.split(",")]
    dense = DenseFrameNet(plan).run(x_val, 250)
    base_val = dense.accuracy(y_val)
    sweep = sweep_lambda(plan, x_fit, x_val, y_val, lambdas, init=args.init_scale,
                         steps=args.steps, lr=0.05, batch_size=16, seed=args.seed)
    for p in sweep:
        print(f"lambda {p.lam:g}: scales {[round(s, 2) for s in p.scales]}, val acc "
              f"{p.row.accuracy:.4f} (dense {base_val:.4f}), steady x{p.row.steady_saving:.1f}",
              flush=True)
    lam, _ = _best([(p.lam, p.row) for p in sweep], base_val, args.max_loss_pp)
    chosen = next((p for p in sweep if p.lam == lam), None)
    th_rows = [(th, summarize("send-on-threshold", ThresholdNet(plan, th).run(x_val, 250),
                              dense, y_val)) for th in thresholds]
    th, _ = _best(th_rows, base_val, args.max_loss_pp)
    print(f"chosen on validation: lambda {lam}, threshold {th}", flush=True)
    return sweep, chosen, th, base_val


def test_rows(args, plan, sweep, chosen, x_test, y_test):
    """Rows on the test sequences: dense, sigma-delta per lambda, rounding at the chosen
    lambda, send-on-threshold per threshold and at half a quantization step (0.5 / k_l);
    plus the identity check and the per-layer split at the chosen lambda."""
    dense = DenseFrameNet(plan).run(x_test, 250)
    rows = [("dense", "", summarize("dense", dense, dense, y_test), None)]
    extra: dict = {"identity": None, "layers": []}
    for p in sweep:
        run = SigmaDeltaNet(plan, p.scales).run(x_test, 250)
        rows.append(("sigma-delta", p.lam, summarize("sigma-delta", run, dense, y_test), p.scales))
        if p is chosen:
            rnd = RoundingNet(plan, p.scales).run(x_test, 250)
            rows.append(("rounding", p.lam, summarize("rounding", rnd, dense, y_test), p.scales))
            extra["identity"] = float((rnd.outputs - run.outputs).abs().max())
            held = (x_test[1:] == x_test[:-1]).flatten(2).all(-1)  # (T-1, S) exact copies
            steady = run.ops.sum(0)[1:]                              # (T-1, S)
            extra["held"] = float(held.double().mean())
            extra["moving"] = float(steady[~held].mean())
            extra["layers"] = list(zip(run.layer_names, run.dense_macs.tolist(),
                                       run.ops[:, 0].mean(1).tolist(),
                                       run.ops[:, 1:].mean((1, 2)).tolist()))
    settings: list = [float(v) for v in args.thresholds.split(",")]
    if chosen is not None:
        settings.append([0.5 / k for k in chosen.scales])
    for th in settings:
        run = ThresholdNet(plan, th).run(x_test, 250)
        label = th if isinstance(th, float) else "0.5/k_l"
        rows.append(("send-on-threshold", label,
                     summarize("send-on-threshold", run, dense, y_test), None))
    return rows, extra


def compress_lenet5(model, args) -> Path:
    """kwh-compress ``model``: a kwh.train run with --compress-prior from it as the dense start
    (free energy on the first --compress-limit MNIST examples, each shifted once; Adam lr 1e-3
    constant, batch 100, KL weight 0 -> 1 over the first half), then kwh.compress."""
    import kwh
    path = Path(args.checkpoint).with_name(f"spike_lenet5_{args.compress_prior}.kwh")
    if path.exists():
        return path
    data = TrainData(shifted_mnist(args.data_dir, args.compress_limit, args.train_shift,
                                   args.seed), None, load_mnist("test", args.data_dir), "mnist")
    name = (f"compress_{args.compress_prior}_e{args.compress_epochs}_n{args.compress_limit}"
            f"_shift{args.train_shift:g}")
    res = fit("lenet5", data, runs_dir(args) / name, model=model, prior=args.compress_prior,
              epochs=args.compress_epochs, kl_warmup_start=0.0, kl_warmup_end=0.5,
              lr_decay="constant", limit_train=args.compress_limit, seed=args.seed,
              threads=args.threads)
    print_run(res, "compress")
    small = kwh.compress(res.model.eval().cpu(), input_shape=(1, 28, 28))
    kwh.save(small, path, input_shape=(1, 28, 28))
    return path


def composed(args, lam, x_fit, x_test, y_test):
    """A kwh-compressed LeNet-5 (--compressed FILE, or compressed here) as a sigma-delta net."""
    if not args.compressed:
        return None
    import kwh
    small = kwh.load(args.compressed).eval()
    plan = build_plan(small)
    scales = train_scales(plan, x_fit, lam, init=args.init_scale, steps=args.steps, lr=0.05,
                          batch_size=16, seed=args.seed)
    dense = DenseFrameNet(plan).run(x_test, 250)
    sd = SigmaDeltaNet(plan, scales).run(x_test, 250)
    return [("compressed dense", "", summarize("dense", dense, dense, y_test), dense),
            ("compressed sigma-delta", lam, summarize("sigma-delta", sd, dense, y_test), sd),
            scales]


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    t_start = time.time()
    model = load_or_train(args)
    acc_static = static_accuracy(model, args.data_dir)
    print(f"static MNIST test accuracy {acc_static:.4f}", flush=True)
    if not args.compressed and args.compress_epochs > 0:
        args.compressed = str(compress_lenet5(model, args))
    plan = build_plan(model)
    x_test, y_test = sequences("test", args.sequences, args.frames, args.seed, args.data_dir)
    x_val, y_val = sequences("train", args.val_sequences, args.frames, args.seed + 1,
                             args.data_dir)
    x_fit, _ = sequences("train", args.train_sequences, args.fit_frames, args.seed + 2,
                         args.data_dir)
    t0 = time.time()
    sweep, chosen, threshold, base_val = choose_on_validation(args, plan, x_fit, x_val, y_val)
    t_sweep = time.time() - t0
    rows, extra = test_rows(args, plan, sweep, chosen, x_test, y_test)
    extra["threshold"] = threshold
    comp = composed(args, chosen.lam if chosen else 0.3, x_fit, x_test, y_test)
    write(args, rows, chosen, acc_static, base_val, extra, comp,
          time.time() - t_start, t_sweep)


def write(args, rows, chosen, acc_static, base_val, extra, comp, seconds, t_sweep) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fields = ["network", "setting", "op_kind", "accuracy", "agreement", "first_frame",
              "steady_state", "mean_per_frame", "steady_state_nonzero", "dense_macs",
              "steady_saving", "mean_saving", "scales"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for net, setting, row, scales in rows:
        d = row.as_dict()
        w.writerow({"network": net, "setting": setting,
                    **{k: d[k] for k in fields[2:-1]},
                    "scales": "" if scales is None else " ".join(f"{s:.4g}" for s in scales)})
    _atomic(out.with_suffix(".csv"), buf.getvalue())
    _plot(out.with_suffix(".png"), rows, comp)
    _atomic(out.with_suffix(".md"), _markdown(args, rows, chosen, acc_static, base_val,
                                              extra, comp, seconds, t_sweep))
    print(out.with_suffix(".md").read_text())


def _arch(path: str) -> str:
    """Architecture and bits from the file's summary."""
    import kwh
    summary = getattr(kwh.load(path), "kwh_summary", {}) or {}
    return (f"architecture {summary.get('architecture', '?')} of "
            f"{summary.get('architecture_original', '?')}, bits {summary.get('bits', '?')}, "
            f"{summary.get('nonzero', '?')} nonzero weights of {summary.get('weights_original', '?')}")


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _plot(path: Path, rows, comp) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    dense = rows[0][2]
    for net, marker in (("sigma-delta", "o-"), ("send-on-threshold", "s--")):
        pts = sorted((r.steady_state, 100 * r.accuracy) for n, _, r, _ in rows if n == net)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker, label=f"{net} (steady state)")
    if comp is not None:
        (_, _, cd, cd_run), (_, _, cs, cs_run), _ = comp
        ax.plot([cd_run.steady_state(True)], [100 * cd.accuracy], "kD", ms=5,
                label="kwh-compressed, dense (nonzero MACs)")
        ax.plot([cs_run.steady_state(True)], [100 * cs.accuracy], "g*", ms=10,
                label="kwh-compressed, sigma-delta")
    ax.axhline(100 * dense.accuracy, color="k", lw=0.8, label="dense, frame by frame")
    ax.axhline(100 * dense.accuracy - 0.5, color="k", lw=0.8, ls=":", label="dense - 0.5 pp")
    ax.axvline(dense.dense_macs / 20, color="r", lw=0.8, ls=":", label="dense MACs / 20")
    ax.set_xscale("log")
    ax.set_xlabel("operations per frame (additions for sigma-delta, MACs otherwise)")
    ax.set_ylabel("accuracy on moving-MNIST frames (%)")
    lo = min(100 * r.accuracy for _, _, r, _ in rows)
    ax.set_ylim(max(lo - 1, 0), 100)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("LeNet-5 on moving MNIST: accuracy vs ops per frame")
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)


def _markdown(args, rows, chosen, acc_static, base_val, extra, comp, seconds,
              t_sweep) -> str:
    m = machine_info()
    dense = rows[0][2]
    cmd = "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:])
    lines = [
        "# Sigma-delta LeNet-5 on moving MNIST",
        "",
        f"Command: `{cmd}` (KWH_DATA={args.data_dir})",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, Python {m['python']}, "
        f"commit {m['commit']}, {args.threads} thread(s); total {seconds:.0f} s "
        f"(lambda sweep {t_sweep:.0f} s).",
        "",
        f"LeNet-5-Caffe, {args.epochs} epoch(s) Adam on MNIST: static test accuracy "
        f"{100 * acc_static:.2f} %. Test sequences: {args.sequences} moving digits from the MNIST "
        f"test split x {args.frames} frames (`kwh.data.sequence_dataset('mnist', 'test', "
        f"'moving', seed={args.seed})`: sub-pixel drift 0.5 px/frame, 30 % of segments held "
        f"still). Scales were trained on {args.train_sequences} train-split sequences of "
        f"{args.fit_frames} frames ({args.steps} Adam steps of 16 sequences, lr 0.05, init "
        f"k = {args.init_scale:g}); lambda was chosen on "
        f"{args.val_sequences} other train-split sequences as the largest steady-state saving "
        f"with accuracy within {args.max_loss_pp} pp of dense there (dense val accuracy "
        f"{100 * base_val:.2f} %); the send-on-threshold threshold likewise. The dense net "
        f"was trained with random shifts of up to {args.train_shift:g} px (one per image, drawn "
        "once), as the digits move.",
        "",
        "Ops are per frame and per sequence. Dense: exact MACs of one frame-by-frame "
        f"evaluation ({dense.dense_macs:,.0f}; no padding in LeNet-5, so exact = naive). "
        "Sigma-delta and rounding: additions, sum over layers of |spikes| x fan-out. "
        "Send-on-threshold: MACs (real-valued deltas), sent values x fan-out. "
        "Bias, ReLU and pooling are counted on no side. **These are operation counts, not "
        "time**: on a CPU the simulation runs dense tensor ops and is slower than the dense "
        "net; the savings need event-driven hardware or sparse kernels to show up in time.",
        "",
        "Saving = dense MACs per frame / ops per frame. Accuracy: frames whose arg-max is the "
        "sequence's label; agreement: frames whose arg-max equals the dense net's.",
        "",
        "| network | setting | accuracy % | agreement % | first frame | steady state | "
        "mean/frame | steady saving | mean saving |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for net, setting, r, _ in rows:
        picked = (net == "sigma-delta" and chosen is not None and setting == chosen.lam) or \
            (net == "send-on-threshold" and setting == extra["threshold"])
        tag = " **(chosen)**" if picked else ""
        label = {"sigma-delta": "lambda", "rounding": "lambda",
                 "send-on-threshold": "threshold"}.get(net, "")
        lines.append(
            f"| {net}{tag} | {label} {setting} | {100 * r.accuracy:.2f} | "
            f"{100 * r.agreement:.2f} | {r.first_frame:,.0f} | {r.steady_state:,.0f} | "
            f"{r.mean_per_frame:,.0f} | {r.steady_saving:.1f}x | {r.mean_saving:.1f}x |")
    lines.append("")
    if chosen is not None:
        sd = next(r for n, s, r, _ in rows if n == "sigma-delta" and s == chosen.lam)
        loss = 100 * (dense.accuracy - sd.accuracy)
        verdict = "met" if sd.steady_saving >= 20 and loss <= 0.5 else "not met"
        lines += [
            f"Chosen lambda = {chosen.lam:g}, scales k = "
            f"{', '.join(f'{s:.3g}' for s in chosen.scales)} (conv1, conv2, fc1, fc2). On the "
            f"test sequences: {sd.steady_saving:.1f}x fewer ops per frame in steady state "
            f"({sd.mean_saving:.1f}x averaged with the first frame), accuracy "
            f"{100 * sd.accuracy:.2f} % vs {100 * dense.accuracy:.2f} % dense "
            f"({loss:.2f} pp loss; negative = gain), agreement {100 * sd.agreement:.2f} %. Target "
            f"(>= 20x fewer ops per frame at <= 0.5 pp loss): **{verdict}**.",
            "",
            f"Rounding-network identity: max |sigma-delta - rounding| output difference over "
            f"all test frames = {extra['identity']:.2e} (float64).",
            "",
            "Per layer at the chosen lambda (additions per frame and sequence):",
            "",
            "| layer | dense MACs | sigma-delta first frame | sigma-delta steady state | "
            "steady saving |",
            "|---|---|---|---|---|",
        ]
        lines += [f"| {name} | {d:,.0f} | {f:,.0f} | {st:,.0f} | {d / max(st, 1e-12):.1f}x |"
                  for name, d, f, st in extra["layers"]]
    else:
        lines.append("No lambda kept accuracy within the budget on the validation sequences.")
    th = next((r for n, st, r, _ in rows if n == "send-on-threshold"
               and st == extra["threshold"]), None)
    if th is not None:
        lines += ["", f"Send-on-threshold, threshold {extra['threshold']:g} chosen on the "
                  f"validation sequences by the same rule: {th.steady_saving:.1f}x fewer ops "
                  f"(MACs) per frame in steady state, accuracy {100 * th.accuracy:.2f} % "
                  f"({100 * (dense.accuracy - th.accuracy):.2f} pp loss), agreement "
                  f"{100 * th.agreement:.2f} %."]
    lines += ["", "## Composition with a kwh-compressed LeNet-5", ""]
    if comp is None:
        lines.append("Not measured in this run: no compressed LeNet-5 was given "
                     "(`--compressed FILE.kwh`).")
    else:
        (_, _, cd, cd_run), (_, lam, cs, cs_run), scales = comp
        base = dense.dense_macs
        lines += [
            f"`{args.compressed}` ({_arch(args.compressed)}), scales learnt at lambda = "
            f"{lam:g}: k = "
            f"{', '.join(f'{s:.3g}' for s in scales)}. Ops count only connections through "
            "nonzero weights (pruned weights do no work); savings are against the "
            f"uncompressed dense LeNet-5 ({base:,.0f} MACs/frame).",
            "",
            "| network | accuracy % | agreement % (with compressed dense) | first frame | "
            "steady state | saving vs uncompressed dense |",
            "|---|---|---|---|---|---|",
            f"| compressed, dense frame by frame | {100 * cd.accuracy:.2f} | 100.00 | "
            f"{cd_run.first_frame(True):,.0f} | {cd_run.steady_state(True):,.0f} | "
            f"{base / cd_run.steady_state(True):.1f}x |",
            f"| compressed, sigma-delta | {100 * cs.accuracy:.2f} | {100 * cs.agreement:.2f} | "
            f"{cs_run.first_frame(True):,.0f} | {cs_run.steady_state(True):,.0f} | "
            f"{base / max(cs_run.steady_state(True), 1e-12):.1f}x |",
        ]
    lines += [
        "", "Plot: `spike_mnist.png` (accuracy against steady-state ops per frame).", "",
        "## Notes", "",
        "- Op counts compare unlike operations: a sigma-delta op is an addition of a weight "
        "into an accumulator, a dense or send-on-threshold op a multiply-accumulate (fp32 at "
        "45 nm: about 0.9 pJ vs 4.6 pJ, REFERENCES.md section 7). The target above is judged "
        "in ops, not in energy; `kwh energy --sigma-delta` prices the difference, and the "
        "state traffic (phi, previous input, running sums) that event-driven inference pays.",
        "- Held frames (exact copies) cost nothing in steady state; moving frames cost more than "
        "the steady-state mean" + (
            f": {100 * extra['held']:.0f} % of the test frames after the first are held, and "
            f"the chosen sigma-delta net does {extra['moving']:,.0f} additions per moving frame "
            f"({dense.dense_macs / extra['moving']:.1f}x fewer than dense)."
            if "moving" in extra else "."),
        "- The sigma-delta outputs equal the rounding network's on every frame, so accuracy is "
        "decided by the rounding alone; the scales trade it against spikes.",
    ]
    return "\n".join(lines + [""])


if __name__ == "__main__":
    main()
