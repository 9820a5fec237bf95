"""The model as one traced graph (torch.fx), and the chain of modules compress and spike read.

``trace`` runs torch.fx's symbolic tracer over any ``nn.Module``: modules from ``torch.nn``
and kwh's own layers are leaves, everything else (the user's ``forward()``, nested blocks,
``nn.Sequential`` subclasses with their own ``forward``) is traced through. ``chain`` reads
that graph as a chain of modules when it is one: every node feeds only the next, functional
calls (``F.relu``, ``torch.flatten``, ``x.view(x.size(0), -1)``, ``F.max_pool2d`` ...) become
their module equivalents, and the chain is checked to reproduce the model's output exactly on
an example input. A graph that is not such a chain (a residual addition, a concatenation, a
branch, a function with no module equivalent) is a ``ChainError``; kwh.compress then prunes
the graph itself (kwh.compress.dag). What no reading of the graph can handle (a module with
weights called twice, data-dependent control flow, a tensor attribute used in ``forward``,
several inputs or outputs) is a plain ``ModelError``. Every error names the construct and
where it is: kwh never compresses a different network than the one it was given.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from kwh.bayes import BayesLayer
from kwh.binary import BinaryLayer
from kwh.errors import ModelError
from kwh.modules import PositionEmbedding, SelectInputs, SelfAttention

__all__ = ["trace", "chain", "ChainLink", "ChainError", "check_io", "check_calls", "calls", "Call",
           "explicit_chain", "is_plain_sequential", "example_input", "node_shapes",
           "shape_only", "tensor_inputs", "describe_node"]

_WEIGHTS_MODE_HINT = ("or compress only the weights with kwh.compress(model, mode='weights') "
                      "(masks and bits in place, the architecture unchanged)")
_CHAIN_ONLY = ("not a chain of layers (kwh.compress and sigma-delta conversion then read the "
               "graph itself)")


class ChainError(ModelError):
    """The traced graph is not a chain of supported layers (a join, a branch, a function with
    no module equivalent); the message names the construct. kwh.compress and kwh.spike read
    such a model as a graph instead (kwh.compress.dag, kwh.spike.plan.GraphPlan)."""


# kwh's own layers: called as modules in a traced graph, never traced through (a
# PositionEmbedding read inside forward() would be a tensor attribute, which kwh refuses; a
# SelfAttention is one unit, so that compress can remove whole heads).
_KWH_LEAVES = (BayesLayer, BinaryLayer, SelectInputs, PositionEmbedding, SelfAttention)


class _Tracer(fx.Tracer):
    """torch.nn modules and kwh's layers are leaves; user modules are traced through."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, _KWH_LEAVES):
            return True
        return super().is_leaf_module(m, qualname)


def is_plain_sequential(model: nn.Module) -> bool:
    """An nn.Sequential (or subclass) whose forward is nn.Sequential's: its children in order."""
    return isinstance(model, nn.Sequential) and type(model).forward is nn.Sequential.forward


def explicit_chain(model: nn.Module) -> bool:
    """An nn.Sequential whose forward is its children in order, down to torch.nn/kwh leaves."""
    if not is_plain_sequential(model):
        return False
    for child in model.children():
        if isinstance(child, nn.Sequential):
            if not explicit_chain(child):
                return False
        elif not _library_module(child):
            return False
    return True


def _library_module(m: nn.Module) -> bool:
    """A module whose forward is torch.nn's or kwh's own (not a user-defined forward)."""
    return isinstance(m, _KWH_LEAVES) or \
        type(m).__module__.startswith("torch.nn")


def trace(model: nn.Module) -> fx.GraphModule:
    """The model's forward as an fx graph; a ModelError names what cannot be traced."""
    try:
        graph = _Tracer().trace(model)
    except Exception as e:  # fx raises TraceError, TypeError, RuntimeError... all mean the same
        raise ModelError(
            f"cannot trace {type(model).__name__}.forward with torch.fx: {e}. kwh reads a model "
            "as one traced graph, so its forward must not branch or loop on tensor values "
            f"(data-dependent control flow); rewrite that part, {_WEIGHTS_MODE_HINT}") from None
    return fx.GraphModule(model, graph)


@dataclass
class ChainLink:
    """One step of the chain: its name (module path, or the traced node's name) and module."""

    name: str
    module: nn.Module


def example_input(model: nn.Module, input_shape: tuple[int, ...], batch: int = 2) -> torch.Tensor:
    """A fixed random batch of ``input_shape`` examples on the model's device and dtype."""
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    g = torch.Generator().manual_seed(0)
    return torch.randn((batch, *input_shape), generator=g, dtype=torch.float64).to(device, dtype)


def chain(model: nn.Module, example: torch.Tensor) -> list[ChainLink]:
    """The model as a checked chain of modules (see the module docstring).

    ``example``: a batch of inputs (batch >= 2 tells a flatten from a reshape of the batch).
    """
    gm = trace(model)
    modules = dict(model.named_modules())
    nodes = list(gm.graph.nodes)
    check_io(model, gm)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    for n in nodes:  # joins first: they name the construct best (residual add, concatenation)
        if n.op not in ("placeholder", "output") and not shape_only(n) and \
                len(tensor_inputs(n)) > 1:
            raise ChainError(_join_message(n, describe_node(n), tensor_inputs(n)))
    check_calls(gm)
    shapes = node_shapes(gm, example)
    links: list[ChainLink] = []
    current = placeholders[0]
    for n in nodes:
        if n.op in ("placeholder",) or shape_only(n):
            continue
        where = describe_node(n)
        if n.op == "output":
            if n.args[0] is not current:
                raise ChainError(f"{type(model).__name__}.forward returns {_describe(n.args[0])} "
                                 "instead of the last layer's output tensor; kwh compresses "
                                 "models that return one tensor")
            break
        inputs = tensor_inputs(n)
        if inputs != [current]:
            raise ChainError(_join_message(n, where, inputs))
        users = [u for u in n.users if not shape_only(u)]
        if len(users) > 1:
            raise ChainError(f"{where}: its output feeds {len(users)} operations "
                             f"({', '.join(u.name for u in users)}), a branch (e.g. the start of "
                             f"a residual connection); {_CHAIN_ONLY}")
        if n.op == "call_module":
            links.append(ChainLink(str(n.target), modules[n.target]))
        else:
            links.append(ChainLink(n.name, _as_module(n, where, shapes)))
        current = n
    _check_same(model, links, example)
    return links


def check_io(model: nn.Module, gm: fx.GraphModule) -> None:
    """ModelError unless the traced forward takes one input and returns one tensor."""
    nodes = list(gm.graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise ModelError(f"{type(model).__name__}.forward takes {len(placeholders)} inputs; kwh "
                         "compresses models with one input tensor")
    out = nodes[-1]
    if not isinstance(out.args[0], fx.Node):
        raise ModelError(f"{type(model).__name__}.forward returns {_describe(out.args[0])} "
                         "instead of one output tensor; kwh compresses models that return one "
                         f"tensor (return the logits), {_WEIGHTS_MODE_HINT}")


def check_calls(gm: fx.GraphModule) -> None:
    """ModelError for what no reading of the graph handles: a tensor attribute read inside
    forward(), a module with weights or buffers called more than once (shared weights; a
    stateless module such as one nn.ReLU used twice is fine)."""
    called: dict[str, str] = {}
    for n in gm.graph.nodes:
        if n.op == "get_attr":
            raise ModelError(f"{describe_node(n)} reads the tensor attribute {n.target!r} inside "
                             "forward(); kwh can only follow modules and functions of the "
                             f"activations, {_WEIGHTS_MODE_HINT}")
        if n.op == "call_module" and _has_state(gm.get_submodule(n.target)):
            if n.target in called:
                raise ModelError(f"module {n.target!r} is called more than once in forward() "
                                 f"({called[n.target]} and {n.name}): shared weights cannot be "
                                 f"pruned per call, {_WEIGHTS_MODE_HINT}")
            called[n.target] = n.name


def _has_state(m: nn.Module) -> bool:
    """Whether a module holds parameters or buffers (its calls cannot be told apart)."""
    return any(True for _ in m.parameters()) or any(True for _ in m.buffers())


@dataclass
class Call:
    """One operation of the traced model on an example, shapes per example (no batch dim).

    ``module``: the module called, or the torch.nn module equivalent to a functional call
    (F.relu -> nn.ReLU, ...); None for other functions, then ``function`` names it ("add",
    "cat", "adaptive_avg_pool2d", ...). ``node``: the traced node's name; ``inputs``: the
    names of the nodes whose tensors it reads (the model's input is "x" or its argument's
    name), in the order of ``in_shapes``.
    ``fx_node``: the traced node itself (its arguments, and through ``fx_node.graph`` the
    wiring and the output).
    """

    name: str
    module: nn.Module | None
    function: str | None
    in_shapes: list[tuple[int, ...]]
    out_shape: tuple[int, ...]
    node: str = ""
    inputs: list[str] = field(default_factory=list)
    fx_node: fx.Node | None = None


def calls(model: nn.Module, example: torch.Tensor) -> list[Call]:
    """Every operation of the traced ``model`` on ``example`` (a batch), in execution order."""
    gm = trace(model)
    modules = dict(model.named_modules())
    shapes = node_shapes(gm, example)
    out: list[Call] = []
    for n in gm.graph.nodes:
        if n.op in ("placeholder", "output") or shape_only(n):
            continue
        where = describe_node(n)
        if n.op == "get_attr":
            raise ModelError(f"{where} reads the tensor attribute {n.target!r} inside forward(); "
                             "kwh cannot count or price operations on it")
        if n.name not in shapes:
            raise ModelError(f"{where} does not produce one tensor; kwh follows operations on "
                             "tensors only")
        read = [i.name for i in tensor_inputs(n) if i.name in shapes]
        ins = [shapes[i][1:] for i in read]
        if n.op == "call_module":
            out.append(Call(str(n.target), modules[n.target], None, ins, shapes[n.name][1:],
                            n.name, read, n))
            continue
        try:
            module, function = _as_module(n, where, shapes), None
        except ModelError:
            module, function = None, getattr(n.target, "__name__", str(n.target)).strip("_")
        out.append(Call(n.name, module, function, ins, shapes[n.name][1:], n.name, read, n))
    return out


# ---------------------------------------------------------------------------------- helpers

def node_shapes(gm: fx.GraphModule, example: torch.Tensor) -> dict[str, tuple]:
    """Each node's output shape on ``example`` (eval mode, no gradients)."""
    shapes: dict[str, tuple] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if isinstance(out, torch.Tensor):
                shapes[n.name] = tuple(out.shape)
            return out

    flags = [(m, m.training) for m in gm.modules()]  # the model's own modules: restored
    gm.eval()
    try:
        with torch.no_grad():
            Recorder(gm).run(example)
    except ModelError:
        raise
    except Exception as e:
        raise ModelError(f"the traced model fails on an example of shape "
                         f"{tuple(example.shape[1:])} (per example): "
                         f"{str(e).strip().splitlines()[0]}") from None
    finally:
        for m, f in flags:
            m.training = f
    return shapes


def shape_only(n: fx.Node) -> bool:
    """x.size(...), x.shape, x.dim() and arithmetic on them: values, not activations."""
    if n.op == "call_method" and n.target in ("size", "dim"):
        return True
    if n.op == "call_function" and n.target is getattr and n.args[1] in ("shape", "ndim"):
        return True
    if n.op == "call_function" and n.target in (operator.getitem, operator.mul,
                                                operator.floordiv):
        return all(not isinstance(a, fx.Node) or shape_only(a) for a in n.args) and \
            any(isinstance(a, fx.Node) for a in n.args)
    return False


def tensor_inputs(n: fx.Node) -> list[fx.Node]:
    out: list[fx.Node] = []

    def visit(a):
        if isinstance(a, fx.Node) and not shape_only(a):
            out.append(a)
        return a

    fx.node.map_aggregate(n.args, visit)
    fx.node.map_aggregate(n.kwargs, visit)
    return out


def describe_node(n: fx.Node) -> str:
    if n.op == "call_module":
        return f"module {n.target!r}"
    if n.op == "call_method":
        return f"the method call .{n.target}() (traced node {n.name!r})"
    name = getattr(n.target, "__name__", str(n.target))
    return f"the call {name}() (traced node {n.name!r})"


def _describe(a) -> str:
    if isinstance(a, (tuple, list)):
        return f"a {type(a).__name__} of {len(a)}"
    if isinstance(a, dict):
        return "a dict"
    return f"node {getattr(a, 'name', a)!r}"


def _join_message(n: fx.Node, where: str, inputs: list[fx.Node]) -> str:
    if len(inputs) > 1:
        name = getattr(n.target, "__name__", str(n.target))
        kind, example = "combines", "a residual connection or a join of branches"
        if name in ("cat", "concat", "stack", "hstack"):
            kind = "concatenates"
        elif name in ("matmul", "bmm", "mul"):
            kind, example = "multiplies", "attention's q @ k^T or a gate"
        return (f"{where} {kind} {len(inputs)} paths ({', '.join(i.name for i in inputs)}), e.g. "
                f"{example}; {_CHAIN_ONLY}")
    if not inputs:
        return (f"{where} does not read the activations (it makes a new tensor from constants); "
                f"it has no place in a chain of layers; {_CHAIN_ONLY}")
    return (f"{where} reads {inputs[0].name!r}, not the output of the operation before it; "
            f"{_CHAIN_ONLY}")


def _arg(n: fx.Node, i: int, name: str, default):
    if name in n.kwargs:
        return n.kwargs[name]
    return n.args[i] if len(n.args) > i else default


_ACTIVATIONS = {
    F.relu: nn.ReLU, torch.relu: nn.ReLU, F.relu6: nn.ReLU6, torch.sigmoid: nn.Sigmoid,
    F.sigmoid: nn.Sigmoid, torch.tanh: nn.Tanh, F.tanh: nn.Tanh, F.silu: nn.SiLU,
    F.mish: nn.Mish, F.hardswish: nn.Hardswish, F.hardsigmoid: nn.Hardsigmoid,
    F.softsign: nn.Softsign, F.tanhshrink: nn.Tanhshrink, F.logsigmoid: nn.LogSigmoid,
    F.selu: nn.SELU,
}
_METHOD_ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh,
                       "relu_": nn.ReLU, "sigmoid_": nn.Sigmoid, "tanh_": nn.Tanh}


def _as_module(n: fx.Node, where: str, shapes: dict[str, tuple]) -> nn.Module:
    """The torch.nn module that computes what a functional node computes."""
    t = n.target
    if n.op == "call_method" and t in _METHOD_ACTIVATIONS:
        return _METHOD_ACTIVATIONS[t]()
    if n.op == "call_function" and t in _ACTIVATIONS:
        return _ACTIVATIONS[t]()
    if t is F.leaky_relu:
        return nn.LeakyReLU(_arg(n, 1, "negative_slope", 0.01))
    if t is F.elu:
        return nn.ELU(_arg(n, 1, "alpha", 1.0))
    if t is F.gelu:
        return nn.GELU(approximate=n.kwargs.get("approximate", "none"))
    if t is F.hardtanh:
        return nn.Hardtanh(_arg(n, 1, "min_val", -1.0), _arg(n, 2, "max_val", 1.0))
    if t is F.dropout:
        return nn.Dropout(_arg(n, 1, "p", 0.5))
    if t in (F.log_softmax, torch.log_softmax) or (n.op == "call_method" and t == "log_softmax"):
        return nn.LogSoftmax(_arg(n, 1, "dim", None))
    if t in (F.softmax, torch.softmax) or (n.op == "call_method" and t == "softmax"):
        return nn.Softmax(_arg(n, 1, "dim", None))
    if t is F.max_pool2d:
        if _arg(n, 6, "return_indices", False):
            raise ChainError(f"{where}: max_pool2d(return_indices=True) is not supported")
        return nn.MaxPool2d(_arg(n, 1, "kernel_size", None), _arg(n, 2, "stride", None),
                            _arg(n, 3, "padding", 0), _arg(n, 4, "dilation", 1),
                            ceil_mode=_arg(n, 5, "ceil_mode", False))
    if t is F.avg_pool2d:
        return nn.AvgPool2d(_arg(n, 1, "kernel_size", None), _arg(n, 2, "stride", None),
                            _arg(n, 3, "padding", 0), _arg(n, 4, "ceil_mode", False),
                            _arg(n, 5, "count_include_pad", True),
                            _arg(n, 6, "divisor_override", None))
    if (t is torch.flatten or (n.op == "call_method" and t in ("flatten", "view", "reshape"))):
        return _as_flatten(n, where, shapes)
    if n.op == "call_method" and t in ("contiguous",):
        return nn.Identity()
    name = getattr(t, "__name__", str(t))
    raise ChainError(f"{where}: {name} is not supported in a chain of layers (supported "
                     "functions: activations such as F.relu, F.max_pool2d, F.avg_pool2d, "
                     "torch.flatten / .view(B, -1) / .reshape(B, -1), F.dropout, "
                     f"(log_)softmax); use the module form, {_WEIGHTS_MODE_HINT}")


def _as_flatten(n: fx.Node, where: str, shapes: dict[str, tuple]) -> nn.Module:
    src = tensor_inputs(n)[0]
    before, after = shapes.get(src.name), shapes.get(n.name)
    if before is None or after is None:
        raise ChainError(f"{where}: could not read its shapes")
    if len(after) == 2 and after[0] == before[0] and after[1] == math.prod(before[1:]):
        return nn.Flatten()
    raise ChainError(f"{where} turns activations of shape {before} into {after}; kwh follows "
                     "only the flatten to (batch, features) in a chain of layers")


@torch.no_grad()
def _check_same(model: nn.Module, links: list[ChainLink], example: torch.Tensor) -> None:
    """The chain must compute exactly what the model computes (eval mode)."""
    seq = nn.Sequential()
    for i, link in enumerate(links):
        seq.add_module(str(i), link.module)
    flags = [m.training for m in model.modules()]
    try:
        model.eval()
        want = model(example)
        got = seq(example)
    finally:
        for m, f in zip(model.modules(), flags):
            m.training = f
    if not isinstance(want, torch.Tensor) or want.shape != got.shape or not torch.equal(want, got):
        raise ModelError(f"the chain of layers read from {type(model).__name__}.forward does not "
                         "reproduce the model's output on an example input; kwh will not "
                         f"compress a different network, {_WEIGHTS_MODE_HINT}")
