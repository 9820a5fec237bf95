"""Rows of a results CSV (``kwh report --compare``) for one network and data set.

The CSVs come from different benchmarks and papers, so columns are found by name: an error
column (or an accuracy column, turned into error %), a compression column, an ops column and
an optional method column that groups the points. The network and the data set of the rows
come from a column when there is one, else from the file name
(``paper_table_lenet300_mnist.csv``); rows of other networks or data sets are left out, so a
chart never mixes LeNet-300 with LeNet-5, or MNIST with Fashion-MNIST.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Comparison", "read_comparison", "network_family", "data_name", "axis_label",
           "ACCURACY_COLS", "ERROR_COLS", "COMPRESSION_COLS", "OPS_COLS", "GROUP_COLS",
           "NETWORK_COLS", "DATA_COLS", "FAMILIES", "DATA_SETS"]

ACCURACY_COLS = ("accuracy", "test_accuracy", "acc", "accuracy_pct")
ERROR_COLS = ("error_pct", "error", "test_error", "error_after_quantization")
# Compression columns in order of preference; each maps to a rate of the model's summary.
COMPRESSION_COLS = ("max_compression", "fast_prediction", "pruning", "compression",
                    "compression_rate", "rate")
OPS_COLS = ("macs_nonzero", "macs", "mults", "ops", "ops_per_frame", "mean_per_frame",
            "energy_per_inference_j", "energy_j")
GROUP_COLS = ("method", "name", "variant", "prior", "setting")
NETWORK_COLS = ("network", "net", "model", "architecture_name")
DATA_COLS = ("data", "dataset", "data_set", "train_data")
FAMILIES = ("lenet300", "lenet5", "vgg")
DATA_SETS = ("mnist", "fashion-mnist", "cifar10")

_AXIS = {
    "max_compression": "weights' bits, float32 / .kwh payload (paper: max compression)",
    "fast_prediction": "weights' bits, float32 / pruned at their bits (paper: fast prediction)",
    "pruning": "weights, original / kept (paper: pruning)",
    "compression": "compression rate", "compression_rate": "compression rate",
    "rate": "compression rate",
    "macs_nonzero": "multiply-accumulates per inference (nonzero weights)",
    "macs": "multiply-accumulates per inference",
    "mults": "multiplies per inference",
    "ops": "operations per inference",
    "ops_per_frame": "operations per frame", "mean_per_frame": "operations per frame (mean)",
    "energy_per_inference_j": "energy per inference (J)", "energy_j": "energy per inference (J)",
}


def axis_label(column: str) -> str:
    """A readable axis label for a CSV column: 'macs_nonzero' -> 'multiply-accumulates ...'."""
    return _AXIS.get(column.strip().lower(), column.replace("_", " "))


def _squash(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def network_family(text: str | None) -> str | None:
    """'LeNet-300-100', 'lenet300', 'vgg (width 1)' -> 'lenet300' / 'lenet5' / 'vgg'; else None."""
    s = _squash(text or "")
    return next((f for f in FAMILIES if s.startswith(f)), None)


def data_name(text: str | None) -> str | None:
    """'MNIST', 'fashion_mnist', 'FMNIST', 'CIFAR-10' -> a kwh data set name; else None."""
    s = _squash(text or "")
    return {"mnist": "mnist", "fashionmnist": "fashion-mnist", "fmnist": "fashion-mnist",
            "cifar10": "cifar10"}.get(s)


def _from_file_name(path: Path) -> tuple[str | None, str | None]:
    """(network, data set) named by the tokens of a file name, e.g. paper_table_lenet5_mnist."""
    tokens = path.stem.split("_")
    nets = {network_family(t) for t in tokens} - {None}
    data = {data_name(t) for t in tokens} - {None}
    return (nets.pop() if len(nets) == 1 else None), (data.pop() if len(data) == 1 else None)


@dataclass
class Comparison:
    """The rows of one network and data set: (x, error %) per method, for one compression and
    one ops column, and what was left out."""

    source: str
    network: str
    data: str | None
    compression_col: str | None = None
    ops_col: str | None = None
    compression: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    ops: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    rows_used: int = 0
    left_out: dict[str, int] = field(default_factory=dict)  # reason -> rows


def _num(v: str | None) -> float | None:
    try:
        x = float(v) if v not in (None, "") else None
    except ValueError:
        return None
    return x if x is not None and math.isfinite(x) else None


def _pick(cols: dict[str, str], names: tuple[str, ...]) -> str | None:
    return next((cols[n] for n in names if n in cols), None)


def _error_pct(row: dict, err_col: str | None, acc_col: str | None) -> float | None:
    """Test error in percent from an error column (fraction or %) or an accuracy column."""
    if err_col is not None and (e := _num(row.get(err_col))) is not None:
        return e if "pct" in err_col.lower() or e > 1.0 else 100 * e
    if acc_col is not None and (a := _num(row.get(acc_col))) is not None:
        return 100 - (a if "pct" in acc_col.lower() or a > 1.0 else 100 * a)
    return None


def read_comparison(path: str | Path, network: str, data: str | None = None) -> Comparison:
    """The rows of ``path`` about ``network`` (a family: lenet300, lenet5, vgg) on ``data``.

    ``data`` None: the only data set among the network's rows (an error when there are
    several). Raises ValueError, naming what the file holds, when no row is left.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--compare: results file not found: {path}")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"--compare {path}: not a readable CSV ({e})") from None
    if not rows:
        raise ValueError(f"--compare {path}: the file has no rows")
    cols = {c.strip().lower(): c for c in rows[0].keys() if c}
    err_col, acc_col = _pick(cols, ERROR_COLS), _pick(cols, ACCURACY_COLS)
    comp_col, ops_col = _pick(cols, COMPRESSION_COLS), _pick(cols, OPS_COLS)
    if (err_col or acc_col) is None or (comp_col or ops_col) is None:
        raise ValueError(f"--compare {path}: needs an error or accuracy column ("
                         f"{', '.join(ERROR_COLS + ACCURACY_COLS)}) and a compression or ops "
                         f"column ({', '.join(COMPRESSION_COLS + OPS_COLS)}); it has "
                         f"{', '.join(cols)}")
    net_col, data_col, group_col = (_pick(cols, NETWORK_COLS), _pick(cols, DATA_COLS),
                                    _pick(cols, GROUP_COLS))
    file_net, file_data = _from_file_name(path)

    def net_of(row):
        return (network_family(row.get(net_col)) if net_col else None) or file_net

    def data_of(row):
        return (data_name(row.get(data_col)) if data_col else None) or file_data

    if all(net_of(r) is None for r in rows):
        raise ValueError(f"--compare {path}: cannot tell which network its rows are about: no "
                         f"network column ({', '.join(NETWORK_COLS)}) naming one of "
                         f"{', '.join(FAMILIES)}, and none in the file name")
    mine = [r for r in rows if net_of(r) == network]
    if not mine:
        held = sorted({net_of(r) for r in rows} - {None})
        raise ValueError(f"--compare {path}: no rows for this model's network {network!r}; "
                         f"the file holds {', '.join(held)}")
    sets = sorted({data_of(r) for r in mine} - {None})
    if data is None:
        if len(sets) > 1:
            raise ValueError(f"--compare {path}: the {network} rows cover {', '.join(sets)}; "
                             "give --data NAME to compare on one of them")
        data = sets[0] if sets else None
    elif sets and data not in sets:
        raise ValueError(f"--compare {path}: no {network} rows on {data}; the file has "
                         f"{network} rows on {', '.join(sets)}")
    out = Comparison(path.name, network, data, comp_col, ops_col)

    def leave(reason: str):
        out.left_out[reason] = out.left_out.get(reason, 0) + 1

    for row in rows:
        if net_of(row) != network:
            leave(f"other networks ({net_of(row) or 'not stated'})")
            continue
        if data is not None and data_of(row) not in (data, None):
            leave(f"{network} on other data sets ({data_of(row)})")
            continue
        err = _error_pct(row, err_col, acc_col)
        if err is None:
            leave("no error or accuracy value")
            continue
        group = (row.get(group_col) or "").strip() if group_col else ""
        group = group or path.stem
        used = False
        for col, target in ((comp_col, out.compression), (ops_col, out.ops)):
            x = _num(row.get(col)) if col else None
            if x is not None and x > 0:
                target.setdefault(group, []).append((x, err))
                used = True
        if used:
            out.rows_used += 1
        else:
            leave("no compression or ops value")
    return out
