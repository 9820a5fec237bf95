"""Run a converted network over whole sequences: dense, rounding, sigma-delta, send-on-threshold.

All four share one loop (O'Connor and Welling 2016, section 4, per block): the coder turns the
reconstructed input into a message, the weight maps it, accumulating coders keep the running
sum (sigma) and add the bias once on the first frame, the post-ops (ReLU, pooling) act on the
reconstructed pre-activation. State is reset at the start of every ``run``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .coders import Coder, DenseCoder, HerdCoder, RoundCoder, ThresholdCoder
from .fanout import fanout_map, naive_macs
from .plan import GraphPlan, Plan, as_plan
from .result import SpikeRun

__all__ = ["SequenceNet", "DenseFrameNet", "RoundingNet", "SigmaDeltaNet", "ThresholdNet",
           "convert", "per_layer"]


def per_layer(value: float | Sequence[float], n: int, what: str) -> list[float]:
    """Broadcast one number or check a list of ``n`` positive numbers, one per weight layer."""
    values = [float(value)] * n if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) != n:
        raise ValueError(f"{what}: got {len(values)} values for {n} Linear/Conv2d layers; "
                         f"give one number or a list of {n}")
    return values


class SequenceNet:
    """A plan plus one coder per weight layer; ``run`` processes (T, B, *frame) at once."""

    def __init__(self, model: nn.Module | Plan | GraphPlan, coders: list[Coder],
                 dtype: torch.dtype = torch.float64) -> None:
        plan = as_plan(model)
        self.plan = plan.to(dtype)
        self.coders = coders
        self.dtype = dtype
        self._fanouts: dict[tuple, tuple[Tensor, Tensor, float]] = {}

    @property
    def layer_names(self) -> list[str]:
        """Names of the weight layers, ``index:Type``."""
        return [b.name for b in self.plan.blocks]

    def _fanout(self, l: int, shape: tuple[int, ...]) -> tuple[Tensor, Tensor, float]:
        """(structural fan-out, nonzero fan-out, naive MACs) of layer l for input ``shape``."""
        key = (l, shape)
        if key not in self._fanouts:
            layer = self.plan.blocks[l].layer
            self._fanouts[key] = (fanout_map(layer, shape).to(self.dtype),
                                  fanout_map(layer, shape, nonzero=True).to(self.dtype),
                                  float(naive_macs(layer, shape)))
        return self._fanouts[key]

    def run(self, x: Tensor, batch_size: int | None = None) -> SpikeRun:
        """Outputs and op counts for sequences ``x`` of shape (T, B, *frame).

        ``batch_size`` splits the B sequences into chunks run one after another (less memory).
        """
        if x.dim() < 2 or x.shape[0] < 1 or x.shape[1] < 1:
            raise ValueError(f"expected sequences of shape (T, B, *frame) with T, B >= 1, got "
                             f"{tuple(x.shape)}")
        if batch_size is None or batch_size >= x.shape[1]:
            return self._run(x)
        return SpikeRun.cat([self._run(c) for c in x.split(batch_size, dim=1)])

    @torch.no_grad()
    def _run(self, x: Tensor) -> SpikeRun:
        x = x.to(self.dtype)
        T, B, L = x.shape[0], x.shape[1], len(self.plan.blocks)
        for c in self.coders:
            c.reset()
        ops = torch.zeros(L, T, B, dtype=torch.float64)
        ops_nz = torch.zeros(L, T, B, dtype=torch.float64)
        dense = torch.zeros(3, L, dtype=torch.float64)  # exact, nonzero, naive
        sums: list[Tensor | None] = [None] * L
        outputs = []
        for t in range(T):
            def layer(l: int, block, a: Tensor, t: int = t) -> Tensor:
                coder = self.coders[l]
                fan, fan_nz, naive = self._fanout(l, tuple(a.shape[1:]))
                m, count = coder.encode(a)                      # (B, *in) each
                ops[l, t] = (count * fan).flatten(1).sum(1)
                ops_nz[l, t] = (count * fan_nz).flatten(1).sum(1)
                if t == 0:
                    dense[:, l] = torch.tensor([fan.sum(), fan_nz.sum(), naive])
                y = block.linear(m)                             # (B, *out), no bias
                if coder.accumulates:                           # sigma: running sum
                    sums[l] = block.add_bias(y) if sums[l] is None else sums[l] + y
                    return sums[l].clone()  # the running sum stays the layer's own
                return block.add_bias(y)

            outputs.append(self.plan.frame(x[t], layer))        # (B, *out)
        return SpikeRun(torch.stack(outputs), ops, ops_nz, dense[0], dense[1], dense[2],
                        self.layer_names, self.coders[0].op_kind)

    __call__ = run


class DenseFrameNet(SequenceNet):
    """The original network evaluated densely on every frame (BatchNorm folded)."""

    def __init__(self, model: nn.Module | Plan, dtype: torch.dtype = torch.float64) -> None:
        plan = as_plan(model)
        super().__init__(plan, [DenseCoder() for _ in plan.blocks], dtype)


class RoundingNet(SequenceNet):
    """Rounding network: ``round(k_l x) / k_l`` before every weight layer, frame by frame."""

    def __init__(self, model: nn.Module | Plan, scales: float | Sequence[float],
                 dtype: torch.dtype = torch.float64) -> None:
        plan = as_plan(model)
        self.scales = per_layer(scales, len(plan.blocks), "scales")
        _check_positive(self.scales, "scales")
        super().__init__(plan, [RoundCoder(k) for k in self.scales], dtype)


class SigmaDeltaNet(SequenceNet):
    """Sigma-delta network: delta -> herd (scale k_l) -> W -> sigma -> bias once -> post-ops."""

    def __init__(self, model: nn.Module | Plan, scales: float | Sequence[float],
                 dtype: torch.dtype = torch.float64) -> None:
        plan = as_plan(model)
        self.scales = per_layer(scales, len(plan.blocks), "scales")
        _check_positive(self.scales, "scales")
        super().__init__(plan, [HerdCoder(k) for k in self.scales], dtype)


class ThresholdNet(SequenceNet):
    """Send-on-threshold baseline: delta against the last sent value, only where it is large."""

    def __init__(self, model: nn.Module | Plan, threshold: float | Sequence[float],
                 dtype: torch.dtype = torch.float64) -> None:
        plan = as_plan(model)
        self.thresholds = per_layer(threshold, len(plan.blocks), "threshold")
        super().__init__(plan, [ThresholdCoder(th) for th in self.thresholds], dtype)


def _check_positive(values: list[float], what: str) -> None:
    bad = [v for v in values if not v > 0]
    if bad:
        raise ValueError(f"{what} must be positive, got {bad}")


def convert(model: nn.Module, scales: float | Sequence[float] = 16.0,
            dtype: torch.dtype = torch.float64) -> SigmaDeltaNet:
    """Sigma-delta version of a trained ``nn.Sequential`` (one scale, or one per weight layer)."""
    return SigmaDeltaNet(model, scales, dtype)
