"""The functions a graph-layout .kwh file may apply to activations, beside the allowed layers.

A graph file (docs/format.md, "The graph layout") is a list of operations, each a layer of
``kwh.format.modules.SPECS`` (one input) or one of these functions. Each ``OpSpec`` says how
many inputs the function takes, how its JSON arguments are checked (every failure a
FormatError), how it maps the inputs' shapes (one example's, no batch dimension) to its
output's, and how it runs. Shapes here are fully known: the graph layout requires the input
shape. Every function keeps the batch as the first dimension and works within one example:
dims count the batch as 0 and name only dims >= 1.
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

__all__ = ["OpSpec", "OPS", "MAX_INPUTS", "MAX_DIM", "MAX_SCALAR", "check_op", "op_shape"]

MAX_INPUTS = 256  # inputs of one add or cat
MAX_DIM = 8       # dims count the batch as 0; an example has at most MAX_DIM dimensions
MAX_SCALAR = 1e30  # largest magnitude of the number of a mul_scalar or div_scalar


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

def _check_flatten(a: dict, w: str) -> dict:
    """{} (torch.flatten(x, 1)) or {"start_dim", "end_dim"}, 1 <= start_dim <= end_dim."""
    fs.fields(a, w, (), ["start_dim", "end_dim"])
    if not a:
        return {}
    if len(a) != 2:
        raise FormatError(f"{w}.args gives start_dim and end_dim together, or neither "
                          "(torch.flatten(x, 1))")
    start = fs.get_int(a, "start_dim", w, 1, MAX_DIM)
    end = fs.get_int(a, "end_dim", w, 1, MAX_DIM)
    if end < start:
        raise FormatError(f"{w}: end_dim={end} must be at least start_dim={start} (both count "
                          "the batch as dimension 0)")
    return {"start_dim": start, "end_dim": end}


def _flatten_shape(a: dict, shapes: list[tuple[int, ...]], w: str) -> tuple[int, ...]:
    s = shapes[0]
    if not s:
        raise FormatError(f"{w} needs an input with at least one dimension after the batch, "
                          f"got shape {_show(s)}")
    if not a:
        return (math.prod(s),)
    start, end = a["start_dim"], a["end_dim"]
    if end > len(s):
        raise FormatError(f"{w}: start_dim={start}, end_dim={end} are out of range for an "
                          f"input of shape {_show(s)} (rank {len(s) + 1} with the batch)")
    return s[:start - 1] + (math.prod(s[start - 1:end]),) + s[end:]


def _flatten(a: dict, xs: list[Tensor]) -> Tensor:
    if not a:
        return torch.flatten(xs[0], 1)
    return torch.flatten(xs[0], a["start_dim"], a["end_dim"])


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


# ------------------------------------------------------------------ transpose, permute

def _dims_list(a: dict, key: str, w: str, lo: int, hi: int) -> list[int]:
    """A list field of lo..hi dimension indices, each 1..MAX_DIM."""
    dims = fs.get_list(a, key, w, hi)
    if len(dims) < lo:
        raise FormatError(f"{w}.{key} must list {lo} to {hi} dimensions, got {len(dims)}")
    return [fs.get_int({str(k): d}, str(k), f"{w}.{key}", 1, MAX_DIM) for k, d in enumerate(dims)]


def _check_transpose(a: dict, w: str) -> dict:
    fs.fields(a, w, ["dims"])
    dims = _dims_list(a, "dims", w, 2, 2)
    if dims[0] >= dims[1]:
        raise FormatError(f"{w}.dims must be two different dimensions in increasing order "
                          f"(1 is the first after the batch), got {dims}")
    return {"dims": dims}


def _transpose_shape(a: dict, shapes: list[tuple[int, ...]], w: str) -> tuple[int, ...]:
    s = shapes[0]
    d0, d1 = a["dims"]
    if d1 > len(s):
        raise FormatError(f"{w}: dims={a['dims']} are out of range for an input of shape "
                          f"{_show(s)} (rank {len(s) + 1} with the batch)")
    out = list(s)
    out[d0 - 1], out[d1 - 1] = s[d1 - 1], s[d0 - 1]
    return tuple(out)


def _transpose(a: dict, xs: list[Tensor]) -> Tensor:
    return xs[0].transpose(*a["dims"])


def _check_permute(a: dict, w: str) -> dict:
    fs.fields(a, w, ["dims"])
    dims = _dims_list(a, "dims", w, 1, MAX_DIM)
    if sorted(dims) != list(range(1, len(dims) + 1)):
        raise FormatError(f"{w}.dims must be an ordering of the dimensions 1..{len(dims)} of "
                          f"one example (the batch stays first), got {dims}")
    return {"dims": dims}


def _permute_shape(a: dict, shapes: list[tuple[int, ...]], w: str) -> tuple[int, ...]:
    s = shapes[0]
    if len(a["dims"]) != len(s):
        raise FormatError(f"{w}: dims={a['dims']} orders {len(a['dims'])} dimensions; the "
                          f"input of shape {_show(s)} has {len(s)} after the batch")
    return tuple(s[d - 1] for d in a["dims"])


def _permute(a: dict, xs: list[Tensor]) -> Tensor:
    return xs[0].permute(0, *a["dims"])


# ------------------------------------------------------------------ reshape

def _check_reshape(a: dict, w: str) -> dict:
    fs.fields(a, w, ["shape"])
    sizes = fs.get_list(a, "shape", w, MAX_DIM)
    if not sizes:
        raise FormatError(f"{w}.shape must list 1..{MAX_DIM} sizes of one example (the batch "
                          "is kept as the first dimension)")
    return {"shape": [fs.get_int({str(k): d}, str(k), f"{w}.shape", 1, fs.INT_MAX)
                      for k, d in enumerate(sizes)]}


def _reshape_shape(a: dict, shapes: list[tuple[int, ...]], w: str) -> tuple[int, ...]:
    s, out = shapes[0], tuple(a["shape"])
    if math.prod(out) != math.prod(s):
        raise FormatError(f"{w}: shape {_show(out)} holds {math.prod(out)} elements per "
                          f"example, its input {_show(s)} {math.prod(s)}; a reshape keeps the "
                          "element count")
    return out


def _reshape(a: dict, xs: list[Tensor]) -> Tensor:
    return xs[0].reshape(xs[0].shape[0], *a["shape"])


# ------------------------------------------------------------------ matmul

def _matmul_shape(a: dict, shapes: list[tuple[int, ...]], w: str) -> tuple[int, ...]:
    x, y = shapes
    if len(x) < 2 or len(x) != len(y) or x[:-2] != y[:-2] or x[-1] != y[-2]:
        raise FormatError(f"{w}: inputs of shapes {_show(x)} and {_show(y)}; matmul needs two "
                          "inputs of the same rank (at least 2 after the batch), equal leading "
                          "sizes (no broadcasting) and the first's last size equal to the "
                          "second's next-to-last (the inner size)")
    return x[:-1] + (y[-1],)


def _matmul(a: dict, xs: list[Tensor]) -> Tensor:
    return torch.matmul(xs[0], xs[1])


# ------------------------------------------------------------------ multiply, divide by a number

def _check_scalar(nonzero: bool) -> Callable[[dict, str], dict]:
    def check(a: dict, w: str) -> dict:
        fs.fields(a, w, ["scalar"])
        value = fs.get_float(a, "scalar", w, -MAX_SCALAR, MAX_SCALAR)
        if nonzero and value == 0:
            raise FormatError(f"{w}.scalar is 0; a division needs a non-zero number")
        return {"scalar": value}
    return check


def _same_shape(a: dict, shapes: list[tuple[int, ...]], w: str) -> tuple[int, ...]:
    return shapes[0]


def _mul_scalar(a: dict, xs: list[Tensor]) -> Tensor:
    return xs[0] * a["scalar"]


def _div_scalar(a: dict, xs: list[Tensor]) -> Tensor:
    return xs[0] / a["scalar"]


# ------------------------------------------------------------------ the registry

OPS: dict[str, OpSpec] = {
    "add": OpSpec(2, MAX_INPUTS, _check_none, _add_shape, _add),
    "cat": OpSpec(2, MAX_INPUTS, _check_cat, _cat_shape, _cat),
    "flatten": OpSpec(1, 1, _check_flatten, _flatten_shape, _flatten),
    "mean": OpSpec(1, 1, _check_mean, _mean_shape, _mean),
    "transpose": OpSpec(1, 1, _check_transpose, _transpose_shape, _transpose),
    "permute": OpSpec(1, 1, _check_permute, _permute_shape, _permute),
    "reshape": OpSpec(1, 1, _check_reshape, _reshape_shape, _reshape),
    "matmul": OpSpec(2, 2, _check_none, _matmul_shape, _matmul),
    "mul_scalar": OpSpec(1, 1, _check_scalar(False), _same_shape, _mul_scalar),
    "div_scalar": OpSpec(1, 1, _check_scalar(True), _same_shape, _div_scalar),
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
