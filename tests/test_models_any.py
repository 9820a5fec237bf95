"""The reference models that are not chains: ResNet-20 and a small vision transformer.

Oracles: parameter counts and MACs computed by hand from the architecture (never by calling
the model), the model's own outputs for its traced graph (torch.equal), the masked Bayesian
model for its weight-only compression, the in-memory compressed model for its file, and the
energy table's prices for the activation-only operations of attention.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.utils.data import TensorDataset

import kwh
from kwh.bayes import BayesLayer
from kwh.energy import HOROWITZ_45NM, count_model, estimate_energy
from kwh.errors import ModelError
from kwh.graph import chain, example_input, trace
from kwh.models import MODELS, build
from kwh.modules import PositionEmbedding

from any_models import random_posterior_

PRIORS = ["group-horseshoe", "group-nj", "log-uniform"]
NAMES = ["resnet20", "vit"]
SHAPE = (1, 28, 28)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def batch(n: int = 2, shape=SHAPE) -> torch.Tensor:
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(1))


# ------------------------------------------------------------------ shapes and sizes

@pytest.mark.parametrize("name,kw,shape,classes", [
    ("resnet20", {}, SHAPE, 10),
    ("resnet20", dict(in_channels=3, num_classes=7, width=4), (3, 28, 28), 7),
    ("vit", {}, SHAPE, 10),
    ("vit", dict(in_channels=3, num_classes=5, patch=4, dim=24, depth=1, heads=3, mlp=16),
     (3, 28, 28), 5),
])
def test_outputs_have_one_row_of_logits_per_example(name, kw, shape, classes):
    model = build(name, **kw).eval()
    assert model.kwh_input_shape == shape
    with torch.no_grad():
        assert model(batch(3, shape)).shape == (3, classes)


def test_resnet20_parameters_counted_by_hand():
    def conv(c_in, c_out, k):  # bias-free: a BatchNorm follows
        return c_in * c_out * k * k

    def bn(c):  # scale and shift (running statistics are buffers)
        return 2 * c

    def block(c_in, c_out):
        n = conv(c_in, c_out, 3) + bn(c_out) + conv(c_out, c_out, 3) + bn(c_out)
        if c_in != c_out:
            n += conv(c_in, c_out, 1) + bn(c_out)  # option B shortcut
        return n

    w = 16
    stem = conv(1, w, 3) + bn(w)
    stages = sum(block(c_in, c_out) + 2 * block(c_out, c_out)
                 for c_in, c_out in [(w, w), (w, 2 * w), (2 * w, 4 * w)])
    head = 4 * w * 10 + 10
    want = stem + stages + head
    assert want == 272_186  # ResNet-20's familiar 0.27M
    model = build("resnet20")
    assert sum(p.numel() for p in model.parameters()) == want
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 19 + 2  # 6n + 1 3x3 convolutions, two 1x1 shortcuts
    assert {m.stride for m in convs if m.kernel_size == (1, 1)} == {(2, 2)}


def test_vit_parameters_counted_by_hand():
    c, d, p, t, depth, mlp, k = 1, 64, 7, (28 // 7) ** 2, 4, 128, 10
    linear = lambda i, o: i * o + o  # noqa: E731
    block = 2 * (2 * d) + 4 * linear(d, d) + linear(d, mlp) + linear(mlp, d)
    want = (c * d * p * p + d) + t * d + depth * block + 2 * d + linear(d, k)
    model = build("vit")
    assert sum(p.numel() for p in model.parameters()) == want == 138_890
    assert isinstance(model.pos, PositionEmbedding) and model.pos.weight.shape == (t, d)
    assert not any(isinstance(m, nn.MultiheadAttention) for m in model.modules())


def test_registry_and_bad_sizes():
    assert MODELS["resnet20"] is kwh.models.resnet20 and MODELS["vit"] is kwh.models.vit_tiny
    with pytest.raises(ValueError, match="multiple of patch"):
        build("vit", patch=5)
    with pytest.raises(ValueError, match="multiple of heads"):
        build("vit", dim=30, heads=4)
    with pytest.raises(ValueError, match="width"):
        build("resnet20", width=0)


# ------------------------------------------------------------------ the traced graph

@pytest.mark.parametrize("name", NAMES)
def test_traced_graph_reproduces_the_model_exactly(name):
    model = build(name).eval()
    gm = trace(model)
    assert isinstance(gm, fx.GraphModule)
    ops = {n.op for n in gm.graph.nodes}
    assert "get_attr" not in ops  # the position embedding is a module call
    x = batch(4)
    with torch.no_grad():
        assert torch.equal(gm(x), model(x))
    if name == "vit":
        assert any(n.op == "call_module" and n.target == "pos" for n in gm.graph.nodes)


@pytest.mark.parametrize("name,kwargs,pattern", [
    ("resnet20", {}, r"add\(\).*combines 2 paths.*residual connection"),
    # the fused attention is one module: the first join is the residual around it
    ("vit", {}, r"add\(\).*combines 2 paths \(pos, blocks_0_attn\).*residual connection"),
    ("vit", {"fused_attention": False}, r"matmul\(\).*multiplies 2 paths.*q @ k\^T"),
])
def test_structured_chain_is_refused_naming_the_construct(name, kwargs, pattern):
    model = build(name, **kwargs).eval()
    with pytest.raises(ModelError, match=pattern):
        chain(model, example_input(model, SHAPE))


class ShapeIndex(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(x.view(x.shape[0], -1))  # x.shape[0]: a shape, not an activation


def test_shape_indexing_in_forward_is_followed():
    model = ShapeIndex().eval()
    x = example_input(model, (1, 4, 4))
    links = chain(model, x)
    assert [type(link.module) for link in links] == [nn.Flatten, nn.Linear]
    assert count_model(model, (1, 4, 4))[0].macs == 16 * 3


# ------------------------------------------------------------------ Bayesian training

@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("name,layers", [("resnet20", 22), ("vit", 26)])
def test_free_energy_forward_and_backward(name, layers, prior):
    model = build(name)
    report = kwh.bayesify_(model, prior)
    assert len(report.converted) == layers  # every Linear and Conv2d, q/k/v/out included
    model.train()
    x, y = batch(2), torch.tensor([3, 7])
    loss = kwh.free_energy(model, F.cross_entropy(model(x), y), n_data=1000)
    loss.backward()
    assert torch.isfinite(loss)
    for _, m in model.named_modules():
        if isinstance(m, BayesLayer):
            grads = [p.grad for p in m.prior.parameters()]
            assert all(g is not None and torch.isfinite(g).all() for g in grads)
            assert any(g.abs().sum() > 0 for g in grads)
    if name == "vit":  # the LayerNorms and the position embedding train with the rest
        others = [p for n, p in model.named_parameters() if "norm" in n or n.startswith("pos")]
        assert len(others) == 2 * (2 * 4 + 1) + 1
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in others)


# ------------------------------------------------------------------ weight-only compression

@pytest.fixture(scope="module")
def compressed_models():
    """(name, prior) -> (Bayesian model in eval mode, its weight-only compression)."""
    out = {}
    for name, prior in [("resnet20", "group-horseshoe"), ("resnet20", "log-uniform"),
                        ("vit", "group-nj"), ("vit", "log-uniform")]:
        torch.manual_seed(5)
        model = build(name)
        kwh.bayesify_(model, prior)
        random_posterior_(model)
        model.eval()
        out[name, prior] = model, kwh.compress(model, mode="weights")
    return out


@pytest.mark.parametrize("key", [("resnet20", "group-horseshoe"), ("resnet20", "log-uniform"),
                                 ("vit", "group-nj"), ("vit", "log-uniform")])
def test_weights_mode_file_round_trip(compressed_models, key, tmp_path):
    bayes, small = compressed_models[key]
    x = batch(3)
    with torch.no_grad():
        want = bayes(x)
        got = small(x)
    assert got.shape == want.shape and (got - want).abs().max() < 0.05 * want.abs().max()
    nonzero = small.kwh_summary["nonzero"]
    assert nonzero < small.kwh_summary["weights_original"]  # the random posterior pruned some
    path = tmp_path / f"{key[0]}.kwh"
    kwh.save(small, path)
    skeleton = build(key[0])
    loaded = kwh.load(path, model=skeleton)
    assert loaded is skeleton and not loaded.training
    sa, sb = small.state_dict(), loaded.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    with torch.no_grad():
        assert torch.equal(small(x), loaded(x))
    assert loaded.kwh_summary["nonzero"] == nonzero


def test_unquantized_weights_mode_equals_the_masked_bayesian_model(compressed_models):
    bayes, _ = compressed_models["vit", "group-nj"]
    plain = kwh.compress(bayes, mode="weights", quantize=False)
    x = batch(3)
    with torch.no_grad():
        assert torch.allclose(plain(x), bayes(x), rtol=0, atol=1e-5)


# ------------------------------------------------------------------ training by name

@pytest.mark.parametrize("name", NAMES)
def test_kwh_train_builds_trains_and_reloads_the_model(name, tmp_path):
    from kwh.train import TrainConfig, load_checkpoint, run_training
    from kwh.train.data import TrainData

    g = torch.Generator().manual_seed(0)

    def data(n):
        return TensorDataset(torch.rand((n, *SHAPE), generator=g),
                             torch.randint(0, 10, (n,), generator=g))

    config = TrainConfig(model=name, data="custom", prior="log-uniform", epochs=1,
                         batch_size=10, limit_train=20, threads=1, eval_batch_size=10,
                         out_dir=str(tmp_path / name))
    result = run_training(config, progress=False, data=TrainData(data(20), data(10), data(10)))
    loaded, cfg = load_checkpoint(result.checkpoint)
    assert cfg.model == name and type(loaded) is type(build(name))
    x = batch(2)
    with torch.no_grad():
        assert torch.equal(loaded(x), result.model.eval()(x))


def test_shrinking_while_training_refuses_a_model_with_its_own_forward():
    from kwh.compress.shrink import Shrinker
    model = build("resnet20")
    kwh.bayesify_(model, "group-nj")
    with pytest.raises(ModelError, match=r"ResNet has a forward\(\) of its own.*patience 0"):
        Shrinker(model, SHAPE, patience=1)


def test_a_state_dict_is_recognised_as_its_reference_model():
    from kwh.app.load import load_model
    for name in NAMES:
        state = build(name).state_dict()
        loaded = load_model(state)
        assert loaded.kind == "state-dict" and loaded.label.startswith(name)


# ------------------------------------------------------------------ energy

def conv_taps(n: int, k: int, stride: int, pad: int) -> int:
    """(output position, kernel tap) pairs along one axis whose tap lands inside the input."""
    out = (n + 2 * pad - k) // stride + 1
    return sum(1 for o in range(out) for i in range(k) if 0 <= o * stride - pad + i < n)


def conv_macs(c_in, c_out, n, k, stride, pad) -> int:
    return c_in * c_out * conv_taps(n, k, stride, pad) ** 2


def test_resnet20_macs_by_hand():
    counts = {c.name.split(":")[0]: c for c in count_model(build("resnet20").eval(), SHAPE)}
    stem = counts["stem.0"]
    assert stem.macs == conv_macs(1, 16, 28, 3, 1, 1) == 16 * (26 * 3 + 2 * 2) ** 2
    assert stem.bias_adds == 16 * 28 * 28 and stem.compares == 16 * 28 * 28  # folded BN, ReLU
    # the first block of stage 2: stride 2, and the 1x1 shortcut
    assert counts["layer2.0.conv1"].macs == conv_macs(16, 32, 28, 3, 2, 1) == 16 * 32 * 41 ** 2
    assert counts["layer2.0.conv2"].macs == conv_macs(32, 32, 14, 3, 1, 1)
    short = counts["layer2.0.shortcut.0"]
    assert short.macs == 16 * 32 * 14 * 14
    assert short.elementwise_adds == 32 * 14 * 14  # the residual addition, fused after it,
    assert short.extra_in_elems == 32 * 14 * 14    # reads conv2's block output
    assert short.fused == ["BatchNorm2d", "add", "ReLU"]
    # an identity shortcut reads the block input again
    assert counts["layer1.1.conv2"].extra_in_elems == 16 * 28 * 28
    total = conv_macs(1, 16, 28, 3, 1, 1) + 64 * 10
    for c_in, c_out, n, stride in [(16, 16, 28, 1), (16, 32, 28, 2), (32, 64, 14, 2)]:
        m = n // stride
        total += conv_macs(c_in, c_out, n, 3, stride, 1) + 5 * conv_macs(c_out, c_out, m, 3, 1, 1)
        total += c_in * c_out * m * m if stride == 2 else 0
    assert sum(c.macs for c in counts.values()) == total


def test_vit_attention_counted_and_priced():
    t, d, h, mlp, depth = 16, 64, 4, 128, 4
    model = build("vit").eval()
    counts = count_model(model, SHAPE)
    names = [c.name.split(":")[0] for c in counts]
    assert len(counts) == 1 + 6 * depth + 1
    v = counts[names.index("blocks.0.attn.v")]
    assert v.fused == ["matmul", "mul", "Softmax", "matmul"]
    assert v.act_macs == 2 * h * t * t * (d // h)  # q k^T and weights @ v
    assert v.extra_in_elems == 2 * t * d  # q and k come from their own blocks
    assert v.compares == h * t * (t - 1)  # softmax's max per row
    assert v.functions == {"exp": h * t * t, "reciprocal": h * t}
    # scale by 1/sqrt(hd), then per row: n multiplies, and the exps' and reciprocals' own
    # (exp: 8 multiplies, 9 additions; reciprocal: 6 and 4)
    assert v.act_mults == h * t * t + h * t * t + 8 * h * t * t + 6 * h * t
    assert v.norm_adds == h * t * (2 * t - 1) + 9 * h * t * t + 4 * h * t
    assert v.macs == t * d * d
    patch = counts[0]
    assert patch.macs == t * d * 7 * 7
    assert patch.fused == ["PositionEmbedding", "LayerNorm"]
    assert patch.elementwise_adds == t * d
    assert patch.n_extra_params == t * d + 2 * d  # the position table, norm1's scale and shift
    assert patch.extra_out_elems == t * d  # the residual stream, read by the first add
    assert patch.functions == {"rsqrt": t}
    mlp0 = counts[names.index("blocks.0.mlp.0")]
    assert mlp0.functions == {"erf": t * mlp, "exp": t * mlp, "reciprocal": t * mlp}
    assert sum(c.act_macs for c in counts) == depth * 2 * t * t * d
    # fp32 prices: weight and activation products alike (Horowitz 2014: 3.7 pJ)
    e = estimate_energy(model, SHAPE)
    ev = e.layers[names.index("blocks.0.attn.v")]
    want = (v.macs + v.act_macs + v.act_mults) * HOROWITZ_45NM.mult_j(32, kind="fp")
    assert ev.e_mult == pytest.approx(want, rel=1e-12)
    assert ev.mults == v.macs + v.act_macs + v.act_mults


def test_compressed_vit_prices_attention_at_activation_width(compressed_models):
    _, small = compressed_models["vit", "log-uniform"]
    counts = count_model(small, SHAPE)
    names = [c.name.split(":")[0] for c in counts]
    i = names.index("blocks.1.attn.v")
    c, e = counts[i], estimate_energy(small, SHAPE).layers[i]
    assert e.arith.startswith(f"int {c.weight_bits}x16")
    want = (c.macs_nonzero * HOROWITZ_45NM.mult_j(c.weight_bits, 16)
            + (c.act_macs + c.act_mults) * HOROWITZ_45NM.mult_j(16, 16))
    assert e.e_mult == pytest.approx(want, rel=1e-12)


def test_chain_with_layer_norm_and_gelu_by_hand():
    model = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.GELU(), nn.Linear(8, 2)).eval()
    c = count_model(model, (8,))[0]
    n = 8
    # LayerNorm: mean (1 mult), squares (n), variance (1), normalize (n), scale (n), plus one
    # rsqrt (10 mults, 4 adds); sums n - 1 twice, x - mean n, + eps 1, shift n
    # GELU per element: 3 mults and 1 add, one erf = its own 8 mults and 6 adds, an exp
    # (8, 9) and a reciprocal (6, 4)
    assert c.act_mults == (3 * n + 2 + 10) + n * (3 + 8 + 8 + 6)
    assert c.norm_adds == (4 * n - 1 + 4) + n * (1 + 6 + 9 + 4)
    assert c.n_extra_params == 2 * n


def test_energy_names_what_it_cannot_price():
    model = nn.Sequential(nn.Linear(4, 4), nn.GELU(approximate="tanh"))
    with pytest.raises(ModelError, match=r"GELU\(approximate='tanh'\)"):
        count_model(model, (4,))


class FunctionalNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x):
        return F.layer_norm(self.fc(x), (6,))


class SineFirst(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x):
        return self.fc(torch.sin(x))


def test_functional_layer_norm_is_named():
    with pytest.raises(ModelError, match=r"\(layer_norm\).*not supported by the energy model"):
        count_model(FunctionalNorm(), (6,))
    with pytest.raises(ModelError, match=r"\(sin\).*not supported"):  # before any weight layer
        count_model(SineFirst(), (6,))


def test_weights_mode_dense_original_is_the_same_architecture(compressed_models):
    from kwh.energy.sources import dense_reference
    _, small = compressed_models["resnet20", "group-horseshoe"]
    dense, label = dense_reference(small.kwh_summary, model=small)
    assert label == "ResNet" and not hasattr(dense.fc, "kwh_bits")
    assert [c.macs for c in count_model(dense, SHAPE)] == \
        [c.macs for c in count_model(build("resnet20").eval(), SHAPE)]
    assert estimate_energy(small, SHAPE).total_j < estimate_energy(dense, SHAPE).total_j
    assert hasattr(small.fc, "kwh_bits")  # the model itself is left as it was
