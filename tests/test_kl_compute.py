"""Per-layer KL weights from compute (kwh.bayes.scale_kl_by_compute_): the weights' uses read
off a forward pass, the scales, the scaled objective, and the training config that applies it."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kwh.bayes import (bayes_layers, bayesify_, free_energy, kl_divergence,
                       scale_kl_by_compute_, scaled_kl, weight_uses)
from kwh.errors import KwhError
from kwh.train import TrainConfig
from kwh.train.build import BAYESIAN, build_model


def _conv_net() -> nn.Module:
    # 8x8 input: conv a at 8x8 (64 uses, 18 weights), conv b stride 2 at 4x4 (16 uses, 72
    # weights), the classifier once (640 weights: the largest layer, the reference)
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(64, 10))


def test_uses_are_the_output_positions_of_each_weight():
    net = _conv_net()
    bayesify_(net, "log-uniform")
    assert weight_uses(net, torch.zeros(1, 1, 8, 8)) == {"0": 64, "2": 16, "5": 1}


@pytest.mark.parametrize("power, expected", [(0.5, {"0": 8.0, "2": 4.0, "5": 1.0}),
                                             (1.0, {"0": 64.0, "2": 16.0, "5": 1.0}),
                                             (0.0, {"0": 1.0, "2": 1.0, "5": 1.0})])
def test_scales_are_uses_over_the_largest_layers_to_the_power(power, expected):
    net = _conv_net()
    bayesify_(net, "group-nj")
    assert scale_kl_by_compute_(net, torch.zeros(1, 1, 8, 8), power) == expected
    assert {n: m.kl_scale for n, m in bayes_layers(net)} == expected


def test_no_layer_pays_less_than_the_free_energy():
    # the largest layer is the convolution (9,216 weights, used 36 times); the classifier's
    # 2,304 weights are used once and keep scale 1, not 1/36 ** power
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(16, 64, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64 * 36, 1))
    bayesify_(net, "log-uniform")
    scales = scale_kl_by_compute_(net, torch.zeros(1, 16, 8, 8), 1.0)
    assert scales == {"0": 1.0, "3": 1.0}


class _Tokens(nn.Module):
    """A Linear applied to 5 tokens, and one module called twice."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 3)
        self.head = nn.Linear(15, 2)

    def forward(self, x):
        t = self.proj(self.proj(x))  # (B, 5, 3), the same weights twice
        return self.head(t.flatten(1))


def test_token_linear_and_a_layer_called_twice():
    net = _Tokens()
    bayesify_(net, "log-uniform")
    assert weight_uses(net, torch.zeros(1, 5, 3)) == {"proj": 10, "head": 1}
    # the head has the most weights (30 against 9): proj pays (10 / 1) ** 0.5
    scales = scale_kl_by_compute_(net, torch.zeros(1, 5, 3), 0.5)
    assert scales["head"] == 1.0 and scales["proj"] == pytest.approx(math.sqrt(10))


def test_scaled_kl_and_the_free_energy_weigh_each_layer():
    net = _conv_net()
    bayesify_(net, "log-uniform")
    with torch.no_grad():
        plain = kl_divergence(net)
        assert torch.equal(scaled_kl(net), plain)  # every scale 1: the free energy itself
        scale_kl_by_compute_(net, torch.zeros(1, 1, 8, 8), 1.0)
        want = sum(m.kl() * m.kl_scale for _, m in bayes_layers(net))
        assert torch.allclose(scaled_kl(net), want)
        assert scaled_kl(net) > plain
        assert torch.allclose(kl_divergence(net), plain)  # the KL itself is unchanged
        nll = torch.tensor(0.3)
        assert torch.allclose(free_energy(net, nll, 1000), nll + want / 1000)


def test_the_models_mode_is_kept_and_its_output_untouched():
    net = _conv_net()
    bayesify_(net, "log-uniform")
    net.train()
    scale_kl_by_compute_(net, torch.zeros(1, 1, 8, 8))
    assert all(m.training for m in net.modules())


def test_bad_inputs_are_named():
    net = _conv_net()
    bayesify_(net, "log-uniform")
    with pytest.raises(ValueError, match="one example with a batch dimension of 1"):
        weight_uses(net, torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="power must be a finite number >= 0"):
        scale_kl_by_compute_(net, torch.zeros(1, 1, 8, 8), -0.5)
    with pytest.raises(ValueError, match="power must be a finite number >= 0"):
        scale_kl_by_compute_(net, torch.zeros(1, 1, 8, 8), float("nan"))
    with pytest.raises(ValueError, match="no Bayesian layers"):
        weight_uses(_conv_net(), torch.zeros(1, 1, 8, 8))

    class Skips(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Linear(4, 2), nn.Linear(4, 2)

        def forward(self, x):
            return self.used(x)

    s = Skips()
    bayesify_(s, "log-uniform")
    with pytest.raises(ValueError, match="does not reach the Bayesian layer.*unused"):
        weight_uses(s, torch.zeros(1, 4))


def test_the_training_config_applies_it():
    cfg = TrainConfig(model="lenet5", data="mnist", prior="log-uniform",
                      kl_compute_power=0.5)
    model = build_model(cfg, BAYESIAN)
    # LeNet-5-Caffe on 28x28: conv1 at 24x24, conv2 at 8x8, the two Linear layers once
    assert [m.kl_scale for _, m in bayes_layers(model)] == [24.0, 8.0, 1.0, 1.0]
    plain = build_model(TrainConfig(model="lenet5", data="mnist", prior="log-uniform"), BAYESIAN)
    assert [m.kl_scale for _, m in bayes_layers(plain)] == [1.0] * 4
    assert TrainConfig.from_dict(cfg.to_dict()).kl_compute_power == 0.5


@pytest.mark.parametrize("value", [-1.0, float("inf"), True, "0.5"])
def test_the_config_refuses_bad_powers(value):
    with pytest.raises(KwhError, match="kl_compute_power must be a finite number >= 0"):
        TrainConfig(kl_compute_power=value)
