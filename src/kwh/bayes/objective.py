"""The free energy (negative ELBO per data point) and the KL warm-up schedule."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kwh.bayes.layers import bayes_layers


def kl_divergence(model: nn.Module) -> Tensor:
    """Sum of KL(q || p) over every Bayesian layer of ``model``, in nats."""
    terms = [m.kl() for _, m in bayes_layers(model)]
    if not terms:
        raise ValueError("model has no Bayesian layers; call kwh.bayesify_(model, prior) first")
    return torch.stack(terms).sum()


def scaled_kl(model: nn.Module) -> Tensor:
    """Sum over the Bayesian layers of ``kl_scale * KL(q || p)``: kl_divergence when every
    layer's ``kl_scale`` is 1 (the default; kwh.bayes.scale_kl_by_compute_ changes it)."""
    terms = [m.kl() if m.kl_scale == 1.0 else m.kl() * m.kl_scale
             for _, m in bayes_layers(model)]
    if not terms:
        raise ValueError("model has no Bayesian layers; call kwh.bayesify_(model, prior) first")
    return torch.stack(terms).sum()


def free_energy(model: nn.Module, nll: Tensor, n_data: int, kl_weight: float = 1.0) -> Tensor:
    """Free energy per data point: mean NLL + kl_weight * KL / N (REFERENCES sec. 1).

    ``nll`` is the mean negative log-likelihood over the batch; ``n_data`` the training set size.
    Each layer's KL counts ``kl_scale`` times (1 unless set, e.g. by scale_kl_by_compute_:
    then the objective is a free energy with per-layer KL weights, not the ELBO itself).
    """
    if n_data <= 0:
        raise ValueError(f"n_data must be the (positive) number of training examples, got {n_data}")
    if kl_weight == 0:
        return nll
    return nll + kl_weight * scaled_kl(model) / n_data


@dataclass(frozen=True)
class KLWarmup:
    """kl_weight 0 until ``start`` epochs, then linear to 1 at ``end`` (Sparse VD: 5 -> 20)."""

    start: float = 5.0
    end: float = 20.0

    def __post_init__(self):
        if self.start < 0 or self.end < self.start:
            raise ValueError(f"warm-up needs 0 <= start <= end, got start={self.start}, end={self.end}")

    def __call__(self, epoch: float) -> float:
        """kl_weight at a (fractional) epoch."""
        if epoch < self.start:
            return 0.0
        if self.end == self.start or epoch >= self.end:
            return 1.0
        return (epoch - self.start) / (self.end - self.start)
