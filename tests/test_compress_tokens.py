"""kwh.compress.dag on token tensors (batch, tokens, features): a Linear's units on the last
dim, followed through activations, dropout, additions and arithmetic with a number; a
transformer's MLP hidden units pruned physically.

Oracle for exactness: the masked Bayesian model in eval mode on random inputs other than the
example it was traced on, to 1e-5 of its largest output. What must go and what must stay is
set by hand: hidden units killed through the prior's parameters (an input column of the
reading Linear), or made constant by zeroing the posterior mean of the writing Linear's row.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import kwh
from kwh.bayes import BayesLayer, GroupHorseshoe, GroupNJ, bayes_layers
from kwh.models import vit_tiny

from any_models import kill_, random_posterior_

TOL = 1e-5
PRIORS = ["group-horseshoe", "group-nj", "log-uniform"]
IMAGE = (1, 14, 14)  # patches of 7: 4 tokens
DIM, MLP, TOKENS, HEADS, HD = 8, 12, 4, 2, 4


def _vit(prior: str) -> nn.Module:
    torch.manual_seed(5)
    model = vit_tiny(in_channels=1, num_classes=5, image_size=14, patch=7, dim=DIM, depth=2,
                     heads=HEADS, mlp=MLP)
    kwh.bayesify_(model, prior)
    return model.eval()


def _bayes(model: nn.Module, prior: str) -> nn.Module:
    kwh.bayesify_(model, prior)
    return model.eval()


@torch.no_grad()
def _zero_rows_(layer: BayesLayer, rows) -> None:
    """Zero the posterior mean of these output units' weights: their values are constants."""
    p = layer.prior
    if isinstance(p, (GroupHorseshoe, GroupNJ)):
        p.weight_mu[rows] = 0.0
    else:
        p.theta[rows] = 0.0
    assert not layer.eval_weight_bias()[0][rows].any()


def _x(shape, n: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


def _small(model: nn.Module, shape, **options) -> nn.Module:
    return kwh.compress.compress(model, example_inputs=_x(shape, 4, seed=0), quantize=False,
                                 **options)


@torch.no_grad()
def _check_same(small: nn.Module, model: nn.Module, shape) -> None:
    for seed in (1, 2):
        x = _x(shape, 16, seed)
        ref = model(x)
        torch.testing.assert_close(small(x), ref, rtol=0, atol=TOL * float(1 + ref.abs().max()))


def _shape(small: nn.Module, name: str) -> tuple[int, ...]:
    return tuple(small.get_submodule(name).weight.shape)


# ------------------------------------------------------------------ the vision transformer

@pytest.mark.parametrize("prior", PRIORS)
def test_vit_mlp_hidden_units_are_pruned_exactly(prior):
    model = _vit(prior)
    kill_(model.blocks[0].mlp[2], [1, 4])  # block 0: fc2 reads no hidden unit 1 or 4
    _zero_rows_(model.blocks[1].mlp[0], [2])  # block 1: hidden unit 2 is gelu(b), constant
    small = _small(model, IMAGE)
    assert isinstance(small, fx.GraphModule)
    assert not any(isinstance(m, BayesLayer) for m in small.modules())
    _check_same(small, model, IMAGE)
    assert _shape(small, "blocks.0.mlp.0") == (MLP - 2, DIM)
    assert _shape(small, "blocks.0.mlp.2") == (DIM, MLP - 2)
    assert _shape(small, "blocks.1.mlp.0") == (MLP - 1, DIM)
    assert _shape(small, "blocks.1.mlp.2") == (DIM, MLP - 1)
    for b in (0, 1):  # attention and the residual stream stay whole (LayerNorm reads it)
        for p in ("q", "k", "v", "out"):
            assert _shape(small, f"blocks.{b}.attn.{p}") == (DIM, DIM)
    assert _shape(small, "patch") == (DIM, 1, 7, 7) and _shape(small, "head") == (5, DIM)
    # the constant unit is folded into the next bias: b2 + W2[:, 2] gelu(b1[2])
    w1, b1 = model.blocks[1].mlp[0].eval_weight_bias()
    w2, b2 = model.blocks[1].mlp[2].eval_weight_bias()
    want = b2 + w2[:, 2] * F.gelu(b1[2])
    torch.testing.assert_close(small.get_submodule("blocks.1.mlp.2").bias, want.detach(),
                               rtol=0, atol=1e-6)
    keep = [j for j in range(MLP) if j != 2]
    assert torch.equal(small.get_submodule("blocks.1.mlp.2").weight, w2[:, keep].detach())


@pytest.mark.parametrize("prior", ["group-nj", "log-uniform"])
def test_vit_summary_by_hand(prior):
    model = _vit(prior)
    kill_(model.blocks[0].mlp[2], [1, 4])
    _zero_rows_(model.blocks[1].mlp[0], [2])
    s = _small(model, IMAGE).kwh_summary
    layers = {d["name"]: d for d in s["layers"]}
    block = 4 * DIM * DIM + 2 * DIM * MLP  # q, k, v, out; fc1, fc2
    assert s["weights_original"] == DIM * 7 * 7 + 2 * block + 5 * DIM == 1328
    # block 0 by hand: fc1 10 x 8 and fc2 8 x 10, attention 4 x 8 x 8
    assert layers["blocks.0.mlp.0"]["weights"] == layers["blocks.0.mlp.2"]["weights"] == 80
    assert sum(layers[f"blocks.0.attn.{p}"]["weights"] for p in "qkv") == 3 * 64
    assert s["weights"] == 1328 - 2 * 2 * DIM - 2 * DIM == 1280
    # a Linear on tokens is applied at each of the 4 tokens
    assert layers["blocks.0.mlp.0"]["macs_original"] == MLP * DIM * TOKENS
    assert layers["blocks.0.mlp.0"]["macs"] == 80 * TOKENS
    assert layers["head"]["macs"] == 5 * DIM  # after the mean over the tokens
    assert layers["patch"]["macs"] == DIM * 49 * TOKENS
    # patch, q, k, v, out, fc1, fc2 (input units) per block, head
    assert s["architecture_original"] == "8-8-8-8-8-8-12-8-8-8-8-8-12-8"
    assert s["architecture"] == "8-8-8-8-8-8-10-8-8-8-8-8-11-8"
    # classes: 8 patch channels, per block the attention's 8 outputs (a SelfAttention is one
    # unit: its heads, not its inner units, are what compress removes) + 12 hidden + 8 fc2
    # rows, 5 head units; only the hidden units are free
    assert s["graph"] == {"channel_classes": 8 + 2 * (8 + 12 + 8) + 5,
                          "frozen_classes": 8 + 2 * (8 + 8) + 5,
                          "removed_classes": 3, "frozen_layers": {}}


@pytest.mark.parametrize("prior", PRIORS)
def test_vit_on_a_random_posterior(prior):
    model = _vit(prior)
    random_posterior_(model)
    small = _small(model, IMAGE)
    _check_same(small, model, IMAGE)
    s = small.kwh_summary
    removed = 0
    for b in (0, 1):  # a hidden unit stays when fc1 writes it and fc2 reads it
        w1 = model.blocks[b].mlp[0].eval_weight_bias()[0]
        w2 = model.blocks[b].mlp[2].eval_weight_bias()[0]
        kept = int(((w1 != 0).any(1) & (w2 != 0).any(0)).sum())
        assert _shape(small, f"blocks.{b}.mlp.0") == (kept, DIM)
        assert _shape(small, f"blocks.{b}.mlp.2") == (DIM, kept)
        removed += MLP - kept
    if prior != "log-uniform":  # (70% of the weights at random leave every unit here)
        assert removed > 0
    heads_removed = 0
    for b in (0, 1):  # a head goes when out reads none of its units or v writes none
        attn = model.blocks[b].attn
        w_out, w_v = attn.out.eval_weight_bias()[0], attn.v.eval_weight_bias()[0]
        dead = [not (w_out[:, h * HD:(h + 1) * HD].any() and w_v[h * HD:(h + 1) * HD].any())
                for h in range(HEADS)]
        heads_removed += sum(dead) - all(dead)  # the first head stays when all are dead
        assert small.get_submodule(f"blocks.{b}.attn").heads == HEADS - sum(dead) + all(dead)
    plain = [m for m in small.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert s["weights"] == sum(m.weight.numel() for m in plain)
    # a hidden unit: a row of fc1 and a column of fc2; a head: HD rows of q, k, v, HD columns
    # of out
    assert s["weights"] == s["weights_original"] - 2 * DIM * removed - 4 * HD * DIM * heads_removed


def test_vit_quantized_weights_are_on_the_fixed_point_grid():
    model = _vit("group-horseshoe")
    random_posterior_(model)
    small = kwh.compress.compress(model, example_inputs=_x(IMAGE, 4, seed=0))
    exact = _small(model, IMAGE)
    names = [n for n, _ in bayes_layers(model)]
    for name in names:
        q, f = small.get_submodule(name), exact.get_submodule(name)
        assert q.weight.shape == f.weight.shape
        t, bits = q.kwh_frac_bits, q.kwh_bits
        ints = q.weight.double() * 2.0 ** t
        assert torch.equal(ints, ints.round()), "weights must be int * 2^-t exactly"
        assert (q.weight.double() - f.weight.double()).abs().max() <= 2.0 ** -(t + 1)
        assert bits == 1 + max(1, int(ints.abs().max()).bit_length())
    assert small.kwh_summary["bits"] == "-".join(str(small.get_submodule(n).kwh_bits)
                                                 for n in names)
    x = _x(IMAGE)
    with torch.no_grad():
        ref = exact(x)
        assert (small(x) - ref).abs().max() <= 0.05 * ref.abs().max()


# ------------------------------------------------------------------ other models on tokens

TOKEN_SHAPE = (5, 6)  # 5 tokens of 6 features


def test_a_plain_mlp_on_tokens():
    """nn.Sequential(Linear, GELU, Linear) on (batch, tokens, features): not a chain the
    chain path holds (its Linear layers see tokens), pruned as a graph."""
    torch.manual_seed(2)
    model = _bayes(nn.Sequential(nn.Linear(6, 10), nn.GELU(), nn.Linear(10, 4)), "group-nj")
    kill_(model[2], [1, 5])
    small = _small(model, TOKEN_SHAPE)
    assert isinstance(small, fx.GraphModule)
    assert _shape(small, "0") == (8, 6) and _shape(small, "2") == (4, 8)
    _check_same(small, model, TOKEN_SHAPE)
    s = small.kwh_summary
    assert s["weights_original"] == 100 and s["weights"] == 80
    assert s["macs_original"] == 5 * 100 and s["macs"] == 5 * 80


class TokenMLP(nn.Module):
    """A residual MLP on tokens: ReLU, GELU, dropout, a scalar product and an addition."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, 10), nn.Linear(10, 10), nn.Linear(10, 4)
        self.drop = nn.Dropout(0.1)

    def forward(self, x):  # (B, T, 6) -> (B, 4)
        h = F.relu(self.fc1(x))
        h = h + 0.5 * self.drop(F.gelu(self.fc2(h)))
        return self.fc3(h).mean(1)


@pytest.mark.parametrize("prior", PRIORS)
def test_a_residual_mlp_on_tokens(prior):
    torch.manual_seed(2)
    model = _bayes(TokenMLP(), prior)
    kill_(model.fc2, [3, 7])  # unit 3 of the stream: read by neither fc2 nor fc3, removed;
    kill_(model.fc3, [3])     # unit 7: fc3 still reads it, it stays
    _zero_rows_(model.fc1, [5])  # unit 5 written by neither: relu(b1) + 0.5 gelu(b2) everywhere
    _zero_rows_(model.fc2, [5])
    small = _small(model, TOKEN_SHAPE)
    assert _shape(small, "fc1") == (8, 6) and _shape(small, "fc2") == (8, 8)
    assert _shape(small, "fc3") == (4, 8)
    _check_same(small, model, TOKEN_SHAPE)
    assert small.kwh_summary["graph"]["removed_classes"] == 2


class NormRead(nn.Module):
    """A dead unit read by a LayerNorm (it mixes every unit of the token): it stays. A 1d
    pool on tokens pools along the units: a unit the next layer does not read is still read
    through its neighbours, it stays too. Units after the LayerNorm are free."""

    def __init__(self):
        super().__init__()
        self.fc1, self.norm = nn.Linear(6, 8), nn.LayerNorm(8)
        self.fc2, self.fc3 = nn.Linear(8, 8), nn.Linear(8, 3)
        self.fp, self.fq = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x):  # (B, T, 6) -> (B, T, 3)
        h = F.gelu(self.fc2(self.norm(F.gelu(self.fc1(x)))))
        return self.fc3(h) + self.fq(F.avg_pool1d(torch.relu(self.fp(x)), 3, 1, 1))


@pytest.mark.parametrize("prior", PRIORS)
def test_a_dead_unit_read_by_a_layer_norm_stays(prior):
    torch.manual_seed(2)
    model = _bayes(NormRead(), prior)
    _zero_rows_(model.fc1, [2])  # constant, but the LayerNorm reads it with the others
    kill_(model.fc2, [2])        # fc2 does not read it after the norm either
    kill_(model.fc3, [4])        # fc2's unit 4: read by fc3 only, removed
    kill_(model.fq, [1])         # fq reads unit 1 of fp through the pool's units 0 and 2
    small = _small(model, TOKEN_SHAPE)
    assert _shape(small, "fc1") == (8, 6)
    assert _shape(small, "fc2") == (7, 8) and _shape(small, "fc3") == (3, 7)
    assert _shape(small, "fp") == (8, 6) and _shape(small, "fq") == (3, 8)
    _check_same(small, model, TOKEN_SHAPE)
    assert small.kwh_summary["graph"]["removed_classes"] == 1
