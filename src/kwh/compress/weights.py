"""Weight-only compression: any model, its architecture unchanged.

``kwh.compress(model, mode="weights")`` replaces each Bayesian layer of a copy of ``model``
by a plain Linear/Conv2d holding the posterior mean times the keep mask, quantized to the bits
the posterior variance gives (the same rule and accuracy guard as structured compression).
Nothing is traced or removed, so residual connections, shared modules, concatenations and
data-dependent control flow are all fine: the model computes what the masked Bayesian model
computes in eval mode, up to the quantization. The saving is in stored bits and in the zeros
a sparse engine skips, not in a smaller network.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from kwh.bayes import BayesConv2d, BayesLayer, BayesLinear
from kwh.compress.config import CompressConfig
from kwh.compress.metrics import evaluate
from kwh.compress.precision import LayerPrecision, choose_precision, quantize, search_bits
from kwh.errors import ModelError

_F64 = torch.float64


class WeightsSummary(dict):
    """The summary of a weight-only compression; ``str()`` gives the readable table."""

    def __str__(self) -> str:
        rows = [f"kwh weight-only compression ({self['model']}, architecture unchanged)",
                f"{'layer':<24}{'shape':>18}{'kept':>12}{'bits':>6}"]
        for d in self["layers"]:
            rows.append(f"{d['name']:<24}{'x'.join(map(str, d['shape'])):>18}"
                        f"{d['nonzero']:>12,}{d['bits'] if d['bits'] else 32:>6}")
        r = self["rates"]
        rows.append(f"weights kept {self['nonzero']:,} of {self['weights_original']:,} "
                    f"({100 * self['density']:.2f}%); pruning {r['pruning']:.1f}x (CSR), "
                    f"fast prediction {r['fast_prediction']:.1f}x")
        if r.get("max_compression"):
            rows.append(f"payload {self['payload_bytes']:,} B: max compression "
                        f"{r['max_compression']:.1f}x ({r.get('max_compression_source', '')})")
        ev = self.get("eval")
        if ev:
            rows.append(f"test error {100 * ev['error_before_quantization']:.2f}% unquantized, "
                        f"{100 * ev['error_after_quantization']:.2f}% quantized "
                        f"({ev['examples']} examples)")
        return "\n".join(rows)


def _bayes_layers(model: nn.Module) -> list[tuple[str, BayesLayer]]:
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, BayesLayer)]
    for n, m in layers:
        if not isinstance(m, (BayesLinear, BayesConv2d)):
            raise ModelError(f"layer {n!r} ({type(m).__name__}) is not supported by weight-only "
                             "compression (BayesLinear, BayesConv2d)")
    return layers


@torch.no_grad()
def _read(name: str, m: BayesLayer, config: CompressConfig) -> tuple[Tensor, Tensor | None,
                                                                    Tensor, Tensor]:
    """(weight, bias, variance, kept) of one Bayesian layer at full width, float64."""
    override = config.threshold_for(name)
    old = m.threshold
    if override is not None:
        m.threshold = float(override)
    try:
        w, b = m.eval_weight_bias()
        _, var = m.prior.weight_moments()
        kept = (m.prior.weight_mask(m.threshold) > 0).cpu()
    finally:
        m.threshold = old
    w, var = w.detach().to("cpu", _F64), var.detach().to("cpu", _F64)
    kept = kept.expand(w.shape).clone()
    if getattr(m, "input_index", None) is not None:
        raise ModelError(f"layer {name!r} was shrunk while training (it reads "
                         f"{m.input_index.numel()} selected inputs); compress it with "
                         "mode='structured'")
    return w, None if b is None else b.detach().to("cpu", _F64), var, kept


def _plain(m: BayesLayer, w: Tensor, b: Tensor | None, prec: LayerPrecision | None) -> nn.Module:
    if isinstance(m, BayesConv2d):
        layer = nn.utils.skip_init(nn.Conv2d, w.shape[1], w.shape[0], tuple(w.shape[2:]),
                                   stride=m.stride, padding=m.padding, dilation=m.dilation,
                                   bias=b is not None)
    else:
        layer = nn.utils.skip_init(nn.Linear, w.shape[1], w.shape[0], bias=b is not None)
    with torch.no_grad():
        layer.weight.copy_(w.to(torch.float32))
        if b is not None:
            layer.bias.copy_(b.to(torch.float32))
    layer.kwh_bits = 32 if prec is None else prec.bits
    layer.kwh_frac_bits = None if prec is None else prec.frac_bits
    return layer.eval()


def _build(model: nn.Module, names: list[str], tensors: list[tuple], precisions,
           quantized: bool) -> nn.Module:
    out = copy.deepcopy(model)
    modules = dict(out.named_modules())
    for name, (w, b, _, _), p in zip(names, tensors, precisions):
        wq = quantize(w, p.frac_bits) if quantized else w
        parent, _, child = name.rpartition(".")
        setattr(modules[parent] if parent else out, child,
                _plain(modules[name], wq, b, p if quantized else None))
    return out.eval()


def compress_weights(model: nn.Module, config: CompressConfig, *,
                     eval_data: Iterable | None = None,
                     guard_data: Iterable | None = None) -> nn.Module:
    """A copy of ``model`` with every Bayesian layer plain, masked and quantized in place."""
    layers = _bayes_layers(model)
    if not layers:
        raise ModelError(f"{type(model).__name__} has no Bayesian layer: train it with "
                         "kwh.bayesify_ and kwh.free_energy first")
    names = [n for n, _ in layers]
    config.check_layer_names(names, names, "Bayesian")  # only those are quantized here
    was = model.training
    model.eval()
    try:
        tensors = [_read(n, m, config) for n, m in layers]
    finally:
        model.train(was)
    for (w, _, _, kept) in tensors:
        w.mul_(kept)  # exactly zero where pruned (eval_weight_bias already masks; kept agrees)
    precisions = [choose_precision(n, w, var, kept, config)
                  for n, (w, _, var, kept) in zip(names, tensors)]
    guard = None
    if guard_data is not None and config.quantize and config.bits_search != "off":
        reference = evaluate(_build(model, names, tensors, precisions, False), guard_data)
        error = lambda ps: evaluate(_build(model, names, tensors, ps, True),  # noqa: E731
                                    guard_data)["error"]
        movable = [n not in config.bits for n in names]
        precisions, err = search_bits([t[0] for t in tensors], precisions, movable, error,
                                      reference["error"], config.bits_tolerance,
                                      config.bits_search)
        guard = {"mode": config.bits_search, "tolerance_pp": config.bits_tolerance,
                 "examples": reference["n"], "error_unquantized": reference["error"],
                 "error_chosen_bits": err}
    small = _build(model, names, tensors, precisions, config.quantize)
    small.kwh_summary = _summary(model, small, names, tensors, precisions, config, guard,
                                 eval_data)
    return small


def _summary(model, small, names, tensors, precisions, config, guard, eval_data) -> dict:
    modules = dict(small.named_modules())
    layers = []
    for name, (w, _, _, _), p in zip(names, tensors, precisions):
        m = modules[name]
        layers.append({"name": name, "type": type(m).__name__, "shape": list(w.shape),
                       "weights_original": w.numel(),
                       "nonzero": int(torch.count_nonzero(m.weight)),
                       "bits": p.bits if config.quantize else None,
                       "frac_bits": p.frac_bits if config.quantize else None,
                       "bits_source": p.source})
    w_orig = sum(d["weights_original"] for d in layers)
    nnz = sum(d["nonzero"] for d in layers)
    stored_bits = sum(2 * d["nonzero"] * (d["bits"] or 32) for d in layers)  # CSR: value+index
    s = WeightsSummary({
        "mode": "weights", "model": type(model).__name__, "layers": layers,
        "weights_original": w_orig, "nonzero": nnz,
        "density": nnz / w_orig if w_orig else 0.0, "quantized": bool(config.quantize),
        "bits": "-".join(str(d["bits"] or 32) for d in layers),
        "rates": {"kind": "csr (unstructured, architecture unchanged)",
                  "pruning": w_orig / (2 * nnz) if nnz else math.inf,
                  "fast_prediction": 32 * w_orig / stored_bits if stored_bits else math.inf},
    })
    if guard is not None:
        s["bits_guard"] = guard
    if eval_data is not None:
        unq = _build(model, names, tensors, precisions, False) if config.quantize else small
        before, after = evaluate(unq, eval_data), evaluate(small, eval_data)
        s["eval"] = {"examples": before["n"], "error_before_quantization": before["error"],
                     "error_after_quantization": after["error"]}
    return s
