"""Optimizer parameter groups for variational training: log-scale parameters get a larger step."""

from __future__ import annotations

from torch import nn

from kwh.bayes.priors import Prior

# Adam moves every parameter by about lr per step whatever its gradient's scale, so a
# log-variance initialised at -9 (Louizos et al. 2017) needs ~10^4 steps at lr 1e-3 to reach
# the O(1) values a pruned group settles at: 200 epochs in the paper. A larger step for the
# parameters on a log scale (log-variances, the horseshoe's log-normal locations, which start
# near 2 ln(z0 / tau0) ~ 20) lets shorter runs get there; the means keep the user's lr. Each
# prior says which of its parameters live on a log scale and which multiplier suits it
# (chosen by ablation, benchmarks/results/ablations/): Sparse VD prunes through its means
# and keeps its 1x step; the group priors take 10x.


def log_scale_parameters(model: nn.Module) -> dict[int, float]:
    """id of each log-scale parameter of the model's priors -> its prior's lr multiplier."""
    out = {}
    for m in model.modules():
        if isinstance(m, Prior):
            out.update((id(getattr(m, n)), m.log_scale_lr_mult) for n in m.log_scale_parameters)
    return out


def param_groups(model: nn.Module, lr: float, variance_lr_mult: float | None = None) -> list[dict]:
    """Adam groups: weights and means at ``lr``; log-scale parameters at ``lr * mult``.

    ``variance_lr_mult`` None: each prior's own multiplier (one group per multiplier).
    """
    if lr <= 0 or (variance_lr_mult is not None and variance_lr_mult <= 0):
        raise ValueError(f"learning rates must be positive, got lr={lr}, mult={variance_lr_mult}")
    fast = log_scale_parameters(model)
    by_mult: dict[float, list] = {}
    rest = []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        if id(p) in fast:
            mult = fast[id(p)] if variance_lr_mult is None else variance_lr_mult
            by_mult.setdefault(float(mult), []).append(p)
        else:
            rest.append(p)
    groups = [{"params": rest, "lr": lr, "name": "weights"}]
    for mult, params in sorted(by_mult.items()):
        groups.append({"params": params, "lr": lr * mult, "name": f"log-scales x{mult:g}"})
    return groups
