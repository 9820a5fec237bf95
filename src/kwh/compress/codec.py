"""The .kwh file format: ``save``, ``load``, ``file_report``, ``payload_bytes`` (docs/format.md).

Layout: a 24-byte preamble (magic, version, header codec, header sizes, header CRC-32), a JSON
header describing the layers from an allow-list, one entropy-coded section per layer with
tensors (each with its CRC-32), and a SHA-256 of everything before it. Loading checks every
byte and every field before it allocates anything, never unpickles, and raises FormatError
for any malformed input.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import torch
import zstandard
from torch import nn

from kwh.compress import format_modules as fm
from kwh.compress import format_schema as fs
from kwh.compress import format_tensors as ft
from kwh.compress.format_io import atomic_write_bytes
from kwh.compress.format_shapes import UNKNOWN
from kwh.compress.summary import Summary
from kwh.errors import FormatError, ModelError

__all__ = ["save", "load", "file_report", "payload_bytes", "encode", "decode", "read_header",
           "MAGIC", "VERSION", "MAX_HEADER_BYTES", "MAX_MODULES", "DEFAULT_MAX_ELEMENTS"]

MAGIC = b"\x89KWH\r\n\x1a\n"  # non-ASCII first byte and CR LF / ^Z catch text-mode mangling
VERSION = 1
PREAMBLE = struct.Struct("<8sHBBIII")  # magic, version, header codec, reserved, stored, raw, crc
TRAILER_BYTES = 32  # SHA-256 of all bytes before it
MAX_HEADER_BYTES = 1 << 20
MAX_MODULES = 4096
MAX_INPUT_RANK = 8
DEFAULT_MAX_ELEMENTS = 1 << 28  # tensor elements in a whole file (1 GiB as float32)
DEFAULT_LEVEL = 19  # zstd level of sections up to LARGE_SECTION bytes
LARGE_SECTION, LARGE_LEVEL = 1 << 20, 9
CODECS = {"raw": 0, "zstd": 1}
FLOAT_BITS = 32  # kwh_bits of a layer marked as kept in float32 (kwh_frac_bits None)


# ------------------------------------------------------------------ entropy coding

def _deflate(raw: bytes, level: int | None) -> tuple[str, bytes]:
    """zstd-compress a blob if that makes it smaller; else keep it raw."""
    if not raw:
        return "raw", raw
    if level is None:  # level 19 runs at ~1 MB/s: spend it where the bytes are few
        level = DEFAULT_LEVEL if len(raw) <= LARGE_SECTION else LARGE_LEVEL
    packed = zstandard.ZstdCompressor(level=level, write_content_size=True,
                                      write_checksum=False).compress(raw)
    return ("zstd", packed) if len(packed) < len(raw) else ("raw", raw)


def _inflate(data: memoryview | bytes, raw_size: int, where: str) -> bytes:
    """Decompress exactly one zstd frame of exactly ``raw_size`` bytes, nothing more."""
    try:
        params = zstandard.get_frame_parameters(data)
        if params.content_size == zstandard.CONTENTSIZE_UNKNOWN:
            raise FormatError(f"{where}: zstd frame does not declare its size")
        if params.content_size != raw_size or params.dict_id != 0:
            raise FormatError(f"{where}: zstd frame declares {params.content_size} bytes, "
                              f"header says {raw_size}")
        inflater = zstandard.ZstdDecompressor().decompressobj()
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
    """One checked header entry: what to build and where its tensors are."""

    kind: str
    spec: fm.ModuleSpec
    args: dict
    quant: tuple[int, int | None] | None  # (bits, frac_bits); (32, None): marked float32
    codec: str | None = None
    raw_bytes: int = 0
    stored_bytes: int = 0
    crc32: int = 0
    tensors: list[dict] = field(default_factory=list)


@dataclass
class _Plan:
    """A fully checked header."""

    layers: list[_Layer]
    input_shape: tuple[int, ...] | None
    summary: dict | None
    producer: str
    elements: int


def _check_input_shape(value: Any, where: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_INPUT_RANK:
        raise FormatError(f"{where} must be null or a list of 1..{MAX_INPUT_RANK} sizes")
    return tuple(fs.get_int({"d": d}, "d", where, 1, fs.INT_MAX) for d in value)


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
    fs.fields(value, where, ["codec", "raw_bytes", "stored_bytes", "crc32", "tensors"])
    tensors = fs.get_list(value, "tensors", where, len(slots))
    if len(tensors) != len(slots):
        raise FormatError(f"{where}.tensors lists {len(tensors)} tensors; {layer.kind} carries "
                          f"{[s.name for s in slots]}")
    for j, (meta, slot) in enumerate(zip(tensors, slots)):
        used += math.prod(slot.shape)
        if used > max_elements:  # refused before any allocation
            raise FormatError(f"{where}: the file claims at least {used} tensor elements, more "
                              f"than the limit of {max_elements} (load(..., max_elements=) "
                              "raises it)")
        meta = ft.check_meta(meta, slot.name, slot.shape,
                             slot.quantizable and _fixed(layer.quant),
                             f"{where}.tensors[{j}]")
        meta["raw_bytes"] = ft.raw_size(meta, layer.quant[0] if _fixed(layer.quant) else None)
        layer.tensors.append(meta)
    layer.codec = fs.get_choice(value, "codec", where, list(CODECS))
    layer.raw_bytes = fs.get_int(value, "raw_bytes", where, 0, 1 << 62)
    layer.stored_bytes = fs.get_int(value, "stored_bytes", where, 0, 1 << 62)
    layer.crc32 = fs.get_int(value, "crc32", where, 0, 0xFFFFFFFF)
    total = sum(t["raw_bytes"] for t in layer.tensors)
    if layer.raw_bytes != total:
        raise FormatError(f"{where}.raw_bytes={layer.raw_bytes}, but its tensors take {total}")
    if layer.codec == "raw" and layer.stored_bytes != layer.raw_bytes:
        raise FormatError(f"{where}: a raw section stores its {layer.raw_bytes} bytes as they "
                          f"are, not {layer.stored_bytes}")
    if layer.codec == "zstd" and not 0 < layer.stored_bytes < layer.raw_bytes:
        raise FormatError(f"{where}: a zstd section must be smaller than its {layer.raw_bytes} "
                          f"raw bytes, not {layer.stored_bytes}")
    return used


def _check_header(header: dict, max_elements: int) -> _Plan:
    """Check every field, shape and size of a parsed header (FormatError on the first fault)."""
    fs.fields(header, "header", ["producer", "modules", "input_shape", "summary"])
    producer = fs.get_str(header, "producer", "header")
    input_shape = _check_input_shape(header["input_shape"], "header.input_shape")
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
    return _Plan(layers, input_shape, summary, producer, elements)


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


def _encode_layers(model: nn.Module, level: int | None) -> tuple[list[dict], list[bytes]]:
    """The header entries of a chain's layers and their stored sections."""
    if type(model) is not nn.Sequential:
        raise ModelError(f"a .kwh file stores a plain nn.Sequential chain, got "
                         f"{type(model).__name__}")
    if len(model) > MAX_MODULES:
        raise ModelError(f"the model has {len(model)} layers, more than {MAX_MODULES}")
    if level is not None and (type(level) is not int or not 1 <= level <= 22):
        raise ValueError(f"level={level!r} is invalid; zstd levels are integers 1..22")
    modules, sections = [], []
    for i, module in enumerate(model):
        where = f"layer {i} ({type(module).__name__})"
        kind, spec = fm.spec_for(module, where)
        args, checked = fm.module_args(module, spec, where)
        slots = spec.tensors(checked)
        quant = _quant_of(module, any(s.quantizable for s in slots), where)
        metas, blobs = [], []
        for slot in slots:
            meta, blob = _encode_tensor(module, slot, quant, where)
            metas.append(meta)
            blobs.append(blob)
        section = None
        if slots:
            raw = b"".join(blobs)
            codec, stored = _deflate(raw, level)
            section = {"codec": codec, "raw_bytes": len(raw), "stored_bytes": len(stored),
                       "crc32": _crc(stored), "tensors": metas}
            sections.append(stored)
        modules.append({"type": kind, "args": args, "section": section,
                        "quant": None if quant is None else {"bits": quant[0],
                                                             "frac_bits": quant[1]}})
    return modules, sections


def _encode_parts(model: nn.Module, input_shape: Any,
                  level: int | None) -> tuple[bytes, list[bytes]]:
    """The preamble with the stored header, and the stored sections, of a chain's file."""
    modules, sections = _encode_layers(model, level)
    summary = getattr(model, "kwh_summary", None)
    if summary is not None and not isinstance(summary, dict):
        raise ModelError(f"kwh_summary must be a dict, got {type(summary).__name__}")
    import kwh  # the producer's version; imported here because kwh imports this module

    header = {"producer": f"kwh {kwh.__version__}", "modules": modules,
              "input_shape": _input_shape_of(model, input_shape), "summary": summary}
    try:
        header_raw = json.dumps(header, sort_keys=True, separators=(",", ":"), allow_nan=False,
                                ensure_ascii=False, default=_json_scalar).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as err:
        raise ModelError(f"kwh_summary must be JSON-serialisable with finite numbers: "
                         f"{err}") from None
    try:  # the loader's own checks, so that every file save writes can be loaded
        _check_header(fs.parse_json(header_raw), max_elements=1 << 62)
    except FormatError as err:
        raise ModelError(f"the model cannot be stored: {err}") from None
    if len(header_raw) > MAX_HEADER_BYTES:
        raise ModelError(f"the header takes {len(header_raw)} bytes, more than "
                         f"{MAX_HEADER_BYTES}; make kwh_summary smaller")
    codec, header_stored = _deflate(header_raw, level)
    return PREAMBLE.pack(MAGIC, VERSION, CODECS[codec], 0, len(header_stored), len(header_raw),
                         _crc(header_stored)) + header_stored, sections


def encode(model: nn.Module, input_shape: Any = None, level: int | None = None) -> bytes:
    """The bytes of the .kwh file ``save`` would write (ModelError if the model can't be stored)."""
    head, sections = _encode_parts(model, input_shape, level)
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
         level: int | None = None) -> int:
    """Write ``model`` to ``path`` atomically as a .kwh file; returns the file size in bytes.

    input_shape: one example's shape (no batch dimension), e.g. (1, 28, 28); by default
    ``model.kwh_input_shape`` or ``model.kwh_summary["input_shape"]`` when present.
    level: zstd level (1..22) of the entropy-coding stage; by default 19 for sections up to
    1 MiB and 9 above (level 19 compresses ~1 MB/s).
    """
    data = encode(model, input_shape=input_shape, level=level)
    atomic_write_bytes(path, data)
    return len(data)


def payload_bytes(model: nn.Module, *, input_shape: Any = None,
                  level: int | None = None) -> int:
    """Bytes of all tensor sections (weights, indices, biases; entropy-coded) ``save`` would
    write for ``model``, without writing a file: ``file_report(path)["payload_bytes"]``.

    The whole file adds the 24-byte preamble, the header and the 32-byte SHA-256;
    ``len(encode(model))`` is its size.
    """
    return sum(len(s) for s in _encode_parts(model, input_shape, level)[1])


# ------------------------------------------------------------------ load

@dataclass
class _Read:
    """A verified file: its checked header, section bytes and sizes."""

    plan: _Plan
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
    if version != VERSION:
        raise FormatError(f"{where} has format version {version}; this kwh reads version "
                          f"{VERSION}" + (" (upgrade kwh)" if version > VERSION else ""))
    if hcodec not in CODECS.values() or reserved:
        raise FormatError(f"{where}: unknown header codec {hcodec} or reserved byte {reserved}")
    if not 2 <= hraw <= MAX_HEADER_BYTES:
        raise FormatError(f"{where}: header of {hraw} bytes is outside [2, {MAX_HEADER_BYTES}]")
    if (hcodec == 0 and hstored != hraw) or (hcodec == 1 and not 0 < hstored < hraw):
        raise FormatError(f"{where}: stored header size {hstored} is impossible for a "
                          f"{hraw}-byte header")
    if low + hstored > size:
        raise FormatError(f"{where} is truncated: the header alone needs {low + hstored} bytes")
    stored = read(hstored)
    if _crc(stored) != hcrc:
        raise FormatError(f"{where}: header CRC-32 mismatch (the file is corrupt)")
    header = fs.parse_json(_inflate(stored, hraw, f"{where} header") if hcodec else stored)
    plan = _check_header(header, max_elements)
    expected = low + hstored + sum(layer.stored_bytes for layer in plan.layers)
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
    for i, layer in enumerate(plan.layers):
        if layer.codec is None:
            continue
        chunk = view[offset:offset + layer.stored_bytes]
        offset += layer.stored_bytes
        if _crc(chunk) != layer.crc32:
            raise FormatError(f"{where}: section of module {i} ({layer.kind}) fails its CRC-32")
        raw = _inflate(chunk, layer.raw_bytes, f"{where} module {i}") \
            if layer.codec == "zstd" else bytes(chunk)
        sections.append(raw)
    return _Read(plan, header, sections, size, hstored)


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


def _build(read: _Read) -> nn.Sequential:
    """The plain nn.Sequential a verified file describes, in eval mode."""
    model = nn.Sequential()
    sections = iter(read.sections)
    for i, layer in enumerate(read.plan.layers):
        module = layer.spec.build(layer.args)
        if layer.codec is not None:
            blob, offset = memoryview(next(sections)), 0
            slots = {s.name: s for s in layer.spec.tensors(layer.args)}
            for meta in layer.tensors:
                part = blob[offset:offset + meta["raw_bytes"]]
                offset += meta["raw_bytes"]
                fixed = slots[meta["name"]].quantizable and _fixed(layer.quant)
                tensor = ft.decode(meta, part, layer.quant if fixed else None,
                                   f"module {i} ({layer.kind})")
                if slots[meta["name"]].buffer:
                    setattr(module, meta["name"], tensor)
                else:
                    setattr(module, meta["name"], nn.Parameter(tensor))
        if layer.args.get("num_batches_tracked") is not None:
            module.num_batches_tracked = torch.tensor(layer.args["num_batches_tracked"],
                                                      dtype=torch.long)
        if layer.quant is not None:
            module.kwh_bits, module.kwh_frac_bits = layer.quant
        layer.spec.finish(module, layer.args, f"module {i} ({layer.kind})")
        if any(t.is_meta for t in (*module.parameters(), *module.buffers())):
            raise FormatError(f"unexpected: module {i} ({layer.kind}) was left without values")
        model.append(module)
    if read.plan.summary is not None:
        model.kwh_summary = Summary(read.plan.summary)
    if read.plan.input_shape is not None:
        model.kwh_input_shape = read.plan.input_shape
    return model.eval()


def decode(data: bytes, *, max_elements: int = DEFAULT_MAX_ELEMENTS,
           where: str = "data") -> nn.Sequential:
    """The model held by the bytes of a .kwh file (FormatError for anything malformed)."""
    view = memoryview(data)
    pos = 0

    def read(n: int) -> bytes:
        nonlocal pos
        out = bytes(view[pos:pos + n])
        pos += len(out)
        return out
    return _guarded(lambda: _build(_read_verified((len(view), read), max_elements, where)),
                    where)


def load(path: str | os.PathLike, *, max_elements: int = DEFAULT_MAX_ELEMENTS) -> nn.Sequential:
    """Read a .kwh file into a plain nn.Sequential in eval mode, verifying every byte.

    Linear/Conv2d layers stored quantized get ``kwh_bits`` and ``kwh_frac_bits`` back; the
    model gets ``kwh_summary`` and ``kwh_input_shape`` when the file has them. Any malformed
    file raises FormatError (a missing one FileNotFoundError). ``max_elements`` bounds the
    tensor elements the file may claim; larger claims are refused before allocation.
    """
    return _guarded(lambda: _build(_read_path(path, max_elements)), os.fspath(path))


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

    Keys: file_bytes, preamble_bytes, header_bytes, trailer_bytes, payload_bytes (all
    sections), elements, nonzero, dense_fp32_bytes (4 bytes per stored element),
    ratio_vs_fp32, and sections (one per layer with tensors: module, type, codec,
    raw_bytes, stored_bytes, bits, frac_bits, tensors with their encodings).
    """
    read = _guarded(lambda: _read_path(path, DEFAULT_MAX_ELEMENTS), os.fspath(path))
    model = _guarded(lambda: _build(read), os.fspath(path))
    sections, payload, elements, nonzero = [], 0, 0, 0
    for i, (layer, module) in enumerate(zip(read.plan.layers, model)):
        if layer.codec is None:
            continue
        tensors = []
        for meta in layer.tensors:
            values = getattr(module, meta["name"])
            nz = int(torch.count_nonzero(values))
            tensors.append({"name": meta["name"], "shape": list(meta["shape"]),
                            "encoding": meta["encoding"], "elements": values.numel(),
                            "nonzero": nz, "raw_bytes": meta["raw_bytes"]})
            elements += values.numel()
            nonzero += nz
        payload += layer.stored_bytes
        sections.append({"module": i, "type": layer.kind, "codec": layer.codec,
                         "raw_bytes": layer.raw_bytes, "stored_bytes": layer.stored_bytes,
                         "bits": layer.quant[0] if layer.quant else 32,
                         "frac_bits": layer.quant[1] if layer.quant else None,
                         "tensors": tensors})
    return {"path": os.fspath(path), "file_bytes": read.file_bytes,
            "preamble_bytes": PREAMBLE.size, "header_bytes": read.header_bytes,
            "trailer_bytes": TRAILER_BYTES, "payload_bytes": payload, "elements": elements,
            "nonzero": nonzero, "dense_fp32_bytes": 4 * elements,
            "ratio_vs_fp32": 4 * elements / read.file_bytes, "sections": sections}
