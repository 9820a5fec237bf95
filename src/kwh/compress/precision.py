"""Bits per layer from the posterior variance, and fixed-point quantization of the means.

Louizos et al. 2017, sec. 4 (REFERENCES.md sec. 4): each kept weight can justify
t_ij = clip(floor(log2(1 / (2 Var[w_ij]))), 0, 23) fraction bits; the layer uses
t_l = ceil(mean_ij t_ij) over its kept weights, and w_q = floor(w / 2^-t + 1/2) * 2^-t.

The exponent, defined here so that it holds for any weight range (the reference's formula
breaks when max|w| < 0.5): with the integers q = floor(w 2^t + 1/2), the magnitude bound is
M = max|q| and the layer needs m = bit_length(M) magnitude bits (at least 1). Total bits
= 1 (sign) + m = 1 + e + t with e = m - t. e may be negative: then every |w| < 2^e and the top
-e fraction bits are always zero, so they are not stored (t stays the resolution 2^-t).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from kwh.compress.config import MAX_FRAC_BITS, MAX_TOTAL_BITS, CompressConfig
from kwh.errors import ModelError


@dataclass(frozen=True)
class LayerPrecision:
    """Fixed point of one layer: t fraction bits, signed exponent e, total bits 1 + e + t."""

    frac_bits: int  # t
    exp_bits: int  # e = magnitude bits - t (may be negative, see module docstring)
    bits: int  # 1 + e + t
    posterior_frac_bits: int | None  # t_l from the posterior before any cap (None: no posterior)
    source: str  # "posterior", "posterior, capped by max_bits", "override", "plain"


def frac_bits_per_weight(var: Tensor) -> Tensor:
    """t_ij = clip(floor(log2(1 / (2 Var))), 0, 23) (Louizos et al. 2017, sec. 4)."""
    v = var.detach().to(torch.float64)
    t = torch.floor(torch.log2(1.0 / (2.0 * v)))  # Var = 0 -> +inf -> clipped to 23
    return t.clamp(0, MAX_FRAC_BITS).to(torch.int64)


def layer_frac_bits(var: Tensor, kept: Tensor) -> int:
    """t_l = ceil(mean of t_ij over the kept weights); 0 for a layer with none kept."""
    t = frac_bits_per_weight(var)[kept]
    if t.numel() == 0:
        return 0
    return int(math.ceil(t.to(torch.float64).mean().item() - 1e-12))


def quantize_ints(weight: Tensor, frac_bits: int) -> Tensor:
    """q = floor(w / 2^-t + 1/2): the integers of the fixed point (int64)."""
    return torch.floor(weight.detach().to(torch.float64) * 2.0 ** frac_bits + 0.5).to(torch.int64)


def quantize(weight: Tensor, frac_bits: int) -> Tensor:
    """w_q = floor(w / 2^-t + 1/2) * 2^-t, in float64 (exact for |q| < 2^53)."""
    return quantize_ints(weight, frac_bits).to(torch.float64) * 2.0 ** -frac_bits


def magnitude_bits(weight: Tensor, frac_bits: int) -> int:
    """m = bit_length(max |q|), at least 1; rounding is monotone, so the extremes decide."""
    if weight.numel() == 0:
        return 1
    w = weight.detach().to(torch.float64)
    ends = torch.stack([w.max(), w.min()])
    bound = int(quantize_ints(ends, frac_bits).abs().max().item())
    return max(1, bound.bit_length())


def fit_frac_bits(weight: Tensor, total_bits: int, name: str = "layer") -> int:
    """The largest t in [0, 23] with 1 + magnitude_bits(w, t) <= total_bits."""
    for t in range(MAX_FRAC_BITS, -1, -1):
        if 1 + magnitude_bits(weight, t) <= total_bits:
            return t
    need = 1 + magnitude_bits(weight, 0)
    raise ModelError(f"layer {name!r}: {total_bits} bits cannot hold its largest weight "
                     f"{weight.abs().max().item():.6g} even with 0 fraction bits; allow at least "
                     f"{need} bits")


def choose_precision(name: str, weight: Tensor, var: Tensor | None, kept: Tensor,
                     config: CompressConfig) -> LayerPrecision:
    """Fraction and total bits of one layer: posterior rule, then user cap or override."""
    posterior_t = None if var is None else layer_frac_bits(var, kept)
    if name in config.bits:
        t, source = fit_frac_bits(weight, config.bits[name], name), "override"
    elif posterior_t is None:
        t, source = fit_frac_bits(weight, config.plain_bits, name), "plain"
    else:
        t, source = posterior_t, "posterior"
        if config.max_bits is not None:
            cap = fit_frac_bits(weight, config.max_bits, name)
            if cap < t:
                t, source = cap, "posterior, capped by max_bits"
        fit = fit_frac_bits(weight, MAX_TOTAL_BITS, name)  # float32: exact for |int| < 2^24
        if fit < t:
            t, source = fit, "posterior, capped to fit float32"
    m = magnitude_bits(weight, t)
    return LayerPrecision(frac_bits=t, exp_bits=m - t, bits=1 + m,
                          posterior_frac_bits=posterior_t, source=source)


def with_frac_bits(weight: Tensor, prec: LayerPrecision, t: int, source: str) -> LayerPrecision:
    """The same layer at ``t`` fraction bits (magnitude bits recomputed)."""
    m = magnitude_bits(weight, t)
    return replace(prec, frac_bits=t, exp_bits=m - t, bits=1 + m, source=source)


def search_bits(weights: list[Tensor], precisions: list[LayerPrecision], movable: list[bool],
                error: Callable[[list[LayerPrecision]], float], reference: float,
                tolerance: float, mode: str) -> tuple[list[LayerPrecision], float]:
    """Adjust the posterior's fraction bits until quantization costs <= ``tolerance``.

    ``error(precisions)`` is the error (fraction) of the model quantized so, ``reference``
    the unquantized model's, ``tolerance`` in percentage points. Raise: while over
    budget, give one more fraction bit to the movable layer whose extra bit lowers the error
    most (ties: the layer with fewer weights). Fit (``mode="fit"``) then takes one bit at a
    time from the layers with the most weights while the budget holds (never to all zeros).
    Returns the new
    precisions and their error.
    """
    cur = list(precisions)
    err = error(cur)
    over = lambda e: 100.0 * (e - reference) > tolerance + 1e-9  # noqa: E731
    total_cap = [fit_frac_bits(w, MAX_TOTAL_BITS) for w in weights]
    while over(err):
        best = None
        for i, ok in enumerate(movable):
            t = cur[i].frac_bits + 1
            if not ok or t > min(MAX_FRAC_BITS, total_cap[i]):
                continue
            cand = cur[:i] + [with_frac_bits(weights[i], cur[i], t, cur[i].source)] + cur[i + 1:]
            e = error(cand)
            key = (e, weights[i].numel())
            if best is None or key < best[0]:
                best = (key, cand)
        if best is None:
            break
        (err, _), cur = best
    if mode == "fit":
        order = sorted((i for i, ok in enumerate(movable) if ok),
                       key=lambda i: -int((weights[i] != 0).sum()))
        changed = True
        while changed:
            changed = False
            for i in order:
                if cur[i].frac_bits == 0 or not bool(
                        quantize_ints(weights[i], cur[i].frac_bits - 1).any()):
                    continue  # a layer rounded to all zeros is broken, whatever the data say
                cand = cur[:i] + [with_frac_bits(weights[i], cur[i], cur[i].frac_bits - 1,
                                                 cur[i].source)] + cur[i + 1:]
                e = error(cand)
                if not over(e):
                    cur, err, changed = cand, e, True
    out = []
    for p0, p1 in zip(precisions, cur):
        d = p1.frac_bits - p0.frac_bits
        if d:
            word = "raised" if d > 0 else "lowered"
            p1 = replace(p1, source=f"{p0.source}, {word} {abs(d)} bit{'s' * (abs(d) > 1)} "
                                    f"by the accuracy guard")
        out.append(p1)
    return out, err
