"""GraphNet, the model a graph-layout .kwh file rebuilds, and reading any model as one.

A ``GraphNet`` runs a list of steps in order: each step is an allowed layer
(``kwh.format.modules.SPECS``, one input) or an allowed function (``kwh.format.ops.OPS``: add,
cat, flatten, mean, transpose, permute, reshape, matmul, mul_scalar, div_scalar) applied to the
outputs of earlier steps or to the model's input. It is an
ordinary nn.Module: torch.fx (``kwh.graph.trace``) traces it into those layers and functions,
so kwh.energy and the report read a loaded file like any model.

``read_graph`` goes the other way: it traces a model (a torch.fx GraphModule, or any module
``kwh.graph.trace`` can trace) into such steps, refusing with a ModelError that names the node
any operation outside the allow-list, and checks that the steps compute exactly what the
model computes on an example input. A kwh.modules.SelfAttention (one traced module) becomes
the steps of its own forward, in its order of operations (Linear q, k, v, reshapes,
transposes, matmul, mul_scalar, Softmax, matmul, transpose, reshape, Linear out), so a file
needs no attention op and the loaded model computes the same bits. Sizes a forward reads off its activations (``b, t, d =
x.shape``, ``x.size(0)``) are resolved there: the batch size stays the batch (a reshape keeps
the first dimension), every other size becomes the literal it is for the file's input shape.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from kwh.errors import FormatError, ModelError
from kwh.format import modules as fm
from kwh.format import ops
from kwh.graph import Call, calls, example_input
from kwh.modules import SelfAttention

__all__ = ["Step", "GraphNet", "read_graph", "INPUT"]

INPUT = -1  # the index that names the model's input among a step's inputs


@dataclass(frozen=True)
class Step:
    """One operation of a GraphNet: an allowed layer kind or function, the indices of the
    steps it reads (``INPUT`` for the model's input), and a function's arguments."""

    op: str
    inputs: tuple[int, ...]
    args: dict = field(default_factory=dict)


class GraphNet(nn.Module):
    """A model given as steps run in order (see the module docstring).

    ``steps[i]`` reads ``steps[j]`` for j < i, or the input (``INPUT``); ``modules[i]`` is the
    layer of a layer step (registered as the child ``node{i}``); ``output`` is the step whose
    result the model returns. Each intermediate result is released after its last use.
    """

    def __init__(self, steps: Sequence[Step], modules: Mapping[int, nn.Module], output: int):
        super().__init__()
        steps = tuple(steps)
        if not steps or not 0 <= output < len(steps):
            raise ValueError(f"output={output} must index one of the {len(steps)} steps")
        for i, step in enumerate(steps):
            if not step.inputs or any(not INPUT <= j < i for j in step.inputs):
                raise ValueError(f"step {i} ({step.op}) reads {list(step.inputs)}; a step reads "
                                 f"earlier steps (0..{i - 1}) or the input ({INPUT})")
            if (step.op in ops.OPS) == (i in modules):
                raise ValueError(f"step {i} ({step.op}): a function step has no module and a "
                                 "layer step has one")
            if step.op not in ops.OPS:
                self.add_module(f"node{i}", modules[i])
        self.steps = steps
        self.output = output
        last = {j: i for i, step in enumerate(steps) for j in step.inputs}
        self._release = tuple(tuple(sorted({j for j in step.inputs
                                            if j not in (INPUT, output) and last[j] == i}))
                              for i, step in enumerate(steps))

    def layer(self, i: int) -> nn.Module:
        """The module of layer step ``i``."""
        return getattr(self, f"node{i}")

    def forward(self, x: Tensor) -> Tensor:
        values: list[Any] = [None] * len(self.steps)
        for i, step in enumerate(self.steps):
            ins = [x if j == INPUT else values[j] for j in step.inputs]
            spec = ops.OPS.get(step.op)
            values[i] = spec.run(step.args, ins) if spec else self.layer(i)(ins[0])
            for j in self._release[i]:
                values[j] = None
        return values[self.output]

    def extra_repr(self) -> str:
        def name(j: int) -> str:
            return "input" if j == INPUT else f"node{j}"
        wiring = [f"node{i} = {step.op}({', '.join(name(j) for j in step.inputs)}"
                  + "".join(f", {k}={v}" for k, v in step.args.items()) + ")"
                  for i, step in enumerate(self.steps)]
        return "\n".join(wiring + [f"output = node{self.output}"])


# ------------------------------------------------------------------ reading a model

_ADD = (operator.add, torch.add)
_CAT = (torch.cat, torch.concat, torch.concatenate)
_MATMUL = (operator.matmul, torch.matmul)
_MUL = (operator.mul, torch.mul)
_DIV = (operator.truediv, torch.div, torch.true_divide)
_EXACT_INT = 2**24  # integers a float32 holds exactly: a larger int factor is refused


def read_graph(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[GraphNet, list[str]]:
    """``model`` as a GraphNet sharing its layers, checked to compute exactly the same output on
    an example of ``input_shape`` (ModelError naming the node of anything that cannot be read),
    and for each step the traced node it comes from, for messages.

    Layer steps hold ``model``'s own modules (functional calls such as F.relu get their
    torch.nn equivalent); a layer with tensors called twice is refused (shared weights), and
    operations whose result the output does not depend on are left out.
    """
    example = example_input(model, tuple(input_shape))
    flags = [(m, m.training) for m in model.modules()]
    try:
        found = calls(model, example)
    finally:  # tracing runs the model in eval mode: give every module its own mode back
        for m, flag in flags:
            m.training = flag
    name = type(model).__name__
    if not found:
        raise ModelError(f"{name}.forward applies no operation to its input; there is no graph "
                         "to store")
    graph = found[0].fx_node.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise ModelError(f"{name}.forward takes {len(placeholders)} inputs; a graph file holds "
                         "models with one input tensor")
    by_node = {c.fx_node: c for c in found}
    result = next(n for n in graph.nodes if n.op == "output").args[0]
    if not isinstance(result, fx.Node) or result not in by_node:
        raise ModelError(f"{name}.forward returns {_describe(result)}, not the result of an "
                         "operation; a graph file holds models that return one tensor")
    known = {placeholders[0], *by_node}
    live = _live(result, known)
    index: dict[fx.Node, int] = {placeholders[0]: INPUT}
    steps: list[Step] = []
    sources: list[str] = []
    modules: dict[int, nn.Module] = {}
    owners: dict[int, str] = {}
    shapes = {placeholders[0]: tuple(input_shape), **{c.fx_node: c.out_shape for c in found}}
    for c in found:
        if c.fx_node not in live:
            continue
        inputs = tuple(index[n] for n in _inputs(c.fx_node, known))
        if isinstance(c.module, SelfAttention):
            expanded = _attention(c, inputs, owners, len(steps))
        else:
            expanded = [_step(c, inputs, owners, shapes)]
        for step, module in expanded:
            if module is not None:
                modules[len(steps)] = module
            steps.append(step)
            sources.append(_where(c.fx_node))
        index[c.fx_node] = len(steps) - 1
    _check_in_place([c for c in found if c.fx_node in live], live, known)
    net = GraphNet(steps, modules, index[result])
    _check_same(model, net, example)
    return net, sources


def _describe(a: Any) -> str:
    if isinstance(a, (tuple, list)):
        return f"a {type(a).__name__} of {len(a)}"
    if isinstance(a, dict):
        return "a dict"
    if isinstance(a, fx.Node) and a.op == "placeholder":
        return "its input unchanged"
    return f"{getattr(a, 'name', a)!r}"


def _where(n: fx.Node) -> str:
    if n.op == "call_module":
        return f"traced node {n.name!r} (module {n.target!r})"
    if n.op == "call_method":
        return f"traced node {n.name!r} (the method call .{n.target}())"
    return f"traced node {n.name!r} (the call {getattr(n.target, '__name__', n.target)}())"


def _inputs(n: fx.Node, known: set) -> list[fx.Node]:
    """The activations ``n`` reads, in argument order (sizes read with x.size() are not)."""
    out: list[fx.Node] = []
    fx.node.map_aggregate((n.args, n.kwargs),
                          lambda a: out.append(a) if isinstance(a, fx.Node) and a in known
                          else None)
    return out


def _live(result: fx.Node, known: set) -> set:
    """The nodes the output depends on."""
    live, todo = set(), [result]
    while todo:
        n = todo.pop()
        if n not in live:
            live.add(n)
            todo.extend(_inputs(n, known))
    return live


def _allowed() -> str:
    return (f"allowed: the layers {', '.join(fm.SPECS)} (or their functional forms such as "
            "F.relu, F.gelu, F.max_pool2d, F.adaptive_avg_pool2d, x.softmax(dim), "
            "x.contiguous()), and the functions add (a + b, torch.add), cat (torch.cat), "
            "flatten (torch.flatten(x, start_dim, end_dim) after the batch), mean (x.mean(dims)), "
            "transpose (x.transpose(d0, d1)), permute (x.permute(0, ...)), reshape "
            "(x.view / x.reshape to the batch, taken from x.size(0), x.shape[0] or -1, and "
            "fixed sizes), matmul (a @ b, no broadcasting) and the product or quotient of an "
            "activation and a number (x * 0.5, x / 8)")


def _layer(module: nn.Module, n: fx.Node, inputs: tuple[int, ...]) -> tuple[Step, nn.Module]:
    try:
        kind, _ = fm.spec_for(module, _where(n))
    except ModelError as err:
        raise ModelError(f"{str(err).split('; allowed layers')[0]}; a graph file holds only "
                         f"allowed operations ({_allowed()})") from None
    if len(inputs) != 1:
        raise ModelError(f"{_where(n)} reads {len(inputs)} activations; a layer in a graph file "
                         "reads one")
    return Step(kind, inputs), module


def _step(c: Call, inputs: tuple[int, ...], owners: dict[int, str],
          shapes: dict[fx.Node, tuple[int, ...]]) -> tuple[Step, Any]:
    """The step (and layer, or None) of one traced operation; a function step is checked to
    give the traced shape by the loader's own shape rule."""
    n = c.fx_node
    if n.op == "call_module":
        if any(True for _ in (*c.module.parameters(), *c.module.buffers())):
            first = owners.setdefault(id(c.module), n.name)
            if first != n.name:
                raise ModelError(f"module {n.target!r} is called more than once in forward() "
                                 f"(traced nodes {first!r} and {n.name!r}): a graph file stores "
                                 "each call's layer once and would not share its weights; "
                                 "store the model with layout='state'")
        return _checked_layer(c, c.module, inputs)
    step = _function(c, inputs, shapes)
    if isinstance(step, nn.Module):
        return _checked_layer(c, step, inputs)
    _check_shape(c, step)
    return step, None


def _checked_layer(c: Call, module: nn.Module, inputs: tuple[int, ...]) -> tuple[Step, Any]:
    """A layer step whose kind's shape rule (the loader's) accepts the traced input and gives
    the traced output: a layer used outside the shapes its kind takes in a file (a 2d pool on
    (batch, C, L)) is refused here, so such a graph is not written in this layout."""
    step, layer = _layer(module, c.fx_node, inputs)
    where = _where(c.fx_node)
    spec = fm.SPECS[step.op]
    _, args = fm.module_args(layer, spec, where)
    try:
        out = fm.propagate(spec, args, tuple(c.in_shapes[0]), where)
    except FormatError as err:
        raise ModelError(f"cannot store this layer: {err}") from None
    if tuple(out) != tuple(c.out_shape):
        raise ModelError(f"{where} gives shape {c.out_shape} (per example), but a graph file's "
                         f"{step.op} gives {tuple(out)}; kwh will not store a different network")
    return step, layer


def _function(c: Call, inputs: tuple[int, ...],
              shapes: dict[fx.Node, tuple[int, ...]]) -> Step | nn.Module:
    """The function step of a traced call, or the layer a functional call is (F.relu ->
    nn.ReLU); ModelError for anything outside the allow-list."""
    n = c.fx_node
    t = n.target
    method = n.op == "call_method"
    if method and t in ("view", "reshape") or t is torch.reshape:
        return _reshape(c, inputs, shapes)
    if method and t == "flatten" or t is torch.flatten:
        return _flatten(c, inputs)
    if isinstance(c.module, nn.Flatten):
        return Step("flatten", inputs)
    if c.module is not None:
        return c.module
    if t is F.adaptive_avg_pool2d:
        return nn.AdaptiveAvgPool2d(_arg(n, 1, "output_size", None))
    if t in _ADD or (method and t == "add"):
        if len(inputs) != 2 or len(n.args) != 2 or n.kwargs.get("alpha", 1) != 1 or \
                any(k != "alpha" for k in n.kwargs):
            raise ModelError(f"{_where(n)} adds {len(inputs)} activations with the arguments "
                             f"{_show_args(n)}; a graph file's add sums two activations of "
                             "equal shapes (no constants, no alpha)")
        if any(s != c.in_shapes[0] for s in c.in_shapes[1:]):
            raise ModelError(f"{_where(n)} adds activations of shapes "
                             f"{', '.join(str(s) for s in c.in_shapes)} (per example) by "
                             "broadcasting; a graph file's add sums two activations of equal "
                             "shapes")
        return Step("add", inputs)
    if t in _CAT and n.op == "call_function":
        return _cat(c, inputs)
    if t == "mean" and method or t is torch.mean:
        return _mean(c, inputs)
    if t == "transpose" and method or t is torch.transpose:
        return _transpose(c, inputs)
    if t == "permute" and method or t is torch.permute:
        return _permute(c, inputs)
    if t in _MATMUL or (method and t == "matmul"):
        return _matmul(c, inputs)
    if t in _MUL or (method and t == "mul"):
        return _scalar(c, inputs, shapes, "mul_scalar")
    if t in _DIV or (method and t in ("div", "true_divide")):
        return _scalar(c, inputs, shapes, "div_scalar")
    name = getattr(t, "__name__", str(t))
    raise ModelError(f"{_where(n)}: {name} is not allowed in a graph file; {_allowed()}")


def _attention(c: Call, inputs: tuple[int, ...], owners: dict[int, str],
               first: int) -> list[tuple[Step, nn.Module | None]]:
    """A kwh.modules.SelfAttention as the steps of its forward, in its order of operations
    (the same floating-point results): q, k and v (each a Linear step with its own quantization,
    reshaped to (tokens, heads, head_dim) and transposed to (heads, tokens, head_dim)), q k^T,
    the scale, the softmax, the weights times v, the heads side by side, out. ``first`` is the
    index the first of them gets."""
    n, m = c.fx_node, c.module
    if len(inputs) != 1 or len(c.in_shapes[0]) != 2:
        raise ModelError(f"{_where(n)} (SelfAttention) reads {len(inputs)} activation(s) of "
                         f"shape(s) {list(c.in_shapes)} (per example); a graph file stores an "
                         "attention on one tensor of tokens (tokens, features)")
    first_call = owners.setdefault(id(m), n.name)
    if first_call != n.name:
        raise ModelError(f"module {n.target!r} is called more than once in forward() (traced "
                         f"nodes {first_call!r} and {n.name!r}): a graph file stores each call's "
                         "layer once and would not share its weights; store the model with "
                         "layout='state'")
    t, h, hd = c.in_shapes[0][0], m.heads, m.head_dim
    out: list[tuple[Step, nn.Module | None]] = []

    def fn(op: str, ins: tuple[int, ...], args: dict | None = None) -> int:
        out.append((Step(op, ins, args or {}), None))
        return first + len(out) - 1

    def layer(module: nn.Module, ins: tuple[int, ...]) -> int:
        out.append(_layer(module, n, ins))
        return first + len(out) - 1

    heads = []
    for name in ("q", "k", "v"):
        split = fn("reshape", (layer(getattr(m, name), inputs),), {"shape": [t, h, hd]})
        heads.append(fn("transpose", (split,), {"dims": [1, 2]}))  # (heads, tokens, head_dim)
    q, k, v = heads
    scores = fn("matmul", (q, fn("transpose", (k,), {"dims": [2, 3]})))  # q k^T
    weights = layer(nn.Softmax(dim=-1), (fn("mul_scalar", (scores,), {"scalar": float(m.scale)}),))
    back = fn("transpose", (fn("matmul", (weights, v)),), {"dims": [1, 2]})  # (tokens, heads, hd)
    layer(m.out, (fn("reshape", (back,), {"shape": [t, h * hd]}),))
    _check_attention_shapes(c, out, first)
    return out


def _check_attention_shapes(c: Call, expanded: list[tuple[Step, nn.Module | None]],
                            first: int) -> None:
    """The loader's shape rules must accept an attention's function steps (numbered from
    ``first``, reading the attention's input or each other) and give the traced shape."""
    n = c.fx_node
    shape: dict[int, tuple[int, ...]] = {}
    for i, (step, module) in enumerate(expanded, first):
        ins = [shape.get(j, tuple(c.in_shapes[0])) for j in step.inputs]
        if isinstance(module, nn.Linear):
            shape[i] = ins[0][:-1] + (module.out_features,)
        elif module is not None:  # the softmax
            shape[i] = ins[0]
        else:
            try:
                shape[i] = tuple(ops.op_shape(ops.OPS[step.op], step.args, ins, _where(n)))
            except FormatError as err:
                raise ModelError(f"cannot store this attention: {err}") from None
    got = shape[first + len(expanded) - 1]
    if got != tuple(c.out_shape):
        raise ModelError(f"{_where(n)} gives shape {c.out_shape} (per example), but its steps "
                         f"in a graph file give {got}; kwh will not store a different network")


def _check_shape(c: Call, step: Step) -> None:
    """The loader's shape rule must accept the step and give the shape it had when traced."""
    n = c.fx_node
    try:
        out = ops.op_shape(ops.OPS[step.op], step.args, list(c.in_shapes), _where(n))
    except FormatError as err:
        raise ModelError(f"cannot store this operation: {err}") from None
    if tuple(out) != tuple(c.out_shape):
        raise ModelError(f"{_where(n)} gives shape {c.out_shape} (per example), but a graph "
                         f"file's {step.op} with {step.args} gives {out}; kwh will not store a "
                         "different network")


def _arg(n: fx.Node, i: int, name: str, default: Any) -> Any:
    if name in n.kwargs:
        return n.kwargs[name]
    return n.args[i] if len(n.args) > i else default


def _show_args(n: fx.Node) -> str:
    return str(fx.node.map_aggregate((n.args, n.kwargs),
                                     lambda a: a.name if isinstance(a, fx.Node) else a))[:120]


def _dim(d: Any, rank: int, n: fx.Node) -> int:
    """A dimension index normalised to 0..rank-1 (rank counts the batch)."""
    if isinstance(d, bool) or not isinstance(d, int) or not -rank <= d < rank:
        raise ModelError(f"{_where(n)}: dim {d!r} is not a dimension of its rank-{rank} input")
    d = d % rank
    if d == 0:
        raise ModelError(f"{_where(n)} works along the batch dimension; a graph file's "
                         "functions work along the dimensions of one example (dim >= 1)")
    return d


def _cat(c: Call, inputs: tuple[int, ...]) -> Step:
    n = c.fx_node
    tensors = _arg(n, 0, "tensors", None)
    if not isinstance(tensors, (list, tuple)) or len(tensors) != len(inputs) or \
            set(n.kwargs) - {"tensors", "dim", "axis"}:
        raise ModelError(f"{_where(n)} concatenates {_show_args(n)}; a graph file's cat takes a "
                         "list of activations and a dim")
    if len(inputs) < 2:
        raise ModelError(f"{_where(n)} concatenates {len(inputs)} activation; a graph file's "
                         "cat joins two or more")
    dim = n.kwargs.get("axis", _arg(n, 1, "dim", 0))
    return Step("cat", inputs, {"dim": _dim(dim, len(c.out_shape) + 1, n)})


def _mean(c: Call, inputs: tuple[int, ...]) -> Step:
    n = c.fx_node
    dims = _arg(n, 1, "dim", None)
    keepdim = _arg(n, 2, "keepdim", False)
    if len(inputs) != 1 or dims is None or type(keepdim) is not bool or \
            set(n.kwargs) - {"dim", "keepdim"} or len(n.args) > 3:
        raise ModelError(f"{_where(n)} takes the mean with {_show_args(n)}; a graph file's mean "
                         "is x.mean(dims, keepdim) over given dimensions of one example")
    rank = len(c.in_shapes[0]) + 1
    dims = [dims] if isinstance(dims, int) else list(dims)
    normal = sorted({_dim(d, rank, n) for d in dims})
    if len(normal) != len(dims):
        raise ModelError(f"{_where(n)} names a dimension twice in {dims}")
    return Step("mean", inputs, {"dims": normal, "keepdim": keepdim})


def _flatten(c: Call, inputs: tuple[int, ...]) -> Step:
    """torch.flatten(x, start_dim, end_dim) / x.flatten(...) within one example."""
    n = c.fx_node
    if len(inputs) != 1 or len(n.args) > 3 or set(n.kwargs) - {"start_dim", "end_dim"}:
        raise ModelError(f"{_where(n)} flattens with {_show_args(n)}; a graph file's flatten "
                         "is torch.flatten(x, start_dim, end_dim)")
    rank = len(c.in_shapes[0]) + 1
    start = _dim(_arg(n, 1, "start_dim", 0), rank, n)
    end = _dim(_arg(n, 2, "end_dim", -1), rank, n)
    if (start, end) == (1, rank - 1):
        return Step("flatten", inputs)  # (batch, everything else): torch.flatten(x, 1)
    return Step("flatten", inputs, {"start_dim": start, "end_dim": end})


def _transpose(c: Call, inputs: tuple[int, ...]) -> Step:
    n = c.fx_node
    if len(inputs) != 1 or len(n.args) > 3 or set(n.kwargs) - {"dim0", "dim1"}:
        raise ModelError(f"{_where(n)} transposes with {_show_args(n)}; a graph file's "
                         "transpose is x.transpose(dim0, dim1)")
    rank = len(c.in_shapes[0]) + 1
    d0 = _dim(_arg(n, 1, "dim0", None), rank, n)
    d1 = _dim(_arg(n, 2, "dim1", None), rank, n)
    if d0 == d1:  # the same dimension twice: the values unchanged
        return Step("permute", inputs, {"dims": list(range(1, rank))})
    return Step("transpose", inputs, {"dims": sorted((d0, d1))})


def _permute(c: Call, inputs: tuple[int, ...]) -> Step:
    n = c.fx_node
    dims = n.kwargs.get("dims", n.args[1:])
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = dims[0]
    rank = len(c.in_shapes[0]) + 1
    ok = len(inputs) == 1 and not set(n.kwargs) - {"dims"} and len(dims) == rank and \
        all(type(d) is int and -rank <= d < rank for d in dims)
    normal = [d % rank for d in dims] if ok else []
    if not ok or sorted(normal) != list(range(rank)):
        raise ModelError(f"{_where(n)} permutes with {_show_args(n)}; a graph file's permute "
                         "is x.permute(dims) with every dimension once")
    if normal[0] != 0:
        raise ModelError(f"{_where(n)} moves the batch dimension (dims {list(dims)}); a graph "
                         "file's permute keeps the batch first: x.permute(0, ...)")
    return Step("permute", inputs, {"dims": normal[1:]})


def _matmul(c: Call, inputs: tuple[int, ...]) -> Step:
    n = c.fx_node
    if len(inputs) != 2 or len(n.args) != 2 or n.kwargs:
        raise ModelError(f"{_where(n)} multiplies {_show_args(n)}; a graph file's matmul "
                         "multiplies two activations (a @ b, torch.matmul(a, b))")
    return Step("matmul", inputs)


def _scalar(c: Call, inputs: tuple[int, ...], shapes: dict[fx.Node, tuple[int, ...]],
            op: str) -> Step:
    """x * number, number * x, x / number: a mul_scalar or div_scalar step."""
    n = c.fx_node
    kwargs = dict(n.kwargs)
    if op == "div_scalar" and kwargs.get("rounding_mode", None) is None:
        kwargs.pop("rounding_mode", None)
    what = "multiplies" if op == "mul_scalar" else "divides"
    rule = (f"a graph file's {op} {'multiplies' if op == 'mul_scalar' else 'divides'} one "
            f"activation by a finite number (|number| <= {ops.MAX_SCALAR:g}"
            + (", not 0" if op == "div_scalar" else "") + ")")
    if len(inputs) != 1:  # a product of activations (a gate), or of numbers only
        name = getattr(n.target, "__name__", str(n.target))
        raise ModelError(f"{_where(n)}: {name} is not allowed in a graph file on "
                         f"{len(inputs)} activations; {_allowed()}")
    if len(n.args) != 2 or kwargs:
        raise ModelError(f"{_where(n)} {what} {_show_args(n)}; {rule}")
    first = isinstance(n.args[0], fx.Node) and n.args[0] in shapes
    if op == "div_scalar" and not first:
        raise ModelError(f"{_where(n)} divides a number by an activation; {rule}")
    value = _number(n.args[1] if first else n.args[0], shapes, n, rule)
    if op == "div_scalar" and value == 0:
        raise ModelError(f"{_where(n)} divides by 0; {rule}")
    return Step(op, inputs, {"scalar": value})


def _number(a: Any, shapes: dict[fx.Node, tuple[int, ...]], n: fx.Node, rule: str) -> float:
    """A finite, bounded Python number (a float, an int exact in float32, or a size)."""
    if isinstance(a, float):
        if not math.isfinite(a) or abs(a) > ops.MAX_SCALAR:
            raise ModelError(f"{_where(n)} uses the number {a!r}; {rule}")
        return a
    if isinstance(a, fx.Node) and a not in shapes:
        a = _size(a, shapes, n)
    if type(a) is not int or abs(a) > _EXACT_INT:
        raise ModelError(f"{_where(n)} uses {a!r} as its number; {rule}, given as a float or an "
                         f"integer of at most {_EXACT_INT} in magnitude (not the batch size)")
    return float(a)


class _Batch:
    """The batch size, read off an activation's shape."""

    def __repr__(self) -> str:
        return "the batch size"


BATCH = _Batch()


def _size(a: Any, shapes: dict[fx.Node, tuple[int, ...]], n: fx.Node) -> Any:
    """The value of a size argument of ``n``: an int, ``BATCH``, or a tuple of them.

    Sizes come from literals, ``x.shape`` / ``x.size()`` / ``x.size(d)`` of an activation,
    indexing them, ``x.dim()`` / ``x.ndim``, and products and floor divisions of sizes that
    do not involve the batch size.
    """
    if isinstance(a, bool):
        raise ModelError(f"{_where(n)} uses {a!r} as a size; sizes are integers")
    if isinstance(a, int):
        return a
    if isinstance(a, (tuple, list)):
        return tuple(_size(v, shapes, n) for v in a)
    if not isinstance(a, fx.Node) or a in shapes:
        shown = a.name if isinstance(a, fx.Node) else repr(a)[:40]
        raise ModelError(f"{_where(n)} uses {shown} as a size; a graph file reads sizes that "
                         "are integers or come from x.shape, x.size(), x.dim()")
    t = a.target
    src = a.args[0] if a.args else None
    if a.op == "call_function" and t is getattr and a.args[1] in ("shape", "ndim") or \
            a.op == "call_method" and t in ("size", "dim"):
        if src not in shapes:
            raise ModelError(f"{_where(n)} reads a size of {_describe(src)}, not of an "
                             "activation")
        full = (BATCH, *shapes[src])
        if t == "dim" or a.args[1:] == ("ndim",):
            return len(full)
        d = _arg(a, 1, "dim", None) if a.op == "call_method" else None
        if d is None:
            return full
        if type(d) is not int or not -len(full) <= d < len(full):
            raise ModelError(f"{_where(n)} reads size {d!r} of a rank-{len(full)} activation")
        return full[d]
    if a.op == "call_function" and t is operator.getitem:
        seq, key = _size(src, shapes, n), a.args[1]
        if not isinstance(seq, tuple) or not isinstance(key, (int, slice)) or \
                isinstance(key, bool) or isinstance(key, int) and not -len(seq) <= key < len(seq):
            raise ModelError(f"{_where(n)} indexes sizes with {key!r}")
        return seq[key]
    if a.op == "call_function" and t in (operator.mul, operator.floordiv):
        x, y = (_size(v, shapes, n) for v in a.args)
        if type(x) is not int or type(y) is not int or t is operator.floordiv and y == 0:
            raise ModelError(f"{_where(n)} computes a size from {x!r} and {y!r}; a graph file "
                             "stores fixed sizes, with the batch size only as the first size "
                             "of a reshape")
        return x * y if t is operator.mul else x // y
    raise ModelError(f"{_where(n)} computes a size with {_where(a)}; a graph file reads sizes "
                     "from x.shape, x.size(), x.dim(), indexing and products of them")


def _reshape(c: Call, inputs: tuple[int, ...], shapes: dict[fx.Node, tuple[int, ...]]) -> Step:
    """x.view(...), x.reshape(...), torch.reshape(x, ...) keeping the batch first: a reshape
    to the traced per-example sizes (flatten when that is one size)."""
    n = c.fx_node
    rule = ("a graph file's reshape keeps the batch first (its first size x.size(0), "
            "x.shape[0] or -1) and gives the other sizes as integers or sizes read off x.shape")
    if n.op == "call_method":
        sizes, extra = list(n.args[1:]), set(n.kwargs) - {"size", "shape"}
        if n.kwargs and not extra and not sizes and len(n.kwargs) == 1:
            sizes = list(n.kwargs.values())
        elif n.kwargs:
            extra = extra or set(n.kwargs)
    else:
        sizes, extra = [_arg(n, 1, "shape", None)], set(n.kwargs) - {"shape"}
    if len(inputs) != 1 or extra:
        raise ModelError(f"{_where(n)} reshapes with {_show_args(n)}; {rule}")
    values = _size(sizes, shapes, n)
    if len(values) == 1 and isinstance(values[0], tuple):
        values = values[0]
    if not values or any(isinstance(v, tuple) for v in values):
        raise ModelError(f"{_where(n)} reshapes to {values!r}; {rule}")
    first, rest = values[0], values[1:]
    if first is not BATCH and first != -1:
        raise ModelError(f"{_where(n)} reshapes to sizes {list(values)} whose first is "
                         f"{first!r}, not the batch size; {rule}")
    before, after = c.in_shapes[0], tuple(c.out_shape)
    if any(v is BATCH for v in rest) or len(rest) != len(after) or \
            math.prod(after) != math.prod(before) or \
            any(v != -1 and v != o for v, o in zip(rest, after)):
        raise ModelError(f"{_where(n)} reshapes an activation of shape {before} (per example) "
                         f"with the sizes {list(values)}, which does not keep the batch as the "
                         f"first dimension; {rule}")
    if len(after) == 1:
        return Step("flatten", inputs)  # (batch, everything else): torch.flatten(x, 1)
    return Step("reshape", inputs, {"shape": list(after)})


def _in_place(n: fx.Node, module: nn.Module | None) -> bool:
    if n.op == "call_module":
        return getattr(module, "inplace", False) is True
    if n.op == "call_method":
        return str(n.target).endswith("_") and not str(n.target).startswith("_")
    return n.kwargs.get("inplace") is True


def _check_in_place(kept: list[Call], live: set, known: set) -> None:
    """An in-place operation may only overwrite an activation nothing else reads."""
    for c in kept:
        n = c.fx_node
        if not _in_place(n, c.module):
            continue
        src = _inputs(n, known)[:1]
        others = [u.name for u in (src[0].users if src else ()) if u is not n and u in live]
        if others:
            raise ModelError(f"{_where(n)} overwrites {src[0].name!r} in place, which "
                             f"{', '.join(others)} also read(s); the file's operations are "
                             "not in place: make it out of place (inplace=False)")


@torch.no_grad()
def _check_same(model: nn.Module, net: GraphNet, example: Tensor) -> None:
    """The steps must compute exactly what the model computes (eval mode)."""
    flags = [(m, m.training) for m in (*model.modules(), *net.modules())]
    try:
        model.eval()
        net.eval()
        want = model(example)
        got = net(example)
    finally:
        for m, f in flags:
            m.training = f
    if not isinstance(want, Tensor) or want.shape != got.shape or not torch.equal(want, got):
        raise ModelError(f"the graph of operations read from {type(model).__name__}.forward "
                         "does not reproduce the model's output on an example input (an "
                         "operation that is random in eval mode, or in place on a value read "
                         "later?); kwh will not store a different network: store it with "
                         "layout='state'")

