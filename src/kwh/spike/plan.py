"""Split a trained chain into blocks: weight layer (BatchNorm folded) + post-ops.

The chain is an ``nn.Sequential``, or a model whose forward() traces into one
(kwh.graph.chain, on example inputs); a graph that is not a chain is a ModelError.

Every Linear/Conv2d starts a block; the quantizer sits right before it, the layers after it
(ReLU, pooling, flatten, dropout) act on reconstructed activations, as in O'Connor and Welling
2016, section 4 (delta -> quantize -> W -> sigma -> nonlinearity). Max-pooling is nonlinear,
so it must see reconstructed activations; average pooling and flatten are linear and could sit
on either side, they stay with the post-ops so that the rounding network quantizes exactly the
input of each weight layer.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kwh.errors import ModelError
from kwh.graph import chain as graph_chain
from kwh.graph import explicit_chain, is_plain_sequential
from kwh.modules import SelectInputs

__all__ = ["Block", "Plan", "build_plan", "reference_forward", "input_shapes", "SUPPORTED"]

_WEIGHTED = (nn.Linear, nn.Conv2d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
_POST = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.Flatten, nn.Identity, SelectInputs)
_DROPS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d)
SUPPORTED = ("Linear", "Conv2d", "ReLU", "MaxPool2d", "AvgPool2d", "Flatten", "SelectInputs",
             "BatchNorm1d", "BatchNorm2d (folded into the preceding Linear/Conv2d)",
             "Dropout (identity at inference)", "Identity", "Sequential (flattened)")


@dataclass
class Block:
    """One weight layer (bias kept apart, BatchNorm folded) and the layers that follow it."""

    layer: nn.Module          # Linear or Conv2d copy, bias removed, BN folded into weight
    bias: Tensor | None       # (out,) added once per frame (dense) or once per sequence (sigma)
    post: nn.Sequential       # ops on reconstructed activations
    name: str                 # e.g. "0:Conv2d"

    def linear(self, x: Tensor) -> Tensor:
        """Apply the weight without bias: ``x @ W^T`` or ``conv(x, W)``."""
        return self.layer(x)

    def add_bias(self, z: Tensor) -> Tensor:
        """Add the bias, broadcast over positions for a convolution."""
        if self.bias is None:
            return z
        shape = (1, -1) + (1,) * (z.dim() - 2)
        return z + self.bias.view(shape)


@dataclass
class Plan:
    """Pre-ops on raw frames, then the blocks, in order."""

    pre: nn.Sequential
    blocks: list[Block]

    def to(self, dtype: torch.dtype) -> Plan:
        """A copy with every parameter cast to ``dtype``."""
        blocks = [Block(b.layer.to(dtype), None if b.bias is None else b.bias.to(dtype),
                        b.post, b.name) for b in copy.deepcopy(self.blocks)]
        return Plan(copy.deepcopy(self.pre), blocks)


def _flatten(model: nn.Module, example: Tensor | None = None) -> list[tuple[str, nn.Module]]:
    """Leaf layers of nested Sequentials, named ``index:Type``; any other model is traced on
    ``example`` and must be a chain of layers (kwh.graph.chain)."""
    if not explicit_chain(model) and not (example is None and is_plain_sequential(model)):
        if example is None:
            raise ModelError(f"{type(model).__name__} is not a plain nn.Sequential, so sigma-delta "
                             "conversion traces its forward() on example inputs: pass "
                             "example_inputs=x (a batch of inputs) to build_plan")
        return [(f"{link.name}:{type(link.module).__name__}", link.module)
                for link in graph_chain(model, example)]
    out: list[tuple[str, nn.Module]] = []
    for name, m in model.named_children():
        if isinstance(m, nn.Sequential):
            out += [(f"{name}.{n}", c) for n, c in _flatten(m)]
        else:
            out.append((f"{name}:{type(m).__name__}", m))
    return out


def _fold(layer: nn.Module, bn: nn.Module | None) -> tuple[nn.Module, Tensor | None]:
    """Copy of ``layer`` without bias and with ``bn`` folded in; returns (layer, bias)."""
    w = layer.weight.detach().clone()
    b = None if layer.bias is None else layer.bias.detach().clone()
    if bn is not None:
        if bn.running_mean is None or bn.running_var is None:
            raise ModelError(f"{type(bn).__name__} without running statistics cannot be folded; "
                             "build it with track_running_stats=True")
        if bn.num_features != w.shape[0]:
            raise ModelError(f"{type(bn).__name__}({bn.num_features}) does not match the "
                             f"{w.shape[0]} outputs of the layer before it")
        gamma = bn.weight.detach() if bn.affine else torch.ones_like(bn.running_mean)
        beta = bn.bias.detach() if bn.affine else torch.zeros_like(bn.running_mean)
        g = gamma / torch.sqrt(bn.running_var + bn.eps)  # (out,)
        w = w * g.view((-1,) + (1,) * (w.dim() - 1))
        b = beta - g * bn.running_mean + (0 if b is None else g * b)
    new = copy.deepcopy(layer)
    new.bias = None
    new.weight = nn.Parameter(w, requires_grad=False)
    return new, b


def _unsupported(name: str, m: nn.Module) -> ModelError:
    return ModelError(f"layer {name} ({m!r}) is not supported by sigma-delta conversion; "
                     f"supported layers: {', '.join(SUPPORTED)}")


def build_plan(model: nn.Module, example_inputs: Tensor | None = None) -> Plan:
    """Validate ``model`` and split it into pre-ops and blocks (BatchNorm folded).

    A model that is not a plain nn.Sequential is traced on ``example_inputs`` (a batch)."""
    layers = _flatten(model, example_inputs)
    pre: list[nn.Module] = []
    blocks: list[Block] = []
    i = 0
    while i < len(layers):
        name, m = layers[i]
        if isinstance(m, _WEIGHTED):
            if isinstance(m, nn.Conv2d) and m.padding_mode != "zeros":
                raise ModelError(f"layer {name}: padding_mode={m.padding_mode!r} is not "
                                 "supported; only 'zeros'")
            bn = None
            if i + 1 < len(layers) and isinstance(layers[i + 1][1], _NORMS):
                bn = layers[i + 1][1]
                i += 1
            layer, bias = _fold(m, bn)
            blocks.append(Block(layer, bias, nn.Sequential(), name))
        elif isinstance(m, _NORMS):
            raise ModelError(f"layer {name} does not directly follow a Linear/Conv2d, so it "
                            "cannot be folded; supported layers: " + ", ".join(SUPPORTED))
        elif isinstance(m, _POST) or isinstance(m, _DROPS):
            if getattr(m, "return_indices", False):
                raise ModelError(f"layer {name}: return_indices=True is not supported; "
                                 "build the MaxPool2d without it")
            op = nn.Identity() if isinstance(m, _DROPS) else copy.deepcopy(m)
            if getattr(op, "inplace", False):  # would overwrite the running sum (sigma)
                op.inplace = False
            (blocks[-1].post if blocks else pre).append(op)
        else:
            raise _unsupported(name, m)
        i += 1
    if not blocks:
        raise ModelError("model has no Linear or Conv2d layer to convert")
    for b in blocks:
        b.post.eval()
    return Plan(nn.Sequential(*pre).eval(), blocks)


def reference_forward(plan: Plan, x: Tensor) -> Tensor:
    """Dense forward pass through the plan (the original model, BN folded)."""
    x = plan.pre(x)
    for b in plan.blocks:
        x = b.post(b.add_bias(b.linear(x)))
    return x


def input_shapes(plan: Plan, frame: Tensor) -> list[tuple[int, ...]]:
    """Input shape (without batch) of every weight layer for one frame (1, *frame)."""
    shapes = []
    with torch.no_grad():
        a = plan.pre(frame)
        for b in plan.blocks:
            shapes.append(tuple(a.shape[1:]))
            a = b.post(b.add_bias(b.linear(a)))
    return shapes
