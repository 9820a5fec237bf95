"""Bayesian layers: local reparameterization against explicit weight sampling, bayesify_, safety."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import kwh
from kwh.bayes import (
    BayesConv2d,
    BayesLinear,
    GroupHorseshoe,
    GroupNJ,
    LogUniform,
    bayes_layers,
    prior_config,
    sampling,
)
from kwh.bayes.priors import expand_group
from kwh.models import lenet5, lenet300

PRIORS = ["log-uniform", "group-nj", "group-horseshoe"]
R = 40_000  # samples per moment test


def _widen(prior):
    """Give the posterior visible variances so the moment test has something to measure."""
    with torch.no_grad():
        for name, p in prior.named_parameters():
            if "log_var" in name or "log_sigma2" in name:
                p.copy_(torch.empty_like(p).uniform_(-3.0, -1.0))
        if isinstance(prior, GroupHorseshoe):
            prior.sa_mu.fill_(-1.0)
            prior.sb_mu.fill_(0.5)
            prior.a_mu.uniform_(-0.5, 0.5)
            prior.b_mu.uniform_(-0.5, 0.5)


def _explicit_weights(prior, n):
    """n weight draws from q(W) directly: z from q(z), then w~ from q(w~ | z) (the oracle)."""
    mu, s2 = prior.conditional()
    w = mu + s2.sqrt() * torch.randn(n, *mu.shape, dtype=mu.dtype)  # (n, *W)
    if isinstance(prior, LogUniform):
        return w, None
    if isinstance(prior, GroupNJ):
        z = prior.z_mu + (0.5 * prior.z_log_var).exp() * torch.randn(n, prior.n_groups, dtype=mu.dtype)
    else:  # horseshoe: log z_i = 0.5 (log sa + log sb + log a_i + log b_i), each factor log-normal
        def ln(m, lv, shape):
            return m + (0.5 * lv).exp() * torch.randn(*shape, dtype=mu.dtype)
        log_s = 0.5 * (ln(prior.sa_mu, prior.sa_log_var, (n, 1)) + ln(prior.sb_mu, prior.sb_log_var, (n, 1)))
        log_g = 0.5 * (ln(prior.a_mu, prior.a_log_var, (n, prior.n_groups))
                       + ln(prior.b_mu, prior.b_log_var, (n, prior.n_groups)))
        z = (log_s + log_g).exp()
    return w, z


def _assert_same_moments(a, b):
    """Two sample sets (R, D) have equal mean and variance, within 6 standard errors."""
    n = a.shape[0]
    ma, mb = a.mean(0), b.mean(0)
    va, vb = a.var(0), b.var(0)
    se_m = ((va + vb) / n).sqrt()
    assert ((ma - mb).abs() <= 6 * se_m + 1e-6).all(), (ma, mb)
    # var of a sample variance ~ 2 s^4 / n for near-Gaussian data; allow heavier tails
    se_v = (va + vb) * math.sqrt(2.0 / n)
    assert ((va - vb).abs() <= 8 * se_v + 1e-6).all(), (va, vb)


@pytest.mark.parametrize("prior", PRIORS)
def test_linear_local_reparameterization_matches_weight_sampling(prior):
    layer = BayesLinear(5, 3, prior=prior_config(prior)).double()
    _widen(layer.prior)
    layer.train()
    x = torch.randn(1, 5, dtype=torch.float64)
    with torch.no_grad():
        lrt = layer(x.expand(R, 5))  # (R, 3): fresh noise per example
        w, z = _explicit_weights(layer.prior, R)  # (R, 3, 5), (R, 5)
        xz = x.expand(R, 5) if z is None else x * z
        explicit = torch.einsum("ri,roi->ro", xz, w) + layer.bias
    _assert_same_moments(lrt, explicit)


@pytest.mark.parametrize("prior", PRIORS)
def test_conv_local_reparameterization_matches_weight_sampling(prior):
    layer = BayesConv2d(2, 3, 3, stride=2, padding=1, prior=prior_config(prior)).double()
    _widen(layer.prior)
    layer.train()
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    n = 8_000
    with torch.no_grad():
        lrt = layer(x.expand(n, -1, -1, -1)).reshape(n, -1)
        w, z = _explicit_weights(layer.prior, n)  # (n, 3, 2, 3, 3)
        b = layer.bias
        outs = []
        for r in range(n):
            y = nn.functional.conv2d(x, w[r], b, stride=2, padding=1)
            if z is not None:
                y = y * z[r][None, :, None, None]
            outs.append(y.reshape(-1))
        explicit = torch.stack(outs)
    _assert_same_moments(lrt, explicit)


@pytest.mark.parametrize("prior", PRIORS)
def test_weight_moments_match_sampled_weights(prior):
    """weight_moments(): E[w] = E[z] mu, Var[w] = E[z]^2 s2 + Var[z] mu^2 + Var[z] s2."""
    layer = BayesLinear(4, 3, prior=prior_config(prior)).double()
    _widen(layer.prior)
    with torch.no_grad():
        w, z = _explicit_weights(layer.prior, R)
        if z is not None:
            w = w * z[:, None, :]  # z scales input columns of a Linear weight
        mean, var = layer.prior.weight_moments()
    _assert_same_moments(w.reshape(R, -1), (mean + var.sqrt() * torch.randn(R, *mean.shape,
                                                                          dtype=mean.dtype)).reshape(R, -1)[:, :])


@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("factory", [lenet300, lenet5])
def test_bayesify_at_init_reproduces_the_model(prior, factory):
    model = factory().eval()
    x = torch.randn(8, 1, 28, 28)
    ref = model(x)
    report = kwh.bayesify_(model, prior)
    assert len(report.converted) == (3 if factory is lenet300 else 4)
    model.eval()
    out = model(x)
    # tiny init variances: only Sparse VD may prune (|theta| tiny) at init
    tol = 0.05 if prior == "log-uniform" else 1e-4
    assert (out - ref).abs().max() < tol
    assert torch.equal(out, model(x)), "eval mode must be deterministic"
    model.train()
    noisy = model(x)
    assert not torch.equal(noisy, model(x)), "train mode must sample"
    assert (noisy - ref).abs().max() < 1.0


def test_bayesify_keeps_batchnorm_and_reports():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    report = kwh.bayesify_(model, "group-nj")
    assert report.converted == ["0", "4"]
    assert isinstance(model[1], nn.BatchNorm2d)
    assert "1 (BatchNorm2d)" in report.left
    assert "converted 2 layers" in str(report)
    with pytest.raises(ValueError, match="already Bayesian"):
        kwh.bayesify_(model, "group-nj")


def test_unknown_prior_lists_valid_ones():
    with pytest.raises(ValueError, match="Unknown prior 'horshoe'; choose one of: log-uniform, group-nj, group-horseshoe"):
        kwh.bayesify_(lenet300(), "horshoe")


def test_prior_options_are_checked():
    with pytest.raises(ValueError, match="tau0 must be positive"):
        kwh.bayesify_(lenet300(), "group-horseshoe", tau0=0.0)
    with pytest.raises(ValueError, match="bad option"):
        kwh.bayesify_(lenet300(), "group-nj", tau0=1.0)
    model = lenet300()
    kwh.bayesify_(model, "group-horseshoe", tau0=1e-3)
    assert all(m.prior.config.tau0 == 1e-3 for _, m in bayes_layers(model))


@pytest.mark.parametrize("prior", ["group-nj", "group-horseshoe"])
def test_max_weight_var_caps_the_variance_the_layer_uses(prior):
    """The cap holds in the forward pass and in the KL: a log-variance above log(cap) acts as
    the cap itself (the reference code's clip after each step gives the same values) and gets
    no gradient; below the cap nothing changes."""
    with pytest.raises(ValueError, match="max_weight_var"):
        prior_config(prior, max_weight_var=0.0)
    torch.manual_seed(0)
    w = torch.randn(5, 7) * 0.1
    capped = BayesLinear(7, 5, prior=prior_config(prior, max_weight_var=0.04), weight=w,
                         bias_init=torch.zeros(5))
    free = BayesLinear(7, 5, prior=prior_config(prior), weight=w, bias_init=torch.zeros(5))
    free.load_state_dict(capped.state_dict())
    with torch.no_grad():
        for m in (capped, free):
            m.prior.weight_log_var[:, :3] = 1.0          # above log 0.04 = -3.22
            m.prior.weight_log_var[:, 3:] = -5.0         # below it
    _, s2 = capped.prior.conditional()
    assert torch.allclose(s2[:, :3], torch.full((5, 3), 0.04))
    assert torch.equal(s2[:, 3:], free.prior.conditional()[1][:, 3:])
    # KL of the weights equals the free prior's with the log-variances set at the cap
    with torch.no_grad():
        free.prior.weight_log_var[:, :3] = math.log(0.04)
    assert torch.allclose(capped.prior.kl_weights(), free.prior.kl_weights())
    capped.prior.kl_weights().backward()
    g = capped.prior.weight_log_var.grad
    assert torch.all(g[:, :3] == 0) and torch.all(g[:, 3:] != 0)


@pytest.mark.parametrize("prior", PRIORS)
def test_no_nan_at_extreme_parameters(prior):
    """Log of zero, huge or tiny variances: forward, KL and gradients stay finite (clamps)."""
    model = lenet5()
    kwh.bayesify_(model, prior)
    for _, layer in bayes_layers(model):
        with torch.no_grad():
            for name, p in layer.prior.named_parameters():
                if "log" in name:
                    p.copy_(torch.where(torch.rand_like(p) < 0.5, -1e4, 1e4) if p.dim() else torch.tensor(1e4))
                elif name in ("theta", "weight_mu"):
                    p.zero_()
    model.train()
    x = torch.randn(4, 1, 28, 28)
    loss = kwh.free_energy(model, model(x).logsumexp(1).mean(), n_data=100)
    loss.backward()
    assert torch.isfinite(loss)
    for p in model.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()
    model.eval()
    assert torch.isfinite(model(x)).all()


def test_sampling_context_draws_in_eval_mode():
    model = lenet300()
    kwh.bayesify_(model, "group-nj")
    model.eval()
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(model(x), model(x))
    with sampling(model):
        assert not torch.equal(model(x), model(x))
    assert torch.equal(model(x), model(x))


def test_keep_mask_shapes_and_threshold_override():
    lin = BayesLinear(6, 4, prior=prior_config("group-nj"))
    conv = BayesConv2d(2, 5, 3, prior=prior_config("group-nj"))
    sv = BayesLinear(6, 4, prior=prior_config("log-uniform"))
    assert lin.keep_mask().shape == (6,)  # input units
    assert conv.keep_mask().shape == (5,)  # output filters
    assert sv.keep_mask().shape == (4, 6)  # per weight
    lin.threshold = -9.0  # below every log alpha: everything pruned
    assert not lin.keep_mask().any()
    w, _ = lin.eval_weight_bias()
    assert torch.count_nonzero(w) == 0


def test_group_mask_zeroes_whole_groups_in_eval():
    conv = BayesConv2d(2, 4, 3, prior=prior_config("group-horseshoe")).eval()
    with torch.no_grad():
        conv.prior.a_log_var[1] = 2.0  # a broad scale for filter 1: log alpha above threshold
    keep = conv.keep_mask()
    assert keep.tolist() == [True, False, True, True]
    y = conv(torch.randn(2, 2, 6, 6))
    assert torch.count_nonzero(y[:, 1]) == 0  # bias scaled by the mask as well
    assert torch.count_nonzero(y[:, 0]) > 0
    g = expand_group(keep.float(), conv.prior.weight_shape, 0)
    assert g.shape == (4, 1, 1, 1)


def test_free_energy_and_warmup():
    model = lenet300()
    kwh.bayesify_(model, "log-uniform")
    nll = torch.tensor(0.5)
    kl = kwh.kl_divergence(model)
    assert torch.allclose(kwh.free_energy(model, nll, 1000, 0.5), nll + 0.5 * kl / 1000)
    assert kwh.free_energy(model, nll, 1000, 0.0) is nll
    w = kwh.KLWarmup(5, 20)
    assert [w(e) for e in (0, 4.9, 5, 12.5, 20, 30)] == [0.0, 0.0, 0.0, 0.5, 1.0, 1.0]
    with pytest.raises(ValueError):
        kwh.KLWarmup(5, 2)
    with pytest.raises(ValueError, match="no Bayesian layers"):
        kwh.free_energy(lenet300(), nll, 10, 1.0)
    with pytest.raises(ValueError, match="n_data"):
        kwh.free_energy(model, nll, 0, 1.0)
