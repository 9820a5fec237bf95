"""The hardware assumptions of the energy model, one dataclass with stated defaults."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EnergyConfig", "WEIGHT_FORMATS"]

WEIGHT_FORMATS = ("auto", "dense", "sparse")


@dataclass(frozen=True)
class EnergyConfig:
    """Number formats and memory system the model is priced on.

    - A plain layer (no ``kwh_bits``) runs dense in IEEE float of ``float_bits`` (fp32): every
      MAC is a float multiply and add, zeros included, as a dense engine does.
    - A kwh-compressed layer multiplies its ``kwh_bits``-wide fixed-point weights with
      ``act_bits``-wide fixed-point activations (default 16: wide enough to leave the accuracy
      of these nets unchanged without calibration; 8 is common after calibration), only for
      nonzero weights, and accumulates at ``acc_bits`` (default None: the exact width that
      cannot overflow, weight bits + activation bits + ceil(log2(nonzero fan-in))).
    - Weights are read once per batch of ``batch_size`` inputs (default 1: one inference at a
      time, the edge case; the cost is then per inference). Activations are read and written
      once per layer (ideal reuse inside the datapath: register traffic is free).
    - Weights and activations live in an on-chip SRAM of ``sram_kb`` KB when they fit (both
      together), else weights stream from DRAM and activations stay on chip if they fit alone.
    """

    act_bits: int = 16
    acc_bits: int | None = None
    float_bits: int = 32
    sram_kb: float = 1024.0
    batch_size: int = 1
    weight_format: str = "auto"  # kwh layers: "dense" packed, "sparse" (CSR), or the smaller

    def __post_init__(self):
        for name in ("act_bits", "float_bits", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.acc_bits is not None and (not isinstance(self.acc_bits, int) or self.acc_bits < 1):
            raise ValueError(f"acc_bits must be a positive integer or None (exact width), "
                             f"got {self.acc_bits!r}")
        if not (isinstance(self.sram_kb, (int, float)) and self.sram_kb >= 0):
            raise ValueError(f"sram_kb must be >= 0 (0: no on-chip memory), got {self.sram_kb!r}")
        if self.float_bits not in (16, 32):
            raise ValueError(f"float_bits must be 16 or 32, got {self.float_bits!r}")
        if self.weight_format not in WEIGHT_FORMATS:
            raise ValueError(f"Unknown weight_format {self.weight_format!r}; choose one of: "
                             f"{', '.join(WEIGHT_FORMATS)}")
