"""Shrinking a Bayesian chain while it trains: dead groups leave the network physically.

A group that the posterior prunes (a conv filter, a Linear input unit; for Sparse VD a filter
or input column whose every weight is pruned) contributes exactly nothing in eval mode, and
neither does a unit that the next layer does not read. Once such a group has been dead for
``patience`` checks in a row, ``Shrinker.step`` removes it from the training network:

- a conv filter: its output channel (weights, bias, group scale) and the next layer's input
  channel, or its H*W block of inputs behind a Flatten;
- a Linear input unit fed by a Linear: that column and the producing row (and bias);
- a Linear input unit behind a Flatten (or of the first layer): that column; the layer then
  gathers the inputs it still reads (``BayesLinear.input_index``).

Eval-mode outputs are unchanged by a step, and so is what kwh.compress makes of the model;
training steps get cheaper. The plan (which original units every layer keeps) is a small
JSON-ready dict, so a checkpoint rebuilds the shrunk network from the original one
(``Shrinker.apply``), and ``carry_optimizer_state`` keeps Adam's moments with their weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kwh.bayes import BayesConv2d, BayesLayer, BayesLinear
from kwh.compress.chain import (DROPOUT, ELEMENTWISE, POOLS, WEIGHTED, flatten_chain,
                                probe_shapes)
from kwh.errors import ModelError
from kwh.graph import explicit_chain

__all__ = ["Shrinker", "carry_optimizer_state"]

_BETWEEN = ELEMENTWISE + POOLS + DROPOUT + (nn.Flatten,)


@dataclass
class _Link:
    """Producer layer ``p`` feeding consumer ``c``; ``block`` consumer inputs per producer
    unit (H*W when a Flatten of a conv output lies between, else 1)."""

    p: str
    c: str
    block: int
    flatten: bool


def _chain(model: nn.Module, input_shape) -> tuple[dict[str, BayesLayer], list[_Link]]:
    """The Bayesian layers of a chain in order, and the links between consecutive ones."""
    if not explicit_chain(model) and not isinstance(model, WEIGHTED):
        raise ModelError(f"shrinking while training (shrink_patience) works on nn.Sequential "
                         f"chains; {type(model).__name__} has a forward() of its own: train "
                         "it without shrinking (shrink_patience 0)")
    nodes = flatten_chain(model)
    probe_shapes(nodes, tuple(input_shape))
    layers: dict[str, BayesLayer] = {}
    links: list[_Link] = []
    prev, between = None, []
    for n in nodes:
        if n.weighted:
            if not isinstance(n.module, BayesLayer):
                raise ModelError(f"shrinking needs every Linear/Conv2d to be Bayesian; "
                                 f"{n.name!r} is a plain {type(n.module).__name__}")
            if prev is not None:
                flat = [b for b in between if isinstance(b.module, nn.Flatten)]
                if flat and isinstance(prev.module, BayesConv2d):
                    block = 1
                    for d in flat[0].in_shape[1:]:
                        block *= d
                    links.append(_Link(prev.name, n.name, block, True))
                else:
                    links.append(_Link(prev.name, n.name, 1, False))
            layers[n.name], prev, between = n.module, n, []
        else:
            if prev is not None and not isinstance(n.module, _BETWEEN):
                raise ModelError(f"shrinking does not support {type(n.module).__name__} "
                                 f"({n.name!r}) between two layers; supported between layers: "
                                 "elementwise activations, pooling, dropout and Flatten")
            between.append(n)
    return layers, links


def _unread_inputs(layer: BayesLayer) -> Tensor:
    """(I,) bool over the current weight's inputs: columns/channels eval mode never reads."""
    m = layer.prior.weight_mask(layer.threshold) > 0
    return ~m.transpose(0, 1).reshape(m.shape[1], -1).any(dim=1)


def _zero_outputs(layer: BayesLayer) -> Tensor:
    """(O,) bool: outputs that are exactly zero in eval mode. Only a conv filter pruned whole
    qualifies (its bias is masked with it); a Linear row of zero weights still gives its bias."""
    if not isinstance(layer, BayesConv2d):
        return torch.zeros(int(layer.prior.weight_shape[0]), dtype=torch.bool)
    m = layer.prior.weight_mask(layer.threshold) > 0
    return ~m.reshape(m.shape[0], -1).any(dim=1)


class Shrinker:
    """Removes groups dead for ``patience`` consecutive ``step`` calls (see the module doc).

    Bookkeeping is in original unit numbers: ``out_idx[layer]`` the original outputs still
    present, ``in_idx[layer]`` the original inputs its weight still has (for a Linear behind
    a Flatten: positions of the original flattened vector).
    """

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...], patience: int = 3):
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be an integer >= 1, got {patience!r}")
        self.patience = patience
        self.layers, self.links = _chain(model, input_shape)
        self.order = list(self.layers)
        self.fed_by = {lk.c: lk for lk in self.links}
        self.feeds = {lk.p: lk for lk in self.links}
        shape = {n: tuple(int(d) for d in l.prior.weight_shape) for n, l in self.layers.items()}
        for n, layer in self.layers.items():  # what compress counts "original" against
            if getattr(layer, "kwh_original_shape", None) is None:
                layer.kwh_original_shape = shape[n]
        self.n_inputs = {n: s[1] for n, s in shape.items()}  # original inputs of each weight
        self.out_idx = {n: torch.arange(s[0]) for n, s in shape.items()}
        self.in_idx = {n: torch.arange(s[1]) for n, s in shape.items()}
        self.dead_for = {n: {"out": torch.zeros(s[0], dtype=torch.long),
                             "in": torch.zeros(s[1], dtype=torch.long)} for n, s in shape.items()}
        self.moves: dict[str, list[tuple[int, Tensor]]] = {}  # of the last step, by param name

    # ------------------------------------------------------------------ what is dead now

    def _dead_now(self) -> dict[str, dict[str, Tensor]]:
        """Per layer, bool over its current outputs and weight inputs: dead at this moment."""
        dead = {n: {"out": _zero_outputs(l), "in": _unread_inputs(l)}
                for n, l in self.layers.items()}
        for lk in self.links:
            p, c = dead[lk.p], dead[lk.c]
            if lk.flatten:
                chans = self.in_idx[lk.c] // lk.block  # the channel of each consumer column
                read = set(chans[~c["in"]].tolist())
                p["out"] |= torch.tensor([o not in read for o in self.out_idx[lk.p].tolist()],
                                         dtype=torch.bool)
                gone = set(self.out_idx[lk.p][p["out"]].tolist())
                c["in"] |= torch.tensor([ch in gone for ch in chans.tolist()], dtype=torch.bool)
            else:  # one consumer input per producer output
                both = p["out"] | c["in"]
                p["out"], c["in"] = both, both.clone()
        dead[self.order[-1]]["out"][:] = False  # the class outputs stay
        return dead

    # ------------------------------------------------------------------ the step

    @torch.no_grad()
    def step(self) -> dict | None:
        """Count dead groups; remove those dead ``patience`` times in a row.

        Returns {layer: {"outputs": removed, "inputs": removed}} or None when nothing went.
        ``self.moves`` then says how each parameter was sliced (``carry_optimizer_state``).
        """
        dead = self._dead_now()
        remove = {}
        for n in self.order:
            remove[n] = {}
            for side in ("out", "in"):
                cnt = self.dead_for[n][side]
                self.dead_for[n][side] = torch.where(dead[n][side], cnt + 1,
                                                     torch.zeros_like(cnt))
                remove[n][side] = self.dead_for[n][side] >= self.patience
        for lk in self.links:  # what leaves one side of a link leaves the other
            p, c = remove[lk.p], remove[lk.c]
            if lk.flatten:
                gone = set(self.out_idx[lk.p][p["out"]].tolist())
                chans = (self.in_idx[lk.c] // lk.block).tolist()
                c["in"] |= torch.tensor([ch in gone for ch in chans], dtype=torch.bool)
            else:
                both = p["out"] | c["in"]
                p["out"], c["in"] = both, both.clone()
        first = self.layers[self.order[0]]
        if isinstance(first, BayesConv2d):
            remove[self.order[0]]["in"][:] = False  # no gather on image channels
        emptied = any(bool(r[s].all()) for r in remove.values() for s in ("out", "in"))
        if emptied or not any(r["out"].any() or r["in"].any() for r in remove.values()):
            self.moves = {}  # nothing to remove, or a whole layer would go: leave it be
            return None
        target = {n: {"out": self.out_idx[n][~remove[n]["out"]].tolist(),
                      "in": self.in_idx[n][~remove[n]["in"]].tolist()} for n in self.order}
        for n in self.order:
            for side in ("out", "in"):
                self.dead_for[n][side] = self.dead_for[n][side][~remove[n][side]]
        self.apply(target)
        return {n: {"outputs": int(remove[n]["out"].sum()), "inputs": int(remove[n]["in"].sum())}
                for n in self.order if remove[n]["out"].any() or remove[n]["in"].any()}

    @torch.no_grad()
    def apply(self, plan: dict) -> None:
        """Shrink the layers to ``plan`` ({layer: {"out": [...], "in": [...]}}, original
        numbers, a subset of what is present now) and set every gather index."""
        self.moves = {}
        for n in self.order:
            layer = self.layers[n]
            for side, select in (("out", layer.select_outputs_), ("in", layer.select_inputs_)):
                cur = (self.out_idx if side == "out" else self.in_idx)[n]
                want = torch.tensor(plan[n][side], dtype=torch.long)
                if len(want) == len(cur) and bool((want == cur).all()):
                    continue
                pos = {int(v): i for i, v in enumerate(cur.tolist())}
                missing = [v for v in want.tolist() if v not in pos]
                if missing or len(want) == 0:
                    raise ModelError(f"shrink plan for {n!r} keeps units that are gone or "
                                     f"none at all ({missing[:5]})")
                keep = torch.tensor([pos[v] for v in want.tolist()], dtype=torch.long)
                for k, mv in select(keep).items():
                    self.moves.setdefault(f"{n}.{k}", []).append(mv)
                (self.out_idx if side == "out" else self.in_idx)[n] = want
        self._set_gathers()

    def _set_gathers(self) -> None:
        """A Linear reading a flattened conv output, or the input, gathers what it reads."""
        for n in self.order:
            layer = self.layers[n]
            lk = self.fed_by.get(n)
            if not isinstance(layer, BayesLinear) or (lk is not None and not lk.flatten):
                continue  # conv, or fed by a Linear whose rows went with these columns
            if lk is None:
                present = torch.arange(self.n_inputs[n])
            else:
                chans = self.out_idx[lk.p]
                present = (chans[:, None] * lk.block + torch.arange(lk.block)).reshape(-1)
            where = {int(v): i for i, v in enumerate(present.tolist())}
            idx = torch.tensor([where[int(v)] for v in self.in_idx[n].tolist()], dtype=torch.long)
            whole = len(idx) == len(present) and bool((idx == torch.arange(len(present))).all())
            layer.input_index = None if whole else idx

    # ------------------------------------------------------------------ state

    def plan(self) -> dict:
        """{layer: {"out": original outputs kept, "in": original inputs kept}} (JSON-ready)."""
        return {n: {"out": self.out_idx[n].tolist(), "in": self.in_idx[n].tolist()}
                for n in self.order}

    def state(self) -> dict:
        """JSON-ready: the plan and the dead-for counters."""
        return {"patience": self.patience, "plan": self.plan(),
                "dead_for": {n: {s: v.tolist() for s, v in d.items()}
                             for n, d in self.dead_for.items()}}

    def load_state(self, state: dict) -> None:
        """Shrink a freshly built model to a saved state's plan and take its counters."""
        self.apply(state["plan"])
        self.dead_for = {n: {s: torch.tensor(v, dtype=torch.long) for s, v in d.items()}
                         for n, d in state["dead_for"].items()}

    def sizes(self) -> dict[str, tuple[int, int]]:
        """(outputs, weight inputs) of each layer now."""
        return {n: (len(self.out_idx[n]), len(self.in_idx[n])) for n in self.order}


def carry_optimizer_state(old: torch.optim.Optimizer, old_names: dict[int, str],
                          new: torch.optim.Optimizer, model: nn.Module,
                          moves: dict[str, list[tuple[int, Tensor]]]) -> None:
    """Copy ``old``'s per-parameter state into ``new`` by parameter name, slicing tensors
    shaped like their parameter as the shrink step sliced the parameter.

    ``old_names``: id of each parameter before the step -> its name.
    """
    by_name = {old_names[id(p)]: st for p, st in old.state.items() if id(p) in old_names}
    for name, p in model.named_parameters():
        st = by_name.get(name)
        if st is None:
            continue
        out = {}
        for k, v in st.items():
            if torch.is_tensor(v) and v.dim() > 0:
                for dim, index in moves.get(name, []):
                    v = v.index_select(dim, index)
                if v.shape != p.shape:
                    raise ModelError(f"optimizer state {k!r} of {name} has shape "
                                     f"{tuple(v.shape)}, the parameter {tuple(p.shape)}")
            out[k] = v.clone() if torch.is_tensor(v) else v
        new.state[p] = out
