"""Models that are not an nn.Sequential: traced with torch.fx (kwh.graph), compressed as a chain
when their forward is one (as a graph otherwise: test_compress_dag.py), and refused with an
error naming the construct that no reading handles.

Oracle: the masked Bayesian model in eval mode on random inputs, to 1e-5, as for chains.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kwh
from kwh.errors import ModelError
from kwh.graph import ChainError, chain, example_input

from any_models import Branchy, SkipSequential, Twice, random_posterior_

TOL = 1e-5
PRIORS = ["group-horseshoe", "group-nj", "log-uniform"]


class FeaturesHead(nn.Module):
    """A BatchNorm CNN written the usual way: a features block, functional calls, a head."""

    def __init__(self, log_softmax: bool = True):
        super().__init__()
        self.log_softmax = log_softmax
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.conv2 = nn.Conv2d(8, 12, 3)
        self.head = nn.Sequential(nn.Linear(12 * 3 * 3, 20), nn.ReLU(), nn.Dropout(0.2),
                                  nn.Linear(20, 10))

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.features(x)), 2)
        x = torch.relu(self.conv2(x))
        x = F.avg_pool2d(x, 2)
        x = x.view(x.size(0), -1)
        x = self.head(x)
        return F.log_softmax(x, dim=1) if self.log_softmax else x


class Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        y = self.fc(x)
        return y, y.softmax(1)


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = nn.Linear(6, 4), nn.Linear(6, 4), nn.Linear(8, 3)

    def forward(self, x):
        return self.out(torch.cat([self.a(x), self.b(x)], 1))


@pytest.mark.parametrize("prior", PRIORS)
def test_own_forward_chain_compresses_exactly(prior):
    torch.manual_seed(0)
    model = FeaturesHead()
    kwh.bayesify_(model, prior)
    random_posterior_(model)
    model.eval()
    x = torch.randn(16, 1, 16, 16)
    small = kwh.compress(model, example_inputs=x, quantize=False)
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), atol=TOL, rtol=0)
    s = small.kwh_summary
    assert s["weights"] < s["weights_original"]
    names = [d["name"] for d in s["layers"]]
    assert names == ["features.0", "conv2", "head.0", "head.3"]  # the user's module paths
    # quantized too, and the input shape alone is enough (a random example is traced)
    q = kwh.compress(model, input_shape=(1, 16, 16))
    with torch.no_grad():
        assert (q(x).argmax(1) == model(x).argmax(1)).float().mean() > 0.8


def test_chain_maps_functions_to_modules():
    model = FeaturesHead().eval()
    links = chain(model, example_input(model, (1, 16, 16)))
    kinds = [type(link.module).__name__ for link in links]
    assert kinds == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "AvgPool2d",
                     "Flatten", "Linear", "ReLU", "Dropout", "Linear", "LogSoftmax"]


def test_sequential_subclass_with_skip_is_not_a_chain_but_a_graph():
    model = SkipSequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3))
    kwh.bayesify_(model, "group-nj")
    model.eval()
    x = torch.randn(8, 6)
    with pytest.raises(ChainError, match=r"combines 2 paths.*residual connection"):
        chain(model, x)
    small = kwh.compress(model, input_shape=(6,), quantize=False)  # pruned as a graph
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), atol=TOL, rtol=0)


def test_data_dependent_branch_is_refused():
    model = Branchy()
    kwh.bayesify_(model, "group-nj")
    with pytest.raises(ModelError, match="data-dependent control flow"):
        kwh.compress(model, example_inputs=torch.randn(4, 6))


def test_module_called_twice_is_refused():
    model = Twice()
    kwh.bayesify_(model, "log-uniform")
    with pytest.raises(ModelError, match=r"module 'fc' is called more than once"):
        kwh.compress(model, example_inputs=torch.randn(4, 6))


def test_other_constructs_are_named():
    with pytest.raises(ModelError, match="returns a tuple"):
        kwh.compress(Pair(), example_inputs=torch.randn(4, 6))
    with pytest.raises(ChainError, match="concatenates 2"):  # a graph, not a chain
        chain(Concat(), torch.randn(4, 6))


def test_traced_model_needs_a_shape():
    with pytest.raises(ModelError, match="example_inputs"):
        kwh.compress(FeaturesHead())


def test_example_inputs_must_agree_with_input_shape():
    with pytest.raises(ModelError, match="example_inputs have shape"):
        kwh.compress(FeaturesHead(), example_inputs=torch.randn(2, 1, 16, 16),
                     input_shape=(1, 28, 28))


def test_sigma_delta_on_a_traced_model_equals_rounding_network():
    from kwh.spike import DenseFrameNet, RoundingNet, SigmaDeltaNet, build_plan
    from kwh.spike.plan import reference_forward
    torch.manual_seed(4)
    model = FeaturesHead(log_softmax=False)
    random_posterior_(model)  # BatchNorm statistics to fold
    model.eval()
    frames = torch.rand(10, 3, 1, 16, 16).cumsum(0) / 10  # (T, B, frame): slowly changing
    plan = build_plan(model, example_inputs=frames[0])
    with torch.no_grad():  # the plan is the model (BatchNorm folded)
        torch.testing.assert_close(reference_forward(plan, frames[0]), model(frames[0]),
                                   atol=1e-5, rtol=0)
    sd = SigmaDeltaNet(plan, 4.0).run(frames)
    rn = RoundingNet(plan, 4.0).run(frames)
    scale = float(rn.outputs.abs().max())
    assert torch.allclose(sd.outputs, rn.outputs, rtol=0, atol=1e-6 * scale)
    assert (rn.outputs - DenseFrameNet(plan).run(frames).outputs).abs().max() > 1e-3 * scale
    with pytest.raises(ModelError, match="example_inputs"):
        build_plan(model)


class Residual(nn.Module):
    """A small ResNet-style block net: conv-BN-ReLU, a residual block, pooling, a head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.c1, self.c2 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.c2(F.relu(self.c1(x))))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("cls", [Residual, SkipSequential, Twice, Branchy])
def test_weights_mode_takes_any_model(cls, prior):
    torch.manual_seed(5)
    model = SkipSequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3)) \
        if cls is SkipSequential else cls()
    kwh.bayesify_(model, prior)
    random_posterior_(model)
    model.eval()
    x = torch.randn(8, 1, 8, 8) if cls is Residual else torch.randn(8, 6)
    if cls in (Twice, Branchy):  # no structured reading: shared weights, control flow
        with pytest.raises(ModelError):
            kwh.compress(model, example_inputs=x)
    else:  # a graph: pruned structurally, exactly
        pruned = kwh.compress(model, example_inputs=x, quantize=False)
        with torch.no_grad():
            torch.testing.assert_close(pruned(x), model(x), atol=TOL, rtol=0)
    exact = kwh.compress(model, mode="weights", quantize=False)
    assert type(exact) is type(model)  # the architecture unchanged
    with torch.no_grad():
        torch.testing.assert_close(exact(x), model(x), atol=TOL, rtol=0)
    small = kwh.compress(model, mode="weights")
    s = small.kwh_summary
    assert s["mode"] == "weights" and s["nonzero"] < s["weights_original"]
    plain = [m for m in small.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert plain and all(m.kwh_bits < 32 for m in plain)
    for m in plain:  # the stored weights are the quantized integers times 2^-frac_bits
        q = m.weight.double() * 2.0 ** m.kwh_frac_bits
        assert torch.equal(q, q.round())
    assert "architecture unchanged" in str(s)
    with torch.no_grad():
        assert (small(x) - model(x)).abs().max() < 0.5 * model(x).abs().max()


def test_weights_mode_rejects_a_model_without_bayesian_layers():
    with pytest.raises(ModelError, match="no Bayesian layer"):
        kwh.compress(Twice(), mode="weights")
    with pytest.raises(ValueError, match="mode must be"):
        kwh.compress(Twice(), mode="graph")


def test_energy_counts_a_traced_model_like_its_chain():
    from kwh.energy.counts import count_model
    model = FeaturesHead(log_softmax=False).eval()
    links = chain(model, example_input(model, (1, 16, 16)))
    seq = nn.Sequential(*[link.module for link in links])
    got, want = count_model(model, (1, 16, 16)), count_model(seq, (1, 16, 16))
    fields = ("macs", "macs_nonzero", "compares", "pool_adds", "bias_adds", "in_shape",
              "out_shape")
    assert [[getattr(c, f) for f in fields] for c in got] == \
        [[getattr(c, f) for f in fields] for c in want]
    assert got[1].compares > 0  # torch.relu after conv2: a functional call, counted


def test_energy_counts_residual_additions():
    from kwh.energy import estimate_energy
    from kwh.energy.counts import count_model
    model = Residual().eval()
    counts = count_model(model, (1, 8, 8))
    assert [c.name.split(":")[0] for c in counts] == ["stem.0", "c1", "c2", "head"]
    assert counts[2].elementwise_adds == 8 * 8 * 8 and counts[2].extra_in_elems == 8 * 8 * 8
    assert counts[2].pool_adds == 8 * 8 * 8 - 8  # the global average pool's sums
    assert sum(c.elementwise_adds for c in counts) == 512
    # each conv's MACs as counted on its own (taps inside the 8x8 input only)
    alone = count_model(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1)), (8, 8, 8))[0]
    assert counts[1].macs == counts[2].macs == alone.macs
    e = estimate_energy(model, (1, 8, 8))
    assert e.total_j > 0


class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = self.a(x)
        return self.b(h * h.relu())


def test_energy_names_what_it_cannot_price():
    from kwh.energy.counts import count_model
    with pytest.raises(ModelError, match=r"\(mul\).*not supported by the energy model"):
        count_model(Gated(), (6,))
    with pytest.raises(ModelError, match="data-dependent control flow"):
        count_model(Branchy(), (6,))


def test_energy_prices_a_binarized_model_with_its_own_forward():
    from kwh.energy import estimate_energy
    from kwh.energy.counts import count_model
    model = FeaturesHead(log_softmax=False)
    dense_j = estimate_energy(model.eval(), (1, 16, 16)).total_j
    kwh.binarize_(model)
    counts = count_model(model.eval(), (1, 16, 16))
    assert [c.weight_bits for c in counts] == [1, 1, 1, None]  # the last layer kept float
    assert estimate_energy(model, (1, 16, 16)).total_j < dense_j
