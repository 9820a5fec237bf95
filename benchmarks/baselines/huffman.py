"""Canonical Huffman coding (Huffman 1952) of small-alphabet integer streams: lengths, codes, bits."""

from __future__ import annotations

import heapq
from collections import Counter

import numpy as np

MAX_CODE_BITS = 32  # lengths are stored in one byte each; streams here never get near this


def code_lengths(symbols: np.ndarray) -> dict[int, int]:
    """Huffman code length of each distinct symbol: merge the two lightest trees until one is left."""
    counts = Counter(int(s) for s in np.asarray(symbols).reshape(-1))
    if not counts:
        return {}
    if len(counts) == 1:
        return {next(iter(counts)): 1}  # one symbol still needs one bit per occurrence
    # heap of (weight, tie-break, symbols in the tree); each merge deepens every leaf by one
    heap = [(c, s, [s]) for s, c in counts.items()]
    heapq.heapify(heap)
    depth = dict.fromkeys(counts, 0)
    while len(heap) > 1:
        w1, t1, a = heapq.heappop(heap)
        w2, t2, b = heapq.heappop(heap)
        for s in a + b:
            depth[s] += 1
        heapq.heappush(heap, (w1 + w2, min(t1, t2), a + b))
    if max(depth.values()) > MAX_CODE_BITS:
        raise ValueError(f"Huffman code longer than {MAX_CODE_BITS} bits; stream too skewed")
    return depth


def canonical_codes(lengths: dict[int, int]) -> dict[int, tuple[int, int]]:
    """Canonical codes {symbol: (code, length)}: sorted by (length, symbol), counting up."""
    codes, code, prev = {}, 0, 0
    for s, n in sorted(lengths.items(), key=lambda kv: (kv[1], kv[0])):
        code <<= n - prev
        codes[s] = (code, n)
        code += 1
        prev = n
    return codes


def encode(symbols: np.ndarray, lengths: dict[int, int]) -> bytes:
    """The bit stream of ``symbols`` (MSB first, zero-padded to whole bytes)."""
    codes = canonical_codes(lengths)
    text = {s: format(c, f"0{n}b") for s, (c, n) in codes.items()}
    bits = "".join(text[int(s)] for s in np.asarray(symbols).reshape(-1))
    if not bits:
        return b""
    bits += "0" * (-len(bits) % 8)
    return int(bits, 2).to_bytes(len(bits) // 8, "big")


def decode(data: bytes, lengths: dict[int, int], count: int) -> np.ndarray:
    """Inverse of ``encode``: the first ``count`` symbols of the stream."""
    table = {(n, c): s for s, (c, n) in canonical_codes(lengths).items()}
    out, code, n = [], 0, 0
    for byte in data:
        for k in range(7, -1, -1):
            code, n = (code << 1) | ((byte >> k) & 1), n + 1
            s = table.get((n, code))
            if s is not None:
                out.append(s)
                code, n = 0, 0
                if len(out) == count:
                    return np.array(out, dtype=np.int64)
    if len(out) != count:
        raise ValueError(f"Huffman stream holds {len(out)} symbols, expected {count}")
    return np.array(out, dtype=np.int64)


def stream_bits(symbols: np.ndarray, lengths: dict[int, int]) -> int:
    """Number of bits ``encode`` writes before padding."""
    counts = Counter(int(s) for s in np.asarray(symbols).reshape(-1))
    return sum(c * lengths[s] for s, c in counts.items())
