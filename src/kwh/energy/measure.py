"""Measured energy of many inferences in one window, idle power of the same session subtracted.

    total    = E(counter, end of window) - E(counter, start of window)
    dynamic  = total - P_idle * window,   P_idle from a window of sleeping just before

Counters: RAPL packages for CPU inference, NVML for a GPU. Where a machine has neither, the
result says why and carries no number.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from .nvml import find_nvml
from .rapl import RAPL_ROOT, find_rapl

__all__ = ["Measurement", "Unavailable", "find_counter", "measure", "measure_model"]


@dataclass
class Measurement:
    """Energy of ``inferences`` inferences over ``window_s`` seconds on one counter."""

    counter: str
    window_s: float
    inferences: int
    total_j: float
    idle_w: float
    idle_window_s: float

    @property
    def dynamic_j(self) -> float:
        """Energy above idle: total minus idle power times the window."""
        return self.total_j - self.idle_w * self.window_s

    @property
    def total_per_inference_j(self) -> float:
        return self.total_j / self.inferences

    @property
    def dynamic_per_inference_j(self) -> float:
        return self.dynamic_j / self.inferences

    def to_dict(self) -> dict:
        return {"available": True, "counter": self.counter, "window_s": self.window_s,
                "inferences": self.inferences, "total_j": self.total_j,
                "idle_w": self.idle_w, "idle_window_s": self.idle_window_s,
                "dynamic_j": self.dynamic_j,
                "total_per_inference_j": self.total_per_inference_j,
                "dynamic_per_inference_j": self.dynamic_per_inference_j}


@dataclass
class Unavailable:
    """No energy counter could be read; ``reasons`` says why, for each kind tried."""

    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"available": False, "reasons": list(self.reasons)}

    def __str__(self) -> str:
        return "not measured: " + "; ".join(self.reasons)


def find_counter(device: str | torch.device = "cpu", rapl_root=RAPL_ROOT, nvml=None):
    """RAPL for a CPU device, NVML for ``cuda:i``; returns (counter or None, reasons)."""
    device = torch.device(device)
    if device.type == "cuda":
        return find_nvml(device.index or 0, nvml)
    if device.type == "cpu":
        return find_rapl(rapl_root)
    return None, [f"no energy counter for device type {device.type!r} (cpu: RAPL, cuda: NVML)"]


def measure(step: Callable[[], int], counter, *, window_s: float = 2.0,
            idle_s: float | None = None, clock: Callable[[], float] = time.perf_counter,
            sleep: Callable[[float], None] = time.sleep, poll_s: float = 0.1) -> Measurement:
    """Idle window, one warm-up step, then ``step()`` (returns inferences done) until the
    window is full; the counter is polled between steps (RAPL wrap-around needs it)."""
    if window_s <= 0:
        raise ValueError(f"window_s must be positive, got {window_s!r}")
    idle_s = window_s if idle_s is None else idle_s
    t0, e0 = clock(), counter.read_j()
    while clock() - t0 < idle_s:
        sleep(poll_s)
        counter.read_j()
    idle_t, idle_e = clock() - t0, counter.read_j() - e0
    idle_w = idle_e / idle_t if idle_t > 0 else 0.0
    step()  # warm-up: allocations, kernels, caches
    n, t1, e1 = 0, clock(), counter.read_j()
    while True:
        n += step()
        e = counter.read_j()
        if clock() - t1 >= window_s:
            break
    if n <= 0:
        raise ValueError("the measured step reported no inferences; it must return how many "
                         "inputs it processed")
    return Measurement(counter.name, clock() - t1, n, e - e1, idle_w, idle_t)


def measure_model(model: nn.Module, x: torch.Tensor, *, window_s: float = 2.0,
                  rapl_root=RAPL_ROOT, nvml=None) -> Measurement | Unavailable:
    """Measure inference of ``model`` on batch ``x`` (on the model's device), or say why not."""
    device = x.device
    counter, reasons = find_counter(device, rapl_root, nvml)
    if counter is None:
        return Unavailable(reasons)
    model.eval()

    @torch.no_grad()
    def step() -> int:
        model(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return x.shape[0]

    return measure(step, counter, window_s=window_s)
