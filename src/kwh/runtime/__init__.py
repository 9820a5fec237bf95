"""Run compressed models as fast as their MACs and bits say: sparse (CSR) layers where the
zeros are scattered, int8 kernels where the weights fit 8 bits, in PyTorch and onnxruntime.

Core level: imports torch (and onnx/onnxruntime on use), never the CLI, trainer or data.
"""

from kwh.runtime.bench import Measurement, measure, weight_bytes
from kwh.runtime.compare import BenchConfig, BenchResult, BenchRow, format_bench, run_bench
from kwh.runtime.int8 import Int8Layer, int8_layers
from kwh.runtime.int8_onnx import Int8Onnx, quantize_onnx
from kwh.runtime.int8_torch import calibration_batches, quantize_torch, quantized_engines
from kwh.runtime.ort import OrtModule, session_options
from kwh.runtime.prepare import SPARSE_MODES, SparseChoice, format_choices, prepare
from kwh.runtime.sparse import SparseConv2d, SparseLinear, to_sparse
from kwh.runtime.timing import layer_ms, median_ms

__all__ = [
    # sparse execution
    "SparseLinear", "SparseConv2d", "to_sparse", "prepare", "SparseChoice", "format_choices",
    "SPARSE_MODES",
    # int8 execution
    "Int8Layer", "int8_layers", "quantize_torch", "quantized_engines", "quantize_onnx", "Int8Onnx",
    "calibration_batches",
    # onnxruntime
    "OrtModule", "session_options",
    # timing
    "median_ms", "layer_ms", "measure", "Measurement", "weight_bytes",
    # every variant side by side (kwh bench)
    "run_bench", "BenchConfig", "BenchResult", "BenchRow", "format_bench",
]
