"""int8 in onnxruntime: onnxruntime.quantization.quantize_static over kwh's float ONNX export.

The QDQ graph (QuantizeLinear/DequantizeLinear pairs) is fused by onnxruntime's graph
optimizer into integer kernels (QLinearConv, QGemm, QLinearMatMul). Weights are per tensor,
int8, with scale 2^-t and zero point 0 forced through TensorQuantOverrides, so they are the kwh
integers exactly; activations are calibrated (min/max by default) on a few hundred inputs.
Layers wider than 8 bits are excluded and stay float32.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
from torch import Tensor, nn

from kwh.errors import ModelError

from .int8 import Int8Layer, require_int8_layers
from .int8_torch import calibration_batches
from .ort import onnxruntime

__all__ = ["Int8Onnx", "quantize_onnx", "ACTIVATION_TYPES", "CALIBRATE_METHODS"]

ACTIVATION_TYPES = ("uint8", "int8")
CALIBRATE_METHODS = ("minmax", "entropy", "percentile")
_MATMUL_OPS = ("Conv", "Gemm", "MatMul")


@dataclass
class Int8Onnx:
    """The written QDQ model and what was quantized: per layer, int8 or not and whether the
    int8 weights equal the float ones exactly (None where the graph did not show it)."""

    path: str
    layers: list[Int8Layer]
    exact: dict[str, bool | None] = field(default_factory=dict)
    activation_type: str = "uint8"
    calibrate_method: str = "minmax"
    calibration_examples: int = 0


class _Reader:
    """A CalibrationDataReader over fixed batches (onnxruntime asks with get_next until None)."""

    def __init__(self, input_name: str, batches: list[Tensor]):
        self._feeds = iter([{input_name: b.numpy().astype(np.float32)} for b in batches])

    def get_next(self):
        return next(self._feeds, None)


class _DropQuantizerChatter(logging.Filter):
    """onnxruntime.quantization warns on the root logger about optional pre-processing."""

    def filter(self, record: logging.LogRecord) -> bool:
        quantizer = "onnxruntime" in record.pathname and "quantization" in record.pathname
        return not (quantizer and record.levelno < logging.ERROR)


@contextlib.contextmanager
def _quiet():
    root, f = logging.getLogger(), _DropQuantizerChatter()
    root.addFilter(f)
    try:
        yield
    finally:
        root.removeFilter(f)


def _weight_nodes(graph) -> dict[str, object]:
    """Initializer name -> the Conv/Gemm/MatMul node that reads it as its weight."""
    return {n.input[1]: n for n in graph.node if n.op_type in _MATMUL_OPS and len(n.input) > 1}


def _check_exact(path: str, model: nn.Module, plan: list[Int8Layer]) -> dict[str, bool | None]:
    import onnx
    from onnx import numpy_helper

    inits = {t.name: t for t in onnx.load(path).graph.initializer}
    out: dict[str, bool | None] = {}
    for p in plan:
        if not p.int8:
            continue
        q, s = inits.get(f"{p.name}.weight_quantized"), inits.get(f"{p.name}.weight_scale")
        if q is None or s is None:
            out[p.name] = None
            continue
        w = model.get_submodule(p.name).weight.detach().numpy().astype(np.float64)
        back = numpy_helper.to_array(q).astype(np.float64) * numpy_helper.to_array(s)
        out[p.name] = bool(back.shape == w.shape and np.array_equal(back, w))
    return out


def quantize_onnx(model: nn.Module, out_path: str | os.PathLike, calibration: Tensor | Iterable, *,
                  float_onnx: str | os.PathLike | None = None, input_shape=None,
                  activation_type: str = "uint8", calibrate_method: str = "minmax") -> Int8Onnx:
    """Write a QDQ int8 ONNX model of ``model`` to out_path; onnxruntime runs it in integers.

    calibration: training inputs (a tensor or batches), a few hundred examples.
    float_onnx: kwh's float export of the same model (made here when not given).
    activation_type: "uint8" (onnxruntime's default u8s8 kernels) or "int8" (s8s8).
    Raises ModelError when no layer fits int8.
    """
    if activation_type not in ACTIVATION_TYPES:
        raise ValueError(f"Unknown activation_type {activation_type!r}; choose one of: "
                         f"{', '.join(ACTIVATION_TYPES)}")
    if calibrate_method not in CALIBRATE_METHODS:
        raise ValueError(f"Unknown calibrate_method {calibrate_method!r}; choose one of: "
                         f"{', '.join(CALIBRATE_METHODS)}")
    plan = require_int8_layers(model)
    batches = calibration_batches(calibration)
    onnxruntime()  # a clear error when it is missing
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from kwh.format.io import atomic_write_bytes
    from kwh.format.onnx import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        if float_onnx is None:
            float_onnx = export_onnx(model, os.path.join(tmp, "float.onnx"), input_shape)
        graph = onnx.load(os.fspath(float_onnx)).graph
        nodes = _weight_nodes(graph)
        overrides, exclude = {}, []
        for p in plan:
            node = nodes.get(f"{p.name}.weight")
            if node is None:
                raise ModelError(f"the ONNX export has no Conv/Gemm/MatMul reading "
                                 f"'{p.name}.weight'; cannot quantize layer {p.name}")
            if p.int8:  # exact: |q| <= 127 with scale 2^-t, symmetric (zero point 0)
                overrides[f"{p.name}.weight"] = [{"scale": np.float32(p.scale),
                                                  "zero_point": np.int8(0)}]
            else:
                exclude.append(node.name)
        act = QuantType.QUInt8 if activation_type == "uint8" else QuantType.QInt8
        method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                  "percentile": CalibrationMethod.Percentile}[calibrate_method]
        with _quiet():
            quantize_static(
                os.fspath(float_onnx), os.path.join(tmp, "int8.onnx"),
                _Reader(graph.input[0].name, batches), quant_format=QuantFormat.QDQ,
                per_channel=False, activation_type=act, weight_type=QuantType.QInt8,
                nodes_to_exclude=exclude, calibrate_method=method,
                extra_options={"TensorQuantOverrides": overrides,
                               "QDQDisableWeightAdjustForInt32Bias": True})
        with open(os.path.join(tmp, "int8.onnx"), "rb") as f:
            atomic_write_bytes(out_path, f.read())
    exact = _check_exact(os.fspath(out_path), model, plan)
    return Int8Onnx(os.fspath(out_path), plan, exact, activation_type, calibrate_method,
                    sum(len(b) for b in batches))
