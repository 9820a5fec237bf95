"""Price a model's operations and memory traffic: energy per inference, layer by layer.

E = sum_layers [ mults * E_mult(w x a) + adds * E_add(acc) + compares * E_add(a)
                 + weight bits * E_mem(weights) / batch + activation bits * E_mem(acts) ]

with the prices of an :class:`~kwh.energy.table.EnergyTable` (Horowitz 2014 by default) and the
number formats and memory system of an :class:`~kwh.energy.config.EnergyConfig`. Operations on
activations alone (attention's products, softmax, LayerNorm, GELU) are priced in the number
format of the block they are fused into (:func:`activation_compute`).

Binary layers (kwh.binary): 1-bit weights. With +-1 inputs a product is an XNOR and a sum a
popcount (:mod:`.popcount`), activations 1 bit; with real inputs (the first layer) they are
1 x act_bits integer MACs, with ternary ones 1 x 2-bit MACs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from torch import nn

from .config import EnergyConfig
from .counts import LayerCounts, count_model
from .popcount import with_scale_mults, xnor_compute
from .result import EnergyEstimate, LayerEnergy
from .table import HOROWITZ_45NM, EnergyTable

__all__ = ["estimate_energy", "Arith", "layer_arith", "weight_storage_bits", "Placement",
           "place", "block_compute", "activation_compute"]


@dataclass(frozen=True)
class Arith:
    """Number formats of one layer: float, or integer weight x activation -> accumulator."""

    kind: str        # "fp", "int" or "xnor" (+-1 weights and inputs: XNOR and popcount)
    w_bits: int
    a_bits: int
    acc_bits: int
    sparse: bool     # skips zero weights (kwh layers) or not (plain dense layers)

    def __str__(self) -> str:
        if self.kind == "fp":
            return f"fp{self.w_bits}" + (" sparse" if self.sparse else "")
        if self.kind == "xnor":
            return f"xnor 1x1 -> popcount {self.acc_bits}"
        return f"int {self.w_bits}x{self.a_bits} -> {self.acc_bits}"


def layer_arith(c: LayerCounts, cfg: EnergyConfig) -> Arith:
    """Plain layers: dense float. kwh layers: kwh_bits x act_bits integers with an exact-width
    accumulator, zeros skipped (float, zeros skipped, where compression left them unquantized:
    ``kwh_frac_bits`` None)."""
    fp = cfg.float_bits
    if c.weight_bits is None:
        return Arith("fp", fp, fp, fp, sparse=False)
    if c.frac_bits is None:
        return Arith("fp", fp, fp, fp, sparse=True)
    if c.binary_inputs:  # kwh.binary: n - 2 popcount lies in [-n, n]
        acc = cfg.acc_bits or math.ceil(math.log2(c.fan_in + 1)) + 1
        return Arith("xnor", 1, 1, acc, sparse=False)
    a_bits = c.input_bits or cfg.act_bits  # kwh.binary ternary inputs: 2-bit integers
    # A sum of n products of w- and a-bit integers needs w + a + ceil(log2 n) bits.
    acc = cfg.acc_bits or c.weight_bits + a_bits + math.ceil(math.log2(c.fan_in))
    return Arith("int", c.weight_bits, a_bits, acc, sparse=True)


def weight_storage_bits(c: LayerCounts, ar: Arith, fmt: str) -> int:
    """Bits of one layer's weights and biases as stored (packed, at their real bit width).

    Plain layers: dense. kwh layers: "dense" packs every weight of the (pruned) layer at w
    bits; "sparse" is CSR, per nonzero w bits plus a column index of ceil(log2 cols) bits,
    plus (rows + 1) row pointers of ceil(log2(nnz + 1)) bits; "auto" takes the smaller.
    Biases and the other stored numbers fused into the block (LayerNorm's scale and shift, a
    position embedding) of kwh layers: as the .kwh file stores them (``param_bits``: on their
    fixed-point grids since kwh.compress.floats, 32 bits each otherwise), XNOR-Net's
    per-channel scales of binary layers 32 bits each; plain layers: float_bits each.
    """
    if c.weight_bits is not None:
        bias = c.param_bits + 32 * c.n_scales
    else:
        bias = (c.n_bias + c.n_scales + c.n_extra_params) * ar.w_bits
    dense = c.n_weights * ar.w_bits
    if not ar.sparse or fmt == "dense":
        return dense + bias
    cols = max(c.n_weights // max(c.rows, 1), 1)
    sparse = (c.n_nonzero * (ar.w_bits + math.ceil(math.log2(max(cols, 2))))
              + (c.rows + 1) * math.ceil(math.log2(c.n_nonzero + 1) or 1))
    return (sparse if fmt == "sparse" else min(dense, sparse)) + bias


@dataclass(frozen=True)
class Placement:
    """Where weights and activations live, and the price of a bit there."""

    weight_mem: str
    act_mem: str
    weight_j_per_bit: float
    act_j_per_bit: float
    sram_bits: float
    weight_bits: float
    act_peak_bits: float


def place(weight_bits: float, act_peak_bits: float, table: EnergyTable,
          cfg: EnergyConfig) -> Placement:
    """Weights + the largest layer's in/out activations in SRAM if they fit together; else
    weights from DRAM, activations in SRAM if they fit alone (else DRAM too)."""
    sram = cfg.sram_kb * 1024 * 8
    s_j = table.sram_j_per_bit(cfg.sram_kb) if cfg.sram_kb > 0 else math.inf
    d_j = table.dram_j_per_bit()
    s_name = f"SRAM {cfg.sram_kb:g} KB"
    if weight_bits + act_peak_bits <= sram:
        return Placement(s_name, s_name, s_j, s_j, sram, weight_bits, act_peak_bits)
    if act_peak_bits <= sram:
        return Placement("DRAM", s_name, d_j, s_j, sram, weight_bits, act_peak_bits)
    return Placement("DRAM", "DRAM", d_j, d_j, sram, weight_bits, act_peak_bits)


def _act_io(c: LayerCounts, ar: Arith) -> tuple[int, int]:
    """Bits read (inputs) and written (outputs) per inference."""
    return ((c.in_elems + c.extra_in_elems) * ar.a_bits,
            (c.out_elems + c.extra_out_elems) * ar.a_bits)


def block_compute(c: LayerCounts, ar: Arith, table: EnergyTable, mults: float, acc_adds: float,
                  act_adds: float = 0.0, bias_share: float = 1.0) -> dict:
    """Energy and result bits of one block's arithmetic.

    ``mults`` products (w x a bits), ``acc_adds`` additions into the accumulator, plus the
    bias additions (times ``bias_share``), pooling and residual additions and ``act_adds`` at
    activation width, the ReLU / max-pool comparisons, and the operations on activations
    alone (:func:`activation_compute`).
    """
    if ar.kind == "xnor":  # kwh.binary, +-1 inputs: XNOR and popcount (see .popcount)
        comp = xnor_compute(c, ar, table, mults, act_adds, bias_share)
        # what follows acts on the integer sums, as the pooling and bias do there
        return with_scale_mults(c, table, _plus(comp, activation_compute(
            c, "int", ar.acc_bits, ar.acc_bits, table)))
    acc = acc_adds + c.bias_adds * bias_share
    narrow = c.pool_adds + c.elementwise_adds + act_adds
    if ar.kind == "fp":
        e_mult = mults * table.mult_j(ar.w_bits, kind="fp")
        e_add = (acc + narrow) * table.add_j(ar.acc_bits, kind="fp")
        product_bits = ar.w_bits
    else:
        e_mult = mults * table.mult_j(ar.w_bits, ar.a_bits)
        e_add = acc * table.add_j(ar.acc_bits) + narrow * table.add_j(ar.a_bits)
        product_bits = ar.w_bits + ar.a_bits
    # A float comparison is an integer comparison of the bit patterns (sign aside).
    e_cmp = c.compares * table.add_j(ar.a_bits)
    bits = mults * product_bits + acc * ar.acc_bits + (narrow + c.compares) * ar.a_bits
    comp = dict(mults=mults, adds=acc + narrow, compares=c.compares, e_mult=e_mult,
                e_add=e_add, e_compare=e_cmp, landauer_bits=bits)
    kind = "fp" if ar.kind == "fp" else "int"
    return with_scale_mults(c, table, _plus(comp, activation_compute(
        c, kind, ar.a_bits, ar.acc_bits, table)))


def activation_compute(c: LayerCounts, kind: str, a_bits: int, acc_bits: int,
                       table: EnergyTable) -> dict:
    """The block's operations on activations alone, in its number format (``kind`` "fp" or
    "int", activations of ``a_bits``): products of two activations (attention) as a_bits x
    a_bits multiplies summed at ``acc_bits``; the multiplies and additions of softmax,
    LayerNorm, GELU and scaling by a constant at activation width."""
    mults = c.act_macs + c.act_mults
    if kind == "fp":
        e_mult = mults * table.mult_j(a_bits, kind="fp")
        e_add = (c.act_macs + c.norm_adds) * table.add_j(a_bits, kind="fp")
        bits = (mults + c.act_macs + c.norm_adds) * a_bits
    else:
        e_mult = mults * table.mult_j(a_bits, a_bits)
        e_add = c.act_macs * table.add_j(acc_bits) + c.norm_adds * table.add_j(a_bits)
        bits = mults * 2 * a_bits + c.act_macs * acc_bits + c.norm_adds * a_bits
    return dict(mults=mults, adds=c.act_macs + c.norm_adds, compares=0, e_mult=e_mult,
                e_add=e_add, e_compare=0.0, landauer_bits=bits)


def _plus(a: dict, b: dict) -> dict:
    """Two computes' counts and energies, added key by key."""
    return {k: a[k] + b[k] for k in a}


def estimate_energy(model: nn.Module, input_shape: tuple[int, ...],
                    table: EnergyTable | None = None,
                    config: EnergyConfig | None = None) -> EnergyEstimate:
    """Modelled energy of one inference of ``model`` on one input of ``input_shape`` (C, H, W).

    Plain layers cost dense float MACs; kwh-compressed layers (``kwh_bits``) cost integer
    multiplies only for nonzero weights, counted from the tensors (see :mod:`.counts`).
    """
    table = table or HOROWITZ_45NM
    cfg = config or EnergyConfig()
    counts = count_model(model, input_shape)
    ariths = [layer_arith(c, cfg) for c in counts]
    wbits = [weight_storage_bits(c, a, cfg.weight_format) for c, a in zip(counts, ariths)]
    io = [_act_io(c, a) for c, a in zip(counts, ariths)]
    where = place(sum(wbits), max(r + w for r, w in io), table, cfg)
    layers = []
    for c, ar, wb, (rd, wr) in zip(counts, ariths, wbits, io):
        macs = c.macs_nonzero if ar.sparse else c.macs  # zero-skipping vs dense engine
        layers.append(LayerEnergy(
            name=c.label, arith=str(ar), **block_compute(c, ar, table, macs, macs),
            weight_bits=wb / cfg.batch_size, act_bits=rd + wr,
            weight_mem=where.weight_mem, act_mem=where.act_mem,
            e_weight_mem=wb * where.weight_j_per_bit / cfg.batch_size,
            e_act_mem=(rd + wr) * where.act_j_per_bit, macs_dense=c.macs))
    notes = [f"weights: {where.weight_bits / 8 / 1024:.1f} KB in {where.weight_mem}; "
             f"largest layer's activations: {where.act_peak_bits / 8 / 1024:.1f} KB in "
             f"{where.act_mem}"]
    return EnergyEstimate(layers, table.name, asdict(cfg), tuple(input_shape), notes=notes)
