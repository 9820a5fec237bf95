"""Fine-tuning a compressed model on its own fixed-point grids (quantization-aware training).

kwh.compress stores each kept weight of a quantized layer as an integer q times 2^-t, t the
layer's ``kwh_frac_bits``, q within the two's complement range of its ``kwh_bits``. Training the
float weights further would leave those grids; ``attach_fixed_point_`` instead reparametrizes
each quantized layer's weight as W = mask * Q(V): V is a free float tensor (starting at the
quantized weights), Q rounds to the grid (floor(v 2^t + 1/2) 2^-t, kwh.compress.precision's
rounding) and clamps to the range, and the gradient passes straight through Q inside the range
(the straight-through estimator: Bengio, Léonard and Courville 2013; Courbariaux et al. 2016)
and is zero outside it. ``mask`` holds the weights that are nonzero when fine-tuning starts, so
a pruned weight (and a unit or filter removed whole) stays pruned: the architecture, the bits
and the sparsity pattern the posterior chose are kept; only the values move. The biases stay
float32, as the file stores them. ``detach_fixed_point_`` leaves every weight exactly on its
grid (W as computed in the forward pass) and ``recount`` brings the summary's counts of
nonzero weights and MACs up to date (a kept weight may round to zero).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from kwh.errors import ModelError

__all__ = ["FixedPoint", "quantized_layers", "attach_fixed_point_", "detach_fixed_point_",
           "recount"]


class _RoundToGrid(torch.autograd.Function):
    """Q(v) = clamp(floor(v 2^t + 1/2), lo, hi) 2^-t; gradient 1 where v 2^t is in [lo, hi]."""

    @staticmethod
    def forward(ctx, v: Tensor, frac_bits: int, lo: int, hi: int) -> Tensor:
        # float64: floor(x + 1/2) is exact for every |q| a 25-bit layer holds (float32 would
        # round x + 1/2 to even above 2^23); the grid values themselves fit the weights' dtype
        scaled = v.to(torch.float64) * 2.0 ** frac_bits  # a power of two: exact
        ctx.save_for_backward((scaled >= lo) & (scaled <= hi))
        return (torch.floor(scaled + 0.5).clamp(lo, hi) * 2.0 ** -frac_bits).to(v.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None


class FixedPoint(nn.Module):
    """The parametrization W = mask * Q(V) of one quantized layer's weight."""

    def __init__(self, mask: Tensor, bits: int, frac_bits: int):
        super().__init__()
        if bits < 1:
            raise ModelError(f"kwh_bits={bits} is invalid; a quantized layer has >= 1 bit")
        self.register_buffer("mask", mask.detach().clone().to(torch.bool))
        self.bits, self.frac_bits = int(bits), int(frac_bits)
        self.lo, self.hi = -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1

    def forward(self, v: Tensor) -> Tensor:
        q = _RoundToGrid.apply(v, self.frac_bits, self.lo, self.hi)
        return torch.where(self.mask, q, torch.zeros_like(q))

    def extra_repr(self) -> str:
        return (f"bits={self.bits}, frac_bits={self.frac_bits}, "
                f"kept={int(self.mask.sum())}/{self.mask.numel()}")


def quantized_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every layer that kwh.compress quantized (kwh_bits and kwh_frac_bits
    set, a weight tensor), in module order."""
    out = []
    for name, m in model.named_modules():
        if getattr(m, "kwh_bits", None) is None or getattr(m, "kwh_frac_bits", None) is None:
            continue
        if parametrize.is_parametrized(m, "weight"):
            w = m.parametrizations.weight.original
        else:
            w = getattr(m, "weight", None)
        if isinstance(w, Tensor):
            out.append((name, m))
    return out


def attach_fixed_point_(model: nn.Module) -> nn.Module:
    """Reparametrize every quantized layer's weight as mask * Q(V) (in place; returns model).

    Raises ModelError when the model has no quantized layer (compress with quantize=True
    first) or when a weight is not on its layer's grid (it was changed after compression)."""
    layers = quantized_layers(model)
    if not layers:
        raise ModelError("no quantized layer to fine-tune: the model has no layer with kwh_bits "
                         "and kwh_frac_bits; compress it with kwh.compress (quantize=True) first")
    for name, m in layers:
        if parametrize.is_parametrized(m, "weight"):
            raise ModelError(f"layer {name or type(m).__name__}: its weight is already "
                             "parametrized (fine-tuning attached twice?)")
        p = FixedPoint(m.weight != 0, m.kwh_bits, m.kwh_frac_bits)
        with torch.no_grad():
            if not torch.equal(p(m.weight), m.weight):
                raise ModelError(f"layer {name or type(m).__name__}: its weights are not on the "
                                 f"grid of kwh_bits={m.kwh_bits}, kwh_frac_bits="
                                 f"{m.kwh_frac_bits}; fine-tune the model kwh.compress returned, "
                                 "unchanged")
        parametrize.register_parametrization(m, "weight", p)
    return model


def detach_fixed_point_(model: nn.Module) -> nn.Module:
    """Remove the parametrizations, leaving each weight at mask * Q(V): on its grid exactly."""
    for _, m in quantized_layers(model):
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    return model


def _paired(model: nn.Module, summary: dict) -> list[tuple[str, nn.Module, dict]]:
    """Each quantized layer with its entry in the summary: by name where the summary's names
    are the model's (the model kwh.compress returned), else in order (a loaded graph file,
    whose layers are its steps in the summary's order); shapes must agree either way."""
    layers = quantized_layers(model)
    entries = summary["layers"]
    if len(layers) != len(entries):
        raise ModelError(f"the summary lists {len(entries)} layers but the model has "
                         f"{len(layers)} quantized ones: it is not the model kwh.compress returned")
    by_name = dict(layers)
    if all(d.get("name") in by_name for d in entries):
        pairs = [(d["name"], by_name[d["name"]], d) for d in entries]
    else:
        pairs = [(n, m, d) for (n, m), d in zip(layers, entries)]
    for name, m, d in pairs:
        if list(m.weight.shape) != d["shape"]:
            raise ModelError(f"layer {name}: weight shape {list(m.weight.shape)} differs from the "
                             f"summary's {d['shape']} for {d.get('name')}")
    return pairs


def recount(model: nn.Module) -> dict | None:
    """The model's ``kwh_summary`` (changed in place) with its nonzero weights, density,
    nonzero MACs and the rates that count them recomputed from the weights as they are now.
    The payload and maximum compression are the codec's: kwh.app.verb.measure_payload."""
    summary = getattr(model, "kwh_summary", None)
    if summary is None:
        return None
    for name, m, d in _paired(model, summary):
        d["nonzero"] = int(torch.count_nonzero(m.weight))
        if "macs" in d:  # output positions per example: a conv's pixels, a Linear's tokens
            n = d.get("weights") or m.weight.numel()
            d["macs_nonzero"] = d["nonzero"] * (d["macs"] // n)
    nnz = sum(d["nonzero"] for d in summary["layers"])
    w_orig = summary["weights_original"]
    summary["nonzero"] = nnz
    summary["density"] = nnz / w_orig if w_orig else 0.0
    if "macs_nonzero" in summary:
        summary["macs_nonzero"] = sum(d["macs_nonzero"] for d in summary["layers"])
    rates = summary["rates"]
    if rates.get("kind", "").startswith("csr"):
        rates["pruning"] = w_orig / (2 * nnz) if nnz else None
        csr_bits = sum(2 * d["nonzero"] * d["bits"] for d in summary["layers"])
        rates["fast_prediction"] = 32 * w_orig / csr_bits if csr_bits else None
    return summary
