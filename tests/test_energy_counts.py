"""Op counts of kwh.energy against brute-force loops over every output and weight."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from kwh.energy import count_model
from kwh.errors import ModelError


def brute_conv_macs(conv: nn.Conv2d, in_shape: tuple[int, int, int]) -> tuple[int, int]:
    """(all taps, nonzero-weight taps) that land inside the input, by explicit loops."""
    C, H, W = in_shape
    w = conv.weight.detach()
    O, Cg, kh, kw = w.shape
    sh, sw = conv.stride
    ph, pw = conv.padding
    dh, dw = conv.dilation
    Ho = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    Wo = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    per_group_out = O // conv.groups
    total = nonzero = 0
    for o, y, x in itertools.product(range(O), range(Ho), range(Wo)):
        g = o // per_group_out
        for c, i, j in itertools.product(range(Cg), range(kh), range(kw)):
            r, s = y * sh - ph + i * dh, x * sw - pw + j * dw
            if 0 <= r < H and 0 <= s < W:
                assert 0 <= g * Cg + c < C
                total += 1
                nonzero += int(w[o, c, i, j] != 0)
    return total, nonzero


@pytest.mark.parametrize("kw", [
    dict(kernel_size=3, stride=1, padding=1),
    dict(kernel_size=(3, 2), stride=(2, 1), padding=(2, 0)),
    dict(kernel_size=3, stride=2, padding=1, dilation=2),
    dict(kernel_size=3, padding=1, groups=2),
])
def test_conv_counts_equal_brute_force(kw):
    conv = nn.Conv2d(4, 6, bias=True, **kw)
    with torch.no_grad():
        conv.weight[torch.rand_like(conv.weight) < 0.6] = 0.0  # 60% pruned at random
        conv.weight[2] = 0.0                                    # and one whole filter
    in_shape = (4, 7, 6)
    (c,) = count_model(nn.Sequential(conv), in_shape)
    total, nonzero = brute_conv_macs(conv, in_shape)
    assert (c.macs, c.macs_nonzero) == (total, nonzero)
    assert c.n_weights == conv.weight.numel()
    assert c.n_nonzero == int((conv.weight != 0).sum())
    assert c.bias_adds == c.out_elems == 6 * conv(torch.zeros(1, *in_shape)).shape[2:].numel()
    assert c.fan_in == int((conv.weight != 0).flatten(1).sum(1).max())


def test_linear_counts_and_fused_ops():
    lin = nn.Linear(12, 5, bias=False)
    with torch.no_grad():
        lin.weight[:, :4] = 0.0      # pruned input units
        lin.weight[3, 7] = 0.0
    model = nn.Sequential(nn.Flatten(), lin, nn.ReLU(), nn.Linear(5, 3))
    c1, c2 = count_model(model, (3, 4))
    brute = sum(int(lin.weight[o, i] != 0) for o in range(5) for i in range(12))
    assert (c1.macs, c1.macs_nonzero, c1.bias_adds) == (60, brute, 0)
    assert c1.compares == 5 and c1.fused == ["ReLU"]
    assert c1.fan_in == 8
    assert (c2.macs, c2.bias_adds, c2.in_shape, c2.out_shape) == (15, 3, (5,), (3,))


def test_pooling_ops_and_block_output():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(2 * 3 * 3, 4), nn.Identity())
    c1, c2 = count_model(model, (1, 8, 8))
    assert c1.layer_out_shape == (2, 6, 6)
    assert c1.out_shape == (18,)                 # what the block writes: pooled, flattened
    assert c1.compares == 2 * 6 * 6 + 2 * 3 * 3 * 3  # ReLU per element + 3 per 2x2 window
    avg = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AvgPool2d(3))
    (a,) = count_model(avg, (1, 8, 8))
    assert a.pool_adds == 2 * 2 * 2 * 8 and a.compares == 0


def test_unsupported_layer_is_named():
    with pytest.raises(ModelError, match="Tanh.*supported"):
        count_model(nn.Sequential(nn.Linear(3, 3), nn.Tanh()), (3,))


def test_wrong_input_shape_is_reported():
    with pytest.raises(ModelError, match=r"shape \(5,\)"):
        count_model(nn.Sequential(nn.Linear(3, 3)), (5,))


def test_bad_kwh_bits_rejected():
    lin = nn.Linear(3, 3)
    lin.kwh_bits = 0
    with pytest.raises(ModelError, match="kwh_bits"):
        count_model(nn.Sequential(lin), (3,))


def test_bayesian_layers_count_their_masked_eval_weight():
    from kwh.bayes import bayes_layers, bayesify_
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    bayesify_(model, "group-nj")
    _, conv = next(bayes_layers(model))
    conv.threshold = float(conv.prior.log_alpha().detach().sort().values[1])  # prune 1-2 filters
    kept = int(conv.keep_mask().sum())
    c1, _ = count_model(model, (1, 6, 6))
    assert c1.macs == 4 * 4 * 4 * 9
    assert c1.macs_nonzero == kept * 4 * 4 * 9
