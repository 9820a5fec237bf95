"""int8 in PyTorch: static quantization with torch.ao's quantized CPU kernels (fbgemm/x86/qnnpack).

Layers that fit 8 bits become ``torch.ao.nn.quantized`` Linear/Conv2d (fused with a following
ReLU) whose int8 weights are the kwh integers themselves (per-tensor scale 2^-t, zero point 0:
exact). Activations are quint8, per tensor, with ranges observed (min/max) on calibration
batches. ReLU, MaxPool2d, Flatten, Dropout and SelectInputs pass quantized tensors through; any
other layer (and any layer wider than 8 bits) runs in float32 between a DeQuantize and a
Quantize.
"""

from __future__ import annotations

import copy
import warnings
from typing import Iterable

import torch
from torch import Tensor, nn

from kwh.errors import KwhError
from kwh.modules import SelectInputs

from .int8 import flat_layers, require_int8_layers

__all__ = ["quantize_torch", "quantized_engines", "calibration_batches"]

# Layers that take a quantized tensor and give one with the same scale and zero point.
_PASS_THROUGH = (nn.ReLU, nn.MaxPool2d, nn.Flatten, nn.Dropout, nn.Identity, SelectInputs)
# fbgemm's AVX2 kernels add pairs of u8*s8 products in int16, which can saturate; torch's
# default qconfig for these engines therefore keeps activations to 7 bits (0..127).
_REDUCED_RANGE_ENGINES = ("fbgemm", "x86")


def quantized_engines() -> list[str]:
    """The quantized CPU engines this torch build offers (empty when it has none)."""
    return [e for e in torch.backends.quantized.supported_engines if e != "none"]


def calibration_batches(calibration: Tensor | Iterable, batch_size: int = 100) -> list[Tensor]:
    """Calibration inputs as a list of float32 batches: from one tensor (split into batches) or
    an iterable of tensors or of (inputs, labels) pairs."""
    if isinstance(calibration, Tensor):
        batches = list(calibration.split(batch_size))
    else:
        batches = [b[0] if isinstance(b, (tuple, list)) else b for b in calibration]
    if not batches or not all(isinstance(b, Tensor) and b.numel() for b in batches):
        raise ValueError("calibration needs at least one non-empty batch of inputs")
    return [b.detach().float() for b in batches]


def _engine(engine: str | None) -> str:
    available = quantized_engines()
    if not available:
        raise KwhError("int8 in PyTorch needs a quantized CPU engine (fbgemm, x86, qnnpack or "
                       "onednn); this torch build has none (torch.backends.quantized."
                       f"supported_engines is {torch.backends.quantized.supported_engines})")
    engine = engine or torch.backends.quantized.engine
    if engine not in available:
        raise ValueError(f"Unknown quantized engine {engine!r}; choose one of: "
                         f"{', '.join(available)}")
    return engine


class _Range:
    """Running min and max of every tensor shown to it."""

    def __init__(self) -> None:
        self.lo, self.hi = float("inf"), float("-inf")

    def __call__(self, x: Tensor) -> None:
        self.lo, self.hi = min(self.lo, float(x.min())), max(self.hi, float(x.max()))

    def qparams(self, quant_max: int) -> tuple[float, int]:
        """Affine quint8 parameters (scale, zero point) over [min(lo, 0), max(hi, 0)]."""
        from torch.ao.quantization.observer import MinMaxObserver
        obs = MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine,
                             quant_min=0, quant_max=quant_max)
        obs(torch.tensor([self.lo, self.hi]))
        scale, zero_point = obs.calculate_qparams()
        return float(scale), int(zero_point)


@torch.no_grad()
def _observe(layers: list[tuple[str, nn.Module]], batches: list[Tensor]) -> list[_Range]:
    """ranges[0]: the model input; ranges[i + 1]: the output of layers[i]."""
    ranges = [_Range() for _ in range(len(layers) + 1)]
    for x in batches:
        ranges[0](x)
        for i, (_, m) in enumerate(layers):
            x = m(x)
            ranges[i + 1](x)
    return ranges


def _quantized(layer: nn.Module, relu: bool, frac_bits: int, scale: float,
               zero_point: int) -> nn.Module:
    import torch.ao.nn.intrinsic.quantized as nniq
    import torch.ao.nn.quantized as nnq

    has_bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        if relu:  # the two spell the bias flag differently
            q = nniq.LinearReLU(layer.in_features, layer.out_features, bias=has_bias)
        else:
            q = nnq.Linear(layer.in_features, layer.out_features, bias_=has_bias)
    else:
        cls = nniq.ConvReLU2d if relu else nnq.Conv2d
        q = cls(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                padding=layer.padding, dilation=layer.dilation, groups=layer.groups, bias=has_bias)
    weight = torch.quantize_per_tensor(layer.weight.detach().float(), 2.0 ** -frac_bits, 0,
                                       torch.qint8)  # exact: the weights are ints * 2^-t
    q.set_weight_bias(weight, layer.bias.detach().float() if has_bias else None)
    q.scale, q.zero_point = scale, zero_point
    return q


def quantize_torch(model: nn.Module, calibration: Tensor | Iterable, *, engine: str | None = None,
                   reduce_range: bool | None = None) -> nn.Sequential:
    """An int8 copy of a compressed chain for PyTorch's quantized CPU kernels.

    calibration: a few hundred training inputs (a tensor, or batches) to fix the activation
    ranges. engine: a torch.backends.quantized engine (default: the current one); it is made
    the current engine, since the packed weights are only valid there. reduce_range: 7-bit
    activations (default: on for fbgemm/x86, whose AVX2 kernels can saturate, as in torch's
    own default qconfig). Raises ModelError when no layer fits int8, KwhError when this
    torch has no quantized engine.
    """
    engine = _engine(engine)
    model = copy.deepcopy(model).eval()  # the float layers that stay are shared with no one
    plan = {p.name: p for p in require_int8_layers(model)}
    layers = flat_layers(model)
    if reduce_range is None:
        reduce_range = engine in _REDUCED_RANGE_ENGINES
    quant_max = 127 if reduce_range else 255
    ranges = _observe(layers, calibration_batches(calibration))
    torch.backends.quantized.engine = engine

    import torch.ao.nn.quantized as nnq
    mods: list[nn.Module] = []
    quantized, i = False, 0
    with warnings.catch_warnings():  # torch announces quantized dtypes' future removal
        warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions")
        while i < len(layers):
            name, layer = layers[i]
            p = plan.get(name)
            if p is not None and p.int8:
                if not quantized:
                    mods.append(nnq.Quantize(*ranges[i].qparams(quant_max), torch.quint8))
                relu = i + 1 < len(layers) and isinstance(layers[i + 1][1], nn.ReLU)
                out = i + 2 if relu else i + 1  # the range after the (fused) ReLU
                mods.append(_quantized(layer, relu, p.frac_bits, *ranges[out].qparams(quant_max)))
                quantized, i = True, out
                continue
            if quantized and not isinstance(layer, _PASS_THROUGH):
                mods.append(nnq.DeQuantize())
                quantized = False
            mods.append(layer)
            i += 1
        if quantized:
            mods.append(nnq.DeQuantize())
    out_model = nn.Sequential(*mods).eval()
    out_model.kwh_int8_plan = list(plan.values())
    out_model.kwh_quant_engine = engine
    out_model.kwh_activation_bits = 7 if reduce_range else 8
    return out_model
