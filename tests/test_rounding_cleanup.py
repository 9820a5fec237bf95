"""Units whose every weight rounds to 0 on the layer's fixed-point grid leave the quantized model.

Oracle: the same network with each layer's weights rounded to the grid the compressed model
chose for it (``quantize`` of kwh.compress.precision), nothing removed. The compressed model
must compute the same outputs (float32, to 1e-5 of the largest) with fewer units, inputs and
weights, in a chain and in a graph with a residual addition, and after a save and load.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

import kwh
from kwh.compress.precision import quantize

TOL = 1e-5


def _weights_(layer: nn.Linear, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.weight.copy_(torch.rand(layer.weight.shape, generator=g) * 2 - 1)
        layer.bias.copy_(torch.rand(layer.bias.shape, generator=g) - 0.5)


@torch.no_grad()
def _chain() -> nn.Sequential:
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 3))
    for i, layer in enumerate(model):
        if isinstance(layer, nn.Linear):
            _weights_(layer, i)
    model[0].weight[2] = 0.05 * model[0].weight[2].sign()  # a unit of layer 0: rounds to 0
    model[0].weight[:, 4] = 0.01  # an input every layer-0 weight of which rounds to 0
    model[2].weight[1] = -0.1  # a unit of layer 2: rounds to 0, a constant relu(bias)
    model[2].bias[1] = 0.7  # ... that is not 0: it must be folded into layer 4's bias
    return model.eval()


class ResMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.fc1, self.fc2, self.out = (nn.Linear(6, 8), nn.Linear(8, 7),
                                                  nn.Linear(7, 8), nn.Linear(8, 3))

    def forward(self, x):
        a = F.relu(self.inp(x))
        return self.out(F.relu(self.fc2(F.relu(self.fc1(a))) + a))


@torch.no_grad()
def _resmlp() -> ResMLP:
    model = ResMLP()
    for i, layer in enumerate([model.inp, model.fc1, model.fc2, model.out]):
        _weights_(layer, 10 + i)
    model.fc1.weight[3] = 0.1  # a hidden unit of the block: rounds to 0, constant relu(0.4)
    model.fc1.bias[3] = 0.4
    return model.eval()


def _rounded(model: nn.Module, small: nn.Module, names: list[str]) -> nn.Module:
    """``model`` with each named layer's weights rounded to the grid ``small`` uses for it."""
    grids = [m.kwh_frac_bits for m in small.modules() if isinstance(m, nn.Linear)]
    naive = copy.deepcopy(model)
    with torch.no_grad():
        for name, t in zip(names, grids):
            layer = naive.get_submodule(name)
            layer.weight.copy_(quantize(layer.weight, t))
    return naive


def _check_same(small: nn.Module, naive: nn.Module) -> None:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(64, 6, generator=g)
    with torch.no_grad():
        ref = naive(x)
        torch.testing.assert_close(small(x), ref, rtol=0, atol=TOL * float(1 + ref.abs().max()))


def test_units_and_inputs_that_round_to_zero_leave_a_chain_exactly(tmp_path):
    model = _chain()
    small = kwh.compress.compress(model, input_shape=(6,), bits={"0": 3, "2": 3, "4": 8},
                                  float_bits=None)  # the oracle keeps float32 biases
    linears = [m for m in small.modules() if isinstance(m, nn.Linear)]
    assert [m.weight.shape[0] for m in linears] == [7, 4, 3]
    assert small.kwh_summary["units_removed_by_rounding"] == {"0": 1, "2": 1}
    select = small[0]
    assert isinstance(select, kwh.modules.SelectInputs)
    assert select.keep.tolist() == [1, 1, 1, 1, 0, 1]
    assert linears[0].weight.shape[1] == 5
    assert "1 rounded to 0, removed" in kwh.compress.format_summary(small.kwh_summary)
    _check_same(small, _rounded(model, small, ["0", "2", "4"]))
    path = tmp_path / "m.kwh"
    kwh.save(small, path)
    _check_same(kwh.load(path), _rounded(model, small, ["0", "2", "4"]))


def test_without_rounding_to_zero_nothing_is_removed():
    model = _chain()
    small = kwh.compress.compress(model, input_shape=(6,), bits={"0": 12, "2": 12, "4": 12},
                                  float_bits=None)
    assert "units_removed_by_rounding" not in small.kwh_summary
    assert [m.weight.shape[0] for m in small.modules() if isinstance(m, nn.Linear)] == [8, 5, 3]
    _check_same(small, _rounded(model, small, ["0", "2", "4"]))


def test_a_unit_that_rounds_to_zero_leaves_a_residual_graph_exactly(tmp_path):
    model = _resmlp()
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    small = kwh.compress.compress(model, example_inputs=x,
                                  bits={"inp": 8, "fc1": 3, "fc2": 8, "out": 8},
                                  float_bits=None)  # the oracle keeps float32 biases
    assert small.kwh_summary["units_removed_by_rounding"] == {"fc1": 1}
    assert small.get_submodule("fc1").weight.shape == (6, 8)
    assert small.get_submodule("fc2").weight.shape == (8, 6)
    names = ["inp", "fc1", "fc2", "out"]
    _check_same(small, _rounded(model, small, names))
    unquantized = kwh.compress.compress(model, example_inputs=x, quantize=False)
    assert unquantized.get_submodule("fc1").weight.shape == (7, 8)
    path = tmp_path / "g.kwh"
    kwh.save(small, path)
    _check_same(kwh.load(path), _rounded(model, small, names))
