"""Latency at batch 1 and throughput at a large batch of any model (nn.Module or OrtModule)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from .timing import median_ms

__all__ = ["Measurement", "measure", "weight_bytes"]


@dataclass
class Measurement:
    """Median milliseconds of one forward at batch 1 and at ``batch``; examples per second."""

    latency_ms: float
    batch: int
    batch_ms: float
    repeats: int
    warmup: int

    @property
    def throughput(self) -> float:
        """Examples per second at ``batch``."""
        return self.batch / (self.batch_ms / 1e3)

    def to_dict(self) -> dict:
        return {**asdict(self), "throughput": self.throughput}


def measure(model: nn.Module, one: Tensor, batch: Tensor, *, repeats: int = 30, warmup: int = 5,
            model_batch: nn.Module | None = None,
            progress: Callable[[int, int], None] | None = None) -> Measurement:
    """Time ``model(one)`` (one: (1, ...)) and ``model_batch(batch)`` (default: model).

    Each is warmed up ``warmup`` times, then the median of ``repeats`` runs is kept; no
    autograd. progress(done, total) counts runs of both. A model with a ``call_for(x)`` method
    (kwh.runtime.OrtModule) is timed through the callable it returns: its runtime's own call on
    an input converted beforehand, as a deployment calls it.
    """
    big = model if model_batch is None else model_batch
    per = warmup + repeats

    def shifted(offset: int):
        if progress is None:
            return None
        return lambda done, _total: progress(offset + done, 2 * per)

    def call(m: nn.Module, x: Tensor):
        native = getattr(m, "call_for", None)
        return native(x) if callable(native) else (lambda: m(x))

    with torch.inference_mode():
        lat = median_ms(call(model, one), repeats, warmup, shifted(0))
        thr = median_ms(call(big, batch), repeats, warmup, shifted(per))
    return Measurement(lat, int(batch.shape[0]), thr, repeats, warmup)


def _quantized_weight_bytes(m: nn.Module) -> int | None:
    import torch.ao.nn.quantized as nnq
    if not isinstance(m, (nnq.Linear, nnq.Conv2d)):
        return None
    w, b = m.weight(), m.bias()
    return w.numel() * w.element_size() + (0 if b is None else b.numel() * b.element_size())


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the weights and biases a model holds, as its runtime stores them: float32
    parameters, int8 packed weights, CSR values with their indices, ONNX initializers."""
    own = getattr(model, "weight_bytes", None)
    if callable(own):
        return int(own())
    total = 0
    for m in model.modules():
        own = getattr(m, "weight_bytes", None)
        if callable(own) and m is not model:
            total += int(own())
            continue
        q = _quantized_weight_bytes(m)
        if q is not None:
            total += q
            continue
        if any(callable(getattr(p, "weight_bytes", None)) for p in m.modules() if p is not m):
            continue  # a container: its children are counted on their own
        total += sum(p.numel() * p.element_size() for p in m.parameters(recurse=False))
    return total
