"""A fused-attention ViT (kwh.modules.SelfAttention, vit_tiny's default) in a graph-layout
.kwh file, and trained by name with one group-prior scale per head."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import kwh
from kwh.bayes import BayesLinear, GroupHorseshoe, LogUniform
from kwh.errors import ModelError
from kwh.energy import count_model
from kwh.format import GraphNet, codec
from kwh.models import vit_tiny
from kwh.modules import SelfAttention
from kwh.train import TrainConfig, load_checkpoint, run_training

IMAGE = (1, 14, 14)  # patches of 7: 4 tokens
DIM, HEADS, HD, DEPTH = 12, 3, 4, 2


def _vit(**kw) -> nn.Module:
    torch.manual_seed(5)
    return vit_tiny(in_channels=1, num_classes=5, image_size=14, patch=7, dim=DIM, depth=DEPTH,
                    heads=HEADS, mlp=8, **kw)


def _x(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, *IMAGE, generator=torch.Generator().manual_seed(seed))


def test_vit_defaults_to_the_fused_attention():
    model = _vit()
    assert all(isinstance(b.attn, SelfAttention) for b in model.blocks)


def test_fused_and_traced_plain_vit_write_the_same_file():
    """SelfAttention is stored as the steps the traced attention's forward gives: byte for byte
    the same file for the same weights."""
    traced, fused = _vit(fused_attention=False).eval(), _vit().eval()
    fused.load_state_dict(traced.state_dict())
    data = codec.encode(fused)
    assert data == codec.encode(traced)
    loaded = codec.decode(data)
    with torch.no_grad():
        for n, seed in ((1, 1), (3, 2)):
            assert torch.equal(loaded(_x(n, seed)), fused(_x(n, seed)))


@torch.no_grad()
def _dead_heads_(model: nn.Module) -> None:
    """Block 0: head 1 unread (its scale of the out-projection pruned). Block 1: v's rows of
    head 2 zero (the head outputs v's bias, folded into out's)."""
    out0 = model.blocks[0].attn.out.prior
    assert isinstance(out0, GroupHorseshoe)
    out0.a_log_var[1] = 3.0
    model.blocks[1].attn.v.prior.weight_mu[2 * HD:3 * HD] = 0.0


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(compressed fused vit with dead heads removed, its file's path)."""
    torch.manual_seed(0)
    model = _vit()
    kwh.bayesify_(model, "group-horseshoe", group_sizes=model.kwh_head_groups())
    _dead_heads_(model)
    small = kwh.compress(model.eval(), example_inputs=_x(4, 0))
    path = tmp_path_factory.mktemp("vit") / "vit.kwh"
    assert kwh.save(small, path) == path.stat().st_size
    return small, path


def _linears(small: nn.Module) -> list[nn.Linear]:
    """The compressed model's Linear layers in the order its forward calls them."""
    out = []
    for i in range(DEPTH):
        a = small.get_submodule(f"blocks.{i}.attn")
        out += [a.q, a.k, a.v, a.out, small.get_submodule(f"blocks.{i}.mlp.0"),
                small.get_submodule(f"blocks.{i}.mlp.2")]
    return out + [small.get_submodule("head")]


def test_compressed_fused_vit_loads_from_the_file_alone_exactly(saved):
    small, path = saved
    heads = [small.get_submodule(f"blocks.{i}.attn").heads for i in range(DEPTH)]
    assert heads == [2, 2]
    report = codec.file_report(path)
    assert report["layout"] == "graph"
    assert report["ops"]["Softmax"] == DEPTH and report["ops"]["matmul"] == 2 * DEPTH
    loaded = kwh.load(path)
    assert type(loaded) is GraphNet and not loaded.training
    with torch.no_grad():
        for n, seed in ((1, 1), (3, 2), (1, 3), (3, 4), (3, 5)):
            assert torch.equal(loaded(_x(n, seed)), small(_x(n, seed)))
    # reshapes to the heads kept: (tokens, 2 heads, head_dim)
    splits = [s.args["shape"] for s in loaded.steps if s.op == "reshape"]
    assert splits == [[4, 2, HD]] * 3 + [[4, 2 * HD]] + [[4, 2, HD]] * 3 + [[4, 2 * HD]]
    scales = {s.args["scalar"] for s in loaded.steps if s.op == "mul_scalar"}
    assert scales == {HD ** -0.5}  # 1/sqrt(head_dim), whatever the number of heads
    want = _linears(small)
    got = [m for m in loaded.modules() if isinstance(m, nn.Linear)]
    assert len(got) == len(want) == 6 * DEPTH + 1
    for a, b in zip(want, got):  # each layer's own weights and fixed point
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
        assert (a.kwh_bits, a.kwh_frac_bits) == (b.kwh_bits, b.kwh_frac_bits)
        assert a.kwh_bits < 32


def _fields(c) -> dict:
    return {k: v for k, v in vars(c).items() if k not in ("module", "name")}


def test_the_loaded_file_counts_the_energy_of_the_compressed_model(saved):
    small, path = saved
    a, b = count_model(small, IMAGE), count_model(kwh.load(path), IMAGE)
    assert len(a) == len(b) and len(a) > 6 * DEPTH
    for x, y in zip(a, b):
        assert _fields(x) == _fields(y), (x.name, y.name)


def test_an_attention_called_twice_is_refused():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = SelfAttention(4, 2, 2)

        def forward(self, x):
            return self.attn(self.attn(x))

    with pytest.raises(ModelError, match="called more than once.*layout='state'"):
        codec.encode(Twice().eval(), input_shape=(3, 4))


# ------------------------------------------------------------------ trained by name

def _run(tmp_path, data_root, prior: str, name: str) -> TrainConfig:
    # 2 optimizer steps of 100 examples, a checkpoint after each
    return TrainConfig(model="vit", prior=prior, pretrain_epochs=0, epochs=1, limit_train=200,
                       limit_test=100, threads=1, checkpoint_every=1, data_dir=str(data_root),
                       out_dir=str(tmp_path / name))


class _Crash(Exception):
    pass


def _crash_at(step: int):
    def fault(s: int):
        if s == step:
            raise _Crash(step)
        return False
    return fault


def _head_groups(model: nn.Module) -> list[tuple[int, int]]:
    return [(m.prior.n_groups, m.prior.group_size) for name, m in model.named_modules()
            if isinstance(m, BayesLinear) and name.endswith("attn.out")]


def test_vit_trained_by_name_groups_heads_and_resumes(tmp_path, data_root):
    cfg = _run(tmp_path, data_root, "group-horseshoe", "ghs")
    with pytest.raises(_Crash):
        run_training(cfg, progress=False, fault=_crash_at(1))
    result = run_training(cfg, resume=True, progress=False)
    model, cfg2 = load_checkpoint(cfg.out_dir)
    assert cfg2 == cfg.resolved()
    assert _head_groups(model) == _head_groups(result.model) == [(4, 16)] * 4  # 4 heads of 16
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), result.model(x))


def test_vit_under_log_uniform_has_no_groups(tmp_path):
    from kwh.train.build import BAYESIAN, build_model
    cfg = TrainConfig(model="vit", prior="log-uniform", out_dir=str(tmp_path / "lu"))
    model = build_model(cfg, BAYESIAN)
    out = model.blocks[0].attn.out
    assert isinstance(out, BayesLinear) and type(out.prior) is LogUniform
    assert out.prior.log_sigma2.shape == (64, 64)  # one scale per weight
