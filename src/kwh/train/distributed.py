"""torchrun integration: process group from the environment, rank-aware helpers, the device."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from kwh.errors import KwhError

__all__ = ["DistContext", "launched_by_torchrun", "resolve_device", "setup_distributed"]


def launched_by_torchrun() -> bool:
    """True when the environment names this process's rank and the world size (torchrun, env://)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' -> CUDA (this process's local GPU) if available, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise KwhError("device 'cuda' requested but CUDA is not available; use --device cpu")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device(name)


@dataclass
class DistContext:
    """Rank, world size and device of this process; collectives are no-ops on a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # we initialised the process group, so we tear it down

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is True on any rank (one all-reduce)."""
        if not self.distributed:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's copy of an equally shaped tensor, as CPU tensors in rank order."""
        if not self.distributed:
            return [t.cpu()]
        src = t.to(self.device)
        out = [torch.empty_like(src) for _ in range(self.world_size)]
        dist.all_gather(out, src)
        return [o.cpu() for o in out]

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def setup_distributed(device: str = "auto") -> DistContext:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA), or run alone.

    An already initialised group (the caller's own) is used as is and left open at the end.
    """
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        dev = resolve_device(device, local)
        return DistContext(rank, world, local, dev, owns_group=False)
    if not launched_by_torchrun():
        return DistContext(device=resolve_device(device, 0))
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError:
        raise KwhError(f"RANK={os.environ['RANK']!r}, WORLD_SIZE={os.environ['WORLD_SIZE']!r}: "
                       f"not integers; launch with torchrun") from None
    dev = resolve_device(device, local)
    if world == 1:
        return DistContext(rank, world, local, dev)
    if not dist.is_available():
        raise KwhError("this PyTorch build has no torch.distributed; run on a single process")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, init_method="env://")
    return DistContext(rank, world, local, dev, owns_group=True)
