"""Energy accounting: modelled (ops and memory traffic x pJ per op) and measured (NVML, RAPL)."""

from __future__ import annotations

from .config import EnergyConfig
from .counts import LayerCounts, count_model
from .estimate import estimate_energy
from .result import LANDAUER_J_PER_BIT, EnergyEstimate, LayerEnergy
from .table import HOROWITZ_45NM, EnergyTable, load_table

__all__ = [
    # the price list
    "EnergyTable", "HOROWITZ_45NM", "load_table",
    # the model
    "EnergyConfig", "estimate_energy", "count_model", "LayerCounts",
    "EnergyEstimate", "LayerEnergy", "LANDAUER_J_PER_BIT",
]
