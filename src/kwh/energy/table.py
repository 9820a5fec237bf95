"""Energy per arithmetic operation and per memory access: the price list of the energy model.

Default: Horowitz 2014, "Computing's energy problem (and what we can do about it)", ISSCC,
45 nm, 0.9 V, in picojoules. Integer widths between the tabulated ones are interpolated on a
power law between the two neighbouring entries (log-log), and outside the tabulated range
extrapolated with Horowitz's scaling rules: a multiplier's energy grows with the square of the
bit width (E_mult(b) ~ 3.1 (b/32)^2 pJ), an adder's linearly (E_add(b) ~ 0.1 (b/32) pJ).
Interpolating rather than applying the rule everywhere keeps every tabulated number exact and
the price monotone in the width (the rule alone gives a 9-bit add, 0.028 pJ, cheaper than the
tabulated 8-bit one, 0.03 pJ).

Memory: Horowitz's 64-bit SRAM reads (8 KB 10 pJ, 32 KB 20 pJ, 1 MB 100 pJ), interpolated on
a power law in the SRAM size; DRAM 640 pJ per 32-bit read as in Han et al. 2015 ("Learning both
Weights and Connections", section 1, from Horowitz), i.e. 1.28 nJ per 64 bits, the low end of
Horowitz's 1.3-2.6 nJ range. Memory energy is charged per bit moved: E_64 / 64.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

__all__ = ["EnergyTable", "HOROWITZ_45NM", "load_table"]

PJ = 1e-12  # joules per picojoule


def _loglog(points: dict[int, float], x: float, end_exponent: float) -> float:
    """Power-law interpolation through sorted ``points``; ends extrapolate with ``end_exponent``."""
    xs = sorted(points)
    if x in points:
        return points[x]
    if x < xs[0]:
        return points[xs[0]] * (x / xs[0]) ** end_exponent
    if x > xs[-1]:
        return points[xs[-1]] * (x / xs[-1]) ** end_exponent
    hi = next(i for i, v in enumerate(xs) if v > x)
    x0, x1 = xs[hi - 1], xs[hi]
    p = math.log(points[x1] / points[x0]) / math.log(x1 / x0)  # local power-law exponent
    return points[x0] * (x / x0) ** p


@dataclass(frozen=True)
class EnergyTable:
    """Picojoules per operation (keys: bit widths) and per 64-bit memory access (keys: KB)."""

    name: str = "Horowitz 2014, 45 nm, 0.9 V"
    int_add_pj: dict[int, float] = field(default_factory=lambda: {8: 0.03, 16: 0.05, 32: 0.1})
    int_mult_pj: dict[int, float] = field(default_factory=lambda: {8: 0.2, 16: 0.8, 32: 3.1})
    fp_add_pj: dict[int, float] = field(default_factory=lambda: {16: 0.4, 32: 0.9})
    fp_mult_pj: dict[int, float] = field(default_factory=lambda: {16: 1.1, 32: 3.7})
    sram_pj_per_64bit: dict[int, float] = field(
        default_factory=lambda: {8: 10.0, 32: 20.0, 1024: 100.0})
    dram_pj_per_64bit: float = 1280.0  # Han et al. 2015: 640 pJ per 32-bit DRAM read

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "name":
                if not isinstance(v, str) or not v:
                    raise ValueError(f"energy table 'name' must be a non-empty string, got {v!r}")
            elif isinstance(v, dict):
                _check_points(f.name, v)
            elif not _positive(v):
                raise ValueError(f"energy table {f.name!r} must be a positive number, got {v!r}")

    def add_j(self, bits: float, kind: str = "int") -> float:
        """Joules of one addition of ``bits``-wide operands (``kind``: 'int' or 'fp')."""
        if kind == "fp":
            return _fp(self.fp_add_pj, bits, "fp_add_pj") * PJ
        return _loglog(self.int_add_pj, bits, 1.0) * PJ  # Horowitz: adder ~ linear in b

    def mult_j(self, bits_a: float, bits_b: float | None = None, kind: str = "int") -> float:
        """Joules of one ``bits_a`` x ``bits_b`` multiply.

        An a x b array multiplier has a*b partial-product cells, so it is priced as a square
        multiplier of width sqrt(a b) (equal to the quadratic rule's 3.1 a b / 32^2 pJ).
        """
        b = bits_a if bits_b is None else bits_b
        if kind == "fp":
            return _fp(self.fp_mult_pj, max(bits_a, b), "fp_mult_pj") * PJ
        return _loglog(self.int_mult_pj, math.sqrt(bits_a * b), 2.0) * PJ  # ~ quadratic in b

    def sram_j_per_bit(self, size_kb: float) -> float:
        """Joules per bit read from an SRAM of ``size_kb`` KB (power law between sizes)."""
        # Outside the tabulated sizes: E ~ sqrt(size) (wire length; Horowitz 8 -> 32 KB doubles).
        return _loglog(self.sram_pj_per_64bit, size_kb, 0.5) * PJ / 64

    def dram_j_per_bit(self) -> float:
        """Joules per bit read from or written to DRAM."""
        return self.dram_pj_per_64bit * PJ / 64

    def to_dict(self) -> dict:
        """JSON-ready form (the same schema :func:`load_table` reads)."""
        return {f.name: ({str(k): v for k, v in getattr(self, f.name).items()}
                         if isinstance(getattr(self, f.name), dict) else getattr(self, f.name))
                for f in fields(self)}


def _positive(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _check_points(what: str, points: dict) -> None:
    if not points:
        raise ValueError(f"energy table {what!r} must have at least one entry")
    for k, v in points.items():
        if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
            raise ValueError(f"energy table {what!r}: key {k!r} must be a positive integer "
                             "(bit width, or SRAM size in KB)")
        if not _positive(v):
            raise ValueError(f"energy table {what!r}[{k}] must be a positive number of pJ, "
                             f"got {v!r}")


def _fp(points: dict[int, float], bits: float, what: str) -> float:
    bits = int(bits)
    if bits not in points:
        raise ValueError(f"no floating-point entry for {bits} bits in {what}; the table has "
                         f"{sorted(points)} (add one to the table file)")
    return points[bits]


HOROWITZ_45NM = EnergyTable()


def load_table(path: str | os.PathLike) -> EnergyTable:
    """Read a JSON or TOML energy table; keys it leaves out keep the Horowitz 2014 values.

    Schema (all optional, pJ): ``name``; ``int_add_pj``, ``int_mult_pj``, ``fp_add_pj``,
    ``fp_mult_pj`` mapping bit width to pJ; ``sram_pj_per_64bit`` mapping SRAM KB to pJ per
    64-bit access; ``dram_pj_per_64bit``. Unknown keys and bad values raise ``ValueError``.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"energy table file not found: {p}")
    suffix = p.suffix.lower()
    if suffix not in (".json", ".toml"):
        raise ValueError(f"energy table {p}: unknown extension {p.suffix!r}; use .json or .toml")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"energy table {p} is not UTF-8 text: {e}") from None
    if suffix == ".json":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"energy table {p} is not valid JSON: {e}") from None
    else:
        try:
            import tomllib
        except ImportError:  # Python 3.10
            raise ValueError(f"{p}: TOML tables need Python >= 3.11; use a .json file") from None
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"energy table {p} is not valid TOML: {e}") from None
    return table_from_dict(raw, source=str(p))


def table_from_dict(raw: object, source: str = "table") -> EnergyTable:
    """Validate a parsed table (see :func:`load_table`) and merge it over the defaults."""
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: an energy table must be a mapping, got {type(raw).__name__}")
    valid = [f.name for f in fields(EnergyTable)]
    unknown = sorted(set(raw) - set(valid))
    if unknown:
        raise ValueError(f"{source}: unknown energy table key(s) {unknown}; valid keys: "
                         f"{', '.join(valid)}")
    kw: dict = {}
    for k, v in raw.items():
        if isinstance(getattr(HOROWITZ_45NM, k), dict):
            if not isinstance(v, dict):
                raise ValueError(f"{source}: {k!r} must map bit widths (or KB) to pJ, got {v!r}")
            kw[k] = {_int_key(source, k, kk): vv for kk, vv in v.items()}
        else:
            kw[k] = v
    kw.setdefault("name", f"custom ({Path(source).name})")
    try:
        return replace(HOROWITZ_45NM, **kw)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None


def _int_key(source: str, what: str, k: object) -> int:
    try:
        return int(str(k))
    except ValueError:
        raise ValueError(f"{source}: {what!r} key {k!r} must be an integer bit width "
                         "(or SRAM size in KB)") from None
