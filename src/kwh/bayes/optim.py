"""Optimizer parameter groups for variational training: log-variances get a larger step."""

from __future__ import annotations

from torch import nn

# Adam moves every parameter by about lr per step whatever its gradient's scale, so a
# log-variance initialised at -9 (Louizos et al. 2017) needs ~10^4 steps at lr 1e-3 to reach
# the O(1) values a pruned group settles at: 200 epochs in the paper. A 10x step for the
# log-variances alone lets short runs get there; the means keep the user's learning rate.
VARIANCE_LR_MULT = 10.0


def is_variance_parameter(name: str) -> bool:
    """True for the log-variance parameters of the variational posterior."""
    leaf = name.rsplit(".", 1)[-1]
    return leaf.endswith("log_var") or leaf == "log_sigma2"


def param_groups(model: nn.Module, lr: float, variance_lr_mult: float = VARIANCE_LR_MULT) -> list[dict]:
    """Two Adam groups: the model's weights and means at ``lr``, log-variances at ``lr * mult``."""
    if lr <= 0 or variance_lr_mult <= 0:
        raise ValueError(f"learning rates must be positive, got lr={lr}, mult={variance_lr_mult}")
    var, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (var if is_variance_parameter(name) else rest).append(p)
    groups = [{"params": rest, "lr": lr, "name": "weights"}]
    if var:
        groups.append({"params": var, "lr": lr * variance_lr_mult, "name": "log-variances"})
    return groups
