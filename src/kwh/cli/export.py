"""``kwh export FILE --onnx OUT``: a .kwh model as an ONNX graph with a dynamic batch size."""

from __future__ import annotations

import argparse
import os
import re

__all__ = ["register", "run", "parse_shape"]


def parse_shape(text: str) -> tuple[int, ...]:
    """'1,28,28' (or '1x28x28') -> (1, 28, 28); one example's shape, no batch dimension."""
    parts = [p for p in re.split(r"[,x\s]+", text.strip()) if p]
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(
            f"invalid input shape {text!r}; give positive sizes separated by commas, e.g. 1,28,28")
    return dims


def register(subparsers) -> None:
    """Add the ``export`` subcommand."""
    p = subparsers.add_parser(
        "export", help="export a .kwh model to ONNX",
        description="Export the model in a .kwh file to ONNX (batch dimension dynamic). "
                    "The input shape stored in the file is used unless --input-shape is given.")
    p.add_argument("file", help="the .kwh file to export")
    p.add_argument("--onnx", required=True, metavar="OUT", help="path of the .onnx file to write")
    p.add_argument("--input-shape", type=parse_shape, default=None, metavar="C,H,W",
                   help="one example's shape without the batch dimension, e.g. 1,28,28 "
                        "(required when the file does not record it)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: torch's)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Export and print one line with the result."""
    from kwh.format.onnx import export_onnx  # torch.onnx is heavy: import on use

    out = export_onnx(args.file, args.onnx, args.input_shape, opset=args.opset)
    print(f"kwh: wrote {out} ({os.path.getsize(out)} bytes) from {args.file}")
    return 0
