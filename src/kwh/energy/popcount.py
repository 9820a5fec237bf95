"""The price of a binary layer: XNOR and popcount instead of multiply-accumulate.

With +-1 weights and +-1 inputs (kwh.binary), a dot product of n terms is
n - 2 popcount(xor(a_bits, w_bits)) (Courbariaux, Hubara et al. 2016; kwh.binary.xnor
computes it exactly). Priced per output of the layer:

- n XNORs, one per product. The energy table has no logic gates; an XNOR is priced as a
  one-bit integer addition (the sum bit of a one-bit adder is the XOR of its inputs).
- the popcount of those n bits as an adder tree: level k adds pairs of k-bit partial counts
  (floor(m / 2) adders for the m values left, an odd one passed up), n - 1 adders in all over
  ceil(log2 n) levels, each priced at its own width. (Chosen over n one-bit increments of an
  accumulator at full width: a tree is how popcount is built, and it costs about 2n one-bit
  additions instead of n accumulator-wide ones.)
- the correction n - 2 pc: a shift (wiring, free) and one subtraction at accumulator width.
- the bias, pooling additions and comparisons (ReLU, Hardtanh, max-pool) at accumulator
  width: they act on the integer sums, before the next layer takes their sign.

Integer widths below the table's smallest (8 bits in Horowitz 2014) are priced linearly in the
width from it, the table's own rule below its range (EnergyTable.add_j): E_add(b) =
E_add(8) b / 8, so E_add(1) = 0.03 / 8 pJ. The accumulator holds n - 2 pc in [-n, n]:
ceil(log2(n + 1)) + 1 bits, n the layer's fan-in.

XNOR-Net's per-channel scale (any binary layer, real inputs or not) is one fp32 multiply per
output element: :func:`with_scale_mults`.
"""

from __future__ import annotations

from .counts import LayerCounts
from .table import EnergyTable

__all__ = ["popcount_tree", "xnor_compute", "with_scale_mults"]


def popcount_tree(n: int) -> list[tuple[int, int]]:
    """(adders, operand width in bits) per level of an adder tree counting ``n`` bits."""
    levels, left, width = [], n, 1
    while left > 1:
        levels.append((left // 2, width))  # partial counts <= 2^(width-1): width bits each
        left -= left // 2
        width += 1
    return levels


def xnor_compute(c: LayerCounts, ar, table: EnergyTable, mults: float,
                 act_adds: float = 0.0, bias_share: float = 1.0) -> dict:
    """Energy and result bits of a block with +-1 weights and inputs (same keys as
    kwh.energy.estimate.block_compute); ``mults`` products, of ``c.macs`` in a dense pass."""
    share = mults / c.macs if c.macs else 0.0
    tree_adds = tree_j = tree_bits = 0.0
    for n, outputs in c.popcounts.items():
        for adders, width in popcount_tree(n):
            tree_adds += outputs * adders
            tree_j += outputs * adders * table.add_j(width)
            tree_bits += outputs * adders * (width + 1)
    corrections = sum(c.popcounts.values()) * share       # n - 2 pc, one per output
    wide = corrections + c.bias_adds * bias_share + c.pool_adds + c.elementwise_adds + act_adds
    e_acc = table.add_j(ar.acc_bits)
    return dict(mults=mults, adds=tree_adds * share + wide, compares=c.compares,
                e_mult=mults * table.add_j(1), e_add=tree_j * share + wide * e_acc,
                e_compare=c.compares * e_acc,
                landauer_bits=mults + tree_bits * share + (wide + c.compares) * ar.acc_bits)


def with_scale_mults(c: LayerCounts, table: EnergyTable, comp: dict) -> dict:
    """``comp`` plus XNOR-Net's scale: one fp32 multiply per output element, if the layer has
    one (kwh.binary, scale="channel")."""
    if not c.scale_mults:
        return comp
    return dict(comp, mults=comp["mults"] + c.scale_mults,
                e_mult=comp["e_mult"] + c.scale_mults * table.mult_j(32, kind="fp"),
                landauer_bits=comp["landauer_bits"] + 32 * c.scale_mults)
