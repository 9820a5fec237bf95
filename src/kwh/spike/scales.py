"""Learn one scale ``k_l`` per weight layer: accuracy against additions, weights fixed.

O'Connor and Welling 2016, section 5: minimise ``error(rounded vs unrounded output) +
lambda * sum_l |s_l|_1 * fanout_l`` over ``log k_l`` with a straight-through estimator for
the rounding. The sigma-delta spikes need no simulation: with herding,
``s_t = round(k a_t) - round(k a_{t-1})`` exactly (see :func:`kwh.spike.quantize.herd`), so
the rounding network run over the frames gives both the output and the spike count.
The cost is divided by the dense MACs per frame, so ``lambda`` trades error against the
fraction of dense work.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .fanout import fanout_map
from .nets import per_layer
from .plan import GraphPlan, Plan, as_plan, input_shapes, reference_forward
from .quantize import ste_round

__all__ = ["train_scales", "relaxed_cost", "ERRORS"]

ERRORS = ("kl", "mse")


def _error(out: Tensor, ref: Tensor, kind: str) -> Tensor:
    """Mismatch of rounded ``out`` against the unrounded ``ref``, mean over the batch."""
    if kind == "kl":  # KL(p_ref || p_out) of the class distributions
        return F.kl_div(out.flatten(1).log_softmax(-1), ref.flatten(1).log_softmax(-1),
                        log_target=True, reduction="batchmean")
    return F.mse_loss(out, ref)


def relaxed_cost(plan: Plan | GraphPlan, x: Tensor, log_k: Tensor,
                 fans: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Rounding-network outputs (T, B, *out) and sigma-delta additions per frame (T, B).

    Forward values are exact (integer spike counts); gradients use ``round(v) ~ v`` for the
    outputs and ``|s_t| ~ |k (a_t - a_{t-1})|`` for the count.
    """
    outs, costs = [], []
    prev_v: list[Tensor | float] = [0.0] * len(plan.blocks)
    prev_q: list[Tensor | float] = [0.0] * len(plan.blocks)
    for t in range(x.shape[0]):
        cost = [x.new_zeros(x.shape[1])]

        def layer(l: int, b, a: Tensor) -> Tensor:
            k = log_k[l].exp()
            v = k * a
            q = ste_round(v)                                  # round(k a_t), STE
            dv, dq = (v - prev_v[l]).abs(), (q - prev_q[l]).abs()
            spikes = dv + (dq - dv).detach()                  # |s_t| forward, |k da| backward
            cost[0] = cost[0] + (spikes * fans[l]).flatten(1).sum(1)
            prev_v[l], prev_q[l] = v, q
            return b.add_bias(b.linear(q / k))

        outs.append(plan.frame(x[t], layer))
        costs.append(cost[0])
    return torch.stack(outs), torch.stack(costs)


def train_scales(model: nn.Module | Plan | GraphPlan, sequences: Tensor, lam: float, *,
                 init: float | Sequence[float] = 16.0, steps: int = 100, lr: float = 0.05,
                 batch_size: int = 16, error: str = "kl", seed: int = 0,
                 progress: Callable[[int, int], None] | None = None) -> list[float]:
    """Scales ``k_l`` trained on ``sequences`` (T, B, *frame) for the trade-off ``lam``;
    ``progress(step, steps)`` is called after each optimizer step, when given."""
    if error not in ERRORS:
        raise ValueError(f"Unknown error {error!r}; choose one of: {', '.join(ERRORS)}")
    if lam < 0:
        raise ValueError(f"lambda must be >= 0, got {lam!r}")
    plan = as_plan(model).to(torch.float32)
    for b in plan.blocks:
        b.layer.requires_grad_(False)
    x = sequences.to(torch.float32)
    shapes = input_shapes(plan, x[0, :1])
    fans = [fanout_map(b.layer, s).to(torch.float32) for b, s in zip(plan.blocks, shapes)]
    dense = float(sum(f.sum() for f in fans))
    init_k = per_layer(init, len(plan.blocks), "init")
    log_k = torch.tensor(init_k, dtype=torch.float32).log().requires_grad_(True)
    opt = torch.optim.Adam([log_k], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = torch.randperm(x.shape[1], generator=gen)[:batch_size]
        xb = x[:, idx]                                        # (T, b, *frame)
        with torch.no_grad():
            ref = torch.stack([reference_forward(plan, f) for f in xb])
        out, cost = relaxed_cost(plan, xb, log_k, fans)
        loss = _error(out.flatten(0, 1), ref.flatten(0, 1), error) + lam * cost.mean() / dense
        opt.zero_grad()
        loss.backward()
        opt.step()
        if progress is not None:
            progress(step + 1, steps)
    return [float(v) for v in log_k.detach().exp()]

