"""Energy per frame of a sigma-delta run, from the spike counts kwh.spike measured.

O'Connor and Welling 2016, section 4: a sigma-delta layer does ``sum_l |s_l|_1 * fanout_l``
additions per frame (each unit spike adds one weight into the accumulator of every output it
reaches) instead of the dense MACs. The rest is priced as follows, per frame and layer:

- spike additions at the accumulator width (fp adds for plain float layers), counted through
  nonzero weights for kwh-compressed layers, through all weights for plain ones (as dense);
  a run whose coder sends real values (``op_kind == "mac"``) pays a multiply per op too;
- the quantizer: 2 additions per input element (the temporal difference and the herding
  update ``phi += k x``; rounding and ``phi -= s`` are bit slicing), at activation width;
- the bias once per sequence (shared out over the T frames), ReLU and pooling every frame;
- memory: weights once per frame (as dense), the input read and the block output written,
  plus the state: quantizer ``prev`` and ``phi`` read and written (4 x input x activation
  bits) and the running sum (sigma) of the pre-activations read and written at accumulator
  width. Event-driven compute saves arithmetic; this state traffic is what it pays instead.
"""

from __future__ import annotations

import math
from dataclasses import asdict

from torch import nn

from .config import EnergyConfig
from .counts import count_model
from .estimate import block_compute, layer_arith, place, weight_storage_bits
from .result import EnergyEstimate, LayerEnergy
from .table import HOROWITZ_45NM, EnergyTable

__all__ = ["estimate_sigma_delta"]


def estimate_sigma_delta(model: nn.Module, run, input_shape: tuple[int, ...],
                         table: EnergyTable | None = None,
                         config: EnergyConfig | None = None) -> EnergyEstimate:
    """Modelled energy per frame of ``model`` run as a sigma-delta network.

    ``run`` is a :class:`kwh.spike.SpikeRun` (or anything with ``ops`` and ``ops_nonzero`` of
    shape (L, T, B), ``layer_names`` and ``op_kind``) from the same model; ``input_shape`` is
    one frame's shape. Energies are means over the T frames and B sequences of the run.
    """
    table = table or HOROWITZ_45NM
    cfg = config or EnergyConfig()
    counts = count_model(model, input_shape)
    L, T = run.ops.shape[0], run.ops.shape[1]
    if L != len(counts):
        raise ValueError(f"the spike run has {L} weight layers but the model has "
                         f"{len(counts)}; run kwh.spike on this same model")
    ariths = [layer_arith(c, cfg) for c in counts]
    wbits = [weight_storage_bits(c, a, cfg.weight_format) for c, a in zip(counts, ariths)]
    io = []
    for c, ar in zip(counts, ariths):
        state = 4 * c.in_elems * ar.a_bits + 2 * math.prod(c.layer_out_shape) * ar.acc_bits
        io.append(c.in_elems * ar.a_bits + c.out_elems * ar.a_bits + state)
    where = place(sum(wbits), max(io), table, cfg)
    layers = []
    for l, (c, ar, wb, act) in enumerate(zip(counts, ariths, wbits, io)):
        ops = run.ops_nonzero[l] if ar.sparse else run.ops[l]   # (T, B)
        n = float(ops.double().mean())
        mults = n if run.op_kind == "mac" else 0.0
        comp = block_compute(c, ar, table, mults, n, act_adds=2.0 * c.in_elems,
                             bias_share=1.0 / T)
        layers.append(LayerEnergy(
            name=c.label, arith=str(ar), **comp, weight_bits=wb / cfg.batch_size,
            act_bits=act, weight_mem=where.weight_mem, act_mem=where.act_mem,
            e_weight_mem=wb * where.weight_j_per_bit / cfg.batch_size,
            e_act_mem=act * where.act_j_per_bit, macs_dense=c.macs))
    notes = [f"sigma-delta ({run.op_kind} per event), mean over {T} frames x "
             f"{run.ops.shape[2]} sequences; first frame included",
             f"weights: {where.weight_bits / 8 / 1024:.1f} KB in {where.weight_mem}; "
             f"largest layer's activations and state: {where.act_peak_bits / 8 / 1024:.1f} KB "
             f"in {where.act_mem}"]
    return EnergyEstimate(layers, table.name, asdict(cfg), tuple(input_shape), unit="frame",
                          mode="sigma-delta", notes=notes)
