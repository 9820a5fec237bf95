"""The allow-list of layers a .kwh file may hold: JSON arguments, tensors, shapes, rebuilding.

Each allowed torch class has one ``ModuleSpec``: how to read its constructor arguments from a
module (save), how to check them strictly (load; every failure a FormatError), which tensors
it carries, how it changes one example's shape, and how to rebuild it without running its
initialiser. Only these exact classes are accepted; subclasses are refused (their forward
could differ).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kwh.errors import FormatError, ModelError
from kwh.format import schema as fs
from kwh.format import shapes as shp
from kwh.modules import PositionEmbedding, SelectInputs

__all__ = ["ModuleSpec", "SPECS", "TensorSlot", "spec_for", "module_args", "check_args",
           "propagate"]

BIG = fs.INT_MAX       # sizes: features, channels
WINDOW = 2**16         # kernel sizes, strides, paddings, dilations
MAX_NORM_DIMS = 8      # dimensions a LayerNorm normalizes over


@dataclass(frozen=True)
class TensorSlot:
    """One tensor a layer carries: its name, its shape, and whether it may be quantized."""

    name: str
    shape: tuple[int, ...]
    quantizable: bool
    buffer: bool = False


@dataclass(frozen=True)
class ModuleSpec:
    """How one allowed layer class is written, checked, rebuilt and shaped."""

    cls: type[nn.Module]
    read: Callable[[nn.Module], dict]          # module -> JSON arguments
    check: Callable[[dict, str], dict]         # JSON arguments -> checked arguments
    build: Callable[[dict], nn.Module]         # checked arguments -> module (meta tensors)
    tensors: Callable[[dict], list[TensorSlot]] = lambda a: []
    shape: Callable[[dict, shp.Shape, str], shp.Shape] = lambda a, s, w: s
    finish: Callable[[nn.Module, dict, str], None] = lambda m, a, w: None  # tensors set


def _pair(value: Any) -> list[int]:
    if isinstance(value, (tuple, list)):
        return [_int(v) for v in value]
    return [_int(value), _int(value)]


def _int(value: Any) -> Any:
    """Plain Python int for int-like values (numpy ints); anything else is passed on as is."""
    if isinstance(value, bool):
        return value
    try:
        return int(value) if int(value) == value else value
    except (TypeError, ValueError, OverflowError):
        return value


def _float(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    return float(value)


# ------------------------------------------------------------------ parameter-free layers

def _plain(cls: type[nn.Module]) -> ModuleSpec:
    """A layer with no arguments that keeps the shape (ReLU, Tanh, Identity, ...)."""
    return ModuleSpec(cls, read=lambda m: {}, check=lambda a, w: fs.fields(a, w, ()),
                      build=lambda a: cls())


def _with_floats(cls: type[nn.Module], bounds: dict[str, tuple[float, float]],
                 extra: Callable[[dict, str], None] | None = None) -> ModuleSpec:
    """A shape-keeping layer whose arguments are finite numbers within bounds."""
    def check(a: dict, w: str) -> dict:
        fs.fields(a, w, bounds)
        out = {k: fs.get_float(a, k, w, lo, hi) for k, (lo, hi) in bounds.items()}
        if extra:
            extra(out, w)
        return out
    return ModuleSpec(cls, read=lambda m: {k: _float(getattr(m, k)) for k in bounds},
                      check=check, build=lambda a: cls(**a))


def _hardtanh_order(a: dict, w: str) -> None:
    if not a["min_val"] < a["max_val"]:
        raise FormatError(f"{w}: min_val={a['min_val']} must be below max_val={a['max_val']}")


def _check_gelu(a: dict, w: str) -> dict:
    fs.fields(a, w, ["approximate"])
    return {"approximate": fs.get_choice(a, "approximate", w, ["none", "tanh"])}


def _softmax(cls: type[nn.Module]) -> ModuleSpec:
    def check(a: dict, w: str) -> dict:
        fs.fields(a, w, ["dim"])
        return {"dim": fs.get_int(a, "dim", w, -64, 64)}

    def shape(a: dict, s: shp.Shape, w: str) -> shp.Shape:
        shp.check_dim_index(s, a["dim"], w)
        return s
    return ModuleSpec(cls, read=lambda m: {"dim": _int(m.dim)}, check=check,
                      build=lambda a: cls(dim=a["dim"]), shape=shape)


def _check_dropout(a: dict, w: str) -> dict:
    fs.fields(a, w, ["p"])
    return {"p": fs.get_float(a, "p", w, 0.0, 1.0)}


def _chw_same(a: dict, s: shp.Shape, w: str) -> shp.Shape:
    return shp.as_chw(s, w)


# ------------------------------------------------------------------ Linear and Conv2d

def _check_linear(a: dict, w: str) -> dict:
    fs.fields(a, w, ["in_features", "out_features", "bias"])
    return {"in_features": fs.get_int(a, "in_features", w, 1, BIG),
            "out_features": fs.get_int(a, "out_features", w, 1, BIG),
            "bias": fs.get_bool(a, "bias", w)}


def _linear_tensors(a: dict) -> list[TensorSlot]:
    slots = [TensorSlot("weight", (a["out_features"], a["in_features"]), True)]
    if a["bias"]:
        slots.append(TensorSlot("bias", (a["out_features"],), False))
    return slots


LINEAR = ModuleSpec(
    nn.Linear,
    read=lambda m: {"in_features": _int(m.in_features), "out_features": _int(m.out_features),
                    "bias": m.bias is not None},
    check=_check_linear,
    build=lambda a: nn.Linear(a["in_features"], a["out_features"], bias=a["bias"],
                              device="meta"),
    tensors=_linear_tensors,
    shape=lambda a, s, w: shp.linear_out(s, a["in_features"], a["out_features"], w),
)

_CONV_KEYS = ["in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
              "groups", "bias", "padding_mode"]


def _read_conv(m: nn.Conv2d) -> dict:
    padding = m.padding if isinstance(m.padding, str) else _pair(m.padding)
    return {"in_channels": _int(m.in_channels), "out_channels": _int(m.out_channels),
            "kernel_size": _pair(m.kernel_size), "stride": _pair(m.stride), "padding": padding,
            "dilation": _pair(m.dilation), "groups": _int(m.groups), "bias": m.bias is not None,
            "padding_mode": m.padding_mode}


def _check_conv(a: dict, w: str) -> dict:
    fs.fields(a, w, _CONV_KEYS)
    out = {"in_channels": fs.get_int(a, "in_channels", w, 1, BIG),
           "out_channels": fs.get_int(a, "out_channels", w, 1, BIG),
           "kernel_size": fs.get_pair(a, "kernel_size", w, 1, WINDOW),
           "stride": fs.get_pair(a, "stride", w, 1, WINDOW),
           "dilation": fs.get_pair(a, "dilation", w, 1, WINDOW),
           "groups": fs.get_int(a, "groups", w, 1, BIG),
           "bias": fs.get_bool(a, "bias", w),
           "padding_mode": fs.get_choice(a, "padding_mode", w, ["zeros"])}
    if isinstance(a["padding"], str):
        out["padding"] = fs.get_choice(a, "padding", w, ["same", "valid"])
        if out["padding"] == "same" and out["stride"] != (1, 1):
            raise FormatError(f"{w}: padding='same' needs stride (1, 1), got {out['stride']}")
    else:
        out["padding"] = fs.get_pair(a, "padding", w, 0, WINDOW)
    g = out["groups"]
    if out["in_channels"] % g or out["out_channels"] % g:
        raise FormatError(f"{w}: groups={g} must divide in_channels={out['in_channels']} "
                          f"and out_channels={out['out_channels']}")
    return out


def _build_conv(a: dict) -> nn.Conv2d:
    return nn.Conv2d(a["in_channels"], a["out_channels"], a["kernel_size"], stride=a["stride"],
                     padding=a["padding"], dilation=a["dilation"], groups=a["groups"],
                     bias=a["bias"], padding_mode=a["padding_mode"], device="meta")


def _conv_tensors(a: dict) -> list[TensorSlot]:
    kh, kw = a["kernel_size"]
    slots = [TensorSlot("weight", (a["out_channels"], a["in_channels"] // a["groups"], kh, kw),
                        True)]
    if a["bias"]:
        slots.append(TensorSlot("bias", (a["out_channels"],), False))
    return slots


def _conv_shape(a: dict, s: shp.Shape, w: str) -> shp.Shape:
    c, h, wd = shp.as_chw(s, w)
    if c is not None and c != a["in_channels"]:
        raise FormatError(f"{w} expects {a['in_channels']} input channels but the previous "
                          f"layer gives {c}")
    if a["padding"] == "same":
        return (a["out_channels"], h, wd)
    pad = (0, 0) if a["padding"] == "valid" else a["padding"]
    sizes = [shp.spatial_out(n, k, st, p, d, False, w) for n, k, st, p, d in
             zip((h, wd), a["kernel_size"], a["stride"], pad, a["dilation"])]
    return (a["out_channels"], *sizes)


CONV2D = ModuleSpec(nn.Conv2d, read=_read_conv, check=_check_conv, build=_build_conv,
                    tensors=_conv_tensors, shape=_conv_shape)


# ------------------------------------------------------------------ pooling

def _check_half_kernel(a: dict, w: str) -> None:
    for k, p in zip(a["kernel_size"], a["padding"]):
        if p > k // 2:
            raise FormatError(f"{w}: padding {a['padding']} must be at most half the kernel "
                              f"size {a['kernel_size']}")


def _check_maxpool(a: dict, w: str) -> dict:
    fs.fields(a, w, ["kernel_size", "stride", "padding", "dilation", "ceil_mode"])
    out = {"kernel_size": fs.get_pair(a, "kernel_size", w, 1, WINDOW),
           "stride": fs.get_pair(a, "stride", w, 1, WINDOW),
           "padding": fs.get_pair(a, "padding", w, 0, WINDOW),
           "dilation": fs.get_pair(a, "dilation", w, 1, WINDOW),
           "ceil_mode": fs.get_bool(a, "ceil_mode", w)}
    _check_half_kernel(out, w)
    return out


def _read_maxpool(m: nn.MaxPool2d) -> dict:
    if m.return_indices:
        raise ModelError("MaxPool2d(return_indices=True) cannot be stored in a .kwh file "
                         "(a chain layer must return one tensor); use return_indices=False")
    return {"kernel_size": _pair(m.kernel_size), "stride": _pair(m.stride),
            "padding": _pair(m.padding), "dilation": _pair(m.dilation),
            "ceil_mode": bool(m.ceil_mode)}


def _pool_shape(a: dict, s: shp.Shape, w: str) -> shp.Shape:
    c, h, wd = shp.as_chw(s, w)
    dilation = a.get("dilation", (1, 1))
    sizes = [shp.spatial_out(n, k, st, p, d, a["ceil_mode"], w) for n, k, st, p, d in
             zip((h, wd), a["kernel_size"], a["stride"], a["padding"], dilation)]
    return (c, *sizes)


def _check_avgpool(a: dict, w: str) -> dict:
    fs.fields(a, w, ["kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                     "divisor_override"])
    out = {"kernel_size": fs.get_pair(a, "kernel_size", w, 1, WINDOW),
           "stride": fs.get_pair(a, "stride", w, 1, WINDOW),
           "padding": fs.get_pair(a, "padding", w, 0, WINDOW),
           "ceil_mode": fs.get_bool(a, "ceil_mode", w),
           "count_include_pad": fs.get_bool(a, "count_include_pad", w),
           "divisor_override": None if a["divisor_override"] is None else
           fs.get_int(a, "divisor_override", w, 1, BIG)}
    _check_half_kernel(out, w)
    return out


def _read_avgpool(m: nn.AvgPool2d) -> dict:
    return {"kernel_size": _pair(m.kernel_size), "stride": _pair(m.stride),
            "padding": _pair(m.padding), "ceil_mode": bool(m.ceil_mode),
            "count_include_pad": bool(m.count_include_pad),
            "divisor_override": None if m.divisor_override is None else _int(m.divisor_override)}


def _check_adaptive(a: dict, w: str) -> dict:
    fs.fields(a, w, ["output_size"])
    return {"output_size": fs.get_pair(a, "output_size", w, 1, WINDOW)}


def _adaptive_shape(a: dict, s: shp.Shape, w: str) -> shp.Shape:
    c, _, _ = shp.as_chw(s, w)
    return (c, *a["output_size"])


# ------------------------------------------------------------------ Flatten, BatchNorm

def _check_flatten(a: dict, w: str) -> dict:
    fs.fields(a, w, ["start_dim", "end_dim"])
    start = fs.get_int(a, "start_dim", w, 1, 64)
    end = fs.get_int(a, "end_dim", w, -1, 64)
    if end != -1 and end < start:
        raise FormatError(f"{w}: end_dim={end} must be -1 or at least start_dim={start} "
                          "(a Flatten must keep the batch dimension)")
    return {"start_dim": start, "end_dim": end}


def _read_batchnorm(m: nn.modules.batchnorm._BatchNorm) -> dict:
    tracked = m.num_batches_tracked
    return {"num_features": _int(m.num_features), "eps": _float(m.eps),
            "momentum": None if m.momentum is None else _float(m.momentum),
            "affine": bool(m.affine), "track_running_stats": bool(m.track_running_stats),
            "num_batches_tracked": None if tracked is None else int(tracked.item())}


def _check_batchnorm(a: dict, w: str) -> dict:
    fs.fields(a, w, ["num_features", "eps", "momentum", "affine", "track_running_stats",
                     "num_batches_tracked"])
    out = {"num_features": fs.get_int(a, "num_features", w, 1, BIG),
           "eps": fs.get_float(a, "eps", w, 0.0, 1e6),
           "momentum": fs.get_float(a, "momentum", w, 0.0, 1.0, nullable=True),
           "affine": fs.get_bool(a, "affine", w),
           "track_running_stats": fs.get_bool(a, "track_running_stats", w)}
    if out["eps"] <= 0:
        raise FormatError(f"{w}.eps={out['eps']} must be positive")
    if out["track_running_stats"]:
        out["num_batches_tracked"] = fs.get_int(a, "num_batches_tracked", w, 0, 2**62)
    elif a["num_batches_tracked"] is not None:
        raise FormatError(f"{w}.num_batches_tracked must be null without running statistics")
    else:
        out["num_batches_tracked"] = None
    return out


def _batchnorm_tensors(a: dict) -> list[TensorSlot]:
    n = (a["num_features"],)
    slots = []
    if a["affine"]:
        slots += [TensorSlot("weight", n, False), TensorSlot("bias", n, False)]
    if a["track_running_stats"]:
        slots += [TensorSlot("running_mean", n, False, buffer=True),
                  TensorSlot("running_var", n, False, buffer=True)]
    return slots


def _batchnorm(cls: type[nn.Module], two_d: bool) -> ModuleSpec:
    def build(a: dict) -> nn.Module:
        return cls(a["num_features"], eps=a["eps"], momentum=a["momentum"], affine=a["affine"],
                   track_running_stats=a["track_running_stats"], device="meta")

    def shape(a: dict, s: shp.Shape, w: str) -> shp.Shape:
        if two_d:
            s = shp.as_chw(s, w)
        elif s and s[0] is Ellipsis:
            return s
        elif len(s) not in (1, 2):
            raise FormatError(f"{w} needs a (C,) or (C, L) input, got rank {len(s)}")
        if s[0] is not None and s[0] != a["num_features"]:
            raise FormatError(f"{w} has num_features={a['num_features']} but its input has "
                              f"{s[0]} channels")
        return (a["num_features"],) + tuple(s[1:])
    return ModuleSpec(cls, read=_read_batchnorm, check=_check_batchnorm, build=build,
                      tensors=_batchnorm_tensors, shape=shape)


# ------------------------------------------------------------------ SelectInputs

def _check_select(a: dict, w: str) -> dict:
    fs.fields(a, w, ["in_features", "out_features"])
    out = {"in_features": fs.get_int(a, "in_features", w, 1, BIG),
           "out_features": fs.get_int(a, "out_features", w, 1, BIG)}
    if out["out_features"] > out["in_features"]:
        raise FormatError(f"{w}: keeps {out['out_features']} of {out['in_features']} inputs")
    return out


def _build_select(a: dict) -> SelectInputs:
    # A one-input placeholder: the loader sets the stored mask, then _finish_select runs.
    return SelectInputs(torch.ones(1))


def _finish_select(m: SelectInputs, a: dict, w: str) -> None:
    """Derive the index from the loaded mask; its count must match the header's."""
    if not bool(((m.keep == 0) | (m.keep == 1)).all()):
        raise FormatError(f"{w}: keep must hold only 0 and 1")
    count = int(m.keep.sum().item())
    if count != a["out_features"]:
        raise FormatError(f"{w}: keep marks {count} inputs, the header says "
                          f"{a['out_features']}")
    m.refresh()


def _select_shape(a: dict, s: shp.Shape, w: str) -> shp.Shape:
    if not s:
        raise FormatError(f"{w} needs an input with a feature or channel dimension")
    if s[0] is not None and s[0] is not Ellipsis and s[0] != a["in_features"]:
        raise FormatError(f"{w} selects from {a['in_features']} inputs but gets {s[0]}")
    return (a["out_features"],) + tuple(s[1:])


SELECT_INPUTS = ModuleSpec(
    SelectInputs,
    read=lambda m: {"in_features": _int(m.in_features), "out_features": _int(m.out_features)},
    check=_check_select, build=_build_select,
    tensors=lambda a: [TensorSlot("keep", (a["in_features"],), True, buffer=True)],
    shape=_select_shape, finish=_finish_select)


# ------------------------------------------------------------------ LayerNorm

def _read_layernorm(m: nn.LayerNorm) -> dict:
    return {"normalized_shape": [_int(d) for d in m.normalized_shape], "eps": _float(m.eps),
            "elementwise_affine": bool(m.elementwise_affine), "bias": m.bias is not None}


def _check_layernorm(a: dict, w: str) -> dict:
    fs.fields(a, w, ["normalized_shape", "eps", "elementwise_affine", "bias"])
    sizes = fs.get_list(a, "normalized_shape", w, MAX_NORM_DIMS)
    if not sizes:
        raise FormatError(f"{w}.normalized_shape must list 1..{MAX_NORM_DIMS} sizes (the last "
                          "dimensions of the input, normalized over together)")
    out = {"normalized_shape": tuple(fs.get_int({str(k): d}, str(k), f"{w}.normalized_shape",
                                                1, BIG) for k, d in enumerate(sizes)),
           "eps": fs.get_float(a, "eps", w, 0.0, 1e6),
           "elementwise_affine": fs.get_bool(a, "elementwise_affine", w),
           "bias": fs.get_bool(a, "bias", w)}
    if out["eps"] <= 0:
        raise FormatError(f"{w}.eps={out['eps']} must be positive")
    if out["bias"] and not out["elementwise_affine"]:
        raise FormatError(f"{w}: bias=true needs elementwise_affine=true (a LayerNorm without "
                          "affine tensors has no bias)")
    return out


def _build_layernorm(a: dict) -> nn.LayerNorm:
    return nn.LayerNorm(a["normalized_shape"], eps=a["eps"],
                        elementwise_affine=a["elementwise_affine"], bias=a["bias"],
                        device="meta")


def _layernorm_tensors(a: dict) -> list[TensorSlot]:
    n = a["normalized_shape"]
    slots = [TensorSlot("weight", n, False)] if a["elementwise_affine"] else []
    if a["bias"]:
        slots.append(TensorSlot("bias", n, False))
    return slots


def _trailing(shape: shp.Shape, want: tuple[int, ...], what: str, w: str) -> shp.Shape:
    """Check that the last dims of ``shape`` are ``want`` (unknown sizes pass); returns it."""
    open_rank = bool(shape) and shape[0] is Ellipsis
    tail = tuple(shape[1:]) if open_rank else tuple(shape)
    if not open_rank and len(tail) < len(want):
        raise FormatError(f"{w} {what} {_show(want)}, but its input has shape {_show(shape)}")
    for got, need in zip(reversed(tail), reversed(want)):
        if got is not None and got != need:
            raise FormatError(f"{w} {what} {_show(want)}, but its input has shape "
                              f"{_show(shape)}")
    return shape


def _show(shape: shp.Shape) -> str:
    return "(" + ", ".join("..." if d is Ellipsis else "?" if d is None else str(d)
                           for d in shape) + ")"


LAYER_NORM = ModuleSpec(
    nn.LayerNorm, read=_read_layernorm, check=_check_layernorm, build=_build_layernorm,
    tensors=_layernorm_tensors,
    shape=lambda a, s, w: _trailing(s, a["normalized_shape"],
                                    "normalizes over its last dimensions of sizes", w))


# ------------------------------------------------------------------ PositionEmbedding

def _check_position(a: dict, w: str) -> dict:
    fs.fields(a, w, ["tokens", "dim"])
    return {"tokens": fs.get_int(a, "tokens", w, 1, BIG), "dim": fs.get_int(a, "dim", w, 1, BIG)}


def _position_shape(a: dict, s: shp.Shape, w: str) -> shp.Shape:
    want = (a["tokens"], a["dim"])
    if not (s and s[0] is Ellipsis) and len(s) != 2:
        raise FormatError(f"{w} adds its table to inputs of shape {_show(want)} (tokens, dim), "
                          f"got {_show(s)}")
    return _trailing(s, want, "adds its table to inputs of shape", w)


def _finish_position(m: PositionEmbedding, a: dict, w: str) -> None:
    if tuple(m.weight.shape) != (a["tokens"], a["dim"]):
        raise FormatError(f"unexpected: {w} holds a table of shape {tuple(m.weight.shape)}")


POSITION_EMBEDDING = ModuleSpec(
    PositionEmbedding,
    read=lambda m: {"tokens": _int(m.tokens), "dim": _int(m.dim)},
    check=_check_position,
    # a one-entry placeholder: the loader sets the stored table as its weight
    build=lambda a: PositionEmbedding(1, 1),
    tensors=lambda a: [TensorSlot("weight", (a["tokens"], a["dim"]), False)],
    shape=_position_shape, finish=_finish_position)


# ------------------------------------------------------------------ the registry

SPECS: dict[str, ModuleSpec] = {
    "Linear": LINEAR,
    "Conv2d": CONV2D,
    "BatchNorm1d": _batchnorm(nn.BatchNorm1d, two_d=False),
    "BatchNorm2d": _batchnorm(nn.BatchNorm2d, two_d=True),
    "MaxPool2d": ModuleSpec(nn.MaxPool2d, read=_read_maxpool, check=_check_maxpool,
                            build=lambda a: nn.MaxPool2d(**a), shape=_pool_shape),
    "AvgPool2d": ModuleSpec(nn.AvgPool2d, read=_read_avgpool, check=_check_avgpool,
                            build=lambda a: nn.AvgPool2d(**a), shape=_pool_shape),
    "AdaptiveAvgPool2d": ModuleSpec(
        nn.AdaptiveAvgPool2d, read=lambda m: {"output_size": _pair(m.output_size)},
        check=_check_adaptive, build=lambda a: nn.AdaptiveAvgPool2d(a["output_size"]),
        shape=_adaptive_shape),
    "Flatten": ModuleSpec(
        nn.Flatten, read=lambda m: {"start_dim": _int(m.start_dim), "end_dim": _int(m.end_dim)},
        check=_check_flatten, build=lambda a: nn.Flatten(**a),
        shape=lambda a, s, w: shp.flatten_out(s, a["start_dim"], a["end_dim"], w)),
    "Dropout": ModuleSpec(nn.Dropout, read=lambda m: {"p": _float(m.p)}, check=_check_dropout,
                          build=lambda a: nn.Dropout(a["p"])),
    "Dropout2d": ModuleSpec(nn.Dropout2d, read=lambda m: {"p": _float(m.p)},
                            check=_check_dropout, build=lambda a: nn.Dropout2d(a["p"]),
                            shape=_chw_same),
    "Identity": _plain(nn.Identity),
    "ReLU": _plain(nn.ReLU),
    "ReLU6": _plain(nn.ReLU6),
    "Sigmoid": _plain(nn.Sigmoid),
    "Tanh": _plain(nn.Tanh),
    "SiLU": _plain(nn.SiLU),
    "Mish": _plain(nn.Mish),
    "Hardswish": _plain(nn.Hardswish),
    "Hardsigmoid": _plain(nn.Hardsigmoid),
    "Softsign": _plain(nn.Softsign),
    "GELU": ModuleSpec(nn.GELU, read=lambda m: {"approximate": m.approximate},
                       check=_check_gelu, build=lambda a: nn.GELU(**a)),
    "LeakyReLU": _with_floats(nn.LeakyReLU, {"negative_slope": (-1e6, 1e6)}),
    "ELU": _with_floats(nn.ELU, {"alpha": (-1e6, 1e6)}),
    "Hardtanh": _with_floats(nn.Hardtanh, {"min_val": (-1e30, 1e30), "max_val": (-1e30, 1e30)},
                             extra=_hardtanh_order),
    "Softplus": _with_floats(nn.Softplus, {"beta": (1e-30, 1e30), "threshold": (-1e30, 1e30)}),
    "Softmax": _softmax(nn.Softmax),
    "LogSoftmax": _softmax(nn.LogSoftmax),
    "LayerNorm": LAYER_NORM,
    "PositionEmbedding": POSITION_EMBEDDING,
    "SelectInputs": SELECT_INPUTS,
}


def spec_for(module: nn.Module, where: str) -> tuple[str, ModuleSpec]:
    """The registered spec of a module's exact class, or a ModelError listing the allowed ones."""
    for name, spec in SPECS.items():
        if type(module) is spec.cls:
            return name, spec
    hint = ""
    if any(hasattr(module, a) for a in ("prior", "log_alpha")):
        hint = " (a Bayesian layer: run kwh.compress(model) first)"
    raise ModelError(f"{where}: {type(module).__name__} cannot be stored in a .kwh file{hint}; "
                     f"allowed layers: {', '.join(SPECS)}")


def module_args(module: nn.Module, spec: ModuleSpec, where: str) -> tuple[dict, dict]:
    """The JSON constructor arguments of a module, and the same checked as the loader will."""
    args = spec.read(module)
    try:
        return args, spec.check(dict(args), where)
    except FormatError as err:
        raise ModelError(f"cannot store this layer: {err}") from None


def check_args(kind: str, args: Any, where: str) -> tuple[ModuleSpec, dict]:
    """Look up a header's module type and check its arguments."""
    spec = SPECS.get(kind) if isinstance(kind, str) else None
    if spec is None:
        raise FormatError(f"{where}: module type {str(kind)[:40]!r} is not allowed; "
                          f"allowed: {', '.join(SPECS)}")
    if not isinstance(args, dict):
        raise FormatError(f"{where}.args must be a JSON object")
    return spec, spec.check(args, where)


def propagate(spec: ModuleSpec, args: dict, shape: shp.Shape, where: str) -> shp.Shape:
    """The shape after this layer, checked against what the layer expects."""
    out = spec.shape(args, shape, where)
    shp.check_activation_size(out, where)
    return out
