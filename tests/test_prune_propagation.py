"""Dead-unit propagation on hand-built plain chains: shapes shrink as stated, outputs stay exact.

Oracle: the input model itself (float32); the small model must agree to 1e-5 on random inputs.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import kwh.compress
from kwh.compress import CompressConfig

TOL = 1e-5


def _small(model, shape, **opts):
    return kwh.compress.compress(model.eval(), CompressConfig(quantize=False, input_shape=shape,
                                                               **opts))


def _check_same(model, small, shape, n=16):
    x = torch.randn(n, *shape)
    with torch.no_grad():
        ref, out = model(x), small(x)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=TOL, rtol=0)


def _layers(small):
    return [m for m in small if isinstance(m, (nn.Linear, nn.Conv2d))]


@torch.no_grad()
def test_dead_conv_filter_removes_next_conv_input_channel():
    model = nn.Sequential(nn.Conv2d(2, 6, 3), nn.ReLU(), nn.Conv2d(6, 4, 3), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    model[0].weight[[1, 4]] = 0
    model[0].bias[[1, 4]] = -0.5  # relu(-0.5) = 0: a dead filter
    model[0].bias[2] = 0.3
    model[2].weight[:, 2] = 0  # nobody reads filter 2: it goes although it is alive
    small = _small(model, (2, 8, 8))
    c1, c2, _ = _layers(small)
    assert (c1.out_channels, c2.in_channels) == (3, 3)
    _check_same(model, small, (2, 8, 8))


@torch.no_grad()
def test_conv_flatten_linear_removes_hw_block_and_unread_filter():
    model = nn.Sequential(nn.Conv2d(1, 5, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(5 * 3 * 3, 7), nn.ReLU(), nn.Linear(7, 4))
    model[0].weight[3] = 0
    model[0].bias[3] = 0  # dead filter 3: its 9 inputs of the linear layer go
    model[4].weight[:, 1 * 9:2 * 9] = 0  # all 9 inputs of filter 1 pruned: filter 1 goes too
    model[4].weight[:, 0 * 9 + 4] = 0  # one input of filter 0 pruned: filter 0 stays
    small = _small(model, (1, 8, 8))
    c, l1, _ = _layers(small)
    assert c.out_channels == 3 and l1.in_features == 3 * 9
    assert int((l1.weight == 0).all(dim=0).sum()) == 1  # the single pruned input stays a zero
    assert small.kwh_summary["architecture"] == "3-26-7"
    _check_same(model, small, (1, 8, 8))


@torch.no_grad()
def test_constant_linear_unit_is_folded_into_next_bias():
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.Sigmoid(),
                          nn.Linear(4, 3))
    model[0].weight[2] = 0
    model[0].bias[2] = 0.7  # outputs relu(0.7) for every input: a constant
    model[2].weight[1] = 0
    model[2].bias[1] = -0.4  # outputs sigmoid(-0.4): constant, nonzero through the sigmoid
    small = _small(model, (6,))
    l0, l1, l2 = _layers(small)
    assert (l0.out_features, l1.in_features, l1.out_features, l2.in_features) == (4, 4, 3, 3)
    _check_same(model, small, (6,))


@torch.no_grad()
def test_pruned_input_unit_removes_previous_row_and_batchnorm_channel():
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.BatchNorm1d(5), nn.Linear(5, 3))
    bn = model[2]
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.uniform_(0.5, 1.5)
    bn.bias.uniform_(-1, 1)
    model[3].weight[:, [0, 3]] = 0  # input units 0 and 3 of the last layer pruned
    small = _small(model, (6,))
    l0, l1 = _layers(small)
    bns = [m for m in small if isinstance(m, nn.BatchNorm1d)]
    assert l0.out_features == 3 and l1.in_features == 3 and bns[0].num_features == 3
    _check_same(model, small, (6,))


@pytest.mark.parametrize("fold", [True, False])
@torch.no_grad()
def test_batchnorm_after_layer_folded_or_cut(fold):
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(3 * 4 * 4, 2))
    for bn in (model[1], model[4]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    model[3].weight[:, 1] = 0  # conv 2 ignores channel 1
    small = _small(model, (1, 6, 6), fold_batchnorm=fold)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in small)
    assert n_bn == (0 if fold else 2)
    assert _layers(small)[0].out_channels == 3
    _check_same(model, small, (1, 6, 6))


@torch.no_grad()
def test_constant_channel_into_unpadded_conv_folds_into_bias():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(4, 2, 3),
                          nn.Flatten(), nn.Linear(2 * 2 * 2, 2))
    model[0].weight[[0, 2]] = 0
    model[0].bias[0], model[0].bias[2] = 0.8, 1.3  # constant maps, seen whole by a valid conv
    small = _small(model, (1, 10, 10))
    assert _layers(small)[1].in_channels == 2
    assert small.kwh_summary["layers"][0]["carrier_units"] == 0
    _check_same(model, small, (1, 10, 10))


@torch.no_grad()
def test_constant_channels_into_padded_conv_share_one_carrier():
    model = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(6, 3, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(3 * 4 * 4, 2))
    model[0].weight[[0, 2, 5]] = 0
    model[0].bias[0], model[0].bias[2], model[0].bias[5] = 0.8, 1.3, -0.2  # 5 is dead (relu)
    small = _small(model, (1, 8, 8))
    c0, c1, _ = _layers(small)
    # padding makes the border see a constant differently: 0 and 2 merge into one carrier
    assert c0.out_channels == 4 and c1.in_channels == 4
    assert small.kwh_summary["layers"][0]["carrier_units"] == 1
    _check_same(model, small, (1, 8, 8))


@torch.no_grad()
def test_last_layer_outputs_are_never_removed():
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 6))
    model[2].weight[[1, 3]] = 0
    model[2].bias[[1, 3]] = 0
    small = _small(model, (5,))
    assert _layers(small)[-1].out_features == 6
    _check_same(model, small, (5,))


@torch.no_grad()
def test_removal_propagates_backwards_through_several_layers():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(),
                          nn.Linear(5, 3))
    model[4].weight[:, [0, 1]] = 0  # last layer ignores units 0, 1 of layer 2 ...
    model[2].weight[2:, 5] = 0  # ... and the units it still reads ignore unit 5 of layer 1
    small = _small(model, (4,))
    l0, l1, l2 = _layers(small)
    assert (l0.out_features, l1.out_features, l2.in_features) == (5, 3, 3)
    _check_same(model, small, (4,))


@torch.no_grad()
def test_a_layer_with_every_unit_dead_keeps_one_silent_unit():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    model[0].weight.zero_()
    model[0].bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    small = _small(model, (4,))
    assert _layers(small)[0].out_features == 1
    _check_same(model, small, (4,))


@torch.no_grad()
def test_model_is_left_unchanged():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    model[2].weight[:, 0] = 0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    kwh.compress.compress(model, CompressConfig(input_shape=(4,)))
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
