"""The graph layout of the .kwh file (version 3): a residual, branching CNN stored as allowed
layers and functions wired as a DAG, and rebuilt by kwh.load alone.

Oracles: the in-memory model (outputs equal exactly, tensors bit for bit), the wiring read off
the model's forward by hand, packed sizes computed from the bit widths, files written before
version 3 existed (bytes kept below), and the loader's messages for hand-broken headers.
"""

from __future__ import annotations

import copy
import json
import math
import resource
import struct
import time
import tracemalloc

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import kwh
from kwh.errors import FormatError, ModelError
from kwh.format import GraphNet, bitpack, codec
from kwh.format.graphnet import Step
from kwh.graph import calls
from kwh_files import reseal, split_header
from tests.any_models import around_fc

SHAPE = (3, 8, 8)


class SmallResNet(nn.Module):
    """A conv-BN-ReLU stem, a residual block (an addition), two branches joined by a
    concatenation, max pooling, global average pooling, flatten and a linear head."""

    def __init__(self, width: int = 8, classes: int = 5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        self.c1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.c2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.left = nn.Conv2d(width, width // 2, 1)
        self.right = nn.Sequential(nn.Conv2d(width, width // 2, 3, padding=1), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = self.stem(x)
        r = F.relu(self.bn1(self.c1(h)))
        h = F.relu(h + self.bn2(self.c2(r)))                 # the residual addition
        h = torch.cat([self.left(h), self.right(h)], dim=1)  # two branches joined
        return self.head(torch.flatten(self.gap(self.pool(h)), 1))


# (op, inputs) of every node, read off SmallResNet.forward by hand
WIRING = [("Conv2d", [-1]), ("BatchNorm2d", [0]), ("ReLU", [1]),             # 0-2 stem
          ("Conv2d", [2]), ("BatchNorm2d", [3]), ("ReLU", [4]),              # 3-5 c1, bn1, relu
          ("Conv2d", [5]), ("BatchNorm2d", [6]), ("add", [2, 7]), ("ReLU", [8]),  # 6-9
          ("Conv2d", [9]), ("Conv2d", [9]), ("ReLU", [11]), ("cat", [10, 12]),    # 10-13
          ("MaxPool2d", [13]), ("AdaptiveAvgPool2d", [14]), ("flatten", [15]),    # 14-16
          ("Linear", [16])]                                                       # 17
QUANT = {"stem.0": (8, 6), "c1": (4, 3), "c2": (4, 3), "left": (3, 2), "head": (6, 5),
         "right.0": (32, None)}  # (kwh_bits, kwh_frac_bits); (32, None): marked float32


def quantize_(layer: nn.Module, bits: int, frac_bits: int | None,
              sparsity: float = 0.0, seed: int = 0) -> None:
    """Round a layer's weights to bits-bit fixed point with frac_bits fraction bits, as
    kwh.compress leaves them, with a fraction ``sparsity`` set to zero."""
    layer.kwh_bits, layer.kwh_frac_bits = bits, frac_bits
    if frac_bits is None:
        return
    lo, hi = bitpack.int_range(bits)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        q = torch.round(layer.weight * 2.0**frac_bits).clamp(lo, hi)
        q[torch.rand(q.shape, generator=gen) < sparsity] = 0
        layer.weight.copy_(q * 2.0**-frac_bits)


def small_resnet(seed: int = 0) -> SmallResNet:
    """SmallResNet with some layers quantized and BatchNorm statistics of its own, in eval."""
    torch.manual_seed(seed)
    model = SmallResNet()
    modules = dict(model.named_modules())
    for k, (name, (bits, frac)) in enumerate(QUANT.items()):
        quantize_(modules[name], bits, frac, sparsity=0.5 if name == "left" else 0.0, seed=k)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.num_batches_tracked.fill_(11)
    return model.eval()


def traced(seed: int = 0) -> fx.GraphModule:
    """SmallResNet as the torch.fx.GraphModule a structured compressor hands to kwh.save."""
    gm = fx.symbolic_trace(small_resnet(seed))
    gm.kwh_summary = {"arch": "small-resnet", "input_shape": list(SHAPE)}
    return gm.eval()


def batch(n: int = 4, shape: tuple[int, ...] = SHAPE) -> torch.Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(1))


def weight_layers(model: nn.Module) -> list[nn.Module]:
    """Conv2d, BatchNorm2d and Linear layers in the order the model calls them."""
    out = []
    hooks = [m.register_forward_hook(lambda m, i, o: out.append(m)) for m in model.modules()
             if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(batch(1))
    for h in hooks:
        h.remove()
    return out




@pytest.fixture(scope="module")
def graph_file() -> bytes:
    return codec.encode(traced(), input_shape=SHAPE)


# ------------------------------------------------------------------ round trips

def test_a_residual_cnn_round_trips_exactly(tmp_path):
    gm = traced()
    path = tmp_path / "resnet.kwh"
    size = kwh.save(gm, path, input_shape=SHAPE)
    data = path.read_bytes()
    assert size == len(data) and struct.unpack_from("<H", data, 8)[0] == codec.GRAPH_VERSION == 3
    loaded = kwh.load(path)
    assert type(loaded) is GraphNet and not loaded.training
    assert loaded.kwh_input_shape == SHAPE and loaded.kwh_summary == gm.kwh_summary
    assert not hasattr(loaded, "kwh_input_normalization")
    x = batch()
    with torch.no_grad():
        assert torch.equal(loaded(x), gm(x))
    # every weight layer: same tensors bit for bit, same fixed point, in the same order
    want, got = weight_layers(gm), weight_layers(loaded)
    assert [type(m) for m in want] == [type(m) for m in got]
    for a, b in zip(want, got):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        assert all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)
        for attr in ("kwh_bits", "kwh_frac_bits"):
            assert getattr(a, attr, "absent") == getattr(b, attr, "absent")
    assert got[0].kwh_bits == 8 and got[-1].kwh_frac_bits == 5
    assert codec.encode(loaded) == data  # the loaded model writes the very same file


def test_the_header_holds_the_wiring(graph_file):
    header = split_header(graph_file)
    assert sorted(header) == ["input_normalization", "input_shape", "layout", "nodes",
                              "output", "producer", "summary"]
    assert header["layout"] == "graph" and header["input_shape"] == list(SHAPE)
    assert header["input_normalization"] is None
    assert header["summary"] == {"arch": "small-resnet", "input_shape": list(SHAPE)}
    # a node without "inputs" reads the node before it
    assert [(n["op"], n.get("inputs", [i - 1])) for i, n in enumerate(header["nodes"])] == WIRING
    assert all(n["inputs"] != [i - 1] for i, n in enumerate(header["nodes"]) if "inputs" in n)
    assert any("inputs" in n for n in header["nodes"]) and "inputs" not in header["nodes"][0]
    assert header["output"] == len(WIRING) - 1
    nodes = header["nodes"]
    assert nodes[13]["args"] == {"dim": 1} and nodes[8]["args"] == nodes[16]["args"] == {}
    assert all(n["quant"] is None and n["section"] is None for n in nodes
               if n["op"] in ("add", "cat", "flatten", "ReLU", "MaxPool2d"))
    quants = [n["quant"] and (n["quant"]["bits"], n["quant"]["frac_bits"]) for n in nodes
              if n["op"] in ("Conv2d", "Linear")]
    assert quants == [(8, 6), (4, 3), (4, 3), (3, 2), (32, None), (6, 5)]


def test_quantized_weights_are_packed_at_their_bits(tmp_path):
    gm = traced()
    path = tmp_path / "m.kwh"
    size = kwh.save(gm, path, input_shape=SHAPE)
    rep = codec.file_report(path)
    assert rep["layout"] == "graph" and rep["nodes"] == len(WIRING) and rep["output"] == 17
    assert rep["ops"] == {"AdaptiveAvgPool2d": 1, "BatchNorm2d": 3, "Conv2d": 5, "Linear": 1,
                          "MaxPool2d": 1, "ReLU": 4, "add": 1, "cat": 1, "flatten": 1}
    assert rep["file_bytes"] == size == (rep["preamble_bytes"] + rep["header_bytes"]
                                         + rep["payload_bytes"] + rep["trailer_bytes"])
    assert rep["payload_bytes"] == codec.payload_bytes(gm, input_shape=SHAPE)
    assert [s["module"] for s in rep["sections"]] == [0, 1, 3, 4, 6, 7, 10, 11, 17]
    # the bound: each fixed-point weight in n * bits bits, everything else 4 bytes a value
    bound = 0
    for sec in rep["sections"]:
        for t in sec["tensors"]:
            fixed = t["name"] == "weight" and sec["frac_bits"] is not None
            bound += math.ceil(t["elements"] * sec["bits"] / 8) if fixed else 4 * t["elements"]
            if fixed:
                assert t["raw_bytes"] <= math.ceil(t["elements"] * sec["bits"] / 8)
    assert rep["payload_bytes"] <= bound < 0.4 * rep["dense_fp32_bytes"]
    params = sum(4 * t.numel() for t in gm.state_dict().values() if t.is_floating_point())
    assert rep["dense_fp32_bytes"] == params
    assert size < 0.55 * params  # header and all: well below the float32 tensors alone


class Functional(nn.Module):
    """The functional spellings a forward uses: F.relu, torch.add, F.max_pool2d, x.mean with
    and without keepdim and negative dims, F.adaptive_avg_pool2d, x.view(B, -1), .flatten(1),
    torch.cat along dim -1."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.head = nn.Linear(12, 3)

    def forward(self, x):
        h = F.relu(self.conv(x))
        s = F.max_pool2d(torch.add(h, self.conv2(h)), 2)
        a = s.mean((2, 3))
        b = F.adaptive_avg_pool2d(s, 1).view(s.size(0), -1)
        m = s.mean(dim=[-1, -2], keepdim=True).flatten(1)
        return self.head(torch.cat([a, b, m], -1))


def test_functional_forms_are_read_into_allowed_operations():
    torch.manual_seed(2)
    model = Functional().eval()
    quantize_(model.conv, 6, 4)
    x = batch(3, (2, 6, 6))
    for source in (model, fx.symbolic_trace(model)):  # a plain module, traced by kwh itself
        data = codec.encode(source, input_shape=(2, 6, 6))
        assert data[8] == codec.GRAPH_VERSION
        loaded = codec.decode(data)
        with torch.no_grad():
            assert torch.equal(loaded(x), model(x))
        nodes = split_header(data)["nodes"]
        assert [n["op"] for n in nodes] == [
            "Conv2d", "ReLU", "Conv2d", "add", "MaxPool2d", "mean", "AdaptiveAvgPool2d",
            "flatten", "mean", "flatten", "cat", "Linear"]
        assert nodes[5]["args"] == {"dims": [2, 3], "keepdim": False}
        assert nodes[8]["args"] == {"dims": [2, 3], "keepdim": True}
        assert nodes[10] == {"op": "cat", "args": {"dim": 1}, "inputs": [5, 7, 9],
                             "quant": None, "section": None}


class Basic(nn.Module):
    """torchvision's BasicBlock idioms: one in-place ReLU module called twice, out += identity."""

    def __init__(self, c: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


def test_torchvision_style_blocks_are_read():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), Basic(), Basic(),
                          nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(4, 3)).eval()
    data = codec.encode(model, input_shape=SHAPE)  # not a chain (Basic): a graph
    assert data[8] == codec.GRAPH_VERSION
    ops = [(n["op"], n.get("inputs", [i - 1])) for i, n in enumerate(split_header(data)["nodes"])]
    assert ops[2:9] == [("Conv2d", [1]), ("BatchNorm2d", [2]), ("ReLU", [3]), ("Conv2d", [4]),
                        ("BatchNorm2d", [5]), ("add", [6, 1]), ("ReLU", [7])]
    with torch.no_grad():
        assert torch.equal(codec.decode(data)(batch()), model(batch()))


# ------------------------------------------------------------------ loaded files, read by kwh

def test_kwh_graph_and_energy_read_a_loaded_graph(graph_file):
    loaded = codec.decode(graph_file)
    ops = calls(loaded, batch(2))
    names = [c.function or type(c.module).__name__ for c in ops]
    assert names == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "ReLU", "Conv2d",
                     "BatchNorm2d", "add", "ReLU", "Conv2d", "Conv2d", "ReLU", "cat",
                     "MaxPool2d", "AdaptiveAvgPool2d", "Flatten", "Linear"]
    add, cat = ops[8], ops[13]
    assert add.in_shapes == [(8, 8, 8), (8, 8, 8)] and add.out_shape == (8, 8, 8)
    assert cat.in_shapes == [(4, 8, 8), (4, 8, 8)] and cat.out_shape == (8, 8, 8)
    assert ops[-1].out_shape == (5,)
    from kwh.energy import count_model
    mine, original = count_model(loaded, SHAPE), count_model(traced(), SHAPE)
    assert [(c.macs, c.macs_nonzero, c.elementwise_adds, c.weight_bits) for c in mine] == \
        [(c.macs, c.macs_nonzero, c.elementwise_adds, c.weight_bits) for c in original]
    assert sum(c.elementwise_adds for c in mine) == 8 * 8 * 8  # the one residual addition


def test_kwh_inspect_shows_a_graph_file(tmp_path, capsys):
    from cli_run import run_main
    path = tmp_path / "g.kwh"
    gm = traced()
    del gm.kwh_summary
    kwh.save(gm, path, input_shape=SHAPE)
    code, out, err = run_main(["inspect", str(path)], capsys)
    assert code == 0, err
    assert "graph         18 operations: 5 Conv2d, 4 ReLU, 3 BatchNorm2d, 1 AdaptiveAvgPool2d, " \
           "1 Linear, 1 MaxPool2d, 1 add, 1 cat, 1 flatten; output node 17" in out
    code, out, err = run_main(["inspect", str(path), "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["file"]["layout"] == "graph"


def test_a_graph_file_exports_to_onnx(tmp_path, graph_file):
    import numpy as np
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "g.kwh"
    path.write_bytes(graph_file)
    kwh.export_onnx(path, tmp_path / "g.onnx")  # the input shape comes from the file
    session = ort.InferenceSession(str(tmp_path / "g.onnx"), providers=["CPUExecutionProvider"])
    x = batch(3)
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = traced()(x).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)  # two runtimes' float32 kernels
    assert np.abs(want).max() > 1e-2


def test_a_graph_file_takes_no_model(graph_file):
    with pytest.raises(ModelError, match="whole graph of layers.*without model="):
        codec.decode(graph_file, model=SmallResNet())


def test_graphnet_checks_its_steps():
    relu = nn.ReLU()
    assert torch.equal(GraphNet([Step("ReLU", (-1,)), Step("add", (0, -1))], {0: relu}, 1)(
        torch.tensor([[-1.0, 2.0]])), torch.tensor([[-1.0, 4.0]]))
    with pytest.raises(ValueError, match="step 0 \\(ReLU\\) reads \\[0\\]"):
        GraphNet([Step("ReLU", (0,))], {0: relu}, 0)
    with pytest.raises(ValueError, match="a function step has no module"):
        GraphNet([Step("add", (-1, -1))], {0: relu}, 0)
    with pytest.raises(ValueError, match="output=1"):
        GraphNet([Step("ReLU", (-1,))], {0: relu}, 1)


# ------------------------------------------------------------------ choosing the layout

class Squarer(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x) ** 2


def test_the_layout_is_chosen_from_the_model():
    chain = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
    assert codec.encode(chain, input_shape=(4,))[8] == codec.CHAIN_VERSION  # chains stay chains
    as_graph = codec.encode(chain, input_shape=(4,), layout="graph")
    assert as_graph[8] == codec.GRAPH_VERSION
    with torch.no_grad():
        x = torch.randn(3, 4)
        assert torch.equal(codec.decode(as_graph)(x), chain(x))
    model = small_resnet()  # not a GraphModule: kwh traces it
    model.kwh_input_shape = SHAPE
    assert codec.encode(model)[8] == codec.GRAPH_VERSION
    assert codec.encode(model) == codec.encode(fx.symbolic_trace(model), input_shape=SHAPE)
    with pytest.raises(ModelError, match="plain nn.Sequential.*layout='state'.*graph layout "
                                         "needs one example's shape"):
        codec.encode(SmallResNet())  # no input shape: no graph (nor kwh-quantized layers)
    assert codec.encode(small_resnet())[8] == codec.STATE_VERSION  # kwh-quantized layers
    weights = small_resnet()
    weights.kwh_summary = {"mode": "weights"}  # kwh.compress(..., mode="weights")
    assert codec.encode(weights, input_shape=SHAPE)[8] == codec.STATE_VERSION
    marked = Squarer()
    marked.fc.kwh_bits, marked.fc.kwh_frac_bits = 32, None
    assert codec.encode(marked, input_shape=(4,))[8] == codec.STATE_VERSION  # not a graph
    with pytest.raises(ModelError, match=r"nor can it be stored as a graph.*traced node 'pow\w*' "
                                         r"\(the call pow\(\)\): pow is not allowed"):
        codec.encode(Squarer(), input_shape=(4,))  # not kwh-quantized: no reason for state


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(F.relu(self.fc(x)))


class InPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        h = self.fc(x)
        return F.relu(h, inplace=True) + h



@pytest.mark.parametrize("model, match", [
    (around_fc(lambda s, x: torch.sigmoid(s.fc(x)) * x),
     r"traced node 'mul' \(the call mul\(\)\): mul is not allowed in a graph file on 2 "
     r"activations; allowed: the layers Linear, Conv2d, .*the functions add .* cat .* flatten "
     r".* mean .* matmul .* an activation and a number"),
    (around_fc(lambda s, x: torch.exp(s.fc(x))), "exp is not allowed in a graph file"),
    (nn.Sequential(nn.Linear(4, 4), nn.PReLU()),
     r"\(module '1'\): PReLU cannot be stored in a .kwh file; a graph file holds only "
     r"allowed operations \(allowed: the layers Linear"),
    (around_fc(lambda s, x: torch.add(s.fc(x), x, alpha=2)), "no constants, no alpha"),
    (around_fc(lambda s, x: s.fc(x) + 1), "adds 1 activations"),
    (around_fc(lambda s, x: torch.cat([s.fc(x), x], 0)), "along the batch dimension"),
    (around_fc(lambda s, x: s.fc(x).mean()), "takes the mean with"),
    (around_fc(lambda s, x: x), "applies no operation to its input"),
    (around_fc(lambda s, x: (s.fc(x), x)), "returns a tuple of 2"),
    (Shared(), r"module 'fc' is called more than once.*layout='state'"),
    (InPlace(), r"overwrites 'fc' in place, which add also read"),
])
def test_operations_outside_the_allow_list_are_refused(model, match):
    with pytest.raises(ModelError, match=match):
        codec.encode(model, input_shape=(4,), layout="graph")


def test_the_graph_layout_needs_an_input_shape():
    gm = traced()
    assert codec.encode(gm, layout="graph")[8] == codec.GRAPH_VERSION  # the summary's shape
    del gm.kwh_summary
    with pytest.raises(ModelError, match="graph layout needs one example's shape"):
        codec.encode(gm, layout="graph")
    with pytest.raises(ModelError, match=r"fails on an example of shape \(4, 8, 8\)"):
        codec.encode(gm, input_shape=(4, 8, 8), layout="graph")  # a shape it cannot run


# ------------------------------------------------------------------ hostile headers

def _node(i: int, **fields):
    def edit(h):
        h["nodes"][i].update(fields)
    return edit


def _set(**fields):
    def edit(h):
        h.update(fields)
    return edit


def _cat_along_height(h):
    h["nodes"][13].update(inputs=[10, -1], args={"dim": 2})


def _drop(key):
    def edit(h):
        del h[key]
    return edit


def _relu_with_a_section(h):
    h["nodes"][2]["section"] = copy.deepcopy(h["nodes"][0]["section"])


def _head_in(h):
    h["nodes"][17]["args"]["in_features"] = 9


ALLOWED = (r"allowed: the layers Linear, Conv2d, .*SelectInputs and the functions add, cat, "
           r"flatten, mean")


@pytest.mark.parametrize("edit, match", [
    (_node(3, inputs=[99]), r"node 3 \(Conv2d\)\.inputs\[0\]=99 is out of range: the graph has "
                            r"18 nodes; a node reads earlier nodes \(0\.\.2\) or the model's "
                            r"input \(-1\)"),
    (_node(3, inputs=[-2]), r"node 3 \(Conv2d\)\.inputs\[0\]=-2 is out of range"),
    (_node(3, inputs=[5]), r"node 3 \(Conv2d\)\.inputs\[0\]=5 is not an earlier node \(a "
                           r"forward reference or a cycle\)"),
    (_node(3, inputs=[3]), r"inputs\[0\]=3 is not an earlier node \(a forward reference or a "
                           r"cycle\)"),
    (_node(3, inputs=["2"]), r"inputs\[0\] must be an integer, got '2'"),
    (_node(3, inputs=True), r"node 3 \(Conv2d\)\.inputs must be a list"),
    (_node(8, inputs=[2]), r"node 8 \(add\) takes 2 to 256 input\(s\), got 1"),
    (_node(3, inputs=[2, 2]), r"node 3 \(Conv2d\) takes 1 input\(s\), got 2"),
    (_node(8, inputs=[2, -1]), r"node 8 \(add\): input 1 has shape \(3, 8, 8\), input 0 "
                               r"\(8, 8, 8\); add needs inputs of equal shapes"),
    (_cat_along_height, r"node 13 \(cat\): input 1 has shape \(3, 8, 8\), input 0 \(4, 8, 8\); "
                        r"cat along dim 2 needs every other size equal"),
    (_node(13, args={"dim": 0}), r"node 13 \(cat\)\.dim=0 is out of range \[1, 8\]"),
    (_node(13, args={"dim": 4}), r"dim=4 is out of range for inputs of shape \(4, 8, 8\)"),
    (_node(16, args={"start": 2}), r"node 16 \(flatten\) has unknown field\(s\)"),
    (_node(16, args={"start_dim": 2}), r"node 16 \(flatten\).args gives start_dim and end_dim "
                                       "together, or neither"),
    (_node(2, op="Eval"), r"node 2: op 'Eval' is not allowed; " + ALLOWED),
    (_node(2, op="__import__"), r"op '__import__' is not allowed"),
    (_node(2, op=7), r"node 2: op 7 is not allowed"),
    (_node(2, name="relu"), r"node 2 has unknown field\(s\) \['name'\]"),
    (_node(8, quant={"bits": 4, "frac_bits": 0}), r"node 8 \(add\)\.quant must be null: a "
                                                  r"function has no tensors"),
    (_relu_with_a_section, r"node 2 \(ReLU\)\.section must be null: ReLU has no tensors"),
    (_head_in, r"node 17 \(Linear\) expects 9 input features but the previous layer gives 8"),
    (_set(output=18), r"header\.output=18 is out of range \[0, 17\]"),
    (_set(output=-1), r"header\.output=-1 is out of range"),
    (_set(output="17"), r"header\.output must be an integer"),
    (_set(output=16), r"node 17 \(Linear\) is neither read by a later node nor the output "
                      r"\(node 16\)"),
    (_node(8, inputs=[2, 2]), r"node 7 \(BatchNorm2d\) is neither read by a later node nor the "
                              r"output"),
    (_set(nodes=[]), r"header\.nodes is empty"),
    (_set(input_shape=None), r"header\.input_shape is null; a graph file gives one example's "
                             r"shape"),
    (_set(input_shape=[4, 8, 8]), r"node 0 \(Conv2d\) expects 3 input channels but the "
                                  r"previous layer gives 4"),
    (_set(input_normalization={"mean": [0.5, 0.5], "std": [0.2, 0.2]}),
     r"input_normalization holds 2 values; the input has 3 channels"),
    (_set(input_normalization={"mean": [0.5], "std": [0.0]}), r"std must be positive"),
    (_set(input_normalization={"mean": [0.5], "std": [0.2, 0.2, 0.2]}),
     r"mean and std must hold as many values"),
    (_set(layout="chain"), r"layout='chain' is not one of \['graph'\]"),
    (_drop("output"), r"header lacks the field\(s\) \['output'\]"),
    (_drop("input_normalization"), r"lacks the field\(s\) \['input_normalization'\]"),
])
def test_hostile_graph_headers_are_refused(graph_file, edit, match):
    header = copy.deepcopy(split_header(graph_file))
    edit(header)
    with pytest.raises(FormatError, match=match):
        codec.decode(reseal(graph_file, header, codec.GRAPH_VERSION))


def test_a_graph_header_is_read_by_its_version(graph_file):
    header = split_header(graph_file)
    # the resealer is faithful
    assert codec.decode(reseal(graph_file, header, codec.GRAPH_VERSION)) is not None
    with pytest.raises(FormatError, match=r"lacks the field\(s\) \['modules'\]"):
        codec.decode(reseal(graph_file, header, codec.CHAIN_VERSION))
    with pytest.raises(FormatError, match=r"lacks the field\(s\) \['model_class', 'sections'\]"):
        codec.decode(reseal(graph_file, header, codec.STATE_VERSION), model=SmallResNet())
    newer = graph_file[:8] + struct.pack("<H", 4) + graph_file[10:]
    with pytest.raises(FormatError, match="version 4; this kwh reads versions 1, 2 and 3 "
                                          r"\(upgrade kwh\)"):
        codec.decode(newer)


def test_a_huge_graph_claim_is_refused_before_allocation(graph_file):
    header = copy.deepcopy(split_header(graph_file))
    header["nodes"][17]["args"]["out_features"] = 2**31 - 1  # an 8 x (2^31 - 1) head
    data = reseal(graph_file, header, codec.GRAPH_VERSION)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(FormatError, match=r"node 17 \(Linear\)\.section: the file claims at "
                                          r"least 17179\d+ tensor elements, more than the "
                                          r"limit of 268435456"):
        codec.decode(data)
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed < 1.0 and peak < 2**20  # refused from the header alone
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 64 * 1024
    elements = sum(t.numel() for t in traced().state_dict().values()
                   if t.is_floating_point())
    codec.decode(graph_file, max_elements=elements)  # exactly enough
    with pytest.raises(FormatError, match=f"limit of {elements - 1}"):
        codec.decode(graph_file, max_elements=elements - 1)


def test_every_truncation_and_flipped_header_byte_is_refused(graph_file):
    data = graph_file
    for n in range(0, len(data), 7):
        with pytest.raises(FormatError, match="truncated|magic|header"):
            codec.decode(data[:n])
    for pos in range(0, len(data), 5):
        bad = bytearray(data)
        bad[pos] ^= 1 << (pos % 8)
        with pytest.raises(FormatError):
            codec.decode(bytes(bad))


# ------------------------------------------------------------------ files of versions 1 and 2

# Written by kwh before version 3 existed: nn.Sequential(Linear(3, 2), ReLU()) with 5-bit
# weights [[1, -2, 3], [0, 4, -8]] / 4, bias [0.5, -0.25], input_shape (3,) (version 1), and
# the weights of Tiny below, fc 3-bit [[1, 0, -1], [2, 1, 0]] / 2, bias [1, 2] (version 2).
V1 = bytes.fromhex(
    "894b57480d0a1a0a010001000a010000a20100000994a0f528b52ffd60a20005080016d0301960770e237077"
    "9b81da19897647f0860cb8fef3c7802208424b29002a002800f35cd06b61478ea4ce7da97daf907acebd5789"
    "c273cc7b6deb42f33a3705f3de189caa632f26a97301c460b7c76103318e0311868378278a48e3f91aa47f8f"
    "0dcd282765635727421a9d0d6b25bcd9b923ec0def1aa2b0705a11774dc1c4f97692a8d6fede1794e777950d"
    "fd5d921434a36c3aab6c0b359db69e039d655df9be51785db79e2f044320009356fd9d76bcd0a4d8b9e9be24"
    "ad58d695dc9dc29654f2cd061720404694727adb0229003586fcb1818a85628201008a439f0598cd584e995b"
    "f2660fa59ad1a71130f64cd6480302030630ed9094c13e81d803c10f40300000003f000080bee8b4de2e49ac"
    "358b61bdcada8eafc9ebbbeee2378a468c13809cfcfa2adecca0"
)
V2 = bytes.fromhex(
    "894b57480d0a1a0a02000100e200000055010000e6e71f0328b52ffd605500c50600c28f2d1950b50e43846d"
    "364a1bf99dd2c9545528835632c0336766c698db9c99ba67f65555beefadb94f3e44815f9d516f4dd104f3de"
    "06073e1bbd0bf78be573cd1dd397aff7f124c9880530ba7bac1e7d3f5e1aa1bb4b544215d268eba51143d156"
    "7cdfc3e07e23ce1ea70da41814213906c29d28a085ef63cfde1d46a8c26b8cfba5556218effb423004023061"
    "d4dd6d8419aad67a3fa372b9fbbd6f426746a856ef47fcf0bd3bce357bf33d67a6eed17ad37570b6a8bc160b"
    "003940234c94ac011c41383c8c86c7bc5f261d33608487a226879fad1905c115000000803f00000040663a2b"
    "faaeb6019295e90b1901e6b7e7c2a89835f5d379c9f99a1d16a3821d44"
)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(x) + x[:, :2]


def test_files_of_versions_1_and_2_still_load():
    chain = codec.decode(V1)
    assert type(chain) is nn.Sequential and [type(m) for m in chain] == [nn.Linear, nn.ReLU]
    assert torch.equal(chain[0].weight, torch.tensor([[1.0, -2, 3], [0, 4, -8]]) / 4)
    assert torch.equal(chain[0].bias, torch.tensor([0.5, -0.25]))
    assert (chain[0].kwh_bits, chain[0].kwh_frac_bits) == (5, 2)
    assert chain.kwh_input_shape == (3,) and not hasattr(chain, "kwh_input_normalization")
    again = codec.decode(codec.encode(chain))  # written again: its biases now as fixed-point
    assert len(codec.encode(chain)) <= len(V1) and torch.equal(again[0].bias, chain[0].bias)
    state = codec.decode(V2, model=Tiny())
    assert torch.equal(state.fc.weight, torch.tensor([[1.0, 0, -1], [2, 1, 0]]) / 2)
    assert torch.equal(state.fc.bias, torch.tensor([1.0, 2.0]))
    assert (state.fc.kwh_bits, state.fc.kwh_frac_bits) == (3, 1)
    again = codec.decode(codec.encode(state), model=Tiny())
    assert len(codec.encode(state)) <= len(V2) and torch.equal(again.fc.bias, state.fc.bias)


# ------------------------------------------------------------------ input normalization

def test_input_normalization_round_trips_in_the_graph_and_chain_layouts():
    gm = traced()
    norm = {"mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26]}
    loaded = codec.decode(codec.encode(gm, input_shape=SHAPE, input_normalization=norm))
    assert loaded.kwh_input_normalization == norm
    gm.kwh_input_normalization = {"mean": torch.tensor([0.5]), "std": (0.25,)}  # one for all
    data = codec.encode(gm, input_shape=SHAPE)
    assert split_header(data)["input_normalization"] == {"mean": [0.5], "std": [0.25]}
    assert codec.decode(data).kwh_input_normalization == {"mean": [0.5], "std": [0.25]}
    chain = codec.decode(V1)
    chain.kwh_input_normalization = {"mean": 0.1307, "std": 0.3081}  # MNIST's, as scalars
    data = codec.encode(chain)
    assert split_header(data)["input_normalization"] == {"mean": [0.1307], "std": [0.3081]}
    assert codec.decode(data).kwh_input_normalization == {"mean": [0.1307], "std": [0.3081]}
    assert "input_normalization" not in split_header(V1)  # absent unless given: v1 as before
    for bad, match in [({"mean": [0.5, 0.5], "std": [0.2, 0.2]}, "holds 2 values; the input "
                                                                  "has 3 channels"),
                       ({"mean": [0.5], "std": [-1.0]}, "std must be positive"),
                       ({"mean": [0.5]}, "input_normalization=.* is invalid"),
                       ((0.5, 0.2), "input_normalization=.* is invalid"),
                       ({"mean": ["a"], "std": [1.0]}, "input_normalization=.* is invalid")]:
        with pytest.raises(ModelError, match=match):
            codec.encode(gm, input_shape=SHAPE, input_normalization=bad)
    with pytest.raises(ModelError, match="state layout does not store input_normalization"):
        codec.encode(gm, input_shape=SHAPE, layout="state", input_normalization=norm)
