"""What a model does for one input, layer by layer: exact op counts and tensor sizes.

One zero input runs through the model in eval mode with forward hooks on every leaf module;
the network is then cut into blocks, one per weight layer (Linear or Conv2d, Bayesian ones
included) with the elementwise and pooling layers that follow it (fused: their output is what
the block writes). MACs are counted from the actual weight tensors, not from shapes: a
convolution tap is counted only where it lands inside the input (padding taps multiply known
zeros), and ``macs_nonzero`` only through nonzero weights -- exactly the work a sparse engine
does. Op counters that work from shapes (FlopCounterMode, fvcore, thop) count neither.

Binary layers (kwh.binary) count 1-bit weights (sign(W), never zero) and their inputs' width
(``input_bits``: 1 for +-1 inputs, 2 for ternary, None for real ones); for +-1 inputs
``popcounts`` records how many outputs sum how many products (a padding tap adds nothing, so
border outputs of a padded convolution sum fewer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kwh.bayes import BayesConv2d, BayesLayer, BayesLinear
from kwh.binary import BinaryConv2d, BinaryLayer
from kwh.errors import ModelError
from kwh.graph import calls as graph_calls
from kwh.graph import example_input, explicit_chain
from kwh.modules import SelectInputs

__all__ = ["LayerCounts", "count_model", "weight_of", "SUPPORTED_LAYERS"]

_FREE = (nn.Flatten, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Unflatten,
         nn.BatchNorm1d, nn.BatchNorm2d, SelectInputs)  # views, identities, folded BatchNorm,
# and the input selection of a compressed model (a gather: no arithmetic)
_COMPARE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh)
SUPPORTED_LAYERS = ("Linear", "Conv2d", "BayesLinear", "BayesConv2d", "BinaryLinear",
                    "BinaryConv2d (in nn.Sequential chains)", "ReLU", "ReLU6",
                    "LeakyReLU", "Hardtanh", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d",
                    "Flatten", "Unflatten",
                    "Identity", "Dropout", "BatchNorm1d/2d (folded into the layer before)",
                    "SelectInputs")


@dataclass
class LayerCounts:
    """One weight layer and the ops fused after it, for one input example."""

    name: str                       # "0:Conv2d" (module name and type)
    module: nn.Module = field(repr=False)
    in_shape: tuple[int, ...]       # per example, no batch dim
    out_shape: tuple[int, ...]      # output of the block (after fused ReLU / pooling)
    layer_out_shape: tuple[int, ...]  # output of the weight layer itself (pre-activations)
    macs: int                       # multiply-accumulates of a dense evaluation
    macs_nonzero: int               # only through nonzero weights
    n_weights: int
    n_nonzero: int
    fan_in: int                     # largest number of nonzero weights summed into one output
    rows: int                       # outputs of the weight matrix (Linear out, Conv filters)
    bias_adds: int                  # one per output element when the layer has a bias
    n_bias: int
    compares: int = 0               # ReLU and max-pool comparisons
    pool_adds: int = 0              # average-pool additions
    elementwise_adds: int = 0       # additions of two activation tensors (residual connections)
    extra_in_elems: int = 0         # elements read besides the block input (the other operand)
    fused: list[str] = field(default_factory=list)  # names of the ops fused into this block
    weight_bits: int | None = None  # kwh_bits of a kwh-compressed layer, else None (plain)
    frac_bits: int | None = None    # kwh_frac_bits; None on a kwh layer: weights left float32
    input_bits: int | None = None   # kwh.binary: 1 (+-1 inputs) or 2 (ternary); None: real
    n_scales: int = 0               # float32 per-channel scales stored (XNOR-Net's alpha)
    scale_mults: int = 0            # multiplies by those scales: one per output element
    popcounts: dict[int, int] = field(default_factory=dict)  # +-1 inputs: n terms -> outputs

    @property
    def binary_inputs(self) -> bool:
        """+-1 weights and +-1 inputs: dot products are XNOR and popcount."""
        return self.input_bits == 1

    @property
    def in_elems(self) -> int:
        """Activation elements the block reads."""
        return math.prod(self.in_shape)

    @property
    def out_elems(self) -> int:
        """Activation elements the block writes."""
        return math.prod(self.out_shape)

    @property
    def label(self) -> str:
        """Row label: the weight layer and what is fused into it."""
        return self.name + (f" (+{', '.join(self.fused)})" if self.fused else "")


def weight_of(m: nn.Module) -> tuple[Tensor, Tensor | None]:
    """The weight and bias the layer computes with in eval mode (Bayesian: masked mean)."""
    if isinstance(m, BayesLayer):
        w, b = m.eval_weight_bias()
    elif isinstance(m, BinaryLayer):
        w, b = m.binary_weight(), m.bias  # +-1; XNOR-Net's scale is counted apart
    else:
        w, b = m.weight, m.bias
    return w.detach(), None if b is None else b.detach()


def _is_conv(m: nn.Module) -> bool:
    return isinstance(m, (nn.Conv2d, BayesConv2d, BinaryConv2d))


def _is_weight(m: nn.Module) -> bool:
    return isinstance(m, (nn.Linear, nn.Conv2d, BayesLinear, BayesConv2d, BinaryLayer))


def _conv_taps(m: nn.Module, in_shape: tuple[int, ...], mask: Tensor) -> int:
    """Sum over outputs of the taps that hit the input: conv(ones, 0/1 mask), exact in float64."""
    x = torch.ones((1, *in_shape), dtype=torch.float64)                 # (1, C, H, W)
    y = F.conv2d(x, mask.to("cpu", torch.float64), None, m.stride, m.padding,
                 m.dilation, m.groups)                                  # (1, O, Ho, Wo)
    return int(round(y.sum().item()))


def _weight_counts(name: str, m: nn.Module, in_shape: tuple[int, ...],
                   out_shape: tuple[int, ...]) -> LayerCounts:
    w, b = weight_of(m)
    nz = w != 0
    rows = w.shape[0]
    if _is_conv(m):
        if getattr(m, "padding_mode", "zeros") != "zeros":
            raise ModelError(f"layer {name}: padding_mode={m.padding_mode!r} is not supported; "
                             "only 'zeros'")
        macs = _conv_taps(m, in_shape, torch.ones_like(w))
        macs_nz = _conv_taps(m, in_shape, nz)
        fan_in = int(nz.flatten(1).sum(1).max().item()) if w.numel() else 0
    else:
        positions = math.prod(in_shape[:-1])  # Linear applies to the last dim
        macs, macs_nz = positions * w.numel(), positions * int(nz.sum().item())
        fan_in = int(nz.sum(1).max().item()) if w.numel() else 0
    bits = getattr(m, "kwh_bits", None)
    if bits is not None and (not isinstance(bits, int) or isinstance(bits, bool) or bits < 1):
        raise ModelError(f"layer {name}: kwh_bits must be a positive integer, got {bits!r}")
    c = LayerCounts(
        name=name, module=m, in_shape=in_shape, out_shape=out_shape,
        layer_out_shape=out_shape, macs=macs,
        macs_nonzero=macs_nz, n_weights=w.numel(), n_nonzero=int(nz.sum().item()),
        fan_in=max(fan_in, 1), rows=rows,
        bias_adds=math.prod(out_shape) if b is not None else 0,
        n_bias=0 if b is None else b.numel(), weight_bits=bits,
        frac_bits=getattr(m, "kwh_frac_bits", None))
    return _binary_counts(c, m) if isinstance(m, BinaryLayer) else c


def _binary_counts(c: LayerCounts, m: BinaryLayer) -> LayerCounts:
    """A kwh.binary layer: 1-bit weights, its inputs' width, its dot products' lengths."""
    c.weight_bits, c.frac_bits = 1, 0
    c.input_bits = {"binary": 1, "ternary": 2}.get(m.inputs)
    outputs = math.prod(c.layer_out_shape)
    if m.scale == "channel":
        c.n_scales, c.scale_mults = c.rows, outputs
    if m.inputs == "ternary":
        c.compares += 2 * c.in_elems  # x > t and x < -t per input element; sign() is a bit
    if c.binary_inputs:
        c.popcounts = _terms_per_output(m, c.in_shape, outputs)
    return c


def _terms_per_output(m: BinaryLayer, in_shape: tuple[int, ...], outputs: int) -> dict[int, int]:
    """{n: outputs that sum n products}; a convolution's padding taps are no products."""
    if not _is_conv(m):
        return {m.in_features: outputs}
    per_group = m.weight.shape[1:]                                      # (C/g, kh, kw)
    x = torch.ones((1, per_group[0], *in_shape[1:]), dtype=torch.float64)
    n = F.conv2d(x, torch.ones((1, *per_group), dtype=torch.float64), None, m.stride,
                 m.padding, m.dilation)                                 # (1, 1, Ho, Wo)
    values, counts = n.round().long().unique(return_counts=True)
    return {int(v): int(k) * m.out_channels for v, k in zip(values, counts)}


def _trace(model: nn.Module,
           input_shape: tuple[int, ...]) -> list[tuple[str, nn.Module, tuple, tuple]]:
    """(name, module, in shape, out shape) of every leaf call, in call order, batch dim dropped."""
    calls: list[tuple[str, nn.Module, tuple, tuple]] = []
    handles = []
    leaves = [(n, m) for n, m in model.named_modules()
              if _is_weight(m) or not any(True for _ in m.children())]
    inside_weight = {id(c) for _, m in leaves if _is_weight(m) for c in m.modules() if c is not m}

    def hook(name):
        def fn(mod, inp, out):
            calls.append((name, mod, tuple(inp[0].shape[1:]), tuple(out.shape[1:])))
        return fn

    for n, m in leaves:
        if id(m) not in inside_weight:
            handles.append(m.register_forward_hook(hook(n)))
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        device = param.device if param is not None else "cpu"
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), dtype=dtype, device=device))
    except RuntimeError as e:
        raise ModelError(f"model does not accept inputs of shape {tuple(input_shape)} "
                         f"(per example): {e}") from None
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return calls


# Functions of a traced forward() (kwh.graph.calls) that have no torch.nn module form.
_ADDS = ("add", "iadd", "sub", "isub")  # elementwise sum of two activation tensors (residual)
_MOVES = ("cat", "concat", "view", "reshape", "flatten", "contiguous", "permute", "transpose",
          "squeeze", "unsqueeze", "getitem", "chunk", "split")  # data movement: no arithmetic
_MEANS = ("adaptive_avg_pool2d", "mean")


def _module_cost(label: str, m: nn.Module, ins: tuple, outs: tuple) -> tuple[int, int]:
    """(comparisons, narrow additions) of a module that is not a weight layer."""
    if isinstance(m, _FREE):
        return 0, 0
    if isinstance(m, _COMPARE):
        return math.prod(ins), 0
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
        k = m.kernel_size if isinstance(m.kernel_size, tuple) else (m.kernel_size,) * 2
        per_out = math.prod(outs) * (math.prod(k) - 1)  # k*k inputs -> k*k - 1 ops
        return (per_out, 0) if isinstance(m, nn.MaxPool2d) else (0, per_out)
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return 0, max(0, math.prod(ins) - math.prod(outs))  # sums; one scale per output
    raise ModelError(f"layer {label} ({m!r}) is not supported by the energy model; "
                     f"supported: {', '.join(SUPPORTED_LAYERS)}")


def _fuse(blocks: list[LayerCounts], outs: tuple, kind: str | None, compares: int = 0,
          adds: int = 0, elementwise: int = 0, extra: int = 0) -> None:
    """Add an op to the block of the last weight layer before it (nothing before the first)."""
    if not blocks:
        return
    blk = blocks[-1]
    blk.compares += compares
    blk.pool_adds += adds
    blk.elementwise_adds += elementwise
    blk.extra_in_elems += extra
    blk.out_shape = outs
    if kind is not None:
        blk.fused.append(kind)


def count_model(model: nn.Module, input_shape: tuple[int, ...]) -> list[LayerCounts]:
    """Per-block op counts of ``model`` for one example of shape ``input_shape`` (no batch dim).

    An nn.Sequential of torch.nn/kwh layers is read through forward hooks; any other model
    is traced (kwh.graph.calls), so functional calls and additions of two paths (residual
    connections) are counted too, and what cannot be priced is an error naming it.
    """
    if not explicit_chain(model) and not isinstance(model, (nn.Linear, nn.Conv2d, BayesLayer,
                                                    BinaryLayer)):
        return _count_graph(model, tuple(input_shape))
    blocks: list[LayerCounts] = []
    for name, m, ins, outs in _trace(model, tuple(input_shape)):
        label = f"{name}:{type(m).__name__}"
        if _is_weight(m):
            blocks.append(_weight_counts(label, m, ins, outs))
            continue
        cmp, adds = _module_cost(label, m, ins, outs)
        silent = isinstance(m, (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d))
        _fuse(blocks, outs, None if silent else type(m).__name__, cmp, adds)
    if not blocks:
        raise ModelError("model has no Linear or Conv2d layer; nothing to price")
    return blocks


def _count_graph(model: nn.Module, input_shape: tuple[int, ...]) -> list[LayerCounts]:
    was = model.training
    model.eval()
    try:
        ops = graph_calls(model, example_input(model, input_shape))
    finally:
        model.train(was)
    blocks: list[LayerCounts] = []
    for op in ops:
        ins = op.in_shapes[0] if op.in_shapes else ()
        if op.module is not None:
            label = f"{op.name}:{type(op.module).__name__}"
            if _is_weight(op.module):
                blocks.append(_weight_counts(label, op.module, ins, op.out_shape))
                continue
            cmp, adds = _module_cost(label, op.module, ins, op.out_shape)
            silent = isinstance(op.module, (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d))
            _fuse(blocks, op.out_shape, None if silent else type(op.module).__name__, cmp, adds)
        elif op.function in _ADDS and len(op.in_shapes) == 2:
            n = math.prod(op.out_shape)
            _fuse(blocks, op.out_shape, "add", elementwise=n, extra=n)
        elif op.function in _MOVES:
            _fuse(blocks, op.out_shape, None)
        elif op.function in _MEANS:
            _fuse(blocks, op.out_shape, op.function,
                  adds=max(0, math.prod(ins) - math.prod(op.out_shape)))
        else:
            raise ModelError(f"{op.name} ({op.function}) in {type(model).__name__}.forward is not "
                             "supported by the energy model; supported: "
                             f"{', '.join(SUPPORTED_LAYERS)}, functional activations and pooling, "
                             "additions of two paths, concatenation and reshapes")
    if not blocks:
        raise ModelError("model has no Linear or Conv2d layer; nothing to price")
    return blocks
