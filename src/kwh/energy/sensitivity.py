"""How much of the dense / compressed energy ratio rests on where the weights are read from.

The modelled ratio puts each model's weights in SRAM when they fit (with the activations) in
``sram_kb``, else in DRAM (:func:`~kwh.energy.estimate.place`). A dense net that misses the
SRAM pays DRAM prices, ~13x an SRAM read at 1 MB in Horowitz 2014, so a large part of its
ratio to a compressed net that fits can come from that one assumption. Here the same two
estimates are repriced with the weights of both read from one memory:

    E' = E - E_weight_mem + weight bits x E_bit(memory)

compute and activation traffic unchanged, so the scenarios differ only in the weights' memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .compare import Comparison
from .config import EnergyConfig
from .result import EnergyEstimate
from .table import EnergyTable

__all__ = ["Scenario", "MemorySensitivity", "weight_memory_sensitivity"]


@dataclass(frozen=True)
class Scenario:
    """Energy per inference of the dense original and the compressed model in one setting."""

    name: str          # "as modelled", "both from DRAM", "both from SRAM"
    where: str         # where the weights of each are read from, in words
    dense_j: float
    compressed_j: float

    @property
    def ratio(self) -> float:
        """Dense over compressed energy per inference."""
        return self.dense_j / self.compressed_j if self.compressed_j > 0 else math.inf

    def to_dict(self) -> dict:
        return {"name": self.name, "where": self.where, "dense_j": self.dense_j,
                "compressed_j": self.compressed_j, "ratio": self.ratio}


@dataclass(frozen=True)
class MemorySensitivity:
    """The ratio as modelled and with every weight in DRAM, or in SRAM; the SRAM that would
    hold the dense original on chip."""

    scenarios: list[Scenario]
    sram_kb: float
    dense_on_chip_kb: float  # --sram-kb at which the dense weights and activations fit

    def get(self, name: str) -> Scenario | None:
        return next((s for s in self.scenarios if s.name == name), None)

    def to_dict(self) -> dict:
        return {"sram_kb": self.sram_kb, "dense_on_chip_kb": self.dense_on_chip_kb,
                "scenarios": [s.to_dict() for s in self.scenarios]}


def _weight_kb(est: EnergyEstimate, batch: int) -> float:
    return est.weight_bits * batch / 8 / 1024


def _repriced(est: EnergyEstimate, j_per_bit: float) -> float:
    """Energy with every weight bit read at ``j_per_bit`` (weight_bits is per inference)."""
    return (est.total_j - sum(l.e_weight_mem for l in est.layers)
            + est.weight_bits * j_per_bit)


def weight_memory_sensitivity(comp: Comparison, table: EnergyTable,
                              config: EnergyConfig) -> MemorySensitivity | None:
    """The dense / compressed ratio with the weights where the model put them, all in DRAM,
    and all in an SRAM of ``config.sram_kb`` (priced at that size, whether or not they fit);
    None when the comparison has no dense original or no compressed model."""
    dense, small = comp.get("dense"), comp.get("compressed")
    if dense is None or small is None:
        return None
    d, c = dense.estimate, small.estimate
    batch = config.batch_size
    where = (f"dense weights ({_weight_kb(d, batch):,.1f} KB) from {d.layers[0].weight_mem}, "
             f"compressed ({_weight_kb(c, batch):,.1f} KB) from {c.layers[0].weight_mem}")
    scenarios = [Scenario("as modelled", where, d.total_j, c.total_j)]
    dram = table.dram_j_per_bit()
    scenarios.append(Scenario(
        "both from DRAM", f"{table.dram_pj_per_64bit:g} pJ per 64 bits",
        _repriced(d, dram), _repriced(c, dram)))
    if config.sram_kb > 0:
        sram = table.sram_j_per_bit(config.sram_kb)
        scenarios.append(Scenario(
            "both from SRAM", f"SRAM {config.sram_kb:g} KB, {sram * 64 / 1e-12:.3g} pJ per 64 "
            "bits, as if the dense weights fit", _repriced(d, sram), _repriced(c, sram)))
    peak = max((l.act_bits for l in d.layers), default=0.0)
    on_chip = (d.weight_bits * batch + peak) / 8 / 1024
    return MemorySensitivity(scenarios, float(config.sram_kb), on_chip)
