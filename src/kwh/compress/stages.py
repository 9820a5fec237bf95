"""Stages: each Linear/Conv2d of the chain as plain float64 tensors, BatchNorm folded in.

A stage is one weighted layer in the deterministic form eval mode uses (posterior mean times
keep mask, for a Bayesian layer), with the marginal posterior variance of each weight, the
modules that follow it up to the next weighted layer, and which original units it still has.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kwh.bayes import BayesLayer
from kwh.compress.chain import DROPOUT, NORMS, Node
from kwh.compress.config import CompressConfig
from kwh.compress.precision import LayerPrecision, quantize

_F64 = torch.float64


@dataclass
class Stage:
    """One weighted layer being pruned: current tensors and the original units they hold."""

    name: str
    module: nn.Module  # the original layer (conv hyper-parameters, names)
    weight: Tensor  # (O, I) or (O, C, kh, kw), float64
    bias: Tensor  # (O,), float64 (zeros where the layer has none)
    had_bias: bool
    var: Tensor | None  # marginal posterior variance of each weight; None for a plain layer
    kept: Tensor  # bool like weight: kept by the posterior (the weights t_l averages over)
    in_shape: tuple[int, ...]  # original per-example input and output shapes
    out_shape: tuple[int, ...]
    after: list[Node]  # modules up to the next weighted layer (or the end), dropout removed
    prior: str | None = None
    structured: bool | None = None
    threshold: float | None = None
    folded: list[str] = field(default_factory=list)  # BatchNorm layers folded into this one
    rows: Tensor = None  # original output units still here (long)
    cols: Tensor = None  # original input channels/features still here (long)
    carriers: list[int] = field(default_factory=list)  # original units kept to carry constants
    positions: int = 1  # a Linear on tokens (batch, ..., features): the tokens per example

    def __post_init__(self):
        if self.rows is None:
            self.rows = torch.arange(self.weight.shape[0])
        if self.cols is None:
            self.cols = torch.arange(self.weight.shape[1])

    @property
    def conv(self) -> bool:
        return self.weight.dim() == 4

    @property
    def orig_weight_shape(self) -> tuple[int, ...]:
        groups = getattr(self.module, "groups", 1) if self.conv else 1
        return (self.out_shape[0], self.in_shape[0] // groups, *self.weight.shape[2:])

    def cur_out_shape(self) -> tuple[int, ...]:
        return (self.weight.shape[0], *self.out_shape[1:])

    def conv_args(self) -> dict:
        m = self.module
        return dict(stride=m.stride, padding=m.padding, dilation=m.dilation)

    def snap_(self, frac_bits: int) -> None:
        """Put the weights on the fixed-point grid of ``frac_bits`` (in place); a weight that
        rounds to 0 is no longer kept."""
        self.weight = quantize(self.weight, frac_bits)
        self.kept = self.kept & (self.weight != 0)

    def select_rows(self, keep: Tensor) -> None:
        """Keep only the output units where ``keep`` (bool, (O,)) is True."""
        self.weight, self.bias, self.kept = self.weight[keep], self.bias[keep], self.kept[keep]
        if self.var is not None:
            self.var = self.var[keep]
        self.rows = self.rows[keep]

    def select_cols(self, keep: Tensor) -> None:
        """Keep only the input columns (features or channels) where ``keep`` is True."""
        self.weight, self.kept = self.weight[:, keep], self.kept[:, keep]
        if self.var is not None:
            self.var = self.var[:, keep]
        self.cols = self.cols[keep]

    def norm_index(self, node: Node) -> Tensor:
        """Which entries of a BatchNorm in ``after`` belong to the units still here."""
        if len(node.in_shape) == 1 and self.conv:  # BatchNorm1d behind a Flatten: H*W per unit
            block = node.in_shape[0] // self.out_shape[0]
            return (self.rows[:, None] * block + torch.arange(block)).reshape(-1)
        return self.rows

    def run_after(self, x: Tensor) -> Tensor:
        """The modules after this layer applied to x (float64), for the units still here."""
        for node in self.after:
            m = node.module
            if isinstance(m, NORMS):
                i = self.norm_index(node)
                w = None if m.weight is None else m.weight.detach().to("cpu", _F64)[i]
                b = None if m.bias is None else m.bias.detach().to("cpu", _F64)[i]
                mean = m.running_mean.to("cpu", _F64)[i]
                var = m.running_var.to("cpu", _F64)[i]
                x = F.batch_norm(x, mean, var, w, b, False, 0.0, m.eps)
            else:
                x = m(x)
        return x

    def after_modules(self) -> list[nn.Module]:
        """Fresh copies of the modules after this layer, BatchNorm cut to the units still here."""
        return [sliced_norm(node.module, self.norm_index(node)) if isinstance(node.module, NORMS)
                else copy.deepcopy(node.module) for node in self.after]


@torch.no_grad()
def sliced_norm(m: nn.Module, index: Tensor) -> nn.Module:
    """A fresh BatchNorm (eval mode) holding the entries ``index`` (long or bool) of ``m``."""
    bn = type(m)(int(m.running_mean[index].numel()), eps=m.eps, momentum=m.momentum,
                 affine=m.affine, track_running_stats=True)
    bn.running_mean.copy_(m.running_mean[index])
    bn.running_var.copy_(m.running_var[index])
    bn.num_batches_tracked.copy_(m.num_batches_tracked)
    if m.affine:
        bn.weight.copy_(m.weight[index])
        bn.bias.copy_(m.bias[index])
    return bn.eval()


@torch.no_grad()
def plain_layer(s: Stage, w: Tensor, prec: LayerPrecision | None,
                dtype: torch.dtype = torch.float32) -> nn.Module:
    """A plain Linear/Conv2d holding weight ``w`` and the stage's bias, with ``kwh_bits`` and
    ``kwh_frac_bits`` (32 and None when ``prec`` is None: not quantized)."""
    has_bias = s.had_bias or bool(s.bias.any())
    out_f, in_f = w.shape[:2]
    if s.conv:  # skip_init: no random initialisation, so the caller's RNG stream is untouched
        m = s.module
        groups = getattr(m, "groups", 1)
        layer = nn.utils.skip_init(nn.Conv2d, in_f * groups, out_f, tuple(w.shape[2:]),
                                   stride=m.stride, padding=m.padding, dilation=m.dilation,
                                   groups=groups, bias=has_bias,
                                   padding_mode=getattr(m, "padding_mode", "zeros"), dtype=dtype)
    else:
        layer = nn.utils.skip_init(nn.Linear, in_f, out_f, bias=has_bias, dtype=dtype)
    layer.weight.copy_(w.to(dtype))
    if has_bias:
        layer.bias.copy_(s.bias.to(dtype))  # biases stay float32 (not quantized)
    layer.kwh_bits = 32 if prec is None else prec.bits
    layer.kwh_frac_bits = None if prec is None else prec.frac_bits
    return layer


@torch.no_grad()
def build_stages(nodes: list[Node], config: CompressConfig) -> tuple[list[nn.Module], list[Stage]]:
    """(modules before the first weighted layer, one stage per weighted layer)."""
    first = next(i for i, n in enumerate(nodes) if n.weighted)
    prefix = [copy.deepcopy(n.module) for n in nodes[:first] if not isinstance(n.module, DROPOUT)]
    stages: list[Stage] = []
    for i, n in enumerate(nodes):
        if not n.weighted:
            continue
        j = i + 1
        while j < len(nodes) and not nodes[j].weighted:
            j += 1
        after = [a for a in nodes[i + 1:j] if not isinstance(a.module, DROPOUT)]
        stage = read_layer(n, after, config)
        if config.fold_batchnorm and after and isinstance(after[0].module, NORMS):
            fold_norm(stage, after.pop(0))
        stages.append(stage)
    return prefix, stages


def read_layer(n: Node, after: list[Node], config: CompressConfig) -> Stage:
    """One weighted layer as a stage: eval weight and bias, posterior variance, kept mask."""
    m = n.module
    common = dict(name=n.name, module=m, in_shape=n.in_shape, out_shape=n.out_shape, after=after)
    if isinstance(m, BayesLayer):
        override = config.threshold_for(n.name)
        old = m.threshold
        if override is not None:
            m.threshold = float(override)
        try:
            w, b = m.eval_weight_bias()  # exactly what eval mode computes
            _, var = m.prior.weight_moments()
            kept = (m.prior.weight_mask(m.threshold) > 0).cpu()
            threshold = m.prior.threshold if m.threshold is None else m.threshold
        finally:
            m.threshold = old
        w, var = w.detach().to("cpu", _F64), var.detach().to("cpu", _F64)
        kept = kept.expand(w.shape).clone()
        index = getattr(m, "input_index", None)
        if index is not None:  # a shrunk layer reads some inputs: back to the full width
            w, var, kept = (_widen(t, index.cpu(), n.in_shape[0]) for t in (w, var, kept))
        return Stage(weight=w, bias=_bias(b, w), had_bias=b is not None, var=var, kept=kept,
                     prior=m.prior.config.name, structured=m.prior.structured,
                     threshold=float(threshold), **common)
    w, b = m.weight, m.bias
    return Stage(weight=w.detach().to("cpu", _F64), bias=_bias(b, w), had_bias=b is not None,
                 var=None, kept=w.detach().cpu() != 0, **common)


def _widen(t: Tensor, index: Tensor, width: int) -> Tensor:
    """(O, k) columns placed at ``index`` of an (O, width) tensor of zeros (False)."""
    out = torch.zeros(t.shape[0], width, dtype=t.dtype)
    out[:, index] = t
    return out


def _bias(b: Tensor | None, w: Tensor) -> Tensor:
    if b is None:
        return torch.zeros(w.shape[0], dtype=_F64)
    return b.detach().to("cpu", _F64).clone()


def fold_norm(stage: Stage, node: Node) -> None:
    """y = s (W x + b - mean) + beta with s = gamma / sqrt(var + eps): W' = s W, Var' = s^2 Var."""
    m = node.module
    s = (m.running_var.to("cpu", _F64) + m.eps).rsqrt()  # (O,)
    if m.weight is not None:
        s = s * m.weight.detach().to("cpu", _F64)
    shift = -m.running_mean.to("cpu", _F64) * s
    if m.bias is not None:
        shift = shift + m.bias.detach().to("cpu", _F64)
    view = (-1,) + (1,) * (stage.weight.dim() - 1)
    stage.weight = stage.weight * s.reshape(view)
    if stage.var is not None:
        stage.var = stage.var * s.pow(2).reshape(view)
    stage.bias = stage.bias * s + shift
    stage.had_bias = True
    stage.folded.append(node.name)

