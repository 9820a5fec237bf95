"""ONNX export of a compressed chain (or a .kwh file) with torch's torch.export-based exporter."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from typing import Any

import torch
from torch import nn

from kwh.errors import ModelError
from kwh.format import codec
from kwh.format.io import atomic_write_bytes

__all__ = ["export_onnx", "resolve_input_shape"]

_EXAMPLE_BATCH = 2  # not 0 or 1: torch.export would specialise the batch size to a constant


def resolve_input_shape(model: nn.Module, input_shape: Any = None) -> tuple[int, ...]:
    """One example's shape: the argument, else the model's kwh_input_shape or kwh_summary's."""
    shape = input_shape
    if shape is None:
        shape = getattr(model, "kwh_input_shape", None)
    summary = getattr(model, "kwh_summary", None)
    if shape is None and isinstance(summary, dict):
        shape = summary.get("input_shape")
    if shape is None:
        raise ModelError("the input shape is unknown (the file and model do not record it); "
                         "give one example's shape, e.g. input_shape=(1, 28, 28) or "
                         "--input-shape 1,28,28")
    try:
        dims = tuple(int(d) for d in shape)
        ok = len(dims) >= 1 and all(d >= 1 and d == e for d, e in zip(dims, shape))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ModelError(f"input_shape={shape!r} is invalid; give one example's shape as "
                         "positive integers without the batch dimension, e.g. (1, 28, 28)")
    return dims


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's known chatter (a FutureWarning it triggers, optional-op logs)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*treespec.*LeafSpec",
                                    category=FutureWarning)
            yield
    finally:
        logger.setLevel(level)


def export_onnx(model_or_path: nn.Module | str | os.PathLike, out_path: str | os.PathLike,
                input_shape: Any = None, *, opset: int | None = None) -> str:
    """Export a chain (or the model in a .kwh file) to ONNX, with a dynamic batch dimension.

    input_shape: one example's shape (no batch dimension); by default the one the .kwh file
    or model records. The file is written atomically; returns its path.
    """
    if isinstance(model_or_path, (str, os.PathLike)):
        model = codec.load(model_or_path)
    elif isinstance(model_or_path, nn.Module):
        model = model_or_path
    else:
        raise TypeError(f"export_onnx takes an nn.Module or a .kwh path, got "
                        f"{type(model_or_path).__name__}")
    shape = resolve_input_shape(model, input_shape)
    example = torch.zeros(_EXAMPLE_BATCH, *shape)  # (B, *input_shape)
    was_training = model.training
    model.eval()
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                model, (example,), None, dynamo=True, verbose=False, opset_version=opset,
                input_names=["input"], output_names=["output"],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    except Exception as err:  # the exporter raises many types; name the cause once
        raise ModelError(f"ONNX export failed for input shape {shape}: "
                         f"{type(err).__name__}: {str(err)[:300]}") from err
    finally:
        model.train(was_training)
    atomic_write_bytes(out_path, program.model_proto.SerializeToString())
    return os.fspath(out_path)
