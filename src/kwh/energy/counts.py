"""What a model does for one input, layer by layer: exact op counts and tensor sizes.

One zero input runs through the model in eval mode with forward hooks on every leaf module;
the network is then cut into blocks, one per weight layer (Linear or Conv2d, Bayesian ones
included) with the elementwise and pooling layers that follow it (fused: their output is what
the block writes). MACs are counted from the actual weight tensors, not from shapes: a
convolution tap is counted only where it lands inside the input (padding taps multiply known
zeros), and ``macs_nonzero`` only through nonzero weights -- exactly the work a sparse engine
does. Op counters that work from shapes (FlopCounterMode, fvcore, thop) count neither. A
Linear's MACs count every position of its input's leading dims (each token of a transformer).

Binary layers (kwh.binary) count 1-bit weights (sign(W), never zero) and their inputs' width
(``input_bits``: 1 for +-1 inputs, 2 for ternary, None for real ones); for +-1 inputs
``popcounts`` records how many outputs sum how many products (a padding tap adds nothing, so
border outputs of a padded convolution sum fewer).

Models that are not a chain are read from their traced graph (kwh.graph.calls): a block then
also reads the tensors its operations take from other blocks (the other operand of a residual
addition, the queries and keys of attention) and writes the ones other blocks read from it.
A kwh.modules.SelfAttention is counted as its unfused forward: blocks q, k, v and out, with
q k^T, the scale, the softmax and the weights times v in v's block. Products of two
activations (attention's ``q @ k^T`` and ``weights @ v``) are counted as ``act_macs``;
softmax, LayerNorm and GELU as the comparisons, multiplies and additions of their formulas,
their exp, reciprocal, rsqrt and erf as the operations of an fp32-accurate routine for each
(:data:`FUNCTION_OPS`). What is not in these lists is a ModelError naming it.
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
from kwh.fixedpoint import stored_bits
from kwh.graph import calls as graph_calls
from kwh.graph import example_input, explicit_chain
from kwh.modules import PositionEmbedding, SelectInputs, SelfAttention

__all__ = ["LayerCounts", "count_model", "weight_of", "SUPPORTED_LAYERS", "FUNCTION_OPS"]

_FREE = (nn.Flatten, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Unflatten,
         nn.BatchNorm1d, nn.BatchNorm2d, SelectInputs)  # views, identities, folded BatchNorm,
# and the input selection of a compressed model (a gather: no arithmetic)
_COMPARE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh)
SUPPORTED_LAYERS = ("Linear", "Conv2d", "BayesLinear", "BayesConv2d", "BinaryLinear",
                    "BinaryConv2d (in nn.Sequential chains)", "ReLU", "ReLU6",
                    "LeakyReLU", "Hardtanh", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d",
                    "Flatten", "Unflatten",
                    "Identity", "Dropout", "BatchNorm1d/2d (folded into the layer before)",
                    "SelectInputs", "Softmax", "LayerNorm", "GELU (approximate='none')",
                    "PositionEmbedding", "SelfAttention (in traced models)")

# Multiplies and additions of one evaluation of a function, as an fp32-accurate routine
# computes it (the price table has none of them), and the functions the routine calls.
FUNCTION_OPS: dict[str, tuple[int, int, tuple[str, ...]]] = {
    # exp(x) = 2^k e^r: k = round(x log2 e) (1 mult, 1 add), r = x - k ln 2 (1 mult, 1 add),
    # e^r by its degree-6 Taylor polynomial with Horner (6 mults, 6 adds; |r| <= ln(2)/2 leaves
    # a relative error of 1.2e-7), 2^k added to the exponent field (1 add)
    "exp": (8, 9, ()),
    # 1/x: a seed from the exponent bits (1 add), 3 Newton-Raphson steps y (2 - x y) (2 mults,
    # 1 add each): 3 correct bits -> 24
    "reciprocal": (6, 4, ()),
    # 1/sqrt(x): a seed from the exponent bits (1 add), x/2 (1 mult), 3 Newton-Raphson steps
    # y (1.5 - (x/2) y^2) (3 mults, 1 add each)
    "rsqrt": (10, 4, ()),
    # erf(x) = 1 - t P(t) exp(-x^2), t = 1 / (1 + p x), x >= 0, odd (Abramowitz and Stegun
    # 7.1.26, error 1.5e-7): p x + 1 (1 mult, 1 add), t P(t) of degree 5 by Horner (5 mults,
    # 4 adds), x^2 (1 mult), the product (1 mult), 1 - it (1 add)
    "erf": (8, 6, ("reciprocal", "exp")),
}


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
    extra_out_elems: int = 0        # elements written besides the block output (read by
    #                                 later blocks: the residual stream of a transformer)
    act_macs: int = 0               # multiply-accumulates of two activations (attention)
    act_mults: int = 0              # other multiplies of activations: by a constant, and those
    #                                 of softmax, LayerNorm, GELU and their functions
    norm_adds: int = 0              # additions of softmax, LayerNorm, GELU and their functions
    functions: dict[str, int] = field(default_factory=dict)  # evaluations of FUNCTION_OPS
    #                                 (their operations are in act_mults and norm_adds)
    n_extra_params: int = 0         # other stored numbers read with the weights (LayerNorm's
    #                                 scale and shift, a position embedding)
    param_bits: int = 0             # bits of the bias and extra params as a .kwh file stores
    #                                 them (kwh.fixedpoint.stored_bits: 32 each unless on a grid)
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
        frac_bits=getattr(m, "kwh_frac_bits", None), param_bits=stored_bits(b))
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
_MATMULS = ("matmul", "bmm")  # products of two activation tensors
_SCALES = ("mul", "imul", "truediv", "itruediv", "div")  # by a constant: one multiply each
_SILENT = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d)


@dataclass
class _Cost:
    """What one operation that is not a weight layer adds to the block it is fused into."""

    compares: int = 0
    pool_adds: int = 0
    elementwise_adds: int = 0
    act_macs: int = 0
    act_mults: int = 0
    norm_adds: int = 0
    functions: dict[str, int] = field(default_factory=dict)
    n_extra_params: int = 0
    param_bits: int = 0  # stored bits of those extra params (kwh.fixedpoint.stored_bits)
    folded_bias: int = 0  # a BatchNorm's channels: folded into a bias-free layer, a bias

    def evaluate(self, name: str, n: int) -> _Cost:
        """Add ``n`` evaluations of FUNCTION_OPS[name], the functions it calls included."""
        mults, adds, inner = FUNCTION_OPS[name]
        self.functions[name] = self.functions.get(name, 0) + n
        self.act_mults += n * mults
        self.norm_adds += n * adds
        for f in inner:
            self.evaluate(f, n)
        return self


def _softmax_cost(label: str, m: nn.Softmax, ins: tuple) -> _Cost:
    """Per row of n: max (n - 1 compares), x - max (n adds), n exps, their sum (n - 1 adds),
    one reciprocal, n multiplies by it."""
    dim = m.dim
    if dim is None:  # torch's implicit choice for a tensor of ndim dims (nn.Softmax(dim=None))
        dim = 0 if len(ins) + 1 in (0, 1, 3) else 1
    dim = dim % (len(ins) + 1)
    if dim == 0:
        raise ModelError(f"layer {label}: a softmax over the batch dimension mixes examples; "
                         "kwh prices one example at a time (give dim=-1 or the class dim)")
    n = ins[dim - 1]
    rows = math.prod(ins) // n
    c = _Cost(compares=rows * (n - 1), norm_adds=rows * (2 * n - 1), act_mults=rows * n)
    return c.evaluate("exp", rows * n).evaluate("reciprocal", rows)


def _layer_norm_cost(m: nn.LayerNorm, ins: tuple) -> _Cost:
    """Per vector of n: mean (n - 1 adds, 1 mult), x - mean (n adds), variance (n mults, n - 1
    adds, 1 mult, + eps 1 add), one rsqrt, n multiplies by it; scale and shift n of each."""
    n = math.prod(m.normalized_shape)
    rows = math.prod(ins) // n
    mults, adds = 2 * n + 2, 3 * n - 1
    params, bits = 0, 0
    if getattr(m, "weight", None) is not None:
        mults, params, bits = mults + n, params + m.weight.numel(), bits + stored_bits(m.weight)
    if getattr(m, "bias", None) is not None:
        adds, params, bits = adds + n, params + m.bias.numel(), bits + stored_bits(m.bias)
    c = _Cost(act_mults=rows * mults, norm_adds=rows * adds, n_extra_params=params,
              param_bits=bits)
    return c.evaluate("rsqrt", rows)


def _gelu_cost(label: str, m: nn.GELU, ins: tuple) -> _Cost:
    """GELU(x) = x/2 (1 + erf(x / sqrt 2)): 3 multiplies, 1 addition and one erf each."""
    if m.approximate != "none":
        raise ModelError(f"layer {label}: GELU(approximate={m.approximate!r}) is not supported "
                         "by the energy model; the exact form (approximate='none') is")
    n = math.prod(ins)
    return _Cost(act_mults=3 * n, norm_adds=n).evaluate("erf", n)


def _module_cost(label: str, m: nn.Module, ins: tuple, outs: tuple) -> _Cost:
    """The operations of a module that is not a weight layer, for one example."""
    if isinstance(m, _FREE):
        return _Cost(folded_bias=getattr(m, "num_features", 0))
    if isinstance(m, _COMPARE):
        return _Cost(compares=math.prod(ins))
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
        k = m.kernel_size if isinstance(m.kernel_size, tuple) else (m.kernel_size,) * 2
        per_out = math.prod(outs) * (math.prod(k) - 1)  # k*k inputs -> k*k - 1 ops
        return _Cost(compares=per_out) if isinstance(m, nn.MaxPool2d) else _Cost(pool_adds=per_out)
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return _Cost(pool_adds=max(0, math.prod(ins) - math.prod(outs)))  # one scale per output
    if isinstance(m, PositionEmbedding):  # x + table: one addition per element; the table is
        return _Cost(elementwise_adds=math.prod(outs), n_extra_params=m.weight.numel(),  # read
                     param_bits=stored_bits(m.weight))
    if isinstance(m, nn.Softmax):
        return _softmax_cost(label, m, ins)
    if isinstance(m, nn.LayerNorm):
        return _layer_norm_cost(m, ins)
    if isinstance(m, nn.GELU):
        return _gelu_cost(label, m, ins)
    raise ModelError(f"layer {label} ({m!r}) is not supported by the energy model; "
                     f"supported: {', '.join(SUPPORTED_LAYERS)}")


def _function_cost(model: nn.Module, op) -> _Cost | None:
    """The operations of a traced function call without a module form; None: data movement."""
    n = math.prod(op.out_shape)
    if op.function in _ADDS and len(op.in_shapes) == 2:
        return _Cost(elementwise_adds=n)
    if op.function in _MOVES:
        return None
    if op.function in _MEANS:
        return _Cost(pool_adds=max(0, math.prod(op.in_shapes[0]) - n))
    if op.function in _MATMULS and len(op.in_shapes) == 2 and op.in_shapes[0]:
        return _Cost(act_macs=n * op.in_shapes[0][-1])  # (.., n, k) @ (.., k, m): k per output
    if op.function in _SCALES and len(op.in_shapes) == 1:
        return _Cost(act_mults=n)  # x * c, x / c (c a number): one multiply per element
    raise ModelError(f"{op.name} ({op.function}) in {type(model).__name__}.forward is not "
                     "supported by the energy model; supported: "
                     f"{', '.join(SUPPORTED_LAYERS)}, functional activations and pooling, "
                     "additions of two paths, products of two activations (matmul, @), "
                     "multiplication or division by a number, concatenation and reshapes")


def _fuse(blocks: list[LayerCounts], outs: tuple, kind: str | None, cost: _Cost | None = None,
          extra: int = 0) -> None:
    """Add an op to the block of the last weight layer before it (nothing before the first)."""
    if not blocks:
        return
    blk = blocks[-1]
    cost = cost or _Cost()
    blk.compares += cost.compares
    blk.pool_adds += cost.pool_adds
    blk.elementwise_adds += cost.elementwise_adds
    blk.act_macs += cost.act_macs
    blk.act_mults += cost.act_mults
    blk.norm_adds += cost.norm_adds
    for f, k in cost.functions.items():
        blk.functions[f] = blk.functions.get(f, 0) + k
    blk.n_extra_params += cost.n_extra_params
    blk.param_bits += cost.param_bits
    if cost.folded_bias and blk.n_bias == 0:  # BatchNorm folded into a bias-free layer
        blk.n_bias, blk.bias_adds = cost.folded_bias, math.prod(blk.layer_out_shape)
        blk.param_bits += 32 * cost.folded_bias
    blk.extra_in_elems += extra
    blk.out_shape = outs
    if kind is not None:
        blk.fused.append(kind)


def count_model(model: nn.Module, input_shape: tuple[int, ...]) -> list[LayerCounts]:
    """Per-block op counts of ``model`` for one example of shape ``input_shape`` (no batch dim).

    An nn.Sequential of torch.nn/kwh layers is read through forward hooks; any other model
    is traced (kwh.graph.calls), so functional calls, additions of two paths (residual
    connections) and products of activations are counted too, and what cannot be priced is
    an error naming it.
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
        cost = _module_cost(label, m, ins, outs)
        _fuse(blocks, outs, None if isinstance(m, _SILENT) else type(m).__name__, cost)
    if not blocks:
        raise ModelError("model has no Linear or Conv2d layer; nothing to price")
    return blocks


def _attention_counts(name: str, m: SelfAttention, ins: tuple[int, ...],
                      outs: tuple[int, ...]) -> list[LayerCounts]:
    """A SelfAttention as the blocks of its unfused forward: q, k, v (with q k^T, the scale,
    the softmax and the weights times v fused into v's block, which reads q and k), out."""
    if len(ins) != 2:
        raise ModelError(f"layer {name} (SelfAttention) needs tokens (tokens, features), got "
                         f"{ins}")
    t, h, hd = ins[0], m.heads, m.head_dim
    inner = (t, h * hd)
    blocks = [_weight_counts(f"{name}.{p}:{type(getattr(m, p)).__name__}", getattr(m, p), ins,
                             inner) for p in ("q", "k", "v")]
    blocks.append(_weight_counts(f"{name}.out:{type(m.out).__name__}", m.out, inner, outs))
    scores, heads_out = (h, t, t), (h, t, hd)
    for blk in blocks[:2]:  # q and k as the heads read them: (heads, tokens, head_dim)
        blk.out_shape = heads_out
    steps = [("matmul", _Cost(act_macs=h * t * t * hd), 2 * t * h * hd, scores),  # q k^T
             ("mul", _Cost(act_mults=h * t * t), 0, scores),                      # the scale
             ("Softmax", _softmax_cost(name, nn.Softmax(dim=-1), scores), 0, scores),
             ("matmul", _Cost(act_macs=h * t * t * hd), 0, heads_out)]            # weights @ v
    for kind, cost, extra, shape in steps:
        _fuse(blocks[:3], shape, kind, cost, extra)
    blocks[2].out_shape = inner
    return blocks


def _count_graph(model: nn.Module, input_shape: tuple[int, ...]) -> list[LayerCounts]:
    """Blocks of a traced model. An operation's operand computed outside its block is read
    from memory (once per block), and a block writes, besides its output, every tensor it
    computed that a later block reads."""
    was = model.training
    model.eval()
    try:
        ops = graph_calls(model, example_input(model, input_shape))
    finally:
        model.train(was)
    blocks: list[LayerCounts] = []
    block_of: dict[str, int] = {}      # traced node -> the block that computed it
    elems: dict[str, int] = {}         # traced node -> its elements per example
    last: list[str] = []               # each block's last node: its output
    held: set[str] = set()             # tensors the current block computed or has read
    readers: list[tuple[int, str]] = []  # (block, node read) for every operand
    for op in ops:
        ins = op.in_shapes[0] if op.in_shapes else ()
        elems.update((i, math.prod(s)) for i, s in zip(op.inputs, op.in_shapes))
        elems[op.node] = math.prod(op.out_shape)
        if isinstance(op.module, SelfAttention):
            blocks += _attention_counts(op.name, op.module, ins, op.out_shape)
            last += [f"{op.node}.{p}" for p in ("q", "k", "v")]  # their outputs stay inside
            held = set(op.inputs[:1])
        elif op.module is not None and _is_weight(op.module):
            label = f"{op.name}:{type(op.module).__name__}"
            blocks.append(_weight_counts(label, op.module, ins, op.out_shape))
            held = set(op.inputs[:1])  # its input: the block's in_elems
        else:
            if op.module is not None:
                label = f"{op.name}:{type(op.module).__name__}"
                cost = _module_cost(label, op.module, ins, op.out_shape)
                kind = None if isinstance(op.module, _SILENT) else type(op.module).__name__
            else:
                cost = _function_cost(model, op)
                kind = None if cost is None else op.function
            if not blocks:
                continue  # before the first weight layer: nothing to fuse into
            extra = sum(elems[i] for i in dict.fromkeys(op.inputs) if i not in held)
            held.update(op.inputs)
            _fuse(blocks, op.out_shape, kind, cost, extra)
        k = len(blocks) - 1
        readers += [(k, i) for i in op.inputs]
        block_of[op.node] = k
        held.add(op.node)
        if len(last) < len(blocks):
            last.append(op.node)
        else:
            last[-1] = op.node
    if not blocks:
        raise ModelError("model has no Linear or Conv2d layer; nothing to price")
    written = {(block_of[i], i) for k, i in readers
               if i in block_of and block_of[i] != k and i != last[block_of[i]]}
    for k, i in written:
        blocks[k].extra_out_elems += elems[i]
    return blocks
