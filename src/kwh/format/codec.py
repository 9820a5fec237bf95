"""The .kwh file format: ``save``, ``load``, ``file_report``, ``payload_bytes`` (docs/format.md).

Layout: a 24-byte preamble (magic, version, header codec, header sizes, header CRC-32), a JSON
header, entropy-coded sections of tensors (each with its CRC-32), and a SHA-256 of everything
before it. The header comes in three layouts, told apart by the preamble's version:

- version 1, the *chain*: an nn.Sequential of layers from an allow-list, one section per
  layer; the loader rebuilds the whole model from the file alone.
- version 2, the *state*: the named tensors of any model's state_dict (``kwh.compress(model,
  mode="weights")``), the quantized Linear/Conv2d weights packed at their bits; the loader
  copies them into a model the caller builds (``kwh.load(path, model=MyNet())``).
- version 3, the *graph*: allowed layers and functions (add, cat, flatten, mean, transpose,
  permute, reshape, matmul, mul_scalar, div_scalar) wired as a directed acyclic graph, one
  section per layer with tensors; the loader rebuilds the whole model (a
  ``kwh.format.GraphNet``) from the file alone.

Loading checks every byte and every field before it allocates anything, never unpickles, and
raises FormatError for any malformed input.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import reprlib
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import torch
import zstandard
from torch import nn

from kwh.compress.summary import Summary
from kwh.compress.weights import WeightsSummary
from kwh.errors import FormatError, ModelError
from kwh.format import modules as fm
from kwh.format import ops
from kwh.format import schema as fs
from kwh.format import tensors as ft
from kwh.format.graphnet import INPUT, GraphNet, Step, read_graph
from kwh.format.header_dict import HEADER_DICTIONARY
from kwh.format.io import atomic_write_bytes
from kwh.format.shapes import UNKNOWN

__all__ = ["save", "load", "file_report", "payload_bytes", "encode", "decode", "read_header",
           "MAGIC", "VERSION", "CHAIN_VERSION", "STATE_VERSION", "GRAPH_VERSION", "LAYOUTS",
           "MAX_HEADER_BYTES", "MAX_MODULES", "MAX_NODES", "MAX_TENSORS", "MAX_NAME",
           "MAX_CHANNELS", "DEFAULT_MAX_ELEMENTS"]

MAGIC = b"\x89KWH\r\n\x1a\n"  # non-ASCII first byte and CR LF / ^Z catch text-mode mangling
CHAIN_VERSION = 1  # the chain layout: an nn.Sequential of allowed layers
STATE_VERSION = 2  # the state layout: the named tensors of any model's state_dict
GRAPH_VERSION = 3  # the graph layout: allowed layers and functions wired as a DAG
VERSION = GRAPH_VERSION  # the newest version this kwh reads and writes
VERSIONS = (CHAIN_VERSION, STATE_VERSION, GRAPH_VERSION)
LAYOUTS = ("chain", "state", "graph")
PREAMBLE = struct.Struct("<8sHBBIII")  # magic, version, header codec, reserved, stored, raw, crc
TRAILER_BYTES = 32  # SHA-256 of all bytes before it
MAX_HEADER_BYTES = 1 << 20
MAX_MODULES = 4096
MAX_NODES = 1 << 14  # operations of a graph-layout file
MAX_CHANNELS = 1 << 16  # values of input_normalization's mean and std
MAX_INPUT_RANK = 8
MAX_TENSORS = 1 << 16  # named tensors (and sections) of a state-layout file
MAX_NAME = 512  # characters of a tensor name (a state_dict key) or of the model's class name
MAX_RANK = 8  # dimensions of a state-layout tensor
DEFAULT_MAX_ELEMENTS = 1 << 28  # tensor elements in a whole file (1 GiB as float32)
DEFAULT_LEVEL = 19  # zstd level of sections up to LARGE_SECTION bytes
LARGE_SECTION, LARGE_LEVEL = 1 << 20, 9
CODECS = {"raw": 0, "zstd": 1}  # of sections; the header's may also be HEADER_DICT_CODEC
HEADER_DICT_CODEC = 2  # the header: zstd with kwh.format.header_dict's preset dictionary
_HEADER_DICT = zstandard.ZstdCompressionDict(HEADER_DICTIONARY,
                                             dict_type=zstandard.DICT_TYPE_RAWCONTENT)
SECTION_OPTIONAL = ["raw_bytes", "stored_bytes", "crc32"]  # implied; see _check_sizes
FLOAT_BITS = 32  # kwh_bits of a layer marked as kept in float32 (kwh_frac_bits None)


# ------------------------------------------------------------------ entropy coding

def _coded(tensors: list[dict]) -> bool:
    """Whether a section holds an arithmetic-coded tensor (it is then stored raw, so that the
    bytes its decoding time is bounded by are the file's own)."""
    return any(t["encoding"] in ft.ARITH_ENCODINGS for t in tensors)


def _deflate(raw: bytes, level: int | None) -> tuple[str, bytes]:
    """zstd-compress a blob if that makes it smaller; else keep it raw."""
    if not raw:
        return "raw", raw
    if level is None:  # level 19 runs at ~1 MB/s: spend it where the bytes are few
        level = DEFAULT_LEVEL if len(raw) <= LARGE_SECTION else LARGE_LEVEL
    packed = zstandard.ZstdCompressor(level=level, write_content_size=True,
                                      write_checksum=False).compress(raw)
    return ("zstd", packed) if len(packed) < len(raw) else ("raw", raw)


def _deflate_header(raw: bytes, level: int | None) -> tuple[int, bytes]:
    """The header codec and stored bytes: the smallest of raw, zstd and zstd with the preset
    dictionary (kwh.format.header_dict)."""
    codec, stored = _deflate(raw, level)
    best = (CODECS[codec], stored)
    level = DEFAULT_LEVEL if level is None else level
    with_dict = zstandard.ZstdCompressor(level=level, dict_data=_HEADER_DICT,
                                         write_content_size=True, write_checksum=False,
                                         write_dict_id=False).compress(raw)
    return (HEADER_DICT_CODEC, with_dict) if len(with_dict) < len(best[1]) else best


def _inflate(data: memoryview | bytes, raw_size: int, where: str,
             dictionary: zstandard.ZstdCompressionDict | None = None) -> bytes:
    """Decompress exactly one zstd frame of exactly ``raw_size`` bytes, nothing more."""
    try:
        params = zstandard.get_frame_parameters(data)
        if params.content_size == zstandard.CONTENTSIZE_UNKNOWN:
            raise FormatError(f"{where}: zstd frame does not declare its size")
        if params.content_size != raw_size or params.dict_id != 0:
            raise FormatError(f"{where}: zstd frame declares {params.content_size} bytes, "
                              f"header says {raw_size}")
        inflater = zstandard.ZstdDecompressor(dict_data=dictionary).decompressobj()
        out = inflater.decompress(data)  # bounded: libzstd enforces the declared content size
        if not inflater.eof or inflater.unused_data or len(out) != raw_size:
            raise FormatError(f"{where}: zstd data is incomplete or followed by extra bytes")
    except zstandard.ZstdError as err:
        raise FormatError(f"{where}: zstd data is corrupt ({err})") from None
    return out


def _crc(data: bytes | memoryview) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


# ------------------------------------------------------------------ the checked header

@dataclass
class _Layer:
    """One checked header entry (a chain's layer, a graph's node): what to build or compute,
    what it reads (graph) and where its tensors are."""

    kind: str
    spec: fm.ModuleSpec | ops.OpSpec
    args: dict
    quant: tuple[int, int | None] | None  # (bits, frac_bits); (32, None): marked float32
    codec: str | None = None
    raw_bytes: int = 0
    stored_bytes: int = 0
    crc32: int | None = None  # None: not stored (the file's SHA-256 covers the section)
    tensors: list[dict] = field(default_factory=list)
    inputs: tuple[int, ...] = ()


@dataclass
class _Plan:
    """A fully checked header."""

    layers: list[_Layer]
    input_shape: tuple[int, ...] | None
    summary: dict | None
    producer: str
    elements: int
    normalization: dict | None = None


@dataclass
class _GraphPlan:
    """A fully checked graph-layout header."""

    layers: list[_Layer]  # one per node; a function node has no section
    output: int
    input_shape: tuple[int, ...]
    normalization: dict | None
    summary: dict | None
    producer: str
    elements: int


def _check_input_shape(value: Any, where: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_INPUT_RANK:
        raise FormatError(f"{where} must be null or a list of 1..{MAX_INPUT_RANK} sizes")
    return tuple(fs.get_int({"d": d}, "d", where, 1, fs.INT_MAX) for d in value)


def _check_normalization(value: Any, input_shape: tuple[int, ...] | None,
                         where: str) -> dict | None:
    """null, or {"mean": [...], "std": [...]}: one value per input channel (or one for all)."""
    if value is None:
        return None
    fs.fields(value, where, ["mean", "std"])
    out = {}
    for key in ("mean", "std"):
        items = fs.get_list(value, key, where, MAX_CHANNELS)
        out[key] = [fs.get_float({str(i): v}, str(i), f"{where}.{key}", -1e30, 1e30)
                    for i, v in enumerate(items)]
    n = len(out["mean"])
    if n == 0 or len(out["std"]) != n:
        raise FormatError(f"{where}: mean and std must hold as many values, at least one; got "
                          f"{n} and {len(out['std'])}")
    if any(v <= 0 for v in out["std"]):
        raise FormatError(f"{where}.std must be positive, got {out['std'][:8]}")
    channels = input_shape[0] if input_shape else None
    if channels is not None and n not in (1, channels):
        raise FormatError(f"{where} holds {n} values; the input has {channels} channels "
                          f"(input_shape {list(input_shape)}): give one per channel or one for all")
    return out


def _fixed(quant: tuple[int, int | None] | None) -> bool:
    """Whether a layer's weight is stored as fixed-point integers (not float32)."""
    return quant is not None and quant[1] is not None


def _check_quant(value: Any, quantizable: bool, where: str) -> tuple[int, int | None] | None:
    if value is None:
        return None
    if not quantizable:
        raise FormatError(f"{where}.quant must be null for a layer without quantized weights")
    fs.fields(value, f"{where}.quant", ["bits", "frac_bits"])
    if value["frac_bits"] is None:
        return fs.get_choice(value, "bits", f"{where}.quant", [FLOAT_BITS]), None
    return (fs.get_int(value, "bits", f"{where}.quant", 1, ft.MAX_BITS),
            fs.get_int(value, "frac_bits", f"{where}.quant", 0, ft.MAX_FRAC_BITS))


def _check_section(value: Any, layer: _Layer, slots: list[fm.TensorSlot], where: str,
                   used: int, max_elements: int) -> int:
    """Check a layer's section description; returns the running element count."""
    if not slots:
        if value is not None:
            raise FormatError(f"{where}.section must be null: {layer.kind} has no tensors")
        return used
    where = f"{where}.section"
    fs.fields(value, where, ["codec", "tensors"], SECTION_OPTIONAL)
    tensors = fs.get_list(value, "tensors", where, len(slots))
    if len(tensors) != len(slots):
        raise FormatError(f"{where}.tensors lists {len(tensors)} tensors; {layer.kind} carries "
                          f"{[s.name for s in slots]}")
    for j, (meta, slot) in enumerate(zip(tensors, slots)):
        if isinstance(meta, dict):  # the name and shape are the slot's unless stated
            meta = {"name": slot.name, "shape": list(slot.shape), **meta}
        used += math.prod(slot.shape)
        if used > max_elements:  # refused before any allocation
            raise FormatError(f"{where}: the file claims at least {used} tensor elements, more "
                              f"than the limit of {max_elements} (load(..., max_elements=) "
                              "raises it)")
        meta = ft.check_meta(meta, slot.name, slot.shape,
                             slot.quantizable and _fixed(layer.quant),
                             f"{where}.tensors[{j}]", plain=ft.FLOAT_ENCODINGS,
                             bits=layer.quant[0] if _fixed(layer.quant) else None)
        meta["raw_bytes"] = ft.raw_size(meta, layer.quant[0] if _fixed(layer.quant) else None)
        layer.tensors.append(meta)
    layer.codec, layer.raw_bytes, layer.stored_bytes, layer.crc32 = _check_sizes(
        value, layer.tensors, where)
    return used


def _check_sizes(value: dict, tensors: list[dict],
                 where: str) -> tuple[str, int, int, int | None]:
    """The codec, raw and stored sizes and CRC-32 (None if not stored) of a section whose
    tensors are checked. ``raw_bytes`` is implied by the tensors, ``stored_bytes`` by a raw
    section's, ``crc32`` by the file's SHA-256: a file states them or not (kwh 0.1.0's first
    files did); where stated they must agree."""
    codec = fs.get_choice(value, "codec", where, list(CODECS))
    total = sum(t["raw_bytes"] for t in tensors)
    raw = fs.get_int(value, "raw_bytes", where, 0, 1 << 62) if "raw_bytes" in value else total
    if codec == "zstd" and "stored_bytes" not in value:
        raise FormatError(f"{where}: a zstd section states its stored_bytes")
    stored = fs.get_int(value, "stored_bytes", where, 0, 1 << 62) \
        if "stored_bytes" in value else raw
    crc = fs.get_int(value, "crc32", where, 0, 0xFFFFFFFF) if "crc32" in value else None
    if raw != total:
        raise FormatError(f"{where}.raw_bytes={raw}, but its tensors take {total}")
    if codec == "raw" and stored != raw:
        raise FormatError(f"{where}: a raw section stores its {raw} bytes as they are, not "
                          f"{stored}")
    if codec == "zstd" and not 0 < stored < raw:
        raise FormatError(f"{where}: a zstd section must be smaller than its {raw} raw bytes, "
                          f"not {stored}")
    if codec != "raw" and _coded(tensors):
        raise FormatError(f"{where}: a section with arithmetic-coded tensors is stored raw, "
                          f"not {codec}")
    return codec, raw, stored, crc


def _check_header(header: dict, max_elements: int) -> _Plan:
    """Check every field, shape and size of a parsed header (FormatError on the first fault)."""
    fs.fields(header, "header", ["producer", "modules", "input_shape", "summary"],
              ["input_normalization"])
    producer = fs.get_str(header, "producer", "header")
    input_shape = _check_input_shape(header["input_shape"], "header.input_shape")
    normalization = _check_normalization(header.get("input_normalization"), input_shape,
                                         "header.input_normalization")
    summary = fs.get_dict(header, "summary", "header", nullable=True)
    entries = fs.get_list(header, "modules", "header", MAX_MODULES)
    shape = input_shape if input_shape is not None else UNKNOWN
    layers, elements = [], 0
    for i, entry in enumerate(entries):
        where = f"module {i}"
        fs.fields(entry, where, ["type", "args", "quant", "section"])
        spec, args = fm.check_args(entry["type"], entry["args"], where)
        where = f"module {i} ({entry['type']})"
        shape = fm.propagate(spec, args, shape, where)
        slots = spec.tensors(args)
        layer = _Layer(entry["type"], spec, args,
                       _check_quant(entry["quant"], any(s.quantizable for s in slots), where))
        elements = _check_section(entry["section"], layer, slots, where, elements, max_elements)
        layers.append(layer)
    return _Plan(layers, input_shape, summary, producer, elements, normalization)


# ------------------------------------------------------------------ the checked graph header

def _allowed_ops() -> str:
    return f"the layers {', '.join(fm.SPECS)} and the functions {', '.join(ops.OPS)}"


def _check_inputs(entry: dict, i: int, n: int, arity: tuple[int, int], where: str) -> tuple:
    """A node's input indices: earlier nodes or the model's input (-1), as many as it takes;
    without ``inputs``, the node before it (node 0: the model's input)."""
    inputs = fs.get_list(entry, "inputs", where, ops.MAX_INPUTS) if "inputs" in entry else [i - 1]
    lo, hi = arity
    if not lo <= len(inputs) <= hi:
        takes = f"{lo}" if lo == hi else f"{lo} to {hi}"
        raise FormatError(f"{where} takes {takes} input(s), got {len(inputs)}")
    for k, j in enumerate(inputs):
        reads = f"a node reads earlier nodes (0..{i - 1}) or the model's input ({INPUT})"
        if type(j) is not int:
            raise FormatError(f"{where}.inputs[{k}] must be an integer, got "
                              f"{reprlib.repr(j)[:40]}")
        if i <= j < n:
            raise FormatError(f"{where}.inputs[{k}]={j} is not an earlier node (a forward "
                              f"reference or a cycle); {reads}")
        if not INPUT <= j < i:
            raise FormatError(f"{where}.inputs[{k}]={j} is out of range: the graph has {n} "
                              f"nodes; {reads}")
    return tuple(inputs)


def _check_node(entry: Any, i: int, n: int, shapes: list, input_shape: tuple[int, ...],
                used: int, max_elements: int) -> tuple[_Layer, tuple[int, ...], int]:
    """One checked node, its output shape and the running element count."""
    where = f"node {i}"
    fs.fields(entry, where, ["op", "args", "quant", "section"], ["inputs"])
    op = entry["op"]
    if not isinstance(op, str) or (op not in fm.SPECS and op not in ops.OPS):
        raise FormatError(f"{where}: op {reprlib.repr(op)[:40]} is not allowed; allowed: "
                          f"{_allowed_ops()}")
    where = f"node {i} ({op})"
    if op in ops.OPS:
        spec = ops.OPS[op]
        inputs = _check_inputs(entry, i, n, (spec.min_inputs, spec.max_inputs), where)
        _, args = ops.check_op(op, entry["args"], where)
        shape = ops.op_shape(spec, args, [input_shape if j == INPUT else shapes[j]
                                          for j in inputs], where)
        for key in ("quant", "section"):
            if entry[key] is not None:
                raise FormatError(f"{where}.{key} must be null: a function has no tensors")
        return _Layer(op, spec, args, None, inputs=inputs), shape, used
    inputs = _check_inputs(entry, i, n, (1, 1), where)
    spec, args = fm.check_args(op, entry["args"], where)
    shape = fm.propagate(spec, args, input_shape if inputs[0] == INPUT else shapes[inputs[0]],
                         where)
    slots = spec.tensors(args)
    layer = _Layer(op, spec, args,
                   _check_quant(entry["quant"], any(s.quantizable for s in slots), where),
                   inputs=inputs)
    used = _check_section(entry["section"], layer, slots, where, used, max_elements)
    return layer, shape, used


def _check_graph_header(header: dict, max_elements: int) -> _GraphPlan:
    """Check every field of a graph-layout header, the wiring (earlier nodes only, each node
    read or the output) and the shapes through the graph, before anything is allocated."""
    fs.fields(header, "header", ["layout", "producer", "input_shape", "input_normalization",
                                 "summary", "nodes", "output"])
    fs.get_choice(header, "layout", "header", ["graph"])
    producer = fs.get_str(header, "producer", "header")
    input_shape = _check_input_shape(header["input_shape"], "header.input_shape")
    if input_shape is None:
        raise FormatError("header.input_shape is null; a graph file gives one example's shape, "
                          "which its shape checks start from")
    normalization = _check_normalization(header["input_normalization"], input_shape,
                                         "header.input_normalization")
    summary = fs.get_dict(header, "summary", "header", nullable=True)
    entries = fs.get_list(header, "nodes", "header", MAX_NODES)
    if not entries:
        raise FormatError("header.nodes is empty; a graph has at least one node")
    layers, shapes, read, elements = [], [], set(), 0
    for i, entry in enumerate(entries):
        layer, shape, elements = _check_node(entry, i, len(entries), shapes, input_shape,
                                             elements, max_elements)
        layers.append(layer)
        shapes.append(shape)
        read.update(layer.inputs)
    output = fs.get_int(header, "output", "header", 0, len(entries) - 1)
    unused = [i for i in range(len(entries)) if i not in read and i != output]
    if unused:
        i = unused[0]
        raise FormatError(f"node {i} ({layers[i].kind}) is neither read by a later node nor "
                          f"the output (node {output}); every node must be one or the other")
    return _GraphPlan(layers, output, input_shape, normalization, summary, producer, elements)


# ------------------------------------------------------------------ the checked state header

@dataclass
class _Section:
    """One checked section of a state-layout file: its sizes and its named tensors."""

    codec: str
    raw_bytes: int
    stored_bytes: int
    crc32: int | None
    tensors: list[dict]  # checked descriptions, each with "quant" and "raw_bytes"


@dataclass
class _StatePlan:
    """A fully checked state-layout header."""

    sections: list[_Section]
    model_class: str
    input_shape: tuple[int, ...] | None
    summary: dict | None
    producer: str
    elements: int


def _check_name(value: Any, where: str) -> str:
    """A tensor or class name: a printable string of 1..MAX_NAME characters."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME or not value.isprintable():
        raise FormatError(f"{where} must be a printable string of 1..{MAX_NAME} characters, got "
                          f"{reprlib.repr(value)[:60]}")
    return value


def _check_shape(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > MAX_RANK:
        raise FormatError(f"{where} must be a list of at most {MAX_RANK} sizes, got "
                          f"{reprlib.repr(value)[:60]}")
    return tuple(fs.get_int({"d": d}, "d", where, 0, fs.INT_MAX) for d in value)


def _owner(name: str) -> str:
    """The module path of a state_dict key: 'stem.0' for 'stem.0.weight', '' for 'weight'."""
    return name.rpartition(".")[0]


def _check_state_tensor(meta: Any, where: str, used: int, max_elements: int) -> dict:
    """Check one named tensor of a state-layout section; its raw size is added to it."""
    fs.fields(meta, where, ["name", "shape", "encoding", "quant"],
              ["nnz", "entries", "index_bits", "bits", "frac_bits", "bytes"])
    name = _check_name(meta["name"], f"{where}.name")
    shape = _check_shape(meta["shape"], f"{where}.shape")
    if used + math.prod(shape) > max_elements:  # refused before any allocation
        raise FormatError(f"{where}: the file claims at least {used + math.prod(shape)} tensor "
                          f"elements, more than the limit of {max_elements} "
                          "(load(..., max_elements=) raises it)")
    quant = _check_quant(meta["quant"], True, where)
    if quant is not None and (name.rpartition(".")[2] != "weight" or len(shape) not in (2, 4)):
        raise FormatError(f"{where}: only the weight of a Linear / Conv2d layer (a tensor named "
                          f"'weight' or '<module>.weight' of rank 2 or 4) has a quant, not "
                          f"{name[:60]!r} of rank {len(shape)}")
    rest = {k: v for k, v in meta.items() if k != "quant"}
    checked = ft.check_meta(rest, name, shape, _fixed(quant), where,
                            plain=ft.FLOAT_ENCODINGS if quant is not None else ft.PLAIN_ENCODINGS,
                            bits=quant[0] if _fixed(quant) else None)
    checked["quant"] = quant
    checked["raw_bytes"] = ft.raw_size(checked, quant[0] if _fixed(quant) else None)
    return checked


def _check_state_header(header: dict, max_elements: int) -> _StatePlan:
    """Check every field, name, shape and size of a state-layout header."""
    fs.fields(header, "header", ["layout", "producer", "model_class", "input_shape", "summary",
                                 "sections"])
    fs.get_choice(header, "layout", "header", ["state"])
    producer = fs.get_str(header, "producer", "header")
    model_class = _check_name(header["model_class"], "header.model_class")
    input_shape = _check_input_shape(header["input_shape"], "header.input_shape")
    summary = fs.get_dict(header, "summary", "header", nullable=True)
    entries = fs.get_list(header, "sections", "header", MAX_TENSORS)
    sections, names, elements = [], set(), 0
    for i, entry in enumerate(entries):
        where = f"section {i}"
        fs.fields(entry, where, ["codec", "tensors"], SECTION_OPTIONAL)
        metas = fs.get_list(entry, "tensors", where, MAX_TENSORS - len(names))
        if not metas:
            raise FormatError(f"{where}.tensors is empty; a section holds at least one tensor")
        tensors = []
        for j, meta in enumerate(metas):
            checked = _check_state_tensor(meta, f"{where}.tensors[{j}]", elements, max_elements)
            if checked["name"] in names:
                raise FormatError(f"{where}.tensors[{j}]: the name {checked['name'][:60]!r} "
                                  "appears twice")
            names.add(checked["name"])
            elements += math.prod(checked["shape"])
            tensors.append(checked)
        where = f"section {i} ({tensors[0]['name'][:60]})"
        sections.append(_Section(*_check_sizes(entry, tensors, where), tensors))
    return _StatePlan(sections, model_class, input_shape, summary, producer, elements)


# ------------------------------------------------------------------ save

def _quant_of(module: nn.Module, quantizable: bool, where: str) -> tuple[int, int | None] | None:
    bits = getattr(module, "kwh_bits", None)
    frac = getattr(module, "kwh_frac_bits", None)
    if bits is None and frac is None:
        return None
    if not quantizable:
        raise ModelError(f"{where} has kwh_bits/kwh_frac_bits but no weight to quantize; "
                         "remove the attributes")
    if frac is None and type(bits) is int and bits == FLOAT_BITS:
        return FLOAT_BITS, None  # marked float32: the weight is stored as it is
    for name, value, hi in (("kwh_bits", bits, ft.MAX_BITS),
                            ("kwh_frac_bits", frac, ft.MAX_FRAC_BITS)):
        lo = 1 if name == "kwh_bits" else 0
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ModelError(f"{where}: {name}={value!r} is invalid; give an integer in "
                             f"[{lo}, {hi}] (or kwh_bits=32 with kwh_frac_bits=None, or no "
                             "attributes, to store float32)")
    return int(bits), int(frac)


def _input_shape_of(model: nn.Module, input_shape: Any) -> list[int] | None:
    if input_shape is None:
        input_shape = getattr(model, "kwh_input_shape", None)
    summary = getattr(model, "kwh_summary", None)
    if input_shape is None and isinstance(summary, dict):
        input_shape = summary.get("input_shape")
    if input_shape is None:
        return None
    try:
        shape = [int(d) for d in input_shape]
        if any(d != e for d, e in zip(shape, input_shape)):
            raise ValueError
        _check_input_shape(shape, "input_shape")
    except (TypeError, ValueError):
        raise ModelError(f"input_shape={input_shape!r} is invalid; give one example's shape "
                         f"(no batch dimension) as 1..{MAX_INPUT_RANK} positive integers, "
                         "e.g. (1, 28, 28)") from None
    return shape


def _json_scalar(value: Any) -> Any:
    """Let numpy / torch scalars in a summary through as plain numbers."""
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _section_entry(codec: str, stored: bytes, metas: list[dict]) -> dict:
    """A section's header entry: what the loader cannot infer. The raw size follows from the
    tensors, a raw section's stored size from it, and the file's SHA-256 covers the bytes."""
    entry = {"codec": codec, "tensors": metas}
    if codec != "raw":
        entry["stored_bytes"] = len(stored)
    return entry


def _encode_module(module: nn.Module, where: str,
                   level: int | None) -> tuple[dict, bytes | None]:
    """The header entry of one allowed layer ({"type", "args", "quant", "section"}) and its
    stored section (None for a layer without tensors)."""
    kind, spec = fm.spec_for(module, where)
    args, checked = fm.module_args(module, spec, where)
    slots = spec.tensors(checked)
    quant = _quant_of(module, any(s.quantizable for s in slots), where)
    metas, blobs = [], []
    for slot in slots:  # the name and shape follow from the layer's type and arguments
        meta, blob = _encode_tensor(module, slot, quant, where)
        metas.append({k: v for k, v in meta.items() if k not in ("name", "shape")})
        blobs.append(blob)
    section, stored = None, None
    if slots:
        raw = b"".join(blobs)
        codec, stored = ("raw", raw) if _coded(metas) else _deflate(raw, level)
        section = _section_entry(codec, stored, metas)
    return {"type": kind, "args": args, "section": section,
            "quant": None if quant is None else {"bits": quant[0], "frac_bits": quant[1]}}, stored


def _encode_layers(model: nn.Module, level: int | None,
                   not_graph: str = "") -> tuple[list[dict], list[bytes]]:
    """The header entries of a chain's layers and their stored sections. ``not_graph``: why
    the model is not stored as a graph either, for the refusal of a model that is no chain."""
    if type(model) is not nn.Sequential:
        raise ModelError(f"a .kwh chain file stores a plain nn.Sequential chain, got "
                         f"{type(model).__name__}; any other model is stored with "
                         "layout='state' once compressed (kwh.compress(model, mode='weights'))"
                         + (f"; nor can it be stored as a graph (layout='graph'): {not_graph}"
                            if not_graph else ""))
    if len(model) > MAX_MODULES:
        raise ModelError(f"the model has {len(model)} layers, more than {MAX_MODULES}")
    modules, sections = [], []
    for i, module in enumerate(model):
        entry, stored = _encode_module(module, f"layer {i} ({type(module).__name__})", level)
        modules.append(entry)
        if stored is not None:
            sections.append(stored)
    return modules, sections


def _encode_graph(net: GraphNet, sources: list[str],
                  level: int | None) -> tuple[list[dict], list[bytes]]:
    """The header nodes of a GraphNet read from a model, and their stored sections."""
    if len(net.steps) > MAX_NODES:
        raise ModelError(f"the model has {len(net.steps)} operations, more than {MAX_NODES}")
    nodes, sections = [], []
    for i, (step, source) in enumerate(zip(net.steps, sources)):
        if step.op in ops.OPS:
            nodes.append({"op": step.op, "args": dict(step.args), "quant": None,
                          "section": None})
        else:
            entry, stored = _encode_module(net.layer(i), f"node {i}, {source}", level)
            nodes.append({"op": entry["type"], "args": entry["args"], "quant": entry["quant"],
                          "section": entry["section"]})
            if stored is not None:
                sections.append(stored)
        if list(step.inputs) != [i - 1]:  # the node before: implied
            nodes[-1]["inputs"] = list(step.inputs)
    return nodes, sections


def _is_chain(model: nn.Module) -> bool:
    """Whether ``model`` is a plain nn.Sequential of allowed layers (the chain layout)."""
    return type(model) is nn.Sequential and all(
        any(type(m) is spec.cls for spec in fm.SPECS.values()) for m in model)


_NO_SHAPE = ("the graph layout needs one example's shape: pass input_shape= or set "
             "model.kwh_input_shape")


@dataclass
class _Choice:
    """The layout ``save`` writes; for a graph, the model read as one; for a model that is
    neither a chain nor a graph, why it is not a graph."""

    layout: str
    graph: tuple[GraphNet, list[str]] | None = None
    not_graph: str = ""


def _read_graph(model: nn.Module, shape: list[int] | None) -> tuple[GraphNet, list[str]]:
    if not isinstance(model, nn.Module):
        raise ModelError(f"a .kwh file stores an nn.Module, got {type(model).__name__}")
    if shape is None:
        raise ModelError(_NO_SHAPE)
    return read_graph(model, tuple(shape))


def _layout_of(model: nn.Module, layout: str | None, shape: list[int] | None) -> _Choice:
    """The layout ``save`` writes: as asked; else "state" for a weight-only compression, "chain"
    for a plain nn.Sequential of allowed layers, "graph" for a model that traces into allowed
    layers and functions (given one example's ``shape``), "state" for another model with
    kwh-quantized layers, else "chain" (whose refusal then says why it is not a graph)."""
    if layout is not None:
        if layout not in LAYOUTS:
            raise ValueError(f"layout={layout!r} is invalid; give one of {list(LAYOUTS)} or None "
                             "(chosen from the model)")
        return _Choice(layout, _read_graph(model, shape) if layout == "graph" else None)
    summary = getattr(model, "kwh_summary", None)
    if isinstance(summary, dict) and summary.get("mode") == "weights":
        return _Choice("state")
    if _is_chain(model):
        return _Choice("chain")
    try:
        return _Choice("graph", _read_graph(model, shape))
    except ModelError as err:
        not_graph = str(err)
    # an unmarked model gets the chain's refusal
    return _Choice("state") if _marked(model) else _Choice("chain", not_graph=not_graph)


def _marked(model: nn.Module) -> bool:
    """Whether some Linear/Conv2d of ``model`` carries kwh's quantization marks."""
    return isinstance(model, nn.Module) and any(
        getattr(m, "kwh_bits", None) is not None or getattr(m, "kwh_frac_bits", None) is not None
        for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))


def _normalization_of(model: nn.Module, value: Any, shape: list[int] | None) -> dict | None:
    """The input normalization to store: the argument, else ``model.kwh_input_normalization``."""
    if value is None:
        value = getattr(model, "kwh_input_normalization", None)
    if value is None:
        return None
    try:
        out = {key: _floats(value[key]) for key in ("mean", "std")}
        return _check_normalization(out, None if shape is None else tuple(shape),
                                    "input_normalization")
    except FormatError as err:
        raise ModelError(f"{err}") from None
    except (TypeError, KeyError, IndexError, ValueError):
        raise ModelError(f"input_normalization={reprlib.repr(value)} is invalid; give "
                         "{'mean': [...], 'std': [...]}, one value per input channel or one "
                         "for all") from None


def _floats(value: Any) -> list[float]:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().reshape(-1).tolist()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [float(value)]
    if isinstance(value, (str, bytes, dict)) or any(isinstance(v, bool) for v in value):
        raise TypeError
    return [float(v) for v in value]


def _state_quant(model: nn.Module) -> dict[str, tuple[int, int | None]]:
    """The fixed point of every kwh-marked Linear / Conv2d weight, by its state_dict key."""
    out = {}
    for path, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            where = f"layer {path or '(the model itself)'} ({type(module).__name__})"
            quant = _quant_of(module, True, where)
            if quant is not None:
                out[f"{path}.weight" if path else "weight"] = quant
    return out


def _encode_state_tensor(name: str, tensor: Any, quant: tuple[int, int | None] | None,
                         where: str) -> tuple[dict, bytes]:
    if not isinstance(tensor, torch.Tensor):
        raise ModelError(f"{where} is a {type(tensor).__name__}, not a tensor; the state layout "
                         "stores tensors only (no extra state)")
    if tensor.is_meta:
        raise ModelError(f"{where} is on the meta device and holds no values")
    if _fixed(quant):
        if not tensor.is_floating_point() or tensor.dim() not in (2, 4):
            raise ModelError(f"{where}: a quantized weight must be a floating-point tensor of "
                             f"rank 2 or 4, got {tensor.dtype} of shape {tuple(tensor.shape)}")
        q = ft.quantize_exact(tensor, quant[0], quant[1], where)
        return ft.encode_quantized(name, tuple(tensor.shape), q, quant[0])
    if tensor.is_floating_point():
        meta, blob = ft.encode_float(name, tensor, where)
        if tensor.dtype != torch.float32:  # float16 / bfloat16 fit; float64 only if it is exact
            value = tensor.detach().cpu()
            if not torch.equal(value.to(torch.float32).to(value.dtype), value):
                raise ModelError(f"{where} ({value.dtype}) holds values float32 cannot represent "
                                 "exactly; the file stores float32: convert it first "
                                 "(model.float())")
        return meta, blob
    if tensor.dtype in ft.INT_DTYPES:
        return ft.encode_int(name, tensor)
    raise ModelError(f"{where} has dtype {tensor.dtype}; the state layout stores floating-point, "
                     "integer and boolean tensors")


def _encode_state(model: nn.Module, level: int | None) -> tuple[list[dict], list[bytes]]:
    """The sections of a model's state_dict: one per run of tensors of the same module."""
    if not isinstance(model, nn.Module):
        raise ModelError(f"a .kwh file stores an nn.Module, got {type(model).__name__}")
    state = model.state_dict()
    if len(state) > MAX_TENSORS:
        raise ModelError(f"the model has {len(state)} state_dict entries, more than {MAX_TENSORS}")
    quants = _state_quant(model)
    groups: list[tuple[str, list[dict], list[bytes]]] = []
    for name, tensor in state.items():
        where = f"state_dict entry {str(name)[:80]!r}"
        try:
            _check_name(name, where)
        except FormatError as err:
            raise ModelError(f"{err}; rename the module or buffer") from None
        quant = quants.get(name)
        meta, blob = _encode_state_tensor(name, tensor, quant, where)
        meta["quant"] = None if quant is None else {"bits": quant[0], "frac_bits": quant[1]}
        if not groups or groups[-1][0] != _owner(name):
            groups.append((_owner(name), [], []))
        groups[-1][1].append(meta)
        groups[-1][2].append(blob)
    entries, sections = [], []
    for _, metas, blobs in groups:
        raw = b"".join(blobs)
        codec, stored = ("raw", raw) if _coded(metas) else _deflate(raw, level)
        entries.append(_section_entry(codec, stored, metas))
        sections.append(stored)
    return entries, sections


def _encode_parts(model: nn.Module, input_shape: Any, level: int | None,
                  layout: str | None = None, input_normalization: Any = None,
                  summary: bool = True, head: bool = True) -> tuple[bytes, list[bytes]]:
    """The preamble with the stored header, and the stored sections, of a model's file
    (``head=False``: the header checked but not compressed, b"" in its place)."""
    if level is not None and (type(level) is not int or not 1 <= level <= 22):
        raise ValueError(f"level={level!r} is invalid; zstd levels are integers 1..22")
    shape = _input_shape_of(model, input_shape)
    choice = _layout_of(model, layout, shape)
    import kwh  # the producer's version; imported here because kwh imports this module

    if choice.layout == "chain":
        modules, sections = _encode_layers(model, level, choice.not_graph)
        header = {"producer": f"kwh {kwh.__version__}", "modules": modules}
        version, check = CHAIN_VERSION, _check_header
    elif choice.layout == "graph":
        nodes, sections = _encode_graph(*choice.graph, level)
        header = {"layout": "graph", "producer": f"kwh {kwh.__version__}", "nodes": nodes,
                  "output": choice.graph[0].output}
        version, check = GRAPH_VERSION, _check_graph_header
    else:
        if input_normalization is not None:
            raise ModelError("the state layout does not store input_normalization; save the "
                             "model as a chain or a graph, or without it")
        entries, sections = _encode_state(model, level)
        header = {"layout": "state", "producer": f"kwh {kwh.__version__}",
                  "model_class": type(model).__name__, "sections": entries}
        version, check = STATE_VERSION, _check_state_header
    if not isinstance(summary, bool):
        raise ValueError(f"summary={summary!r} is invalid; give True (store the model's "
                         "kwh_summary) or False (leave it out)")
    report = getattr(model, "kwh_summary", None) if summary else None
    if report is not None and not isinstance(report, dict):
        raise ModelError(f"kwh_summary must be a dict, got {type(report).__name__}")
    header.update(input_shape=shape, summary=report)
    if choice.layout != "state":
        normalization = _normalization_of(model, input_normalization, shape)
        if normalization is not None or choice.layout == "graph":
            header["input_normalization"] = normalization
    try:
        header_raw = json.dumps(header, sort_keys=True, separators=(",", ":"), allow_nan=False,
                                ensure_ascii=False, default=_json_scalar).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as err:
        raise ModelError(f"kwh_summary must be JSON-serialisable with finite numbers: "
                         f"{err}") from None
    try:  # the loader's own checks, so that every file save writes can be loaded
        check(fs.parse_json(header_raw), max_elements=1 << 62)
    except FormatError as err:
        raise ModelError(f"the model cannot be stored: {err}") from None
    if len(header_raw) > MAX_HEADER_BYTES:
        raise ModelError(f"the header takes {len(header_raw)} bytes, more than "
                         f"{MAX_HEADER_BYTES}; make kwh_summary smaller")
    if not head:
        return b"", sections
    codec, header_stored = _deflate_header(header_raw, level)
    return PREAMBLE.pack(MAGIC, version, codec, 0, len(header_stored), len(header_raw),
                         _crc(header_stored)) + header_stored, sections


def encode(model: nn.Module, input_shape: Any = None, level: int | None = None, *,
           layout: str | None = None, input_normalization: Any = None,
           summary: bool = True) -> bytes:
    """The bytes of the .kwh file ``save`` would write (ModelError if the model can't be stored)."""
    head, sections = _encode_parts(model, input_shape, level, layout, input_normalization,
                                   summary)
    body = head + b"".join(sections)
    return body + hashlib.sha256(body).digest()


def _encode_tensor(module: nn.Module, slot: fm.TensorSlot, quant: tuple[int, int | None] | None,
                   where: str) -> tuple[dict, bytes]:
    tensor = getattr(module, slot.name, None)
    if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != slot.shape:
        raise ModelError(f"{where}: {slot.name} should be a tensor of shape {slot.shape}, got "
                         f"{getattr(tensor, 'shape', type(tensor).__name__)}")
    if not tensor.is_floating_point():
        raise ModelError(f"{where}: {slot.name} has dtype {tensor.dtype}; expected floating point")
    if tensor.is_meta:
        raise ModelError(f"{where}: {slot.name} is on the meta device and holds no values")
    if slot.quantizable and _fixed(quant):
        q = ft.quantize_exact(tensor, quant[0], quant[1], where)
        return ft.encode_quantized(slot.name, slot.shape, q, quant[0])
    return ft.encode_float(slot.name, tensor, where)


def save(model: nn.Module, path: str | os.PathLike, *, input_shape: Any = None,
         level: int | None = None, layout: str | None = None,
         input_normalization: Any = None, summary: bool = True) -> int:
    """Write ``model`` to ``path`` atomically as a .kwh file; returns the file size in bytes.

    input_shape: one example's shape (no batch dimension), e.g. (1, 28, 28); by default
    ``model.kwh_input_shape`` or ``model.kwh_summary["input_shape"]`` when present.
    level: zstd level (1..22) of the entropy-coding stage; by default 19 for sections up to
    1 MiB and 9 above (level 19 compresses ~1 MB/s).
    layout: "chain" (a plain nn.Sequential of allowed layers, rebuilt by ``load`` alone),
    "graph" (any model that torch.fx traces into allowed layers and functions: add, cat,
    flatten, mean, transpose, permute, reshape, matmul, products and quotients with a number,
    e.g. a torch.fx.GraphModule of a ResNet or a vision transformer; rebuilt by ``load`` alone as a
    ``kwh.format.GraphNet``; needs input_shape) or "state" (the model's state_dict, any
    nn.Module; ``load(path, model=...)`` fills a model the caller builds). By default "state"
    for ``kwh.compress(model, mode="weights")``, "chain" for a plain nn.Sequential of allowed
    layers, "graph" for a model that is a graph of allowed operations, "state" for other
    kwh-quantized models, else the chain layout's refusal (a ModelError saying why).
    input_normalization: {"mean": [...], "std": [...]}, the per-channel (or single) input
    normalization the model was trained with, stored by the chain and graph layouts and
    restored as ``model.kwh_input_normalization``; by default that attribute when present.
    summary: False leaves the compression summary (``model.kwh_summary``: architecture, bits,
    rates, errors, the dense original's sizes) out of the file: a deployment copy, smaller by
    the summary's compressed size (1.8 KB of a ResNet-20's 8.5 KB file), that loads and runs
    the same but whose ``kwh inspect``, ``kwh energy`` and ``kwh report`` have no record of the
    dense original or the compression (energy then needs ``--dense``).
    """
    data = encode(model, input_shape=input_shape, level=level, layout=layout,
                  input_normalization=input_normalization, summary=summary)
    atomic_write_bytes(path, data)
    return len(data)


def payload_bytes(model: nn.Module, *, input_shape: Any = None, level: int | None = None,
                  layout: str | None = None) -> int:
    """Bytes of all tensor sections (weights, indices, biases; entropy-coded) ``save`` would
    write for ``model``, without writing a file: ``file_report(path)["payload_bytes"]``.

    In the state layout these are all the tensors of the model's state_dict (BatchNorm
    statistics and any layer left uncompressed too). The whole file adds the 24-byte
    preamble, the header and the 32-byte SHA-256; ``len(encode(model))`` is its size.
    """
    return sum(len(s) for s in _encode_parts(model, input_shape, level, layout, head=False)[1])


# ------------------------------------------------------------------ load

@dataclass
class _Read:
    """A verified file: its checked header, section bytes and sizes."""

    plan: _Plan | _StatePlan | _GraphPlan
    header: dict
    sections: list[bytes]
    file_bytes: int
    header_bytes: int


def _bad_magic(magic: bytes, where: str) -> FormatError:
    if magic.startswith(b"PK\x03\x04"):
        hint = " (it looks like a zip / PyTorch checkpoint; kwh.load reads only .kwh files)"
    elif magic[:1] == b"\x80":
        hint = " (it looks like a pickle; kwh never unpickles)"
    elif magic.startswith(b"\x89KWH"):
        hint = " (a .kwh file mangled by a text-mode transfer)"
    else:
        hint = ""
    return FormatError(f"{where} is not a .kwh file: bad magic bytes {magic[:8]!r}{hint}")


def _read_verified(data_source: Any, max_elements: int, where: str) -> _Read:
    size, read = data_source
    low = PREAMBLE.size + TRAILER_BYTES
    if size < low:
        raise FormatError(f"{where} is truncated: {size} bytes, a .kwh file has at least {low}")
    pre = read(PREAMBLE.size)
    magic, version, hcodec, reserved, hstored, hraw, hcrc = PREAMBLE.unpack(pre)
    if magic != MAGIC:
        raise _bad_magic(magic, where)
    if version not in VERSIONS:
        raise FormatError(f"{where} has format version {version}; this kwh reads versions "
                          f"{', '.join(map(str, VERSIONS[:-1]))} and {VERSIONS[-1]}"
                          + (" (upgrade kwh)" if version > VERSION else ""))
    if hcodec not in (*CODECS.values(), HEADER_DICT_CODEC) or reserved:
        raise FormatError(f"{where}: unknown header codec {hcodec} or reserved byte {reserved}"
                          + (" (upgrade kwh)" if not reserved else ""))
    if not 2 <= hraw <= MAX_HEADER_BYTES:
        raise FormatError(f"{where}: header of {hraw} bytes is outside [2, {MAX_HEADER_BYTES}]")
    if (hcodec == 0 and hstored != hraw) or (hcodec != 0 and not 0 < hstored < hraw):
        raise FormatError(f"{where}: stored header size {hstored} is impossible for a "
                          f"{hraw}-byte header")
    if low + hstored > size:
        raise FormatError(f"{where} is truncated: the header alone needs {low + hstored} bytes")
    stored = read(hstored)
    if _crc(stored) != hcrc:
        raise FormatError(f"{where}: header CRC-32 mismatch (the file is corrupt)")
    header = fs.parse_json(_inflate(stored, hraw, f"{where} header",
                                    _HEADER_DICT if hcodec == HEADER_DICT_CODEC else None)
                           if hcodec else stored)
    check = {CHAIN_VERSION: _check_header, STATE_VERSION: _check_state_header,
             GRAPH_VERSION: _check_graph_header}[version]
    plan = check(header, max_elements)
    stored_sections = _stored_sections(plan)
    expected = low + hstored + sum(sec.stored_bytes for _, sec in stored_sections)
    if size != expected:
        state = "truncated" if size < expected else "followed by extra bytes"
        raise FormatError(f"{where} is {state}: it has {size} bytes, its header describes "
                          f"{expected}")
    rest = read(size - PREAMBLE.size - hstored)
    if len(rest) != size - PREAMBLE.size - hstored:
        raise FormatError(f"{where} changed size while being read")
    digest = hashlib.sha256(pre)
    digest.update(stored)
    view = memoryview(rest)
    digest.update(view[:-TRAILER_BYTES])
    if digest.digest() != bytes(view[-TRAILER_BYTES:]):
        raise FormatError(f"{where}: whole-file SHA-256 mismatch (the file is corrupt or was "
                          "modified)")
    sections, offset = [], 0
    for label, sec in stored_sections:
        chunk = view[offset:offset + sec.stored_bytes]
        offset += sec.stored_bytes
        if sec.crc32 is not None and _crc(chunk) != sec.crc32:
            raise FormatError(f"{where}: {label} fails its CRC-32")
        raw = _inflate(chunk, sec.raw_bytes, f"{where} {label}") \
            if sec.codec == "zstd" else bytes(chunk)
        sections.append(raw)
    return _Read(plan, header, sections, size, hstored)


def _stored_sections(plan: _Plan | _StatePlan | _GraphPlan) -> list[tuple[str, Any]]:
    """(label, section) of every section in the file, in file order."""
    if isinstance(plan, _StatePlan):
        return [(f"section {i} ({sec.tensors[0]['name'][:60]})", sec)
                for i, sec in enumerate(plan.sections)]
    unit = "node" if isinstance(plan, _GraphPlan) else "module"
    return [(f"section of {unit} {i} ({layer.kind})", layer)
            for i, layer in enumerate(plan.layers) if layer.codec is not None]


def _read_path(path: str | os.PathLike, max_elements: int) -> _Read:
    where = os.fspath(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            return _read_verified((size, f.read), max_elements, where)
    except (FileNotFoundError, FormatError):
        raise
    except IsADirectoryError:
        raise FormatError(f"{where} is a folder, not a .kwh file") from None
    except OSError as err:
        raise FormatError(f"cannot read {where}: {err}") from None


def _build_layer(layer: _Layer, section: bytes | None, where: str) -> nn.Module:
    """The module of one checked layer entry, given its section's decompressed bytes."""
    module = layer.spec.build(layer.args)
    if layer.codec is not None:
        blob, offset = memoryview(section), 0
        slots = {s.name: s for s in layer.spec.tensors(layer.args)}
        for meta in layer.tensors:
            part = blob[offset:offset + meta["raw_bytes"]]
            offset += meta["raw_bytes"]
            fixed = slots[meta["name"]].quantizable and _fixed(layer.quant)
            tensor = ft.decode(meta, part, layer.quant if fixed else None, where)
            if slots[meta["name"]].buffer:
                setattr(module, meta["name"], tensor)
            else:
                setattr(module, meta["name"], nn.Parameter(tensor))
    if layer.args.get("num_batches_tracked") is not None:
        module.num_batches_tracked = torch.tensor(layer.args["num_batches_tracked"],
                                                  dtype=torch.long)
    if layer.quant is not None:
        module.kwh_bits, module.kwh_frac_bits = layer.quant
    layer.spec.finish(module, layer.args, where)
    if any(t.is_meta for t in (*module.parameters(), *module.buffers())):
        raise FormatError(f"unexpected: {where} was left without values")
    return module


def _set_attributes(model: nn.Module, plan: _Plan | _GraphPlan) -> nn.Module:
    """A rebuilt model with the file's summary, input shape and normalization, in eval mode."""
    if plan.summary is not None:
        model.kwh_summary = Summary(plan.summary)
    if plan.input_shape is not None:
        model.kwh_input_shape = plan.input_shape
    if plan.normalization is not None:
        model.kwh_input_normalization = plan.normalization
    return model.eval()


def _build(read: _Read) -> nn.Sequential:
    """The plain nn.Sequential a verified chain file describes, in eval mode."""
    model = nn.Sequential()
    sections = iter(read.sections)
    for i, layer in enumerate(read.plan.layers):
        section = next(sections) if layer.codec is not None else None
        model.append(_build_layer(layer, section, f"module {i} ({layer.kind})"))
    return _set_attributes(model, read.plan)


def _build_graph(read: _Read) -> GraphNet:
    """The GraphNet a verified graph file describes, in eval mode."""
    plan = read.plan
    sections = iter(read.sections)
    steps, modules = [], {}
    for i, layer in enumerate(plan.layers):
        if layer.kind in ops.OPS:
            steps.append(Step(layer.kind, layer.inputs, dict(layer.args)))
            continue
        section = next(sections) if layer.codec is not None else None
        modules[i] = _build_layer(layer, section, f"node {i} ({layer.kind})")
        steps.append(Step(layer.kind, layer.inputs))
    return _set_attributes(GraphNet(steps, modules, plan.output), plan)


def _decode_state(read: _Read) -> list[tuple[str, torch.Tensor, tuple[int, int | None] | None]]:
    """(name, tensor, quant) of every tensor of a verified state-layout file, in file order."""
    out = []
    for i, (sec, raw) in enumerate(zip(read.plan.sections, read.sections)):
        blob, offset = memoryview(raw), 0
        for meta in sec.tensors:
            part = blob[offset:offset + meta["raw_bytes"]]
            offset += meta["raw_bytes"]
            quant = meta["quant"]
            tensor = ft.decode(meta, part, quant if _fixed(quant) else None, f"section {i}")
            out.append((meta["name"], tensor, quant))
    return out


def _check_model_arg(model: Any) -> None:
    if model is None or isinstance(model, nn.Module):
        return
    if isinstance(model, type) and issubclass(model, nn.Module):
        raise TypeError(f"model= takes a model, not its class: pass model={model.__name__}(...)")
    raise TypeError(f"model= takes an nn.Module instance, got {type(model).__name__}")


def _listing(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _mismatches(model: nn.Module, target: dict, tensors: list) -> list[str]:
    """Why the decoded tensors do not fit ``model``'s state_dict (empty when they do)."""
    names = {name for name, _, _ in tensors}
    modules = dict(model.named_modules(remove_duplicate=False))
    missing = [k for k in target if k not in names]
    unexpected = [name for name, _, _ in tensors if name not in target]
    different = []
    for name, tensor, quant in tensors:
        have = target.get(name)
        if name not in target:
            continue
        if not isinstance(have, torch.Tensor):
            different.append(f"{name} (the model holds a {type(have).__name__})")
        elif tuple(have.shape) != tuple(tensor.shape):
            different.append(f"{name} (file {list(tensor.shape)}, model {list(have.shape)})")
        elif tensor.is_floating_point() != have.is_floating_point():
            kind = "float32" if tensor.is_floating_point() else "integer"
            different.append(f"{name} (file {kind}, model {have.dtype})")
        elif not tensor.is_floating_point() and not torch.equal(
                tensor.to(have.dtype).to(torch.int64), tensor):
            different.append(f"{name} (file values do not fit the model's {have.dtype})")
        elif quant is not None and not isinstance(modules.get(_owner(name)), (nn.Linear,
                                                                                nn.Conv2d)):
            owner = modules.get(_owner(name))
            different.append(f"{name} (the file holds the weight of a Linear / Conv2d; the "
                             f"model's {_owner(name) or 'root'} is a {type(owner).__name__})")
    out = []
    if missing:
        out.append(f"missing from the file: {_listing(missing)}")
    if unexpected:
        out.append(f"not in the {type(model).__name__}: {_listing(unexpected)}")
    if different:
        out.append(f"different: {_listing(different)}")
    return out


def _fill(model: nn.Module, plan: _StatePlan, tensors: list, where: str) -> nn.Module:
    """``model`` with the decoded tensors copied in, kwh attributes and summary set, in eval
    mode; a ModelError listing every difference when its state_dict does not match."""
    cls = plan.model_class
    target = model.state_dict(keep_vars=True)
    problems = _mismatches(model, target, tensors)
    if problems:
        raise ModelError(f"{where} holds the weights of a {cls} that do not fit the "
                         f"{type(model).__name__} given: " + "; ".join(problems)
                         + f". Pass a {cls} built as the saved one was built (same "
                         "arguments, without bayesify_)")
    assign = any(t.is_meta for t in target.values() if isinstance(t, torch.Tensor))
    state = {name: tensor.to(target[name].dtype) for name, tensor, _ in tensors}
    try:
        with torch.no_grad():
            model.load_state_dict(state, strict=True, assign=assign)
    except RuntimeError as err:
        raise ModelError(f"{where}: the {type(model).__name__} given refused the file's "
                         f"tensors: {str(err)[:300]}") from None
    quants = {_owner(name): quant for name, _, quant in tensors if quant is not None}
    modules = list(model.named_modules(remove_duplicate=False))
    for _, module in modules:  # the file says which layers are quantized, not the model
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            for attr in ("kwh_bits", "kwh_frac_bits"):
                module.__dict__.pop(attr, None)
    for path, module in modules:
        if path in quants:
            module.kwh_bits, module.kwh_frac_bits = quants[path]
    for attr in ("kwh_summary", "kwh_input_shape"):
        model.__dict__.pop(attr, None)
    if plan.summary is not None:
        weights = plan.summary.get("mode") == "weights"
        model.kwh_summary = (WeightsSummary if weights else Summary)(plan.summary)
    if plan.input_shape is not None:
        model.kwh_input_shape = plan.input_shape
    return model.eval()


def _model_of(read: _Read, model: nn.Module | None, where: str) -> nn.Module:
    """The model a verified file holds: built (chain, graph) or ``model`` filled (state)."""
    if isinstance(read.plan, (_Plan, _GraphPlan)):
        graph = isinstance(read.plan, _GraphPlan)
        built = _guarded(lambda: (_build_graph if graph else _build)(read), where)
        if model is not None:
            what = "graph of layers" if graph else "nn.Sequential chain"
            raise ModelError(f"{where} holds a whole {what}, which kwh.load builds by itself: "
                             "call kwh.load(path) without model=")
        return built
    tensors = _guarded(lambda: _decode_state(read), where)
    if model is None:
        cls = read.plan.model_class
        raise ModelError(f"{where} holds the weights of a {cls}, not its code: pass "
                         f"model={cls}(...) to kwh.load, built as the saved {cls} was built "
                         "(same arguments, without bayesify_)")
    return _fill(model, read.plan, tensors, where)


def decode(data: bytes, *, model: nn.Module | None = None,
           max_elements: int = DEFAULT_MAX_ELEMENTS, where: str = "data") -> nn.Module:
    """The model held by the bytes of a .kwh file (FormatError for anything malformed);
    ``model`` as for ``load``."""
    _check_model_arg(model)
    view = memoryview(data)
    pos = 0

    def read(n: int) -> bytes:
        nonlocal pos
        out = bytes(view[pos:pos + n])
        pos += len(out)
        return out
    verified = _guarded(lambda: _read_verified((len(view), read), max_elements, where), where)
    return _model_of(verified, model, where)


def load(path: str | os.PathLike, *, model: nn.Module | None = None,
         max_elements: int = DEFAULT_MAX_ELEMENTS) -> nn.Module:
    """Read a .kwh file, verifying every byte; the model in eval mode.

    A chain file (version 1) gives a plain nn.Sequential and a graph file (version 3) a
    ``kwh.format.GraphNet``, each built from the file alone; leave ``model`` None. A state
    file (version 2, e.g. ``kwh.compress(net, mode="weights")``) holds tensors, not code:
    pass ``model``, an instance of the saved model's class built
    with the same arguments (before bayesify_); its state_dict must have exactly the file's
    names and shapes (ModelError listing the differences otherwise). The tensors are copied
    into it (assigned, when it was built on the meta device) and it is returned.

    Linear/Conv2d layers stored quantized get ``kwh_bits`` and ``kwh_frac_bits`` back; the
    model gets ``kwh_summary``, ``kwh_input_shape`` and ``kwh_input_normalization`` when the
    file has them. Any malformed
    file raises FormatError (a missing one FileNotFoundError). ``max_elements`` bounds the
    tensor elements the file may claim; larger claims are refused before allocation.
    """
    _check_model_arg(model)
    where = os.fspath(path)
    return _model_of(_guarded(lambda: _read_path(path, max_elements), where), model, where)


def read_header(path: str | os.PathLike, *,
                max_elements: int = DEFAULT_MAX_ELEMENTS) -> dict:
    """The JSON header of a fully verified .kwh file."""
    return _guarded(lambda: _read_path(path, max_elements).header, os.fspath(path))


def _guarded(action, where: str):
    """Run a read, turning any slip past the explicit checks into a FormatError."""
    try:
        return action()
    except (FormatError, FileNotFoundError):
        raise
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, RuntimeError,
            MemoryError, struct.error, zstandard.ZstdError, UnicodeError) as err:
        raise FormatError(f"unexpected error reading {where} (please report): "
                          f"{type(err).__name__}: {str(err)[:200]}") from err


# ------------------------------------------------------------------ report

def file_report(path: str | os.PathLike) -> dict:
    """Real byte sizes of a verified .kwh file, per section and tensor, and vs dense float32.

    Keys: layout ("chain", "state" or "graph"), file_bytes, preamble_bytes, header_bytes,
    trailer_bytes, payload_bytes (all sections), elements, nonzero, dense_fp32_bytes (4 bytes
    per stored element), ratio_vs_fp32, and sections. A chain file has one section per layer
    with tensors (module: its index, type, codec, raw_bytes, stored_bytes, bits, frac_bits,
    tensors with their encodings); a state file (which also gives model_class) has one per
    run of tensors of one module (module: its path, codec, raw_bytes, stored_bytes, bits and
    frac_bits of its quantized weight if any, tensors with their encodings, bits, frac_bits).
    A state file is reported without its model: the tensors are decoded, not loaded. A graph
    file is reported as a chain (``module`` the node's index), and also gives ``nodes`` (the
    number of operations), ``ops`` (how many of each kind) and ``output`` (the output node).
    """
    where = os.fspath(path)
    read = _guarded(lambda: _read_path(path, DEFAULT_MAX_ELEMENTS), where)
    if isinstance(read.plan, _StatePlan):
        decoded = _guarded(lambda: _decode_state(read), where)
        sections = _state_report(read.plan, decoded)
        extra = {"layout": "state", "model_class": read.plan.model_class}
    elif isinstance(read.plan, _GraphPlan):
        net = _guarded(lambda: _build_graph(read), where)
        layers = [None if layer.kind in ops.OPS else net.layer(i)
                  for i, layer in enumerate(read.plan.layers)]
        sections = _chain_report(read.plan, layers)
        kinds = [layer.kind for layer in read.plan.layers]
        extra = {"layout": "graph", "nodes": len(kinds), "output": read.plan.output,
                 "ops": {k: kinds.count(k) for k in sorted(set(kinds))}}
    else:
        model = _guarded(lambda: _build(read), where)
        sections = _chain_report(read.plan, list(model))
        extra = {"layout": "chain"}
    elements = sum(t["elements"] for sec in sections for t in sec["tensors"])
    nonzero = sum(t["nonzero"] for sec in sections for t in sec["tensors"])
    return {"path": where, **extra, "file_bytes": read.file_bytes,
            "preamble_bytes": PREAMBLE.size, "header_bytes": read.header_bytes,
            "trailer_bytes": TRAILER_BYTES,
            "payload_bytes": sum(sec["stored_bytes"] for sec in sections),
            "elements": elements, "nonzero": nonzero, "dense_fp32_bytes": 4 * elements,
            "ratio_vs_fp32": 4 * elements / read.file_bytes, "sections": sections}


def _tensor_row(meta: dict, values: torch.Tensor) -> dict:
    row = {"name": meta["name"], "shape": list(meta["shape"]), "encoding": meta["encoding"],
           "elements": values.numel(), "nonzero": int(torch.count_nonzero(values)),
           "raw_bytes": meta["raw_bytes"]}
    if meta["encoding"] in ("fixed", "fixed-arith"):  # a float tensor exactly on its own grid
        row["bits"], row["frac_bits"] = meta["bits"], meta["frac_bits"]
    return row


def _chain_report(plan: _Plan | _GraphPlan, modules: list[nn.Module | None]) -> list[dict]:
    sections = []
    for i, (layer, module) in enumerate(zip(plan.layers, modules)):
        if layer.codec is None:
            continue
        sections.append({"module": i, "type": layer.kind, "codec": layer.codec,
                         "raw_bytes": layer.raw_bytes, "stored_bytes": layer.stored_bytes,
                         "bits": layer.quant[0] if layer.quant else 32,
                         "frac_bits": layer.quant[1] if layer.quant else None,
                         "tensors": [_tensor_row(meta, getattr(module, meta["name"]))
                                     for meta in layer.tensors]})
    return sections


def _state_report(plan: _StatePlan, decoded: list) -> list[dict]:
    sections, values = [], iter(decoded)
    for sec in plan.sections:
        rows, quant = [], None
        for meta in sec.tensors:
            _, tensor, q = next(values)
            row = _tensor_row(meta, tensor)
            if "bits" not in row:
                row["bits"] = q[0] if q else (64 if meta["encoding"] == "int64" else 32)
                row["frac_bits"] = q[1] if q else None
            rows.append(row)
            quant = quant or q
        sections.append({"module": _owner(sec.tensors[0]["name"]), "codec": sec.codec,
                         "raw_bytes": sec.raw_bytes, "stored_bytes": sec.stored_bytes,
                         "bits": quant[0] if quant else 32,
                         "frac_bits": quant[1] if quant else None, "tensors": rows})
    return sections
