"""A model as a checked chain of modules, with the shape each module sees (a shape probe)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kwh.bayes import BayesConv2d, BayesLayer, BayesLinear
from kwh.errors import ModelError
from kwh.graph import ChainError
from kwh.graph import chain as graph_chain
from kwh.graph import explicit_chain

WEIGHTED = (BayesLinear, BayesConv2d, nn.Linear, nn.Conv2d)
# Modules that act on each channel (or feature) alone, so removing a channel commutes with them.
ELEMENTWISE = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign,
    nn.Tanhshrink, nn.LogSigmoid, nn.Identity,
)
POOLS = (nn.MaxPool2d, nn.AvgPool2d)
DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
HEAD_ONLY = (nn.Softmax, nn.LogSoftmax)  # mix outputs: allowed only after the last layer
SUPPORTED = (
    "Linear, Conv2d (plain or Bayesian), ReLU and other elementwise activations "
    "(ReLU6, LeakyReLU, ELU, SELU, CELU, GELU, SiLU, Mish, Sigmoid, Tanh, Hardtanh, Hardswish, "
    "Hardsigmoid, Softplus, Softsign, Tanhshrink, LogSigmoid, Identity), MaxPool2d, AvgPool2d, "
    "Flatten, BatchNorm1d, BatchNorm2d, Dropout, Dropout1d, Dropout2d, and Softmax/LogSoftmax "
    "after the last layer; nested nn.Sequential is flattened"
)


@dataclass
class Node:
    """One module of the chain: qualified name, module, per-example input and output shapes."""

    name: str
    module: nn.Module
    in_shape: tuple[int, ...] = ()
    out_shape: tuple[int, ...] = ()

    @property
    def weighted(self) -> bool:
        return isinstance(self.module, WEIGHTED)


def flatten_chain(model: nn.Module, example: torch.Tensor | None = None) -> list[Node]:
    """The model's modules as a checked chain.

    An nn.Sequential of torch.nn and kwh layers (nested plain Sequentials flattened) is read
    as it is; any other model (its own ``forward()``, an nn.Sequential subclass with its own
    ``forward``, user-defined blocks) is traced with torch.fx on ``example`` (a batch of
    inputs) and must be a chain there (kwh.graph.chain). A ChainError names a construct a chain
    cannot hold (a join, a branch, an unsupported module or function; kwh.compress.dag reads
    such a model as a graph); any other ModelError names what no reading of the model handles.
    """
    if isinstance(model, WEIGHTED):
        model = nn.Sequential(model)
    nodes: list[Node] = []
    if explicit_chain(model):
        _collect(model, "", nodes)
    else:
        if example is None:
            raise ModelError(f"{type(model).__name__} is not a plain nn.Sequential, so kwh traces "
                             "its forward() on example inputs: pass example_inputs=x (a batch "
                             "of inputs) or the input shape (CompressConfig(input_shape=...))")
        nodes = [Node(link.name, link.module) for link in graph_chain(model, example)]
    weighted = [i for i, n in enumerate(nodes) if n.weighted]
    if not weighted:
        raise ModelError("the model has no Linear or Conv2d layer to compress")
    for i, n in enumerate(nodes):
        _check(n, after_last=i > weighted[-1])
    return nodes


def _collect(seq: nn.Sequential, prefix: str, out: list[Node]) -> None:
    for child_name, child in seq.named_children():
        name = f"{prefix}.{child_name}" if prefix else child_name
        if isinstance(child, nn.Sequential):
            _collect(child, name, out)
        else:
            out.append(Node(name, child))


def _check(n: Node, after_last: bool) -> None:
    m = n.module
    kind = type(m).__name__
    if isinstance(m, BayesLayer) and not isinstance(m, (BayesLinear, BayesConv2d)):
        raise ChainError(f"layer {n.name!r} ({kind}) is not supported; "
                         f"supported modules: {SUPPORTED}")
    if isinstance(m, (nn.Conv2d, BayesConv2d)):
        if m.groups != 1:
            raise ChainError(f"layer {n.name!r} is a grouped Conv2d (groups={m.groups}); only "
                             "groups=1 can have its channels pruned")
        if isinstance(m, nn.Conv2d) and m.padding_mode != "zeros":
            raise ChainError(f"layer {n.name!r} uses padding_mode={m.padding_mode!r}; only 'zeros' "
                             "is supported")
        return
    if isinstance(m, WEIGHTED) or isinstance(m, ELEMENTWISE + POOLS + DROPOUT):
        return
    if isinstance(m, nn.Flatten):
        if (m.start_dim, m.end_dim) != (1, -1):
            raise ChainError(f"layer {n.name!r}: only Flatten(start_dim=1, end_dim=-1) is "
                             f"supported, got start_dim={m.start_dim}, end_dim={m.end_dim}")
        return
    if isinstance(m, NORMS):
        if not m.track_running_stats or m.running_mean is None:
            raise ChainError(f"layer {n.name!r} ({kind}) has no running statistics "
                             "(track_running_stats=False); it cannot be folded or frozen")
        return
    if isinstance(m, HEAD_ONLY) and after_last:
        return
    where = " before the last Linear/Conv2d" if isinstance(m, HEAD_ONLY) else ""
    raise ChainError(f"layer {n.name!r} ({kind}) is not supported{where}; supported modules: "
                     f"{SUPPORTED}")


class TokenInput(ModelError):
    """A Linear of a chain gets a tensor of tokens (batch, ..., features), not (batch,
    features): the chain cannot hold it; kwh.compress.dag follows its units on the last dim."""


@torch.no_grad()
def probe_shapes(nodes: list[Node], input_shape: tuple[int, ...]) -> None:
    """Run one zero example through the chain (eval mode) and record each module's shapes.

    TokenInput (a ModelError) when a Linear gets tokens (batch, ..., its in_features)."""
    param = next((p for n in nodes for p in n.module.parameters()), None)
    x = torch.zeros(1, *input_shape, device=None if param is None else param.device)
    for n in nodes:
        if isinstance(n.module, (nn.Linear, BayesLinear)) and x.dim() != 2:
            tokens = x.dim() > 2 and x.shape[-1] == n.module.in_features
            error = TokenInput if tokens else ModelError
            raise error(f"layer {n.name!r} (Linear) gets input of shape {tuple(x.shape[1:])}; "
                        "add nn.Flatten() before it (Linear must see (B, features))")
        if isinstance(n.module, (nn.Conv2d, BayesConv2d)) and x.dim() != 4:
            raise ModelError(f"layer {n.name!r} (Conv2d) gets input of shape {tuple(x.shape[1:])}; "
                             "it needs (C, H, W) examples")
        n.in_shape = tuple(x.shape[1:])
        was_training = n.module.training
        n.module.eval()
        try:
            x = n.module(x)
        except Exception as e:  # the message names the layer and the shape it got
            raise ModelError(f"layer {n.name!r} ({type(n.module).__name__}) fails on input "
                             f"of shape {n.in_shape} (input_shape={tuple(input_shape)}): "
                             f"{e}") from None
        finally:
            n.module.train(was_training)
        n.out_shape = tuple(x.shape[1:])


def infer_input_shape(nodes: list[Node]) -> tuple[int, ...] | None:
    """(in_features,) when the first weighted layer is a Linear behind Flatten/elementwise only."""
    for n in nodes:
        if isinstance(n.module, (nn.Linear, BayesLinear)):
            return (n.module.in_features,)
        if not isinstance(n.module, (nn.Flatten,) + ELEMENTWISE + DROPOUT):
            return None
    return None
