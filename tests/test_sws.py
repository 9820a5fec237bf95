"""Soft weight-sharing's mixture prior: density, gradients, hyper-prior and quantize_ checked
against direct formulas, torch.distributions and finite differences (float64)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import distributions as D
from torch import nn

import kwh.sws
from kwh.errors import KwhError, ModelError
from kwh.sws import MixturePrior, merge_components, mixture_weights, quantize_

PARAMS = ("means", "log_vars", "mix_logits")


def _prior(ws, n_components: int = 5, seed: int = 0) -> MixturePrior:
    """A float64 prior over ``ws`` with its parameters moved off their initial values."""
    p = MixturePrior(ws, n_components=n_components, zero_mix=0.9, init_std=0.3)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        p.means.add_(0.05 * torch.randn(p.means.shape, generator=g, dtype=torch.float64))
        p.log_vars.add_(0.5 * torch.randn(p.log_vars.shape, generator=g, dtype=torch.float64))
        p.mix_logits.add_(torch.randn(p.mix_logits.shape, generator=g, dtype=torch.float64))
    return p


def _weights(seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [0.4 * torch.randn(4, 3, generator=g, dtype=torch.float64),
            0.4 * torch.randn(6, generator=g, dtype=torch.float64)]


def _reference(p: MixturePrior, ws: list[torch.Tensor]) -> dict:
    """neg_log_prob and its gradients from the closed forms, no autograd.

    With r_ij the responsibility of component j for w_i, s = softmax(rho), lambda = 1 / v:
      d/dw_i     =  sum_j r_ij (w_i - mu_j) / v_j
      d/dmu_j    = -sum_i r_ij (w_i - mu_j) / v_j                       (j >= 1)
      d/dlogv_j  = -sum_i r_ij ((w_i - mu_j)^2 / v_j - 1) / 2 + (alpha_j - 1) - beta_j lambda_j
      d/drho_k   = -sum_i (r_ik - s_k sum_{j >= 1} r_ij)                 (k >= 1)
    """
    with torch.no_grad():
        J = p.n_components
        s = torch.exp(p.mix_logits - p.mix_logits.max())
        s = s / s.sum()
        pi = torch.cat([torch.tensor([p.zero_mix], dtype=torch.float64), (1 - p.zero_mix) * s])
        mu = torch.cat([torch.zeros(1, dtype=torch.float64), p.means])
        v = torch.exp(p.log_vars)
        shape = torch.tensor([p.zero_gamma[0]] + [p.gamma[0]] * (J - 1), dtype=torch.float64)
        rate = torch.tensor([p.zero_gamma[1]] + [p.gamma[1]] * (J - 1), dtype=torch.float64)
        lam = 1 / v
        hyper = sum(a * math.log(b) - math.lgamma(a) + (a - 1) * math.log(l) - b * l
                    for a, b, l in zip(shape.tolist(), rate.tolist(), lam.tolist()))
        value, dws = -hyper, []
        dmu = torch.zeros(J, dtype=torch.float64)
        dlv = (shape - 1) - rate * lam
        drho = torch.zeros(J - 1, dtype=torch.float64)
        for w in ws:
            x = w.reshape(-1, 1)
            dens = pi * torch.exp(-(x - mu) ** 2 / (2 * v)) / torch.sqrt(2 * math.pi * v)  # (n, J)
            total = dens.sum(1, keepdim=True)
            value -= torch.log(total).sum().item()
            r = dens / total
            dws.append((r * (x - mu) / v).sum(1).view_as(w))
            dmu -= (r * (x - mu) / v).sum(0)
            dlv -= 0.5 * (r * ((x - mu) ** 2 / v - 1)).sum(0)
            drho -= (r[:, 1:] - s * r[:, 1:].sum(1, keepdim=True)).sum(0)
    return {"value": value, "weights": dws, "means": dmu[1:], "log_vars": dlv, "mix_logits": drho}


def test_neg_log_prob_equals_the_direct_formula_and_torch_distributions():
    ws = _weights()
    p = _prior(ws)
    ref = _reference(p, ws)
    got = p.neg_log_prob(ws)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(ref["value"], rel=1e-12)
    # torch.distributions: the mixture's log density per weight, the Gamma's per precision
    log_pi, mu, log_var = p.mixture()
    mix = D.MixtureSameFamily(D.Categorical(logits=log_pi.detach()),
                              D.Normal(mu.detach(), torch.exp(0.5 * log_var.detach())))
    for w in ws:
        torch.testing.assert_close(p.log_density(w).detach(), mix.log_prob(w), rtol=1e-12,
                                   atol=1e-12)
    shape = torch.tensor([p.zero_gamma[0]] + [p.gamma[0]] * 4, dtype=torch.float64)
    rate = torch.tensor([p.zero_gamma[1]] + [p.gamma[1]] * 4, dtype=torch.float64)
    hyper = D.Gamma(shape, rate).log_prob(torch.exp(-log_var.detach())).sum()
    assert p.hyper_log_prob().item() == pytest.approx(hyper.item(), rel=1e-12)
    direct = -sum(mix.log_prob(w).sum() for w in ws) - hyper
    assert got.item() == pytest.approx(direct.item(), rel=1e-12)
    assert p(ws).item() == got.item() and p.loss(ws, 50, 0.01).item() == pytest.approx(
        0.01 * got.item() / 50, rel=1e-15)


def test_gradients_equal_the_closed_forms_and_finite_differences():
    ws = [w.clone().requires_grad_(True) for w in _weights()]
    p = _prior(ws)
    ref = _reference(p, ws)
    p.neg_log_prob(ws).backward()
    for w, d in zip(ws, ref["weights"]):
        torch.testing.assert_close(w.grad, d, rtol=1e-10, atol=1e-10)
    for name in PARAMS:
        torch.testing.assert_close(getattr(p, name).grad, ref[name], rtol=1e-10, atol=1e-10)
    # central differences of the value, element by element
    h = 1e-6
    targets = [*ws, *(getattr(p, n) for n in PARAMS)]
    grads = [*ref["weights"], *(ref[n] for n in PARAMS)]
    with torch.no_grad():
        for t, g in zip(targets, grads):
            flat, gflat = t.view(-1), g.reshape(-1)
            for k in range(flat.numel()):
                old = flat[k].item()
                flat[k] = old + h
                up = p.neg_log_prob(ws).item()
                flat[k] = old - h
                down = p.neg_log_prob(ws).item()
                flat[k] = old
                assert (up - down) / (2 * h) == pytest.approx(gflat[k].item(), rel=1e-5,
                                                              abs=1e-5)


def test_log_density_stays_finite_far_from_every_component():
    w = torch.tensor([-1e3, 0.0, 3.0, 1e3], dtype=torch.float64, requires_grad=True)
    p = _prior([w])
    lp = p.log_density(w)
    assert torch.isfinite(lp).all()
    # far out, one component dominates: log pi_j + log N(w | mu_j, v_j) of the best j
    log_pi, mu, log_var = (t.detach() for t in p.mixture())
    joint = log_pi - 0.5 * (math.log(2 * math.pi) + log_var + (1e3 - mu) ** 2 / log_var.exp())
    assert lp[-1].item() == pytest.approx(joint.max().item(), rel=1e-12)
    lp.sum().backward()
    assert torch.isfinite(w.grad).all()


def test_initial_mixture_spreads_the_means_and_fixes_the_zero_component():
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Conv1d(1, 2, 3))
    with torch.no_grad():
        model[0].weight[0, 0] = -0.9
    p = MixturePrior(model)
    assert [n for n, _ in mixture_weights(model)] == ["0.weight", "2.weight"]
    assert p.n_components == 17 and p.means.dtype == torch.float32
    top = max(model[0].weight.abs().max(), model[2].weight.abs().max()).item()
    torch.testing.assert_close(p.means.detach(), torch.linspace(-top, top, 16))
    log_pi, mu, log_var = p.mixture()
    assert mu[0].item() == 0.0 and log_pi.exp().sum().item() == pytest.approx(1.0)
    assert log_pi[0].exp().item() == pytest.approx(0.999)
    torch.testing.assert_close(log_var.detach(), torch.full((17,), 2 * math.log(0.25)))
    assert {n for n, _ in p.named_parameters()} == set(PARAMS)


def _clustered_model() -> tuple[nn.Module, MixturePrior]:
    """Weights near 0 and near +-0.5; a 5-component prior with narrow components."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        for m in (model[0], model[2]):
            centre = torch.tensor([0.0, 0.5, -0.5])[torch.randint(0, 3, m.weight.shape)]
            m.weight.copy_(centre + 0.01 * torch.randn(m.weight.shape))
    p = MixturePrior(model, n_components=5, zero_mix=0.5, init_std=0.05)
    with torch.no_grad():
        p.means.copy_(torch.tensor([-0.5, 0.25, 0.5, 0.9]))
    return model, p


def test_quantize_puts_every_weight_on_the_codebook_and_zero_on_exact_zero():
    model, p = _clustered_model()
    before = {n: w.detach().clone() for n, w in mixture_weights(model)}
    biases = [model[0].bias.detach().clone(), model[2].bias.detach().clone()]
    q = quantize_(model, p, merge_kl=0)
    assert q.codebook[0].item() == 0.0 and q.merged == 0
    assert torch.all(q.codebook[1:-1] < q.codebook[2:])  # nonzero codes in order of their means
    for name, w in mixture_weights(model):
        c = q.codes[name]
        assert c.shape == w.shape and c.dtype == torch.int64
        assert torch.equal(w.detach(), q.codebook[c])  # every weight is its code's value
        assert torch.equal(w == 0, c == 0)  # the zero component: exactly zero
        near = before[name].abs() < 0.1
        assert torch.equal(c == 0, near)  # the weights near 0 went to it, no others
    assert torch.equal(model[0].bias, biases[0]) and torch.equal(model[2].bias, biases[1])
    # the codes used: -0.5 and 0.5 (0.25 and 0.9 took no weight and have no code)
    torch.testing.assert_close(q.codebook, torch.tensor([0.0, -0.5, 0.5]))
    assert q.components == [(0,), (1,), (3,)] and q.index_bits == 1
    assert 0 < q.density() < 1


def test_merging_joins_coinciding_components_and_keeps_zero_at_zero():
    model, p = _clustered_model()
    with torch.no_grad():
        p.means[1] = 0.5  # components 2 and 3 now coincide (same mean, same variance)
        p.means[0] = 1e-4  # component 1 sits on the zero component
    groups, log_pi, mu, var = merge_components(p, 1e-2)
    assert groups == [(0, 1), (2, 3), (4,)]
    assert mu[0].item() == 0.0 and mu[1].item() == pytest.approx(0.5)
    assert log_pi.exp().sum().item() == pytest.approx(1.0)
    assert merge_components(p, 0)[0] == [(0,), (1,), (2,), (3,), (4,)]
    pi = p.mixture()[0].exp().detach()
    assert log_pi.exp()[1].item() == pytest.approx((pi[2] + pi[3]).item())
    q = quantize_(model, p)
    assert q.merged == 2 and q.components == [(0, 1), (2, 3)]
    torch.testing.assert_close(q.codebook, torch.tensor([0.0, 0.5]))
    for name, w in mixture_weights(model):
        assert torch.equal(w == 0, q.codes[name] == 0)


@pytest.mark.parametrize("kw, match", [
    (dict(n_components=1), "n_components must be an integer >= 2"),
    (dict(n_components=4.0), "n_components must be an integer >= 2"),
    (dict(zero_mix=1.0), r"zero_mix must be a finite number in \(0.0, 1.0\), got 1.0"),
    (dict(zero_mix=float("nan")), "zero_mix must be a finite number"),
    (dict(init_std=0), "init_std must be a finite number > 0.0, got 0"),
    (dict(gamma=(0.0, 1.0)), "gamma shape must be a finite number > 0.0"),
    (dict(zero_gamma=(1.0,)), r"zero_gamma must be \(shape, rate\) of a Gamma prior"),
])
def test_bad_prior_arguments_raise_clear_errors(kw, match):
    with pytest.raises(KwhError, match=match):
        MixturePrior(nn.Linear(3, 2), **kw)


def test_bad_weights_and_quantize_arguments_raise_clear_errors():
    with pytest.raises(ModelError, match="has no Linear or Conv layer"):
        MixturePrior(nn.Sequential(nn.ReLU()))
    with pytest.raises(KwhError, match="weights must be a model, a tensor or tensors"):
        MixturePrior(3.0)
    with pytest.raises(KwhError, match="floating-point tensors"):
        MixturePrior([torch.arange(3)])
    with pytest.raises(KwhError, match="largest magnitude is 0.0"):
        MixturePrior(torch.zeros(4))
    model, p = _clustered_model()
    with pytest.raises(KwhError, match="merge_kl must be a finite number >= 0"):
        quantize_(model, p, merge_kl=-1)
    with pytest.raises(KwhError, match="prior must be a kwh.sws.MixturePrior"):
        quantize_(model, "prior")
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    with pytest.raises(KwhError, match="0.weight holds non-finite weights"):
        quantize_(model, p)


def _oracle_snap(w: float, pi: list[float], mu: list[float], var: list[float]) -> float:
    """The mean of the component with the largest pi_j N(w | mu_j, var_j), by hand."""
    scores = [math.log(p) - 0.5 * math.log(2 * math.pi * v) - (w - m) ** 2 / (2 * v)
              for p, m, v in zip(pi, mu, var)]
    return mu[scores.index(max(scores))]


def test_quantize_takes_the_most_responsible_component_not_the_nearest_mean():
    # zero component pi 0.9, sigma 0.1; then N(0.5, 0.05^2) and N(-0.4, 0.3^2) with the mixing
    # logits [0, log 3]: pi = 0.025 and 0.075. The trained parameters are log sigma^2 and
    # logits; the assignment must read them as such.
    model = nn.Sequential(nn.Linear(7, 1, bias=False))
    w = torch.tensor([[0.0, 0.2, 0.3, 0.4, 0.45, -0.3, -0.9]], dtype=torch.float64)
    model = model.double()
    with torch.no_grad():
        model[0].weight.copy_(w)
    p = MixturePrior(model, n_components=3, zero_mix=0.9)
    std = [0.1, 0.05, 0.3]
    with torch.no_grad():
        f64 = dict(dtype=torch.float64)
        p.means.copy_(torch.tensor([0.5, -0.4], **f64))
        p.log_vars.copy_(torch.tensor([2 * math.log(s) for s in std], **f64))
        p.mix_logits.copy_(torch.tensor([0.0, math.log(3.0)], **f64))
    pi, mu, var = [0.9, 0.025, 0.075], [0.0, 0.5, -0.4], [s * s for s in std]
    expect = [_oracle_snap(x, pi, mu, var) for x in w.flatten().tolist()]
    # by hand (log pi_j + log N, nats): 0.3 is nearer 0.5 yet goes to 0 (-3.22 against -9.61);
    # 0.4 to 0.5 (-3.61 against -6.72 for zero); -0.3 to -0.4 (-2.36 against -3.22)
    assert expect == [0.0, 0.0, 0.0, 0.5, 0.5, -0.4, -0.4]
    nearest = [min(mu, key=lambda m: abs(x - m)) for x in w.flatten().tolist()]
    as_std = [_oracle_snap(x, pi, mu, std) for x in w.flatten().tolist()]  # sigma read as var
    assert expect != nearest and expect != as_std  # the oracle tells the readings apart
    q = quantize_(model, p, merge_kl=0)
    assert model[0].weight.flatten().tolist() == expect
    torch.testing.assert_close(q.codebook, torch.tensor([0.0, -0.4, 0.5], dtype=torch.float64))
    assert q.codes["0.weight"].flatten().tolist() == [0, 0, 0, 2, 2, 1, 1]
    assert q.density() == pytest.approx(4 / 7)


def test_blocks_of_weights_give_the_same_value_and_gradients(monkeypatch):
    """The fused pass over blocks (kwh.sws._CHUNK) against the closed forms, with blocks
    smaller than a tensor and a last block that is partly filled."""
    monkeypatch.setattr(kwh.sws, "_CHUNK", 5)
    ws = [w.clone().requires_grad_(True) for w in _weights(seed=4)]
    p = _prior(ws)
    ref = _reference(p, ws)
    value = p.neg_log_prob(ws)
    assert value.item() == pytest.approx(ref["value"], rel=1e-12)
    value.backward()
    for w, d in zip(ws, ref["weights"]):
        torch.testing.assert_close(w.grad, d, rtol=1e-10, atol=1e-10)
    for name in PARAMS:
        torch.testing.assert_close(getattr(p, name).grad, ref[name], rtol=1e-10, atol=1e-10)


def test_without_gradients_the_value_is_the_same():
    ws = [w.clone().requires_grad_(True) for w in _weights(seed=6)]
    p = _prior(ws)
    with torch.no_grad():
        quiet = p.neg_log_prob(ws)
    assert quiet.item() == pytest.approx(_reference(p, ws)["value"], rel=1e-12)
    assert not quiet.requires_grad


# ------------------------------------------------------------------ the shared codebook, trained


def test_shared_codebook_ties_weights_to_codes_and_sums_their_gradients():
    """share_codebook_: every weight is codebook[code] in the forward pass; a value's gradient
    is the sum of its weights' gradients (the oracle: the same loss on the unshared model);
    zeros stay zero; the state holds the codebook once; unshare_codebook_ gives back plain
    weights at the trained values with the same codes."""
    from safetensors.torch import save

    from kwh.sws import share_codebook_, unshare_codebook_

    model, p = _clustered_model()
    q = quantize_(model, p, merge_kl=0)
    x = torch.randn(7, model[0].in_features, generator=torch.Generator().manual_seed(3))
    plain = [w.detach().clone().requires_grad_(True) for _, w in mixture_weights(model)]
    ref = torch.func.functional_call(
        model, {"0.weight": plain[0], "2.weight": plain[1]}, (x,)).pow(2).sum()
    ref.backward()
    expect = torch.zeros(len(q.codebook) - 1)
    for (name, _), w in zip(mixture_weights(model), plain):
        codes = q.codes[name].reshape(-1)
        expect.index_add_(0, codes[codes > 0] - 1, w.grad.reshape(-1)[codes > 0])
    out = share_codebook_(model, q)
    assert out is model
    with pytest.raises(KwhError, match="already shares a codebook"):
        share_codebook_(model, q)
    books = [n for n, _ in model.named_parameters() if n.endswith("book.values")]
    assert len(books) == 1  # held once
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == sorted([books[0], "0.bias", "2.bias"])  # the originals are frozen
    book = model.get_submodule(books[0][:-len(".values")])
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    assert sum(k.endswith("book.values") for k in state) == 1
    save(state)  # safetensors refuses tensors that share memory: the codebook is held once
    loss = model(x).pow(2).sum()
    torch.testing.assert_close(loss, ref.detach())
    loss.backward()
    torch.testing.assert_close(book.values.grad, expect)
    with torch.no_grad():
        book.values.add_(0.125)  # a "trained" codebook
    q2 = unshare_codebook_(model)
    assert not any(n.endswith("book.values") for n, _ in model.named_parameters())
    torch.testing.assert_close(q2.codebook, torch.cat([torch.zeros(1), q.codebook[1:] + 0.125]))
    for name, w in mixture_weights(model):
        assert isinstance(w, nn.Parameter) and w.requires_grad
        assert torch.equal(q2.codes[name], q.codes[name])
        assert torch.equal(w.detach(), q2.codebook[q.codes[name]])  # zeros stay exactly 0
    assert q2.components == q.components and q2.merged == q.merged
    with pytest.raises(KwhError, match="shares no codebook"):
        unshare_codebook_(model)


def test_shared_codebook_refuses_codes_of_another_model():
    from kwh.sws import share_codebook_

    model, p = _clustered_model()
    q = quantize_(model, p, merge_kl=0)
    with pytest.raises(KwhError, match="what kwh.sws.quantize_ returned"):
        share_codebook_(model, {"0.weight": None})
    other = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(KwhError, match="do not match the model's weights"):
        share_codebook_(other, q)
    bad = kwh.sws.Quantized({k: v + 100 for k, v in q.codes.items()}, q.codebook)
    with pytest.raises(KwhError, match="codes do not fit the weight"):
        share_codebook_(model, bad)
