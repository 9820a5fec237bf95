"""kwh.runtime: sparse (CSR) layers equal the dense ones, prepare's per-layer choice, int8 in
PyTorch and onnxruntime against float32.

Oracles: the dense nn.Linear/nn.Conv2d on random inputs (to 1e-5) for the sparse forms; the
float32 model for int8, within a stated tolerance. Timings are injected, never asserted on.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from kwh.errors import ModelError
from kwh.modules import SelectInputs
from kwh.runtime import (OrtModule, SparseConv2d, SparseLinear, format_choices, int8_layers,
                         prepare, quantize_onnx, quantize_torch, quantized_engines, to_sparse,
                         weight_bytes)

TOL = 1e-5
# int8 against float32: 7- or 8-bit activations (steps of ~range/127) through three layers
INT8_TOL = 0.04  # max |int8 - float32| / max |float32| over the outputs (seen: ~0.017)
INT8_AGREE = 0.95  # fraction of examples whose argmax agrees (seen: >= 99%)


def _sparsify_(layer: nn.Module, keep: float, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.weight.mul_((torch.rand(layer.weight.shape, generator=g) < keep).float())
    return layer


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("keep", [0.02, 0.3, 1.0])
def test_sparse_linear_equals_dense(bias, keep):
    dense = _sparsify_(nn.Linear(50, 17, bias=bias), keep)
    sparse = SparseLinear(dense)
    for x in (torch.randn(9, 50), torch.randn(1, 50), torch.randn(3, 4, 50)):
        with torch.no_grad():
            torch.testing.assert_close(sparse(x), dense(x), atol=TOL, rtol=0)
    assert sparse.density == pytest.approx(float((dense.weight != 0).float().mean()))


@pytest.mark.parametrize("kw", [
    dict(kernel_size=3),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=(3, 5), stride=(2, 1), padding=(2, 0)),
    dict(kernel_size=3, padding=2, dilation=2, bias=False),
    dict(kernel_size=1, stride=3),
])
def test_sparse_conv2d_equals_dense(kw):
    dense = _sparsify_(nn.Conv2d(3, 6, **kw), 0.2)
    sparse = SparseConv2d(dense)
    for x in (torch.randn(4, 3, 11, 13), torch.randn(1, 3, 7, 7)):
        with torch.no_grad():
            torch.testing.assert_close(sparse(x), dense(x), atol=TOL, rtol=0)


def test_prepared_chain_with_select_inputs_equals_dense():
    keep = (torch.rand(3 * 8 * 8) < 0.5).float()
    mlp = nn.Sequential(nn.Flatten(), SelectInputs(keep), _sparsify_(nn.Linear(int(keep.sum()), 20),
                        0.1), nn.ReLU(), _sparsify_(nn.Linear(20, 5), 0.5))
    cnn = nn.Sequential(SelectInputs(torch.tensor([1.0, 0.0, 1.0])),
                        _sparsify_(nn.Conv2d(2, 4, 3, stride=2, padding=1), 0.3), nn.ReLU(),
                        nn.Flatten(), _sparsify_(nn.Linear(4 * 4 * 4, 5), 0.3))
    x = torch.randn(6, 3, 8, 8)
    for model in (mlp, cnn):
        fast = prepare(model, "always")
        assert all(c.chosen == "sparse" for c in fast.kwh_sparse_choices)
        assert any(isinstance(m, (SparseLinear, SparseConv2d)) for m in fast.modules())
        with torch.no_grad():
            torch.testing.assert_close(fast(x), model(x), atol=TOL, rtol=0)
        again = copy.deepcopy(fast)  # CSR tensors cannot be deep-copied; their buffers can
        with torch.no_grad():
            torch.testing.assert_close(again(x), model(x), atol=TOL, rtol=0)
        assert not any(isinstance(m, SparseLinear) for m in model.modules())  # a copy


def _chain() -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))


def test_auto_keeps_dense_where_sparse_is_slower():
    model = _chain()  # fully dense weights
    seen = []

    def timer(layer, x):
        seen.append((type(layer).__name__, tuple(x.shape)))
        return 1.0 if isinstance(layer, nn.Linear) else 3.0  # sparse slower

    out = prepare(model, "auto", example_inputs=torch.randn(7, 1, 8, 8), timer=timer)
    choices = out.kwh_sparse_choices
    assert [c.layer for c in choices] == ["1", "3"]
    assert all(c.chosen == "dense" and c.dense_ms == 1.0 and c.sparse_ms == 3.0 for c in choices)
    assert all(c.density == 1.0 and c.kind == "Linear" for c in choices)
    assert not any(isinstance(m, SparseLinear) for m in out.modules())
    # each layer was timed on the input it really gets at that batch size
    assert ("Linear", (7, 64)) in seen and ("SparseLinear", (7, 32)) in seen
    text = format_choices(choices)
    assert "dense ms" in text and len(text.splitlines()) == 3


def test_auto_takes_sparse_where_it_is_faster_by_the_margin():
    model = _chain()

    def timer(layer, x):  # layer 1: sparse 2x faster; layer 3: only 5% faster (< margin 1.1)
        if isinstance(layer, nn.Linear):
            return 1.0
        return 0.5 if layer.in_features == 64 else 0.95

    out = prepare(model, "auto", input_shape=(1, 8, 8), timer=timer)
    assert [c.chosen for c in out.kwh_sparse_choices] == ["sparse", "dense"]
    assert isinstance(out[1], SparseLinear) and isinstance(out[3], nn.Linear)


def test_never_and_unsupported_layers_stay_dense():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.Linear(4, 2))
    out = prepare(model, "always")
    assert [c.chosen for c in out.kwh_sparse_choices] == ["dense", "sparse"]
    assert "groups=2" in out.kwh_sparse_choices[0].reason
    never = prepare(model, "never")
    assert all(c.chosen == "dense" and c.dense_ms is None for c in never.kwh_sparse_choices)
    with pytest.raises(ValueError, match="Unknown sparse mode 'sometimes'; choose one of: auto"):
        prepare(model, "sometimes")
    with pytest.raises(ValueError, match="groups=2"):
        to_sparse(model[0])


# --- int8 ---------------------------------------------------------------------------------------

def _fixed_point_(layer: nn.Module, bits: int, frac_bits: int, seed: int) -> nn.Module:
    """Weights q * 2^-t with |q| < 2^(bits-1), as kwh.compress leaves them."""
    g = torch.Generator().manual_seed(seed)
    m = 2 ** (bits - 1) - 1
    with torch.no_grad():
        q = torch.randint(-m, m + 1, layer.weight.shape, generator=g).float()
        layer.weight.copy_(q * 2.0 ** -frac_bits)
        layer.bias.uniform_(-0.1, 0.1, generator=g)
    layer.kwh_bits, layer.kwh_frac_bits = bits, frac_bits
    return layer


def _small_kwh_model(last_bits: int = 8) -> nn.Sequential:
    """A LeNet-like chain on 8x8 inputs whose layers fit 8 bits (the last: last_bits)."""
    model = nn.Sequential(
        _fixed_point_(nn.Conv2d(1, 6, 3, padding=1), 8, 9, 1), nn.ReLU(), nn.MaxPool2d(2),
        _fixed_point_(nn.Conv2d(6, 8, 3, stride=2, padding=1), 7, 9, 2), nn.ReLU(),
        nn.Flatten(), _fixed_point_(nn.Linear(32, 24), 8, 9, 3), nn.ReLU(),
        _fixed_point_(nn.Linear(24, 5), last_bits, 9 + max(0, last_bits - 8), 4))
    model.kwh_input_shape = (1, 8, 8)
    return model.eval()


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))  # (N, 1, 8, 8)


def _close_enough(out: torch.Tensor, ref: torch.Tensor) -> None:
    rel = float((out - ref).abs().max() / ref.abs().max())
    agree = float((out.argmax(1) == ref.argmax(1)).float().mean())
    assert rel <= INT8_TOL, f"int8 differs from float32 by {rel:.3f} of the output range"
    assert agree >= INT8_AGREE, f"argmax agrees on only {agree:.2%} of the examples"


def test_int8_plan_takes_layers_that_fit_8_bits():
    plan = int8_layers(_small_kwh_model(last_bits=12))
    assert [p.int8 for p in plan] == [True, True, True, False]
    assert "12-bit weights do not fit int8" in plan[3].reason and plan[0].scale == 2.0 ** -9
    with pytest.raises(ModelError, match="max_bits=8"):
        quantize_torch(_chain(), _images(10, 0).flatten(1))


@pytest.mark.skipif(not quantized_engines(), reason="this torch has no quantized CPU engine")
@pytest.mark.parametrize("last_bits", [8, 12])
def test_torch_int8_agrees_with_float32(last_bits):
    model = _small_kwh_model(last_bits)
    q = quantize_torch(model, _images(300, 0))
    x = _images(500, 1)
    with torch.no_grad():
        _close_enough(q(x), model(x))
    # the int8 weights are the kwh integers themselves: no rounding of weights
    import torch.ao.nn.quantized as nnq
    packed = [m for m in q.modules() if isinstance(m, (nnq.Linear, nnq.Conv2d))]
    assert len(packed) == (4 if last_bits == 8 else 3)
    for m, src in zip(packed, [model[0], model[3], model[6], model[8]]):
        torch.testing.assert_close(m.weight().dequantize(), src.weight, atol=0, rtol=0)
    assert weight_bytes(q) < weight_bytes(model)
    with pytest.raises(ValueError, match="Unknown quantized engine 'abacus'"):
        quantize_torch(model, _images(10, 0), engine="abacus")


@pytest.mark.parametrize("last_bits", [8, 12])
def test_onnxruntime_int8_agrees_with_float32(tmp_path, last_bits):
    pytest.importorskip("onnxruntime")
    model = _small_kwh_model(last_bits)
    result = quantize_onnx(model, tmp_path / "int8.onnx", _images(300, 0))
    assert [p.int8 for p in result.layers] == [True, True, True, last_bits == 8]
    assert set(result.exact) == {p.name for p in result.layers if p.int8}
    assert all(result.exact.values()), result.exact  # weights exactly the kwh integers
    import onnx
    ops = {n.op_type for n in onnx.load(tmp_path / "int8.onnx").graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # onnxruntime fuses the QDQ pairs into integer kernels (what the speed comes from)
    import onnxruntime as ort
    from kwh.runtime import session_options
    so = session_options(1)
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(tmp_path / "fused.onnx")
    ort.InferenceSession(str(tmp_path / "int8.onnx"), so, providers=["CPUExecutionProvider"])
    fused = [n.op_type for n in onnx.load(tmp_path / "fused.onnx").graph.node]
    assert fused.count("QLinearConv") == 2 and fused.count("QGemm") == (2 if last_bits == 8 else 1)
    session = OrtModule(tmp_path / "int8.onnx")
    x = _images(500, 1)
    with torch.no_grad():
        _close_enough(session(x), model(x))
    assert result.calibration_examples == 300


def test_onnxruntime_float32_module_equals_torch(tmp_path):
    pytest.importorskip("onnxruntime")
    from kwh.format.onnx import export_onnx
    model = _small_kwh_model()
    session = OrtModule(export_onnx(model, tmp_path / "f.onnx"), threads=1)
    x = _images(20, 2)
    with torch.no_grad():
        torch.testing.assert_close(session(x), model(x), atol=TOL, rtol=0)
    assert session.weight_bytes() >= weight_bytes(model)  # + the Reshape's shape constant
    # the timers' native call: the same logits from session.run on the converted input
    native = session.call_for(x)()
    assert isinstance(native, list) and isinstance(native[0], np.ndarray)
    np.testing.assert_array_equal(native[0], session(x).numpy())
    calls = []
    session.call_for = lambda inp: (calls.append(inp.shape), lambda: None)[1]
    from kwh.runtime.bench import measure
    m = measure(session, x[:1], x, repeats=2, warmup=1)
    assert calls == [(1, *x.shape[1:]), tuple(x.shape)] and m.latency_ms >= 0


def test_runtime_imports_no_layer_above_it():
    """kwh.runtime is core level: never the CLI, the trainer or the data loaders."""
    import ast
    from pathlib import Path

    import kwh.runtime
    banned = ("kwh.cli", "kwh.train", "kwh.data", "kwh.report", "kwh.app")
    for path in Path(kwh.runtime.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not name.startswith(banned), f"{path.name} imports {name}"
