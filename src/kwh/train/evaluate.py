"""Per-epoch figures: test error and NLL, what each Bayesian layer keeps, its log-alpha spread."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kwh.bayes import bayes_layers, kl_divergence

QUANTILES = {"min": 0.0, "q10": 0.1, "median": 0.5, "q90": 0.9, "max": 1.0}

__all__ = ["test_metrics", "layer_stats", "QUANTILES"]


@torch.no_grad()
def test_metrics(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                 device: torch.device) -> dict:
    """Error rate (%) and mean NLL of the deterministic (eval mode) model on (x, y)."""
    was_training = model.training
    model.eval()
    wrong, nll = 0, 0.0
    try:
        for i in range(0, len(y), batch_size):
            xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
            logits = model(xb)  # (B, classes)
            nll += F.cross_entropy(logits, yb, reduction="sum").item()
            wrong += (logits.argmax(1) != yb).sum().item()
    finally:
        model.train(was_training)
    return {"test_error": 100.0 * wrong / len(y), "test_nll": nll / len(y)}


@torch.no_grad()
def layer_stats(model: nn.Module) -> dict:
    """Per Bayesian layer: groups (or weights) kept by keep_mask, their total, log-alpha quantiles."""
    alive, total, quantiles = {}, {}, {}
    for name, layer in bayes_layers(model):
        mask = layer.keep_mask()
        alive[name], total[name] = int(mask.sum().item()), int(mask.numel())
        la = layer.prior.log_alpha().detach().double().cpu().numpy().ravel()
        qs = np.quantile(la, list(QUANTILES.values()))
        quantiles[name] = {k: round(float(v), 4) for k, v in zip(QUANTILES, qs)}
    return {"alive": alive, "total": total, "log_alpha": quantiles,
            "kl": float(kl_divergence(model).item()) if alive else None}
