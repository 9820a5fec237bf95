"""Choose, layer by layer, between the dense and the CSR form by timing both on the real input."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from .sparse import sparse_unsupported, to_sparse
from .timing import layer_ms

__all__ = ["SparseChoice", "prepare", "format_choices", "SPARSE_MODES"]

SPARSE_MODES = ("auto", "never", "always")

# timer(layer, x) -> milliseconds of layer(x); injectable so that tests decide the timings
Timer = Callable[[nn.Module, Tensor], float]


@dataclass
class SparseChoice:
    """What ``prepare`` chose for one layer, and the timings it chose by (None: not timed)."""

    layer: str
    kind: str  # "Linear" or "Conv2d"
    density: float  # nonzero weights / weights
    dense_ms: float | None
    sparse_ms: float | None
    chosen: str  # "dense" or "sparse"
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _layer_inputs(model: nn.Module, example: Tensor, names: list[str]) -> dict[str, Tensor]:
    """The input each named layer receives when ``model`` runs on ``example``."""
    seen: dict[str, Tensor] = {}
    modules = dict(model.named_modules())
    hooks = [modules[n].register_forward_pre_hook(
        lambda _m, args, n=n: seen.__setitem__(n, args[0].detach().clone())) for n in names]
    try:
        with torch.inference_mode():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _set(model: nn.Module, name: str, layer: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, layer)


def prepare(model: nn.Module, sparse: str = "auto", *, example_inputs: Tensor | None = None,
            input_shape=None, batch_size: int = 1, repeats: int = 5, warmup: int = 1,
            margin: float = 1.1, timer: Timer | None = None) -> nn.Module:
    """A copy of ``model`` whose Linear/Conv2d layers run in CSR form where that is faster.

    sparse: "auto" times each layer dense and sparse (median of ``repeats``) on the input it
    really gets (``model`` run on ``example_inputs``, by default zeros of ``batch_size`` x
    ``input_shape`` or the summary's shape) and keeps the sparse form when
    sparse_ms * margin < dense_ms (default: sparse must be 10% faster, so that timing noise
    does not pick it for a dense layer); "never" keeps every layer dense; "always" makes every
    supported layer sparse. The copy carries ``kwh_sparse_choices`` (a list of SparseChoice).
    """
    if sparse not in SPARSE_MODES:
        raise ValueError(f"Unknown sparse mode {sparse!r}; choose one of: "
                         f"{', '.join(SPARSE_MODES)}")
    out = copy.deepcopy(model).eval()
    names = [n for n, m in out.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    inputs: dict[str, Tensor] = {}
    if sparse == "auto" and names:
        if example_inputs is None:
            from kwh.format.onnx import resolve_input_shape
            shape = resolve_input_shape(out, input_shape)
            example_inputs = torch.zeros(batch_size, *shape)  # (B, *input_shape)
        inputs = _layer_inputs(out, example_inputs, names)
    if timer is None:
        def timer(layer: nn.Module, x: Tensor) -> float:
            return layer_ms(layer, x, repeats, warmup)
    choices = []
    for name in names:
        layer = out.get_submodule(name)
        density = float((layer.weight != 0).float().mean())
        kind = type(layer).__name__
        reason = sparse_unsupported(layer)
        if reason or sparse == "never":
            choices.append(SparseChoice(name, kind, density, None, None, "dense",
                                        reason or "sparse='never'"))
            continue
        candidate = to_sparse(layer).eval()
        if sparse == "always":
            _set(out, name, candidate)
            choices.append(SparseChoice(name, kind, density, None, None, "sparse",
                                        "sparse='always'"))
            continue
        if name not in inputs:  # not reached by the example's forward pass
            choices.append(SparseChoice(name, kind, density, None, None, "dense",
                                        "not reached by the example input"))
            continue
        x = inputs[name]
        dense_ms, sparse_ms = float(timer(layer, x)), float(timer(candidate, x))
        chosen = "sparse" if sparse_ms * margin < dense_ms else "dense"
        if chosen == "sparse":
            _set(out, name, candidate)
        choices.append(SparseChoice(name, kind, density, dense_ms, sparse_ms, chosen,
                                    f"timed on input {tuple(x.shape)}"))
    out.kwh_sparse_choices = choices
    return out


def format_choices(choices: list[SparseChoice]) -> str:
    """One line per layer: name, kind, density, dense and sparse ms, the choice."""
    def ms(v):
        return "-" if v is None else f"{v:.3f}"
    lines = [f"{'layer':<12} {'kind':<7} {'density':>8} {'dense ms':>9} {'sparse ms':>9}  chosen"]
    for c in choices:
        note = f" ({c.reason})" if c.reason and c.dense_ms is None else ""
        lines.append(f"{c.layer:<12} {c.kind:<7} {c.density:>8.4f} {ms(c.dense_ms):>9} "
                     f"{ms(c.sparse_ms):>9}  {c.chosen}{note}")
    return "\n".join(lines)
