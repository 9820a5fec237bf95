"""Vectorised bit packing of unsigned and two's-complement integers at any width from 1 to 32.

The bit stream is little-endian at both levels: value i occupies stream bits [i*w, (i+1)*w),
its least significant bit first, and stream bit j is bit (j % 8) of byte j // 8. Unused bits of
the last byte are zero. Work is done in chunks of whole bytes so memory stays bounded.
"""

from __future__ import annotations

import numpy as np

__all__ = ["packed_size", "pack_uint", "unpack_uint", "to_twos", "from_twos", "int_range"]

_CHUNK = 1 << 16  # values per chunk; a multiple of 8, so every chunk starts on a byte boundary


def packed_size(count: int, bits: int) -> int:
    """Bytes needed for ``count`` values of ``bits`` bits each."""
    return (count * bits + 7) // 8


def int_range(bits: int) -> tuple[int, int]:
    """The closed range of a ``bits``-bit two's-complement integer."""
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def to_twos(values: np.ndarray, bits: int) -> np.ndarray:
    """Signed integers (already in range) -> their ``bits``-bit two's-complement codes (uint32)."""
    return (values.astype(np.int64) & ((1 << bits) - 1)).astype(np.uint32)


def from_twos(codes: np.ndarray, bits: int) -> np.ndarray:
    """``bits``-bit two's-complement codes (uint32) -> signed integers (int64): sign extension."""
    half = 1 << (bits - 1)
    return (codes.astype(np.int64) ^ half) - half


def pack_uint(values: np.ndarray, bits: int) -> bytes:
    """Pack unsigned integers, each < 2**bits, into a little-endian bit stream."""
    if not 1 <= bits <= 32:
        raise ValueError(f"bit width {bits} is out of range; use 1..32")
    flat = np.ascontiguousarray(values, dtype=np.uint32).reshape(-1)
    out = np.zeros(packed_size(flat.size, bits), dtype=np.uint8)
    for start in range(0, flat.size, _CHUNK):
        octets = flat[start:start + _CHUNK].astype("<u4").view(np.uint8).reshape(-1, 4)  # (n, 4)
        bitmat = np.unpackbits(octets, axis=1, bitorder="little")[:, :bits]  # (n, bits), LSB first
        packed = np.packbits(bitmat.reshape(-1), bitorder="little")
        offset = start * bits // 8
        out[offset:offset + packed.size] = packed
    return out.tobytes()


def unpack_uint(data: bytes | memoryview, count: int, bits: int) -> np.ndarray:
    """Unpack ``count`` unsigned ``bits``-bit integers (uint32); the inverse of ``pack_uint``.

    Raises ValueError when ``data`` has the wrong length or a non-zero padding bit.
    """
    if not 1 <= bits <= 32:
        raise ValueError(f"bit width {bits} is out of range; use 1..32")
    buf = np.frombuffer(data, dtype=np.uint8)
    if buf.size != packed_size(count, bits):
        raise ValueError(f"packed data has {buf.size} bytes, expected "
                         f"{packed_size(count, bits)} for {count} values of {bits} bits")
    tail = (count * bits) % 8
    if tail and int(buf[-1]) >> tail:
        raise ValueError("non-zero padding bits after the last packed value")
    out = np.empty(count, dtype=np.uint32)
    wide = np.zeros((min(count, _CHUNK), 32), dtype=np.uint8)  # (n, 32) bits of each uint32
    for start in range(0, count, _CHUNK):
        stop = min(count, start + _CHUNK)
        lo, hi = start * bits // 8, packed_size(stop, bits)
        bitmat = np.unpackbits(buf[lo:hi], count=(stop - start) * bits, bitorder="little")
        wide[:stop - start, :bits] = bitmat.reshape(stop - start, bits)  # (n, bits), LSB first
        octets = np.packbits(wide[:stop - start], axis=1, bitorder="little")  # (n, 4)
        out[start:stop] = octets.view("<u4").reshape(-1)
    return out
