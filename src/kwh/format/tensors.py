"""Tensor encodings of the .kwh format: float32, int64, and fixed-point integers dense or sparse.

A quantized weight holds exactly q * 2**-t with q a ``bits``-bit two's-complement integer. Its
integers are stored in whichever of three layouts is smallest before entropy coding:

- ``dense``:  all n integers, ``bits`` bits each.
- ``bitmap``: an n-bit occupancy bitmap (1 = non-zero), then the non-zero integers.
- ``rindex``: relative-index sparse storage (Han et al. 2016, Deep Compression, sec. 3): one
  entry per non-zero (in row-major order), each a k-bit run of zeros skipped before it and
  its integer; a run longer than 2**k - 1 is split by filler entries (run 2**k - 1, value
  0), each covering 2**k positions. k (1..16) is chosen to minimise the size.
- ``arith``:  the non-zeros' runs of zeros and values, arithmetic-coded with adaptive
  probabilities (kwh.format.arith); ``nnz`` and the stream's ``bytes`` in the description.
  Chosen when its stream and the ~16 header bytes of its extra fields are smaller than the
  smallest packed layout (what zstd cannot shrink: a small model's sections are stored raw).

Plain tensors are little-endian IEEE ``float32``, or ``int64`` for the integer and boolean
tensors of the state layout (e.g. BatchNorm's ``num_batches_tracked``). A float tensor whose
every value is exactly q * 2**-t with q of at most 25 bits (biases and norms that
``kwh.compress`` put on a grid, zeros, small integers) is stored losslessly as ``fixed``: its
``bits``-bit integers, dense, with ``bits`` and ``frac_bits`` in its description, or as
``fixed-arith``: the same integers arithmetic-coded (with ``nnz`` and ``bytes``) when that is
smaller by more than ``ARITH_HEADER_BYTES``.

Every blob is packed by ``kwh.format.bitpack`` and starts on a byte boundary.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from kwh.errors import FormatError, ModelError
from kwh.fixedpoint import MAX_BITS, MAX_FRAC_BITS, exact_grid
from kwh.format import arith, bitpack
from kwh.format import schema as fs

__all__ = ["QUANT_ENCODINGS", "PLAIN_ENCODINGS", "FLOAT_ENCODINGS", "INT_DTYPES", "MAX_BITS",
           "MAX_FRAC_BITS", "MAX_INDEX_BITS", "ARITH_ENCODINGS", "ARITH_HEADER_BYTES",
           "exact_grid", "raw_size", "encode_float", "encode_int", "quantize_exact",
           "encode_quantized", "check_meta", "decode"]

QUANT_ENCODINGS = ("dense", "bitmap", "rindex", "arith")
ARITH_ENCODINGS = ("arith", "fixed-arith")  # stored in raw sections only (kwh.format.codec)
PLAIN_ENCODINGS = ("float32", "fixed", "fixed-arith", "int64")
FLOAT_ENCODINGS = ("float32", "fixed", "fixed-arith")  # a float tensor that is not quantized
INT_DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
MAX_INDEX_BITS = 16
ARITH_HEADER_BYTES = 16  # what an arith description's extra fields cost in the header, about


def raw_size(meta: dict, bits: int | None) -> int:
    """Bytes of a tensor's blob before entropy coding, from its (checked) description."""
    n = math.prod(meta["shape"])
    enc = meta["encoding"]
    if enc in ARITH_ENCODINGS:
        return meta["bytes"]
    if enc == "float32":
        return 4 * n
    if enc == "fixed":
        return bitpack.packed_size(n, meta["bits"])
    if enc == "int64":
        return 8 * n
    if enc == "dense":
        return bitpack.packed_size(n, bits)
    if enc == "bitmap":
        return bitpack.packed_size(n, 1) + bitpack.packed_size(meta["nnz"], bits)
    m, k = meta["entries"], meta["index_bits"]
    return bitpack.packed_size(m, k) + bitpack.packed_size(m, bits)


# ------------------------------------------------------------------ encoding (save)

def encode_float(name: str, tensor: torch.Tensor, where: str) -> tuple[dict, bytes]:
    """A float tensor in its smallest exact form: ``fixed`` integers when every value lies on
    one fixed-point grid of at most MAX_BITS bits, else little-endian IEEE float32."""
    values = tensor.detach().to("cpu", torch.float32).contiguous().numpy().reshape(-1)
    if not np.isfinite(values).all():
        raise ModelError(f"{where}: {name} holds NaN or infinite values; a .kwh file stores "
                         "finite numbers only")
    meta = {"name": name, "shape": list(tensor.shape), "encoding": "float32"}
    grid = exact_grid(values)
    if grid is not None and bitpack.packed_size(values.size, grid[0]) < 4 * values.size:
        bits, frac_bits = grid
        q = np.round(values.astype(np.float64) * 2.0**frac_bits).astype(np.int64)
        meta.update(encoding="fixed", bits=bits, frac_bits=frac_bits)
        packed = bitpack.pack_uint(bitpack.to_twos(q, bits), bits)
        coded = _arith_or_none(q, bits, len(packed))
        if coded is not None:
            meta.update(encoding="fixed-arith", nnz=int(np.count_nonzero(q)), bytes=len(coded))
            return meta, coded
        return meta, packed
    return meta, values.astype("<f4").tobytes()


def _entropy_bytes(flat: np.ndarray, idx: np.ndarray) -> float:
    """An estimate of the arithmetic code's length: the order-0 entropies of the non-zeros'
    values and of their runs of zeros (an adaptive code comes within a few per cent)."""
    total = 0.0
    for symbols in (flat[idx], np.diff(idx, prepend=-1)):
        if symbols.size:
            p = np.unique(symbols, return_counts=True)[1] / symbols.size
            total += float(-(p * np.log2(p)).sum()) * symbols.size
    return total / 8


def _arith_or_none(q: np.ndarray, bits: int, smallest: int) -> bytes | None:
    """The arith coding of ``q`` if it is smaller than ``smallest`` bytes and within the limits
    a reader accepts, else None."""
    flat = q.reshape(-1)
    idx = np.flatnonzero(flat)
    if idx.size > arith.MAX_CODED_NNZ or _entropy_bytes(flat, idx) > smallest:
        return None  # not worth the Python loop of coding it
    nnz = idx.size
    coded = arith.encode_ints(q, bits)
    if len(coded) + ARITH_HEADER_BYTES >= smallest or not arith.nnz_allowed(nnz, len(coded)):
        return None
    return coded


def encode_int(name: str, tensor: torch.Tensor) -> tuple[dict, bytes]:
    """An integer or boolean tensor as little-endian int64 (booleans as 0 / 1)."""
    if tensor.dtype not in INT_DTYPES:
        raise ValueError(f"{name}: encode_int takes {INT_DTYPES}, got {tensor.dtype}")
    values = tensor.detach().to("cpu", torch.int64).contiguous().numpy().reshape(-1)
    meta = {"name": name, "shape": list(tensor.shape), "encoding": "int64"}
    return meta, values.astype("<i8").tobytes()


def quantize_exact(tensor: torch.Tensor, bits: int, frac_bits: int, where: str) -> np.ndarray:
    """The integers q with tensor == q * 2**-frac_bits, checked to fit ``bits`` bits."""
    scaled = tensor.detach().to("cpu", torch.float64).numpy().reshape(-1) * 2.0**frac_bits
    bad = ~np.isfinite(scaled) | (scaled != np.round(scaled))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ModelError(f"{where}: weight[{i}]={scaled[i] / 2.0**frac_bits!r} is not an integer "
                         f"multiple of 2**-{frac_bits} (kwh_frac_bits={frac_bits}); quantize the "
                         "weights to this fixed point first, or fix kwh_frac_bits")
    q = scaled.astype(np.int64)
    lo, hi = bitpack.int_range(bits)
    out = (q < lo) | (q > hi)
    if out.any():
        i = int(np.flatnonzero(out)[0])
        raise ModelError(f"{where}: weight[{i}] = {int(q[i])} * 2**-{frac_bits} needs more than "
                         f"kwh_bits={bits} bits (two's complement range [{lo}, {hi}]); raise "
                         "kwh_bits or lower kwh_frac_bits")
    return q


def _rindex_entries(nnz: int, gaps: np.ndarray, k: int) -> int:
    return nnz + int((gaps >> k).sum())


def encode_quantized(name: str, shape: tuple[int, ...], q: np.ndarray,
                     bits: int, coded: bool = True) -> tuple[dict, bytes]:
    """Integers in the smallest of the dense, bitmap and relative-index layouts, or their
    arithmetic code when that is smaller (``coded=False``: the packed layouts only)."""
    n = q.size
    idx = np.flatnonzero(q)  # positions of the non-zeros, increasing
    nnz = idx.size
    gaps = np.diff(idx, prepend=-1) - 1  # zeros skipped before each non-zero
    best_k = min(range(1, MAX_INDEX_BITS + 1), key=lambda k: (_size_rindex(
        _rindex_entries(nnz, gaps, k), k, bits), k))
    m = _rindex_entries(nnz, gaps, best_k)
    sizes = {"dense": bitpack.packed_size(n, bits),
             "bitmap": bitpack.packed_size(n, 1) + bitpack.packed_size(nnz, bits),
             "rindex": _size_rindex(m, best_k, bits)}
    enc = min(QUANT_ENCODINGS[:3], key=lambda e: sizes[e])  # ties go to the earlier layout
    meta: dict = {"name": name, "shape": list(shape), "encoding": enc}
    stream = _arith_or_none(q, bits, sizes[enc]) if coded else None
    if stream is not None:
        meta.update(encoding="arith", nnz=nnz, bytes=len(stream))
        return meta, stream
    if enc == "dense":
        return meta, bitpack.pack_uint(bitpack.to_twos(q, bits), bits)
    values = bitpack.to_twos(q[idx], bits)
    meta["nnz"] = nnz
    if enc == "bitmap":
        mask = np.zeros(n, dtype=np.uint32)
        mask[idx] = 1
        return meta, bitpack.pack_uint(mask, 1) + bitpack.pack_uint(values, bits)
    full = (1 << best_k) - 1
    counts = (gaps >> best_k) + 1  # fillers + the entry itself, per non-zero
    last = np.cumsum(counts) - 1  # position of each real entry among all entries
    runs = np.full(m, full, dtype=np.uint32)
    runs[last] = (gaps & full).astype(np.uint32)
    codes = np.zeros(m, dtype=np.uint32)
    codes[last] = values
    meta["entries"], meta["index_bits"] = m, best_k
    return meta, bitpack.pack_uint(runs, best_k) + bitpack.pack_uint(codes, bits)


def _size_rindex(m: int, k: int, bits: int) -> int:
    return bitpack.packed_size(m, k) + bitpack.packed_size(m, bits)


# ------------------------------------------------------------------ checking and decoding (load)

def check_meta(meta: object, name: str, shape: tuple[int, ...], quantized: bool,
               where: str, plain: tuple[str, ...] = ("float32",), bits: int | None = None) -> dict:
    """Check one tensor description against the tensor its layer must carry (``bits``: the
    layer's, for a quantized tensor).

    ``plain``: the encodings allowed for a tensor that is not quantized (the chain layout
    allows float32 and fixed; the state layout adds int64).
    """
    fs.fields(meta, where, ["name", "shape", "encoding"],
              ["nnz", "entries", "index_bits", "bits", "frac_bits", "bytes"])
    if meta["name"] != name:
        raise FormatError(f"{where}.name={str(meta['name'])[:40]!r}; expected {name!r}")
    if meta["shape"] != list(shape) or any(type(d) is not int for d in meta["shape"]):
        raise FormatError(f"{where}.shape does not match the layer's arguments "
                          f"(expected {list(shape)})")
    encodings = QUANT_ENCODINGS if quantized else plain
    enc = fs.get_choice(meta, "encoding", where, encodings)
    extra = {"dense": [], "float32": [], "int64": [], "bitmap": ["nnz"],
             "rindex": ["nnz", "entries", "index_bits"], "fixed": ["bits", "frac_bits"],
             "arith": ["nnz", "bytes"], "fixed-arith": ["bits", "frac_bits", "nnz", "bytes"]}[enc]
    fs.fields(meta, where, ["name", "shape", "encoding", *extra])
    n = math.prod(shape)
    out = {"name": name, "shape": tuple(shape), "encoding": enc}
    if enc in ("fixed", "fixed-arith"):
        out["bits"] = fs.get_int(meta, "bits", where, 1, MAX_BITS)
        out["frac_bits"] = fs.get_int(meta, "frac_bits", where, 0, MAX_FRAC_BITS)
    if enc in ("bitmap", "rindex", *ARITH_ENCODINGS):
        out["nnz"] = fs.get_int(meta, "nnz", where, 0, n)
    if enc in ARITH_ENCODINGS:
        if out["nnz"] > arith.MAX_CODED_NNZ:
            raise FormatError(f"{where}: nnz={out['nnz']}; an arithmetic-coded tensor holds at "
                              f"most {arith.MAX_CODED_NNZ} non-zeros")
        # at most the bytes of the dense layout (the encoder codes only when smaller): bounded
        # allocation; at most MAX_NNZ_PER_BYTE non-zeros a byte: bounded decoding time
        width = out["bits"] if enc == "fixed-arith" else bits
        if width is None:
            raise FormatError(f"{where}: encoding 'arith' needs the layer's bits")
        out["bytes"] = fs.get_int(meta, "bytes", where, 0, bitpack.packed_size(n, width))
        if not arith.nnz_allowed(out["nnz"], out["bytes"]):
            raise FormatError(f"{where}: nnz={out['nnz']} in {out['bytes']} arithmetic-coded "
                              f"bytes; a stream holds at most {arith.MAX_NNZ_PER_BYTE} "
                              "non-zeros a byte")
    if enc == "rindex":
        out["entries"] = fs.get_int(meta, "entries", where, out["nnz"], n)
        out["index_bits"] = fs.get_int(meta, "index_bits", where, 1, MAX_INDEX_BITS)
        if (out["entries"] == 0) != (out["nnz"] == 0):
            raise FormatError(f"{where}: entries={out['entries']} with nnz={out['nnz']}; "
                              "the last entry must hold a non-zero")
    return out


def decode(meta: dict, blob: memoryview, quant: tuple[int, int] | None,
           where: str) -> torch.Tensor:
    """A checked tensor description and its blob -> a float32 tensor, or an int64 one for the
    int64 encoding (FormatError if invalid)."""
    try:
        if meta["encoding"] == "int64":
            ints = np.frombuffer(blob, dtype="<i8").astype(np.int64)
            return torch.from_numpy(ints.reshape(meta["shape"]))
        if meta["encoding"] == "float32":
            values = np.frombuffer(blob, dtype="<f4").astype(np.float32)
            if not np.isfinite(values).all():
                raise FormatError(f"{where}: {meta['name']} holds NaN or infinite values")
        else:
            if meta["encoding"] == "fixed":  # its own grid, its integers dense
                bits, frac_bits = meta["bits"], meta["frac_bits"]
                q = _decode_ints({**meta, "encoding": "dense"}, blob, bits, where)
            elif meta["encoding"] == "fixed-arith":
                bits, frac_bits = meta["bits"], meta["frac_bits"]
                q = _decode_ints({**meta, "encoding": "arith"}, blob, bits, where)
            else:
                bits, frac_bits = quant
                q = _decode_ints(meta, blob, bits, where)
            values = q.astype(np.float32) * np.float32(2.0**-frac_bits)  # exact: a power of 2
    except ValueError as err:
        if isinstance(err, FormatError):
            raise
        raise FormatError(f"{where}: {meta['name']}: {err}") from None
    return torch.from_numpy(values.reshape(meta["shape"]))


def _decode_ints(meta: dict, blob: memoryview, bits: int, where: str) -> np.ndarray:
    n = math.prod(meta["shape"])
    enc = meta["encoding"]
    if enc == "dense":
        return bitpack.from_twos(bitpack.unpack_uint(blob, n, bits), bits)
    if enc == "arith":
        if len(blob) != meta["bytes"]:
            raise FormatError(f"{where}: {len(blob)} arithmetic-coded bytes, header says "
                              f"{meta['bytes']}")
        return arith.decode_ints(blob, n, meta["nnz"], bits, f"{where}: {meta['name']}")
    out = np.zeros(n, dtype=np.int64)
    if enc == "bitmap":
        head = bitpack.packed_size(n, 1)
        octets = np.frombuffer(blob[:head], np.uint8)
        if n % 8 and int(octets[-1]) >> (n % 8):
            raise FormatError(f"{where}: non-zero padding bits after the bitmap")
        mask = np.unpackbits(octets, count=n, bitorder="little").astype(bool)
        if int(mask.sum()) != meta["nnz"]:
            raise FormatError(f"{where}: bitmap marks {int(mask.sum())} non-zeros, header says "
                              f"nnz={meta['nnz']}")
        values = bitpack.from_twos(bitpack.unpack_uint(blob[head:], meta["nnz"], bits), bits)
        if (values == 0).any():
            raise FormatError(f"{where}: bitmap marks a position whose value is zero")
        out[mask] = values
        return out
    m, k = meta["entries"], meta["index_bits"]
    head = bitpack.packed_size(m, k)
    runs = bitpack.unpack_uint(blob[:head], m, k).astype(np.int64)
    values = bitpack.from_twos(bitpack.unpack_uint(blob[head:], m, bits), bits)
    if m == 0:
        return out
    positions = np.cumsum(runs + 1) - 1  # strictly increasing
    if positions[-1] >= n:
        raise FormatError(f"{where}: relative indices run to position {int(positions[-1])} "
                          f"past the tensor's {n} elements")
    zero = values == 0
    if zero[-1] or (runs[zero] != (1 << k) - 1).any():
        raise FormatError(f"{where}: a zero-valued entry is not a filler (run {(1 << k) - 1})")
    if m - int(zero.sum()) != meta["nnz"]:
        raise FormatError(f"{where}: {m - int(zero.sum())} non-zero entries, header says "
                          f"nnz={meta['nnz']}")
    out[positions] = values
    return out
