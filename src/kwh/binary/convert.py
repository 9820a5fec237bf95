"""binarize_: swap a model's Linear and Conv2d layers for binary ones, in place."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from kwh.errors import ModelError

from .layers import BinaryConv2d, BinaryLayer, BinaryLinear, _check_threshold, _choice

__all__ = ["binarize_", "BinarizeConfig", "BinarizeReport"]

ACTIVATIONS = ("binary", "ternary", "none")
FIRST_LAYER = ("keep", "binary")
LAST_LAYER = ("keep", "binary")

# Modules with parameters that binarize_ leaves as they are (normalisation, learned slopes).
_KEPT = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm,
         nn.InstanceNorm1d, nn.InstanceNorm2d, nn.PReLU)
# Activations whose output is >= 0: sign() of it is always +1, so they become Hardtanh.
_NONNEGATIVE = (nn.ReLU, nn.ReLU6)


@dataclass(frozen=True)
class BinarizeConfig:
    """Options of :func:`binarize_` (see there), checked on construction."""

    activations: str = "binary"
    scale: str = "none"
    first_layer: str = "keep"
    last_layer: str = "keep"
    threshold: float = 0.5

    def __post_init__(self):
        _choice("activations", self.activations, ACTIVATIONS)
        _choice("scale", self.scale, ("none", "channel"))
        _choice("first_layer", self.first_layer, FIRST_LAYER)
        _choice("last_layer", self.last_layer, LAST_LAYER)
        _check_threshold(self.threshold)


@dataclass
class BinarizeReport:
    """What binarize_ did: converted layers (name -> inputs), kept ones, swapped activations."""

    config: BinarizeConfig
    converted: dict[str, str] = field(default_factory=dict)   # name -> "real" / "binary" / ...
    kept: list[str] = field(default_factory=list)             # weight layers left float
    hardtanh: list[str] = field(default_factory=list)         # ReLU / ReLU6 -> Hardtanh

    def __str__(self) -> str:
        rows = ", ".join(f"{n} ({i} inputs)" for n, i in self.converted.items())
        return (f"binarize_ (scale {self.config.scale}): converted {len(self.converted)} layers "
                f"[{rows}]; kept float: {', '.join(self.kept) or 'none'}; "
                f"ReLU -> Hardtanh: {', '.join(self.hardtanh) or 'none'}")


def _slots(model: nn.Module) -> list[tuple[str, nn.Module, str, nn.Module]]:
    """(full name, parent, attribute, module) of every submodule in registration order
    (depth first), a shared module at each of its places."""
    out = []
    for name, m in model.named_modules(remove_duplicate=False):
        if name:
            pname, _, attr = name.rpartition(".")
            out.append((name, model.get_submodule(pname) if pname else model, attr, m))
    return out


def _check(name: str, m: nn.Module) -> None:
    if isinstance(m, BinaryLayer):
        raise ModelError(f"layer {name!r} is already binary ({type(m).__name__}); "
                         "binarize_ a float model")
    if type(m) in (nn.Linear, nn.Conv2d) or isinstance(m, _KEPT):
        if isinstance(m, nn.Conv2d) and m.padding_mode != "zeros":
            raise ModelError(f"layer {name!r}: padding_mode={m.padding_mode!r} is not supported; "
                             "only 'zeros'")
        return
    if any(True for _ in m.parameters(recurse=False)):
        raise ModelError(f"layer {name!r} ({type(m).__name__}) is not supported by binarize_; "
                         "supported: Linear and Conv2d (converted), BatchNorm, LayerNorm, "
                         "GroupNorm, InstanceNorm and PReLU (kept)")


def binarize_(model: nn.Module, *, activations: str = "binary", scale: str = "none",
              first_layer: str = "keep", last_layer: str = "keep",
              threshold: float = 0.5) -> BinarizeReport:
    """Make ``model`` a binary network in place (Courbariaux, Hubara et al. 2016).

    - Every nn.Linear / nn.Conv2d becomes a :class:`BinaryLinear` / :class:`BinaryConv2d`
      computing with sign(W) (sign(0) = +1), except the last one when ``last_layer="keep"``
      (the default: it stays float). The layer's own Parameters become the latent weights,
      clipped to [-1, 1]; an optimizer built before keeps working.
    - ``activations``: each converted layer binarizes its own input ("binary": sign(x),
      "ternary": -1 / 0 / +1 with |x| <= ``threshold`` -> 0; straight-through gradient
      1{|x| <= 1}) or not ("none": binary weights only, real inputs). The first layer keeps
      its real input when ``first_layer="keep"`` (the default, as in both papers).
    - ``scale="channel"``: XNOR-Net's alpha = mean |W| per output channel.
    - Where inputs are binarized, an nn.ReLU / nn.ReLU6 before a converted layer becomes
      nn.Hardtanh (sign of a ReLU output is always +1; Hubara et al. use hardtanh, whose
      gradient is the same 1{|x| <= 1}). BatchNorm stays; the papers put one after each layer.

    "First", "last" and "before" follow registration order (``model.modules()``), which is
    call order for nn.Sequential; functional activations in a ``forward()`` are not seen.
    Train the latent weights with any optimizer and :func:`clip_latent_` after each step.
    """
    cfg = BinarizeConfig(activations, scale, first_layer, last_layer, threshold)
    if isinstance(model, BinaryLayer) or type(model) in (nn.Linear, nn.Conv2d):
        raise ModelError("binarize_ replaces layers inside a model; wrap a single layer in "
                         "nn.Sequential(layer) first")
    slots = _slots(model)
    for name, _, _, child in slots:
        _check(name, child)
    weights: list[int] = []  # ids of the weight layers, first occurrence order
    for _, _, _, child in slots:
        if type(child) in (nn.Linear, nn.Conv2d) and id(child) not in weights:
            weights.append(id(child))
    if not weights:
        raise ModelError("binarize_ found no nn.Linear or nn.Conv2d layer to convert")
    quantized = "real" if activations == "none" else activations

    def inputs_of(i: int) -> str | None:  # the i-th weight layer's inputs; None: kept float
        if i == len(weights) - 1 and last_layer == "keep":
            return None
        return "real" if i == 0 and first_layer == "keep" else quantized

    plan = {wid: inputs_of(i) for i, wid in enumerate(weights)}
    report = BinarizeReport(cfg)
    new: dict[int, nn.Module] = {}
    next_inputs = None  # inputs of the next weight layer after each slot, filled backwards
    swaps: list[tuple[str, nn.Module, str, nn.Module]] = []
    for name, parent, attr, child in reversed(slots):
        if id(child) in plan:
            next_inputs = plan[id(child)]
        elif isinstance(child, _NONNEGATIVE) and next_inputs in ("binary", "ternary"):
            swaps.append((name, parent, attr, nn.Hardtanh(inplace=child.inplace)))
    for name, parent, attr, child in slots:
        if id(child) not in plan:
            continue
        inputs = plan[id(child)]
        if inputs is None:
            if name not in report.kept:
                report.kept.append(name)
            continue
        if id(child) not in new:
            opts = dict(inputs=inputs, scale=scale, threshold=threshold)
            new[id(child)] = (BinaryLinear.from_linear(child, **opts) if type(child) is nn.Linear
                              else BinaryConv2d.from_conv(child, **opts))
            report.converted[name] = inputs
        setattr(parent, attr, new[id(child)])
    for name, parent, attr, act in reversed(swaps):
        setattr(parent, attr, act)
        report.hardtanh.append(name)
    return report
