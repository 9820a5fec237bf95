"""The functions a graph-layout .kwh file may apply to activations, beside the allowed layers.

A graph file (docs/format.md, "The graph layout") is a list of operations, each a layer of
``kwh.format.modules.SPECS`` (one input) or one of these functions. Each ``OpSpec`` says how
many inputs the function takes, how its JSON arguments are checked (every failure a
FormatError), how it maps the inputs' shapes (one example's, no batch dimension) to its
output's, and how it runs. Shapes here are fully known: the graph layout requires the input
shape.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce
from typing import Any

import torch
from torch import Tensor

from kwh.errors import FormatError
from kwh.format import schema as fs
from kwh.format import shapes as shp

__all__ = ["OpSpec", "OPS", "MAX_INPUTS", "MAX_DIM", "check_op", "op_shape"]

MAX_INPUTS = 256  # inputs of one add or cat
MAX_DIM = 8       # dims count the batch as 0; an example has at most MAX_DIM dimensions


@dataclass(frozen=True)
class OpSpec:
    """One allowed function: its arity, argument check, shape rule and computation."""

    min_inputs: int
    max_inputs: int
    check: Callable[[dict, str], dict]                       # JSON args -> checked args
    shape: Callable[[dict, list[tuple[int, ...]], str], tuple[int, ...]]
    run: Callable[[dict, list[Tensor]], Tensor]


def _show(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


# ------------------------------------------------------------------ add

def _check_none(a: dict, w: str) -> dict:
    fs.fields(a, w, ())
    return {}


def _add_shape(a: dict, shapes: list[tuple[int, ...]], w: str) -> tuple[int, ...]:
    for k, s in enumerate(shapes[1:], 1):
        if s != shapes[0]:
            raise FormatError(f"{w}: input {k} has shape {_show(s)}, input 0 {_show(shapes[0])}; "
                              "add needs inputs of equal shapes (no broadcasting)")
    return shapes[0]


def _add(a: dict, xs: list[Tensor]) -> Tensor:
    return reduce(operator.add, xs)  # left to right, as a + b + c


# ------------------------------------------------------------------ cat

def _check_cat(a: dict, w: str) -> dict:
    fs.fields(a, w, ["dim"])
    return {"dim": fs.get_int(a, "dim", w, 1, MAX_DIM)}


def _cat_shape(a: dict, shapes: list[tuple[int, ...]], w: str) -> tuple[int, ...]:
    d = a["dim"]
    first = shapes[0]
    if d > len(first):
        raise FormatError(f"{w}: dim={d} is out of range for inputs of shape {_show(first)} "
                          f"(rank {len(first) + 1} with the batch)")
    for k, s in enumerate(shapes[1:], 1):
        if len(s) != len(first) or s[:d - 1] != first[:d - 1] or s[d:] != first[d:]:
            raise FormatError(f"{w}: input {k} has shape {_show(s)}, input 0 {_show(first)}; "
                              f"cat along dim {d} needs every other size equal")
    return first[:d - 1] + (sum(s[d - 1] for s in shapes),) + first[d:]


def _cat(a: dict, xs: list[Tensor]) -> Tensor:
    return torch.cat(xs, a["dim"])


# ------------------------------------------------------------------ flatten

def _flatten_shape(a: dict, shapes: list[tuple[int, ...]], w: str) -> tuple[int, ...]:
    return (math.prod(shapes[0]),)


def _flatten(a: dict, xs: list[Tensor]) -> Tensor:
    return torch.flatten(xs[0], 1)


# ------------------------------------------------------------------ mean

def _check_mean(a: dict, w: str) -> dict:
    fs.fields(a, w, ["dims", "keepdim"])
    dims = fs.get_list(a, "dims", w, MAX_DIM)
    checked = [fs.get_int({"d": d}, "d", f"{w}.dims", 1, MAX_DIM) for d in dims]
    if not checked or any(x >= y for x, y in zip(checked, checked[1:])):
        raise FormatError(f"{w}.dims must list 1..{MAX_DIM} dimensions in increasing order "
                          f"(1 is the first after the batch), got {checked}")
    return {"dims": checked, "keepdim": fs.get_bool(a, "keepdim", w)}


def _mean_shape(a: dict, shapes: list[tuple[int, ...]], w: str) -> tuple[int, ...]:
    s = shapes[0]
    if a["dims"][-1] > len(s):
        raise FormatError(f"{w}: dims={a['dims']} are out of range for an input of shape "
                          f"{_show(s)} (rank {len(s) + 1} with the batch)")
    if a["keepdim"]:
        return tuple(1 if i + 1 in a["dims"] else d for i, d in enumerate(s))
    return tuple(d for i, d in enumerate(s) if i + 1 not in a["dims"])


def _mean(a: dict, xs: list[Tensor]) -> Tensor:
    return xs[0].mean(tuple(a["dims"]), keepdim=a["keepdim"])


# ------------------------------------------------------------------ the registry

OPS: dict[str, OpSpec] = {
    "add": OpSpec(2, MAX_INPUTS, _check_none, _add_shape, _add),
    "cat": OpSpec(2, MAX_INPUTS, _check_cat, _cat_shape, _cat),
    "flatten": OpSpec(1, 1, _check_none, _flatten_shape, _flatten),
    "mean": OpSpec(1, 1, _check_mean, _mean_shape, _mean),
}


def check_op(op: str, args: Any, where: str) -> tuple[OpSpec, dict]:
    """The spec of an allowed function and its checked arguments (FormatError otherwise)."""
    spec = OPS[op]
    if not isinstance(args, dict):
        raise FormatError(f"{where}.args must be a JSON object")
    return spec, spec.check(args, where)


def op_shape(spec: OpSpec, args: dict, shapes: list[tuple[int, ...]],
             where: str) -> tuple[int, ...]:
    """The output shape of a function on inputs of ``shapes``, checked."""
    out = spec.shape(args, shapes, where)
    shp.check_activation_size(out, where)
    return out
