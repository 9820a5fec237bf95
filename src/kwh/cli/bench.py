"""``kwh bench FILE``: latency and throughput of a compressed model's every runtime variant.

The dense original, the compressed model in float32, sparse (CSR) and int8, on PyTorch and
onnxruntime, each beside the MAC and byte reductions its summary promises; with --data also the
test error of each. The library side is ``kwh.runtime.run_bench``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kwh.cli.args import int_at_least

__all__ = ["register", "run"]




def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand."""
    from kwh.data import DATASETS
    from kwh.runtime.prepare import SPARSE_MODES

    p = subparsers.add_parser(
        "bench", help="latency and throughput of a .kwh model: dense, float32, sparse, int8",
        description="Time the dense original and the compressed model in float32, sparse (CSR "
                    "layers where they are faster) and int8 (layers whose weights fit 8 bits), "
                    "on PyTorch and onnxruntime: median latency at batch 1 and throughput at "
                    "--batch, beside the MAC and byte reductions from the file's summary; with "
                    "--data, each variant's test error.")
    p.add_argument("file", help="the .kwh model file")
    p.add_argument("--data", choices=list(DATASETS), default=None,
                   help="test set for each variant's error, and training inputs to calibrate "
                        "int8 (default: none; random inputs, speed only)")
    p.add_argument("--data-dir", default=None, help="folder holding the data set files, "
                   "searched alone (default: $KWH_DATA, standard places, then download)")
    p.add_argument("--limit-test", type=int_at_least(1), default=None,
                   help="test examples for the errors (default: the whole test split)")
    p.add_argument("--calib", type=int_at_least(1), default=300,
                   help="training examples that calibrate int8 activations (default: %(default)s)")
    p.add_argument("--threads", type=int_at_least(1), default=1,
                   help="torch and onnxruntime intra-op threads (default: %(default)s)")
    p.add_argument("--batch", type=int_at_least(1), default=1000,
                   help="batch size of the throughput runs (default: %(default)s)")
    p.add_argument("--repeats", type=int_at_least(1), default=30,
                   help="timed runs per variant and batch size; the median counts "
                        "(default: %(default)s)")
    p.add_argument("--warmup", type=int_at_least(0), default=5,
                   help="untimed runs before them (default: %(default)s)")
    p.add_argument("--dense", default=None, metavar="NAME", help="dense original to compare "
                   "with (default: recognised from the file's summary)")
    p.add_argument("--sparse", choices=list(SPARSE_MODES), default="auto",
                   help="CSR layers: auto (per layer, where timed faster), never, always "
                        "(default: %(default)s)")
    p.add_argument("--engine", default=None, help="torch quantized engine (default: torch's "
                   "current one, e.g. x86)")
    p.add_argument("--activation-type", choices=["uint8", "int8"], default="uint8",
                   help="onnxruntime int8 activations (default: %(default)s)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the numbers as JSON")
    p.set_defaults(func=run)
    return p


def _inputs(args, shape: tuple[int, ...]):
    """(one, batch, calibration, test loader or None, a note on where the inputs came from)."""
    import torch

    if args.data is None:
        g = torch.Generator().manual_seed(0)
        pool = torch.randn(max(args.batch, args.calib), *shape, generator=g)  # (N, *shape)
        return (pool[:1], pool[:args.batch], pool[:args.calib], None,
                "random normal inputs (no --data): int8 calibrated on noise, no test error")
    from kwh.data import batch_loader, get_dataset

    test = get_dataset(args.data, "test", args.data_dir, limit=args.limit_test)
    train = get_dataset(args.data, "train", args.data_dir, limit=args.calib)
    x = test.tensors[0]  # (N, C, H, W)
    if tuple(x.shape[1:]) != shape:
        raise ValueError(f"--data {args.data} has inputs of shape {tuple(x.shape[1:])}, but "
                         f"the model takes {shape}")
    reps = -(-args.batch // len(x))
    batch = x.repeat(reps, *([1] * len(shape)))[:args.batch] if reps > 1 else x[:args.batch]
    return (x[:1], batch, train.tensors[0], batch_loader(test, args.batch),
            f"{args.data} test ({len(x):,} examples), int8 calibrated on {len(train):,} "
            f"training examples")


def run(args: argparse.Namespace) -> int:
    """Print the table (and write --json); returns the exit code."""
    import kwh
    from kwh.format.onnx import resolve_input_shape
    from kwh.energy.sources import DATA_SHAPES, dense_reference
    from kwh.errors import ModelError
    from kwh.models import MODELS
    from kwh.progress import Progress
    from kwh.runtime.compare import BenchConfig, format_bench, run_bench

    path = Path(args.file)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    if args.dense is not None and args.dense not in MODELS:
        raise ValueError(f"Unknown dense model {args.dense!r}; choose one of: {', '.join(MODELS)}")
    config = BenchConfig(threads=args.threads, batch=args.batch, repeats=args.repeats,
                         warmup=args.warmup, sparse=args.sparse, engine=args.engine,
                         activation_type=args.activation_type)
    if args.json and not Path(args.json).resolve().parent.is_dir():
        raise FileNotFoundError(f"--json {args.json}: the folder {Path(args.json).parent} does "
                                "not exist; create it first")
    model = kwh.load(path).eval()
    summary = getattr(model, "kwh_summary", None)
    try:
        shape = resolve_input_shape(model)
    except ModelError:
        if args.data is None:
            raise ModelError(f"{path} does not record its input shape; give --data (one of: "
                             f"{', '.join(DATA_SHAPES)})") from None
        shape = DATA_SHAPES[args.data]
    dense, label, why = None, "", ""
    try:
        dense, label = dense_reference(summary, args.dense, model)
    except ValueError as err:  # no summary or no match: the other rows still mean something
        if args.dense is not None:
            raise
        why = " ".join(str(err).split())
    one, batch, calibration, test, note = _inputs(args, shape)
    talk = not getattr(args, "quiet", False)

    def progress(desc: str):
        return Progress(desc, "runs", enabled=talk, parts=1)

    result = run_bench(model, one=one, batch=batch, calibration=calibration, dense=dense,
                       dense_label=label, dense_note=why, test=test, config=config,
                       progress=progress, calibration_note=note)
    result.environment["file"] = str(path)
    print(f"kwh bench {path}")
    print(format_bench(result))
    if args.json:
        from kwh.format.io import atomic_write_bytes
        atomic_write_bytes(args.json, (json.dumps(result.to_dict(), indent=1) + "\n").encode())
    return 0
