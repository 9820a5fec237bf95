"""Adversarial models for the structured compression of traced graphs (kwh.compress.dag) and
the graph layout of the .kwh file: operations whose channel bookkeeping is easy to get wrong.

The promise under test: kwh.compress never returns a different network. Unquantized, the
compressed model computes what the masked Bayesian model computes in eval mode (to 1e-5 of its
largest output, on inputs other than the traced example), or kwh raises a ModelError; a
compressed model that kwh.save writes loads back to the same outputs (bit for bit), or saving
raises a ModelError. Dead groups are forced through the priors' parameters (any_models.kill_),
the rest of the posterior at random (any_models.random_posterior_).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kwh
from kwh.bayes import bayes_layers
from kwh.compress import format_summary
from kwh.errors import ModelError

from any_models import kill_, random_posterior_

TOL = 1e-5
PRIORS = ["group-horseshoe", "group-nj", "log-uniform"]
SHAPE = (3, 8, 8)


def _x(n: int, seed: int, shape: tuple[int, ...] = SHAPE) -> torch.Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


def _bayes(model: nn.Module, prior: str, kills: dict[str, list[int]],
           random: bool = True) -> nn.Module:
    """``model`` made Bayesian with ``prior``, a random posterior (``random``), and the listed
    groups of the listed layers dead."""
    kwh.bayesify_(model, prior)
    if random:
        random_posterior_(model, seed=7)
    layers = dict(bayes_layers(model))
    for name, groups in kills.items():
        kill_(layers[name], groups)
    return model.eval()


@torch.no_grad()
def _assert_exact(small: nn.Module, model: nn.Module, shape: tuple[int, ...] = SHAPE) -> None:
    for seed in (11, 12):
        x = _x(16, seed, shape)
        ref = model(x)
        got = small(x)
        assert got.shape == ref.shape
        torch.testing.assert_close(got, ref, rtol=0, atol=TOL * float(1 + ref.abs().max()))


@torch.no_grad()
def _assert_file_round_trip(small: nn.Module, tmp_path, shape: tuple[int, ...] = SHAPE) -> str:
    """Save ``small``; the file loads to the same outputs (bit for bit). Returns the layout,
    or "refused" when saving raised a ModelError."""
    path = tmp_path / "m.kwh"
    try:
        kwh.save(small, path)
    except ModelError:
        return "refused"
    layout = kwh.format.file_report(path)["layout"]
    if layout == "state":
        loaded = kwh.load(path, model=copy.deepcopy(small))
    else:
        loaded = kwh.load(path)
    x = _x(16, 13, shape)
    assert torch.equal(loaded(x), small(x))
    return layout


def _probe(make, prior: str, kills: dict[str, list[int]], tmp_path,
           shape: tuple[int, ...] = SHAPE, batch: int = 4, random: bool = True) -> nn.Module:
    """Compress (unquantized and quantized) a Bayesian ``make()``: exact, and the files of
    both round-trip."""
    torch.manual_seed(3)
    model = _bayes(make(), prior, kills, random)
    example = _x(batch, 0, shape)
    small = kwh.compress(model, example_inputs=example, quantize=False)
    _assert_exact(small, model, shape)
    assert small.kwh_summary["weights"] <= small.kwh_summary["weights_original"]
    assert "weights" in format_summary(small.kwh_summary)
    _assert_file_round_trip(small, tmp_path, shape)
    q = kwh.compress(model, example_inputs=example)
    _assert_file_round_trip(q, tmp_path, shape)
    return small


# ------------------------------------------------------------------ residual arithmetic

class Residual(nn.Module):
    """conv-BN-ReLU, a second conv, the two joined by ``join``, global pool, fc."""

    def __init__(self, join):
        super().__init__()
        self.join = join
        self.c1 = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        h = F.relu(self.bn1(self.c1(x)))
        return self.fc(self.join(h, self.c2(h)).mean((2, 3)))


JOINS = {
    "x-y": lambda h, y: h - y,
    "y-x": lambda h, y: y - h,
    "0.5x+y": lambda h, y: h * 0.5 + y,
    "add_alpha": lambda h, y: torch.add(h, y, alpha=2),
    "sub_alpha": lambda h, y: torch.sub(y, h, alpha=3),
    "1-x+y": lambda h, y: (1 - h) + y,
    "x/2-y*3": lambda h, y: h / 2 - y * 3,
    "x+ones": lambda h, y: h + torch.ones_like(h) + y,
    "x+mean_c": lambda h, y: h + y + h.mean(1, keepdim=True),
    "x*mean_hw": lambda h, y: h * y.mean((2, 3), keepdim=True),
    "x+mean_hw": lambda h, y: h + y.mean((2, 3), keepdim=True),
    "x+sum_c": lambda h, y: y + h.sum(1, keepdim=True),
    "x+max": lambda h, y: torch.maximum(h, y),
}


@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("join", list(JOINS))
def test_residual_arithmetic(join, prior, tmp_path):
    _probe(lambda: Residual(JOINS[join]), prior, {"c1": [1, 4], "c2": [1, 2]}, tmp_path)


# ------------------------------------------------------------------ BatchNorm placements

class TwoNorms(nn.Module):
    """One conv's output read by two BatchNorms (neither foldable), their outputs added; a
    residual whose two sides come through different BatchNorms."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn_a, self.bn_b = nn.BatchNorm2d(6), nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.c3 = nn.Conv2d(6, 6, 1, bias=False)
        self.bn2, self.bn3 = nn.BatchNorm2d(6), nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        a = self.c1(x)
        h = F.relu(self.bn_a(a) + self.bn_b(a))
        h = F.relu(self.bn2(self.c2(h)) + self.bn3(self.c3(h)))
        return self.fc(h.mean((2, 3)))


class NormReadTwice(nn.Module):
    """A bias-free conv whose BatchNorm output is read by a ReLU and by the residual."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 16, 4)

    def forward(self, x):
        a = self.bn(self.c1(x))
        h = self.c2(F.relu(a)) + a
        return self.fc(torch.flatten(F.max_pool2d(h, 2), 1))


class NormOnFlat(nn.Module):
    """BatchNorm1d on a flattened conv output (one entry per channel and position) next to a
    residual of two Linears."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm1d(4 * 16)
        self.f1, self.f2 = nn.Linear(64, 8), nn.Linear(8, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        h = self.bn(F.relu(self.c1(x)).flatten(1))
        a = F.relu(self.f1(h))
        return self.out(a + F.relu(self.f2(a)))


def _norm_stats_(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.uniform_(-1, 1, generator=g)
                m.running_var.uniform_(0.5, 2, generator=g)
                m.bias.uniform_(-1, 1, generator=g)
    return model


@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("make, kills", [
    (TwoNorms, {"c1": [0, 3], "c2": [3], "c3": [3, 5]}),
    (NormReadTwice, {"c1": [2], "c2": [2, 4]}),
    (lambda: _norm_stats_(NormOnFlat()), {"c1": [1], "f1": [5, 6, 7, 8], "f2": [2]}),
], ids=["two_norms", "norm_read_twice", "norm_on_flat"])
def test_batchnorm_placements(make, kills, prior, tmp_path):
    _probe(make, prior, kills, tmp_path)


# ------------------------------------------------------------------ shapes and channels

class Around(nn.Module):
    """conv - ``op`` - conv - global pool - fc; ``op`` is any shape-changing operation."""

    def __init__(self, op, mid: int = 6, cin2: int | None = None, groups: int = 1):
        super().__init__()
        self.op = op
        self.c1 = nn.Conv2d(3, mid, 3, padding=1)
        self.c2 = nn.Conv2d(mid if cin2 is None else cin2, 5, 3, padding=1, groups=groups)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        h = self.op(F.relu(self.c1(x)))
        return self.fc(F.relu(self.c2(h)).amax((2, 3)))


def _shuffle(h):
    b, c, hh, ww = h.shape
    return h.view(b, 2, c // 2, hh, ww).transpose(1, 2).reshape(b, c, hh, ww)


def _chunk_add(h):
    a, b = torch.chunk(h, 2, dim=1)
    return torch.cat([a + b, a - b], 1)


def _split(h):
    a, b = torch.split(h, [2, 4], dim=1)
    return torch.cat([b, a], dim=1)


AROUND = {
    "pad": (lambda h: F.pad(h, (1, 0, 2, 0)), {}),
    "pad_value": (lambda h: F.pad(h, (1, 1, 1, 1), value=0.5), {}),
    "slice": (lambda h: h[:, :4], {"cin2": 4}),
    "slice_step": (lambda h: h[:, ::2], {"cin2": 3}),
    "chunk": (_chunk_add, {}),
    "split": (_split, {}),
    "shuffle": (_shuffle, {}),
    "interpolate": (lambda h: F.interpolate(h, scale_factor=2), {}),
    "interpolate_bilinear": (lambda h: F.interpolate(h, size=(5, 7), mode="bilinear"), {}),
    "depthwise": (lambda h: h, {"groups": 6, "mid": 6, "cin2": 6}),
    "flip": (lambda h: h.flip(1), {}),
    "roll": (lambda h: torch.roll(h, 1, dims=1), {}),
    "softmax_c": (lambda h: h.softmax(1), {}),
    "norm_c": (lambda h: F.normalize(h, dim=1), {}),
    "cumsum_c": (lambda h: h.cumsum(1), {}),
    "eval_dropout": (nn.Dropout2d(0.5), {}),
    "avgpool_pad": (nn.AvgPool2d(3, 1, 1), {}),
    "maxpool_pad": (lambda h: F.max_pool2d(h, 3, 1, 1), {}),
    "inplace_relu": (nn.ReLU(inplace=True), {}),
    "relu_": (lambda h: h.relu_(), {}),
    "instance_norm": (nn.InstanceNorm2d(6), {}),
    "group_norm": (nn.GroupNorm(2, 6), {}),
}


@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("op", list(AROUND))
def test_channel_operations_between_convs(op, prior, tmp_path):
    fn, kw = AROUND[op]
    if op == "depthwise":  # groups=C: 5 outputs cannot split 6 groups
        make = lambda: _Depthwise()  # noqa: E731
    else:
        make = lambda: Around(fn, **kw)  # noqa: E731
    _probe(make, prior, {"c1": [0, 3], "c2": [1]}, tmp_path)


class _Depthwise(nn.Module):
    """conv - depthwise conv (groups=C) - conv."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.dw = nn.Conv2d(6, 6, 3, padding=1, groups=6)
        self.c2 = nn.Conv2d(6, 5, 1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        h = F.relu(self.dw(F.relu(self.c1(x))))
        return self.fc(F.relu(self.c2(h)).mean((2, 3)))


# ------------------------------------------------------------------ heads

class Heads(nn.Module):
    """A conv trunk, global pooling by ``pool``, and two Linear heads on the same features
    joined by ``join``."""

    def __init__(self, pool, join):
        super().__init__()
        self.pool, self.join = pool, join
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 6, 3, padding=1)
        self.fa, self.fb = nn.Linear(6, 4), nn.Linear(6, 4)

    def forward(self, x):
        h = F.relu(self.c1(x))
        h = self.pool(F.relu(self.c2(h)) + h)
        return self.join(self.fa(h), self.fb(F.relu(h)))


POOLS_ = {
    "adaptive_max_squeeze": lambda h: F.adaptive_max_pool2d(h, 1).squeeze(),
    "adaptive_avg_squeeze_dims": lambda h: F.adaptive_avg_pool2d(h, 1).squeeze(-1).squeeze(-1),
    "amax": lambda h: h.amax((2, 3)),
    "max_values": lambda h: torch.max(h.flatten(2), 2).values,
    "view_flat": lambda h: F.avg_pool2d(h, 8).view(h.size(0), -1),
    "reshape_literal": lambda h: F.avg_pool2d(h, 8).reshape(-1, 6),
    "sum_hw": lambda h: h.sum((-1, -2)),
}
HEAD_JOINS = {
    "add": lambda a, b: a + b,
    "cat": lambda a, b: torch.cat([a, b], 1),
    "sub": lambda a, b: a - b,
}


@pytest.mark.parametrize("batch", [4, 1])
@pytest.mark.parametrize("join", list(HEAD_JOINS))
@pytest.mark.parametrize("pool", list(POOLS_))
def test_two_heads_on_pooled_features(pool, join, batch, tmp_path):
    if (pool, join, batch) == ("adaptive_max_squeeze", "cat", 1):  # x.squeeze() drops the batch
        with pytest.raises(ModelError, match=r"fails on an example .*Dimension out of range"):
            _probe(lambda: Heads(POOLS_[pool], HEAD_JOINS[join]), "group-nj", {}, tmp_path,
                   batch=batch)
        return
    for prior in PRIORS:
        _probe(lambda: Heads(POOLS_[pool], HEAD_JOINS[join]), prior,
               {"c1": [0, 2], "c2": [2], "fa": [1, 3], "fb": [3]}, tmp_path, batch=batch)


# ------------------------------------------------------------------ pools at other ranks

class PoolOnFeatures(nn.Module):
    """A pooling layer applied to a (batch, features) or (batch, channels, length) tensor: at
    a rank below its own it pools along dim 1, across units."""

    def __init__(self, pool, conv: bool = False):
        super().__init__()
        self.pool, self.conv = pool, conv
        self.f1 = nn.Linear(3 * 8 * 8, 8)
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.f2 = nn.Linear(8, 3)

    def forward(self, x):
        if self.conv:  # (batch, 8, 64): the 2d pools see (8, 64) images of one example
            h = F.relu(self.c1(x)).flatten(2)
            return self.f2(self.pool(h).mean(2))
        return self.f2(self.pool(F.relu(self.f1(x.flatten(1)))))


@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("pool, conv", [
    (nn.AvgPool1d(3, 1, 1), False),
    (nn.MaxPool1d(3, 1, 1), False),
    (lambda h: F.max_pool1d(h, 3, 1, 1), False),
    (lambda h: F.avg_pool1d(h, 3, 1, 1), False),
    (nn.AdaptiveAvgPool1d(8), False),
    (nn.AvgPool2d(3, 1, 1), True),
    (nn.MaxPool2d(3, 1, 1), True),
    (lambda h: F.avg_pool2d(h, 3, 1, 1), True),
    (lambda h: F.adaptive_max_pool2d(h, (8, 64)), True),
    (nn.AvgPool1d(3, 1, 1), True),
], ids=["avgpool1d", "maxpool1d", "f_max_pool1d", "f_avg_pool1d", "adaptive1d", "avgpool2d",
        "maxpool2d", "f_avg_pool2d", "f_adaptive_max2d", "avgpool1d_on_3d"])
def test_pool_on_a_lower_rank_mixes_units(pool, conv, prior, tmp_path):
    kills = {"f2": [2, 5]} if prior != "log-uniform" else {"f2": [2, 5], "f1": [2, 5]}
    _probe(lambda: PoolOnFeatures(pool, conv), prior, kills, tmp_path)


# ------------------------------------------------------------------ dtypes, constants, in place

class Casts(nn.Module):
    """A forward that casts and builds constant tensors: ``x.float()``, zeros concatenated
    along the channels, a constant added, a dead channel read through padding."""

    def __init__(self, op):
        super().__init__()
        self.op = op
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        h = F.relu(self.c1(x.float()))
        h = self.op(h, F.relu(self.c2(h)))
        return self.fc(h.mean((2, 3)))


CASTS = {
    "float": lambda h, y: h.float() + y,
    "type_as": lambda h, y: h.type_as(y) + y,
    "zeros_cat": lambda h, y: torch.cat([h[:, :4], h.new_zeros(h.size(0), 2, 8, 8)], 1) + y,
    "to_float32": lambda h, y: h.to(torch.float32) + y.type(torch.float32),
    "ones_like": lambda h, y: torch.ones_like(h) * 2 + y + h,
    "new_zeros": lambda h, y: h + y + h.new_zeros(h.shape),
    "detach": lambda h, y: h.detach() + y,
    "iadd": lambda h, y: h.__iadd__(y),
}


@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("op", list(CASTS))
def test_casts_and_constants(op, prior, tmp_path):
    _probe(lambda: Casts(CASTS[op]), prior, {"c1": [0, 3], "c2": [1, 3]}, tmp_path)


class InPlace(nn.Module):
    """``out += identity`` with the identity also read after the addition, and relu_ on a
    tensor another branch reads afterwards."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 6, 3, padding=1)
        self.c3 = nn.Conv2d(6, 6, 1)
        self.fc = nn.Linear(12, 3)

    def forward(self, x):
        h = self.c1(x)
        keep = h  # the same tensor: it sees every in-place change below
        h.relu_()
        out = self.c2(h)
        out += keep
        z = F.relu(self.c3(keep), inplace=True)
        return self.fc(torch.cat([out.mean((2, 3)), z.amax((2, 3))], 1))


@pytest.mark.parametrize("prior", PRIORS)
def test_in_place_operations(prior, tmp_path):
    _probe(InPlace, prior, {"c1": [0, 3], "c2": [1, 3], "c3": [2]}, tmp_path)


# ------------------------------------------------------------------ dropout, batch of one

class DropRes(nn.Module):
    """Dropout in every form on a residual path: eval mode removes each."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 6, 3, padding=1)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(6 * 4 * 4, 3)

    def forward(self, x):
        h = F.relu(self.c1(x))
        y = F.relu(self.c2(h))
        if self.how == "module":
            y = self.drop(y)
        elif self.how == "functional":
            y = F.dropout2d(y, 0.5, self.training)
        h = F.max_pool2d(h + y, 2)
        return self.fc(h.view(h.size(0), -1))


@pytest.mark.parametrize("batch", [4, 1])
@pytest.mark.parametrize("how", ["module", "functional"])
def test_eval_mode_dropout_and_a_batch_of_one(how, batch, tmp_path):
    for prior in PRIORS:
        small = _probe(lambda: DropRes(how), prior, {"c1": [0, 3], "c2": [1, 3]}, tmp_path,
                       batch=batch)
        assert not any(isinstance(m, nn.Dropout) for m in small.modules()) or how == "module"


class AlwaysDropout(DropRes):
    def forward(self, x):
        h = F.relu(self.c1(x))
        h = h + F.dropout(F.relu(self.c2(h)), 0.5)  # training=True: random in eval mode too
        return self.fc(F.max_pool2d(h, 2).flatten(1))


def test_random_in_eval_mode_is_refused():
    torch.manual_seed(3)
    model = _bayes(AlwaysDropout("none"), "group-nj", {})
    with pytest.raises(ModelError, match="does not reproduce"):
        kwh.compress(model, example_inputs=_x(4, 0), quantize=False)


class MutatesInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x.mul_(2)
        h = F.relu(self.c1(x))
        return self.fc((h + self.c2(h)).mean((2, 3)))


@pytest.mark.parametrize("prior", PRIORS)
def test_in_place_change_of_the_input(prior, tmp_path):
    """The model doubles its input in place: compressing it reads the example as given."""
    torch.manual_seed(3)
    model = _bayes(MutatesInput(), prior, {"c1": [0, 3], "c2": [1]})
    example = _x(4, 0)
    small = kwh.compress(model, example_inputs=example, quantize=False)
    for seed in (11, 12):
        with torch.no_grad():
            ref = model(_x(16, seed))
            got = small(_x(16, seed))
        torch.testing.assert_close(got, ref, rtol=0, atol=TOL * float(1 + ref.abs().max()))


# ------------------------------------------------------------------ units not on dim 1

class Sequence(nn.Module):
    """Linear layers on (batch, length, features) and a Conv1d: units on the last dim."""

    def __init__(self):
        super().__init__()
        self.f1, self.f2 = nn.Linear(64, 6), nn.Linear(6, 6)
        self.conv = nn.Conv1d(6, 4, 3, padding=1)
        self.out = nn.Linear(4, 3)

    def forward(self, x):
        h = F.relu(self.f1(x.flatten(2)))  # (batch, 3, 6)
        h = h + F.relu(self.f2(h))
        h = self.conv(h.transpose(1, 2))
        return self.out(h.mean(2))


@pytest.mark.parametrize("prior", PRIORS)
def test_units_on_the_last_dimension(prior, tmp_path):
    _probe(lambda: Sequence(), prior, {"f1": [2], "f2": [1, 3], "out": [1]}, tmp_path,
           shape=(3, 8, 8))


# ------------------------------------------------------------------ regressions, by hand

def test_a_pool_across_units_keeps_them(tmp_path):
    """nn.AvgPool1d(3, 1, 1) on (batch, 8): output unit j averages units j-1..j+1 of f1, so
    a unit f2 does not read is still read through its neighbours: all 8 stay, exactly."""
    small = _probe(lambda: PoolOnFeatures(nn.AvgPool1d(3, 1, 1)), "group-nj", {"f2": [2, 5]},
                   tmp_path, random=False)
    assert small.get_submodule("f1").out_features == 8
    assert small.get_submodule("f2").in_features == 8
    # at its own rank the same pool is per channel: a filter nobody reads goes
    class PerChannel(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 3)

        def forward(self, x):
            h = F.relu(self.c1(x)).flatten(2)  # (batch, 8, 64)
            return self.fc(F.avg_pool1d(h, 3, 1, 1).mean(2) + h.amax(2))

    small = _probe(PerChannel, "group-nj", {"fc": [2, 5]}, tmp_path, random=False)
    assert small.get_submodule("c1").out_channels == 6


def test_a_broadcast_addition_is_compressed_and_saved_in_the_state_layout(tmp_path):
    """x + y.mean((2, 3), keepdim=True) broadcasts; a graph file's add does not: the verb
    measures the payload in the state layout instead of failing, and the file loads into
    the compressed model exactly."""
    torch.manual_seed(3)
    model = _bayes(Residual(JOINS["x+mean_hw"]), "group-horseshoe", {"c1": [1], "c2": [2]})
    small = kwh.compress(model, example_inputs=_x(4, 0))
    assert small.kwh_summary["payload_bytes"] > 0
    assert _assert_file_round_trip(small, tmp_path) == "state"
    with pytest.raises(ModelError, match=r"adds activations of shapes .* by broadcasting"):
        kwh.save(small, tmp_path / "g.kwh", layout="graph")


def test_a_batch_of_one_through_squeeze(tmp_path):
    """On a batch of one, x.squeeze() also drops the batch: the head Linear reads a vector."""
    torch.manual_seed(3)
    model = _bayes(Heads(POOLS_["adaptive_max_squeeze"], HEAD_JOINS["add"]), "group-nj",
                   {"c1": [0]})
    small = kwh.compress(model, example_inputs=_x(1, 0), quantize=False)
    _assert_exact(small, model)
    layers = {d["name"]: d for d in small.kwh_summary["layers"]}
    assert layers["fa"]["shape_original"] == [4, 6] and layers["fb"]["shape_original"] == [4, 6]


def test_a_cast_to_float32_in_forward(tmp_path):
    """x.float() at the top of forward (and .to / .type): the float64 check keeps float64."""
    _probe(lambda: Casts(CASTS["to_float32"]), "group-nj", {"c1": [0, 3], "c2": [0, 3]},
           tmp_path)

    class Half(Casts):
        def forward(self, x):
            return super().forward(x.half().to(torch.float32))  # c1 would read float16

    torch.manual_seed(3)
    model = _bayes(Half(CASTS["float"]), "group-nj", {})
    with pytest.raises(ModelError, match="fails when run in float64"):
        kwh.compress(model, example_inputs=_x(4, 0), quantize=False)


class ConstantThroughPadding(nn.Module):
    """Two dead filters whose BatchNorm shifts make them constant maps, read by a padded conv
    (seen differently at the border), a padded average pool then a Linear (which folds any
    constant exactly) and a valid conv (the same at every position)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.padded = nn.Conv2d(6, 4, 3, padding=1)
        self.valid = nn.Conv2d(6, 4, 3)
        self.fc = nn.Linear(6 + 4 + 4, 3)

    def forward(self, x):
        h = F.relu(self.bn(self.c1(x)))
        a = F.avg_pool2d(h, 3, 1, 1).mean((2, 3))  # count_include_pad: the border differs
        p = self.padded(h).mean((2, 3))
        v = self.valid(h).mean((2, 3))
        return self.fc(torch.cat([a, p, v], 1))


def test_constant_channels_through_padding(tmp_path):
    torch.manual_seed(3)
    model = _bayes(ConstantThroughPadding(), "group-horseshoe", {"c1": [1, 4]}, random=False)
    with torch.no_grad():  # relu(0 - (-1) + shift): 0.5 and 1.5 everywhere
        model.bn.running_mean[[1, 4]] = -1.0
        model.bn.bias[[1, 4]] = torch.tensor([-0.5, 0.5])
    small = kwh.compress(model, example_inputs=_x(4, 0), quantize=False)
    _assert_exact(small, model)
    # the padded conv sees both constants differently at the border, proportionally (0.5 and
    # 1.5 everywhere), and so do the other readers: one carrier filter stays for both
    assert small.get_submodule("c1").out_channels == 5
    assert small.kwh_summary["layers"][0]["carrier_units"] == 1
    assert _assert_file_round_trip(small, tmp_path) == "graph"
