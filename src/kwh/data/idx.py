"""Reader for the IDX format of MNIST and Fashion-MNIST, gzip-compressed or raw.

Format (LeCun et al., http://yann.lecun.com/exdb/mnist/): two zero bytes, a dtype code, the
number of dimensions, one big-endian uint32 per dimension, then the values in C order, big-endian.
"""

from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path

import numpy as np

from .errors import DataError

__all__ = ["decode_idx", "read_idx", "read_stored", "MAX_BYTES"]

MAX_BYTES = 1 << 30  # 1 GiB: refuse larger files (or gzip bombs) before reading them
MAX_NDIM = 4
GZIP_MAGIC = b"\x1f\x8b"
_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def decode_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parse uncompressed IDX bytes into an array in native byte order."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{source}: not an IDX file (magic number must start with two zero "
                        f"bytes, got {data[:4].hex() or 'an empty file'})")
    code, ndim = data[2], data[3]
    if code not in _DTYPES:
        valid = ", ".join(f"0x{c:02x}" for c in _DTYPES)
        raise DataError(f"{source}: unknown IDX dtype code 0x{code:02x}; valid codes: {valid}")
    if not 1 <= ndim <= MAX_NDIM:
        raise DataError(f"{source}: IDX file has {ndim} dimensions; expected 1 to {MAX_NDIM}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{source}: truncated IDX header ({len(data)} bytes, need {header})")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_DTYPES[code])
    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    have = len(data) - header
    if have < need:
        raise DataError(f"{source}: truncated IDX file: header says shape {shape} "
                        f"({need} data bytes) but only {have} bytes follow; download it again")
    if have > need:
        raise DataError(f"{source}: IDX file has {have - need} unexpected bytes after the "
                        f"{need} data bytes of shape {shape}")
    array = np.frombuffer(data, dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def gunzip(raw: bytes, source: str, max_bytes: int = MAX_BYTES) -> bytes:
    """Decompress gzip bytes, refusing output larger than max_bytes."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as f:
            data = f.read(max_bytes + 1)
    except EOFError as e:
        raise DataError(f"{source}: compressed data ends early (file truncated?); "
                        f"download it again") from e
    except (OSError, zlib.error) as e:
        raise DataError(f"{source}: corrupt gzip data ({e}); download it again") from e
    if len(data) > max_bytes:
        raise DataError(f"{source}: decompresses to more than {max_bytes} bytes; refusing it")
    return data


def read_stored(path: str | Path, max_bytes: int = MAX_BYTES) -> tuple[bytes, bytes]:
    """Return (bytes on disk, uncompressed content) of a gzip or raw file."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise DataError(f"{path}: file is {size} bytes, larger than the limit {max_bytes}")
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({e.strerror or e})") from e
    content = gunzip(raw, str(path), max_bytes) if raw[:2] == GZIP_MAGIC else raw
    return raw, content


def read_idx(path: str | Path, max_bytes: int = MAX_BYTES) -> np.ndarray:
    """Read an IDX file (gzip detected by its magic bytes, not its name) without checksums."""
    return decode_idx(read_stored(path, max_bytes)[1], str(path))
