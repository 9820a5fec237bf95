"""Every KL closed form against a Monte Carlo estimate of the same KL, over a grid of parameters."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Gamma, LogNormal, Normal, kl_divergence

from kwh.bayes.kl import (
    kl_log_uniform,
    kl_lognormal_gamma_half,
    kl_lognormal_invgamma_half,
    kl_std_normal,
)

N_MC = 400_000


def _mc_kl(q, log_p, n=N_MC):
    """Monte Carlo KL(q || p) = E_q[log q - log p], with its standard error."""
    x = q.sample((n,))
    d = q.log_prob(x) - log_p(x)
    return d.mean().item(), d.std().item() / math.sqrt(n)


def _inv_gamma_half_log_prob(x):
    # InvGamma(1/2, 1): log p = -lnG(1/2) - 1.5 log x - 1/x
    return -0.5 * math.log(math.pi) - 1.5 * torch.log(x) - 1.0 / x


@pytest.mark.parametrize("m", [-2.0, 0.0, 1.5])
@pytest.mark.parametrize("v", [0.05, 0.5, 2.0])
@pytest.mark.parametrize("rate", [1.0, 4.0, 100.0])
def test_lognormal_vs_gamma_half(m, v, rate):
    q = LogNormal(torch.tensor(m, dtype=torch.float64), torch.tensor(math.sqrt(v), dtype=torch.float64))
    p = Gamma(torch.tensor(0.5, dtype=torch.float64), torch.tensor(rate, dtype=torch.float64))
    mc, se = _mc_kl(q, p.log_prob)
    cf = kl_lognormal_gamma_half(torch.tensor(m, dtype=torch.float64),
                                 torch.tensor(math.log(v), dtype=torch.float64), rate).item()
    assert abs(cf - mc) < 5 * se + 1e-3, (cf, mc, se)


@pytest.mark.parametrize("m", [-2.0, 0.0, 1.5])
@pytest.mark.parametrize("v", [0.05, 0.5, 2.0])
def test_lognormal_vs_invgamma_half(m, v):
    q = LogNormal(torch.tensor(m, dtype=torch.float64), torch.tensor(math.sqrt(v), dtype=torch.float64))
    mc, se = _mc_kl(q, _inv_gamma_half_log_prob)
    cf = kl_lognormal_invgamma_half(torch.tensor(m, dtype=torch.float64),
                                    torch.tensor(math.log(v), dtype=torch.float64)).item()
    assert abs(cf - mc) < 5 * se + 1e-3, (cf, mc, se)


def test_gamma_rate_convention_gives_half_cauchy():
    """sqrt(a b), a ~ Gamma(1/2, rate 1/tau^2), b ~ InvGamma(1/2, 1), is half-Cauchy with scale tau."""
    tau, n = 0.3, 400_000
    g = torch.Generator().manual_seed(1)
    a = torch._standard_gamma(torch.full((n,), 0.5, dtype=torch.float64), generator=g) * tau**2
    b = 1.0 / torch._standard_gamma(torch.full((n,), 0.5, dtype=torch.float64), generator=g)
    s = (a * b).sqrt()
    # Half-Cauchy(tau) quantiles: tau * tan(pi q / 2)
    for q in (0.25, 0.5, 0.75):
        assert abs(torch.quantile(s, q).item() - tau * math.tan(math.pi * q / 2)) < 0.02 * tau / (1 - q)


@pytest.mark.parametrize("mu", [-1.0, 0.0, 0.3, 2.0])
@pytest.mark.parametrize("log_var", [-6.0, -1.0, 0.0, 1.0])
def test_std_normal_kl(mu, log_var):
    m, lv = torch.tensor(mu, dtype=torch.float64), torch.tensor(log_var, dtype=torch.float64)
    q = Normal(m, (0.5 * lv).exp())
    p = Normal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    mc, se = _mc_kl(q, p.log_prob)
    cf = kl_std_normal(m, lv).item()
    assert abs(cf - mc) < 5 * se + 1e-3
    assert abs(cf - kl_divergence(q, p).item()) < 1e-9


def test_group_nj_kl_w_is_independent_of_z():
    """KL(N(z mu, z^2 s2) || N(0, z^2)) does not depend on z: check by Monte Carlo at several z."""
    mu, s2 = torch.tensor(0.7, dtype=torch.float64), torch.tensor(0.2, dtype=torch.float64)
    cf = kl_std_normal(mu, s2.log()).item()
    for z in (0.01, 0.5, 3.0):
        q = Normal(z * mu, z * s2.sqrt())
        p = Normal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(z, dtype=torch.float64))
        mc, se = _mc_kl(q, p.log_prob)
        assert abs(cf - mc) < 5 * se + 1e-3


def test_log_uniform_kl_matches_monte_carlo_up_to_its_constant():
    """Sparse VD's approximation vs the exact KL up to a constant (Kingma et al. 2015, eq. 8):

    KL(N(t, a t^2) || log-uniform) = C - 0.5 log a + E_{e ~ N(1, a)} log|e|. The approximation
    fixes C so that KL -> 0 as a -> inf; the residual must be one constant (Molchanov et al.
    report a maximum error of about 0.01 nats over the range).
    """
    g = torch.Generator().manual_seed(2)
    eps = torch.randn(2_000_000, generator=g, dtype=torch.float64)
    residuals = []
    for la in torch.linspace(-6, 6, 25, dtype=torch.float64):
        alpha = la.exp()
        exact_wo_c = -0.5 * la + torch.log((1 + alpha.sqrt() * eps).abs()).mean()
        residuals.append((kl_log_uniform(la) - exact_wo_c).item())
    r = torch.tensor(residuals)
    assert (r - r.mean()).abs().max() < 0.015, r
    # and it vanishes for large alpha, tends to -0.5 log alpha growth for small alpha
    assert kl_log_uniform(torch.tensor(8.0)).item() < 0.01
    assert kl_log_uniform(torch.tensor(-6.0)).item() > kl_log_uniform(torch.tensor(-3.0)).item()


def test_log_uniform_kl_clips_log_alpha():
    la = torch.tensor([-1e4, -8.0, 8.0, 1e4])
    k = kl_log_uniform(la)
    assert torch.isfinite(k).all()
    assert k[0] == k[1] and k[2] == k[3]
