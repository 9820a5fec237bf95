"""MNIST and Fashion-MNIST: find, verify (SHA-256), download if needed, and load as tensors."""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .errors import DataError
from .idx import decode_idx, read_stored
from .locate import cache_root, fetch, missing_error, missing_in_root_error, search_dirs
from .registry import IdxFile, idx_dataset

__all__ = ["load_mnist", "load_idx_arrays", "normalization", "check_limit", "to_unit_float",
           "clear_cache"]

MAX_DOWNLOAD = 64 << 20  # the largest original .gz is 9.9 MB
_CACHE: dict[tuple, np.ndarray] = {}  # verified arrays by (path, size, mtime, inode, digest)
_CACHE_MAX = 16


def clear_cache() -> None:
    """Forget the arrays verified so far in this process."""
    _CACHE.clear()


def _verify(path: Path, spec: IdxFile) -> np.ndarray:
    """Parse path and check its SHA-256 (of the .gz as published, or of the content)."""
    raw, content = read_stored(path)
    array = decode_idx(content, str(path))
    if hashlib.sha256(raw).hexdigest() == spec.sha256_gz:
        return array
    digest = hashlib.sha256(content).hexdigest()
    if digest != spec.sha256_raw:
        raise DataError(f"{path}: checksum mismatch: SHA-256 of the content is {digest}, "
                        f"expected {spec.sha256_raw} (or {spec.sha256_gz} for the .gz). The file "
                        f"is corrupt or belongs to another data set; delete or replace it.")
    return array


def _load_verified(path: Path, spec: IdxFile) -> np.ndarray:
    """_verify, remembered per process while the file's size and mtime stay the same."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino, spec.sha256_raw)
    if key not in _CACHE:
        array = _verify(path, spec)
        array.flags.writeable = False
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = array
    return _CACHE[key]


def _find(spec: IdxFile, dirs: list[Path], problems: list[str]) -> np.ndarray | None:
    """The first valid copy of spec (`.gz` or raw) in dirs; invalid ones go to problems."""
    for d in dirs:
        for path in (d / f"{spec.name}.gz", d / spec.name):
            if path.is_file():
                try:
                    return _load_verified(path, spec)
                except DataError as e:
                    problems.append(str(e))
    return None


def load_idx_arrays(name: str = "mnist", split: str = "train",
                    root: str | os.PathLike | None = None,
                    download: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Verified read-only arrays: images uint8 (N, 28, 28) and labels uint8 (N,)."""
    ds = idx_dataset(name)
    specs = ds.split_files(split)
    dirs = search_dirs(ds.folder, root)
    problems: dict[str, list[str]] = {s.name: [] for s in specs}
    found = [_find(s, dirs, problems[s.name]) for s in specs]
    missing = [s for s, a in zip(specs, found) if a is None]
    what = f"{name} {split} set"
    if bad := [s.name for s in missing if problems[s.name]]:  # found, but every copy was bad
        raise DataError(f"{what}: no valid copy of {', '.join(bad)}: "
                        + " | ".join(p for n in bad for p in problems[n]))
    if missing and root is not None:  # an explicit folder is used alone, never downloaded into
        raise missing_in_root_error(what, [f"{s.name}.gz" for s in missing], root, ds.folder)
    if missing and not download:
        raise missing_error(what, [f"{s.name}.gz" for s in missing], dirs, ds.folder,
                            "downloads are off")
    for spec in missing:
        dest = cache_root() / ds.folder / f"{spec.name}.gz"
        urls = [m + f"{spec.name}.gz" for m in ds.mirrors]
        try:
            fetch(urls, dest, lambda path, spec=spec: _verify(path, spec), MAX_DOWNLOAD)
        except DataError as e:
            raise missing_error(what, [f"{s.name}.gz" for s in missing], dirs, ds.folder,
                                str(e)) from e
        found[specs.index(spec)] = _load_verified(dest, spec)
    images, labels = found
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise DataError(f"{what}: images {images.shape} and labels {labels.shape} disagree")
    return images, labels


def normalization(name: str) -> tuple[float, float]:
    """(mean, std) of the train pixels in [0, 1] of an IDX data set."""
    ds = idx_dataset(name)
    return ds.mean, ds.std


def check_limit(limit: int | None, n: int, what: str) -> int:
    """Validate `limit` (first N examples) against the n available; return the count to keep."""
    if limit is None:
        return n
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= n:
        raise DataError(f"limit={limit!r} is invalid for {what}: use an integer from 1 to {n}, "
                        f"or None for all")
    return limit


def to_unit_float(images: np.ndarray) -> torch.Tensor:
    """uint8 pixels -> new float32 tensor in [0, 1] (the source array is never written)."""
    with warnings.catch_warnings():  # from_numpy warns on read-only arrays; .to() copies
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(images).to(torch.float32).div_(255.0)


def load_mnist(split: str = "train", root: str | os.PathLike | None = None,
               name: str = "mnist", *, normalize: bool = True, limit: int | None = None,
               download: bool = True) -> TensorDataset:
    """MNIST or Fashion-MNIST as (images float32 (N, 1, 28, 28), labels int64 (N,))."""
    images, labels = load_idx_arrays(name, split, root, download)
    n = check_limit(limit, len(labels), f"{name} {split}")
    x = to_unit_float(images[:n, None])  # (N, 1, 28, 28)
    if normalize:
        mean, std = normalization(name)
        x.sub_(mean).div_(std)
    y = torch.from_numpy(labels[:n].astype(np.int64))  # (N,)
    return TensorDataset(x, y)
