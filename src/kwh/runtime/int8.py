"""Which layers run in int8: those whose every weight is an integer times 2^-t that fits 8 bits.

A kwh layer's weights are exact fixed-point values, w = q * 2^-t with integer q and
t = kwh_frac_bits; when kwh_bits <= 8, |q| <= 127, so int8 with the per-tensor scale 2^-t and
zero point 0 holds every weight exactly: quantizing the weights costs nothing, and only the
activations (calibrated on data) are rounded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from kwh.errors import ModelError

__all__ = ["Int8Layer", "int8_layers", "require_int8_layers", "flat_layers"]

INT8_MAX_BITS = 8


@dataclass
class Int8Layer:
    """A layer's int8 plan: whether it qualifies, its exact weight scale, and why not if not."""

    name: str
    kind: str
    bits: int | None
    frac_bits: int | None
    int8: bool
    reason: str = ""

    @property
    def scale(self) -> float:
        """The weight scale 2^-t (exact in float32 for any t kwh chooses)."""
        return 2.0 ** -self.frac_bits

    def to_dict(self) -> dict:
        return asdict(self)


def _plan(name: str, layer: nn.Module) -> Int8Layer:
    kind = type(layer).__name__
    bits, t = getattr(layer, "kwh_bits", None), getattr(layer, "kwh_frac_bits", None)
    if bits is None or t is None:
        return Int8Layer(name, kind, bits, t, False, "no kwh_bits/kwh_frac_bits (not quantized)")
    if bits > INT8_MAX_BITS:
        return Int8Layer(name, kind, bits, t, False, f"{bits}-bit weights do not fit int8")
    if isinstance(layer, nn.Conv2d) and (layer.padding_mode != "zeros"
                                         or isinstance(layer.padding, str)):
        return Int8Layer(name, kind, bits, t, False, "only explicit zero padding runs in int8")
    q = layer.weight.detach().double() * 2.0 ** t
    if not torch.equal(q, q.round()) or q.abs().max() > 127:
        return Int8Layer(name, kind, bits, t, False, f"weights are not integers times 2^-{t} "
                         "within int8")
    return Int8Layer(name, kind, bits, t, True)


def int8_layers(model: nn.Module) -> list[Int8Layer]:
    """The int8 plan of every Linear and Conv2d in ``model`` (named as in named_modules)."""
    return [_plan(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def require_int8_layers(model: nn.Module) -> list[Int8Layer]:
    """``int8_layers``, or a ModelError when none of them fits int8."""
    plan = int8_layers(model)
    if not any(p.int8 for p in plan):
        bits = "-".join(str(p.bits) for p in plan) or "none"
        raise ModelError(f"no Linear/Conv2d layer of this model fits int8 (weight bits {bits}); "
                         "int8 runs layers with kwh_bits <= 8, e.g. compress with max_bits=8")
    return plan


def flat_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The leaves of nested nn.Sequentials in order, with their named_modules names."""
    if not isinstance(model, nn.Sequential):
        raise ModelError(f"int8 in PyTorch runs chains (nn.Sequential); got {type(model).__name__}")
    out: list[tuple[str, nn.Module]] = []

    def walk(seq: nn.Sequential, prefix: str) -> None:
        for n, m in seq.named_children():
            name = f"{prefix}{n}"
            if isinstance(m, nn.Sequential):
                walk(m, name + ".")
            else:
                out.append((name, m))
    walk(model, "")
    return out
