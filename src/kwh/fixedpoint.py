"""The smallest exact fixed-point form of float32 values: what the .kwh codec stores a float
tensor as (kwh.format.tensors, encoding ``fixed``) and what the energy model prices it at.

A leaf: imports only numpy and torch, so the format, the energy model and compression may all
use it.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["MAX_BITS", "MAX_FRAC_BITS", "exact_grid", "stored_bits"]

MAX_BITS = 25        # a float32 holds every integer of up to 24 magnitude bits exactly
MAX_FRAC_BITS = 64   # q * 2**-t stays an exact, normal float32 for any t up to here
_PROBE = 4096        # values looked at first: a tensor off every small grid fails here, cheaply


def exact_grid(values: np.ndarray) -> tuple[int, int] | None:
    """(bits, frac_bits) of the smallest fixed-point form that holds every float32 value
    exactly (q * 2**-frac_bits, q a ``bits``-bit two's-complement integer, 0 <= frac_bits <=
    MAX_FRAC_BITS, bits <= MAX_BITS), or None when there is none or a value is -0.0 (whose
    sign an integer cannot keep). ``values`` must be float32 (ValueError otherwise: a
    rounded copy would be described, not the values)."""
    v = np.asarray(values)
    if v.dtype != np.float32:
        raise ValueError(f"exact_grid takes float32 values, got {v.dtype}")
    v = v.reshape(-1)
    if v.size > _PROBE and _grid(v[:_PROBE]) is None:
        return None
    return _grid(v)


def _grid(v: np.ndarray) -> tuple[int, int] | None:
    if v.size == 0:
        return 1, 0
    zero = v == 0
    if (np.signbit(v) & zero).any():
        return None
    nz = v[~zero].astype(np.float64)
    if nz.size == 0:
        return 1, 0
    mant, exp = np.frexp(nz)  # nz = mant 2^exp, 0.5 <= |mant| < 1, 24 significant bits
    ints = np.abs(mant * 2.0**24).astype(np.int64)  # exact: below 2^24
    low = ints & -ints  # the lowest set bit of each, a power of two
    _, low_exp = np.frexp(low.astype(np.float64))  # low = 2^(low_exp - 1), exactly
    need = 24 - exp.astype(np.int64) - (low_exp.astype(np.int64) - 1)
    frac_bits = max(0, int(need.max()))
    if frac_bits > MAX_FRAC_BITS:
        return None
    scaled = nz * 2.0**frac_bits  # exact integers (a power-of-two scaling of float32 values)
    hi, lo = max(float(scaled.max()), 0.0), min(float(scaled.min()), 0.0)
    for bits in range(1, MAX_BITS + 1):
        if -(2.0 ** (bits - 1)) <= lo and hi <= 2.0 ** (bits - 1) - 1:
            return bits, frac_bits
    return None


def stored_bits(t: torch.Tensor | None) -> int:
    """Bits a float tensor takes in a .kwh file before entropy coding: its elements packed at
    the bits of its smallest exact fixed-point form where that is smaller than float32 (as the
    codec's ``fixed`` encoding), else 32 each (0 for None)."""
    if t is None:
        return 0
    v = t.detach().to("cpu", torch.float32).contiguous().numpy().reshape(-1)
    grid = exact_grid(v) if np.isfinite(v).all() else None
    packed = 8 * -(-v.size * grid[0] // 8) if grid is not None else None  # whole bytes
    return packed if packed is not None and packed < 32 * v.size else 32 * v.size
