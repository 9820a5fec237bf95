"""Shape arithmetic for checking a .kwh architecture layer by layer before anything is built.

A shape is one example's shape (no batch dimension) as a tuple whose entries are ints, None
(size unknown) or a leading Ellipsis (any number of unknown leading dimensions): ``(...,)``
knows nothing, ``(..., 10)`` knows only the last size, ``(20, None, None)`` knows the rank and
the channels. Output sizes follow the formulas of the torch.nn.Conv2d / MaxPool2d / AvgPool2d
documentation.
"""

from __future__ import annotations

import math

from kwh.errors import FormatError

__all__ = ["Shape", "UNKNOWN", "spatial_out", "as_chw", "linear_out", "flatten_out",
           "check_dim_index", "check_activation_size", "MAX_ACTIVATION"]

Shape = tuple
UNKNOWN: Shape = (...,)
MAX_ACTIVATION = 2**34  # elements of one example's activation; a header beyond this is refused


def spatial_out(size: int | None, kernel: int, stride: int, pad: int, dilation: int,
                ceil_mode: bool, where: str) -> int | None:
    """Output length of a convolution or pooling window along one axis (None when unknown)."""
    if size is None:
        return None
    span = size + 2 * pad - dilation * (kernel - 1) - 1  # input left after the first window
    if span < 0:
        raise FormatError(f"{where}: window (kernel {kernel}, dilation {dilation}) is larger "
                          f"than the padded input ({size} + 2*{pad})")
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1  # the last window may not start in the right padding (torch's rule)
    if out < 1:
        raise FormatError(f"{where}: output size {out} is too small for input {size}")
    return out


def as_chw(shape: Shape, where: str) -> tuple[int | None, int | None, int | None]:
    """View a shape as (C, H, W); refuse shapes of another known rank."""
    if shape and shape[0] is Ellipsis:
        tail = shape[1:]
        if len(tail) > 3:
            raise FormatError(f"{where} needs a (C, H, W) input, got rank >= {len(tail)}")
        return (None,) * (3 - len(tail)) + tuple(tail)
    if len(shape) != 3:
        raise FormatError(f"{where} needs a (C, H, W) input, got shape {_show(shape)}")
    return tuple(shape)


def linear_out(shape: Shape, in_features: int, out_features: int, where: str) -> Shape:
    """Shape after a layer mixing the last dimension from ``in_features`` to ``out_features``."""
    if not shape:
        raise FormatError(f"{where} needs an input with at least one dimension")
    last = shape[-1]
    if last is Ellipsis:
        return (..., out_features)
    if last is not None and last != in_features:
        raise FormatError(f"{where} expects {in_features} input features but the previous "
                          f"layer gives {last} (shape {_show(shape)})")
    return tuple(shape[:-1]) + (out_features,)


def flatten_out(shape: Shape, start_dim: int, end_dim: int, where: str) -> Shape:
    """Shape after Flatten(start_dim, end_dim); dims count the batch as dimension 0."""
    if shape and shape[0] is Ellipsis:
        return (None,) if (start_dim, end_dim) == (1, -1) else UNKNOWN
    rank = len(shape) + 1
    end = rank - 1 if end_dim == -1 else end_dim
    if not 1 <= start_dim <= end <= rank - 1:
        raise FormatError(f"{where}: start_dim={start_dim}, end_dim={end_dim} do not fit an "
                          f"input of shape {_show(shape)} (plus the batch dimension)")
    merged = shape[start_dim - 1:end]
    size = None if any(d is None for d in merged) else math.prod(merged)
    return tuple(shape[:start_dim - 1]) + (size,) + tuple(shape[end:])


def check_dim_index(shape: Shape, dim: int, where: str) -> None:
    """Check that ``dim`` names a dimension of the batched input when the rank is known."""
    if shape and shape[0] is Ellipsis:
        return
    rank = len(shape) + 1
    if not -rank <= dim < rank:
        raise FormatError(f"{where}: dim={dim} is out of range for an input of rank {rank}")


def check_activation_size(shape: Shape, where: str) -> None:
    """Refuse architectures whose activations would be absurdly large for one example."""
    known = [d for d in shape if d is not Ellipsis and d is not None]
    if known and math.prod(known) > MAX_ACTIVATION:
        raise FormatError(f"{where}: activation of shape {_show(shape)} exceeds "
                          f"{MAX_ACTIVATION} elements per example")


def _show(shape: Shape) -> str:
    return "(" + ", ".join("..." if d is Ellipsis else "?" if d is None else str(d)
                           for d in shape) + ")"
