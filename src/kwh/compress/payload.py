"""Stand-in for the entropy-coded weight payload, used for "maximum compression" until a codec answers.

Louizos et al. 2017 count maximum compression with the remaining sparsity and entropy coding
(relative-index CSR + Huffman, as Deep Compression). The stand-in builds a real byte string
and measures it: per layer, the fixed-point integers of the nonzero weights (row-major) at the
smallest byte width that holds them, then the gaps between nonzero positions (zeros skipped)
at the smallest unsigned width that holds them; all layers concatenated and compressed with
zstd level 19. Weights only: biases (float32) and headers are not counted, as in the paper.
"""

from __future__ import annotations

import numpy as np
import torch
import zstandard
from torch import Tensor

STANDIN = "stand-in: zstd-19 of relative-index CSR of the weight integers (weights only)"


def _narrowest(a: np.ndarray, signed: bool) -> np.ndarray:
    widths = (np.int8, np.int16, np.int32, np.int64) if signed else (
        np.uint8, np.uint16, np.uint32, np.uint64)
    for dt in widths:
        info = np.iinfo(dt)
        if a.size == 0 or (a.min() >= info.min and a.max() <= info.max):
            return a.astype(dt).astype(np.dtype(dt).newbyteorder("<"))
    raise ValueError("integer out of int64 range")


def csr_bytes(ints: Tensor) -> bytes:
    """Relative-index CSR of one layer's integers: nonzero values, then the gaps before each."""
    flat = ints.detach().reshape(-1).to(torch.int64).cpu().numpy()
    pos = np.flatnonzero(flat)  # (nnz,)
    gaps = np.diff(pos, prepend=-1) - 1  # zeros skipped before each nonzero
    return _narrowest(flat[pos], True).tobytes() + _narrowest(gaps, False).tobytes()


def standin_payload_bytes(layer_ints: list[Tensor]) -> int:
    """Bytes of the stand-in payload for the weight integers of every layer."""
    blob = b"".join(csr_bytes(q) for q in layer_ints)
    return len(zstandard.ZstdCompressor(level=19).compress(blob))
