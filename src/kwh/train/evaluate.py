"""Per-epoch figures: test error and NLL, what each Bayesian layer keeps, its log-alpha spread."""

from __future__ import annotations

import contextlib
import logging
import random

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kwh.bayes import bayes_layers, kl_divergence, recalibrate_batchnorm
from kwh.errors import KwhError

log = logging.getLogger("kwh.train")
QUANTILES = {"min": 0.0, "q10": 0.1, "median": 0.5, "q90": 0.9, "max": 1.0}

__all__ = ["test_metrics", "layer_stats", "pruned_architecture", "QUANTILES",
           "recalibrate_from_inputs", "BN_CALIBRATION"]


# Training inputs BatchNorm's statistics are re-estimated from (recalibrate_from_inputs).
BN_CALIBRATION = 2000


def recalibrate_from_inputs(model: nn.Module, x: torch.Tensor, batch_size: int = 1000,
                            device: torch.device | str = "cpu") -> int:
    """kwh.bayes.recalibrate_batchnorm on the first BN_CALIBRATION rows of ``x`` (training
    inputs), ``batch_size`` at a time on ``device``; the number of BatchNorm layers (0: none,
    and nothing is run)."""
    x = x[:BN_CALIBRATION]
    return recalibrate_batchnorm(model, (x[i:i + batch_size].to(device)
                                         for i in range(0, len(x), batch_size)))


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


@contextlib.contextmanager
def _rng_untouched():
    """Restore the torch (CPU), numpy and python RNG states on exit."""
    state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(state[0])
        np.random.set_state(state[1])
        random.setstate(state[2])


@torch.no_grad()
def pruned_architecture(model: nn.Module, input_shape: tuple[int, ...]) -> str | None:
    """Units kept per layer after kwh.compress propagates the masks (the paper's '5-10-76-16').

    Differs from keep_mask counts where a layer's units are dead because the next layer reads
    none of their outputs (or the reverse). None, with a warning, if compress cannot handle
    the model. The model and every RNG stream are left as they were.
    """
    import kwh.compress

    with _rng_untouched():
        try:
            small = kwh.compress(model, kwh.compress.CompressConfig(
                input_shape=tuple(input_shape), quantize=False))
        except KwhError as e:
            log.warning("no pruned architecture in the log: %s", e)
            return None
    return small.kwh_summary["architecture"]
