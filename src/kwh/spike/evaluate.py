"""Side-by-side evaluation: dense, rounding, sigma-delta and send-on-threshold on the same frames."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from torch import Tensor, nn

from .nets import DenseFrameNet, RoundingNet, SequenceNet, SigmaDeltaNet, ThresholdNet
from .plan import GraphPlan, Plan, as_plan
from .result import SpikeRun
from .scales import train_scales

__all__ = ["Row", "SweepPoint", "summarize", "compare", "sweep_lambda"]


@dataclass
class Row:
    """One network's accuracy and work per frame (per example) on a set of sequences."""

    name: str
    op_kind: str               # "mac" or "add"
    accuracy: float | None     # against labels, all frames
    agreement: float           # arg-max equal to the dense network's, all frames
    first_frame: float         # ops on frame 1
    steady_state: float        # mean ops on frames 2..T
    mean_per_frame: float      # mean ops over all T frames
    steady_state_nonzero: float  # as steady_state, counting only nonzero weights
    dense_macs: float          # exact dense MACs per frame (same network, for ratios)

    @property
    def steady_saving(self) -> float:
        """Dense MACs per frame divided by this network's steady-state ops per frame."""
        return self.dense_macs / max(self.steady_state, 1e-12)

    @property
    def mean_saving(self) -> float:
        """Dense MACs per frame divided by this network's mean ops per frame."""
        return self.dense_macs / max(self.mean_per_frame, 1e-12)

    def as_dict(self) -> dict:
        """Plain dict with the savings included (for CSV/JSON)."""
        return {**asdict(self), "steady_saving": self.steady_saving,
                "mean_saving": self.mean_saving}


@dataclass
class SweepPoint:
    """Scales learnt for one lambda and the sigma-delta network's row with them."""

    lam: float
    scales: list[float]
    row: Row


def summarize(name: str, run: SpikeRun, dense: SpikeRun, labels: Tensor | None) -> Row:
    """Row for ``run`` measured against the dense network's run ``dense``."""
    return Row(name, run.op_kind, None if labels is None else run.accuracy(labels),
               run.agreement(dense), run.first_frame(), run.steady_state(),
               run.mean_per_frame(), run.steady_state(nonzero=True), run.dense_per_frame())


def compare(model: nn.Module | Plan | GraphPlan, sequences: Tensor, labels: Tensor | None = None, *,
            scales: float | Sequence[float] = 16.0, threshold: float | Sequence[float] = 0.05,
            batch_size: int | None = 256,
            progress: Callable[[int, int], None] | None = None) -> list[Row]:
    """Rows for dense, rounding, sigma-delta and send-on-threshold on ``sequences`` (T, B, ...).

    The B sequences run in batches of ``batch_size`` through all four networks; after each
    batch ``progress(done, B)`` is called with the sequences done, when given.
    """
    plan = as_plan(model)
    nets: list[tuple[str, SequenceNet]] = [
        ("dense", DenseFrameNet(plan)),
        ("rounding", RoundingNet(plan, scales)),
        ("sigma-delta", SigmaDeltaNet(plan, scales)),
        ("send-on-threshold", ThresholdNet(plan, threshold)),
    ]
    whole = batch_size is None or sequences.dim() < 2  # run() checks the shape itself
    batches = [sequences] if whole else sequences.split(batch_size, dim=1)  # (T, b, ...) each
    parts: list[list[SpikeRun]] = [[] for _ in nets]
    done = 0
    for batch in batches:
        for runs, (_, net) in zip(parts, nets):
            runs.append(net.run(batch))
        done += batch.shape[1]
        if progress is not None:
            progress(done, sequences.shape[1])
    runs = [r[0] if len(r) == 1 else SpikeRun.cat(r) for r in parts]
    return [summarize(name, run, runs[0], labels) for (name, _), run in zip(nets, runs)]


def sweep_lambda(model: nn.Module | Plan | GraphPlan, train_sequences: Tensor,
                 eval_sequences: Tensor, labels: Tensor | None, lambdas: Sequence[float], *,
                 batch_size: int | None = 256, **train_kw) -> list[SweepPoint]:
    """Train scales for every lambda and trace sigma-delta accuracy against additions."""
    plan = as_plan(model)
    dense = DenseFrameNet(plan).run(eval_sequences, batch_size)
    points = []
    for lam in lambdas:
        scales = train_scales(plan, train_sequences, lam, **train_kw)
        run = SigmaDeltaNet(plan, scales).run(eval_sequences, batch_size)
        points.append(SweepPoint(float(lam), scales, summarize("sigma-delta", run, dense, labels)))
    return points

