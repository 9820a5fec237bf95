"""Structured compression of a model whose traced graph is not a chain: residual additions,
concatenations, branches, BatchNorm, global pooling, and any other traceable operation.

Pruning removes channels, and in a graph one channel can be written and read by several
layers. Every output unit (filter) of a Linear/Conv2d is an *atom*; each tensor of the graph
lists the atom at each position of its dim 1, and the operations tie atoms into classes
(a union-find) or freeze them:

- per-channel operations (elementwise activations, BatchNorm, dropout, max/average and
  adaptive pooling of a (batch, channels, spatial...) tensor, Identity, means over the spatial
  dims, arithmetic with a number) pass a tensor's atoms on;
- an addition or subtraction of tensors ties the atoms at each position of its inputs into one
  class: one channel of a residual stream, written by every layer added into it;
- a concatenation along dim 1 lists its inputs' atoms one after the other;
- a flatten of a (C, H, W) tensor repeats each channel's atom over its H*W features;
- a Linear on a token tensor (batch, ..., features) reads and writes its units on the last
  dim, and so do the tensors after it: there only elementwise activations, dropout, additions
  of tensors of the same rank and arithmetic with a number pass or join them (pools, means,
  LayerNorm, softmax, matmul, transpose and reshapes are opaque); a Linear whose input holds
  its atoms on another dim freezes them and reads new frozen columns;
- everything else (LayerNorm, matmul, other reshapes, softmax or sums over channels,
  indexing, a layer with groups > 1, the model's input and output) freezes the atoms it
  touches: their channels are never removed, so that operation sees the shapes it was traced
  with. Any traceable operation is allowed; it only stops pruning where it could not be exact.
  In a pre-norm transformer the residual stream stays whole (LayerNorm mixes it), attention's
  units too (reshaped into heads); the MLP's hidden units are free.
- a kwh.modules.SelfAttention is one unit: its inputs (the last dim) are read by the columns
  of q, k and v, its outputs written by the rows of out. Inside, a head is removed whole (its
  rows of q, k, v, its columns of out) when its block of out's columns is zero (it adds
  nothing), or when its rows of v are zero: then v is v's bias at every token, the softmax
  averages it to itself, and out's block times that bias is folded into out's bias. A head
  whose q or k rows alone are zero still averages v uniformly: it stays. At least one head
  stays.

A class that is not frozen is removed when no layer reads it (every reading layer's weights on
it are zero), or when it is constant (every writing layer's weights into it are zero, so its
value is a function of biases alone, the same for every input): its contribution is then folded
into each reading layer's bias (exact for a Linear: the same value at every token; for a
Conv2d only when it is the same at every output position). Constants a padded Conv2d sees
differently at the border stay, but those read by the same layers with proportional maps (a
constant through ReLU and pooling always is) are merged into one carrier class, as
kwh.compress.propagate does in a chain.
Removing a class empties weight rows and columns, which can make other classes unread or
constant: repeat to a fixed point. Every layer keeps at least one output. Each step keeps every
remaining value exact, and the pruned graph is checked against the masked model in float64 on
the example inputs.
"""

from __future__ import annotations

import copy
import math
import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from kwh.bayes import BayesConv2d, BayesLayer, BayesLinear
from kwh.compress.chain import DROPOUT, ELEMENTWISE, NORMS, POOLS, WEIGHTED, Node
from kwh.compress.config import CompressConfig
from kwh.compress.precision import LayerPrecision, quantize
from kwh.compress.stages import Stage, fold_norm, plain_layer, read_layer, sliced_norm
from kwh.compress.summary import original_param_count, summary_of
from kwh.errors import ModelError
from kwh.graph import (
    check_calls,
    check_io,
    describe_node,
    node_shapes,
    shape_only,
    tensor_inputs,
    trace,
)
from kwh.modules import SelfAttention

__all__ = ["GraphPlan", "plan_graph", "build_graph", "graph_summary"]

_F64 = torch.float64
_TOL = 1e-9  # relative: "the same at every position" in float64 (as kwh.compress.propagate)
_CHECK_TOL = 1e-7  # relative: the pruned graph against the masked model, both float64

_POOLS_1D = (nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d)
_POOLS = POOLS + _POOLS_1D + (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
# A pool given a tensor of lower rank than its own reads it as one unbatched example: it pools
# along dim 1, across channels. Per channel only at this rank (batch, channels, spatial...).
_POOL_FUNCTION_RANK = {F.max_pool1d: 3, F.avg_pool1d: 3, F.adaptive_avg_pool1d: 3,
                       F.adaptive_max_pool1d: 3, F.max_pool2d: 4, F.avg_pool2d: 4,
                       F.adaptive_avg_pool2d: 4, F.adaptive_max_pool2d: 4}
_PER_CHANNEL_MODULES = ELEMENTWISE + DROPOUT + _POOLS
_PER_CHANNEL_FUNCTIONS = {
    F.relu, torch.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish,
    F.hardswish, F.hardsigmoid, F.hardtanh, F.softplus, F.softsign, F.tanhshrink, F.logsigmoid,
    torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, torch.abs, torch.neg, operator.neg,
    torch.exp, torch.clamp, torch.clip, F.dropout, F.dropout1d, F.dropout2d, F.alpha_dropout,
    F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
}
# On a token tensor (units on its last dim) only what acts on each element alike passes: the
# pools above pool along that last dim.
_ELEMENTWISE_FUNCTIONS = _PER_CHANNEL_FUNCTIONS - set(_POOL_FUNCTION_RANK)
_PER_CHANNEL_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "abs", "neg",
                        "exp", "clamp", "clamp_", "clamp_min", "clamp_max", "contiguous"}
_ADD = {operator.add, operator.iadd, operator.sub, operator.isub, torch.add, torch.sub}
_ADD_METHODS = {"add", "add_", "sub", "sub_"}
_SCALE = {operator.mul, operator.imul, operator.truediv, operator.itruediv, operator.pow,
          torch.mul, torch.div}
_SCALE_METHODS = {"mul", "mul_", "div", "div_", "pow"}
_CAT = {torch.cat, torch.concat, torch.concatenate}
_REDUCE = {torch.mean, torch.sum, torch.amax, torch.amin}
_REDUCE_METHODS = {"mean", "sum", "amax", "amin"}


# ------------------------------------------------------------------------ channel atoms

class _Atoms:
    """Union-find over channel atoms; a class holding a frozen atom is frozen."""

    def __init__(self):
        self.parent: list[int] = []
        self.frozen: list[bool] = []

    def new(self, n: int, frozen: bool = False) -> list[int]:
        start = len(self.parent)
        self.parent += range(start, start + n)
        self.frozen += [frozen] * n
        return list(range(start, start + n))

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            lo, hi = min(ra, rb), max(ra, rb)
            self.parent[hi] = lo
            self.frozen[lo] = self.frozen[lo] or self.frozen[hi]

    def freeze(self, atoms) -> None:
        for a in atoms or ():
            self.frozen[self.find(a)] = True

    def is_frozen(self, a: int) -> bool:
        return self.frozen[self.find(a)]


@dataclass
class _Channels:
    """What the walk over the graph found: atoms per tensor, per layer row and column."""

    atoms: _Atoms = field(default_factory=_Atoms)
    layout: dict[str, list[int] | None] = field(default_factory=dict)  # node name -> atoms
    axis: dict[str, int] = field(default_factory=dict)  # token tensors: the dim of their atoms
    writes: dict[str, list[int]] = field(default_factory=dict)  # layer -> atom of each row
    reads: dict[str, list[int]] = field(default_factory=dict)  # layer -> atom of each column
    outputs: dict[str, list[int]] = field(default_factory=dict)  # every layer -> its atoms
    norms: dict[str, list[int]] = field(default_factory=dict)  # kept BatchNorm -> its atoms
    frozen_layers: dict[str, str] = field(default_factory=dict)  # layer -> why


@dataclass
class _Class:
    """One channel class: the layer rows that write it and the layer columns that read it."""

    writers: dict[str, list[int]] = field(default_factory=dict)
    readers: dict[str, list[int]] = field(default_factory=dict)


@dataclass
class GraphPlan:
    """A traced model read for pruning, pruned: its layers as stages, its BatchNorms."""

    gm: fx.GraphModule  # the traced model; its modules are the user's (read, never changed)
    stages: dict[str, Stage]  # weighted layers by module path, in execution order
    folded: dict[str, str]  # BatchNorm node name -> the layer it is folded into
    norms: dict[str, Tensor]  # BatchNorm kept in the graph -> the entries kept (bool)
    frozen_layers: dict[str, str]  # layers none of whose units can be removed, and why
    channels: dict = field(default_factory=dict)  # counts of channel classes, for the summary
    num_classes: int = 0
    example: Tensor | None = None  # float64 CPU example the plan was checked on
    reference: Tensor | None = None  # the masked model's float64 output on it
    heads: dict[str, Tensor] = field(default_factory=dict)  # SelfAttention -> heads kept (bool)


# ------------------------------------------------------------------------ reading the graph

@torch.no_grad()
def plan_graph(model: nn.Module, example: Tensor, config: CompressConfig,
               frac_bits: dict[str, int] | None = None) -> GraphPlan:
    """Read, fold and prune ``model`` traced on ``example`` (a batch); see the module doc.

    ``frac_bits`` (layer -> fraction bits): plan the quantized model instead. Each layer's
    weights (BatchNorm folded) are put on their fixed-point grid first, so units whose every
    weight rounds to 0 are removed like pruned ones, and constants are never merged into a
    carrier (that would scale weights off their grid); the check compares against the
    unpruned model on those grids.

    ModelError for what no reading of a graph handles (several inputs or outputs, a tensor
    attribute, a module with weights called twice, an unsupported Bayesian layer, a model
    without a Linear/Conv2d), or when the pruned graph does not reproduce the model on
    ``example``.
    """
    gm = _trace_eval(model)
    check_io(model, gm)
    check_calls(gm)
    shapes = node_shapes(gm, example)
    modules = dict(model.named_modules())
    stages = _read_layers(gm, modules, shapes, config)
    folded = _fold_norms(gm, modules, shapes, stages, config)
    if frac_bits is not None:
        for name, s in stages.items():
            s.snap_(frac_bits[name])
    ch = _walk(gm, modules, shapes, stages, folded)
    plan = GraphPlan(gm, stages, folded, {t: torch.ones(len(a), dtype=torch.bool)
                                          for t, a in ch.norms.items()}, ch.frozen_layers)
    plan.heads = {t: torch.ones(m.heads, dtype=torch.bool) for t, m in _attentions(gm).items()}
    plan.example = example.detach().to("cpu", _F64)
    inputs, plan.reference = _record(plan)
    for t in plan.heads:
        plan.heads[t] = _prune_heads(stages, t, gm.get_submodule(t).head_dim)
    classes = _classes(ch)
    removed = _prune(stages, classes, inputs, merge=frac_bits is None)
    _cut(plan, ch, removed)
    written = {ch.atoms.find(a) for atoms in ch.outputs.values() for a in atoms or ()}
    plan.channels = {"classes": len(written), "frozen": sum(ch.atoms.frozen[r] for r in written),
                     "removed": len(removed)}
    plan.num_classes = int(plan.reference.shape[1]) if plan.reference.dim() > 1 else 1
    _check(plan, model)
    return plan


def _trace_eval(model: nn.Module) -> fx.GraphModule:
    """The graph traced in eval mode: ``F.dropout(x, p, self.training)`` and any other use of
    the training flag in forward() are recorded as inference runs them."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        return trace(model)
    finally:
        for m, f in flags:
            m.training = f


def _read_layers(gm: fx.GraphModule, modules: dict[str, nn.Module], shapes: dict[str, tuple],
                 config: CompressConfig) -> dict[str, Stage]:
    """Every Linear/Conv2d called in the graph as a stage (eval weight, variance, mask)."""
    stages: dict[str, Stage] = {}
    for n in gm.graph.nodes:
        if n.op != "call_module":
            continue
        m = modules[n.target]
        if isinstance(m, BayesLayer) and not isinstance(m, (BayesLinear, BayesConv2d)):
            raise ModelError(f"layer {n.target!r} ({type(m).__name__}) is not supported; "
                             "structured compression makes BayesLinear and BayesConv2d plain")
        if isinstance(m, SelfAttention):
            stages.update(_attention_stages(n, m, shapes, config))
            continue
        if not isinstance(m, WEIGHTED):
            continue
        src = tensor_inputs(n)
        if len(src) != 1 or src[0].name not in shapes or n.name not in shapes:
            raise ModelError(f"{describe_node(n)} does not map one tensor to one tensor")
        # one example's shapes: (units,) for a Linear (its last dim), (C, H, W) for a Conv2d,
        # also when the tensor has lost its batch dim (x.squeeze() on a batch of one)
        k = 1 if isinstance(m, (nn.Linear, BayesLinear)) else 3
        before, after = shapes[src[0].name][-k:], shapes[n.name][-k:]
        stages[n.target] = read_layer(Node(n.target, m, before, after), [], config)
        if k == 1:  # a Linear on tokens (batch, ..., features) is applied at each of them
            stages[n.target].positions = math.prod(shapes[src[0].name][1:-1])
    if not stages:
        raise ModelError("the model has no Linear or Conv2d layer to compress")
    return stages


def _attentions(gm: fx.GraphModule) -> dict[str, SelfAttention]:
    """The SelfAttention modules the graph calls, by path."""
    return {n.target: gm.get_submodule(n.target) for n in gm.graph.nodes
            if n.op == "call_module" and isinstance(gm.get_submodule(n.target), SelfAttention)}


def _attention_stages(n: fx.Node, m: SelfAttention, shapes: dict[str, tuple],
                      config: CompressConfig) -> dict[str, Stage]:
    """q, k, v and out of a SelfAttention as four Linear stages on its tokens."""
    src = tensor_inputs(n)
    if len(src) != 1 or src[0].name not in shapes or n.name not in shapes or \
            len(shapes[src[0].name]) != 3:
        raise ModelError(f"{describe_node(n)} (SelfAttention) must map one tensor of tokens "
                         "(batch, tokens, features) to one")
    for name in ("q", "k", "v", "out"):
        child = getattr(m, name)
        if not isinstance(child, (nn.Linear, BayesLinear)) or \
                getattr(child, "input_index", None) is not None:
            raise ModelError(f"{n.target}.{name} is {type(child).__name__}; a SelfAttention's "
                             "q, k, v and out must be nn.Linear or BayesLinear layers")
    tokens = shapes[src[0].name][1]
    inner = m.heads * m.head_dim
    out = {}
    for name in ("q", "k", "v", "out"):
        child = getattr(m, name)
        before = (m.q.in_features,) if name != "out" else (inner,)
        after = (inner,) if name != "out" else (m.out.out_features,)
        s = read_layer(Node(f"{n.target}.{name}", child, before, after), [], config)
        s.positions = tokens
        out[s.name] = s
    return out


def _prune_heads(stages: dict[str, Stage], target: str, head_dim: int) -> Tensor:
    """Remove the dead heads of one SelfAttention (see the module docstring) in the full-size
    tensors: their rows of q, k, v and columns of out zeroed, a dead v's bias folded into out's.
    Returns the heads kept (bool)."""
    q, k, v, o = (stages[f"{target}.{name}"] for name in ("q", "k", "v", "out"))
    heads = o.weight.shape[1] // head_dim
    blocks = [slice(h * head_dim, (h + 1) * head_dim) for h in range(heads)]
    unread = [not bool(o.weight[:, b].any()) for b in blocks]
    constant = [not bool(v.weight[b].any()) for b in blocks]
    dead = [u or c for u, c in zip(unread, constant)]
    if all(dead):  # every layer keeps an output: the first head stays, unchanged
        dead[0] = False
    for h, b in enumerate(blocks):
        if not dead[h]:
            continue
        if not unread[h]:  # softmax rows sum to one: the head outputs v's bias at every token
            o.bias += o.weight[:, b] @ v.bias[b]
        for s in (q, k, v):
            s.weight[b] = 0
            s.bias[b] = 0
            s.kept[b] = False
        o.weight[:, b] = 0
        o.kept[:, b] = False
    return torch.tensor([not d for d in dead], dtype=torch.bool)


def _fold_norms(gm: fx.GraphModule, modules: dict[str, nn.Module], shapes: dict[str, tuple],
                stages: dict[str, Stage], config: CompressConfig) -> dict[str, str]:
    """Fold each BatchNorm whose input is a layer's output read by nothing else."""
    folded: dict[str, str] = {}
    if not config.fold_batchnorm:
        return folded
    for n in gm.graph.nodes:
        if n.op != "call_module" or not _tracked_norm(modules[n.target]) or \
                len(n.args) != 1 or n.kwargs:
            continue
        p = n.args[0]
        if not isinstance(p, fx.Node) or p.op != "call_module" or p.target not in stages or \
                len(p.users) != 1:
            continue
        s, bn = stages[p.target], modules[n.target]
        units = len(shapes[p.name]) == 4 if s.conv else len(shapes[p.name]) == 2
        if units and bn.num_features == s.weight.shape[0]:
            fold_norm(s, Node(n.target, bn))
            folded[n.name] = p.target
    return folded


def _tracked_norm(m: nn.Module) -> bool:
    """A BatchNorm that uses running statistics in eval mode (per channel, foldable)."""
    return isinstance(m, NORMS) and m.track_running_stats and m.running_mean is not None


def _walk(gm: fx.GraphModule, modules: dict[str, nn.Module], shapes: dict[str, tuple],
          stages: dict[str, Stage], folded: dict[str, str]) -> _Channels:
    """The atoms of every tensor, in graph order (see the module docstring)."""
    ch = _Channels()
    lay = ch.layout
    for n in gm.graph.nodes:
        shape = shapes.get(n.name)
        if n.op == "placeholder":
            lay[n.name] = _fresh(ch, shape)
            continue
        if shape_only(n):
            _freeze_shape_read(n, ch)
            continue
        ins = tensor_inputs(n)
        if n.op == "output":
            for i in ins:
                ch.atoms.freeze(lay.get(i.name))
            continue
        if n.name in folded:
            lay[n.name] = lay[ins[0].name]
            continue
        if n.op == "call_module" and n.target in stages:
            lay[n.name] = ch.outputs[n.target] = _layer_atoms(n, modules[n.target], shapes, ins, ch)
            continue
        if n.op == "call_module" and isinstance(modules[n.target], SelfAttention):
            lay[n.name] = _attention_atoms(n, shapes, ins, ch)
            continue
        axis = _axis(ch, ins)
        if n.op == "call_module" and _tracked_norm(modules[n.target]) and axis == 1 and \
                _passes(ins, shape, shapes, ch):
            lay[n.name] = ch.norms[n.target] = lay[ins[0].name]
            continue
        kind, block = _rule(n, modules, shapes) if axis == 1 else _token_rule(n, modules)
        out = None
        if kind == "pass" and _passes(ins, shape, shapes, ch):
            out = lay[ins[0].name]
        elif kind == "join" and _joins(ins, shape, shapes, ch):
            out = lay[ins[0].name]
            for i in ins[1:]:
                for a, b in zip(out, lay[i.name]):
                    ch.atoms.union(a, b)
        elif kind == "cat" and all(lay.get(i.name) is not None and _axis(ch, [i]) == 1
                                   for i in ins) and shape and \
                sum(len(lay[i.name]) for i in ins) == shape[1]:
            out = [a for i in ins for a in lay[i.name]]
        elif kind == "flatten" and len(ins) == 1 and lay.get(ins[0].name) is not None and \
                shape and len(lay[ins[0].name]) * block == shape[1]:
            out = [a for a in lay[ins[0].name] for _ in range(block)]
        if out is not None and axis != 1:
            ch.axis[n.name] = axis
        if out is None:  # opaque: its inputs keep every channel, its output is new
            for i in ins:
                ch.atoms.freeze(lay.get(i.name))
            out = _fresh(ch, shape)
        lay[n.name] = out
    return ch


def _fresh(ch: _Channels, shape: tuple | None) -> list[int] | None:
    """New frozen atoms for a tensor of ``shape`` (None: not a tensor with channels)."""
    return ch.atoms.new(shape[1], frozen=True) if shape and len(shape) > 1 else None


def _layer_atoms(n: fx.Node, m: nn.Module, shapes: dict[str, tuple], ins: list[fx.Node],
                 ch: _Channels) -> list[int] | None:
    """A weighted layer reads its input's atoms column by column and writes new atoms.

    A Linear on a token tensor (batch, ..., features) does so on the last dim; when its input's
    atoms lie on another dim, those are frozen and its columns are new frozen atoms (its rows
    stay free)."""
    src = ch.layout.get(ins[0].name)
    before, after = shapes[ins[0].name], shapes[n.name]
    why = None
    conv = isinstance(m, (nn.Conv2d, BayesConv2d))
    tokens = not conv and len(before) > 2
    if conv and m.groups != 1:
        why = f"grouped Conv2d (groups={m.groups})"
    elif conv and getattr(m, "padding_mode", "zeros") != "zeros":
        why = f"padding_mode={m.padding_mode!r}"
    elif len(before) != 4 if conv else len(before) < 2:
        why = f"input of shape {tuple(before[1:]) if conv else tuple(before)} " + \
            ("(channels not on dim 1)" if conv else "(no batch dim)")
    elif tokens and (src is None or _axis(ch, ins) != len(before) - 1 or
                     len(src) != before[-1]):
        ch.atoms.freeze(src)
        src = ch.atoms.new(before[-1], frozen=True)
    elif not tokens and (src is None or len(src) != before[1]):
        why = "input channels not traced"
    if why is not None:
        ch.frozen_layers[n.target] = why
        ch.atoms.freeze(src)
        return _fresh(ch, after)
    ch.reads[n.target] = src
    ch.writes[n.target] = ch.atoms.new(after[-1] if tokens else after[1])
    if tokens:
        ch.axis[n.name] = len(after) - 1
    return ch.writes[n.target]


def _attention_atoms(n: fx.Node, shapes: dict[str, tuple], ins: list[fx.Node],
                     ch: _Channels) -> list[int]:
    """A SelfAttention reads its input's atoms on the last dim with the columns of q, k and v
    (new frozen atoms when they lie elsewhere) and writes new atoms with the rows of out."""
    t = n.target
    src, before, after = ch.layout.get(ins[0].name), shapes[ins[0].name], shapes[n.name]
    if src is None or _axis(ch, ins) != len(before) - 1 or len(src) != before[-1]:
        ch.atoms.freeze(src)
        src = ch.atoms.new(before[-1], frozen=True)
    for name in ("q", "k", "v"):
        ch.reads[f"{t}.{name}"] = src
    ch.writes[f"{t}.out"] = ch.outputs[f"{t}.out"] = ch.atoms.new(after[-1])
    ch.axis[n.name] = len(after) - 1
    return ch.writes[f"{t}.out"]


def _axis(ch: _Channels, ins: list[fx.Node]) -> int:
    """The dim holding the atoms of the first input: 1, or the last dim of a token tensor."""
    return ch.axis.get(ins[0].name, 1) if ins else 1


def _passes(ins: list[fx.Node], shape, shapes: dict, ch: _Channels) -> bool:
    """One tensor in, its channels unchanged out (a token tensor's: the same shape)."""
    if len(ins) != 1 or ch.layout.get(ins[0].name) is None or shape is None:
        return False
    axis = _axis(ch, ins)
    if axis != 1 and tuple(shapes[ins[0].name]) != tuple(shape):
        return False
    return len(shape) > axis and shape[axis] == len(ch.layout[ins[0].name])


def _joins(ins: list[fx.Node], shape, shapes: dict, ch: _Channels) -> bool:
    """Tensors of the same rank, with their atoms on the same dim and as many as the result
    has there, added position by position."""
    axis = _axis(ch, ins)
    return shape is not None and len(shape) > axis and all(
        ch.layout.get(i.name) is not None and len(shapes[i.name]) == len(shape) and
        _axis(ch, [i]) == axis and len(ch.layout[i.name]) == shape[axis] for i in ins)


def _freeze_shape_read(n: fx.Node, ch: _Channels) -> None:
    """x.size(0) and x.shape[0] (the batch) leave x's channels free; any other read of a
    tensor's shape could change with them, so it freezes them."""
    src = n.args[0] if n.args else None
    if not isinstance(src, fx.Node) or shape_only(src) or src.name not in ch.layout:
        return
    if n.op == "call_method" and n.target == "dim":
        return
    if n.op == "call_function" and n.target is getattr and n.args[1] == "ndim":
        return
    if n.op == "call_method" and n.target == "size" and _arg(n, 1, "dim", None) is not None:
        if _arg(n, 1, "dim", None) == 0:
            return
    elif all(u.op == "call_function" and u.target is operator.getitem and u.args[1] == 0
             for u in n.users):
        return
    ch.atoms.freeze(ch.layout[src.name])


def _arg(n: fx.Node, i: int, name: str, default):
    if name in n.kwargs:
        return n.kwargs[name]
    return n.args[i] if len(n.args) > i else default


def _rule(n: fx.Node, modules: dict[str, nn.Module], shapes: dict[str, tuple]) -> tuple[str, int]:
    """How an operation treats channels: ("pass"|"join"|"cat"|"flatten"|"opaque", block)."""
    ins = tensor_inputs(n)
    in_shape = shapes.get(ins[0].name) if ins else None
    out_shape = shapes.get(n.name)
    if in_shape is None or out_shape is None:
        return "opaque", 0
    t, method = n.target, n.op == "call_method"
    if n.op == "call_module":
        m = modules[t]
        if isinstance(m, _POOLS) and len(in_shape) != (3 if isinstance(m, _POOLS_1D) else 4):
            return "opaque", 0
        if isinstance(m, _PER_CHANNEL_MODULES):
            return "pass", 0
        if isinstance(m, nn.Flatten):
            return _flatten_rule(m.start_dim, m.end_dim, in_shape)
        return "opaque", 0
    if not method and len(in_shape) != _POOL_FUNCTION_RANK.get(t, len(in_shape)):
        return "opaque", 0
    if (not method and t in _PER_CHANNEL_FUNCTIONS) or (method and t in _PER_CHANNEL_METHODS):
        return "pass", 0  # (with return_indices the output is a tuple: no shape, opaque)
    if (not method and t in _ADD) or (method and t in _ADD_METHODS):
        return ("pass", 0) if len(ins) == 1 else ("join", 0)
    if (not method and t in _SCALE) or (method and t in _SCALE_METHODS):
        return ("pass", 0) if len(ins) == 1 else ("opaque", 0)
    if not method and t in _CAT:
        dim = _arg(n, 1, "dim", 0)
        return ("cat", 0) if isinstance(dim, int) and dim % len(out_shape) == 1 else ("opaque", 0)
    if (not method and t is torch.flatten) or (method and t == "flatten"):
        return _flatten_rule(_arg(n, 1, "start_dim", 0), _arg(n, 2, "end_dim", -1), in_shape)
    if (method and t in ("view", "reshape")) or (not method and t is torch.reshape):
        sizes = n.args[1:] if method else n.args[1]
        if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
            sizes = sizes[0]
        return _view_rule(list(sizes), in_shape, out_shape)
    if (not method and t in _REDUCE) or (method and t in _REDUCE_METHODS):
        return _spatial(_arg(n, 1, "dim", None), len(in_shape))
    if (not method and t is torch.squeeze) or (method and t == "squeeze"):
        return _spatial(_arg(n, 1, "dim", None), len(in_shape))
    if (not method and t is torch.unsqueeze) or (method and t == "unsqueeze"):
        return _spatial(_arg(n, 1, "dim", None), len(in_shape) + 1)
    return "opaque", 0


def _token_rule(n: fx.Node, modules: dict[str, nn.Module]) -> tuple[str, int]:
    """How an operation treats the atoms on the last dim of a token tensor: only elementwise
    activations, dropout, an addition or subtraction, arithmetic with a number pass or join;
    everything else (LayerNorm, softmax, matmul, transpose, reshape, pools, reductions,
    indexing) is opaque."""
    t, method = n.target, n.op == "call_method"
    ins = tensor_inputs(n)
    if n.op == "call_module":
        return ("pass", 0) if isinstance(modules[t], ELEMENTWISE + DROPOUT) else ("opaque", 0)
    if n.op != "call_function" and not method:
        return "opaque", 0
    if (not method and t in _ELEMENTWISE_FUNCTIONS) or (method and t in _PER_CHANNEL_METHODS):
        return "pass", 0
    if (not method and t in _ADD) or (method and t in _ADD_METHODS):
        return ("pass", 0) if len(ins) == 1 else ("join", 0)
    if (not method and t in _SCALE) or (method and t in _SCALE_METHODS):
        return ("pass", 0) if len(ins) == 1 else ("opaque", 0)
    return "opaque", 0


def _spatial(dims, ndim: int) -> tuple[str, int]:
    """An operation on the listed dims (a reduction, a squeeze) passes channels through when
    they are all spatial (>= 2)."""
    dims = dims if isinstance(dims, (tuple, list)) else (dims,)
    if not dims or not all(isinstance(d, int) for d in dims):
        return "opaque", 0
    return ("pass", 0) if min(d % ndim for d in dims) >= 2 else ("opaque", 0)


def _flatten_rule(start, end, in_shape: tuple) -> tuple[str, int]:
    nd = len(in_shape)
    if not isinstance(start, int) or not isinstance(end, int) or nd < 2:
        return "opaque", 0
    start, end = start % nd, end % nd
    if start >= 2:
        return "pass", 0
    if start == 1 and end >= 1:
        return "flatten", math.prod(in_shape[2:end + 1])
    return "opaque", 0


def _view_rule(sizes: list, in_shape: tuple, out_shape: tuple) -> tuple[str, int]:
    """x.view(B, -1) / x.reshape(x.size(0), -1) flatten; other sizes are literal: opaque."""
    batch_ok = len(sizes) == 2 and (isinstance(sizes[0], int) or (
        isinstance(sizes[0], fx.Node) and shape_only(sizes[0])))
    if batch_ok and sizes[1] == -1 and len(in_shape) >= 2 and \
            tuple(out_shape) == (in_shape[0], math.prod(in_shape[1:])):
        return "flatten", math.prod(in_shape[2:])
    return "opaque", 0


# ------------------------------------------------------------------------ pruning

def _classes(ch: _Channels) -> dict[int, _Class]:
    """Every class that is not frozen, by root, with its writing rows and reading columns."""
    classes: dict[int, _Class] = {}
    for side, table in (("writers", ch.writes), ("readers", ch.reads)):
        for name, atoms in table.items():
            for i, a in enumerate(atoms):
                r = ch.atoms.find(a)
                if not ch.atoms.frozen[r]:
                    getattr(classes.setdefault(r, _Class()), side).setdefault(name, []).append(i)
    return dict(sorted(classes.items()))


def _prune(stages: dict[str, Stage], classes: dict[int, _Class],
           inputs: dict[str, Tensor], merge: bool = True) -> set[int]:
    """Remove unread and constant classes to a fixed point; returns the removed roots.

    Works on the full-size tensors (columns of removed classes zeroed, constants folded into
    biases or merged into a carrier); ``_cut`` slices them afterwards."""
    removed: set[int] = set()
    rows_left = {name: int(s.weight.shape[0]) for name, s in stages.items()}

    def remove(root: int) -> None:
        removed.add(root)
        for n, r in classes[root].writers.items():
            rows_left[n] -= len(r)

    while True:
        stubborn = []  # constants a padded conv sees differently at the border
        changed = False
        for root, c in classes.items():
            if root in removed or any(rows_left[n] <= len(r) for n, r in c.writers.items()):
                continue  # every layer keeps an output
            if not _unread(stages, c.readers):
                if not _constant(stages, c.writers):
                    continue
                folds = _folds(stages, c.readers, inputs)
                if folds is None:
                    stubborn.append(root)
                    continue
                for name, cols, delta in folds:
                    s = stages[name]
                    s.bias += delta
                    s.weight[:, cols] = 0
                    s.kept[:, cols] = False
            remove(root)
            changed = True
        if not changed:
            if not merge:
                return removed
            merged = _merge_carriers(stages, classes, stubborn, inputs, rows_left)
            if not merged:
                return removed
            removed.update(merged)


def _merge_carriers(stages: dict[str, Stage], classes: dict[int, _Class], roots: list[int],
                    inputs: dict[str, Tensor], rows_left: dict[str, int]) -> list[int]:
    """Merge constant classes read by the same layers, one column each, whose maps there are
    proportional to one carrier class's (a constant through ReLU and pooling always is):
    each reading layer adds a times their column to the carrier's column, since
    conv(a V, W) = conv(V, a W) (as kwh.compress.propagate does in a chain). Returns the
    classes merged away (``rows_left`` counts their rows out)."""
    groups: dict[tuple, list[int]] = {}
    for root in roots:
        readers = classes[root].readers
        if all(len(cols) == 1 for cols in readers.values()):
            groups.setdefault(tuple(sorted(readers)), []).append(root)
    merged = []
    for group in groups.values():
        maps = {root: {n: _column(stages[n], inputs[n], cols[0])
                       for n, cols in classes[root].readers.items()} for root in group}
        ref = max(group, key=lambda r: sum(float(m.norm()) for m in maps[r].values()))
        for root in group:
            writers = classes[root].writers
            if root == ref or any(rows_left[n] <= len(r) for n, r in writers.items()):
                continue
            scale = _proportional(maps[root], maps[ref])
            if scale is None:
                continue
            for n, a in scale.items():
                s, c, c0 = stages[n], classes[root].readers[n][0], classes[ref].readers[n][0]
                s.weight[:, c0] += a * s.weight[:, c]
                if s.var is not None:
                    s.var[:, c0] += a ** 2 * s.var[:, c]
                s.kept[:, c0] |= s.kept[:, c] | (s.weight[:, c0] != 0)
                s.weight[:, c] = 0
                s.kept[:, c] = False
            for n, rows in classes[ref].writers.items():
                stages[n].carriers += [r for r in rows if r not in stages[n].carriers]
            for n, rows in writers.items():
                rows_left[n] -= len(rows)
            merged.append(root)
    return merged


def _proportional(maps: dict[str, Tensor], ref: dict[str, Tensor]) -> dict[str, float] | None:
    """{layer: a} with maps[layer] = a ref[layer] for every layer (float64 tolerance), or None."""
    scale = {}
    for n, m in maps.items():
        r = ref[n]
        norm2 = float(r.dot(r))
        a = float(m.dot(r)) / norm2 if norm2 > 0 else 0.0
        if float((m - a * r).norm()) > _TOL * (1 + float(m.norm())):
            return None
        scale[n] = a
    return scale


def _column(s: Stage, x: Tensor, col: int) -> Tensor:
    """Input column ``col`` of layer ``s`` in its recorded input ``x`` (a batch of one), at
    every position: the pixels of a Conv2d's channel, the tokens of a Linear's feature."""
    if s.conv:
        return x[0, col].reshape(-1)
    return x[0].reshape(-1, x.shape[-1])[:, col]


def _unread(stages: dict[str, Stage], readers: dict[str, list[int]]) -> bool:
    return not any(bool(stages[n].weight[:, cols].any()) for n, cols in readers.items())


def _constant(stages: dict[str, Stage], writers: dict[str, list[int]]) -> bool:
    return not any(bool(stages[n].weight[rows].any()) for n, rows in writers.items())


def _folds(stages: dict[str, Stage], readers: dict[str, list[int]],
           inputs: dict[str, Tensor]) -> list[tuple[str, list[int], Tensor]] | None:
    """What a constant class adds to each reading layer's output: (layer, columns, bias
    increment); None when a layer sees it differently at some position (a padded Conv2d)."""
    out = []
    for name, cols in readers.items():
        s = stages[name]
        w = s.weight[:, cols]  # (O, k) or (O, k, kh, kw)
        if not s.conv:  # the class's value at every token (one for a (batch, features) input)
            v = torch.stack([_column(s, inputs[name], c) for c in cols], dim=1)  # (tokens, k)
            flat = (v @ w.T).T  # (O, tokens)
        else:
            v = inputs[name][0, cols]  # the class's value there: the same for every input
            y = F.conv2d(v[None], w, None, **s.conv_args())[0]  # (O, H', W')
            flat = y.reshape(y.shape[0], -1)
        span = flat.amax(dim=1) - flat.amin(dim=1)
        if not bool((span <= _TOL * (1 + flat.abs().amax(dim=1))).all()):
            return None
        out.append((name, cols, flat.mean(dim=1)))
    return out


def _cut(plan: GraphPlan, ch: _Channels, removed: set[int]) -> None:
    """Slice every layer and kept BatchNorm to the classes that stay."""
    def keep(atoms: list[int]) -> Tensor:
        return torch.tensor([ch.atoms.find(a) not in removed for a in atoms], dtype=torch.bool)

    for name, s in plan.stages.items():
        if name in ch.writes:
            s.select_rows(keep(ch.writes[name]))
        if name in ch.reads:
            s.select_cols(keep(ch.reads[name]))
    for target, atoms in ch.norms.items():
        plan.norms[target] = keep(atoms)
    for target, heads in plan.heads.items():
        block = plan.stages[f"{target}.out"].weight.shape[1] // heads.numel()
        units = heads.repeat_interleave(block)
        for name in ("q", "k", "v"):
            plan.stages[f"{target}.{name}"].select_rows(units)
        plan.stages[f"{target}.out"].select_cols(units)


# ------------------------------------------------------------------------ building, checking

@torch.no_grad()
def build_graph(plan: GraphPlan, precisions: list[LayerPrecision] | None,
                dtype: torch.dtype = torch.float32) -> fx.GraphModule:
    """The compressed model: the traced graph with each weighted layer a plain Linear/Conv2d
    (quantized to ``precisions``, one per stage in order, or unquantized when None), kept
    BatchNorms sliced, folded ones gone; other modules are copies. On the CPU, eval mode."""
    precs = dict(zip(plan.stages, precisions)) if precisions is not None else {}
    modules: dict[str, nn.Module] = {}
    for n in plan.gm.graph.nodes:
        if n.op != "call_module" or n.name in plan.folded:
            continue
        t, m = n.target, plan.gm.get_submodule(n.target)
        if t in plan.stages:
            s, p = plan.stages[t], precs.get(t)
            layer = plain_layer(s, s.weight if p is None else quantize(s.weight, p.frac_bits), p,
                                dtype)
        elif t in plan.norms:
            layer = sliced_norm(m, plan.norms[t])
        elif t in plan.heads:
            layer = _attention(plan, t, m, precs, dtype)
        else:
            layer = copy.deepcopy(m)
        modules[t] = layer.to("cpu", dtype)
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for n in plan.gm.graph.nodes:
        if n.name in plan.folded:  # its layer now computes what it did
            env[n] = env[n.args[0]]
        elif dtype != torch.float32 and _to_float32(n):  # the float64 check stays float64
            env[n] = env[n.args[0]]
        else:
            env[n] = graph.node_copy(n, lambda a: env[a])
    small = fx.GraphModule(modules, graph)
    return small.eval()


def _attention(plan: GraphPlan, target: str, m: SelfAttention,
               precs: dict[str, LayerPrecision], dtype: torch.dtype) -> SelfAttention:
    """A SelfAttention holding its pruned (quantized) plain layers, with the heads kept."""
    layers = {}
    for name in ("q", "k", "v", "out"):
        s, p = plan.stages[f"{target}.{name}"], precs.get(f"{target}.{name}")
        layers[name] = plain_layer(s, s.weight if p is None else quantize(s.weight, p.frac_bits),
                                   p, dtype)
    return SelfAttention.of_layers(layers["q"], layers["k"], layers["v"], layers["out"],
                                   m.head_dim)


def _to_float32(n: fx.Node) -> bool:
    """x.float(), x.to(torch.float32), x.type(torch.float32): a cast to float32."""
    if n.op != "call_method" or not isinstance(n.args[0], fx.Node):
        return False
    if n.target == "float":
        return len(n.args) == 1 and not n.kwargs
    rest = [*n.args[1:], *n.kwargs.values()]
    return n.target in ("to", "type") and rest == [torch.float32]


def _record(plan: GraphPlan) -> tuple[dict[str, Tensor], Tensor]:
    """The unpruned masked model in float64 on the example: each layer's input (first
    example) and the output."""
    inputs: dict[str, Tensor] = {}

    class Recorder(fx.Interpreter):
        def call_module(self, target, args, kwargs):
            if target in plan.stages:
                inputs[target] = args[0][:1].detach().clone()
            if target in plan.heads:  # q, k and v read the attention's input
                for name in ("q", "k", "v"):
                    inputs[f"{target}.{name}"] = args[0][:1].detach().clone()
            return super().call_module(target, args, kwargs)

    try:
        out = Recorder(build_graph(plan, None, _F64)).run(plan.example.clone())
    except (RuntimeError, TypeError) as e:
        raise ModelError(f"the traced model fails when run in float64, as kwh checks the pruned "
                         f"graph: {str(e).strip().splitlines()[0]} (a cast to another dtype in "
                         "forward()?); compress only the weights with "
                         "kwh.compress(model, mode='weights')") from None
    if not isinstance(out, Tensor):
        raise ModelError(f"the traced model returns {type(out).__name__}, not one tensor")
    return inputs, out


def _check(plan: GraphPlan, model: nn.Module) -> None:
    """The pruned graph must compute what the masked model computes (float64, the example)."""
    ref = plan.reference
    try:  # a pruned graph whose shapes no longer fit fails to run: that is a difference too
        got = build_graph(plan, None, _F64)(plan.example.clone())  # forward() may change it
        err = float((got - ref).abs().max()) if got.shape == ref.shape else math.inf
    except (RuntimeError, ValueError, IndexError, TypeError):
        err = math.inf
    if not err <= _CHECK_TOL * (1 + float(ref.abs().max())):
        raise ModelError(f"the pruned graph of {type(model).__name__} does not reproduce the "
                         f"model on the example inputs (largest difference {err:.3g}); kwh will "
                         "not compress a different network: compress only the weights with "
                         "kwh.compress(model, mode='weights')")


def graph_summary(plan: GraphPlan, precisions: list[LayerPrecision], small: fx.GraphModule,
                  input_shape: tuple[int, ...], config: CompressConfig) -> dict:
    """The chain's summary keys (kwh.compress.summary), plus ``graph``: channel classes."""
    plain = [small.get_submodule(name) for name in plan.stages]
    original = sum(_original_params(plan.gm.get_submodule(n.target))
                   for n in plan.gm.graph.nodes if n.op == "call_module")
    summary = summary_of(list(plan.stages), list(plan.stages.values()), precisions, plain, small,
                         original, plan.num_classes, input_shape, config)
    summary["graph"] = {"channel_classes": plan.channels["classes"],
                        "frozen_classes": plan.channels["frozen"],
                        "removed_classes": plan.channels["removed"],
                        "frozen_layers": dict(plan.frozen_layers)}
    return summary


def _original_params(m: nn.Module) -> int:
    """original_param_count of a module, of a SelfAttention's four layers."""
    if isinstance(m, SelfAttention):
        return sum(original_param_count(c) for c in (m.q, m.k, m.v, m.out))
    return original_param_count(m)
