"""kwh.compress: a trained (Bayesian) model -> a physically smaller, low-bit plain model.

Steps: read each layer's eval-mode weight (posterior mean x keep mask) and posterior variance,
fold BatchNorm into the layer before it, propagate dead units both ways (propagate.py), pick
bits per layer from the posterior (precision.py), quantize, and build plain Linear/Conv2d
layers carrying ``kwh_bits`` and ``kwh_frac_bits``; the model carries ``kwh_summary``.
A model whose traced graph is not a chain goes through kwh.compress.dag instead, which shares
the stages, precision, guards and summary.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterable

import torch
from torch import nn

from kwh.bayes import BayesLayer
from kwh.compress.chain import (
    WEIGHTED,
    TokenInput,
    flatten_chain,
    infer_input_shape,
    probe_shapes,
)
from kwh.compress.config import CompressConfig
from kwh.compress.dag import build_graph, graph_summary, plan_graph
from kwh.compress.floats import snap_floats_guarded_
from kwh.compress.metrics import evaluate, nonzero_macs
from kwh.compress.precision import (
    LayerPrecision,
    choose_precision,
    quantize,
    search_bits,
    with_frac_bits,
)
from kwh.compress.propagate import drop_unread_inputs, propagate, snap_to_grid
from kwh.compress.stages import Stage, build_stages, plain_layer
from kwh.compress.summary import Summary, summarize
from kwh.compress.weights import compress_weights
from kwh.errors import ModelError
from kwh.graph import ChainError, example_input, explicit_chain
from kwh.modules import SelectInputs


def compress(model: nn.Module, config: CompressConfig | None = None, *,
             eval_data: Iterable | None = None, guard_data: Iterable | None = None,
             example_inputs: torch.Tensor | None = None, mode: str = "structured",
             **options) -> nn.Module:
    """Prune, fold and quantize ``model``; returns a smaller plain model with ``kwh_summary``.

    ``model``: an nn.Sequential, or any module traced with torch.fx on ``example_inputs`` (a
    batch; it also gives the input shape, else ``config.input_shape``, the model's
    ``kwh_input_shape`` or the first ``eval_data`` batch, and a random example is traced).
    A chain of layers (kwh.graph.chain) comes back as a plain nn.Sequential. Any other graph
    (residual additions, concatenations, branches, BatchNorm, global pooling, other
    traceable operations), and a chain whose Linear layers act on tokens (batch, ...,
    features), comes back as an fx.GraphModule running the same graph with plain,
    quantized Linear/Conv2d layers, BatchNorm folded or sliced, and ``kwh_input_shape``: the
    channels coupled by additions and concatenations are removed together when they are
    unread or constant everywhere, operations no channel can cross exactly freeze the
    channels they touch, and a kwh.modules.SelfAttention loses whole heads
    (kwh.compress.dag). A module with weights called twice, data-dependent control flow, a
    tensor attribute used in forward(), several inputs or a tuple output are a ModelError
    that names the construct.
    ``mode="weights"`` works on any model (those too): its Bayesian layers become plain,
    masked and quantized in place, the architecture unchanged (kwh.compress.weights); no
    example input is needed.
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
        example_inputs = example_inputs.to(next(model.parameters()).device)
        try:
            nodes = flatten_chain(model, example_inputs)
        except ChainError:  # a join, a branch, an op a chain cannot hold: prune the graph
            return _compress_graph(model, example_inputs, input_shape, config, eval_data,
                                   guard_data)
    _check_names(nodes, config)
    try:
        probe_shapes(nodes, input_shape)
    except TokenInput:  # a Linear on tokens: the graph follows its units on the last dim
        if example_inputs is None:
            example_inputs = example_input(model, input_shape)
        example_inputs = example_inputs.to(next(model.parameters()).device)
        return _compress_graph(model, example_inputs, input_shape, config, eval_data,
                               guard_data)
    prune_guard = None
    if guard_data is not None and config.prune_search != "off":
        config, prune_guard = fit_thresholds([(n.name, n.module) for n in nodes], config,
                                             guard_data, lambda cfg: _chain_trial(nodes, cfg))
    with torch.no_grad():
        prefix, stages = build_stages(nodes, config)
        propagate(stages)
        keep_inputs = drop_unread_inputs(stages[0])
        if keep_inputs is not None:
            prefix.append(SelectInputs(keep_inputs))
        prefix0 = prefix
        precisions = [choose_precision(s.name, s.weight, s.var, s.kept, config) for s in stages]
        guard = None
        if guard_data is not None and config.quantize and config.bits_search != "off":
            precisions, guard = _guard(lambda ps: assemble(prefix, stages, ps), stages,
                                       precisions, guard_data, config)
        unquantized, rounded = stages, {}
        if config.quantize:
            prefix, stages, precisions, rounded = _drop_rounded_units(prefix, stages, precisions,
                                                                      keep_inputs)
        small = assemble(prefix, stages, precisions if config.quantize else None)
    summary = summarize(nodes, stages, precisions, small, input_shape, config)
    if rounded:
        summary["units_removed_by_rounding"] = rounded
    return _finish(small, summary, guard, prune_guard, eval_data, guard_data, config,
                   lambda: assemble(prefix0, unquantized, None) if config.quantize else small)


def _drop_rounded_units(prefix: list[nn.Module], stages: list[Stage],
                        precisions: list[LayerPrecision], keep_inputs: torch.Tensor | None
                        ) -> tuple[list[nn.Module], list[Stage], list[LayerPrecision], dict]:
    """The chain's stages on their fixed-point grids with the units rounding emptied removed.

    A unit whose every kept weight rounds to 0 outputs a constant in the quantized model, and
    an input no quantized weight reads adds nothing: kwh.compress.propagate removes both
    exactly (constants folded with the consumer's quantized weights; no new carrier merging,
    which would take a column off its grid), and the first layer's unread inputs are
    dropped: the quantized model computes what it computed before, in fewer units and
    weights. Returns
    (prefix, stages, precisions with the magnitude bits of what is left, units removed per
    layer)."""
    snapped = snap_to_grid(stages, [p.frac_bits for p in precisions])
    propagate(snapped, merge=False)
    keep = drop_unread_inputs(snapped[0])
    if keep is not None:
        if keep_inputs is None:
            prefix = [*prefix, SelectInputs(keep)]
        else:  # the mask over the original inputs: drop the newly unread ones of those kept
            full = keep_inputs.clone()
            full[keep_inputs.nonzero().flatten()[~keep]] = False
            prefix = [*prefix[:-1], SelectInputs(full)]
    return (prefix, snapped, *_after_rounding(stages, snapped, precisions))


def _after_rounding(before: list[Stage], after: list[Stage], precisions: list[LayerPrecision]
                    ) -> tuple[list[LayerPrecision], dict[str, int]]:
    """The precisions with the magnitude bits of the weights left, and the units rounding
    removed per layer (only layers that lost some)."""
    precisions = [with_frac_bits(s.weight, p, p.frac_bits, p.source)
                  for s, p in zip(after, precisions)]
    rounded = {s.name: int(s0.weight.shape[0] - s.weight.shape[0])
               for s0, s in zip(before, after) if s.weight.shape[0] < s0.weight.shape[0]}
    return precisions, rounded


def _compress_graph(model: nn.Module, example: torch.Tensor, input_shape: tuple[int, ...],
                    config: CompressConfig, eval_data: Iterable | None,
                    guard_data: Iterable | None) -> nn.Module:
    """compress() for a traced model that is not a chain: kwh.compress.dag."""
    with torch.no_grad():
        plan = plan_graph(model, example, config)
    names = list(plan.stages)
    config.check_layer_names([n for n in names if isinstance(plan.stages[n].module, BayesLayer)],
                             names)
    prune_guard = None
    if guard_data is not None and config.prune_search != "off":
        layers = [(n, s.module) for n, s in plan.stages.items()]
        config, prune_guard = fit_thresholds(layers, config, guard_data,
                                             lambda cfg: _graph_trial(model, example, cfg))
        with torch.no_grad():
            plan = plan_graph(model, example, config)
    stages = list(plan.stages.values())
    with torch.no_grad():
        precisions = [choose_precision(n, s.weight, s.var, s.kept, config)
                      for n, s in plan.stages.items()]
        guard = None
        if guard_data is not None and config.quantize and config.bits_search != "off":
            precisions, guard = _guard(lambda ps: build_graph(plan, ps), stages, precisions,
                                       guard_data, config)
        unquantized = plan
        rounded = {}
        if config.quantize and not any(s.carriers for s in stages):
            # the quantized model's plan: units rounding emptied are removed too (a plan that
            # merged constants into carriers keeps its own: merging on the grid would need a
            # second rounding)
            try:
                snapped = plan_graph(model, example, config,
                                     {n: p.frac_bits for n, p in zip(names, precisions)})
            except ModelError:  # the clean-up is optional: the plan checked above stands
                snapped = None
            if snapped is not None and all(  # never larger than the checked plan
                    s.weight.shape[0] <= s0.weight.shape[0] and
                    s.weight.shape[1] <= s0.weight.shape[1]
                    for s, s0 in zip(snapped.stages.values(), stages)):
                plan = snapped
                precisions, rounded = _after_rounding(stages, list(plan.stages.values()),
                                                      precisions)
        small = build_graph(plan, precisions if config.quantize else None)
    small.kwh_input_shape = tuple(input_shape)
    summary = graph_summary(plan, precisions, small, input_shape, config)
    if rounded:
        summary["units_removed_by_rounding"] = rounded
    return _finish(small, summary, guard, prune_guard, eval_data, guard_data, config,
                   lambda: build_graph(unquantized, None) if config.quantize else small)


def _finish(small: nn.Module, summary: dict, guard: dict | None, prune_guard: dict | None,
            eval_data: Iterable | None, guard_data: Iterable | None, config: CompressConfig,
            unquantized: Callable[[], nn.Module]) -> nn.Module:
    """``small`` with its other float tensors on grids (config.float_bits) and its summary:
    the guards' reports, the errors on ``eval_data``."""
    if config.quantize and config.float_bits is not None:
        error = None if guard_data is None else (
            lambda: evaluate(small, guard_data)["error"])
        summary["float_grids"] = snap_floats_guarded_(small, config.float_bits, error,
                                                      config.bits_tolerance)
    if guard is not None:
        summary["bits_guard"] = guard
    if prune_guard is not None:
        summary["prune_guard"] = prune_guard
    if eval_data is not None:
        before, after = evaluate(unquantized(), eval_data), evaluate(small, eval_data)
        summary["eval"] = {
            "examples": before["n"],
            "error_before_quantization": before["error"],  # = the Bayesian model in eval mode
            "error_after_quantization": after["error"],
        }
    small.kwh_summary = Summary(summary)
    return small


@torch.no_grad()
def _chain_trial(nodes, config: CompressConfig) -> tuple[nn.Module, int]:
    """The unquantized chain pruned under ``config`` and its nonzero weights."""
    prefix, stages = build_stages(nodes, config)
    propagate(stages)
    keep = drop_unread_inputs(stages[0])
    if keep is not None:
        prefix.append(SelectInputs(keep))
    return assemble(prefix, stages, None), sum(int(torch.count_nonzero(s.weight)) for s in stages)


@torch.no_grad()
def _graph_trial(model: nn.Module, example: torch.Tensor,
                 config: CompressConfig) -> tuple[nn.Module, int]:
    """The unquantized graph pruned under ``config`` and its nonzero weights."""
    plan = plan_graph(model, example, config)
    nonzero = sum(int(torch.count_nonzero(s.weight)) for s in plan.stages.values())
    return build_graph(plan, None), nonzero


@torch.no_grad()
def fit_thresholds(layers: list[tuple[str, nn.Module]], config: CompressConfig, data: Iterable,
                   trial: Callable[[CompressConfig], tuple[nn.Module, int]]
                   ) -> tuple[CompressConfig, dict]:
    """Per-layer pruning thresholds fit on held-out data (``config.prune_search="fit"``).

    From the posterior's thresholds, repeatedly try, for each Bayesian layer without a user
    threshold, pruning the ``frac`` of its kept groups (or weights) with the largest log alpha
    (never all of them); take the try that leaves the fewest nonzero weights after dead units
    are propagated (``prune_search="fit-macs"``: the fewest multiplications by nonzero
    weights, kwh.compress.metrics.nonzero_macs on the first example of ``data``), provided
    the unquantized model's error on ``data`` stays within
    ``prune_tolerance`` points of the error at the posterior's thresholds. When no try
    passes, halve ``frac``; stop below 1/64. ``layers``: (name, module) of the model's layers;
    ``trial(config)``: the unquantized model pruned under ``config`` and its nonzero weights.
    Returns the config with the thresholds, and a report for the summary.
    """
    layers = [(name, m) for name, m in layers
              if isinstance(m, BayesLayer) and name not in config.thresholds]
    log_alpha, start = {}, {}
    for name, m in layers:
        log_alpha[name] = m.prior.log_alpha().detach().to("cpu", torch.float64).reshape(-1)
        t = config.threshold_for(name)
        start[name] = float(t if t is not None else
                            (m.threshold if m.threshold is not None else m.prior.threshold))

    macs = config.prune_search == "fit-macs"
    example = None
    if macs:
        first = next(iter(data), None)
        if not isinstance(first, (tuple, list)) or not len(first) or first[0].shape[0] < 1:
            raise ValueError("prune_search='fit-macs' needs guard data: batches of "
                             "(inputs, labels)")
        example = first[0][:1].cpu()

    def attempt(thresholds: dict[str, float]) -> tuple[float, int]:
        cfg = dataclasses.replace(config, thresholds={**config.thresholds, **thresholds})
        model, nonzero = trial(cfg)
        if macs:
            nonzero = nonzero_macs(model, example)
        return evaluate(model, data)["error"], nonzero

    current = dict(start)
    reference, size = attempt(current)
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
            e, n = attempt({**current, name: t})
            trials += 1
            if e <= budget and n < size and (best is None or n < best[2]):
                best = (name, t, n, e)
        if best is None:
            frac /= 2
            continue
        current[best[0]], size, err = best[1], best[2], best[3]
        steps.append({"layer": best[0], "threshold": best[1],
                      ("nonzero_macs" if macs else "nonzero"): size, "error": err})
    report = {"mode": config.prune_search, "tolerance_pp": config.prune_tolerance,
              "error_posterior": reference,
              "error_chosen": err, "trials": trials, "steps": steps,
              "thresholds": {n: {"posterior": start[n], "chosen": current[n]} for n in current}}
    return dataclasses.replace(config, thresholds={**config.thresholds, **current}), report


def _guard(build: Callable[[list[LayerPrecision] | None], nn.Module], stages: list[Stage],
           precisions: list[LayerPrecision], data: Iterable,
           config: CompressConfig) -> tuple[list[LayerPrecision], dict]:
    """The accuracy guard of the bits (precision.search_bits) on held-out data; ``build(ps)``
    makes the model quantized to ``ps`` (unquantized for None)."""
    reference = evaluate(build(None), data)
    error = lambda ps: evaluate(build(ps), data)["error"]  # noqa: E731
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
        layers.append(plain_layer(s, w, prec))
        layers += s.after_modules()
    return nn.Sequential(*layers).eval()


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
