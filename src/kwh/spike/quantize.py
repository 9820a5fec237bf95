"""Rounding and herding (sigma-delta) quantizers with a scale ``k``.

O'Connor and Welling 2016, "Sigma Delta Quantized Networks", section 3: the rounding
quantizer sends ``s = round(k x)`` and the next layer sees ``s / k``; herding (Welling 2009)
keeps a residual ``phi`` so that the running sum of spikes tracks the running sum of input.

One rounding convention is used everywhere, ``round(v) = floor(v + 0.5)``. With it,
``round(v - n) = round(v) - n`` for every integer ``n``, which is what makes the sum of
herded spikes of a temporal difference equal the rounding of the current input (see
:func:`herd`).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["round_half_up", "round_quantize", "herd", "Herding", "ste_round"]


def round_half_up(v: Tensor) -> Tensor:
    """Round to the nearest integer, ties upward: ``floor(v + 0.5)``."""
    return torch.floor(v + 0.5)


def round_quantize(x: Tensor, k: float | Tensor) -> Tensor:
    """Rounding quantizer ``round(k x) / k`` (O'Connor and Welling 2016, eq. 3)."""
    return round_half_up(k * x) / k


def herd(phi: Tensor, x: Tensor, k: float | Tensor) -> tuple[Tensor, Tensor]:
    """One herding step ``phi += k x; s = round(phi); phi -= s``; returns ``(s, phi)``.

    Starting from ``phi = 0`` and feeding deltas ``x_t - x_{t-1}`` (with ``x_0 = 0``), the
    state after step t is ``phi_t = k x_t - S_t`` with ``S_t`` the integer running sum of
    spikes, so ``s_t = round(k x_t - S_{t-1}) = round(k x_t) - S_{t-1}`` and by induction
    ``S_t = round(k x_t)``: sigma-delta equals rounding (up to float error in ``phi``).
    In general ``|phi_t| <= 0.5``: the running sum of spikes never drifts more than
    ``0.5 / k`` from the running sum of the input (Welling 2009).
    """
    v = phi + k * x
    s = round_half_up(v)
    return s, v - s


class Herding:
    """Stateful herding quantizer: one residual ``phi`` per example and feature."""

    def __init__(self, k: float) -> None:
        if not k > 0:
            raise ValueError(f"herding scale k must be positive, got {k!r}")
        self.k = float(k)
        self.phi: Tensor | None = None

    def reset(self) -> None:
        """Forget the residual (start of a new sequence)."""
        self.phi = None

    def __call__(self, x: Tensor) -> Tensor:
        """Integer spikes for input ``x`` (any shape, same shape every call)."""
        if self.phi is None or self.phi.shape != x.shape:
            self.phi = torch.zeros_like(x)
        s, self.phi = herd(self.phi, x, self.k)
        return s


class _STERound(torch.autograd.Function):
    """Forward ``floor(v + 0.5)``, backward identity (straight-through estimator)."""

    @staticmethod
    def forward(ctx, v: Tensor) -> Tensor:  # noqa: D102
        return round_half_up(v)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: D102
        return grad


def ste_round(v: Tensor) -> Tensor:
    """Round half up in the forward pass, pass gradients straight through (Bengio et al. 2013)."""
    return _STERound.apply(v)
