"""Reproducible batch order: the same global batches for any world size, any resume point."""

from __future__ import annotations

import math

import torch
from torch.utils.data import DistributedSampler, TensorDataset

from kwh.errors import KwhError

__all__ = ["BatchOrder"]


class BatchOrder:
    """Batches of one rank, indexed by (epoch, step), from a seeded DistributedSampler.

    The sampler permutes all N examples with a generator seeded by seed + epoch; rank r takes
    positions r, r + W, ... of it, so local batch k of every rank together is exactly global
    batch k (positions kB .. (k+1)B - 1) whatever the world size W, for B divisible by W.
    """

    def __init__(self, dataset: TensorDataset, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1):
        if batch_size % world_size:
            raise KwhError(f"batch_size {batch_size} is not divisible by the {world_size} "
                           f"processes; choose a multiple of {world_size}")
        self.x, self.y = dataset.tensors[:2]
        self.local_batch = batch_size // world_size
        self.sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank,
                                          shuffle=True, seed=seed, drop_last=False)
        self.steps_per_epoch = math.ceil(self.sampler.num_samples / self.local_batch)
        self._epoch, self._order = None, None

    def _indices(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            self.sampler.set_epoch(epoch)
            self._order = torch.tensor(list(iter(self.sampler)), dtype=torch.long)
            self._epoch = epoch
        return self._order

    def batch(self, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, labels) of this rank's batch ``step`` of ``epoch``."""
        idx = self._indices(epoch)[step * self.local_batch:(step + 1) * self.local_batch]
        return self.x[idx], self.y[idx]
