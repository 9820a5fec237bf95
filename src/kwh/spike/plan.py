"""Split a trained chain into blocks: weight layer (BatchNorm folded) + post-ops.

The chain is an ``nn.Sequential``, or a model whose forward() traces into one
(kwh.graph.chain, on example inputs); a graph that is not a chain (a residual addition, a
concatenation) becomes a ``GraphPlan``: its weight layers are the blocks, and the traced graph
runs everything between them on reconstructed activations.

Every Linear/Conv2d starts a block; the quantizer sits right before it, the layers after it
(ReLU, pooling, flatten, dropout) act on reconstructed activations, as in O'Connor and Welling
2016, section 4 (delta -> quantize -> W -> sigma -> nonlinearity). Max-pooling is nonlinear,
so it must see reconstructed activations; average pooling and flatten are linear and could sit
on either side, they stay with the post-ops so that the rounding network quantizes exactly the
input of each weight layer.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, fx, nn

from kwh.errors import ModelError
from kwh.graph import (
    ChainError,
    check_calls,
    check_io,
    example_input,
    explicit_chain,
    is_plain_sequential,
    trace,
)
from kwh.graph import chain as graph_chain
from kwh.modules import SelectInputs

__all__ = ["Block", "Plan", "GraphPlan", "as_plan", "build_plan", "reference_forward",
           "input_shapes", "SUPPORTED"]

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


# layer_fn(l, block, a) -> the block's reconstructed pre-activation (bias included) for its
# input ``a``: what each network (dense, rounding, sigma-delta, ...) does at a weight layer.
LayerFn = Callable[[int, Block, Tensor], Tensor]


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

    def frame(self, x: Tensor, layer_fn: LayerFn) -> Tensor:
        """One frame through the network, ``layer_fn`` at every weight layer, in order."""
        a = self.pre(x)
        for l, b in enumerate(self.blocks):
            a = b.post(layer_fn(l, b, a))
        return a


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


def build_plan(model: nn.Module, example_inputs: Tensor | None = None) -> Plan | GraphPlan:
    """Validate ``model`` and split it into pre-ops and blocks (BatchNorm folded).

    A model that is not a plain nn.Sequential is traced on ``example_inputs`` (a batch; by
    default a random one of the model's ``kwh_input_shape``, as a loaded .kwh file has). A
    traced graph that is not a chain (residual additions, concatenations, branches) becomes
    a GraphPlan: the same blocks, run by the graph."""
    if example_inputs is None and not is_plain_sequential(model) \
            and getattr(model, "kwh_input_shape", None) is not None:
        example_inputs = example_input(model, tuple(model.kwh_input_shape))
    try:
        layers = _flatten(model, example_inputs)
    except ChainError:
        return build_graph_plan(model, example_inputs)
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


def as_plan(model: nn.Module | Plan | GraphPlan) -> Plan | GraphPlan:
    """``model`` if it is already a plan, else build_plan(model)."""
    return model if isinstance(model, (Plan, GraphPlan)) else build_plan(model)


def _dense(l: int, b: Block, a: Tensor) -> Tensor:
    return b.add_bias(b.linear(a))


def reference_forward(plan: Plan | GraphPlan, x: Tensor) -> Tensor:
    """Dense forward pass through the plan (the original model, BN folded)."""
    return plan.frame(x, _dense)


def input_shapes(plan: Plan | GraphPlan, frame: Tensor) -> list[tuple[int, ...]]:
    """Input shape (without batch) of every weight layer for one frame (1, *frame)."""
    shapes: list[tuple[int, ...]] = [()] * len(plan.blocks)

    def record(l: int, b: Block, a: Tensor) -> Tensor:
        shapes[l] = tuple(a.shape[1:])
        return _dense(l, b, a)

    with torch.no_grad():
        plan.frame(frame, record)
    return shapes


# ------------------------------------------------------------------------ graphs

class GraphPlan:
    """A traced model that is not a chain, as a sigma-delta network: its weight layers as
    blocks (bias apart, a BatchNorm that only reads one of them folded in, no post-ops), run
    by the traced graph itself. Every other operation (residual additions, concatenations,
    activations, pooling, reshapes) acts on the reconstructed activations, as the post-ops of
    a chain do; additions are linear, so they commute with the temporal difference and the
    sigma-delta network still computes exactly what the rounding network computes.
    """

    def __init__(self, gm: fx.GraphModule, blocks: list[Block], targets: list[str],
                 folded: set[str]):
        self.gm, self.blocks, self.targets, self.folded = gm, blocks, targets, folded
        self._index = {t: i for i, t in enumerate(targets)}

    def to(self, dtype: torch.dtype) -> GraphPlan:
        """A copy with every parameter and buffer cast to ``dtype``."""
        blocks = [Block(b.layer.to(dtype), None if b.bias is None else b.bias.to(dtype),
                        b.post, b.name) for b in copy.deepcopy(self.blocks)]
        return GraphPlan(copy.deepcopy(self.gm).to(dtype), blocks, list(self.targets),
                         set(self.folded))

    def frame(self, x: Tensor, layer_fn: LayerFn) -> Tensor:
        """One frame through the graph, ``layer_fn`` at every weight layer."""
        return _GraphRun(self, layer_fn).run(x)


class _GraphRun(fx.Interpreter):
    """Runs a GraphPlan's graph: ``layer_fn`` at its blocks, folded BatchNorms skipped."""

    def __init__(self, plan: GraphPlan, layer_fn: LayerFn):
        super().__init__(plan.gm)
        self.plan, self.layer_fn = plan, layer_fn

    def call_module(self, target, args, kwargs):
        plan = self.plan
        if target in plan._index:
            l = plan._index[target]
            return self.layer_fn(l, plan.blocks[l], args[0])
        if target in plan.folded:
            return args[0]
        return super().call_module(target, args, kwargs)


def build_graph_plan(model: nn.Module, example: Tensor | None) -> GraphPlan:
    """The GraphPlan of ``model`` traced on ``example``; ModelError naming what it cannot run
    (a layer with weights other than Linear/Conv2d/BatchNorm, a BatchNorm that does not only
    read one weight layer's output, shared weights, several inputs or outputs)."""
    if example is None:
        raise ModelError(f"{type(model).__name__} is not a chain of layers, so sigma-delta "
                         "conversion traces its graph on example inputs: pass "
                         "example_inputs=x (a batch of inputs) to build_plan")
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        gm = trace(model)
        with torch.no_grad():
            ref = model(example)
    finally:
        for m, f in flags:
            m.training = f
    check_io(model, gm)
    check_calls(gm)
    gm = _out_of_place(copy.deepcopy(gm).eval())  # its own modules, in eval mode
    modules = dict(gm.named_modules())
    users = {n: list(n.users) for n in gm.graph.nodes}
    blocks, targets, folded = [], [], set()
    for n in gm.graph.nodes:
        if n.op != "call_module":
            continue
        m = modules[n.target]
        if isinstance(m, _WEIGHTED):
            if isinstance(m, nn.Conv2d) and m.padding_mode != "zeros":
                raise ModelError(f"layer {n.target}: padding_mode={m.padding_mode!r} is not "
                                 "supported; only 'zeros'")
            after = users[n]
            bn = None
            if len(after) == 1 and after[0].op == "call_module" and \
                    isinstance(modules[after[0].target], _NORMS):
                bn = modules[after[0].target]
                folded.add(after[0].target)
            layer, bias = _fold(m, bn)
            blocks.append(Block(layer, bias, nn.Sequential(), f"{n.target}:{type(m).__name__}"))
            targets.append(n.target)
        elif isinstance(m, _NORMS):
            if n.target not in folded:
                raise ModelError(f"{type(m).__name__} {n.target!r} is not the only reader of one "
                                 "Linear/Conv2d's output, so it cannot be folded into it; "
                                 "sigma-delta conversion counts the work of weight layers only")
        elif any(True for _ in m.parameters()):
            raise _unsupported(n.target, m)
    if not blocks:
        raise ModelError("model has no Linear or Conv2d layer to convert")
    plan = GraphPlan(gm, blocks, targets, folded)
    with torch.no_grad():
        got = reference_forward(plan, example)
    if got.shape != ref.shape or not torch.allclose(got, ref, rtol=1e-4, atol=1e-5):
        raise ModelError(f"the sigma-delta plan of {type(model).__name__} does not reproduce "
                         "the model on the example inputs")
    return plan


def _out_of_place(gm: fx.GraphModule) -> fx.GraphModule:
    """The graph with every in-place operation made out-of-place (``x += y``, ``relu_``,
    ``inplace=True``): the sigma-delta state (running sums, last inputs) is read by the
    operations after each layer and must not be overwritten by them."""
    for m in gm.modules():
        if getattr(m, "inplace", False):
            m.inplace = False
    inplace_ops = {operator.iadd: operator.add, operator.isub: operator.sub,
                   operator.imul: operator.mul, operator.itruediv: operator.truediv}
    for n in gm.graph.nodes:
        if n.op == "call_function":
            if n.target in inplace_ops:
                n.target = inplace_ops[n.target]
            if n.kwargs.get("inplace"):
                n.kwargs = {**n.kwargs, "inplace": False}
        elif n.op == "call_method" and isinstance(n.target, str) and n.target.endswith("_") \
                and not n.target.startswith("_") and hasattr(Tensor, n.target[:-1]):
            n.target = n.target[:-1]
    gm.recompile()
    return gm
