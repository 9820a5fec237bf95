"""Checkpoint files: safetensors tensors plus a JSON metadata section, written atomically.

Layout (the safetensors format): an 8-byte little-endian header length, a JSON header, raw
tensor bytes. The header's ``__metadata__`` carries two strings: ``kwh`` (our JSON: format,
version, config, position, optimizer scalars, RNG states, log, a manifest of every tensor's
dtype and shape, and the SHA-256 of all tensor bytes) and ``kwh_sha256`` (SHA-256 of that
JSON text). Reading checks the header size bound, the JSON, both digests and the manifest
before any tensor is used; nothing is ever unpickled. Any defect raises FormatError.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from kwh.errors import FormatError
from kwh.format.io import atomic_write_bytes

FORMAT = "kwh-checkpoint"
VERSION = 1
FILENAME = "checkpoint.safetensors"
MAX_HEADER = 8 << 20  # bytes of JSON header accepted; real ones are tens of kB
MAX_FILE = 16 << 30
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
             "U8": 1, "BOOL": 1}

__all__ = ["FILENAME", "write_checkpoint", "read_checkpoint", "read_checkpoint_meta",
           "parse_checkpoint", "checkpoint_path"]


def checkpoint_path(path: str | os.PathLike) -> Path:
    """A checkpoint file, or the checkpoint inside a run directory."""
    p = Path(path)
    return p / FILENAME if p.is_dir() else p


def _tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _dtype_name(t: torch.Tensor) -> str:
    names = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16",
             torch.bfloat16: "BF16", torch.int64: "I64", torch.int32: "I32", torch.int16: "I16",
             torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}
    try:
        return names[t.dtype]
    except KeyError:
        raise FormatError(f"cannot store a tensor of dtype {t.dtype} in a checkpoint") from None


def write_checkpoint(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Serialize tensors and JSON-ready meta to ``path``, atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = dict(meta, format=FORMAT, version=VERSION,
                tensors={k: [_dtype_name(v), list(v.shape)] for k, v in tensors.items()},
                digest=_tensor_digest(tensors))
    text = json.dumps(meta, allow_nan=True, sort_keys=True)
    data = st_save(tensors, metadata={"kwh": text,
                                      "kwh_sha256": hashlib.sha256(text.encode()).hexdigest()})
    atomic_write_bytes(path, data)


def _header_length(path: Path | str, prefix: bytes, size: int) -> int:
    """The JSON header length from the 8-byte prefix, checked against the bound and file size."""
    if len(prefix) < 8:
        raise FormatError(f"{path}: not a checkpoint ({size} bytes, truncated)")
    (n,) = struct.unpack("<Q", prefix[:8])
    if n > MAX_HEADER:
        raise FormatError(f"{path}: header of {n} bytes exceeds the limit of {MAX_HEADER}")
    if 8 + n > size:
        raise FormatError(f"{path}: truncated: header says {n} bytes, file has {size - 8}")
    return n


def _parse_header(path: Path | str, text: bytes, data_len: int) -> tuple[dict, dict]:
    """Check a checkpoint's JSON header; return (safetensors tensor entries, our meta)."""
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise FormatError(f"{path}: corrupt header ({e})") from None
    if not isinstance(header, dict) or not isinstance(header.get("__metadata__"), dict):
        raise FormatError(f"{path}: not a kwh checkpoint (no metadata section)")
    md = header.pop("__metadata__")
    text, digest = md.get("kwh"), md.get("kwh_sha256")
    if not isinstance(text, str) or not isinstance(digest, str):
        raise FormatError(f"{path}: not a kwh checkpoint (metadata lacks 'kwh')")
    if hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest() != digest:
        raise FormatError(f"{path}: metadata checksum mismatch (file corrupt or edited)")
    try:
        meta = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise FormatError(f"{path}: corrupt metadata ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise FormatError(f"{path}: not a kwh checkpoint (format {meta.get('format')!r})"
                          if isinstance(meta, dict) else f"{path}: corrupt metadata")
    if meta.get("version") != VERSION:
        raise FormatError(f"{path}: checkpoint version {meta.get('version')!r} is not supported "
                          f"(this kwh reads version {VERSION})")
    _check_layout(path, header, meta, data_len)
    return header, meta


def _check_layout(path: Path | str, header: dict, meta: dict, data_len: int) -> None:
    """Every tensor entry matches the manifest, and the entries tile the data section exactly."""
    manifest = meta.get("tensors")
    if not isinstance(manifest, dict) or set(manifest) != set(header):
        raise FormatError(f"{path}: tensor list does not match its manifest")
    spans = []
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise FormatError(f"{path}: malformed entry for tensor {name!r}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if [dtype, shape] != manifest[name] or dtype not in _ITEMSIZE:
            raise FormatError(f"{path}: tensor {name!r} is {dtype} {shape}, manifest says "
                              f"{manifest[name]}")
        if not (isinstance(shape, list) and all(isinstance(s, int) and s >= 0 for s in shape)
                and isinstance(offsets, list) and len(offsets) == 2
                and all(isinstance(o, int) for o in offsets)):
            raise FormatError(f"{path}: malformed shape or offsets for tensor {name!r}")
        if offsets[1] - offsets[0] != math.prod(shape) * _ITEMSIZE[dtype]:
            raise FormatError(f"{path}: tensor {name!r}: offsets {offsets} do not fit shape {shape}")
        spans.append(tuple(offsets))
    end = 0
    for b, e in sorted(spans):
        if b != end:
            raise FormatError(f"{path}: tensor data has a gap or overlap at byte {b}")
        end = e
    if end != data_len:
        raise FormatError(f"{path}: truncated or padded: tensors need {end} bytes of data, "
                          f"file has {data_len}")


def read_checkpoint_meta(path: str | os.PathLike) -> dict:
    """The metadata of a checkpoint, header checks only (fast: tensor bytes are not read)."""
    path = checkpoint_path(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        n = _header_length(path, f.read(8), size)
        text = f.read(n)
    return _parse_header(path, text, size - 8 - n)[1]


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, meta) of a checkpoint, every check passed; FormatError otherwise."""
    path = checkpoint_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    size = path.stat().st_size
    if size > MAX_FILE:
        raise FormatError(f"{path}: {size} bytes is larger than any checkpoint kwh writes")
    return parse_checkpoint(path.read_bytes(), str(path))


def parse_checkpoint(blob: bytes, where: str = "checkpoint") -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, meta) from the bytes of a checkpoint file; FormatError for any defect."""
    n = _header_length(where, blob[:8], len(blob))
    _, meta = _parse_header(where, blob[8:8 + n], len(blob) - 8 - n)
    try:
        tensors = st_load(blob)
    except Exception as e:  # the library's own parse error; our checks should catch it first
        raise FormatError(f"{where}: unreadable tensor data ({e})") from None
    if _tensor_digest(tensors) != meta.get("digest"):
        raise FormatError(f"{where}: tensor data checksum mismatch (file corrupt)")
    return tensors, meta
