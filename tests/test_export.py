"""ONNX export: onnxruntime matches the PyTorch model within 1e-5; the ``kwh export`` command."""

from __future__ import annotations

import argparse

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

import kwh
from kwh.cli import export as export_cli
from kwh.errors import ModelError
from kwh.format import bitpack
from kwh.models import lenet5, lenet300

TOL = 1e-5  # float32 kernels of two runtimes; outputs are O(1)


def _quantize_(model: nn.Sequential, bits: int, frac_bits: int, sparsity: float) -> None:
    gen = torch.Generator().manual_seed(0)
    lo, hi = bitpack.int_range(bits)
    for layer in model:
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            q = torch.randint(lo, hi + 1, layer.weight.shape, generator=gen)
            q[torch.rand(layer.weight.shape[0], generator=gen) < sparsity] = 0  # whole units
            with torch.no_grad():
                layer.weight.copy_(q * 2.0**-frac_bits)
            layer.kwh_bits, layer.kwh_frac_bits = bits, frac_bits


def _onnx_outputs(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def _run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="kwh")
    export_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_mlp_onnx_matches_pytorch(tmp_path):
    model = lenet300().eval()
    _quantize_(model, 6, 8, 0.5)
    model.kwh_summary = {"input_shape": [1, 28, 28]}
    out = kwh.export_onnx(model, tmp_path / "mlp.onnx")
    for batch in (1, 5):  # the batch dimension is dynamic
        x = torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = model(x).numpy()
        np.testing.assert_allclose(_onnx_outputs(out, x), expected, atol=TOL, rtol=0)


def test_lenet5_file_exports_with_the_cli(tmp_path, capsys):
    model = lenet5().eval()
    _quantize_(model, 8, 7, 0.9)
    model.kwh_summary = {"input_shape": [1, 28, 28]}
    kwh.save(model, tmp_path / "lenet5.kwh")
    assert _run_cli(["export", str(tmp_path / "lenet5.kwh"), "--onnx",
                     str(tmp_path / "lenet5.onnx")]) == 0
    assert "wrote" in capsys.readouterr().out
    loaded = kwh.load(tmp_path / "lenet5.kwh")
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = loaded(x).numpy()
    np.testing.assert_allclose(_onnx_outputs(tmp_path / "lenet5.onnx", x), expected,
                               atol=TOL, rtol=0)
    assert np.abs(expected).max() > 1e-3  # a meaningful comparison, not all zeros


def test_input_shape_is_required_when_the_file_lacks_it(tmp_path):
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh()).eval()
    kwh.save(model, tmp_path / "m.kwh")
    with pytest.raises(ModelError, match="--input-shape"):
        _run_cli(["export", str(tmp_path / "m.kwh"), "--onnx", str(tmp_path / "m.onnx")])
    (tmp_path / "m.onnx").write_bytes(b"old")
    with pytest.raises(ModelError, match="ONNX export failed"):  # 5 features into Linear(4, 3)
        kwh.export_onnx(tmp_path / "m.kwh", tmp_path / "m.onnx", input_shape=(5,))
    assert (tmp_path / "m.onnx").read_bytes() == b"old"  # a failed export changes nothing
    assert _run_cli(["export", str(tmp_path / "m.kwh"), "--onnx", str(tmp_path / "m.onnx"),
                     "--input-shape", "4"]) == 0
    x = torch.rand(2, 4)
    with torch.no_grad():
        np.testing.assert_allclose(_onnx_outputs(tmp_path / "m.onnx", x), model(x).numpy(),
                                   atol=TOL, rtol=0)


@pytest.mark.parametrize("text, shape", [("1,28,28", (1, 28, 28)), ("3x32x32", (3, 32, 32)),
                                         (" 784 ", (784,))])
def test_parse_shape(text, shape):
    assert export_cli.parse_shape(text) == shape


@pytest.mark.parametrize("text", ["", "0,2", "a,b", "-1"])
def test_parse_shape_refuses_bad_shapes(text):
    with pytest.raises(argparse.ArgumentTypeError, match="e.g. 1,28,28"):
        export_cli.parse_shape(text)
