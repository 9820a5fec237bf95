"""Bits from the posterior variance (Louizos et al. 2017, sec. 4) and the fixed-point quantizer.

Oracles: hand-made posteriors whose variances sit at known places between powers of two, and
the formulas t_ij = clip(floor(log2(1 / (2 Var))), 0, 23), t_l = ceil(mean t_ij),
w_q = floor(w 2^t + 1/2) 2^-t, bits = 1 + bit_length(max |q|), worked out by hand.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import kwh
from kwh.bayes import bayes_layers
from kwh.compress import CompressConfig
from kwh.compress.precision import (
    choose_precision,
    frac_bits_per_weight,
    layer_frac_bits,
    magnitude_bits,
    quantize,
    quantize_ints,
)
from kwh.errors import ModelError


def test_frac_bits_at_and_between_powers_of_two():
    k = torch.arange(0, 24, dtype=torch.float64)
    at = 2.0 ** -(k + 1)  # 1 / (2 Var) = 2^k exactly: t = k
    assert frac_bits_per_weight(at).tolist() == k.long().tolist()
    above = at * 1.01  # a little more variance: one bit less (clipped at 0)
    assert frac_bits_per_weight(above).tolist() == (k - 1).clamp_min(0).long().tolist()
    inside = at * 0.7  # log2(1/(2 Var)) = k + 0.51: still k
    assert frac_bits_per_weight(inside).tolist() == k.long().tolist()
    ends = torch.tensor([0.0, 1e-30, 2.0 ** -40, 0.5, 1.0, 100.0], dtype=torch.float64)
    assert frac_bits_per_weight(ends).tolist() == [23, 23, 23, 0, 0, 0]


def test_layer_bits_average_only_the_kept_weights():
    var = 2.0 ** -(torch.tensor([3, 4, 4, 10, 10], dtype=torch.float64) + 1)
    kept = torch.tensor([True, True, True, False, False])
    assert layer_frac_bits(var, kept) == math.ceil((3 + 4 + 4) / 3) == 4
    assert layer_frac_bits(var, torch.tensor([False, True, True, False, False])) == 4  # exact 4
    assert layer_frac_bits(var, torch.zeros(5, dtype=torch.bool)) == 0


def test_quantized_weights_are_integers_times_two_to_minus_t_and_near_the_mean():
    w = torch.randn(1000, dtype=torch.float64)
    for t in (0, 3, 11, 23):
        q = quantize(w, t)
        assert torch.equal(q * 2.0 ** t, (q * 2.0 ** t).round())
        assert (q - w).abs().max() <= 2.0 ** -(t + 1)
    half = torch.tensor([0.5, -0.5, 1.5, -1.5], dtype=torch.float64) * 2.0 ** -4
    assert quantize_ints(half, 4).tolist() == [1, 0, 2, -1]  # floor(x + 1/2): ties go up


def _case(max_abs: float, n: int = 64) -> torch.Tensor:
    w = torch.linspace(-max_abs * 0.9, max_abs, n, dtype=torch.float64)
    return w


def test_exponent_for_small_weights_is_negative_and_bits_still_hold_every_integer():
    w = _case(0.1)  # max |w| < 0.5: where the reference's exponent formula breaks
    var = torch.full_like(w, 2.0 ** -9 * 0.7)  # t_ij = 8 for every weight
    p = choose_precision("fc", w, var, torch.ones_like(w, dtype=torch.bool), CompressConfig())
    assert p.frac_bits == 8
    assert int(quantize_ints(w, 8).abs().max()) == round(0.1 * 256) == 26  # 5 magnitude bits
    assert (p.bits, p.exp_bits) == (6, 5 - 8)
    assert p.bits == 1 + p.exp_bits + p.frac_bits
    assert int(quantize_ints(w, 8).abs().max()) <= 2 ** (p.bits - 1) - 1


def test_exponent_for_large_weights_and_for_weights_that_round_to_zero():
    w = _case(3.7)
    var = torch.full_like(w, 2.0 ** -11 * 0.7)  # t = 10; max q = round(3.7 * 1024) = 3789
    p = choose_precision("fc", w, var, torch.ones_like(w, dtype=torch.bool), CompressConfig())
    assert (p.frac_bits, p.bits, p.exp_bits) == (10, 1 + (3789).bit_length(), 12 - 10)
    tiny = _case(0.001)
    var = torch.full_like(tiny, 2.0 ** -5 * 0.7)  # t = 4: every weight rounds to 0
    p = choose_precision("fc", tiny, var, torch.ones_like(tiny, dtype=torch.bool), CompressConfig())
    assert (p.frac_bits, p.bits, p.exp_bits) == (4, 2, 1 - 4)
    assert magnitude_bits(tiny, 4) == 1


def test_bits_override_chooses_t_from_the_largest_weight():
    w = _case(0.1)
    kept = torch.ones_like(w, dtype=torch.bool)
    p = choose_precision("fc", w, None, kept, CompressConfig(bits={"fc": 6}))
    # t = 8: round(0.1 * 256) = 26 fits 5 magnitude bits; t = 9 gives 51, which does not
    assert (p.frac_bits, p.bits, p.source) == (8, 6, "override")
    big = _case(3.7)
    with pytest.raises(ModelError, match="allow at least 4 bits"):  # round(3.7) = 4: 3 bits
        choose_precision("fc", big, None, kept, CompressConfig(bits={"fc": 3}))


def test_max_bits_caps_the_posterior_choice_and_float32_caps_everything():
    w = _case(0.1)
    kept = torch.ones_like(w, dtype=torch.bool)
    var = torch.full_like(w, 2.0 ** -13 * 0.7)  # t = 12: 0.1 * 4096 -> 410, 9 magnitude bits
    p = choose_precision("fc", w, var, kept, CompressConfig())
    assert (p.frac_bits, p.bits) == (12, 10)
    p = choose_precision("fc", w, var, kept, CompressConfig(max_bits=6))
    assert (p.frac_bits, p.bits, p.posterior_frac_bits) == (8, 6, 12)
    assert p.source == "posterior, capped by max_bits"
    huge = _case(100.0)
    p = choose_precision("fc", huge, torch.zeros_like(huge), kept, CompressConfig())
    # t = 23 wanted; 100 * 2^17 < 2^24 <= 100 * 2^18: 24 magnitude bits at t = 17
    assert (p.frac_bits, p.bits, p.source) == (17, 25, "posterior, capped to fit float32")


@pytest.mark.parametrize("fold", [True, False])
def test_bits_of_a_bayesian_layer_from_its_posterior_and_batchnorm_scale(fold):
    model = nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3))
    kwh.bayesify_(model, "log-uniform")
    layers = dict(bayes_layers(model))
    with torch.no_grad():
        for name, k in (("0", 12), ("3", 9)):
            p = layers[name].prior
            p.theta.uniform_(0.2, 0.9)
            p.log_sigma2.fill_(math.log(2.0 ** -(k + 1) * 0.7))  # Var: t_ij = k for each weight
        bn = model[1]
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0)
        bn.weight.fill_(4.0)  # folded: W' = 4 W, Var' = 16 Var, so t drops by 4
        bn.bias.zero_()
    small = kwh.compress(model.eval(), fold_batchnorm=fold)
    lin = [m for m in small if isinstance(m, nn.Linear)]
    assert [m.kwh_frac_bits for m in lin] == [12 - 4 if fold else 12, 9]
    ref = layers["3"].prior.theta.detach().double()
    assert (lin[1].weight.double() - ref).abs().max() <= 2.0 ** -10
