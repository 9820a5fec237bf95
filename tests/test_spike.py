"""Sigma-delta networks: the rounding-network identity, exact op counts, quantizers, scales."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from kwh.errors import ModelError
from kwh.spike import (DenseFrameNet, Herding, RoundingNet, ThresholdNet,
                       build_plan, convert, dense_macs, fanout_map, herd, naive_macs,
                       round_half_up, train_scales)
from kwh.spike.plan import input_shapes
from kwh.spike.scales import relaxed_cost


pytestmark = pytest.mark.usefixtures("one_thread")


def mlp() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 24), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(24, 16), nn.BatchNorm1d(16), nn.ReLU(),
                         nn.Linear(16, 5)).eval()


def cnn() -> nn.Sequential:
    """Strides 2, paddings 1 and 2, max-pool and avg-pool, BatchNorm to fold."""
    torch.manual_seed(2)
    return nn.Sequential(
        nn.Conv2d(2, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6), nn.ReLU(),  # (B, 6, 8, 8)
        nn.MaxPool2d(2),                                                        # (B, 6, 4, 4)
        nn.Conv2d(6, 8, 3, padding=2), nn.ReLU(),                               # (B, 8, 6, 6)
        nn.AvgPool2d(2),                                                        # (B, 8, 3, 3)
        nn.Conv2d(8, 8, 2, stride=2, padding=1), nn.ReLU(),                     # (B, 8, 2, 2)
        nn.Flatten(), nn.Linear(32, 10)).eval()


def _randomize_bn(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g))


def sequences(T: int, B: int, frame: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Random walks in time: (T, B, *frame), slowly changing like video."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand((1, B, *frame), generator=g)
    steps = 0.1 * torch.randn((T - 1, B, *frame), generator=g)
    return torch.cat([x0, x0 + steps.cumsum(0)])


CASES = [(mlp, (1, 6, 6)), (cnn, (2, 16, 16))]


@pytest.mark.parametrize("factory,frame", CASES, ids=["mlp", "cnn"])
@pytest.mark.parametrize("scales", [2.0, 7.5, "per-layer"])
def test_sigma_delta_equals_rounding_network(factory, frame, scales):
    model = factory()
    _randomize_bn(model)
    n = sum(isinstance(m, (nn.Linear, nn.Conv2d)) for m in model.modules())
    if scales == "per-layer":
        scales = [3.0 + 2.5 * i for i in range(n)]
    x = sequences(12, 5, frame)
    sd = convert(model, scales).run(x)
    rn = RoundingNet(model, scales).run(x)
    dense = DenseFrameNet(model).run(x)
    scale = rn.outputs.abs().max()
    # tolerance 1e-6 of the output scale: float64 summation-order error only
    assert torch.allclose(sd.outputs, rn.outputs, rtol=0, atol=1e-6 * float(scale))
    # the identity is not vacuous: quantization does change the outputs
    assert (rn.outputs - dense.outputs).abs().max() > 1e-3 * scale


@pytest.mark.parametrize("factory,frame", CASES, ids=["mlp", "cnn"])
def test_sigma_delta_spike_sum_is_rounding_spikes(factory, frame):
    """First-frame sigma-delta additions equal the rounding network's (same spikes)."""
    x = sequences(4, 3, frame, seed=5)
    sd, rn = convert(factory(), 5.0).run(x), RoundingNet(factory(), 5.0).run(x)
    assert torch.equal(sd.ops[:, 0], rn.ops[:, 0])


def test_inplace_relu_does_not_corrupt_the_running_sum():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(inplace=True), nn.Linear(8, 3)).eval()
    x = sequences(6, 3, (6,), seed=2)
    sd, rn = convert(model, 4.0).run(x), RoundingNet(model, 4.0).run(x)
    assert torch.allclose(sd.outputs, rn.outputs, rtol=0, atol=1e-9)
    assert model[1].inplace  # the user's model is left as it was


def test_dense_frame_net_matches_model_with_batchnorm_folded():
    model = cnn()
    _randomize_bn(model)
    x = sequences(3, 4, (2, 16, 16))
    run = DenseFrameNet(model).run(x)
    want = torch.stack([model(f) for f in x]).double()
    assert torch.allclose(run.outputs, want, atol=1e-5)


def _brute_force_fanout(conv: nn.Conv2d, C: int, H: int, W: int) -> torch.Tensor:
    """Count (output position, output channel) pairs touching each input position."""
    kh, kw = conv.kernel_size
    (sh, sw), (ph, pw), (dh, dw) = conv.stride, conv.padding, conv.dilation
    Ho = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    Wo = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    cin_g, cout_g = C // conv.groups, conv.out_channels // conv.groups
    count = torch.zeros(C, H, W, dtype=torch.float64)
    for o, i, j, p, q in itertools.product(range(conv.out_channels), range(Ho), range(Wo),
                                           range(kh), range(kw)):
        h, w = i * sh - ph + p * dh, j * sw - pw + q * dw
        if 0 <= h < H and 0 <= w < W:
            g = o // cout_g
            count[g * cin_g:(g + 1) * cin_g, h, w] += 1
    return count


@pytest.mark.parametrize("k,stride,padding,dilation,groups,hw", [
    (3, 1, 0, 1, 1, (7, 7)), (3, 2, 1, 1, 1, (7, 8)), (5, 1, 2, 1, 1, (9, 9)),
    (3, 3, 2, 1, 1, (10, 11)), ((2, 4), (2, 1), (1, 3), 1, 1, (8, 9)),
    (3, 1, 1, 2, 2, (9, 9)), (5, 2, 0, 1, 1, (28, 28)),
])
def test_conv_fanout_map_equals_brute_force(k, stride, padding, dilation, groups, hw):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, k, stride=stride, padding=padding, dilation=dilation, groups=groups)
    got = fanout_map(conv, (4, *hw))
    want = _brute_force_fanout(conv, 4, *hw)
    assert torch.equal(got, want)
    assert dense_macs(conv, (4, *hw)) == int(want.sum())
    assert dense_macs(conv, (4, *hw)) <= naive_macs(conv, (4, *hw))


def test_mac_counts_lenet5_and_padding():
    from kwh.models import lenet5
    model = lenet5()
    run = DenseFrameNet(model).run(torch.rand(1, 1, 1, 28, 28))
    per_layer = [20 * 24 * 24 * 25, 50 * 8 * 8 * 20 * 25, 800 * 500, 500 * 10]
    assert run.dense_macs.tolist() == per_layer  # no padding: exact == naive
    assert run.dense_macs_naive.tolist() == per_layer
    conv = nn.Conv2d(1, 1, 3, padding=1)          # 4x4 input: 16 outputs x 9 taps naive
    assert naive_macs(conv, (1, 4, 4)) == 144
    assert dense_macs(conv, (1, 4, 4)) == 4 * 4 + 8 * 6 + 4 * 9  # corners, edges, inside


def test_nonzero_fanout_counts_only_kept_weights():
    lin = nn.Linear(4, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1., 0, 0, 2], [0, 0, 0, 3], [4, 0, 5, 6]]))
    assert fanout_map(lin, (4,), nonzero=True).tolist() == [2, 0, 1, 3]
    assert fanout_map(lin, (4,)).tolist() == [3, 3, 3, 3]


def test_linear_additions_are_spikes_times_fanout():
    """Brute force: each unit spike of input i costs out_features additions."""
    lin = nn.Sequential(nn.Linear(6, 4))
    x = sequences(5, 2, (6,), seed=7)
    run = convert(lin, 3.0).run(x)
    h, spikes = Herding(3.0), []
    for t in range(5):
        spikes.append(h(x[t] - (x[t - 1] if t else 0)))
    want = torch.stack(spikes).abs().sum(-1) * 4  # (T, B)
    assert torch.equal(run.ops[0], want.double())


@pytest.mark.parametrize("factory,frame", CASES, ids=["mlp", "cnn"])
def test_identical_frames_cost_nothing_after_the_first(factory, frame):
    x = sequences(1, 3, frame).expand(6, -1, *frame)  # the same frame six times
    run = convert(factory(), 9.0).run(x)
    assert run.first_frame() > 0
    assert torch.all(run.ops[:, 1:] == 0)
    assert run.steady_state() == 0.0
    th = ThresholdNet(factory(), 0.0).run(x)
    assert torch.all(th.ops[:, 1:] == 0)


@pytest.mark.parametrize("k", [0.7, 1.0, 3.3, 25.0])
def test_herding_running_sum_never_drifts(k):
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2000, 64, generator=g, dtype=torch.float64) * 2
    phi = torch.zeros(64, dtype=torch.float64)
    spikes = []
    for t in range(x.shape[0]):
        s, phi = herd(phi, x[t], k)
        spikes.append(s)
    spikes = torch.stack(spikes)                                     # (T, 64)
    assert torch.equal(spikes, spikes.round())                       # integer spikes
    drift = (spikes.cumsum(0) / k - x.cumsum(0)).abs()               # (T, 64)
    worst = float(drift.max())
    assert worst <= 0.5 / k + 1e-9
    assert worst > 0.4 / k  # the bound is tight, so the check has teeth


@pytest.mark.parametrize("grid", [False, True], ids=["continuous", "exact-ties"])
def test_herded_deltas_sum_to_rounded_input(grid):
    """Herding x_t - x_{t-1} gives spikes summing to round(k x_t) (the sigma-delta lemma).

    On the grid k x_t lands exactly on halves, so any other tie rule (e.g. round half to
    even) breaks the identity.
    """
    g = torch.Generator().manual_seed(4)
    x = torch.randn(300, 50, generator=g, dtype=torch.float64).cumsum(0)
    if grid:
        x = torch.round(x * 8) / 8  # k x = 4 x: multiples of 0.5
    h, total = Herding(4.0), torch.zeros(50, dtype=torch.float64)
    prev = torch.zeros(50, dtype=torch.float64)
    for t in range(300):
        total += h(x[t] - prev)
        prev = x[t]
        assert torch.equal(total, round_half_up(4.0 * x[t]))


@pytest.mark.parametrize("factory,frame", CASES, ids=["mlp", "cnn"])
def test_rounding_net_converges_to_dense(factory, frame):
    x = sequences(3, 4, frame)
    dense = DenseFrameNet(factory()).run(x).outputs
    errs = [float((RoundingNet(factory(), k).run(x).outputs - dense).abs().max())
            for k in (4.0, 64.0, 1024.0, 2.0 ** 16)]
    assert all(a > b for a, b in zip(errs, errs[1:]))
    assert errs[-1] < 1e-3 * float(dense.abs().max())


def test_threshold_zero_equals_dense():
    model = cnn()
    _randomize_bn(model)
    x = sequences(8, 3, (2, 16, 16))
    th = ThresholdNet(model, 0.0).run(x)
    dense = DenseFrameNet(model).run(x)
    assert torch.allclose(th.outputs, dense.outputs, rtol=0, atol=1e-9)
    assert th.first_frame() <= dense.first_frame()  # zeros (after ReLU) are not sent


def test_threshold_sends_only_large_changes():
    x = sequences(6, 2, (6,), seed=3)
    big = 0.15
    run = ThresholdNet(nn.Sequential(nn.Linear(6, 2)), big).run(x)
    ref, sent = torch.zeros(2, 6, dtype=torch.float64), []
    for t in range(6):
        m = (x[t].double() - ref).abs() > big
        ref = torch.where(m, x[t].double(), ref)
        sent.append(m.sum(-1))
    assert torch.equal(run.ops[0], torch.stack(sent).double() * 2)


class Square(nn.Module):
    def forward(self, x):
        return x * x


@pytest.mark.parametrize("bad,where", [
    (nn.Sequential(nn.Linear(4, 4), nn.Sigmoid(), nn.Linear(4, 2)), "1:Sigmoid"),
    (nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.ReLU(), Square())), "1.1:Square"),
    (nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.BatchNorm1d(4)), "2:BatchNorm1d"),
])
def test_unsupported_layer_error_names_layer_and_lists_supported(bad, where):
    with pytest.raises(ModelError) as info:
        convert(bad, 4.0)
    msg = str(info.value)
    assert where in msg
    assert "supported layers" in msg and "Linear" in msg and "MaxPool2d" in msg


def test_bad_scales_are_rejected():
    with pytest.raises(ValueError, match="3 Linear/Conv2d layers"):
        convert(mlp(), [1.0, 2.0])
    with pytest.raises(ValueError, match="positive"):
        RoundingNet(mlp(), [1.0, 0.0, 2.0])
    with pytest.raises(ModelError, match="nn.Sequential"):
        convert(nn.Linear(3, 3), 2.0)


def test_batched_run_equals_single_run():
    x = sequences(5, 7, (2, 16, 16))
    net = convert(cnn(), 6.0)
    a, b = net.run(x), net.run(x, batch_size=3)
    assert torch.equal(a.outputs, b.outputs) and torch.equal(a.ops, b.ops)


@pytest.mark.parametrize("factory,frame", CASES, ids=["mlp", "cnn"])
def test_relaxed_cost_counts_the_sigma_delta_additions_exactly(factory, frame):
    """The training objective's forward count is the simulated sigma-delta count."""
    model, scales = factory(), [2.0, 3.5, 5.0] if factory is mlp else [2.0, 3.0, 4.0, 6.0]
    x = sequences(5, 3, frame, seed=8).double()
    plan = build_plan(model).to(torch.float64)
    shapes = input_shapes(plan, x[0, :1])
    fans = [fanout_map(b.layer, s) for b, s in zip(plan.blocks, shapes)]
    log_k = torch.tensor(scales, dtype=torch.float64).log()
    out, cost = relaxed_cost(plan, x, log_k, fans)                  # (T, B, ...), (T, B)
    run = convert(model, scales).run(x)
    assert torch.equal(cost, run.ops.sum(0))
    assert torch.allclose(out, run.outputs, rtol=0, atol=1e-9)


def test_training_scales_trades_error_for_additions():
    model = mlp()
    x = sequences(4, 16, (1, 6, 6), seed=9)
    cheap = train_scales(model, x, lam=5.0, init=8.0, steps=20, lr=0.1, batch_size=8)
    exact = train_scales(model, x, lam=0.0, init=8.0, steps=20, lr=0.1, batch_size=8)
    assert all(c < 8.0 for c in cheap) and all(e > 8.0 for e in exact)
    dense = DenseFrameNet(model).run(x)
    runs = [convert(model, s).run(x) for s in (cheap, exact)]
    assert runs[0].mean_per_frame() < runs[1].mean_per_frame()
    errs = [float((r.outputs - dense.outputs).abs().mean()) for r in runs]
    assert errs[0] > errs[1]
