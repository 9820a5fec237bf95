"""Per-frame outputs and exact operation counts of one run over a batch of sequences."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["SpikeRun"]


@dataclass
class SpikeRun:
    """Outputs and op counts of a network run on sequences of T frames, batch B, L layers.

    ``ops[l, t, b]`` is the work of weight layer l on frame t of sequence b: additions for
    integer spikes (``op_kind == "add"``), multiply-accumulates otherwise, counted from the
    structural fan-out; ``ops_nonzero`` counts only connections through nonzero weights.
    ``dense_macs[l]`` is the exact MAC count of one dense evaluation (kernel taps inside the
    input only), ``dense_macs_naive[l]`` the shape formula ``out * in * kh * kw``.
    Bias additions and pooling/ReLU evaluations are counted on neither side.
    """

    outputs: Tensor            # (T, B, *out)
    ops: Tensor                # (L, T, B) float64
    ops_nonzero: Tensor        # (L, T, B) float64
    dense_macs: Tensor         # (L,) float64
    dense_macs_nonzero: Tensor  # (L,) float64
    dense_macs_naive: Tensor   # (L,) float64
    layer_names: list[str]
    op_kind: str

    @staticmethod
    def cat(runs: list[SpikeRun]) -> SpikeRun:
        """Join runs over disjoint batches of sequences along the batch axis."""
        r = runs[0]
        return SpikeRun(torch.cat([x.outputs for x in runs], 1), torch.cat([x.ops for x in runs], 2),
                        torch.cat([x.ops_nonzero for x in runs], 2), r.dense_macs,
                        r.dense_macs_nonzero, r.dense_macs_naive, r.layer_names, r.op_kind)

    def per_frame(self, nonzero: bool = False) -> Tensor:
        """Ops per frame, summed over layers, averaged over the batch: (T,)."""
        ops = self.ops_nonzero if nonzero else self.ops
        return ops.sum(0).mean(1)

    def first_frame(self, nonzero: bool = False) -> float:
        """Mean ops of the first frame of a sequence."""
        return float(self.per_frame(nonzero)[0])

    def steady_state(self, nonzero: bool = False) -> float:
        """Mean ops per frame after the first (all frames if T == 1)."""
        f = self.per_frame(nonzero)
        return float(f[1:].mean() if f.numel() > 1 else f[0])

    def mean_per_frame(self, nonzero: bool = False) -> float:
        """Mean ops per frame over the whole sequence, first frame included."""
        return float(self.per_frame(nonzero).mean())

    def dense_per_frame(self, nonzero: bool = False, naive: bool = False) -> float:
        """MACs of one dense frame-by-frame evaluation (exact, nonzero-weight or naive)."""
        m = self.dense_macs_naive if naive else (self.dense_macs_nonzero if nonzero
                                                 else self.dense_macs)
        return float(m.sum())

    def predictions(self) -> Tensor:
        """Arg-max class per frame: (T, B)."""
        return self.outputs.flatten(2).argmax(-1)

    def accuracy(self, labels: Tensor) -> float:
        """Fraction of frames whose prediction equals ``labels`` ((B,) or (T, B))."""
        pred = self.predictions()
        labels = labels.to(pred.device)
        if labels.dim() == 1:
            labels = labels.expand_as(pred)
        return float((pred == labels).to(torch.float64).mean())

    def agreement(self, other: SpikeRun) -> float:
        """Fraction of frames where the arg-max equals that of ``other``."""
        return float((self.predictions() == other.predictions()).to(torch.float64).mean())
