"""Closed-form KL terms shared by the priors, in one place (each is tested against Monte Carlo)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Molchanov, Ashukha, Vetrov 2017, eq. 14: -KL(q || log-uniform) ~ k1 sigmoid(k2 + k3 log a)
#   - 0.5 softplus(-log a) - k1, for q(w) = N(theta, a theta^2).
K1, K2, K3 = 0.63576, 1.87320, 1.48695
LOG_ALPHA_CLIP = 8.0
_LN2 = math.log(2.0)


def kl_log_uniform(log_alpha: Tensor, clip: float = LOG_ALPHA_CLIP) -> Tensor:
    """Elementwise KL(N(theta, alpha theta^2) || log-uniform), Sparse VD approximation.

    log alpha is clipped to [-clip, clip] (Sparse VD: 8). Below the clip the KL has no
    gradient, so a posterior that starts there (BC-GNJ's reference init, log alpha = -9)
    needs a wider clip to feel the prior at all.
    """
    la = log_alpha.clamp(-clip, clip)
    neg_kl = K1 * torch.sigmoid(K2 + K3 * la) - 0.5 * torch.nn.functional.softplus(-la) - K1
    return -neg_kl


def kl_std_normal(mean: Tensor, log_var: Tensor) -> Tensor:
    """Elementwise KL(N(mean, exp(log_var)) || N(0, 1)) = 0.5 (-log s2 + s2 + mu^2 - 1)."""
    return 0.5 * (-log_var + log_var.exp() + mean.pow(2) - 1.0)


def kl_lognormal_gamma_half(m: Tensor, log_v: Tensor, rate: float) -> Tensor:
    """KL(LogNormal(m, v) || Gamma(shape 1/2, rate r)); Louizos et al. 2017, appendix (lnG(1/2) cancels).

    = r exp(m + v/2) - 0.5 ln r - 0.5 (m + ln v + 1 + ln 2)
    """
    v = log_v.exp()
    return rate * torch.exp(m + 0.5 * v) - 0.5 * math.log(rate) - 0.5 * (m + log_v + 1.0 + _LN2)


def kl_lognormal_invgamma_half(m: Tensor, log_v: Tensor) -> Tensor:
    """KL(LogNormal(m, v) || InvGamma(shape 1/2, scale 1)) = exp(-m + v/2) - 0.5 (-m + ln v + 1 + ln 2)."""
    v = log_v.exp()
    return torch.exp(-m + 0.5 * v) - 0.5 * (-m + log_v + 1.0 + _LN2)
