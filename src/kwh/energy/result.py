"""Priced layers and totals: energy per inference, per correct answer, per kWh, vs Landauer."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

__all__ = ["LayerEnergy", "EnergyEstimate", "LANDAUER_J_PER_BIT", "JOULES_PER_KWH"]

# Landauer 1961: erasing one bit costs at least k T ln 2; k = 1.380649e-23 J/K, T = 300 K.
LANDAUER_J_PER_BIT = 1.380649e-23 * 300.0 * math.log(2.0)  # 2.87e-21 J
JOULES_PER_KWH = 3.6e6


@dataclass
class LayerEnergy:
    """One block's operations, memory traffic and their energy (J) for one inference or frame."""

    name: str
    arith: str               # "fp32" or "int 9x16 -> 29" (weight x activation -> accumulator)
    mults: float
    adds: float
    compares: float
    e_mult: float
    e_add: float
    e_compare: float
    weight_bits: float       # bits of weights (and biases) read per inference or frame
    act_bits: float          # bits of activations (and state) read + written
    weight_mem: str          # "SRAM 1024 KB" or "DRAM"
    act_mem: str
    e_weight_mem: float
    e_act_mem: float
    landauer_bits: float     # result bits written by every operation (see EnergyEstimate)
    macs_dense: float = 0.0  # MACs of the dense evaluation, for reference

    @property
    def compute_j(self) -> float:
        """Arithmetic energy."""
        return self.e_mult + self.e_add + self.e_compare

    @property
    def memory_j(self) -> float:
        """Memory-access energy."""
        return self.e_weight_mem + self.e_act_mem

    @property
    def total_j(self) -> float:
        """Arithmetic plus memory."""
        return self.compute_j + self.memory_j


@dataclass
class EnergyEstimate:
    """A model's modelled energy: per layer, totals and derived figures.

    ``unit`` is "inference" (one input) or "frame" (one frame of a sigma-delta sequence).
    The Landauer comparison counts, as the bits involved, the result bits every arithmetic
    operation writes (product w + a bits, sum at accumulator width, comparison at activation
    width) -- the minimum information an irreversible datapath erases when it overwrites its
    result registers; memory reads are not counted as erasures.
    """

    layers: list[LayerEnergy]
    table: str
    config: dict
    input_shape: tuple[int, ...]
    unit: str = "inference"
    mode: str = "dense"
    accuracy: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def compute_j(self) -> float:
        """Arithmetic energy per unit."""
        return sum(l.compute_j for l in self.layers)

    @property
    def memory_j(self) -> float:
        """Memory energy per unit."""
        return sum(l.memory_j for l in self.layers)

    @property
    def total_j(self) -> float:
        """Energy per inference (or frame)."""
        return self.compute_j + self.memory_j

    @property
    def mults(self) -> float:
        """Multiplies per unit, all layers."""
        return sum(l.mults for l in self.layers)

    @property
    def adds(self) -> float:
        """Additions per unit, all layers."""
        return sum(l.adds for l in self.layers)

    @property
    def weight_bits(self) -> float:
        """Weight (and bias) bits read per unit."""
        return sum(l.weight_bits for l in self.layers)

    @property
    def landauer_j(self) -> float:
        """kT ln 2 per result bit of every operation, at 300 K."""
        return sum(l.landauer_bits for l in self.layers) * LANDAUER_J_PER_BIT

    @property
    def landauer_ratio(self) -> float:
        """Modelled energy over the Landauer bound of the same operations."""
        return self.total_j / self.landauer_j if self.landauer_j > 0 else math.inf

    @property
    def per_correct_j(self) -> float | None:
        """Energy per correct prediction: energy per inference / accuracy (None if unknown)."""
        if self.accuracy is None:
            return None
        return self.total_j / self.accuracy if self.accuracy > 0 else math.inf

    @property
    def correct_per_kwh(self) -> float | None:
        """Correct predictions per kilowatt-hour (3.6e6 J)."""
        e = self.per_correct_j
        return None if e is None else (JOULES_PER_KWH / e if e > 0 else math.inf)

    def with_accuracy(self, accuracy: float | None) -> EnergyEstimate:
        """The same estimate with a measured accuracy in [0, 1] attached."""
        if accuracy is not None and not 0.0 <= accuracy <= 1.0:
            raise ValueError(f"accuracy must be a fraction in [0, 1], got {accuracy!r}")
        self.accuracy = accuracy
        return self

    def to_dict(self) -> dict:
        """JSON-ready summary: per-layer rows, totals, assumptions."""
        rows = []
        for l in self.layers:
            d = asdict(l)
            d.update(compute_j=l.compute_j, memory_j=l.memory_j, total_j=l.total_j)
            rows.append(d)
        return {
            "unit": self.unit, "mode": self.mode, "table": self.table, "config": self.config,
            "input_shape": list(self.input_shape), "layers": rows,
            "mults": self.mults, "adds": self.adds, "weight_bits": self.weight_bits,
            "compute_j": self.compute_j, "memory_j": self.memory_j, "total_j": self.total_j,
            "accuracy": self.accuracy, "per_correct_j": self.per_correct_j,
            "correct_per_kwh": self.correct_per_kwh, "landauer_j": self.landauer_j,
            "landauer_ratio": self.landauer_ratio, "notes": list(self.notes),
        }
