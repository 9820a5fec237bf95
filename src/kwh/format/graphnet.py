"""GraphNet, the model a graph-layout .kwh file rebuilds, and reading any model as one.

A ``GraphNet`` runs a list of steps in order: each step is an allowed layer
(``kwh.format.modules.SPECS``, one input) or an allowed function (``kwh.format.ops.OPS``: add,
cat, flatten, mean) applied to the outputs of earlier steps or to the model's input. It is an
ordinary nn.Module: torch.fx (``kwh.graph.trace``) traces it into those layers and functions,
so kwh.energy and the report read a loaded file like any model.

``read_graph`` goes the other way: it traces a model (a torch.fx GraphModule, or any module
``kwh.graph.trace`` can trace) into such steps, refusing with a ModelError that names the node
any operation outside the allow-list, and checks that the steps compute exactly what the
model computes on an example input.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from kwh.errors import ModelError
from kwh.format import modules as fm
from kwh.format import ops
from kwh.graph import Call, calls, example_input

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
    for c in found:
        if c.fx_node not in live:
            continue
        inputs = tuple(index[n] for n in _inputs(c.fx_node, known))
        step, module = _step(c, inputs, owners)
        if module is not None:
            modules[len(steps)] = module
        index[c.fx_node] = len(steps)
        steps.append(step)
        sources.append(_where(c.fx_node))
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
            "F.relu, F.max_pool2d, F.adaptive_avg_pool2d), and the functions add (a + b, "
            "torch.add), cat (torch.cat), flatten (torch.flatten(x, 1), x.view(x.size(0), -1)) "
            "and mean (x.mean(dims))")


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


def _step(c: Call, inputs: tuple[int, ...], owners: dict[int, str]) -> tuple[Step, Any]:
    """The step (and layer, or None) of one traced operation."""
    n = c.fx_node
    if n.op == "call_module":
        if any(True for _ in (*c.module.parameters(), *c.module.buffers())):
            first = owners.setdefault(id(c.module), n.name)
            if first != n.name:
                raise ModelError(f"module {n.target!r} is called more than once in forward() "
                                 f"(traced nodes {first!r} and {n.name!r}): a graph file stores "
                                 "each call's layer once and would not share its weights; "
                                 "store the model with layout='state'")
        return _layer(c.module, n, inputs)
    if isinstance(c.module, nn.Flatten):
        return Step("flatten", inputs), None
    if c.module is not None:
        return _layer(c.module, n, inputs)
    t = n.target
    if t is F.adaptive_avg_pool2d:
        return _layer(nn.AdaptiveAvgPool2d(_arg(n, 1, "output_size", None)), n, inputs)
    if t in _ADD or (n.op == "call_method" and t == "add"):
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
        return Step("add", inputs), None
    if t in _CAT and n.op == "call_function":
        return _cat(c, inputs), None
    if t == "mean" and n.op == "call_method" or t is torch.mean:
        return _mean(c, inputs), None
    name = getattr(t, "__name__", str(t))
    raise ModelError(f"{_where(n)}: {name} is not allowed in a graph file; {_allowed()}")


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
        raise ModelError(f"{_where(n)} works along the batch dimension; a graph file's cat and "
                         "mean work along the dimensions of one example (dim >= 1)")
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

