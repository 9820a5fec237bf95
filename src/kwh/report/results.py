"""Benchmark result tables (benchmarks/results/*.csv) as accuracy-vs-compression / -ops points.

The CSVs are written by different benchmarks, so columns are found by name: an accuracy
column (or an error column, converted to accuracy %), a compression column and an ops column,
and an optional method/name column that groups the points into curves.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Curves", "read_curves", "ACCURACY_COLS", "ERROR_COLS", "COMPRESSION_COLS",
           "OPS_COLS", "GROUP_COLS"]

ACCURACY_COLS = ("accuracy", "test_accuracy", "acc", "accuracy_pct")
ERROR_COLS = ("error", "test_error", "error_pct", "error_after_quantization")
COMPRESSION_COLS = ("compression", "fast_prediction", "max_compression", "pruning", "rate",
                    "compression_rate")
OPS_COLS = ("macs_nonzero", "macs", "ops", "ops_per_frame", "mults", "energy_j",
            "energy_per_inference_j", "mean_per_frame")
GROUP_COLS = ("method", "network", "name", "model", "prior", "net", "variant")


@dataclass
class Curves:
    """Points (x, accuracy %) per method, for compression and for ops, with their sources."""

    compression: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    ops: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    compression_label: str = ""
    ops_label: str = ""
    sources: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _num(v: str | None) -> float | None:
    try:
        x = float(v) if v not in (None, "") else None
    except ValueError:
        return None
    return x if x is not None and math.isfinite(x) else None


def _pick(cols: dict[str, str], names: tuple[str, ...]) -> str | None:
    return next((cols[n] for n in names if n in cols), None)


def _accuracy(row: dict, acc_col: str | None, err_col: str | None) -> float | None:
    """Accuracy in percent from an accuracy column (fraction or %) or an error column."""
    if acc_col is not None and (a := _num(row.get(acc_col))) is not None:
        return 100 * a if a <= 1.0 else a
    if err_col is not None and (e := _num(row.get(err_col))) is not None:
        return 100 - (100 * e if e <= 1.0 and "pct" not in err_col else e)
    return None


def _join_label(label: str, col: str | None) -> str:
    """Axis label naming every column that feeds the axis: 'macs_nonzero / mean_per_frame'."""
    if not col or col in label.split(" / "):
        return label
    return f"{label} / {col}" if label else col


def read_curves(folder: str | Path) -> Curves:
    """Scan ``folder`` for CSVs with an accuracy/error column and a compression or ops column."""
    out = Curves()
    folder = Path(folder)
    if not folder.is_dir():
        out.skipped.append(f"{folder} is not a folder")
        return out
    for path in sorted(folder.glob("*.csv")):
        try:
            with open(path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            out.skipped.append(f"{path.name}: unreadable ({e})")
            continue
        if not rows:
            out.skipped.append(f"{path.name}: empty")
            continue
        cols = {c.strip().lower(): c for c in rows[0].keys() if c}
        acc_col, err_col = _pick(cols, ACCURACY_COLS), _pick(cols, ERROR_COLS)
        comp_col, ops_col = _pick(cols, COMPRESSION_COLS), _pick(cols, OPS_COLS)
        group_col = _pick(cols, GROUP_COLS)
        if (acc_col or err_col) is None or (comp_col or ops_col) is None:
            out.skipped.append(f"{path.name}: no accuracy/error column with a compression or "
                               "ops column")
            continue
        used = False
        for row in rows:
            acc = _accuracy(row, acc_col, err_col)
            if acc is None:
                continue
            group = f"{path.stem}: {row.get(group_col) or ''}".rstrip(": ") if group_col \
                else path.stem
            for col, target in ((comp_col, out.compression), (ops_col, out.ops)):
                x = _num(row.get(col)) if col else None
                if x is not None and x > 0:
                    target.setdefault(group, []).append((x, acc))
                    used = True
        if used:
            out.sources.append(path.name)
            out.compression_label = _join_label(out.compression_label, comp_col)
            out.ops_label = _join_label(out.ops_label, ops_col)
    return out
