"""A vision transformer in the graph layout (version 3): LayerNorm, PositionEmbedding, GELU,
softmax, matmul, transpose, permute, reshape, flatten(start_dim, end_dim), mean and products
with a number, stored as allowed operations and rebuilt by kwh.load alone.

Oracles: the in-memory model (outputs equal exactly, tensors bit for bit), the wiring read off
forward() by hand, and the loader's messages for hand-broken headers.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kwh
from kwh.errors import FormatError, ModelError
from kwh.format import GraphNet, codec, file_report, ops
from kwh_files import reseal, split_header
from kwh.graph import trace
from kwh.models import vit_tiny
from kwh.modules import PositionEmbedding
from tests.any_models import around_fc, random_posterior_

DEPTH = 2
SIZES = dict(image_size=8, patch=4, dim=16, depth=DEPTH, heads=2, mlp=32)  # 4 tokens of 16


def _randomize_norms_(model: nn.Module, seed: int = 5) -> None:
    """LayerNorm affine tensors and the position table away from their initial values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.5, 0.5, generator=g)
            if isinstance(m, PositionEmbedding):
                m.weight.normal_(0.0, 0.3, generator=g)


def _bayesian_vit(prior: str) -> nn.Module:
    torch.manual_seed(0)
    model = vit_tiny(**SIZES)
    kwh.bayesify_(model, prior)
    random_posterior_(model)
    _randomize_norms_(model)
    return model.eval()


def _plain_vit() -> nn.Module:
    torch.manual_seed(1)
    model = vit_tiny(**SIZES)
    _randomize_norms_(model)
    return model.eval()


def _batch(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ round trips

@pytest.mark.parametrize("prior", ["group-horseshoe", "log-uniform"])
def test_compressed_bayesian_vit_saves_as_a_graph_and_loads_exactly(tmp_path, prior):
    x = _batch(8, 1)
    small = kwh.compress(_bayesian_vit(prior), example_inputs=x)
    path = tmp_path / "vit.kwh"
    assert kwh.save(small, path) == path.stat().st_size
    report = file_report(path)
    assert report["layout"] == "graph"
    # read off VisionTransformer.forward: per block 3 views + 1 reshape, 3 + 1 + 1 transposes
    # (q, k, v, k^T, the heads back), 2 matmuls, 1 scale, 2 residual adds, 2 LayerNorms
    assert report["ops"] == {
        "Conv2d": 1, "flatten": 1, "transpose": 1 + 5 * DEPTH, "PositionEmbedding": 1,
        "LayerNorm": 2 * DEPTH + 1, "Linear": 6 * DEPTH + 1, "reshape": 4 * DEPTH,
        "matmul": 2 * DEPTH, "mul_scalar": DEPTH, "Softmax": DEPTH, "add": 2 * DEPTH,
        "GELU": DEPTH, "mean": 1}
    header = json.loads(json.dumps(codec.read_header(path)))
    quantized = [n for n in header["nodes"] if n["op"] == "Linear" and n["quant"]
                 and n["quant"]["frac_bits"] is not None]
    assert quantized  # the compressed layers keep their bits in the file
    loaded = kwh.load(path)
    assert type(loaded) is GraphNet and not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(x), small(x))
        other = _batch(3, 7)  # another batch size: the batch is read from the input
        assert torch.equal(loaded(other), small(other))
    names = ["pos", *(f"blocks.{i}.norm{j}" for i in range(DEPTH) for j in (1, 2)), "norm"]
    norms = [small.get_submodule(name) for name in names]  # in the order forward() calls them
    back = [m for m in loaded.modules() if isinstance(m, (nn.LayerNorm, PositionEmbedding))]
    assert len(back) == 2 * DEPTH + 2
    for a, b in zip(norms, back):
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_plain_vit_traced_and_untraced_write_the_same_graph_file(tmp_path):
    model = _plain_vit()
    data = codec.encode(trace(model), input_shape=(1, 8, 8))
    assert data == codec.encode(model)  # vit_tiny carries its input shape
    assert data[8] == codec.GRAPH_VERSION
    loaded = codec.decode(data)
    x = _batch(5, 2)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    first = [(n.op, n.args) for n in loaded.steps[:5]]
    assert first == [("Conv2d", {}), ("flatten", {"start_dim": 2, "end_dim": 3}),
                   ("transpose", {"dims": [1, 2]}), ("PositionEmbedding", {}),
                   ("LayerNorm", {})]
    attention = [(s.op, s.args) for s in loaded.steps if s.op in ops.OPS][2:11]
    assert attention == [
        ("reshape", {"shape": [4, 2, 8]}), ("transpose", {"dims": [1, 2]}),   # q
        ("reshape", {"shape": [4, 2, 8]}), ("transpose", {"dims": [1, 2]}),   # k
        ("reshape", {"shape": [4, 2, 8]}), ("transpose", {"dims": [1, 2]}),   # v
        ("transpose", {"dims": [2, 3]}), ("matmul", {}),                      # q @ k^T
        ("mul_scalar", {"scalar": 8 ** -0.5})]


class Forms(nn.Module):
    """Every new function in its other spellings: permute, contiguous, a view with -1, a
    LayerNorm over two dims, tanh GELU, torch.transpose, a quotient, F.softmax, number * x,
    a reshape whose batch is -1, a mean with keepdim, flatten(1)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(1, 6, 2, stride=2)
        self.norm = nn.LayerNorm((4, 6), eps=1e-3)
        self.head = nn.Linear(6, 3)

    def forward(self, x):                                        # (B, 1, 4, 4)
        h = torch.flatten(self.embed(x), 2, -1)                  # (B, 6, 4)
        h = h.permute(0, 2, 1).contiguous()                      # (B, 4, 6)
        h = F.gelu(self.norm(h), approximate="tanh")
        q = torch.transpose(h.view(h.size(0), -1, 2, 3), 1, 2)   # (B, 2, 4, 3)
        att = F.softmax(torch.matmul(q, q.transpose(-1, -2)) / 3, dim=-1)  # (B, 2, 4, 4)
        y = 0.5 * (att @ q)                                      # (B, 2, 4, 3)
        y = y.permute(0, 2, 1, 3).reshape(-1, 4, 6)              # (B, 4, 6)
        return self.head(y.mean(dim=-2, keepdim=True).flatten(1))


FORMS_STEPS = [  # (op, inputs, function args) read off Forms.forward by hand
    ("Conv2d", (-1,), {}), ("flatten", (0,), {"start_dim": 2, "end_dim": 3}),
    ("permute", (1,), {"dims": [2, 1]}), ("Identity", (2,), {}), ("LayerNorm", (3,), {}),
    ("GELU", (4,), {}), ("reshape", (5,), {"shape": [4, 2, 3]}),
    ("transpose", (6,), {"dims": [1, 2]}), ("transpose", (7,), {"dims": [2, 3]}),
    ("matmul", (7, 8), {}), ("div_scalar", (9,), {"scalar": 3.0}), ("Softmax", (10,), {}),
    ("matmul", (11, 7), {}), ("mul_scalar", (12,), {"scalar": 0.5}),
    ("permute", (13,), {"dims": [2, 1, 3]}), ("reshape", (14,), {"shape": [4, 6]}),
    ("mean", (15,), {"dims": [1], "keepdim": True}), ("flatten", (16,), {}),
    ("Linear", (17,), {})]


def test_other_spellings_of_the_functions_round_trip_exactly():
    torch.manual_seed(2)
    model = Forms().eval()
    _randomize_norms_(model)
    data = codec.encode(model, input_shape=(1, 4, 4))
    loaded = codec.decode(data)
    assert [(s.op, s.inputs, s.args) for s in loaded.steps] == FORMS_STEPS
    assert loaded.layer(5).approximate == "tanh" and loaded.layer(11).dim == -1
    assert loaded.layer(4).normalized_shape == (4, 6) and loaded.layer(4).eps == 1e-3
    x = torch.randn(6, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert codec.encode(loaded, input_shape=(1, 4, 4)) == data  # a loaded file re-saves as is


def test_exact_gelu_is_stored_as_such():
    model = nn.Sequential(nn.Linear(4, 4), nn.GELU(), nn.LayerNorm(4, bias=False)).eval()
    loaded = codec.decode(codec.encode(model, input_shape=(4,), layout="graph"))
    assert loaded.layer(1).approximate == "none" and loaded.layer(2).bias is None
    x = torch.randn(3, 4)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


# ------------------------------------------------------------------ refused when saving


@pytest.mark.parametrize("forward, match", [
    (lambda s, x: s.fc(x).view(2, 2, 2), r"reshapes to sizes \[2, 2, 2\] whose first is 2, "
                                         r"not the batch size"),
    (lambda s, x: s.fc(x).reshape(-1, 2), r"does not keep the batch as the first dimension"),
    (lambda s, x: s.fc(x).view(x.size(0) * 2, 2), r"computes a size from the batch size and 2"),
    (lambda s, x: s.fc(x).view(x.size(0), 2, x.size(0)), r"does not keep the batch"),
    (lambda s, x: s.fc(x).flatten(), r"works along the batch dimension"),
    (lambda s, x: s.fc(x).view(x.size(0), 2, 2).transpose(0, 1), r"along the batch dimension"),
    (lambda s, x: s.fc(x).view(x.size(0), 2, 2).permute(1, 0, 2),
     r"moves the batch dimension \(dims \[1, 0, 2\]\)"),
    (lambda s, x: s.fc(x).view(x.size(0), 1, 2, 2) @ x.view(x.size(0), 2, 2),
     r"cannot store this operation: .*matmul needs two inputs of the same rank .* \(no "
     r"broadcasting\)"),
    (lambda s, x: s.fc(x) / x, r"div is not allowed in a graph file on 2 activations"),
    (lambda s, x: 2 / s.fc(x), r"divides a number by an activation"),
    (lambda s, x: s.fc(x) / 0.0, r"divides by 0"),
    (lambda s, x: s.fc(x) * float("nan"), r"uses the number nan; a graph file's mul_scalar"),
    (lambda s, x: s.fc(x) * 1e31, r"\|number\| <= 1e\+30"),
    (lambda s, x: s.fc(x) * 2**30, r"an integer of at most 16777216"),
    (lambda s, x: s.fc(x) * x.size(0), r"uses the batch size as its number"),
    (lambda s, x: torch.div(s.fc(x), 2, rounding_mode="floor"), r"divides .*rounding_mode"),
])
def test_unstorable_uses_of_the_functions_are_refused(forward, match):
    with pytest.raises(ModelError, match=match):
        codec.encode(around_fc(forward), input_shape=(4,), layout="graph")


# ------------------------------------------------------------------ hostile headers



@pytest.fixture(scope="module")
def vit_file() -> bytes:
    return codec.encode(_plain_vit())


def _first(header: dict, op: str) -> dict:
    return next(n for n in header["nodes"] if n["op"] == op)


def _index(header: dict, op: str) -> int:
    return next(i for i, n in enumerate(header["nodes"]) if n["op"] == op)


def _args(op: str, **args):
    def edit(h):
        _first(h, op)["args"].update(args)
    return edit


def _op_args(old: str, new: str, args: dict):
    def edit(h):
        _first(h, old).update(op=new, args=args)
    return edit


def _matmul_inner_mismatch(h):
    node = _first(h, "matmul")  # q @ k^T -> q @ k: (2, 4, 8) @ (2, 4, 8)
    node["inputs"][1] = h["nodes"][node["inputs"][1]]["inputs"][0]


def _matmul_on_the_input(h):
    _first(h, "matmul")["inputs"][1] = -1


def _matmul_one_input(h):
    node = _first(h, "matmul")
    node["inputs"] = node["inputs"][:1]


@pytest.mark.parametrize("edit, match", [
    (_args("transpose", dims=[2, 2]), r"\(transpose\)\.dims must be two different dimensions "
                                      r"in increasing order"),
    (_args("transpose", dims=[2, 1]), r"in increasing order .*got \[2, 1\]"),
    (_args("transpose", dims=[0, 1]), r"\(transpose\)\.dims\.0=0 is out of range \[1, 8\]"),
    (_args("transpose", dims=[1, 9]), r"\.dims\.1=9 is out of range \[1, 8\]"),
    (_args("transpose", dims=[1, 3]), r"dims=\[1, 3\] are out of range for an input of shape "
                                      r"\(16, 4\)"),
    (_args("transpose", dims=[1]), r"\.dims must list 2 to 2 dimensions, got 1"),
    (_args("transpose", dims=[1, 2, 3]), r"\.dims has 3 items, more than the limit 2"),
    (_args("transpose", dims=[1, True]), r"\.dims\.1 must be an integer, got True"),
    (_op_args("transpose", "permute", {"dims": [2, 2]}), r"\(permute\)\.dims must be an "
                                                         r"ordering of the dimensions 1\.\.2"),
    (_op_args("transpose", "permute", {"dims": [1, 2, 3]}), r"dims=\[1, 2, 3\] orders 3 "
                                                            r"dimensions; the input of shape "
                                                            r"\(16, 4\) has 2"),
    (_op_args("transpose", "permute", {"dims": []}), r"must list 1 to 8 dimensions, got 0"),
    (_args("reshape", shape=[4, 2, 7]), r"\(reshape\): shape \(4, 2, 7\) holds 56 elements "
                                        r"per example, its input \(4, 16\) 64; a reshape "
                                        r"keeps the element count"),
    (_args("reshape", shape=[4, -1, 8]), r"\.shape\.1=-1 is out of range \[1, 2147483647\]"),
    (_args("reshape", shape=[]), r"\.shape must list 1\.\.8 sizes"),
    (_args("reshape", shape=[1] * 9), r"\.shape has 9 items, more than the limit 8"),
    (_args("reshape", shape="4,2,8"), r"\.shape must be a list"),
    (_args("reshape", size=[4, 2, 8]), r"\(reshape\) has unknown field\(s\) \['size'\]"),
    (_matmul_inner_mismatch, r"\(matmul\): inputs of shapes \(2, 4, 8\) and \(2, 4, 8\); "
                             r"matmul needs .*the first's last size equal to the second's "
                             r"next-to-last \(the inner size\)"),
    (_matmul_on_the_input, r"\(matmul\): inputs of shapes \(2, 4, 8\) and \(1, 8, 8\)"),
    (_matmul_one_input, r"\(matmul\) takes 2 input\(s\), got 1"),
    (_args("matmul", transpose=True), r"\(matmul\) has unknown field\(s\)"),
    (_args("mul_scalar", scalar=1e31), r"\(mul_scalar\)\.scalar=1e\+31 is out of range"),
    (_args("mul_scalar", scalar="0.5"), r"\.scalar must be a finite number, got '0.5'"),
    (_args("mul_scalar", scalar=None), r"\.scalar must be a finite number, got None"),
    (_args("mul_scalar", scalar=True), r"\.scalar must be a finite number, got True"),
    (_op_args("mul_scalar", "div_scalar", {"scalar": 0}), r"\(div_scalar\)\.scalar is 0; a "
                                                          r"division needs a non-zero number"),
    (_op_args("mul_scalar", "div_scalar", {}), r"lacks the field\(s\) \['scalar'\]"),
    (_args("flatten", start_dim=3, end_dim=2), r"end_dim=2 must be at least start_dim=3"),
    (_args("flatten", start_dim=2, end_dim=4), r"start_dim=2, end_dim=4 are out of range for "
                                               r"an input of shape \(16, 2, 2\)"),
    (_args("flatten", start_dim=0, end_dim=3), r"\.start_dim=0 is out of range \[1, 8\]"),
    (_args("LayerNorm", normalized_shape=[8]), r"\(LayerNorm\) normalizes over its last "
                                               r"dimensions of sizes \(8\), but its input has "
                                               r"shape \(4, 16\)"),
    (_args("LayerNorm", normalized_shape=[2, 4, 16]), r"sizes \(2, 4, 16\), but its input"),
    (_args("LayerNorm", normalized_shape=[]), r"\.normalized_shape must list 1\.\.8 sizes"),
    (_args("LayerNorm", eps=0), r"\(LayerNorm\)\.eps=0\.0 must be positive"),
    (_args("LayerNorm", eps=float("inf")), r"Infinity, which is not valid JSON"),
    (_args("LayerNorm", elementwise_affine=False), r"bias=true needs elementwise_affine=true"),
    (_args("PositionEmbedding", tokens=5), r"\(PositionEmbedding\) adds its table to inputs of "
                                           r"shape \(5, 16\), but its input has shape "
                                           r"\(4, 16\)"),
    (_args("PositionEmbedding", tokens=0), r"\.tokens=0 is out of range"),
    (_args("Softmax", dim=4), r"\(Softmax\): dim=4 is out of range for an input of rank 4"),
    (_args("GELU", approximate="fast"), r"approximate='fast' is not one of \['none', 'tanh'\]"),
])
def test_hostile_vit_headers_are_refused(vit_file, edit, match):
    header = copy.deepcopy(split_header(vit_file))
    edit(header)
    with pytest.raises(FormatError, match=match):
        codec.decode(reseal(vit_file, json.dumps(header).encode(), codec.GRAPH_VERSION))


@pytest.mark.parametrize("literal, match", [
    ("NaN", r"header JSON holds NaN, which is not valid JSON"),
    ("Infinity", r"holds Infinity"),
    ("-Infinity", r"holds -Infinity"),
    ("1e400", r"header JSON holds a non-finite number '1e400'"),
])
def test_a_non_finite_scalar_is_refused(vit_file, literal, match):
    header = copy.deepcopy(split_header(vit_file))
    _first(header, "mul_scalar")["args"]["scalar"] = "@SCALAR@"
    raw = json.dumps(header).replace('"@SCALAR@"', literal).encode()
    with pytest.raises(FormatError, match=match):
        codec.decode(reseal(vit_file, raw, codec.GRAPH_VERSION))


def test_the_resealed_vit_header_loads(vit_file):
    header = split_header(vit_file)
    model = codec.decode(reseal(vit_file, json.dumps(header).encode(), codec.GRAPH_VERSION))
    assert [s.op for s in model.steps] == [n["op"] for n in header["nodes"]]
    assert _index(header, "PositionEmbedding") == 3
