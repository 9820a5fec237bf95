"""What the input of a weight layer sends through the weights each frame.

A coder turns the reconstructed activation ``a_t`` (B, *shape) into a message ``m`` that is
multiplied by the weight, and an event count ``c`` (same shape, >= 0) that, times the
position's fan-out, is the work done. ``accumulates`` coders send changes: the layer keeps a
running sum of ``W m`` (sigma) and adds its bias once, on the first frame.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .quantize import herd, round_half_up

__all__ = ["Coder", "DenseCoder", "RoundCoder", "HerdCoder", "ThresholdCoder"]


class Coder:
    """Base class: stateless dense coding; subclasses override ``encode``."""

    accumulates = False
    op_kind = "mac"  # "mac": real-valued messages; "add": integer spikes

    def reset(self) -> None:
        """Forget all state (start of a new sequence)."""

    def encode(self, a: Tensor) -> tuple[Tensor, Tensor]:
        """Return (message, event count) for activation ``a``."""
        raise NotImplementedError


class DenseCoder(Coder):
    """Frame-by-frame dense network: every position sends its value, every tap is a MAC."""

    def encode(self, a: Tensor) -> tuple[Tensor, Tensor]:  # noqa: D102
        return a, torch.ones_like(a)


class RoundCoder(Coder):
    """Rounding network: sends ``round(k a) / k``; ``|round(k a)|`` additions per fan-out."""

    op_kind = "add"

    def __init__(self, k: float) -> None:
        self.k = k

    def encode(self, a: Tensor) -> tuple[Tensor, Tensor]:  # noqa: D102
        q = round_half_up(self.k * a)  # integer spikes, (B, *shape)
        return q / self.k, q.abs()


class HerdCoder(Coder):
    """Sigma-delta: herd the temporal difference ``a_t - a_{t-1}`` (``a_0 = 0``)."""

    accumulates = True
    op_kind = "add"

    def __init__(self, k: float) -> None:
        self.k = k
        self.reset()

    def reset(self) -> None:  # noqa: D102
        self.prev: Tensor | None = None
        self.phi: Tensor | None = None

    def encode(self, a: Tensor) -> tuple[Tensor, Tensor]:  # noqa: D102
        if self.prev is None:
            self.prev, self.phi = torch.zeros_like(a), torch.zeros_like(a)
        s, self.phi = herd(self.phi, a - self.prev, self.k)  # s: integer spikes (B, *shape)
        self.prev = a.clone()  # the graph after the layer must not change what it read
        return s / self.k, s.abs()


class ThresholdCoder(Coder):
    """Send-on-threshold with residual (lava-dl SDNN, DeltaCNN): send ``a - ref`` where
    ``|a - ref| > threshold`` and move ``ref`` only there; each sent value is one MAC per fan-out.
    """

    accumulates = True

    def __init__(self, threshold: float) -> None:
        if threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {threshold!r}")
        self.threshold = threshold
        self.reset()

    def reset(self) -> None:  # noqa: D102
        self.ref: Tensor | None = None

    def encode(self, a: Tensor) -> tuple[Tensor, Tensor]:  # noqa: D102
        if self.ref is None:
            self.ref = torch.zeros_like(a)
        d = a - self.ref                                # (B, *shape)
        sent = d.abs() > self.threshold
        m = torch.where(sent, d, torch.zeros_like(d))
        self.ref = torch.where(sent, a, self.ref)       # reference = last sent value
        return m, sent.to(a.dtype)
