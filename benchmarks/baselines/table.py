"""Rows of the paper table: rates computed as kwh_summary does, paper rows, markdown and CSV."""

from __future__ import annotations

import csv
import io
import math
import statistics

import torch
from torch import nn

from benchmarks.baselines.common import weighted_layers

COLUMNS = ["method", "seed", "error_pct", "arch", "bits", "nonzero_pct", "pruning", "fast_prediction",
           "max_compression", "max_compression_huffman", "file_bytes", "macs", "macs_nonzero",
           "images_per_s", "wall_s", "epochs"]
HEADERS = ["method", "seed", "error %", "pruned arch.", "bits", "|w!=0|/|w| %", "pruning",
           "fast pred.", "max compr. (file payload)", "max compr. (Huffman CSR, weights)", "file bytes", "MACs",
           "MACs (w!=0)", "images/s", "wall s", "epochs"]

# Louizos, Ullrich, Welling 2017, Table 1 (REFERENCES.md sec. 5): (method, arch, bits,
# pruning, fast prediction, max compression, error %).
PAPER = {
    "lenet300": [("Deep Compression", "-", "-", 6, None, 40, 1.6),
                 ("Sparse VD", "512-114-72", "8-11-14", 21, 84, 113, 1.8),
                 ("BC-GNJ", "278-98-13", "8-9-14", 9, 36, 58, 1.8),
                 ("BC-GHS", "311-86-14", "13-11-10", 9, 23, 59, 1.9)],
    "lenet5": [("Deep Compression", "-", "-", 6, None, 39, 0.7),
               ("Soft weight sharing", "-", "-", 100, None, 162, 1.0),
               ("Sparse VD", "14-19-242-131", "13-10-8-12", 63, 228, 365, 1.0),
               ("BC-GNJ", "8-13-88-13", "18-10-7-9", 108, 361, 573, 1.0),
               ("BC-GHS", "5-10-76-16", "10-10-14-13", 156, 419, 771, 1.0)],
    "vgg": [("BC-GNJ", "15 layers", "5-11 bits", 14, 56, 95, 8.6),
            ("BC-GHS", "15 layers", "5-17 bits", 18, 59, 116, 9.2)],
}
PAPER_DENSE_ERROR = {"lenet300": 1.6, "lenet5": 0.9, "vgg": 8.4}


def arch_of(model: nn.Module) -> str:
    """Kept filters (conv) or kept input units (fc) per layer, as the paper writes them."""
    parts = []
    for m in weighted_layers(model):
        nz = m.weight != 0
        parts.append(int(nz.flatten(1).any(1).sum()) if isinstance(m, nn.Conv2d) else int(nz.any(0).sum()))
    return "-".join(map(str, parts))


def rates(model: nn.Module, w_orig: int, bits: list[int], structured: bool,
          payload_bytes: int) -> dict:
    """Pruning, fast prediction and max compression, counted as kwh.compress.summary counts them.

    structured: the model is physically smaller (its weight tensors are the pruned dense
    architecture); else CSR with a value and an index per nonzero. ``payload_bytes``: the
    entropy-coded tensor bytes of the method's real file (weights, indices, biases), as
    kwh_summary's max compression counts the .kwh payload.
    """
    layers = weighted_layers(model)
    nnz = [int(torch.count_nonzero(m.weight)) for m in layers]
    dense = [m.weight.numel() for m in layers]
    if structured:
        pruning = w_orig / sum(dense)
        fast = 32 * w_orig / sum(d * b for d, b in zip(dense, bits))
    elif not sum(nnz):  # every weight pruned (a degenerate short run)
        pruning = fast = math.inf
    else:
        pruning = w_orig / (2 * sum(nnz))
        fast = 32 * w_orig / sum(2 * n * b for n, b in zip(nnz, bits))
    maxc = 32 * w_orig / (8 * payload_bytes)
    return {"pruning": pruning, "fast_prediction": fast, "max_compression": maxc,
            "nonzero_pct": 100 * sum(nnz) / w_orig}


def _fmt(key: str, v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, str):  # already formatted (the spread's "mean ± sd")
        return v
    if key in ("pruning", "fast_prediction", "max_compression", "max_compression_huffman"):
        return f"{v:,.1f}"
    if key in ("error_pct", "nonzero_pct"):
        return f"{v:.2f}"
    if key in ("images_per_s", "wall_s"):
        return f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def markdown(rows: list[dict], columns=COLUMNS, headers=HEADERS) -> str:
    """A markdown table of ``rows``."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_fmt(k, r.get(k)) for k in columns) + " |" for r in rows]
    return "\n".join(lines)


def paper_markdown(net: str) -> str:
    """The paper's rows for ``net`` (error % in parentheses as in Table 1)."""
    if net not in PAPER:
        return f"The paper has no {net} row (its Table 1: LeNet-300-100, LeNet-5-Caffe, VGG)."
    lines = ["| method | pruned arch. | bits | pruning | fast pred. | max compr. | error % |",
             "|---|---|---|---|---|---|---|",
             f"| dense (paper) | - | 32 | 1 | 1 | 1 | {PAPER_DENSE_ERROR[net]} |"]
    for m, a, b, p, f, c, e in PAPER[net]:
        lines.append(f"| {m} | {a} | {b} | {p} | {'-' if f is None else f} | {c} | {e} |")
    return "\n".join(lines)


def csv_text(rows: list[dict]) -> str:
    """CSV of ``rows`` with the COLUMNS header."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k) for k in COLUMNS})
    return buf.getvalue()


SPREAD = ["error_pct", "nonzero_pct", "pruning", "fast_prediction", "max_compression",
          "max_compression_huffman", "file_bytes"]


def spread(rows: list[dict]) -> list[dict]:
    """Per method over seeds: 'mean ± sd' of the numeric columns (methods with >= 2 seeds)."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == method]
        if len(rs) < 2:
            continue
        d = {"method": method, "seeds": len(rs)}
        for k in SPREAD:
            vals = [r[k] for r in rs if r.get(k) is not None]
            if vals:
                d[k] = f"{statistics.mean(vals):,.2f} ± {statistics.stdev(vals):,.2f}"
        out.append(d)
    return out
