"""onnxruntime sessions as nn.Modules, so that ``evaluate`` and the timers take them as models."""

from __future__ import annotations

import importlib
import os

import numpy as np
import torch
from torch import Tensor, nn

from kwh.errors import KwhError

__all__ = ["onnxruntime", "session_options", "OrtModule"]


def onnxruntime():
    """The onnxruntime module, or a KwhError saying how to install it."""
    try:
        return importlib.import_module("onnxruntime")
    except ImportError:
        raise KwhError("onnxruntime is not installed; install it with "
                       "pip install 'kwh[bench]' (or pip install onnxruntime)") from None


def session_options(threads: int = 1):
    """Session options for CPU timing: ``threads`` intra-op threads, sequential, all graph
    optimizations (which fuse QuantizeLinear/DequantizeLinear pairs into integer kernels)."""
    ort = onnxruntime()
    if threads < 1:
        raise ValueError(f"threads={threads} is invalid; give a positive integer")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only
    return so


class OrtModule(nn.Module):
    """An ONNX model (path or bytes) run by onnxruntime on CPU: forward(x) -> logits tensor."""

    def __init__(self, model: str | os.PathLike | bytes, threads: int = 1,
                 label: str = "onnxruntime"):
        super().__init__()
        ort = onnxruntime()
        path_or_bytes = model if isinstance(model, bytes) else os.fspath(model)
        self.session = ort.InferenceSession(path_or_bytes, session_options(threads),
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.threads, self.label = threads, label
        self._weight_bytes = _initializer_bytes(path_or_bytes)

    def forward(self, x: Tensor) -> Tensor:  # (B, *input_shape) -> (B, classes)
        arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(None, {self.input_name: arr})[0])

    def call_for(self, x: Tensor):
        """A zero-argument callable running the session on ``x`` as a deployment does: the
        numpy input converted once, ``session.run`` with its feed, numpy out. The timers use
        it, so that onnxruntime's latency does not include the conversions between torch
        tensors and numpy arrays that forward() adds."""
        feed = {self.input_name: np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)}
        run = self.session.run
        return lambda: run(None, feed)

    def weight_bytes(self) -> int:
        """Bytes of the graph's initializers (weights, biases, scales, zero points)."""
        return self._weight_bytes

    def extra_repr(self) -> str:
        return f"{self.label}, threads={self.threads}"


def _initializer_bytes(path_or_bytes: str | bytes) -> int:
    import onnx
    from onnx import numpy_helper

    proto = (onnx.load_from_string(path_or_bytes) if isinstance(path_or_bytes, bytes)
             else onnx.load(path_or_bytes))
    return sum(numpy_helper.to_array(t).nbytes for t in proto.graph.initializer)
