"""Dead units, propagated both ways until nothing changes; every step keeps outputs exact.

Between a producer layer P and the next (consumer) layer C, unit r of P is removed when
 - C does not read it: all of C's weights on r's inputs are zero (a pruned input unit of a
   Linear, a pruned H*W block behind a Flatten, an all-zero input channel of a Conv2d); or
 - it is a constant: all of P's weights into r are zero, so r outputs f(bias_r) whatever the
   input. Its fixed contribution to C is folded into C's bias first (exact for a Linear;
   for a Conv2d when the contribution is the same at every position, i.e. no padding border).
   Constants a padded Conv2d sees differently at the border cannot be folded; when their
   maps are proportional (a constant through ReLU/pooling always is) they are merged into
   one carrier unit whose column in C carries the sum, so one unit stays instead of many.
Removing rows of P can empty columns of P (dead units of the layer before), removing columns
of C can empty rows of C (constants for the layer after): repeat until a fixed point.
The last layer's outputs (classes) are never removed. The first layer's inputs that it does
not read (pixels or channels whose every weight is zero) are removed by ``drop_unread_inputs``:
the compressed model selects the inputs it keeps (kwh.modules.SelectInputs).
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kwh.compress.stages import Stage
from kwh.errors import ModelError

_F64 = torch.float64
_TOL = 1e-9  # relative: what counts as "the same at every position" in float64


def propagate(stages: list[Stage], merge: bool = True) -> None:
    """Remove dead and constant units between consecutive stages, in place, to a fixed point.

    ``merge=False``: constants a padded Conv2d sees differently at the border stay instead of
    merging into a carrier (merging scales a column, which would take it off its grid).
    """
    blocks = [_block(p, c) for p, c in zip(stages, stages[1:])]
    changed = True
    while changed:
        changed = False
        for i in range(len(stages) - 1):
            changed |= _boundary(stages[i], stages[i + 1], blocks[i], merge)


def snap_to_grid(stages: list[Stage], frac_bits: list[int]) -> list[Stage]:
    """Copies of ``stages`` whose weights are quantized to their layers' fixed-point grids.

    A weight that rounds to 0 is no longer kept, so a unit whose every weight rounds to 0
    becomes a constant (or an unread input) of the quantized model; ``propagate(copies,
    merge=False)`` then removes it as it removes units the posterior pruned, the constant
    folded into the consumer's bias with the consumer's quantized weights: the quantized
    model computes exactly what it did with those units. The stages given are not changed.
    """
    out = []
    for s, t in zip(stages, frac_bits):
        c = replace(s, bias=s.bias.clone(), var=None if s.var is None else s.var.clone(),
                    rows=s.rows.clone(), cols=s.cols.clone(), carriers=list(s.carriers))
        c.snap_(t)  # new weight and kept tensors: the originals stay as they are
        out.append(c)
    return out


def drop_unread_inputs(first: Stage) -> Tensor | None:
    """Remove the first layer's input columns it never reads; the keep mask, or None if none.

    Exact whatever the inputs are: a column of zero weights adds nothing. At least one input
    stays.
    """
    w = first.weight
    read = (w.transpose(0, 1).reshape(w.shape[1], -1) != 0).any(dim=1)  # (I,)
    if bool(read.all()):
        return None
    if not bool(read.any()):
        read[0] = True
    first.select_cols(read)
    return read


def _block(p: Stage, c: Stage) -> int:
    """Consumer inputs per producer unit: H*W behind a Flatten from a conv, else 1."""
    block = 1
    for node in p.after:
        if isinstance(node.module, nn.Flatten) and len(node.in_shape) == 3:
            block = node.in_shape[1] * node.in_shape[2]
    if c.weight.shape[1] != p.weight.shape[0] * block:
        raise ModelError(f"layer {c.name!r} reads {c.weight.shape[1]} inputs but {p.name!r} "
                         f"gives {p.weight.shape[0]} units x {block}; the chain between them "
                         "must keep units apart (elementwise, pooling, Flatten, BatchNorm)")
    return block


def _col_groups(c: Stage, n: int) -> Tensor:
    """The consumer weight grouped by producer unit: (O, n, inputs per unit)."""
    return c.weight.reshape(c.weight.shape[0], n, -1)


def _boundary(p: Stage, c: Stage, block: int, merge: bool = True) -> bool:
    n = p.weight.shape[0]
    unused = (_col_groups(c, n) == 0).all(dim=2).all(dim=0)  # (n,) C reads nothing of r
    constant = (p.weight.reshape(n, -1) == 0).all(dim=1) & ~unused  # (n,)
    remove = unused.clone()
    if constant.any():
        remove |= _fold_constants(p, c, block, constant, merge)
    if not remove.any():
        return False
    if remove.all():  # a layer keeps at least one unit: a zero dummy that C ignores
        remove[0] = False
        _zero_unit(p, c, block, 0)
        if not remove.any():
            return False
    keep = ~remove
    p.select_rows(keep)
    c.select_cols(keep.repeat_interleave(block))
    return True


def _zero_unit(p: Stage, c: Stage, block: int, r: int) -> None:
    p.weight[r] = 0
    p.bias[r] = 0
    p.kept[r] = False
    cols = slice(r * block, (r + 1) * block)
    c.weight[:, cols] = 0
    c.kept[:, cols] = False


def _fold_constants(p: Stage, c: Stage, block: int, constant: Tensor,
                    merge: bool = True) -> Tensor:
    """Fold constant units of P into C's bias; returns which of them can now be removed."""
    n = p.weight.shape[0]
    idx = constant.nonzero().flatten()
    x = torch.zeros(1, *p.cur_out_shape(), dtype=_F64)  # (1, n) or (1, n, H, W)
    x[0, idx] = p.bias[idx].reshape(-1, *([1] * (x.dim() - 2)))
    v = p.run_after(x)  # what C reads from each unit; units act alone, so one pass serves all
    folded = torch.zeros(n, dtype=torch.bool)
    if not c.conv:
        v = v.reshape(n, block)  # Flatten is channel-major: unit r owns inputs r*block ...
        cw = _col_groups(c, n)  # (O, n, block)
        c.bias += torch.einsum("onb,nb->o", cw[:, idx], v[idx])
        folded[idx] = True
        return folded
    stubborn = []
    for r in idx.tolist():
        vr = v[:, r:r + 1]  # (1, 1, H2, W2)
        if not vr.any():
            folded[r] = True
            continue
        out = F.conv2d(vr, c.weight[:, r:r + 1], None, **c.conv_args())  # (1, O, H', W')
        flat = out.reshape(out.shape[1], -1)  # (O, H'W')
        span = flat.amax(dim=1) - flat.amin(dim=1)
        if bool((span <= _TOL * (1 + flat.abs().amax(dim=1))).all()):
            c.bias += flat.mean(dim=1)
            folded[r] = True
        else:
            stubborn.append(r)
    if merge and len(stubborn) >= 2:
        folded[_merge_carriers(p, c, v[0, stubborn], stubborn)] = True
    return folded


def _merge_carriers(p: Stage, c: Stage, maps: Tensor, units: list[int]) -> list[int]:
    """Merge constant maps proportional to the largest one into its column; returns the merged."""
    flat = maps.reshape(len(units), -1)  # (k, H2*W2)
    norms = flat.norm(dim=1)
    ref = int(norms.argmax())
    a = flat @ flat[ref] / norms[ref].pow(2)  # (k,) best scale of the reference map
    resid = (flat - a[:, None] * flat[ref]).norm(dim=1)
    merged = [i for i in range(len(units))
              if i != ref and bool(resid[i] <= _TOL * (1 + norms[i]))]
    if not merged:
        return []
    r0 = units[ref]
    for i in merged:  # conv(a V_ref, W_r) = conv(V_ref, a W_r): the sum moves into r0's column
        r = units[i]
        c.weight[:, r0] += a[i] * c.weight[:, r]
        if c.var is not None:
            c.var[:, r0] += a[i] ** 2 * c.var[:, r]
        c.kept[:, r0] |= c.kept[:, r]
    c.kept[:, r0] |= c.weight[:, r0] != 0
    if int(p.rows[r0]) not in p.carriers:
        p.carriers.append(int(p.rows[r0]))
    return [units[i] for i in merged]
