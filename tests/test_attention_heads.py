"""Attention heads as groups: one prior scale z per block of a Linear's inputs, and heads
removed exactly by kwh.compress.

Oracles: a grouped prior equals an ungrouped prior over the weight rearranged so that each
block is one column (KL, log alpha, masks and moments identical), the closed-form mean and
variance of the sampled pre-activations (Monte Carlo), and the masked Bayesian model's own
eval output for the compressed attention.
"""

from __future__ import annotations

import pytest
import torch

import kwh
from kwh.bayes import BayesLinear
from kwh.bayes.priors import GroupHorseshoeConfig, GroupNJConfig, LogUniformConfig

CONFIGS = [GroupNJConfig(), GroupHorseshoeConfig()]
O, G, S = 3, 4, 5  # outputs, groups, units per group


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def _grouped_and_columns(config):
    """A BayesLinear (O, G*S) with group_size S, and an ungrouped twin over the (O*S, G)
    weight whose column g holds group g's weights, sharing every parameter."""
    w = torch.randn(O, G * S, dtype=torch.float64)
    grouped = BayesLinear(G * S, O, prior=config, weight=w, bias_init=torch.zeros(O), group_size=S)
    cols = BayesLinear(G, O * S, prior=config, weight=_to_columns(w),
                       bias_init=torch.zeros(O * S))
    with torch.no_grad():
        for name, p in grouped.prior.named_parameters():
            q = dict(cols.prior.named_parameters())[name]
            q.copy_(_to_columns(p) if name in grouped.prior.weight_parameters else p)
    return grouped, cols


def _to_columns(t: torch.Tensor) -> torch.Tensor:
    """(O, G*S) -> (O*S, G): entry (o, g*S + s) to (o*S + s, g)."""
    return t.reshape(O, G, S).permute(0, 2, 1).reshape(O * S, G)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name)
def test_grouped_prior_equals_the_prior_over_block_columns(config):
    grouped, cols = _grouped_and_columns(config)
    with torch.no_grad():  # some groups pruned, some kept
        for p in (grouped.prior, cols.prior):
            if config.name == "group-nj":
                p.z_log_var[:2] = torch.log(p.z_mu[:2] ** 2) + 2.0
            else:
                p.a_log_var[:2] = 1.5
    gp, cp = grouped.prior, cols.prior
    assert gp.n_groups == G and cp.n_groups == G
    assert torch.allclose(gp.kl(), cp.kl(), rtol=1e-13, atol=0)  # summed in another order
    assert torch.equal(gp.log_alpha(), cp.log_alpha())
    assert gp.keep_mask().tolist() == [False, False, True, True]
    assert torch.equal(_to_columns(gp.weight_mask()), cp.weight_mask())
    for a, b in zip(gp.weight_moments(), cp.weight_moments()):
        assert torch.allclose(_to_columns(a), b, rtol=1e-15, atol=0)
    # the mask expands each z over its block of S consecutive inputs
    want = torch.tensor([0.0] * (2 * S) + [1.0] * (2 * S), dtype=torch.float64)
    assert torch.equal(gp.weight_mask(), want.expand(O, G * S))
    w, _ = grouped.eval_weight_bias()
    assert bool((w[:, :2 * S] == 0).all()) and bool((w[:, 2 * S:] != 0).all())


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name)
def test_group_size_one_is_the_ungrouped_prior(config):
    w = torch.randn(O, G)
    torch.manual_seed(3)
    a = BayesLinear(G, O, prior=config, weight=w, bias_init=torch.zeros(O), group_size=1)
    torch.manual_seed(3)
    b = BayesLinear(G, O, prior=config, weight=w, bias_init=torch.zeros(O))
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(a.kl(), b.kl())
    x = torch.randn(6, G)
    torch.manual_seed(4)
    ya = a.train()(x)
    torch.manual_seed(4)
    assert torch.equal(ya, b.train()(x))


def test_grouped_kl_by_hand():
    """GNJ: KL = sum over the G groups of the log-uniform KL of log alpha_g, plus the weights'
    KL against N(0, 1)."""
    from kwh.bayes.kl import kl_log_uniform, kl_std_normal
    layer = BayesLinear(G * S, O, prior=GroupNJConfig(), weight=torch.randn(O, G * S),
                        group_size=S)
    p = layer.prior
    la = p.z_log_var - torch.log(p.z_mu ** 2 + 1e-8)
    want = kl_log_uniform(la, clip=30.0).sum() + kl_std_normal(p.weight_mu, p.weight_log_var).sum()
    assert p.z_mu.shape == (G,)
    assert torch.allclose(layer.kl(), want, rtol=1e-12, atol=0)


def test_sampled_preactivations_share_one_z_per_group():
    """Monte Carlo: with z_g ~ N(m_g, v_g) per group, b_j = sum_g z_g c_gj + noise where
    c_gj = sum_{i in g} x_i mu_ji; E[b_j] = sum_g m_g c_gj and
    Var[b_j] = sum_g v_g c_gj^2 + sum_i (m_g(i)^2 + v_g(i)) x_i^2 s2_ji."""
    torch.manual_seed(1)
    layer = BayesLinear(G * S, O, bias=False, prior=GroupNJConfig(init_scale="one"),
                        weight=torch.randn(O, G * S, dtype=torch.float64), group_size=S).double()
    p = layer.prior
    with torch.no_grad():
        p.z_mu.copy_(torch.tensor([1.0, 0.5, -0.8, 1.2]))
        p.z_log_var.copy_(torch.log(torch.tensor([0.3, 0.1, 0.5, 0.05])))
        p.weight_log_var.fill_(-3.0)
    x = torch.randn(1, G * S, dtype=torch.float64)
    n = 200_000
    with torch.no_grad():
        b = layer.train()(x.expand(n, -1))
    m, v = p.z_mu.detach(), p.z_log_var.detach().exp()
    mu, s2 = p.weight_mu.detach(), p.weight_log_var.detach().exp()
    c = (x[0] * mu).reshape(O, G, S).sum(-1)  # (O, G)
    mean = c @ m
    var = c.pow(2) @ v + (x[0].pow(2) * s2) @ (m.pow(2) + v).repeat_interleave(S) + 1e-8
    se_mean = (var / n).sqrt()
    assert bool(((b.mean(0) - mean).abs() < 5 * se_mean).all())
    assert torch.allclose(b.var(0), var, rtol=0.03)


def test_bayesify_takes_group_sizes_and_refuses_what_does_not_fit():
    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2))

    m = model()
    kwh.bayesify_(m, "group-horseshoe", group_sizes={"2": 3})
    assert m[2].prior.group_size == 3 and m[2].prior.n_groups == 2
    assert m[0].prior.group_size == 1 and m[0].prior.n_groups == 8
    with pytest.raises(ValueError, match="log-uniform prior has one scale per weight"):
        kwh.bayesify_(model(), "log-uniform", group_sizes={"2": 3})
    with pytest.raises(ValueError, match="one scale per weight"):
        BayesLinear(6, 2, prior=LogUniformConfig(), group_size=3)
    with pytest.raises(ValueError, match="does not divide the 6 units"):
        kwh.bayesify_(model(), "group-nj", group_sizes={"2": 4})
    with pytest.raises(ValueError, match=r"'1' \(ReLU\).*nn.Linear"):
        kwh.bayesify_(model(), "group-nj", group_sizes={"1": 2})


def test_select_keeps_whole_groups_only():
    layer = BayesLinear(G * S, O, prior=GroupNJConfig(), weight=torch.randn(O, G * S),
                        group_size=S)
    z = layer.prior.z_mu.detach().clone()
    layer.select_inputs_(torch.cat([torch.arange(S, 2 * S), torch.arange(3 * S, 4 * S)]))
    assert layer.in_features == 2 * S and layer.prior.n_groups == 2
    assert torch.equal(layer.prior.z_mu.detach(), z[[1, 3]])
    with pytest.raises(ValueError, match="whole groups"):
        layer.select_inputs_(torch.arange(S - 1))


def test_vit_offers_its_head_groups():
    from kwh.models import vit_tiny
    model = vit_tiny(dim=12, depth=2, heads=3, mlp=8)
    assert model.kwh_head_groups() == {"blocks.0.attn.out": 4, "blocks.1.attn.out": 4}
    kwh.bayesify_(model, "group-nj", group_sizes=model.kwh_head_groups())
    out = model.blocks[1].attn.out
    assert out.prior.n_groups == 3 and out.prior.group_size == 4
    assert model.blocks[1].attn.v.prior.n_groups == 12


# ------------------------------------------------------------------ heads removed by compress

from kwh.bayes import GroupHorseshoe  # noqa: E402
from kwh.models import vit_tiny  # noqa: E402
from kwh.modules import SelfAttention  # noqa: E402

IMAGE = (1, 14, 14)  # patches of 7: 4 tokens
DIM, HEADS, HD, TOKENS, MLP = 12, 3, 4, 4, 8


def _vit(fused: bool = True) -> torch.nn.Module:
    torch.manual_seed(5)
    return vit_tiny(in_channels=1, num_classes=5, image_size=14, patch=7, dim=DIM, depth=2,
                    heads=HEADS, mlp=MLP, fused_attention=fused)


def _x(n: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, *IMAGE, generator=torch.Generator().manual_seed(seed))


def test_fused_attention_computes_what_the_traced_attention_does():
    traced, fused = _vit(False).eval(), _vit(True).eval()
    assert isinstance(fused.blocks[0].attn, SelfAttention)
    fused.load_state_dict(traced.state_dict())  # the same parameter names
    with torch.no_grad():
        torch.testing.assert_close(fused(_x()), traced(_x()), rtol=0, atol=1e-6)
    gm = kwh.graph.trace(fused)
    assert [n.target for n in gm.graph.nodes if n.op == "call_module" and "attn" in n.target] \
        == ["blocks.0.attn", "blocks.1.attn"]


@torch.no_grad()
def _dead_heads_(model) -> None:
    """Block 0: head 1 unread (its z of the out-projection pruned). Block 1: v's rows of head 2
    zero (it outputs v's bias: folded into out's), q's rows of head 0 zero (it still averages
    v uniformly: it stays)."""
    out0 = model.blocks[0].attn.out.prior
    if isinstance(out0, GroupHorseshoe):
        out0.a_log_var[1] = 3.0
    else:
        out0.z_log_var[1] = 3.0
    a1 = model.blocks[1].attn
    a1.v.prior.weight_mu[2 * HD:3 * HD] = 0.0
    a1.q.prior.weight_mu[0:HD] = 0.0
    assert out0.keep_mask().tolist() == [True, False, True]
    assert not a1.v.eval_weight_bias()[0][2 * HD:].any()


@pytest.fixture(scope="module", params=["group-horseshoe", "group-nj"])
def pruned(request):
    """(prior, masked Bayesian vit in eval mode, its unquantized compression)."""
    torch.manual_seed(0)
    model = _vit()
    kwh.bayesify_(model, request.param, group_sizes=model.kwh_head_groups())
    _dead_heads_(model)
    model.eval()
    small = kwh.compress.compress(model, example_inputs=_x(4, seed=0), quantize=False)
    return request.param, model, small


def test_dead_heads_are_removed_exactly(pruned):
    _, model, small = pruned
    with torch.no_grad():
        for seed in (1, 2):
            ref = model(_x(16, seed))
            torch.testing.assert_close(small(_x(16, seed)), ref, rtol=0,
                                       atol=1e-5 * float(1 + ref.abs().max()))
    a0, a1 = small.get_submodule("blocks.0.attn"), small.get_submodule("blocks.1.attn")
    assert isinstance(a0, SelfAttention) and (a0.heads, a1.heads) == (2, 2)
    for a in (a0, a1):  # the residual stream stays whole: only the heads go
        assert tuple(a.q.weight.shape) == tuple(a.k.weight.shape) == (2 * HD, DIM)
        assert tuple(a.v.weight.shape) == (2 * HD, DIM)
        assert tuple(a.out.weight.shape) == (DIM, 2 * HD)
    bayes0 = model.blocks[0].attn
    w_out, _ = bayes0.out.eval_weight_bias()
    keep = torch.cat([torch.arange(0, HD), torch.arange(2 * HD, 3 * HD)])
    assert torch.allclose(a0.out.weight.double(), w_out[:, keep].double(), atol=1e-7)
    assert torch.allclose(a0.q.weight.double(), bayes0.q.eval_weight_bias()[0][keep].double(),
                          atol=1e-7)


def test_quantized_attention_keeps_its_heads_and_bits():
    torch.manual_seed(0)
    model = _vit()
    kwh.bayesify_(model, "group-nj", group_sizes=model.kwh_head_groups())
    _dead_heads_(model)
    model.eval()
    small = kwh.compress.compress(model, example_inputs=_x(4, seed=0))
    a0 = small.get_submodule("blocks.0.attn")
    assert a0.heads == 2
    for layer in (a0.q, a0.k, a0.v, a0.out):
        bits, frac = layer.kwh_bits, layer.kwh_frac_bits
        assert bits < 32 and frac is not None
        step = 2.0 ** -frac
        assert torch.equal(torch.round(layer.weight / step) * step, layer.weight)
    with torch.no_grad():
        ref = model(_x())
        assert (small(_x()) - ref).abs().max() < 0.1 * (1 + ref.abs().max())


# ------------------------------------------------------------------ energy

def _fields(c):
    return {k: v for k, v in vars(c).items() if k not in ("module", "name")}


def test_energy_counts_the_fused_attention_as_its_unfused_forward():
    from kwh.energy import count_model
    traced, fused = _vit(False).eval(), _vit(True).eval()
    fused.load_state_dict(traced.state_dict())
    a, b = count_model(traced, IMAGE), count_model(fused, IMAGE)
    assert [c.name.split(":")[0] for c in a] == [c.name.split(":")[0] for c in b]
    for x, y in zip(a, b):
        assert _fields(x) == _fields(y), x.name


def test_energy_of_the_compressed_attention_counts_its_heads(pruned):
    """Block 0 keeps 2 heads of 4 units on 4 tokens: by hand."""
    from kwh.energy import count_model
    _, _, small = pruned
    counts = {c.name.split(":")[0]: c for c in count_model(small, IMAGE)}
    t, h, hd = TOKENS, 2, HD
    q, v, out = (counts[f"blocks.0.attn.{p}"] for p in ("q", "v", "out"))
    assert q.macs == t * DIM * h * hd and out.macs == t * h * hd * DIM
    assert v.act_macs == 2 * h * t * t * hd  # q k^T and weights @ v
    assert v.compares == h * t * (t - 1)  # softmax's max per row
    assert v.functions == {"exp": h * t * t, "reciprocal": h * t}
    assert v.extra_in_elems == 2 * t * h * hd
    assert v.fused == ["matmul", "mul", "Softmax", "matmul"]
