"""Exact fan-out maps and multiply-accumulate counts of Linear and Conv2d layers.

The fan-out of an input position is the number of (output position, output channel) pairs
it reaches. A spike there costs that many additions (O'Connor and Welling 2016, section 4:
cost ``sum_l |s_l|_1 * fanout_l``). For a convolution it depends on the position: border
pixels under padding, and pixels skipped by the stride, reach fewer outputs. The map is the
convolution's adjoint (a transposed convolution) applied to a tensor of ones, computed here
as the input-gradient of ``sum(conv(x))`` with the weight replaced by a 0/1 mask, which
handles stride, padding (numbers or strings), dilation and groups exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["fanout_map", "dense_macs", "naive_macs"]


def _conv_fanout(conv: nn.Conv2d, in_shape: tuple[int, ...], mask: Tensor) -> Tensor:
    """Fan-out per input (C, H, W) position of ``conv`` whose connections are ``mask``."""
    with torch.enable_grad():
        x = torch.zeros((1, *in_shape), dtype=torch.float64, requires_grad=True)  # (1, C, H, W)
        y = F.conv2d(x, mask.to(torch.float64), None, conv.stride, conv.padding,
                     conv.dilation, conv.groups)                                  # (1, O, Ho, Wo)
        (grad,) = torch.autograd.grad(y.sum(), x)  # transposed conv of ones: (1, C, H, W)
    return grad[0].round()


def fanout_map(layer: nn.Module, in_shape: tuple[int, ...], *, nonzero: bool = False) -> Tensor:
    """Fan-out of every input position of ``layer`` for one example of shape ``in_shape``.

    ``nonzero=False`` counts every structural connection; ``nonzero=True`` counts only
    connections through nonzero weights (a pruned model does no work for the others).
    Returns float64 counts of shape ``in_shape``.
    """
    w = layer.weight.detach()
    mask = (w != 0) if nonzero else torch.ones_like(w, dtype=torch.bool)
    if isinstance(layer, nn.Linear):
        if tuple(in_shape) != (layer.in_features,):
            raise ValueError(f"Linear expects input shape ({layer.in_features},), got {in_shape}")
        return mask.sum(0).to(torch.float64)  # (in,)
    if isinstance(layer, nn.Conv2d):
        if len(in_shape) != 3 or in_shape[0] != layer.in_channels:
            raise ValueError(
                f"Conv2d expects input shape ({layer.in_channels}, H, W), got {tuple(in_shape)}")
        return _conv_fanout(layer, tuple(in_shape), mask)
    raise TypeError(f"fan-out is defined for Linear and Conv2d, got {type(layer).__name__}")


def dense_macs(layer: nn.Module, in_shape: tuple[int, ...], *, nonzero: bool = False) -> int:
    """Exact MACs of one dense evaluation: only kernel taps that land inside the input."""
    return int(fanout_map(layer, in_shape, nonzero=nonzero).sum().item())


def naive_macs(layer: nn.Module, in_shape: tuple[int, ...]) -> int:
    """Shape-only MACs: ``out * in`` for Linear, ``out_positions * O * C/g * kh * kw`` for conv."""
    if isinstance(layer, nn.Linear):
        return layer.in_features * layer.out_features
    if isinstance(layer, nn.Conv2d):
        x = torch.zeros((1, *in_shape), device="meta")  # (1, C, H, W), shapes only
        y = F.conv2d(x, layer.weight.to("meta"), None, layer.stride, layer.padding,
                     layer.dilation, layer.groups)          # (1, O, Ho, Wo)
        out_positions = math.prod(y.shape[2:])
        return out_positions * layer.weight.numel()
    raise TypeError(f"MACs are defined for Linear and Conv2d, got {type(layer).__name__}")
