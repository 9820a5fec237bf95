"""Binary networks: straight-through gradients, binarize_, the XNOR reference, their energy."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kwh
from kwh.binary import (BinaryConv2d, BinaryLinear, binarize_, clip_latent_, clip_on_step,
                        pack_signs, popcount, sign, sign_ste, ternary_ste, xnor_conv2d,
                        xnor_linear, xnor_matmul)
from kwh.energy import EnergyConfig, count_model, estimate_energy
from kwh.energy.popcount import popcount_tree
from kwh.errors import KwhError, ModelError
from kwh.models import lenet5, lenet300

PJ = 1e-12
SRAM_1MB_BIT = 100 * PJ / 64   # Horowitz: 100 pJ per 64-bit read of a 1 MB SRAM
ADD8 = 0.03 * PJ               # Horowitz: 8-bit integer add


def _signs(*shape, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, shape, generator=g).float() * 2 - 1


# -- the estimators ---------------------------------------------------------------------------

def test_sign_of_zero_is_plus_one():
    x = torch.tensor([-2.0, -0.0, 0.0, 1e-9, 3.0])
    assert sign(x).tolist() == [-1.0, 1.0, 1.0, 1.0, 1.0]
    assert ternary_ste(torch.tensor([-0.6, -0.5, 0.0, 0.5, 0.6])).tolist() == [-1, 0, 0, 0, 1]


@pytest.mark.parametrize("fn", [sign_ste, ternary_ste])
def test_straight_through_gradient_is_upstream_masked_by_unit_interval(fn):
    x = torch.tensor([-3.0, -1.0, -0.7, 0.0, 0.2, 1.0, 1.0001, 5.0]).requires_grad_()
    up = torch.arange(1.0, 9.0)
    fn(x).backward(up)
    assert torch.equal(x.grad, up * (x.detach().abs() <= 1))


def test_weight_gradient_is_straight_through():
    layer = BinaryLinear(5, 3, bias=False, inputs="binary")
    with torch.no_grad():  # latent weights outside [-1, 1] get no gradient
        layer.weight.copy_(torch.tensor([[0.5, -1.5, 0.0, 1.0, -0.2]] * 3) * torch.tensor(
            [[1.0], [2.0], [-0.5]]))
    x = torch.randn(4, 5)
    up = torch.randn(4, 3)
    layer(x).backward(up)
    w = layer.weight.detach()
    expect = (up.T @ sign(x)) * (w.abs() <= 1)           # (3, 5)
    torch.testing.assert_close(layer.weight.grad, expect)


@pytest.mark.parametrize("scale", ["none", "channel"])
def test_forward_is_linear_of_signs(scale):
    layer = BinaryLinear(9, 4, scale=scale)
    x = torch.randn(6, 9)
    y = F.linear(sign(x), sign(layer.weight.detach()))
    if scale == "channel":  # XNOR-Net: mean |W| per output channel
        y = y * layer.weight.detach().abs().mean(1)
    assert torch.equal(layer(x).detach(), y + layer.bias.detach())
    conv = BinaryConv2d(3, 5, 3, padding=1, scale=scale)
    xc = torch.randn(2, 3, 7, 7)
    yc = F.conv2d(sign(xc), sign(conv.weight.detach()), None, 1, 1)
    if scale == "channel":
        yc = yc * conv.weight.detach().abs().mean((1, 2, 3)).view(-1, 1, 1)
    assert torch.equal(conv(xc).detach(), yc + conv.bias.detach().view(-1, 1, 1))


# -- the exact XNOR / popcount reference -------------------------------------------------------

def test_pack_and_popcount():
    x = torch.tensor([[1.0, -1, -1, 1, 1, 1, 1, -1, -1]])  # 9 signs: 2 words, the last padded
    assert pack_signs(x).tolist() == [[0b01100001, 0b10000000]]
    words = torch.arange(256).to(torch.uint8)
    assert popcount(words).tolist() == [bin(i).count("1") for i in range(256)]
    with pytest.raises(KwhError, match=r"\+1 and -1"):
        pack_signs(torch.tensor([1.0, 0.0]))


@pytest.mark.parametrize("n", [1, 7, 8, 77, 300])
def test_xnor_matmul_is_the_integer_dot_product(n):
    a, w = _signs(13, n, seed=1), _signs(6, n, seed=2)
    assert torch.equal(xnor_matmul(a, w), a.long() @ w.long().T)


@pytest.mark.parametrize("scale,bias", [("none", False), ("channel", True)])
def test_xnor_linear_equals_float_forward_exactly(scale, bias):
    layer = BinaryLinear(300, 100, bias, scale=scale)
    x = torch.randn(2, 5, 300)
    assert torch.equal(xnor_linear(layer, x), layer(x).detach())


@pytest.mark.parametrize("shape,kw", [
    ((3, 8, 3), dict()),
    ((6, 4, (3, 2)), dict(stride=2, dilation=(2, 1), groups=2, scale="channel")),
    ((20, 50, 5), dict(bias=False)),
])
def test_xnor_conv2d_equals_float_forward_exactly(shape, kw):
    conv = BinaryConv2d(*shape, **kw)
    x = torch.randn(2, shape[0], 12, 11)
    assert torch.equal(xnor_conv2d(conv, x), conv(x).detach())


def test_xnor_reference_refuses_what_it_cannot_compute():
    with pytest.raises(ModelError, match="padding=0 only"):
        xnor_conv2d(BinaryConv2d(2, 2, 3, padding=1), torch.randn(1, 2, 5, 5))
    with pytest.raises(KwhError, match="ternary"):
        xnor_linear(BinaryLinear(4, 2, inputs="ternary"), torch.randn(1, 4))
    real = BinaryLinear(4, 2, inputs="real")
    with pytest.raises(KwhError, match=r"\+1 and -1"):
        xnor_linear(real, torch.randn(1, 4))
    x = _signs(3, 4)  # real inputs that already are +-1 are fine
    assert torch.equal(xnor_linear(real, x), real(x).detach())


# -- binarize_ -----------------------------------------------------------------------------------

def test_binarize_lenet300_as_documented():
    torch.manual_seed(0)
    model = lenet300()
    keys = list(model.state_dict())
    w1 = model[1].weight
    report = kwh.binarize_(model)
    assert isinstance(model[1], BinaryLinear) and model[1].inputs == "real"   # first: real in
    assert isinstance(model[3], BinaryLinear) and model[3].inputs == "binary"
    assert type(model[5]) is nn.Linear                                         # last: kept
    assert isinstance(model[2], nn.Hardtanh) and isinstance(model[4], nn.ReLU)  # feeds fp fc3
    assert model[1].weight is w1 and float(w1.detach().abs().max()) <= 1   # same Parameter, clipped
    assert list(model.state_dict()) == keys
    assert report.converted == {"1": "real", "3": "binary"}
    assert report.kept == ["5"] and report.hardtanh == ["2"]
    assert "converted 2 layers" in str(report)
    assert torch.isfinite(model(torch.randn(4, 1, 28, 28))).all()


def test_binarize_lenet5_every_layer_with_scales():
    model = lenet5()
    report = binarize_(model, first_layer="binary", last_layer="binary", scale="channel")
    layers = [model[i] for i in (0, 3, 7, 9)]
    assert [type(m) for m in layers] == [BinaryConv2d, BinaryConv2d, BinaryLinear, BinaryLinear]
    assert all(m.inputs == "binary" and m.scale == "channel" for m in layers)
    assert report.hardtanh == ["1", "4", "8"] and report.kept == []
    y = model(torch.randn(3, 1, 28, 28))
    assert y.shape == (3, 10) and torch.isfinite(y).all()


def test_binarize_weights_only_and_ternary():
    model = lenet300()
    report = binarize_(model, activations="none")
    assert [model[i].inputs for i in (1, 3)] == ["real", "real"] and report.hardtanh == []
    model = lenet5()
    binarize_(model, activations="ternary", threshold=0.25)
    assert model[3].inputs == "ternary" and model[3].threshold == 0.25
    assert torch.isfinite(model(torch.randn(2, 1, 28, 28))).all()


def test_binarize_keeps_a_shared_layer_shared():
    fc = nn.Linear(4, 4)
    model = nn.Sequential(nn.Linear(4, 4), fc, nn.Sequential(fc), nn.Linear(4, 2))
    binarize_(model)
    assert isinstance(model[1], BinaryLinear) and model[2][0] is model[1]


@pytest.mark.parametrize("kw,match", [
    (dict(activations="sign"), "Unknown activations 'sign'; choose one of: binary, ternary, none"),
    (dict(scale="filter"), "Unknown scale 'filter'; choose one of: none, channel"),
    (dict(first_layer="float"), "Unknown first_layer 'float'; choose one of: keep, binary"),
    (dict(last_layer="drop"), "Unknown last_layer 'drop'; choose one of: keep, binary"),
    (dict(threshold=1.5), r"threshold must be a number in \(0, 1\), got 1.5"),
])
def test_bad_options_raise(kw, match):
    with pytest.raises(KwhError, match=match):
        binarize_(lenet300(), **kw)


@pytest.mark.parametrize("model,match", [
    (nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(2, 2)), r"'0' \(Conv1d\)"),
    (nn.Sequential(nn.LSTM(3, 3)), r"'0' \(LSTM\) is not supported"),
    (nn.Sequential(nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect")), "padding_mode"),
    (nn.Sequential(nn.ReLU()), "no nn.Linear or nn.Conv2d"),
    (nn.Linear(3, 3), "wrap a single layer"),
])
def test_unsupported_models_raise(model, match):
    with pytest.raises(ModelError, match=match):
        binarize_(model)


def test_binarize_twice_raises():
    model = lenet300()
    binarize_(model)
    with pytest.raises(ModelError, match="already binary"):
        binarize_(model)


def test_layers_check_their_options():
    with pytest.raises(KwhError, match="Unknown inputs 'bits'"):
        BinaryLinear(2, 2, inputs="bits")
    with pytest.raises(KwhError, match="divisible by groups"):
        BinaryConv2d(3, 4, 3, groups=2)


# -- training -----------------------------------------------------------------------------------

def test_clip_latent():
    model = nn.Sequential(BinaryLinear(3, 2), nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.fill_(3.0)
        model[1].weight.fill_(3.0)
    assert clip_latent_(model) is model
    assert float(model[0].weight.detach().max()) == 1.0      # latent weights: clipped
    assert float(model[1].weight.detach().max()) == 3.0      # a float layer: left alone


def test_tiny_training_run_reduces_the_loss(one_thread):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 16, generator=g)
    y = (x @ torch.randn(16, generator=g) > 0).long()           # linearly separable
    model = nn.Sequential(nn.Linear(16, 64), nn.BatchNorm1d(64), nn.ReLU(),
                          nn.Linear(64, 2), nn.BatchNorm1d(2))  # BNN: BatchNorm after each
    binarize_(model, last_layer="binary")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    handle = clip_on_step(opt, model)

    def full_loss():
        model.eval()
        with torch.no_grad():
            out = model(x)
        model.train()
        return F.cross_entropy(out, y).item(), (out.argmax(1) == y).float().mean().item()

    before, _ = full_loss()
    for _ in range(200):
        i = torch.randint(0, 512, (64,), generator=g)
        loss = F.cross_entropy(model(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    after, acc = full_loss()
    handle.remove()
    assert after < 0.5 * before and acc > 0.85
    assert all(float(model[i].weight.detach().abs().max()) <= 1 for i in (0, 3))


# -- energy ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 16, 300])
def test_popcount_tree_has_n_minus_1_adders(n):
    levels = popcount_tree(n)
    assert sum(a for a, _ in levels) == n - 1 and len(levels) == math.ceil(math.log2(n))


def test_energy_of_one_small_binary_layer_by_hand():
    model = nn.Sequential(nn.Linear(4, 2, bias=False))
    binarize_(model, first_layer="binary", last_layer="binary")
    est = estimate_energy(model, (4,))
    (layer,) = est.layers
    e1 = ADD8 / 8                          # a 1-bit add: the table's 8-bit add, linear per bit
    acc = math.ceil(math.log2(4 + 1)) + 1  # n - 2 popcount in [-4, 4]: 4 bits
    assert layer.arith == f"xnor 1x1 -> popcount {acc}"
    assert layer.e_mult == pytest.approx(8 * e1)                  # 2 outputs x 4 XNORs
    tree = 2 * e1 + 1 * (2 * e1)                                  # 4 bits: 2 1-bit + 1 2-bit adds
    assert layer.e_add == pytest.approx(2 * (tree + acc * e1))    # + the n - 2 pc subtraction
    assert layer.weight_bits == 8 and layer.act_bits == 4 + 2     # 1 bit each
    assert layer.e_weight_mem == pytest.approx(8 * SRAM_1MB_BIT)
    assert layer.e_act_mem == pytest.approx(6 * SRAM_1MB_BIT)
    assert est.total_j == pytest.approx(8 * e1 + 2 * (tree + acc * e1) + 14 * SRAM_1MB_BIT)


def test_energy_counts_of_binary_layers():
    model = lenet5()
    binarize_(model, scale="channel")
    c = count_model(model, (1, 28, 28))
    assert [b.weight_bits for b in c] == [1, 1, 1, None]
    assert [b.input_bits for b in c] == [None, 1, 1, None]
    assert c[1].popcounts == {500: 50 * 8 * 8} and c[1].n_scales == 50
    assert c[1].scale_mults == 50 * 8 * 8
    padded = nn.Sequential(BinaryConv2d(2, 3, 3, padding=1))
    (p,) = count_model(padded, (2, 5, 5))
    assert sum(n * k for n, k in p.popcounts.items()) == p.macs       # padding taps: no terms
    assert p.popcounts == {8: 3 * 4, 12: 3 * 12, 18: 3 * 9}


def test_binarized_lenet300_costs_far_less_than_its_float_twin():
    dense = lenet300()
    model = lenet300()
    model.load_state_dict(dense.state_dict())
    binarize_(model)
    e_float = estimate_energy(dense, (1, 28, 28))
    e_bin = estimate_energy(model, (1, 28, 28))
    assert [l.arith for l in e_bin.layers] == ["int 1x16 -> 27", "xnor 1x1 -> popcount 10",
                                               "fp32"]
    assert e_bin.total_j < e_float.total_j / 100       # 1-bit weights stay on chip
    assert e_bin.compute_j < e_float.compute_j / 10
    cfg = EnergyConfig(sram_kb=0)                      # every bit from DRAM: still far below
    assert estimate_energy(model, (1, 28, 28), config=cfg).total_j \
        < estimate_energy(dense, (1, 28, 28), config=cfg).total_j / 10


def test_binary_layers_in_a_model_with_its_own_forward_are_priced():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return F.relu(self.fc(x))

    net = Net()
    binarize_(nn.Sequential(net), last_layer="binary")
    (c,) = count_model(net, (4,))  # traced: the layer and the functional ReLU after it
    assert c.weight_bits == 1 and c.compares == 2 and c.fused == ["ReLU"]
