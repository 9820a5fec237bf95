"""The compressed model's other float tensors on fixed-point grids: biases, norms, embeddings.

After pruning and quantization the weights of a small model take a few bits each, and its
float32 biases, LayerNorm/BatchNorm affine parameters and position embeddings become a large
share of the file (LeNet-5 at 789x: 8 % of the payload; the small ViT: over 40 %).
``snap_floats_`` puts each such parameter on its own grid 2^-t, t chosen so that the tensor's
largest magnitude takes ``bits`` magnitude bits: every value moves by at most 2^-(t+1), a
relative error of at most 2^-bits of the tensor's scale (12 bits: 0.024 %). The .kwh codec then
stores the tensor exactly in 1 + ``bits`` bits per value (kwh.format.tensors, encoding
``fixed``) instead of 32. Buffers (BatchNorm running statistics) and the quantized weights are
left alone. ``snap_floats_guarded_`` checks the cost on held-out data and backs off.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from kwh.compress.config import FLOAT_BITS, check_float_bits
from kwh.compress.precision import quantize
from kwh.fixedpoint import MAX_FRAC_BITS

__all__ = ["FLOAT_BITS", "float_parameters", "grid_of", "snap_floats_", "snap_floats_guarded_"]

_BACKOFF = (16, 20)  # magnitude bits tried when FLOAT_BITS costs more than the tolerance


def float_parameters(model: nn.Module) -> list[tuple[str, Tensor]]:
    """(name, parameter) of every floating-point parameter of ``model`` that is not the weight
    of a layer kwh.compress marked (``kwh_bits`` set: quantized, or kept float32 on purpose),
    each tensor once, also when modules share it."""
    marked = {id(m.weight) for m in model.modules()
              if getattr(m, "kwh_bits", None) is not None and isinstance(
                  getattr(m, "weight", None), Tensor)}
    out, seen = [], set(marked)
    for path, m in model.named_modules():
        for name, p in m.named_parameters(recurse=False):
            if id(p) in seen or not p.is_floating_point():
                continue
            seen.add(id(p))
            out.append((f"{path}.{name}" if path else name, p))
    return out


def grid_of(t: Tensor, bits: int) -> int | None:
    """The fraction bits that give ``t``'s largest magnitude ``bits`` magnitude bits (at
    least 0); None for an all-zero tensor, a non-finite one, or one too small for the codec's
    grids."""
    top = float(t.detach().abs().max()) if t.numel() else 0.0
    if top == 0.0 or not math.isfinite(top):
        return None
    frac = bits - math.frexp(top)[1]  # top = m 2^e, 0.5 <= m < 1: 2^(e-1) <= top < 2^e
    if frac > MAX_FRAC_BITS:  # the .kwh codec's finest grid
        return None
    return max(0, frac)


@torch.no_grad()
def snap_floats_(model: nn.Module, bits: int = FLOAT_BITS) -> dict[str, int]:
    """Round every float parameter of :func:`float_parameters` to its grid (in place):
    v -> floor(v 2^t + 1/2) 2^-t (kwh.compress.precision.quantize, the weights' rounding),
    t = grid_of(v, bits); zeros come out +0.0. Returns {name: t} of the tensors moved onto a
    grid."""
    check_float_bits(bits)
    grids = {}
    for name, p in float_parameters(model):
        frac = grid_of(p, bits)
        if frac is None:
            continue
        p.copy_(quantize(p, frac).to(p.dtype))  # via int64: no -0.0
        grids[name] = frac
    return grids


@torch.no_grad()
def snap_floats_guarded_(model: nn.Module, bits: int, error: Callable[[], float] | None,
                         tolerance_pp: float) -> dict:
    """:func:`snap_floats_` at ``bits``, checked by ``error()`` (the model's error on held-out
    data, a fraction) when given: while snapping costs more than ``tolerance_pp`` points, the
    originals come back and more bits are tried (16, 20); if none fits, the tensors stay as
    they were (float32 in the file). Returns the report for the summary: the bits used (None:
    unchanged), and with ``error`` the errors before and after. ``error()`` before snapping is
    measured on the model as it is (its weights already quantized), so the tolerance is spent
    on the float tensors alone, on top of what the weights' bits guard allowed."""
    saved = {name: p.detach().clone() for name, p in float_parameters(model)}
    before = error() if error is not None else None
    tries = [bits] + [b for b in _BACKOFF if b > bits]
    for b in tries:
        grids = snap_floats_(model, b)
        after = error() if error is not None else None
        if error is None or after <= before + tolerance_pp / 100:
            report = {"bits": b, "tensors": len(grids)}
            if error is not None:
                report.update(error_before=before, error_after=after, tolerance_pp=tolerance_pp)
            return report
        for name, p in float_parameters(model):
            p.copy_(saved[name])
    return {"bits": None, "tensors": 0, "error_before": before, "tolerance_pp": tolerance_pp,
            "tried": tries}
