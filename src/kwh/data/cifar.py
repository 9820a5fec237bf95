"""CIFAR-10 in its binary format: find, download (MD5-checked tarball), read and normalise.

Format (Krizhevsky, https://www.cs.toronto.edu/~kriz/cifar.html): each record is one label
byte then 3072 pixel bytes (1024 red, 1024 green, 1024 blue, rows of 32); 10000 per file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .errors import DataError
from .locate import (atomic_write, cache_root, fetch, missing_error,
                     missing_in_root_error, search_dirs)
from .mnist import check_limit, to_unit_float
from .registry import SPLITS

__all__ = ["read_cifar_bin", "load_cifar_arrays", "load_cifar10", "FOLDER", "URL", "MD5",
           "MEAN", "STD"]

FOLDER = "cifar-10-batches-bin"
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILES = ("test_batch.bin",)
RECORD = 1 + 3 * 32 * 32
MAX_RECORDS = 10000  # per file, as released
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
MAX_DOWNLOAD = 256 << 20  # the tarball is 170,052,171 bytes
# Per-channel mean and std of the 50,000 train images in [0, 1] (the widely quoted figures;
# CIFAR-10 is not on this machine, so they are not re-measured here).
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


def read_cifar_bin(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch file: images uint8 (N, 3, 32, 32), labels uint8 (N,)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size == 0 or size % RECORD or size > MAX_RECORDS * RECORD:
            raise DataError(f"{path}: {size} bytes is not a CIFAR-10 batch: need a positive "
                            f"multiple of {RECORD} bytes (1 label + 3072 pixels), at most "
                            f"{MAX_RECORDS} records; the file is truncated or not CIFAR-10")
        data = np.fromfile(path, np.uint8).reshape(-1, RECORD)  # (N, 3073)
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({e.strerror or e})") from e
    labels = data[:, 0].copy()
    if labels.max() > 9:
        raise DataError(f"{path}: label {int(labels.max())} out of range 0..9; not CIFAR-10")
    return data[:, 1:].reshape(-1, 3, 32, 32), labels


def _md5_check(path: Path) -> None:
    """Raise DataError unless path has the tarball's published MD5."""
    md5 = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            md5.update(chunk)
    if md5.hexdigest() != MD5:
        raise DataError(f"{path}: MD5 {md5.hexdigest()} does not match {MD5}")


def _extract(tar_path: Path, dest: Path) -> None:
    """Copy the batch files (only regular files, only known names) out of the tarball."""
    wanted = set(TRAIN_FILES + TEST_FILES)
    with tarfile.open(tar_path, "r:gz") as tar:
        for member in tar:
            name = PurePosixPath(member.name)
            if (member.isfile() and name.name in wanted and name.parent.name == FOLDER
                    and member.size <= MAX_RECORDS * RECORD):
                src = tar.extractfile(member)
                atomic_write(dest / name.name, lambda out, src=src: shutil.copyfileobj(src, out))


def _download(dirs: list[Path], missing: list[str], what: str) -> None:
    """Fetch and unpack the official tarball into the cache; DataError if that fails."""
    tar_path = cache_root() / "cifar-10-binary.tar.gz"
    try:
        fetch([URL], tar_path, _md5_check, MAX_DOWNLOAD)
        _extract(tar_path, cache_root() / FOLDER)
    except (DataError, OSError, tarfile.TarError) as e:
        raise missing_error(what, missing, dirs, FOLDER, f"download failed: {e}") from e
    tar_path.unlink(missing_ok=True)


def load_cifar_arrays(split: str = "train", root: str | os.PathLike | None = None,
                      download: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (N, 3, 32, 32) and labels uint8 (N,) of a split, all batch files joined."""
    if split not in SPLITS:
        raise DataError(f"Unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    names = TRAIN_FILES if split == "train" else TEST_FILES
    dirs = search_dirs(FOLDER, root)
    what = f"cifar10 {split} set"

    def find(name: str) -> Path | None:
        return next((d / name for d in dirs if (d / name).is_file()), None)

    missing = [n for n in names if find(n) is None]
    if missing and root is not None:  # an explicit folder is used alone, never downloaded into
        raise missing_in_root_error(what, missing, root, FOLDER)
    if missing and not download:
        raise missing_error(what, missing, dirs, FOLDER, "downloads are off")
    if missing:
        _download(dirs, missing, what)
        if still := [n for n in names if find(n) is None]:
            raise missing_error(what, still, dirs, FOLDER, "the downloaded archive lacks them")
    parts = [read_cifar_bin(find(n)) for n in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def load_cifar10(split: str = "train", root: str | os.PathLike | None = None, *,
                 normalize: bool = True, limit: int | None = None,
                 download: bool = True) -> TensorDataset:
    """CIFAR-10 as (images float32 (N, 3, 32, 32), labels int64 (N,))."""
    images, labels = load_cifar_arrays(split, root, download)
    n = check_limit(limit, len(labels), f"cifar10 {split}")
    x = to_unit_float(images[:n])  # (N, 3, 32, 32)
    if normalize:
        x.sub_(torch.tensor(MEAN).view(1, 3, 1, 1)).div_(torch.tensor(STD).view(1, 3, 1, 1))
    return TensorDataset(x, torch.from_numpy(labels[:n].astype(np.int64)))  # (N,)
