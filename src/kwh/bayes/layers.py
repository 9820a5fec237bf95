"""Bayesian Linear and Conv2d layers with the local reparameterization trick.

Training (or sampling) draws pre-activations, not weights (Kingma et al. 2015): with group
scale z drawn per example, b = mean + sqrt(var + 1e-8) * eps, mean = (x z) @ mu,
var = (x z)^2 @ s2 -- two matmuls or convolutions per layer. The bias stays out of the variance.
Eval is deterministic: the posterior mean weight with the prune mask applied.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kwh.bayes.priors import Prior, PriorConfig, expand_group, make_prior

_VAR_EPS = 1e-8


class BayesLayer(nn.Module):
    """Common part: the prior (variational posterior), a point-estimate bias, and the mode switch."""

    group_dim: int = 0

    def __init__(self, weight: Tensor, bias: Tensor | None, config: PriorConfig,
                 group_size: int = 1):
        super().__init__()
        self.prior: Prior = make_prior(config, weight, self.group_dim, group_size)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        self.sample = False  # draw from the posterior even in eval mode (predictive sampling)
        self.threshold: float | None = None  # per-layer override of the prior's threshold
        # weight of this layer's KL in the training objective (kwh.bayes.free_energy); 1: the
        # free energy itself; kwh.bayes.scale_kl_by_compute_ sets it from the layer's MACs
        self.kl_scale: float = 1.0

    @property
    def stochastic(self) -> bool:
        return self.training or self.sample

    def kl(self) -> Tensor:
        return self.prior.kl()

    def keep_mask(self) -> Tensor:
        return self.prior.keep_mask(self.threshold)

    def eval_weight_bias(self) -> tuple[Tensor, Tensor | None]:
        """Deterministic weight and bias as eval mode uses them: E[w] with the prune mask."""
        raise NotImplementedError

    @torch.no_grad()
    def select_outputs_(self, index: Tensor) -> dict[str, tuple[int, Tensor]]:
        """Keep only the output units (rows, filters) ``index``; {param: (dim, index)}."""
        done = {f"prior.{k}": v for k, v in self.prior.select_(0, index).items()}
        if self.bias is not None:
            self.bias = nn.Parameter(self.bias.index_select(0, index).clone())
            done["bias"] = (0, index)
        self._set_sizes()
        return done

    @torch.no_grad()
    def select_inputs_(self, index: Tensor) -> dict[str, tuple[int, Tensor]]:
        """Keep only the input units (columns, channels) ``index`` of the weight."""
        done = {f"prior.{k}": v for k, v in self.prior.select_(1, index).items()}
        self._set_sizes()
        return done

    def _set_sizes(self) -> None:
        raise NotImplementedError


class BayesLinear(BayesLayer):
    """y = (x * z) W^T + b; z scales input units (a pruned z removes an input column).

    ``group_size``: consecutive input units sharing one z (an attention head's block of the
    out-projection's inputs); a pruned z removes the whole block. Group priors only.
    """

    group_dim = 1

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 prior: PriorConfig, weight: Tensor | None = None, bias_init: Tensor | None = None,
                 group_size: int = 1):
        if weight is None:
            ref = nn.Linear(in_features, out_features, bias=bias)
            weight, bias_init = ref.weight, ref.bias
        super().__init__(weight, bias_init if bias else None, prior, group_size)
        self.in_features, self.out_features = in_features, out_features
        # Set by shrinking (kwh.compress.shrink): the input features the weight still reads,
        # gathered before the layer when they cannot be dropped upstream (after a Flatten).
        self.register_buffer("input_index", None)

    def _set_sizes(self) -> None:
        self.out_features, self.in_features = (int(d) for d in self.prior.weight_shape)

    @classmethod
    def from_module(cls, m: nn.Linear, prior: PriorConfig, group_size: int = 1) -> BayesLinear:
        return cls(m.in_features, m.out_features, m.bias is not None,
                   prior=prior, weight=m.weight, bias_init=m.bias, group_size=group_size)

    def eval_weight_bias(self) -> tuple[Tensor, Tensor | None]:
        mean, _ = self.prior.weight_moments()
        return mean * self.prior.weight_mask(self.threshold), self.bias

    def forward(self, x: Tensor) -> Tensor:  # (B, ..., in) -> (B, ..., out)
        if self.input_index is not None:
            x = x.index_select(-1, self.input_index)  # the inputs the weight still reads
        if not self.stochastic:
            w, b = self.eval_weight_bias()
            return F.linear(x, w, b)
        mu, s2 = self.prior.conditional()  # (out, in) each
        z = self.prior.sample_unit_scale(x.shape[0])  # (B, in) or None
        if z is not None:
            x = x * z.reshape(z.shape[0], *([1] * (x.dim() - 2)), z.shape[1])
        mean = F.linear(x, mu, self.bias)
        var = F.linear(x * x, s2)
        return mean + (var + _VAR_EPS).sqrt() * torch.randn_like(mean)

    def extra_repr(self) -> str:
        size = self.prior.group_size
        groups = f", group_size={size}" if size != 1 else ""
        return f"{self.in_features}, {self.out_features}, prior={self.prior.config.name}{groups}"


class BayesConv2d(BayesLayer):
    """y = z * (conv(x, W) + b); z scales output filters (a pruned z removes a whole filter)."""

    group_dim = 0

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, *, prior: PriorConfig,
                 weight: Tensor | None = None, bias_init: Tensor | None = None):
        if weight is None:
            ref = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation,
                            groups, bias)
            weight, bias_init = ref.weight, ref.bias
        super().__init__(weight, bias_init if bias else None, prior)
        if self.bias is not None and self.prior.structured:
            with torch.no_grad():  # z scales the bias too: store b / E[z] so eval gives b back
                self.bias.div_(self.prior.scale_moments()[0])
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = tuple(weight.shape[2:])
        self.stride, self.padding, self.dilation, self.groups = (
            _pair(stride), _pair(padding) if not isinstance(padding, str) else padding,
            _pair(dilation), groups)

    def _set_sizes(self) -> None:
        self.out_channels = int(self.prior.weight_shape[0])
        self.in_channels = int(self.prior.weight_shape[1]) * self.groups

    @classmethod
    def from_module(cls, m: nn.Conv2d, prior: PriorConfig) -> BayesConv2d:
        if m.padding_mode != "zeros":
            raise ValueError(f"Conv2d padding_mode {m.padding_mode!r} is not supported; use 'zeros'")
        return cls(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                   m.dilation, m.groups, m.bias is not None, prior=prior, weight=m.weight,
                   bias_init=m.bias)

    def _conv(self, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)

    def eval_weight_bias(self) -> tuple[Tensor, Tensor | None]:
        mean, _ = self.prior.weight_moments()
        w = mean * self.prior.weight_mask(self.threshold)
        b = self.bias
        if b is not None and self.prior.structured:
            ez, _ = self.prior.scale_moments()
            b = b * ez * self.keep_mask().to(b.dtype)  # z scales the whole filter output
        return w, b

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, F, H', W')
        if not self.stochastic:
            w, b = self.eval_weight_bias()
            return self._conv(x, w, b)
        mu, s2 = self.prior.conditional()  # (F, C/groups, kh, kw) each
        mean = self._conv(x, mu, self.bias)
        var = self._conv(x * x, s2, None)
        z = self.prior.sample_scale(x.shape[0])  # (B, F) or None
        if z is not None:
            z = z[:, :, None, None]
            mean, var = mean * z, var * z * z
        return mean + (var + _VAR_EPS).sqrt() * torch.randn_like(mean)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, prior={self.prior.config.name}")


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def bayes_layers(model: nn.Module) -> Iterator[tuple[str, BayesLayer]]:
    """All Bayesian layers of a model with their qualified names, in module order."""
    for name, m in model.named_modules():
        if isinstance(m, BayesLayer):
            yield name, m


@contextlib.contextmanager
def sampling(model: nn.Module, enabled: bool = True):
    """Within the block, Bayesian layers draw from the posterior even in eval mode."""
    layers = [m for _, m in bayes_layers(model)]
    old = [m.sample for m in layers]
    for m in layers:
        m.sample = enabled
    try:
        yield model
    finally:
        for m, s in zip(layers, old):
            m.sample = s


__all__ = ["BayesLayer", "BayesLinear", "BayesConv2d", "bayes_layers", "sampling", "expand_group"]
