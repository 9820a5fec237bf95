"""Sigma-delta on models that are not chains: residual additions, concatenations, BatchNorm.

Oracles: the dense plan against the model itself, frame by frame; the sigma-delta network
against the rounding network (additions commute with the temporal difference, so the identity
of O'Connor and Welling 2016 holds on the whole graph); no work on frames that repeat the last.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kwh
from kwh.cli.main import main
from kwh.errors import ModelError
from kwh.spike import DenseFrameNet, RoundingNet, SigmaDeltaNet, build_plan
from kwh.spike.plan import GraphPlan

from any_models import DenseCat, TinyResNet

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (3, 8, 8)


@torch.no_grad()
def _trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """BatchNorm statistics other than the defaults, so that folding them is tested."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5, generator=g)
            m.running_var.uniform_(0.5, 2, generator=g)
            m.weight.uniform_(0.5, 1.5, generator=g)
            m.bias.uniform_(-0.2, 0.2, generator=g)
    return model.eval()


def _frames(t: int = 5, b: int = 3, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(1, b, *SHAPE, generator=g)
    drift = 0.1 * torch.randn(t, b, *SHAPE, generator=g).cumsum(0)
    return (base + drift).to(torch.float64)  # (T, B, C, H, W): slowly changing frames


@pytest.mark.parametrize("cls", [TinyResNet, DenseCat])
def test_graph_plan_runs_the_model_and_sigma_delta_equals_rounding(cls):
    torch.manual_seed(0)
    model = _trained_like(cls())
    x = _frames()
    plan = build_plan(model, example_inputs=x[0].float())
    assert isinstance(plan, GraphPlan)
    weighted = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert [b.name.split(":")[0] for b in plan.blocks] == weighted
    if cls is TinyResNet:  # every BatchNorm reads one conv: all folded
        assert plan.folded == {"stem.1", "block1.bn1", "block1.bn2", "block2.bn1", "block2.bn2",
                               "block2.shortcut.1"}
    dense = DenseFrameNet(plan).run(x)
    with torch.no_grad():
        for t in range(x.shape[0]):
            ref = model.double()(x[t])
            # BatchNorm is folded in float32
            torch.testing.assert_close(dense.outputs[t], ref, rtol=1e-6, atol=1e-6)
    model.float()
    rounding = RoundingNet(plan, 8.0).run(x)
    sigma = SigmaDeltaNet(plan, 8.0).run(x)
    torch.testing.assert_close(sigma.outputs, rounding.outputs, rtol=0, atol=1e-9)
    # the spikes of a change are the change of the rounded values: fewer ops than dense
    assert 0 < sigma.steady_state() < dense.steady_state()


def test_a_repeated_frame_costs_nothing_in_the_graph():
    torch.manual_seed(0)
    plan = build_plan(_trained_like(TinyResNet()), example_inputs=torch.randn(2, *SHAPE))
    still = torch.randn(1, 2, *SHAPE, dtype=torch.float64).expand(4, 2, *SHAPE)
    run = SigmaDeltaNet(plan, 8.0).run(still)
    assert run.first_frame() > 0
    assert float(run.ops[:, 1:].sum()) == 0.0  # nothing changed, nothing sent, every layer


def test_what_the_graph_plan_cannot_run_is_named():
    class NormFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn, self.c = nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3)

        def forward(self, x):  # a BatchNorm of the input: nothing to fold it into
            return F.relu(self.c(self.bn(x))).mean((2, 3)) + x.mean((1, 2, 3))[:, None]

    with pytest.raises(ModelError, match="'bn' is not the only reader of one"):
        build_plan(NormFirst().eval(), example_inputs=torch.randn(2, *SHAPE))

    class Conv1dBranch(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 3), nn.Conv1d(1, 3, 4)

        def forward(self, x):
            return self.a(x) + self.b(x[:, None]).flatten(1)

    with pytest.raises(ModelError, match="not supported by sigma-delta conversion"):
        build_plan(Conv1dBranch(), example_inputs=torch.randn(2, 4))
    with pytest.raises(ModelError, match="pass example_inputs"):
        build_plan(TinyResNet())


def test_a_compressed_resnet_file_runs_as_sigma_delta(tmp_path, data_root, capsys):
    torch.manual_seed(0)
    model = _trained_like(kwh.models.resnet20(width=4))
    small = kwh.compress.compress(model, example_inputs=torch.randn(2, 1, 28, 28),
                                  plain_bits=8)
    path = tmp_path / "r.kwh"
    kwh.save(small, path)
    loaded = kwh.load(path)
    plan = build_plan(loaded)  # example inputs from the file's input shape
    assert isinstance(plan, GraphPlan)
    x = 0.1 * torch.randn(3, 2, 1, 28, 28, dtype=torch.float64).cumsum(0)
    torch.testing.assert_close(SigmaDeltaNet(plan, 4.0).run(x).outputs,
                               RoundingNet(plan, 4.0).run(x).outputs, rtol=0, atol=1e-9)
    rc = main(["spike", str(path), "--data-dir", str(data_root), "--sequences", "2",
               "--frames", "2", "--scales", "4"])
    assert rc == 0
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()
            if line.split() and line.split()[0] in ("rounding", "sigma-delta")}
    assert rows["sigma-delta"][:3] == rows["rounding"][:3]  # same accuracy, agreement, spikes


class InPlaceBlock(nn.Module):
    """A torchvision-style residual block: ``out += identity``, in-place ReLUs, a Dropout."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3)
        self.c2, self.b2 = nn.Conv2d(3, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3)
        self.relu, self.drop = nn.ReLU(inplace=True), nn.Dropout(0.5)
        self.fc = nn.Linear(3, 4)

    def forward(self, x):
        out = self.relu(self.b1(self.c1(x)))
        out = self.b2(self.c2(out))
        out += x
        out = F.relu(out, inplace=True)
        return self.fc(self.drop(out.mean((2, 3))))


def test_in_place_operations_and_train_mode_do_not_disturb_the_sigma_delta_state():
    torch.manual_seed(0)
    model = _trained_like(InPlaceBlock()).train()  # left in train mode: Dropout must not act
    x = _frames(t=6)
    plan = build_plan(model, example_inputs=x[0].float())
    assert model.training  # the user's model keeps its mode
    dense = DenseFrameNet(plan).run(x)
    with torch.no_grad():
        ref = model.eval().double()(x[2])
    torch.testing.assert_close(dense.outputs[2], ref, rtol=1e-6, atol=1e-6)
    model.float()
    torch.testing.assert_close(SigmaDeltaNet(plan, 8.0).run(x).outputs,
                               RoundingNet(plan, 8.0).run(x).outputs, rtol=0, atol=1e-9)
