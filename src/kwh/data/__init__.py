"""Data sets for kwh: MNIST-format IDX files, CIFAR-10 binary batches, temporal sequences.

An explicit root argument (CLI --data-dir) is the only folder searched: files missing there are
an error. Without one, files are searched in $KWH_DATA, /usr/share/datasets, then the user cache
($XDG_CACHE_HOME/kwh or ~/.cache/kwh), and downloaded into the cache from the official mirrors
with checksum verification when missing. Every problem is a DataError.
"""

from __future__ import annotations

from .cifar import load_cifar10, load_cifar_arrays, read_cifar_bin
from .errors import DataError
from .idx import decode_idx, read_idx
from .loaders import DATASETS, batch_loader, get_dataset, input_normalization, make_loaders
from .locate import cache_root, search_dirs
from .mnist import clear_cache, load_idx_arrays, load_mnist, normalization
from .sequences import SEQUENCE_KINDS, moving_digits, sequence_dataset, temporal_mnist

__all__ = [
    # errors
    "DataError",
    # data sets as tensors
    "load_mnist", "load_cifar10", "get_dataset", "make_loaders", "batch_loader", "DATASETS",
    "normalization", "input_normalization",
    # raw arrays and file formats
    "load_idx_arrays", "load_cifar_arrays", "read_idx", "decode_idx", "read_cifar_bin",
    # where files live
    "search_dirs", "cache_root", "clear_cache",
    # temporal sequences
    "moving_digits", "temporal_mnist", "sequence_dataset", "SEQUENCE_KINDS",
]
