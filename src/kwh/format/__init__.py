"""The .kwh file: the codec, its tensor encodings and bit packing, ONNX export, atomic writes.

Modules: ``codec`` (save, load, file_report, payload_bytes; the file layout), ``schema``
(strict JSON), ``modules`` (the allow-list of layers), ``ops`` (the allow-list of functions
of the graph layout), ``graphnet`` (GraphNet, the model a graph file rebuilds, and reading a
model as such a graph), ``shapes`` (shape checks), ``tensors``
(tensor encodings), ``bitpack`` (bit packing), ``onnx`` (export), ``io`` (the one atomic
writer every file kwh writes goes through). docs/format.md describes the file.
"""

from __future__ import annotations

from kwh.format.codec import file_report, load, payload_bytes, read_header, save
from kwh.format.graphnet import GraphNet
from kwh.format.io import atomic_write_bytes, check_destination
from kwh.format.onnx import export_onnx

__all__ = [
    # the file
    "save", "load", "read_header", "file_report", "payload_bytes",
    # the model a graph-layout file rebuilds
    "GraphNet",
    # ONNX
    "export_onnx",
    # writing
    "atomic_write_bytes", "check_destination",
]
