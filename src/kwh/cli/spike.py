"""``kwh spike MODEL --data mnist-video``: a model as a sigma-delta network on video, ops per frame."""

from __future__ import annotations

import argparse

__all__ = ["register", "run", "load_model", "load_sequences", "VIDEO_DATA", "parse_scales"]

# --data name -> (data set, sequence kind) of kwh.data.sequence_dataset
VIDEO_DATA = {"mnist-video": ("mnist", "moving"), "fashion-mnist-video": ("fashion-mnist", "moving"),
              "temporal-mnist": ("mnist", "temporal")}


def parse_scales(text: str) -> str | list[float]:
    """'auto', one scale '4' or one per weight layer '2,1.5,1,3'."""
    if text == "auto":
        return text
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError(
            f"invalid scales {text!r}; give 'auto', one positive number, or one per "
            "Linear/Conv2d layer separated by commas")
    return values


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``spike`` subcommand."""
    p = subparsers.add_parser(
        "spike", help="run a model as a sigma-delta network on video; ops per frame",
        description="Convert MODEL to a sigma-delta network (O'Connor and Welling 2016) and run "
                    "it on test sequences next to the dense, rounding and send-on-threshold "
                    "versions: accuracy, agreement with the dense model, and operations per "
                    "frame (counted exactly; a CPU run does not show them as time).")
    p.add_argument("model", metavar="MODEL", help="a .kwh file, or a reference model name "
                   "(lenet300, lenet5, vgg) with --checkpoint")
    p.add_argument("--checkpoint", default=None, help="state dict (.safetensors, or .pt read "
                   "with weights_only) of the reference model")
    p.add_argument("--data", default="mnist-video", choices=list(VIDEO_DATA))
    p.add_argument("--data-dir", default=None, help="folder with the data sets, searched "
                   "alone (default: $KWH_DATA, standard places, then the cache)")
    p.add_argument("--frames", type=int, default=20, help="frames per sequence (default 20)")
    p.add_argument("--sequences", type=int, default=200, help="test sequences (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scales", type=parse_scales, default="auto", help="quantizer scale k: "
                   "'auto' (learnt on train-split sequences, default), one number, or one per "
                   "weight layer")
    p.add_argument("--lam", type=float, default=0.1, help="ops weight when learning scales "
                   "(default 0.1, chosen for LeNet-5 in benchmarks/results/spike_mnist.md)")
    p.add_argument("--threshold", type=float, default=0.4, help="send-on-threshold threshold "
                   "(default 0.4, chosen likewise)")
    p.set_defaults(func=run)
    return p


def load_model(spec: str, checkpoint: str | None):
    """The model to convert, in eval mode: a .kwh file, or a reference model with its trained
    weights from a state dict (kwh.app.load_model)."""
    from kwh.app import load_model as load
    from kwh.models import MODELS
    if spec in MODELS and checkpoint is None:
        raise ValueError(f"reference model {spec!r} needs --checkpoint with its trained "
                         "weights (a .safetensors or .pt state dict)")
    return load(spec, checkpoint).model


def load_sequences(data: str, split: str, n: int, frames: int, seed: int, root):
    """Frames time-major (T, S, C, H, W) and labels ((S,) moving, (T, 1) temporal)."""
    from kwh.app import sequences
    name, kind = VIDEO_DATA[data]
    return sequences(name, split, kind, n=n, frames=frames, seed=seed, root=root)


def run(args: argparse.Namespace) -> int:
    """Print one row per network; returns the exit code."""
    from kwh.progress import Progress
    from kwh.spike import build_plan, compare, train_scales
    plan = build_plan(load_model(args.model, args.checkpoint))
    talk = not getattr(args, "quiet", False)  # progress on stderr unless -q
    x, y = load_sequences(args.data, "test", args.sequences, args.frames, args.seed,
                          args.data_dir)
    scales = args.scales
    if scales == "auto":
        fit, _ = load_sequences(args.data, "train", 32, min(args.frames, 10), args.seed + 1,
                                args.data_dir)
        with Progress("kwh spike (learning scales)", "steps", enabled=talk) as bar:
            scales = train_scales(plan, fit, args.lam, init=4.0, steps=60, lr=0.05,
                                  progress=bar)
    scales = scales[0] if len(scales) == 1 else scales
    batch = min(256, -(-x.shape[1] // 20))  # ~20 batches: progress as it goes, same memory cap
    with Progress("kwh spike", "sequences", enabled=talk) as bar:
        rows = compare(plan, x, y, scales=scales, threshold=args.threshold, batch_size=batch,
                       progress=bar)
    shown = ", ".join(f"{k:.3g}" for k in ([scales] if isinstance(scales, float) else scales))
    print(f"{args.model} on {args.data}: {x.shape[1]} sequences x {x.shape[0]} frames; "
          f"scales k = {shown}; threshold {args.threshold:g}")
    print(f"{'network':<18} {'acc %':>6} {'agree %':>7} {'first frame':>12} "
          f"{'steady/frame':>12} {'saving':>7}  ops")
    for r in rows:
        print(f"{r.name:<18} {100 * r.accuracy:6.2f} {100 * r.agreement:7.2f} "
              f"{r.first_frame:12,.0f} {r.steady_state:12,.0f} {r.steady_saving:6.1f}x  "
              f"{'additions' if r.op_kind == 'add' else 'MACs'}")
    print("ops are counted per frame and sequence (exact fan-out); saving = dense MACs / "
          "steady-state ops; not wall-clock time")
    return 0
