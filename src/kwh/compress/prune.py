"""kwh.compress: a trained (Bayesian) chain -> a physically smaller, low-bit plain nn.Sequential.

Steps: read each layer's eval-mode weight (posterior mean x keep mask) and posterior variance,
fold BatchNorm into the layer before it, propagate dead units both ways (propagate.py), pick
bits per layer from the posterior (precision.py), quantize, and build plain Linear/Conv2d
layers carrying ``kwh_bits`` and ``kwh_frac_bits``; the model carries ``kwh_summary``.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable

import torch
from torch import nn

from kwh.bayes import BayesLayer
from kwh.compress.chain import WEIGHTED, flatten_chain, infer_input_shape, probe_shapes
from kwh.compress.config import CompressConfig
from kwh.compress.metrics import evaluate
from kwh.compress.precision import LayerPrecision, choose_precision, quantize, search_bits
from kwh.compress.propagate import drop_unread_inputs, propagate
from kwh.compress.stages import Stage, build_stages
from kwh.compress.summary import Summary, summarize
from kwh.compress.weights import compress_weights
from kwh.errors import ModelError
from kwh.graph import example_input, explicit_chain
from kwh.modules import SelectInputs


def compress(model: nn.Module, config: CompressConfig | None = None, *,
             eval_data: Iterable | None = None, guard_data: Iterable | None = None,
             example_inputs: torch.Tensor | None = None, mode: str = "structured",
             **options) -> nn.Module:
    """Prune, fold and quantize ``model``; returns a plain nn.Sequential with ``kwh_summary``.

    ``model``: an nn.Sequential, or any module whose traced forward is a chain of layers
    (kwh.graph.chain); ``example_inputs`` (a batch) is what it is traced and checked on, and
    gives the input shape (else ``config.input_shape``, the model's ``kwh_input_shape`` or
    the first ``eval_data`` batch).
    ``mode="weights"`` works on any model (residual connections, shared modules, branches):
    its Bayesian layers become plain, masked and quantized in place, the architecture
    unchanged (kwh.compress.weights); no example input is needed.
    ``config`` or keyword options (``compress(model, max_bits=8)``) set the CompressConfig.
    ``eval_data`` (batches of (x, y)) adds the test error before and after quantization.
    ``guard_data`` (batches of (x, y) held out of the training data, never the test set)
    turns on the accuracy guard of the bits (``config.bits_search``, ``bits_tolerance``).
    The input model is not changed.
    """
    if config is None:
        config = CompressConfig(**options)
    elif options:
        raise TypeError("pass options either in the CompressConfig or as keywords, not both")
    if mode == "weights":
        return compress_weights(model, config, eval_data=eval_data, guard_data=guard_data)
    if mode != "structured":
        raise ValueError(f"mode must be 'structured' or 'weights', got {mode!r}")
    if example_inputs is not None:
        if not isinstance(example_inputs, torch.Tensor) or example_inputs.dim() < 2:
            raise ModelError("example_inputs must be one tensor holding a batch of inputs, shape "
                             "(batch, ...)")
        if config.input_shape is not None and \
                tuple(config.input_shape) != tuple(example_inputs.shape[1:]):
            raise ModelError(f"example_inputs have shape {tuple(example_inputs.shape[1:])} per "
                             f"example but input_shape is {tuple(config.input_shape)}")
        config = dataclasses.replace(config, input_shape=tuple(example_inputs.shape[1:]))
    if explicit_chain(model) or isinstance(model, WEIGHTED):
        nodes = flatten_chain(model)
        input_shape = _input_shape(model, nodes, config, eval_data)
    else:
        input_shape = _input_shape(model, None, config, eval_data)
        if example_inputs is None:
            example_inputs = example_input(model, input_shape)
        nodes = flatten_chain(model, example_inputs.to(next(model.parameters()).device))
    _check_names(nodes, config)
    probe_shapes(nodes, input_shape)
    prune_guard = None
    if guard_data is not None and config.prune_search == "fit":
        config, prune_guard = fit_thresholds(nodes, config, guard_data)
    with torch.no_grad():
        prefix, stages = build_stages(nodes, config)
        propagate(stages)
        keep_inputs = drop_unread_inputs(stages[0])
        if keep_inputs is not None:
            prefix.append(SelectInputs(keep_inputs))
        precisions = [choose_precision(s.name, s.weight, s.var, s.kept, config) for s in stages]
        guard = None
        if guard_data is not None and config.quantize and config.bits_search != "off":
            precisions, guard = _guard(prefix, stages, precisions, guard_data, config)
        small = assemble(prefix, stages, precisions if config.quantize else None)
    summary = summarize(nodes, stages, precisions, small, input_shape, config)
    if guard is not None:
        summary["bits_guard"] = guard
    if prune_guard is not None:
        summary["prune_guard"] = prune_guard
    if eval_data is not None:
        unquantized = assemble(prefix, stages, None) if config.quantize else small
        before, after = evaluate(unquantized, eval_data), evaluate(small, eval_data)
        summary["eval"] = {
            "examples": before["n"],
            "error_before_quantization": before["error"],  # = the Bayesian model in eval mode
            "error_after_quantization": after["error"],
        }
    small.kwh_summary = Summary(summary)
    return small


@torch.no_grad()
def fit_thresholds(nodes, config: CompressConfig, data: Iterable) -> tuple[CompressConfig, dict]:
    """Per-layer pruning thresholds fit on held-out data (``config.prune_search="fit"``).

    From the posterior's thresholds, repeatedly try, for each Bayesian layer without a user
    threshold, pruning the ``frac`` of its kept groups (or weights) with the largest log alpha
    (never all of them); take the try that leaves the fewest nonzero weights after dead units
    are propagated, provided the unquantized model's error on ``data`` stays within
    ``prune_tolerance`` points of the error at the posterior's thresholds. When no try
    passes, halve ``frac``; stop below 1/64. Returns the config with the thresholds, and a
    report for the summary.
    """
    layers = [(n.name, n.module) for n in nodes
              if isinstance(n.module, BayesLayer) and n.name not in config.thresholds]
    log_alpha, start = {}, {}
    for name, m in layers:
        log_alpha[name] = m.prior.log_alpha().detach().to("cpu", torch.float64).reshape(-1)
        t = config.threshold_for(name)
        start[name] = float(t if t is not None else
                            (m.threshold if m.threshold is not None else m.prior.threshold))

    def trial(thresholds: dict[str, float]) -> tuple[float, int]:
        cfg = dataclasses.replace(config, thresholds={**config.thresholds, **thresholds})
        prefix, stages = build_stages(nodes, cfg)
        propagate(stages)
        keep = drop_unread_inputs(stages[0])
        if keep is not None:
            prefix.append(SelectInputs(keep))
        nonzero = sum(int(torch.count_nonzero(s.weight)) for s in stages)
        return evaluate(assemble(prefix, stages, None), data)["error"], nonzero

    current = dict(start)
    reference, size = trial(current)
    budget = reference + config.prune_tolerance / 100
    err, steps, trials, frac = reference, [], 1, 0.25
    while frac >= 1 / 64:
        best = None
        for name, _ in layers:
            kept = log_alpha[name][log_alpha[name] < current[name]]
            k = max(1, int(frac * kept.numel()))
            if k >= kept.numel():
                continue
            t = float(kept.sort(descending=True).values[k - 1])  # prunes log alpha >= t
            if bool((kept >= t).all()):  # ties: the whole layer would go
                continue
            e, n = trial({**current, name: t})
            trials += 1
            if e <= budget and n < size and (best is None or n < best[2]):
                best = (name, t, n, e)
        if best is None:
            frac /= 2
            continue
        current[best[0]], size, err = best[1], best[2], best[3]
        steps.append({"layer": best[0], "threshold": best[1], "nonzero": size, "error": err})
    report = {"mode": "fit", "tolerance_pp": config.prune_tolerance, "error_posterior": reference,
              "error_chosen": err, "trials": trials, "steps": steps,
              "thresholds": {n: {"posterior": start[n], "chosen": current[n]} for n in current}}
    return dataclasses.replace(config, thresholds={**config.thresholds, **current}), report


def _guard(prefix, stages: list[Stage], precisions: list[LayerPrecision], data: Iterable,
           config: CompressConfig) -> tuple[list[LayerPrecision], dict]:
    """The accuracy guard of the bits (precision.search_bits) on held-out data."""
    reference = evaluate(assemble(prefix, stages, None), data)
    error = lambda ps: evaluate(assemble(prefix, stages, ps), data)["error"]  # noqa: E731
    posterior_error = error(precisions)
    movable = [s.var is not None and s.name not in config.bits for s in stages]
    found, err = search_bits([s.weight for s in stages], precisions, movable, error,
                             reference["error"], config.bits_tolerance, config.bits_search)
    return found, {
        "mode": config.bits_search, "tolerance_pp": config.bits_tolerance,
        "examples": reference["n"], "error_unquantized": reference["error"],
        "error_posterior_bits": posterior_error, "error_chosen_bits": err,
        "changes": {s.name: p1.frac_bits - p0.frac_bits
                    for s, p0, p1 in zip(stages, precisions, found)
                    if p1.frac_bits != p0.frac_bits},
    }


@torch.no_grad()
def assemble(prefix: list[nn.Module], stages: list[Stage],
             precisions: list[LayerPrecision] | None) -> nn.Sequential:
    """The plain model: quantized weights (or float32 ones when ``precisions`` is None)."""
    layers = [copy.deepcopy(m) for m in prefix]
    for i, s in enumerate(stages):
        prec = None if precisions is None else precisions[i]
        w = s.weight if prec is None else quantize(s.weight, prec.frac_bits)
        layers.append(_plain_layer(s, w, prec))
        layers += s.after_modules()
    return nn.Sequential(*layers).eval()


def _plain_layer(s: Stage, w: torch.Tensor, prec: LayerPrecision | None) -> nn.Module:
    has_bias = s.had_bias or bool(s.bias.any())
    out_f, in_f = w.shape[:2]
    if s.conv:  # skip_init: no random initialisation, so the caller's RNG stream is untouched
        m = s.module
        layer = nn.utils.skip_init(nn.Conv2d, in_f, out_f, tuple(w.shape[2:]), stride=m.stride,
                                   padding=m.padding, dilation=m.dilation, bias=has_bias)
    else:
        layer = nn.utils.skip_init(nn.Linear, in_f, out_f, bias=has_bias)
    layer.weight.copy_(w.to(torch.float32))
    if has_bias:
        layer.bias.copy_(s.bias.to(torch.float32))  # biases stay float32 (not quantized)
    layer.kwh_bits = 32 if prec is None else prec.bits
    layer.kwh_frac_bits = None if prec is None else prec.frac_bits
    return layer


def _check_names(nodes, config: CompressConfig) -> None:
    config.check_layer_names([n.name for n in nodes if isinstance(n.module, BayesLayer)],
                             [n.name for n in nodes if n.weighted])


def _input_shape(model: nn.Module, nodes, config: CompressConfig, eval_data) -> tuple[int, ...]:
    """From the config, the model's ``kwh_input_shape``, the first eval batch, or a Linear."""
    if config.input_shape is not None:
        return tuple(config.input_shape)
    shape = getattr(model, "kwh_input_shape", None)
    if shape is not None:
        return tuple(int(d) for d in shape)
    if eval_data is not None:
        for batch in eval_data:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            return tuple(x.shape[1:])
    shape = None if nodes is None else infer_input_shape(nodes)
    if shape is None:
        raise ModelError("kwh.compress needs the input shape of this model to size its layers; "
                         "pass example_inputs=x (a batch), CompressConfig(input_shape=(C, H, W)) "
                         "or eval_data")
    return shape
