"""Data sets by name and seeded DataLoaders that index whole batches at once."""

from __future__ import annotations

import os

import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler
from torch.utils.data import Dataset, TensorDataset

from .cifar import MEAN as CIFAR_MEAN
from .cifar import STD as CIFAR_STD
from .cifar import load_cifar10
from .errors import DataError
from .mnist import load_mnist, normalization

__all__ = ["DATASETS", "get_dataset", "batch_loader", "make_loaders"]

DATASETS = ("mnist", "fashion-mnist", "cifar10")


def get_dataset(name: str, split: str = "train", root: str | os.PathLike | None = None, *,
                normalize: bool = True, limit: int | None = None,
                download: bool = True) -> TensorDataset:
    """A data set by name: (images float32 (N, C, H, W), labels int64 (N,))."""
    kwargs = dict(normalize=normalize, limit=limit, download=download)
    if name in ("mnist", "fashion-mnist"):
        return load_mnist(split, root, name, **kwargs)
    if name == "cifar10":
        return load_cifar10(split, root, **kwargs)
    raise DataError(f"Unknown data set {name!r}; choose one of: {', '.join(DATASETS)}")


def input_normalization(name: str) -> dict[str, list[float]]:
    """How ``get_dataset(name)`` normalizes its pixels in [0, 1]: {"mean": [...], "std": [...]}
    per input channel (what a .kwh file records as the input normalization of its model)."""
    if name in ("mnist", "fashion-mnist"):
        mean, std = normalization(name)
        return {"mean": [float(mean)], "std": [float(std)]}
    if name == "cifar10":
        return {"mean": [float(v) for v in CIFAR_MEAN], "std": [float(v) for v in CIFAR_STD]}
    raise DataError(f"Unknown data set {name!r}; choose one of: {', '.join(DATASETS)}")


def batch_loader(dataset: Dataset, batch_size: int, shuffle: bool = False,
                 seed: int = 0) -> DataLoader:
    """A DataLoader that takes each batch with one tensor index (no per-example collation)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size={batch_size!r} is invalid; use a positive integer")
    if shuffle:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    else:
        sampler = SequentialSampler(dataset)
    batches = BatchSampler(sampler, batch_size, drop_last=False)
    # batch_size=None: each index the sampler yields is a whole list, so a TensorDataset
    # answers with one gather per tensor instead of batch_size calls and a torch.stack.
    return DataLoader(dataset, sampler=batches, batch_size=None, num_workers=0)


def make_loaders(name: str, batch_size: int, root: str | os.PathLike | None = None,
                 limit_train: int | None = None, limit_test: int | None = None,
                 seed: int = 0, *, normalize: bool = True, download: bool = True,
                 test_batch_size: int | None = None) -> tuple[DataLoader, DataLoader]:
    """(train_loader, test_loader): train shuffled by a generator seeded with seed."""
    train = get_dataset(name, "train", root, normalize=normalize, limit=limit_train,
                        download=download)
    test = get_dataset(name, "test", root, normalize=normalize, limit=limit_test,
                       download=download)
    return (batch_loader(train, batch_size, shuffle=True, seed=seed),
            batch_loader(test, test_batch_size or batch_size))
