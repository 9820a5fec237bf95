"""Text tables of energy estimates and side-by-side comparisons (what `kwh energy` prints)."""

from __future__ import annotations

import math

from .compare import Comparison
from .measure import Measurement, Unavailable
from .result import EnergyEstimate
from .sensitivity import MemorySensitivity

__all__ = ["joules", "format_layers", "format_comparison", "format_sensitivity", "ratio"]

_UNITS = [(1.0, "J"), (1e-3, "mJ"), (1e-6, "µJ"), (1e-9, "nJ"), (1e-12, "pJ"), (1e-15, "fJ")]


def joules(x: float | None) -> str:
    """An energy with an SI prefix, 3 significant digits: '287 µJ'."""
    if x is None:
        return "n/a"
    if not math.isfinite(x):
        return "inf"
    if x == 0:
        return "0 J"
    for scale, unit in _UNITS:
        if abs(x) >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.3g} J"


def ratio(x: float) -> str:
    """A ratio with three significant figures below 10x: '1.05x', '6.62x', '60.8x'."""
    if not math.isfinite(x):
        return "inf"
    return f"{x:,.2f}x" if x < 10 else f"{x:,.1f}x"


def format_sensitivity(s: MemorySensitivity) -> list[str]:
    """The dense / compressed ratio as modelled and with both models' weights in one memory."""
    lines = ["dense / compressed energy per inference, by where the weights are read from "
             "(compute and activations unchanged):"]
    for sc in s.scenarios:
        lines.append(f"  {ratio(sc.ratio):>8}  {sc.name}: {sc.where}")
    same = [sc.ratio for sc in s.scenarios if sc.name != "as modelled"]
    if same:
        lines.append(f"  with both in the same memory the ratio is {ratio(min(same))} to "
                     f"{ratio(max(same))}; --sram-kb {math.ceil(s.dense_on_chip_kb):,} or more "
                     "holds the dense original's weights and activations on chip")
    return lines


def _count(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 or x == int(x) else f"{x:,.1f}"


def format_layers(est: EnergyEstimate, title: str = "") -> str:
    """Per-layer operations and energy, compute vs memory, with totals."""
    head = (f"{'layer':<40} {'arith':<18} {'mults':>11} {'adds':>11} {'compute':>10} "
            f"{'weights':>10} {'acts':>10} {'total':>10}")
    lines = [title] if title else []
    lines += [head, "-" * len(head)]
    for l in est.layers:
        lines.append(f"{l.name[:40]:<40} {l.arith:<18} {_count(l.mults):>11} "
                     f"{_count(l.adds):>11} {joules(l.compute_j):>10} "
                     f"{joules(l.e_weight_mem):>10} {joules(l.e_act_mem):>10} "
                     f"{joules(l.total_j):>10}")
    lines.append("-" * len(head))
    lines.append(f"{'total per ' + est.unit:<40} {'':<18} {_count(est.mults):>11} "
                 f"{_count(est.adds):>11} {joules(est.compute_j):>10} "
                 f"{joules(sum(l.e_weight_mem for l in est.layers)):>10} "
                 f"{joules(sum(l.e_act_mem for l in est.layers)):>10} {joules(est.total_j):>10}")
    lines += [f"  {n}" for n in est.notes]
    return "\n".join(lines)


def _measured(m, dynamic: bool) -> str:
    if m is None:
        return "skipped"
    if isinstance(m, Unavailable):
        return "not measured"
    assert isinstance(m, Measurement)
    return joules(m.dynamic_per_inference_j if dynamic else m.total_per_inference_j)


def format_comparison(comp: Comparison, sensitivity: MemorySensitivity | None = None) -> str:
    """Per-layer tables of every variant, then the totals side by side with ratios, and the
    energy ratio's sensitivity to where the weights live (when given)."""
    out = []
    for v in comp.variants:
        out.append(format_layers(v.estimate, f"== {v.label}: modelled energy per "
                                             f"{v.estimate.unit} ({v.estimate.table})"))
        out.append("")
    cols = [v.label for v in comp.variants]
    w = max(24, *(len(c) for c in cols)) + 2
    rows: list[tuple[str, list[str]]] = []

    def row(name, fn):
        rows.append((name, [fn(v) for v in comp.variants]))

    row("unit", lambda v: v.estimate.unit)
    row("modelled energy", lambda v: joules(v.estimate.total_j))
    row("  compute", lambda v: joules(v.estimate.compute_j))
    row("  memory", lambda v: joules(v.estimate.memory_j))
    row("multiplies", lambda v: _count(v.estimate.mults))
    row("additions", lambda v: _count(v.estimate.adds))
    row("weight bits read", lambda v: _count(v.estimate.weight_bits))
    row("weights live in", lambda v: v.estimate.layers[0].weight_mem)
    row("accuracy", lambda v: "n/a" if v.estimate.accuracy is None
        else f"{100 * v.estimate.accuracy:.2f}%")
    row("energy / correct", lambda v: joules(v.estimate.per_correct_j))
    row("correct / kWh", lambda v: "n/a" if v.estimate.correct_per_kwh is None
        else f"{v.estimate.correct_per_kwh:.3g}")
    row("x Landauer (kT ln2/bit)", lambda v: f"{v.estimate.landauer_ratio:.3g}")
    row("measured total", lambda v: _measured(v.measured, False))
    row("measured dynamic", lambda v: _measured(v.measured, True))
    out.append(f"{'':<26}" + "".join(f"{c:>{w}}" for c in cols))
    for name, vals in rows:
        out.append(f"{name:<26}" + "".join(f"{x:>{w}}" for x in vals))
    dense, other = comp.get("dense"), comp.get("compressed") or comp.get("model")
    if dense is not None and other is not None and other is not dense:
        out.append("")
        d, c = dense.estimate, other.estimate
        out.append(f"dense / compressed: energy per inference {ratio(d.total_j / c.total_j)}"
                   f" (compute {ratio(d.compute_j / c.compute_j)}, memory "
                   f"{ratio(d.memory_j / c.memory_j)}; weights of the dense original in "
                   f"{d.layers[0].weight_mem}, of the compressed model in "
                   f"{c.layers[0].weight_mem})")
        if d.per_correct_j and c.per_correct_j:
            out.append(f"dense / compressed: energy per correct prediction "
                       f"{ratio(d.per_correct_j / c.per_correct_j)}")
        if sensitivity is not None:
            out += format_sensitivity(sensitivity)
    out.append("")
    for v in comp.variants:
        out.append(f"accuracy of {v.label}: {v.accuracy_note}")
        if isinstance(v.measured, Unavailable):
            out.append(f"measured energy of {v.label}: {v.measured}")
        elif isinstance(v.measured, Measurement):
            m = v.measured
            out.append(f"measured energy of {v.label}: {m.counter}, {m.inferences:,} inferences "
                       f"in {m.window_s:.2f} s, total {joules(m.total_j)}, idle "
                       f"{m.idle_w:.2f} W (over {m.idle_window_s:.2f} s), dynamic "
                       f"{joules(m.dynamic_j)}")
    out += comp.notes
    return "\n".join(out)
