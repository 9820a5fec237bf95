"""Adaptive binary arithmetic coding of a tensor's integers (the ``arith`` encodings).

A compressed model's weights are few, small integers at scattered positions; packed at a fixed
width they take ``bits`` bits per value and a run-length per non-zero. Their distributions are
far from uniform (small magnitudes and short runs dominate), which zstd cannot exploit in
sections of a few hundred bytes. This module codes them with a binary range coder (the LZMA
kind: 32-bit range, 11-bit probabilities, each updated by 1/32 of its error after every bit)
over a fixed binarization, so the code adapts to each tensor without storing a table:

- for each non-zero, in row-major order: the zeros skipped before it, g >= 0, as g + 1 in
  Elias-gamma form (its bit length L in unary, one adaptive probability per unary position;
  then the L - 1 bits below its leading one, the first two adaptive per (L, position), the
  rest at probability 1/2);
- its sign (one adaptive probability), then its magnitude m >= 1 in the same Elias-gamma form
  (separate probabilities).

The number of non-zeros comes from the tensor's description, so the stream needs no end marker.
The final flush writes only the bytes needed: the decoder reads missing bytes past the end as
zero (at most four) and refuses a stream with bytes left over.

Decoding is a Python loop over the non-zeros, so its time is bounded by the stream's length,
which the file stores as it is (a section holding such a stream is never zstd-compressed): a
tensor description may declare at most ``MAX_NNZ_PER_BYTE`` non-zeros per stream byte (plus
``MAX_NNZ_SLACK``) and at most ``MAX_CODED_NNZ`` in all. A real tensor needs a few bits per
non-zero; only a nearly constant one exceeds the per-byte limit (a saturated probability costs
~0.02 bits a decision), and it is then stored packed instead.
"""

from __future__ import annotations

import numpy as np

from kwh.errors import FormatError

__all__ = ["MAX_NNZ_PER_BYTE", "MAX_NNZ_SLACK", "MAX_CODED_NNZ", "nnz_allowed", "encode_ints",
           "decode_ints"]

MAX_NNZ_PER_BYTE = 64  # non-zeros a stream may declare per stored byte (bounds decoding time)
MAX_NNZ_SLACK = 64
MAX_CODED_NNZ = 1 << 18  # non-zeros of one coded tensor, at most (decoding them: ~2 s on one core)

_PROB_BITS = 11
_ONE = 1 << _PROB_BITS
_MOVE = 5
_TOP = 1 << 24
_MASK32 = 0xFFFFFFFF
_ADAPTIVE_MANTISSA = 2  # mantissa bits below the leading one with their own probabilities
_MAX_LEN = 64  # Elias-gamma lengths (bit lengths of g + 1 and of m) the models make room for


class _Model:
    """The adaptive probabilities (of a 0 bit) of one stream, all starting at 1/2."""

    def __init__(self) -> None:
        self.gap_len = [_ONE // 2] * _MAX_LEN
        self.gap_bits = [_ONE // 2] * ((_MAX_LEN + 1) * _ADAPTIVE_MANTISSA)
        self.sign = [_ONE // 2]
        self.mag_len = [_ONE // 2] * _MAX_LEN
        self.mag_bits = [_ONE // 2] * ((_MAX_LEN + 1) * _ADAPTIVE_MANTISSA)


class _Encoder:
    def __init__(self) -> None:
        self.low = 0
        self.range = _MASK32
        self.cache = 0
        self.pending = 1  # bytes not yet written: the cache and the 0xFF bytes after it
        self.out = bytearray()

    def _shift(self) -> None:
        if self.low < 0xFF000000 or self.low > _MASK32:
            carry = self.low >> 32
            byte = self.cache
            while self.pending:
                self.out.append((byte + carry) & 0xFF)
                byte = 0xFF
                self.pending -= 1
            self.cache = (self.low >> 24) & 0xFF
        self.pending += 1
        self.low = (self.low & 0x00FFFFFF) << 8

    def bit(self, probs: list[int], i: int, bit: int) -> None:
        p = probs[i]
        bound = (self.range >> _PROB_BITS) * p
        if bit:
            self.low += bound
            self.range -= bound
            probs[i] = p - (p >> _MOVE)
        else:
            self.range = bound
            probs[i] = p + ((_ONE - p) >> _MOVE)
        self._normalize()

    def direct(self, bit: int) -> None:
        self.range >>= 1
        if bit:
            self.low += self.range
        self._normalize()

    def _normalize(self) -> None:
        while self.range < _TOP:
            self.range <<= 8
            self._shift()

    def finish(self) -> bytes:
        # the value in [low, low + range) with the most trailing zero bits: the decoder reads
        # the bytes the flush leaves out as zeros
        top = self.low + self.range - 1
        for k in range(32, -1, -1):
            v = ((self.low + (1 << k) - 1) >> k) << k
            if v <= top:
                break
        self.low = v
        for _ in range(5):
            self._shift()
        if self.out[0] != 0:  # pragma: no cover - the range coder's invariant
            raise AssertionError("the range coder's first byte is not zero")
        body = bytes(self.out[1:])  # the first byte is always 0: not stored
        trailing = 0
        while trailing < min(4, len(body)) and body[-1 - trailing] == 0:
            trailing += 1
        return body[:len(body) - trailing]


class _Decoder:
    def __init__(self, data: bytes, where: str) -> None:
        self.data = data
        self.pos = 0
        self.padded = 0
        self.where = where
        self.range = _MASK32
        self.code = 0
        for _ in range(4):
            self.code = (self.code << 8) | self._byte()
        if self.code >= self.range:
            raise FormatError(f"{where}: arithmetic-coded data is corrupt (its first bytes are "
                              "out of range)")

    def _byte(self) -> int:
        if self.pos < len(self.data):
            self.pos += 1
            return self.data[self.pos - 1]
        self.padded += 1
        if self.padded > 4:
            raise FormatError(f"{self.where}: arithmetic-coded data ends early")
        return 0

    def bit(self, probs: list[int], i: int) -> int:
        p = probs[i]
        bound = (self.range >> _PROB_BITS) * p
        if self.code < bound:
            self.range = bound
            probs[i] = p + ((_ONE - p) >> _MOVE)
            out = 0
        else:
            self.code -= bound
            self.range -= bound
            probs[i] = p - (p >> _MOVE)
            out = 1
        self._normalize()
        return out

    def direct(self) -> int:
        self.range >>= 1
        out = int(self.code >= self.range)
        if out:
            self.code -= self.range
        self._normalize()
        return out

    def _normalize(self) -> None:
        while self.range < _TOP:
            self.range <<= 8
            self.code = ((self.code << 8) | self._byte()) & _MASK32

    def end(self) -> None:
        if self.pos != len(self.data):
            raise FormatError(f"{self.where}: {len(self.data) - self.pos} bytes left over after "
                              "the arithmetic-coded values")


def _put_gamma(enc: _Encoder, lens: list[int], bits: list[int], value: int, max_len: int) -> None:
    """value >= 1 of at most ``max_len`` bits: its length in unary, then its lower bits."""
    n = value.bit_length()
    for j in range(1, n):
        enc.bit(lens, j - 1, 1)
    if n < max_len:
        enc.bit(lens, n - 1, 0)
    for j in range(n - 2, -1, -1):
        b = (value >> j) & 1
        k = n - 2 - j
        if k < _ADAPTIVE_MANTISSA:
            enc.bit(bits, n * _ADAPTIVE_MANTISSA + k, b)
        else:
            enc.direct(b)


def _get_gamma(dec: _Decoder, lens: list[int], bits: list[int], max_len: int) -> int:
    n = 1
    while n < max_len and dec.bit(lens, n - 1):
        n += 1
    value = 1
    for k in range(n - 1):
        if k < _ADAPTIVE_MANTISSA:
            b = dec.bit(bits, n * _ADAPTIVE_MANTISSA + k)
        else:
            b = dec.direct()
        value = (value << 1) | b
    return value


def nnz_allowed(nnz: int, stored: int) -> bool:
    """Whether a stream of ``stored`` bytes may declare ``nnz`` non-zeros."""
    return nnz <= MAX_NNZ_PER_BYTE * stored + MAX_NNZ_SLACK


def _limits(n: int, bits: int) -> tuple[int, int]:
    if not 1 <= bits <= 32 or n < 0:
        raise ValueError(f"arith coding takes 1..32 bits and n >= 0, got bits={bits}, n={n}")
    return max(1, n.bit_length()), bits  # bit lengths of g + 1 <= n and of m <= 2**(bits-1)


def encode_ints(q: np.ndarray, bits: int) -> bytes:
    """The arithmetic code of integers ``q`` (flat, each in the ``bits``-bit two's-complement
    range)."""
    flat = np.asarray(q, dtype=np.int64).reshape(-1)
    gap_max, mag_max = _limits(flat.size, bits)
    idx = np.flatnonzero(flat)
    gaps = (np.diff(idx, prepend=-1) - 1).tolist()
    values = flat[idx].tolist()
    model, enc = _Model(), _Encoder()
    for g, v in zip(gaps, values):
        _put_gamma(enc, model.gap_len, model.gap_bits, g + 1, gap_max)
        enc.bit(model.sign, 0, 1 if v < 0 else 0)
        _put_gamma(enc, model.mag_len, model.mag_bits, abs(v), mag_max)
    return enc.finish()


def decode_ints(blob: bytes | memoryview, n: int, nnz: int, bits: int, where: str) -> np.ndarray:
    """The ``n`` integers (int64) of an arith-coded stream holding ``nnz`` non-zeros; raises
    FormatError for a stream that does not decode to ``nnz`` in-range non-zeros at positions
    below ``n`` using exactly its bytes (some streams :func:`encode_ints` would not write
    decode, e.g. with other trailing bits)."""
    gap_max, mag_max = _limits(n, bits)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    out = np.zeros(n, dtype=np.int64)
    if nnz == 0:
        if len(blob):
            raise FormatError(f"{where}: an all-zero tensor has no arithmetic-coded bytes")
        return out
    model, dec = _Model(), _Decoder(bytes(blob), where)
    pos = -1
    for _ in range(nnz):
        pos += _get_gamma(dec, model.gap_len, model.gap_bits, gap_max)
        if pos >= n:
            raise FormatError(f"{where}: arithmetic-coded positions run past the tensor's {n} "
                              "elements")
        negative = dec.bit(model.sign, 0)
        m = _get_gamma(dec, model.mag_len, model.mag_bits, mag_max)
        v = -m if negative else m
        if not lo <= v <= hi:
            raise FormatError(f"{where}: an arithmetic-coded value {v} is outside the "
                              f"{bits}-bit range [{lo}, {hi}]")
        out[pos] = v
    dec.end()
    return out
