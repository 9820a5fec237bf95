"""Wall-clock timing: warm-up runs, then the median of repeated runs (robust to stray spikes)."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch
from torch import Tensor, nn

__all__ = ["median_ms", "layer_ms"]


def median_ms(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1,
              progress: Callable[[int, int], None] | None = None) -> float:
    """Median milliseconds of ``fn()`` over ``repeats`` runs after ``warmup`` untimed runs.

    progress(done, total) is called after every run, warm-up included.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats={repeats} and warmup={warmup} are invalid; give repeats >= 1 "
                         "and warmup >= 0")
    total = warmup + repeats
    for i in range(warmup):
        fn()
        if progress is not None:
            progress(i + 1, total)
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if progress is not None:
            progress(warmup + i + 1, total)
    return 1e3 * statistics.median(times)


def layer_ms(layer: nn.Module, x: Tensor, repeats: int = 5, warmup: int = 1) -> float:
    """Median milliseconds of one forward of ``layer`` on ``x`` without autograd."""
    with torch.inference_mode():
        return median_ms(lambda: layer(x), repeats, warmup)
