"""Optimizer parameter groups for variational training: log-scale parameters get a larger step."""

from __future__ import annotations

from torch import nn

from kwh.bayes.priors import Prior

# Adam moves every parameter by about lr per step whatever its gradient's scale, so a
# log-variance initialised at -9 (Louizos et al. 2017) needs ~10^4 steps at lr 1e-3 to reach
# the O(1) values a pruned group settles at: 200 epochs in the paper. A 10x step for the
# log-variances alone lets short runs get there; the means keep the user's learning rate.
# The same holds for every parameter on a log scale, such as the horseshoe's log-normal
# locations (2 ln(z0 / tau0) ~ 20 at the start): each prior lists them.
VARIANCE_LR_MULT = 10.0


def log_scale_parameter_ids(model: nn.Module) -> set[int]:
    """ids of the parameters that the model's priors declare as living on a log scale."""
    out = set()
    for m in model.modules():
        if isinstance(m, Prior):
            out.update(id(getattr(m, n)) for n in m.log_scale_parameters)
    return out


def param_groups(model: nn.Module, lr: float, variance_lr_mult: float = VARIANCE_LR_MULT) -> list[dict]:
    """Two Adam groups: weights and means at ``lr``, log-scale parameters at ``lr * mult``."""
    if lr <= 0 or variance_lr_mult <= 0:
        raise ValueError(f"learning rates must be positive, got lr={lr}, mult={variance_lr_mult}")
    fast = log_scale_parameter_ids(model)
    var, rest = [], []
    for p in model.parameters():
        if p.requires_grad:
            (var if id(p) in fast else rest).append(p)
    groups = [{"params": rest, "lr": lr, "name": "weights"}]
    if var:
        groups.append({"params": var, "lr": lr * variance_lr_mult, "name": "log-variances"})
    return groups
