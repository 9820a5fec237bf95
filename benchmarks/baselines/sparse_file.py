"""A real file for sparse integer weights: relative-index CSR + Huffman (Han et al. 2016, sec. 3-4).

Each layer's weights are integers ("symbols"): cluster index + 1 for weight sharing, or the
fixed-point integer for kwh's quantized weights; 0 means pruned. Stored per layer: the gaps
between nonzero positions at ``index_bits`` bits (a gap too long for them gets a filler: the
largest gap followed by a stored zero, as Deep Compression does), the nonzero symbols, both
Huffman-coded with their code-length tables, an optional float32 codebook and float32 biases.
Layout: b"SPHF" + u32 header length + JSON header + the layer sections, in header order.
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np

from benchmarks.baselines import huffman
from kwh.format.io import atomic_write_bytes

MAGIC = b"SPHF"


def relative_index(flat: np.ndarray, index_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(gaps, values) of the nonzero entries, with fillers so that every gap < 2**index_bits."""
    span = 1 << index_bits  # positions one filler covers: the largest gap plus its zero
    pos = np.flatnonzero(flat)  # (nnz,)
    gaps = np.diff(pos, prepend=-1) - 1  # zeros skipped before each nonzero
    fillers = gaps // span
    n = len(pos) + int(fillers.sum())
    out_gaps = np.full(n, span - 1, dtype=np.int64)
    out_vals = np.zeros(n, dtype=np.int64)
    ends = np.cumsum(fillers + 1) - 1  # where each real entry lands after its fillers
    out_gaps[ends] = gaps - fillers * span
    out_vals[ends] = flat[pos]
    return out_gaps, out_vals


def from_relative_index(gaps: np.ndarray, values: np.ndarray, size: int) -> np.ndarray:
    """Inverse of ``relative_index``: the dense flat symbol array."""
    pos = np.cumsum(gaps + 1) - 1
    flat = np.zeros(size, dtype=np.int64)
    flat[pos] = values
    return flat


def _table(lengths: dict[int, int]) -> bytes:
    """Code-length table: dense over [min, max] or sparse (symbol, length) pairs, the smaller."""
    if not lengths:
        return struct.pack("<BI", 0, 0)
    lo, hi = min(lengths), max(lengths)
    dense = struct.pack("<BiI", 1, lo, hi - lo + 1) + bytes(lengths.get(s, 0) for s in range(lo, hi + 1))
    sparse = struct.pack("<BI", 2, len(lengths)) + b"".join(
        struct.pack("<iB", s, n) for s, n in sorted(lengths.items()))
    return dense if len(dense) <= len(sparse) else sparse


def _read_table(buf: memoryview) -> tuple[dict[int, int], int]:
    kind = buf[0]
    if kind == 0:
        return {}, 5
    if kind == 1:
        lo, count = struct.unpack_from("<iI", buf, 1)
        lens = bytes(buf[9:9 + count])
        return {lo + i: n for i, n in enumerate(lens) if n}, 9 + count
    (count,) = struct.unpack_from("<I", buf, 1)
    pairs = [struct.unpack_from("<iB", buf, 5 + 5 * i) for i in range(count)]
    return dict(pairs), 5 + 5 * count


def encode_layer(symbols: np.ndarray, index_bits: int) -> tuple[dict, bytes]:
    """One layer's section and its header entry (sizes of each part in bytes)."""
    gaps, vals = relative_index(np.asarray(symbols).reshape(-1).astype(np.int64), index_bits)
    gl, vl = huffman.code_lengths(gaps), huffman.code_lengths(vals)
    parts = [_table(gl), _table(vl), huffman.encode(gaps, gl), huffman.encode(vals, vl)]
    meta = {"entries": int(len(vals)), "index_bits": index_bits,
            "bytes": [len(p) for p in parts]}
    return meta, b"".join(parts)


def write(path: str | os.PathLike, layers: list[dict]) -> dict:
    """Write the file atomically; returns byte counts (total, weights payload, biases, header).

    Each layer dict: name, shape, symbols (int array), index_bits, and optionally
    codebook (float32 values of symbols 1..k), frac_bits (symbols are int * 2**-frac_bits),
    bias (float32 array).
    """
    header, sections, payload, bias_bytes = [], [], 0, 0
    for d in layers:
        meta, body = encode_layer(d["symbols"], d["index_bits"])
        codebook = np.asarray(d.get("codebook", []), dtype="<f4").tobytes()
        bias = np.asarray(d.get("bias", []), dtype="<f4").tobytes()
        meta.update(name=d["name"], shape=list(d["shape"]), frac_bits=d.get("frac_bits"),
                    codebook=len(codebook) // 4, bias=len(bias) // 4)
        header.append(meta)
        sections += [codebook, body, bias]
        payload += len(codebook) + len(body)
        bias_bytes += len(bias)
    head = json.dumps({"layers": header}, separators=(",", ":")).encode()
    data = MAGIC + struct.pack("<I", len(head)) + head + b"".join(sections)
    atomic_write_bytes(path, data)
    return {"file_bytes": len(data), "payload_bytes": payload, "bias_bytes": bias_bytes,
            "header_bytes": 8 + len(head)}


def read(path: str | os.PathLike) -> dict[str, dict]:
    """Decode every layer: {name: {"weight": float array, "bias": float array}}."""
    with open(path, "rb") as f:
        data = memoryview(f.read())
    if bytes(data[:4]) != MAGIC:
        raise ValueError(f"{path}: not a sparse Huffman file (magic {bytes(data[:4])!r})")
    (n,) = struct.unpack_from("<I", data, 4)
    header = json.loads(bytes(data[8:8 + n]))
    at, out = 8 + n, {}
    for meta in header["layers"]:
        codebook = np.frombuffer(data[at:at + 4 * meta["codebook"]], dtype="<f4")
        at += 4 * meta["codebook"]
        gl, k1 = _read_table(data[at:])
        vl, k2 = _read_table(data[at + k1:])
        b = meta["bytes"]
        s = at + b[0] + b[1]
        gaps = huffman.decode(bytes(data[s:s + b[2]]), gl, meta["entries"])
        vals = huffman.decode(bytes(data[s + b[2]:s + b[2] + b[3]]), vl, meta["entries"])
        at += sum(b)
        size = int(np.prod(meta["shape"]))
        sym = from_relative_index(gaps, vals, size)
        if meta["codebook"]:
            w = np.where(sym > 0, codebook[np.maximum(sym - 1, 0)], 0.0)
        else:
            w = sym * 2.0 ** -(meta["frac_bits"] or 0)
        bias = np.frombuffer(data[at:at + 4 * meta["bias"]], dtype="<f4")
        at += 4 * meta["bias"]
        out[meta["name"]] = {"weight": w.reshape(meta["shape"]).astype(np.float32), "bias": bias}
    return out


