"""Shrinking while training: dead groups leave the network, nothing else changes."""

from __future__ import annotations

import copy

import pytest
import torch

import kwh
from kwh.bayes import BayesLinear, bayes_layers, kl_divergence, param_groups
from kwh.compress.shrink import Shrinker, carry_optimizer_state
from kwh.errors import ModelError
from test_compress import PRIORS, _bayes


def _one_step(model, opt, x):
    model.train()
    opt.zero_grad()
    (model(x).square().mean() + 1e-4 * kl_divergence(model)).backward()
    opt.step()


@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("name", ["lenet5", "mlp"])
def test_shrinking_keeps_eval_outputs_compression_and_adam_state(name, prior):
    model, shape = _bayes(name, prior, frac=0.5)
    x = torch.randn(8, *shape)
    opt = torch.optim.Adam(param_groups(model, 1e-3))
    _one_step(model, opt, x)
    before = copy.deepcopy(model).eval()
    names = {id(p): n for n, p in model.named_parameters()}
    exp_avg = {names[id(p)]: st["exp_avg"].clone() for p, st in opt.state.items()}
    sh = Shrinker(model, shape, patience=1)
    removed = sh.step()
    assert removed, "a half-pruned posterior has dead groups"
    new = torch.optim.Adam(param_groups(model, 1e-3))
    carry_optimizer_state(opt, names, new, model, sh.moves)
    n_before = sum(p.numel() for p in before.parameters())
    assert sum(p.numel() for p in model.parameters()) < n_before  # physically smaller
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), before(x), atol=1e-6, rtol=1e-6)
    a = kwh.compress(model, input_shape=shape, quantize=False)
    b = kwh.compress(before, input_shape=shape, quantize=False)
    assert a.kwh_summary["architecture"] == b.kwh_summary["architecture"]
    # counted against the network training started from, not the shrunk one
    for key in ("architecture_original", "weights_original", "macs_original",
                "size_fp32_original_bytes", "rates"):
        assert a.kwh_summary[key] == b.kwh_summary[key], key
    assert [d["shape_original"] for d in a.kwh_summary["layers"]] == \
        [d["shape_original"] for d in b.kwh_summary["layers"]]
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    # Adam's moments followed their weights: each kept entry has its old moment
    for pname, moves in sh.moves.items():
        p = dict(model.named_parameters())[pname]
        old = exp_avg[pname]
        for dim, index in moves:
            old = old.index_select(dim, index)
        assert torch.equal(new.state[p]["exp_avg"], old)
    _one_step(model, new, x)  # and training goes on
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_patience_counts_consecutive_checks_and_the_plan_rebuilds_the_model():
    model, shape = _bayes("lenet5", "group-horseshoe", frac=0.5)
    sh = Shrinker(model, shape, patience=2)
    assert sh.step() is None  # dead once: not yet
    removed = sh.step()
    assert removed and set(removed) >= {"0", "3"}
    state = sh.state()
    fresh, _ = _bayes("lenet5", "group-horseshoe", frac=0.5)
    Shrinker(fresh, shape, patience=2).load_state(state)
    fresh.load_state_dict(model.state_dict())  # same shapes, same buffers (gather index)
    x = torch.randn(4, *shape)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), model.eval()(x))
    fc1 = dict(bayes_layers(model))["7"]
    assert isinstance(fc1, BayesLinear) and fc1.input_index is not None


def test_unsupported_chains_are_named():
    model, shape = _bayes("lenet5", "group-nj")
    model[1] = torch.nn.Softmax(dim=1)  # mixes channels between two layers
    with pytest.raises(ModelError, match="Softmax"):
        Shrinker(model, shape)
    with pytest.raises(ValueError, match="patience"):
        Shrinker(_bayes("mlp", "group-nj")[0], (1, 28, 28), patience=0)
