"""Binarized layers: sign() weights and inputs with straight-through gradients.

Courbariaux, Hubara et al. 2016, "Binarized Neural Networks": the forward pass computes with
sign(w) and sign(x); the backward pass uses the straight-through estimator of section 1.3,
d sign(x) / dx := 1{|x| <= 1} (the derivative of hardtanh): the gradient passes where
|x| <= 1 and is cancelled elsewhere. Here sign(0) = +1, so a binary value is never zero and
every weight is exactly one bit.

The real-valued latent weights are what the optimizer updates; :func:`clip_latent_` keeps
them in [-1, 1] (run it after every optimizer step, or once with :func:`clip_on_step`):
beyond +-1 their gradient is cancelled, so a weight that left would never come back.

Inputs of a layer (``inputs``): "real" (not binarized: the first layer, as in both papers),
"binary" (sign(x)) or "ternary" (-1 below -t, +1 above t, 0 between; t = ``threshold``, 0.5
by default, the same straight-through gradient).

XNOR-Net (Rastegari et al. 2016, section 3.1) scale (``scale="channel"``): one
alpha_o = mean |W_o| per output channel (the mean over that filter's latent weights),
y_o = alpha_o (x_b . sign(W_o)) + b_o. XNOR-Net's per-position input scale K is not used.

Imports only torch and kwh.errors: kwh.energy reads these classes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kwh.errors import KwhError

__all__ = ["BinaryLayer", "BinaryLinear", "BinaryConv2d", "BinaryActivation", "sign",
           "sign_ste", "ternary_ste", "clip_latent_", "clip_on_step", "INPUTS", "SCALES"]

INPUTS = ("real", "binary", "ternary")
SCALES = ("none", "channel")


def sign(x: Tensor) -> Tensor:
    """+1 where x >= 0 (zero included), -1 elsewhere; no gradient."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def _pass_where_unit(grad: Tensor, x: Tensor) -> Tensor:
    """The straight-through gradient: ``grad`` where |x| <= 1, zero elsewhere."""
    return grad.masked_fill(x.abs() > 1, 0.0)


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return sign(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return _pass_where_unit(grad, x)


class _TernarySTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, threshold):
        ctx.save_for_backward(x)
        return (x > threshold).to(x.dtype) - (x < -threshold).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return _pass_where_unit(grad, x), None


def sign_ste(x: Tensor) -> Tensor:
    """sign(x) (sign(0) = +1) with the straight-through gradient 1{|x| <= 1}."""
    return _SignSTE.apply(x)


def ternary_ste(x: Tensor, threshold: float = 0.5) -> Tensor:
    """-1, 0 or +1 (|x| <= threshold -> 0) with the straight-through gradient 1{|x| <= 1}."""
    return _TernarySTE.apply(x, threshold)


def _check_threshold(threshold: float) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
            or not 0 < threshold < 1:
        raise KwhError(f"ternary threshold must be a number in (0, 1), got {threshold!r}")
    return float(threshold)


def _choice(what: str, value: str, valid: tuple[str, ...]) -> str:
    if value not in valid:
        raise KwhError(f"Unknown {what} {value!r}; choose one of: {', '.join(valid)}")
    return value


class BinaryActivation(nn.Module):
    """sign(x) ("binary") or the ternary threshold as a module, straight-through gradients."""

    def __init__(self, mode: str = "binary", threshold: float = 0.5):
        super().__init__()
        self.mode = _choice("activation", mode, ("binary", "ternary"))
        self.threshold = _check_threshold(threshold)

    def forward(self, x: Tensor) -> Tensor:
        return sign_ste(x) if self.mode == "binary" else ternary_ste(x, self.threshold)

    def extra_repr(self) -> str:
        return self.mode + (f", threshold={self.threshold:g}" if self.mode == "ternary" else "")


class BinaryLayer(nn.Module):
    """Shared part of BinaryLinear and BinaryConv2d: latent ``weight``, optional ``bias``."""

    weight: nn.Parameter
    bias: nn.Parameter | None

    def _setup(self, inputs: str, scale: str, threshold: float) -> None:
        self.inputs = _choice("inputs", inputs, INPUTS)
        self.scale = _choice("scale", scale, SCALES)
        self.threshold = _check_threshold(threshold)

    def _adopt(self, layer: nn.Module) -> None:
        """Take ``layer``'s own Parameter objects as latent weights (clipped in place), so an
        optimizer built over the model before the conversion keeps updating them."""
        with torch.no_grad():
            layer.weight.clamp_(-1.0, 1.0)
        self.weight = layer.weight
        if layer.bias is not None:  # built with a bias exactly when ``layer`` has one
            self.bias = layer.bias

    def _reset(self, fan_in: int) -> None:
        """Uniform in +-1/sqrt(fan_in), as torch's Linear and Conv2d initialise."""
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        with torch.no_grad():
            self.weight.uniform_(-bound, bound)
            if self.bias is not None:
                self.bias.uniform_(-bound, bound)

    def quantize_input(self, x: Tensor) -> Tensor:
        """The layer's input as it computes with it (see ``inputs``)."""
        if self.inputs == "binary":
            return sign_ste(x)
        if self.inputs == "ternary":
            return ternary_ste(x, self.threshold)
        return x

    def binary_weight(self) -> Tensor:
        """sign(latent weight): the +-1 weights the layer computes with (no gradient)."""
        return sign(self.weight.detach())

    def channel_scale(self) -> Tensor | None:
        """XNOR-Net's alpha (mean |W| per output channel) or None (``scale="none"``)."""
        return self._alpha().detach() if self.scale == "channel" else None

    def _alpha(self) -> Tensor:  # (out,)
        return self.weight.abs().flatten(1).mean(1)

    def finish(self, y: Tensor, shape: tuple[int, ...]) -> Tensor:
        """alpha * y + bias, both viewed as ``shape`` to broadcast over the channel dim."""
        if self.scale == "channel":
            y = y * self._alpha().view(shape)
        if self.bias is not None:
            y = y + self.bias.view(shape)
        return y

    def _options_repr(self) -> str:
        s = f"inputs={self.inputs}, scale={self.scale}"
        return s + (f", threshold={self.threshold:g}" if self.inputs == "ternary" else "")


class BinaryLinear(BinaryLayer):
    """y = alpha * (x_b @ sign(W)^T) + b, with x_b the (binarized) input; see the module doc."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 inputs: str = "binary", scale: str = "none", threshold: float = 0.5,
                 device=None, dtype=None):
        super().__init__()
        self._setup(inputs, scale, threshold)
        self.in_features, self.out_features = in_features, out_features
        kw = dict(device=device, dtype=dtype)
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **kw))
        self.register_parameter(
            "bias", nn.Parameter(torch.empty(out_features, **kw)) if bias else None)
        self._reset(in_features)

    @classmethod
    def from_linear(cls, layer: nn.Linear, **options) -> BinaryLinear:
        """The binary twin of ``layer``, sharing its Parameter objects (weights clipped)."""
        new = cls(layer.in_features, layer.out_features, layer.bias is not None,
                  device="meta", **options)
        new._adopt(layer)
        return new

    def forward(self, x: Tensor) -> Tensor:  # (B, *, in) -> (B, *, out)
        y = F.linear(self.quantize_input(x), sign_ste(self.weight))
        return self.finish(y, (-1,))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, {self._options_repr()}")


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


class BinaryConv2d(BinaryLayer):
    """Conv2d with sign(W) on the (binarized) input, alpha per filter; zero padding only.

    Zero padding pads the binarized input with 0, a value that is neither +1 nor -1: a tap
    on the padding adds nothing (kwh.binary.xnor's reference computes padding=0 only).
    """

    padding_mode = "zeros"

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, *, inputs: str = "binary",
                 scale: str = "none", threshold: float = 0.5, device=None, dtype=None):
        super().__init__()
        self._setup(inputs, scale, threshold)
        if in_channels % groups or out_channels % groups:
            raise KwhError(f"in_channels ({in_channels}) and out_channels ({out_channels}) "
                           f"must be divisible by groups ({groups})")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.dilation = _pair(dilation)
        self.padding = padding if isinstance(padding, str) else _pair(padding)
        kw = dict(device=device, dtype=dtype)
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels // groups, *self.kernel_size, **kw))
        self.register_parameter(
            "bias", nn.Parameter(torch.empty(out_channels, **kw)) if bias else None)
        self._reset(in_channels // groups * math.prod(self.kernel_size))

    @classmethod
    def from_conv(cls, layer: nn.Conv2d, **options) -> BinaryConv2d:
        """The binary twin of ``layer``, sharing its Parameter objects (weights clipped)."""
        if layer.padding_mode != "zeros":
            raise KwhError(f"padding_mode={layer.padding_mode!r} is not supported by "
                           "BinaryConv2d; only 'zeros'")
        new = cls(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                  layer.padding, layer.dilation, layer.groups, layer.bias is not None,
                  device="meta", **options)
        new._adopt(layer)
        return new

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, O, Ho, Wo)
        y = F.conv2d(self.quantize_input(x), sign_ste(self.weight), None, self.stride,
                     self.padding, self.dilation, self.groups)
        return self.finish(y, (-1, 1, 1))

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"groups={self.groups}, bias={self.bias is not None}, {self._options_repr()}")


@torch.no_grad()
def clip_latent_(model: nn.Module) -> nn.Module:
    """Clip every binary layer's latent weights to [-1, 1], in place; returns ``model``.

    Run it after each optimizer step::

        kwh.binarize_(model)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)   # Adam on the latent weights
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            kwh.binary.clip_latent_(model)

    (or once, before the loop: ``kwh.binary.clip_on_step(opt, model)``).
    """
    for m in model.modules():
        if isinstance(m, BinaryLayer):
            m.weight.clamp_(-1.0, 1.0)
    return model


def clip_on_step(optimizer: torch.optim.Optimizer, model: nn.Module):
    """Run :func:`clip_latent_` after every ``optimizer.step()``; returns the hook's handle
    (``handle.remove()`` stops it)."""
    return optimizer.register_step_post_hook(lambda opt, args, kwargs: clip_latent_(model))
