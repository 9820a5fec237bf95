"""kwh.compress on models whose traced graph is not a chain (kwh.compress.dag): residual
additions, concatenations, BatchNorm, global pooling, operations no channel can cross.

Oracle for exactness: the masked Bayesian model in eval mode on random inputs other than the
example it was traced on, to 1e-5 of its largest output. What must be removed, and what must
stay, is set by hand: filters killed through the prior's parameters, BatchNorm statistics
chosen so that a dead filter's constant output is zero after the ReLU (removable before a
padded conv) or positive (it must stay: a padded conv sees it differently at the border).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import kwh
from kwh.bayes import BayesLayer, bayes_layers
from kwh.compress import evaluate, format_summary
from kwh.errors import ModelError
from kwh.graph import ChainError, chain

from any_models import Block, Branchy, DenseCat, Opaque, TinyResNet, Twice, kill_, \
    random_posterior_

TOL = 1e-5
GROUP_PRIORS = ["group-horseshoe", "group-nj"]
SHAPE = (3, 8, 8)


def _bayes(cls, prior: str, posterior: bool = True, seed: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    model = cls()
    kwh.bayesify_(model, prior)
    if posterior:
        random_posterior_(model)
    return model.eval()


def _x(n: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(seed))


def _small(model: nn.Module, **options) -> nn.Module:
    return kwh.compress.compress(model, example_inputs=_x(4, seed=0), quantize=False, **options)


@torch.no_grad()
def _check_same(small: nn.Module, model: nn.Module) -> None:
    for seed in (1, 2):
        x = _x(16, seed)
        ref = model(x)
        torch.testing.assert_close(small(x), ref, rtol=0, atol=TOL * float(1 + ref.abs().max()))


def _layer(small: nn.Module, name: str) -> nn.Module:
    return small.get_submodule(name)


@torch.no_grad()
def _silence(bn: nn.BatchNorm2d, channels, positive: bool = False) -> None:
    """BatchNorm statistics that turn a dead (zero) channel into relu(shift): 0, or > 0."""
    bn.running_mean[channels] = -1.0 if positive else 1.0
    bn.running_var[channels] = 1.0
    bn.weight[channels] = 1.0
    bn.bias[channels] = 0.0


# ------------------------------------------------------------------ (i) exact, smaller, plain

@pytest.mark.parametrize("prior", GROUP_PRIORS)
@pytest.mark.parametrize("cls", [TinyResNet, DenseCat])
def test_pruned_graph_equals_masked_bayesian_model(cls, prior):
    model = _bayes(cls, prior)
    small = _small(model)
    assert isinstance(small, fx.GraphModule)
    assert not any(isinstance(m, BayesLayer) for m in small.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in small.modules())  # all folded
    _check_same(small, model)
    s = small.kwh_summary
    assert s["weights"] < s["weights_original"]
    assert s["graph"]["removed_classes"] > 0
    assert [d["name"] for d in s["layers"]] == [n for n, _ in bayes_layers(model)]


def test_summary_counts_of_the_resnet_by_hand():
    model = _bayes(TinyResNet, "group-nj", posterior=False)
    small = _small(model)
    s = small.kwh_summary
    shapes = {"stem.0": (8, 3, 3, 3), "block1.conv1": (8, 8, 3, 3), "block1.conv2": (8, 8, 3, 3),
              "block2.conv1": (12, 8, 3, 3), "block2.conv2": (12, 12, 3, 3),
              "block2.shortcut.0": (12, 8, 1, 1), "fc": (5, 12)}
    assert {d["name"]: tuple(d["shape_original"]) for d in s["layers"]} == shapes
    assert s["architecture_original"] == s["architecture"] == "8-8-8-12-12-12-12"
    assert s["weights_original"] == sum(math.prod(v) for v in shapes.values()) == 3684
    bn = 4 * (3 * 8 + 3 * 12)  # weight, bias, running mean and variance of six BatchNorms
    assert s["size_fp32_original_bytes"] == 4 * (3684 + 5 + bn)
    positions = {"stem.0": 64, "block1.conv1": 64, "block1.conv2": 64, "block2.conv1": 16,
                 "block2.conv2": 16, "block2.shortcut.0": 16, "fc": 1}
    assert s["macs_original"] == sum(math.prod(shapes[n]) * p for n, p in positions.items())
    assert s["num_classes"] == 5 and s["input_shape"] == list(SHAPE)
    assert s["graph"]["removed_classes"] == 0 and s["graph"]["frozen_layers"] == {}
    assert [d["batchnorm_folded"] for d in s["layers"]] == [
        ["stem.1"], ["block1.bn1"], ["block1.bn2"], ["block2.bn1"], ["block2.bn2"],
        ["block2.shortcut.1"], []]
    assert small.kwh_input_shape == SHAPE
    text = format_summary(s)
    assert "8-8-8-12-12-12-12" in text
    assert "45 coupled channel groups: 0 removed, 5 frozen" in text  # 8 + 8 + 12 + 12 + 5


# ------------------------------------------------------------------ (ii), (iii) the ResNet

@pytest.mark.parametrize("prior", GROUP_PRIORS)
def test_dead_filter_inside_a_block_is_removed(prior):
    model = _bayes(TinyResNet, prior, posterior=False)
    kill_(model.block1.conv1, [2, 5])
    _silence(model.block1.bn1, [2, 5])
    small = _small(model)
    assert _layer(small, "block1.conv1").out_channels == 6
    assert _layer(small, "block1.conv2").in_channels == 6
    assert small.kwh_summary["architecture"] == "8-6-8-12-12-12-12"
    _check_same(small, model)
    # a positive constant map reaches the padded conv2 differently at the border: it stays
    _silence(model.block1.bn1, [5], positive=True)
    small = _small(model)
    assert _layer(small, "block1.conv1").out_channels == 7
    assert _layer(small, "block1.conv2").in_channels == 7
    assert small.kwh_summary["layers"][1]["carrier_units"] == 0
    _check_same(small, model)
    # two such maps (both constant over the image) are proportional: one carries both
    kill_(model.block1.conv1, [6])
    _silence(model.block1.bn1, [6], positive=True)
    with torch.no_grad():
        model.block1.bn1.bias[6] = 2.0  # relu(1 + 2) = 3 times filter 5's relu(1)
    small = _small(model)
    assert _layer(small, "block1.conv1").out_channels == 6  # 2 gone, 6 merged into 5
    assert _layer(small, "block1.conv2").in_channels == 6
    assert small.kwh_summary["layers"][1]["carrier_units"] == 1
    _check_same(small, model)


@pytest.mark.parametrize("fold", [True, False])
def test_batchnorm_kept_in_the_graph_is_sliced(fold):
    model = _bayes(TinyResNet, "group-horseshoe", posterior=False)
    kill_(model.block1.conv1, [2, 5])
    _silence(model.block1.bn1, [2, 5])
    small = _small(model, fold_batchnorm=fold)
    norms = {n: m for n, m in small.named_modules() if isinstance(m, nn.BatchNorm2d)}
    if fold:
        assert norms == {}
    else:
        assert len(norms) == 6 and norms["block1.bn1"].num_features == 6
        assert norms["block2.bn2"].num_features == 12
    assert _layer(small, "block1.conv2").in_channels == 6
    _check_same(small, model)


@pytest.mark.parametrize("prior", GROUP_PRIORS)
def test_residual_channel_goes_only_when_every_writer_drops_it(prior):
    model = _bayes(TinyResNet, prior, posterior=False)
    kill_(model.stem[0], [3])  # one writer of channel 3 of block1's stream
    _silence(model.stem[1], [3])
    small = _small(model)
    readers = ["block1.conv1", "block2.conv1", "block2.shortcut.0"]
    assert _layer(small, "stem.0").out_channels == 8  # block1.conv2 still writes channel 3
    assert all(_layer(small, n).in_channels == 8 for n in readers)
    _check_same(small, model)
    kill_(model.block1.conv2, [3])  # now every writer of the channel is dead
    _silence(model.block1.bn2, [3])
    small = _small(model)
    assert _layer(small, "stem.0").out_channels == 7
    assert _layer(small, "block1.conv2").out_channels == 7
    assert all(_layer(small, n).in_channels == 7 for n in readers)
    assert _layer(small, "block1.conv1").out_channels == 8  # the block's inner channels stay
    _check_same(small, model)


def test_unread_residual_channel_goes_with_its_writers():
    model = _bayes(TinyResNet, "group-nj", posterior=False)
    kill_(model.fc, [6])  # nobody reads channel 6 of block2's stream: the fc input unit 6
    small = _small(model)
    for name in ("block2.conv2", "block2.shortcut.0"):  # both writers lose the row
        assert _layer(small, name).out_channels == 11
    assert _layer(small, "fc").in_features == 11 and _layer(small, "fc").out_features == 5
    _check_same(small, model)


# ------------------------------------------------------------------ (iv) concatenation

@pytest.mark.parametrize("prior", GROUP_PRIORS)
def test_concatenation_prunes_through_the_index_map(prior):
    model = _bayes(DenseCat, prior, posterior=False)
    kill_(model.a, [1])  # conv with bias: the bias is masked too, relu(0) = 0
    kill_(model.stem[0], [2])
    _silence(model.stem[1], [2])
    kill_(model.out, [2])  # the head does not read unit 2 of fa
    small = _small(model)
    assert _layer(small, "stem.0").out_channels == 5
    assert _layer(small, "a").in_channels == _layer(small, "b").in_channels == 5
    assert _layer(small, "a").out_channels == 3
    mix = _layer(small, "mix")
    assert mix.in_channels == 5 + 3 + 5
    keep = [c for c in range(15) if c not in (2, 6 + 1)]  # stem 2 and a's filter 1 in the cat
    w, _ = model.mix.eval_weight_bias()
    assert torch.equal(mix.weight, w[:, keep])  # the kept columns, in the cat's order
    assert _layer(small, "fa").out_features == 6 and _layer(small, "out").in_features == 12
    _check_same(small, model)


# ------------------------------------------------------------------ (v) opaque operations

@pytest.mark.parametrize("prior", GROUP_PRIORS)
def test_opaque_operations_freeze_the_channels_they_touch(prior):
    model = _bayes(Opaque, prior, posterior=False)
    kill_(model.c1, [4])  # free: removed
    kill_(model.c2, [1])  # feeds the LayerNorm over channels: stays
    kill_(model.c3, [0])  # feeds view(-1, 64), literal sizes: stays
    small = _small(model)
    assert [_layer(small, n).out_channels for n in ("c1", "c2", "c3")] == [5, 8, 4]
    assert _layer(small, "c2").in_channels == 5
    g = small.kwh_summary["graph"]
    assert g["removed_classes"] == 1 and g["frozen_classes"] == 8 + 4 + 3
    _check_same(small, model)


def test_layer_that_cannot_be_pruned_is_frozen_and_exact():
    class Grouped(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.dw = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, groups=6)
            self.c2, self.fc = nn.Conv2d(3, 6, 3), nn.Linear(6, 2)

        def forward(self, x):
            h = F.relu(self.dw(F.relu(self.c1(x)))) + self.c2(x)
            return self.fc(h.mean((2, 3)))

    model = _bayes(Grouped, "group-nj", posterior=False)
    kill_(model.c1, [0])
    small = _small(model)
    assert small.kwh_summary["graph"]["frozen_layers"] == {"dw": "grouped Conv2d (groups=6)"}
    assert "layers kept whole: dw (grouped Conv2d (groups=6))" in format_summary(small.kwh_summary)
    assert _layer(small, "dw").groups == 6 and _layer(small, "c1").out_channels == 6
    _check_same(small, model)


# ------------------------------------------------------------------ (vi) quantized

def test_quantized_graph_is_on_the_fixed_point_grid_and_close():
    model = _bayes(TinyResNet, "group-horseshoe")
    small = kwh.compress.compress(model, example_inputs=_x(4, seed=0))
    exact = _small(model)
    names = [n for n, _ in bayes_layers(model)]
    for name in names:
        q, f = _layer(small, name), _layer(exact, name)
        t, bits = q.kwh_frac_bits, q.kwh_bits
        ints = q.weight.double() * 2.0 ** t
        assert torch.equal(ints, ints.round()), "weights must be int * 2^-t exactly"
        assert (q.weight.double() - f.weight.double()).abs().max() <= 2.0 ** -(t + 1)
        assert bits == 1 + max(1, int(ints.abs().max()).bit_length())
        assert f.kwh_bits == 32 and f.kwh_frac_bits is None
    assert small.kwh_summary["bits"] == "-".join(str(_layer(small, n).kwh_bits) for n in names)
    x = _x()
    with torch.no_grad():
        ref = exact(x)
        assert (small(x) - ref).abs().max() <= 0.01 * ref.abs().max()


def test_eval_data_and_bits_guard():
    model = _bayes(TinyResNet, "group-nj")
    x = _x(200, seed=3)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:20] = (y[:20] + 1) % 5  # the Bayesian model errs on exactly these 20
    data = [(x[i:i + 50], y[i:i + 50]) for i in range(0, 200, 50)]
    small = kwh.compress.compress(model, example_inputs=x[:4], eval_data=data, guard_data=data,
                                  bits_search="raise", bits_tolerance=0.0)
    s = small.kwh_summary
    assert s["eval"]["error_before_quantization"] == pytest.approx(20 / 200)
    assert s["eval"]["error_after_quantization"] == pytest.approx(evaluate(small, data)["error"])
    g = s["bits_guard"]
    assert g["error_unquantized"] == pytest.approx(20 / 200)
    assert g["error_chosen_bits"] <= g["error_unquantized"] + 1e-12
    assert "bits guard" in format_summary(s)


def _prune_fit(prior: str, search: str):
    """(the Bayesian TinyResNet, its examples, guard data labelled by the model itself, the
    model compressed unquantized with ``search`` at 1 point of tolerance)."""
    model = _bayes(TinyResNet, prior)
    x = _x(200, seed=3)
    with torch.no_grad():
        y = model(x).argmax(1)
    data = [(x[i:i + 100], y[i:i + 100]) for i in range(0, 200, 100)]
    fit = kwh.compress.compress(model, example_inputs=x[:4], guard_data=data, quantize=False,
                                prune_search=search, prune_tolerance=1.0)
    return model, x, data, fit


def test_prune_fit_on_a_graph_reports_what_it_chose():
    model, _, data, fit = _prune_fit("group-horseshoe", "fit")
    g = fit.kwh_summary["prune_guard"]
    assert g["error_chosen"] == pytest.approx(evaluate(fit, data)["error"])
    assert 100 * (g["error_chosen"] - g["error_posterior"]) <= 1.0 + 1e-9
    post = _small(model)
    assert fit.kwh_summary["nonzero"] <= post.kwh_summary["nonzero"]


def test_the_verb_measures_the_payload_and_the_model_is_left_unchanged():
    model = _bayes(TinyResNet, "group-nj")
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    small = kwh.compress(model, example_inputs=_x(4, seed=0))
    assert small.kwh_summary["payload_bytes"] > 0
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # the input shape alone is enough: a random example is traced
    again = kwh.compress.compress(model, input_shape=SHAPE, quantize=False)
    _check_same(again, model.eval())


class DropoutResidual(nn.Module):
    """Functional dropout that follows the training flag, on a residual path."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.out = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        h = h + F.dropout(F.relu(self.fc2(h)), 0.5, self.training)
        return self.out(h)


def test_a_model_in_training_mode_is_compressed_as_inference_runs_it():
    model = _bayes(DropoutResidual, "group-nj")
    model.train()
    x = torch.randn(16, 6)
    small = kwh.compress.compress(model, example_inputs=x, quantize=False)
    assert model.training
    with torch.no_grad():
        ref = model.eval()(x)
        torch.testing.assert_close(small.train()(x), ref, rtol=0, atol=TOL)  # no dropout left


class SharedRelu(nn.Module):
    """torchvision's BasicBlock style: one nn.ReLU(inplace=True) called twice, out += identity."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(3, 4)

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        out = self.relu(out)
        return self.fc(out.mean((2, 3)))


def test_a_stateless_module_called_twice_is_fine():
    model = _bayes(SharedRelu, "group-horseshoe", posterior=False)
    kill_(model.conv1, [0, 4])
    _silence(model.bn1, [0, 4])
    small = _small(model)
    assert _layer(small, "conv1").out_channels == 4 and _layer(small, "conv2").in_channels == 4
    assert _layer(small, "conv2").out_channels == 3  # the stream holds the input: frozen
    _check_same(small, model)


# ------------------------------------------------------------------ (vii) chains stay chains

class OwnForward(nn.Module):
    """A chain written with its own forward: traced, read as a chain."""

    def __init__(self, seq: nn.Sequential):
        super().__init__()
        self.seq = seq

    def forward(self, x):
        return self.seq(x)


def test_chain_models_still_take_the_chain_path():
    torch.manual_seed(2)
    seq = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 16, 10), nn.ReLU(),
                        nn.Linear(10, 4))
    kwh.bayesify_(seq, "group-horseshoe")
    random_posterior_(seq)
    seq.eval()
    traced = kwh.compress.compress(OwnForward(seq), example_inputs=_x(4, seed=0))
    direct = kwh.compress.compress(seq, input_shape=SHAPE)
    assert type(traced) is nn.Sequential and "graph" not in traced.kwh_summary
    a, b = traced.state_dict(), direct.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    for key in ("architecture", "bits", "weights", "nonzero", "macs"):
        assert traced.kwh_summary[key] == direct.kwh_summary[key]


# ------------------------------------------------------------------ (viii) still refused

class TwiceResidual(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.out = nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = F.relu(self.fc(x))
        return self.out(h + self.fc(h))


class BranchyResidual(Branchy):
    def forward(self, x):
        h = self.fc1(x) + x
        if h.sum() > 0:
            h = F.relu(h)
        return self.fc2(h)


class AttributeResidual(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.out = nn.Linear(6, 6), nn.Linear(6, 3)
        self.register_buffer("scale", torch.ones(6))

    def forward(self, x):
        return self.out(self.fc(x) * self.scale + x)


@pytest.mark.parametrize("cls, pattern", [
    (Twice, r"module 'fc' is called more than once"),
    (TwiceResidual, r"module 'fc' is called more than once"),
    (Branchy, "data-dependent control flow"),
    (BranchyResidual, "data-dependent control flow"),
    (AttributeResidual, "reads the tensor attribute 'scale'"),
])
def test_constructs_no_graph_reading_handles_are_still_named(cls, pattern):
    model = cls()
    kwh.bayesify_(model, "group-nj")
    with pytest.raises(ModelError, match=pattern) as err:
        kwh.compress(model, example_inputs=torch.randn(4, 6))
    assert not isinstance(err.value, ChainError)


def test_a_join_is_a_chain_error_and_the_graph_readers_take_the_graph():
    with pytest.raises(ChainError, match=r"combines 2 paths.*not a chain of layers"):
        chain(TinyResNet().eval(), _x(2))
    from kwh.spike import build_plan
    from kwh.spike.plan import GraphPlan
    assert isinstance(build_plan(TinyResNet().eval(), example_inputs=_x(2)), GraphPlan)


# ------------------------------------------------------------------ (ix) Sparse VD

def _empty_rows(model: nn.Module) -> dict[str, list[int]]:
    """Output units whose masked weights are all zero, by layer."""
    out = {}
    for name, m in bayes_layers(model):
        w = m.eval_weight_bias()[0]
        out[name] = (w == 0).flatten(1).all(1).nonzero().flatten().tolist()
    return out


def test_sparse_vd_on_the_resnet_is_exact_and_removes_only_empty_units():
    model = _bayes(TinyResNet, "log-uniform")  # 70% of the weights pruned at random
    empty = _empty_rows(model)
    assert empty["block2.shortcut.0"] == [6, 10]  # 8 weights a filter: two came out empty
    assert all(not rows for n, rows in empty.items() if n != "block2.shortcut.0")
    for _, m in bayes_layers(model):  # and no layer has an empty input column
        assert (m.eval_weight_bias()[0] != 0).transpose(0, 1).flatten(1).any(1).all()
    small = _small(model)
    s = small.kwh_summary
    assert s["rates"]["kind"] == "csr (unstructured)"
    # the empty shortcut filters stay: block2.conv2 writes the same channels of the stream
    assert s["architecture"] == s["architecture_original"]
    masked = sum(int(torch.count_nonzero(m.eval_weight_bias()[0])) for _, m in bayes_layers(model))
    assert s["nonzero"] == masked  # nothing but zeros removed
    _check_same(small, model)
    # with block2.conv2's filter 6 empty too, channel 6 is a constant: relu(1 + 1) = 2 after
    # the BatchNorm shifts, the addition and the ReLU, through the global pool; the fc folds
    # it into its bias (a padded conv could not)
    kill_(model.block2.conv2, [6])
    _silence(model.block2.bn2, [6], positive=True)
    _silence(model.block2.shortcut[1], [6], positive=True)
    small = _small(model)
    for name in ("block2.conv2", "block2.shortcut.0"):
        assert _layer(small, name).out_channels == 11
    assert _layer(small, "fc").in_features == 11
    _check_same(small, model)


def test_block_alone_is_a_graph_too():
    torch.manual_seed(0)
    model = Block(3, 4, stride=2)
    kwh.bayesify_(model, "group-nj")
    random_posterior_(model)
    small = _small(model.eval())
    _check_same(small, model)


def test_prune_fit_macs_cuts_where_the_multiplications_are():
    from kwh.compress.metrics import nonzero_macs

    model, x, _, fit = _prune_fit("log-uniform", "fit-macs")
    g = fit.kwh_summary["prune_guard"]
    assert g["mode"] == "fit-macs" and g["steps"]
    assert 100 * (g["error_chosen"] - g["error_posterior"]) <= 1.0 + 1e-9
    macs = [step["nonzero_macs"] for step in g["steps"]]
    assert macs == sorted(macs, reverse=True) and len(set(macs)) == len(macs)
    assert macs[-1] == nonzero_macs(fit, x[:1])
    assert nonzero_macs(fit, x[:1]) < nonzero_macs(_small(model), x[:1])


def test_nonzero_macs_counts_each_weight_at_each_output_position():
    from kwh.compress.metrics import nonzero_macs

    conv = nn.Conv2d(1, 2, 3, padding=1)  # 8x8 output: 64 positions
    fc = nn.Linear(2 * 64, 3)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = 1.0
        conv.weight[1, 0, 0, 0] = 2.0
        fc.weight.zero_()
        fc.weight[0, :5] = 1.0
    net = nn.Sequential(conv, nn.Flatten(), fc)
    assert nonzero_macs(net, torch.zeros(1, 1, 8, 8)) == 2 * 64 + 5
    with pytest.raises(ValueError, match="one example"):
        nonzero_macs(net, torch.zeros(2, 1, 8, 8))
