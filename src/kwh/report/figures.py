"""Matplotlib figures rendered off-screen (Agg canvas, no pyplot state) to inline PNG data URIs."""

from __future__ import annotations

import base64
import io
import math

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter

__all__ = ["new_figure", "to_data_uri", "kept_units", "bits_per_layer", "rates",
           "energy_stacked", "log_alpha_histograms", "log_alpha_trajectories", "series_styles",
           "error_against", "reliability"]

COMPUTE, MEMORY = "#4c72b0", "#dd8452"
# Distinct (colour, marker) pairs: 10 colours x 12 markers repeat only after 60 series.
COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3",
           "#8c8c8c", "#ccb974", "#64b5cd")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "p", "d")


def new_figure(width: float = 7.5, height: float = 3.2, ncols: int = 1, nrows: int = 1):
    """A figure on its own Agg canvas and its axes (an array when several)."""
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def to_data_uri(fig: Figure) -> str:
    """The figure as a base64 PNG ``data:`` URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class _PlainLog(LogFormatter):
    """Log-axis tick labels as plain numbers ('2x', '300,000'), not powers of ten; matplotlib
    still picks which minor ticks to label so that they do not crowd."""

    def __init__(self, suffix: str = ""):
        super().__init__(labelOnlyBase=False, minor_thresholds=(2, 0.5))
        self.suffix = suffix

    def _num_to_string(self, x, vmin, vmax):
        return f"{x:,.4g}{self.suffix}" if x < 1e4 else f"{x:,.0f}{self.suffix}"


def _plain_log(axis, suffix: str = "") -> None:
    axis.set_major_formatter(_PlainLog(suffix))
    axis.set_minor_formatter(_PlainLog(suffix))
    axis.set_tick_params(which="minor", labelsize=7)


def _bars(ax, labels: list[str], series: dict[str, list[float]], ylabel: str,
          log: bool = False) -> None:
    x = np.arange(len(labels))
    width = 0.8 / max(len(series), 1)
    for i, (name, vals) in enumerate(series.items()):
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, vals, width, label=name)
        ax.bar_label(bars, labels=[f"{v:g}" for v in vals], fontsize=7, padding=1)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.legend(fontsize=8)


def kept_units(labels: list[str], before: list[int], after: list[int]) -> str:
    """Bars: units (conv filters, fc input units) per layer before and after compression."""
    fig, ax = new_figure()
    _bars(ax[0, 0], labels, {"original": before, "kept": after}, "units (log scale)", log=True)
    ax[0, 0].set_title("Kept units per layer (conv: filters, fc: input units)", fontsize=10)
    return to_data_uri(fig)


def bits_per_layer(labels: list[str], bits: list[int]) -> str:
    """Bars: total bits per weight (sign included) per layer, float32's 32 dashed."""
    fig, ax = new_figure()
    a = ax[0, 0]
    bars = a.bar(np.arange(len(labels)), bits, 0.6, color=COMPUTE)
    a.bar_label(bars, labels=[str(b) for b in bits], fontsize=8, padding=1)
    a.axhline(32, color="grey", lw=0.8, ls="--")
    a.set_xticks(np.arange(len(labels)), labels, fontsize=8)
    a.set_ylabel("bits per weight (sign included)")
    a.set_ylim(0, 34)
    a.set_title("Total bits per weight, per layer (dashed: float32)", fontsize=10)
    return to_data_uri(fig)


def rates(names: list[str], values: list[float | None]) -> str:
    """Horizontal bars: how many times smaller each measure got (log scale, 1x = unchanged)."""
    fig, ax = new_figure(height=0.5 * len(names) + 1.0)
    a = ax[0, 0]
    y = np.arange(len(names))[::-1]
    vals = [v if v else np.nan for v in values]
    bars = a.barh(y, vals, 0.6, color=COMPUTE)
    a.bar_label(bars, labels=["n/a" if not v else (f"{v:.2f}x" if v < 10 else f"{v:.1f}x")
                              for v in values], fontsize=8, padding=2)
    a.set_yticks(y, names, fontsize=8)
    a.set_xscale("log")
    _plain_log(a.xaxis, "x")
    a.axvline(1, color="grey", lw=0.8)
    a.set_xlim(0.8, max([v for v in values if v] + [2]) * 3)
    a.set_xlabel("dense original / this model (log scale)")
    a.set_title("How many times smaller, against the dense original", fontsize=10)
    return to_data_uri(fig)


def energy_stacked(panels: list[tuple[str, list[str], list[float], list[float]]]) -> str:
    """Stacked bars per layer, compute vs memory, one panel per variant (each its own scale),
    then the variants' totals side by side on a log scale."""
    fig, axes = new_figure(width=3.3 * (len(panels) + 1), height=3.6, ncols=len(panels) + 1)
    for ax, (title, labels, compute, memory) in zip(axes[0], panels):
        x = np.arange(len(labels))
        c, m = np.asarray(compute) * 1e9, np.asarray(memory) * 1e9  # nJ
        ax.bar(x, c, color=COMPUTE, label="compute")
        ax.bar(x, m, bottom=c, color=MEMORY, label="memory")
        ax.set_xticks(x, labels, fontsize=7, rotation=30, ha="right")
        ax.set_title(title, fontsize=8)
        ax.set_ylabel("nJ")
        ax.legend(fontsize=7)
    ax = axes[0, -1]
    x = np.arange(len(panels))
    ax.bar(x - 0.2, [sum(p[2]) * 1e9 for p in panels], 0.4, color=COMPUTE, label="compute")
    ax.bar(x + 0.2, [sum(p[3]) * 1e9 for p in panels], 0.4, color=MEMORY, label="memory")
    ax.set_yscale("log")
    ax.set_xticks(x, [p[0].split("\n")[0].split(" (")[0] for p in panels], fontsize=7)
    ax.set_title("totals (log scale)", fontsize=8)
    ax.set_ylabel("nJ")
    ax.legend(fontsize=7)
    return to_data_uri(fig)


def log_alpha_histograms(layers: list[tuple[str, np.ndarray, float | None]]) -> str:
    """One histogram of log alpha per Bayesian layer, its pruning threshold as a red line."""
    n = len(layers)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = new_figure(width=3.2 * cols, height=2.5 * rows, ncols=cols, nrows=rows)
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.set_visible(False)
            continue
        name, values, threshold = layers[k]
        ax.hist(values, bins=40, color="#55a868")
        if threshold is not None:
            ax.axvline(threshold, color="red", lw=1.2, label=f"threshold {threshold:g}")
            ax.legend(fontsize=7)
        ax.set_title(f"{name} ({values.size} groups)", fontsize=9)
        ax.set_xlabel("log alpha", fontsize=8)
    return to_data_uri(fig)


def log_alpha_trajectories(epochs: list[int], quantiles: dict[str, list[dict]]) -> str:
    """Median and 10-90% band of log alpha per layer over epochs (from the training log)."""
    fig, ax = new_figure()
    a = ax[0, 0]
    for name, qs in quantiles.items():
        med = [q.get("median", np.nan) for q in qs]
        line, = a.plot(epochs, med, label=name)
        a.fill_between(epochs, [q.get("q10", np.nan) for q in qs],
                       [q.get("q90", np.nan) for q in qs], color=line.get_color(), alpha=0.2)
    a.set_xlabel("epoch")
    a.set_ylabel("log alpha")
    a.set_title("log alpha per layer over training (line: median, band: 10-90%)", fontsize=10)
    a.legend(fontsize=7)
    return to_data_uri(fig)


def series_styles(n: int) -> list[tuple[str, str]]:
    """(colour, marker) of n series, no two alike for n <= 60."""
    return [(COLOURS[i % len(COLOURS)], MARKERS[i % len(MARKERS)]) for i in range(n)]


def error_against(series: dict[str, list[tuple[float, float]]], xlabel: str, title: str,
                  suffix: str, model: tuple[str, float | None, float | None],
                  dense: tuple[str, float | None, float | None]) -> str:
    """Test error (y) against compression or ops (x, log): this model (a star) and its dense
    original (a hollow circle), each a vertical line where its error is unknown (left out
    where its x is), and the rows of a results file, one (colour, marker) per method."""
    fig, ax = new_figure(width=10.5, height=3.8)
    a = ax[0, 0]
    for (name, pts), (colour, marker) in zip(series.items(), series_styles(len(series))):
        a.scatter([p[0] for p in pts], [p[1] for p in pts], color=colour, marker=marker, s=28,
                  label=name)
    for (name, x, err), style, line in (
            (dense, dict(marker="o", facecolors="none", edgecolors="black", s=70), ":"),
            (model, dict(marker="*", c="black", s=180), "--")):
        if x is None:
            continue
        if err is None:
            a.axvline(x, color="black", ls=line, lw=1.2, label=f"{name} (test error unknown)")
        else:
            a.scatter([x], [err], zorder=5, label=name, **style)
    a.set_xscale("log")
    _plain_log(a.xaxis, suffix)
    a.set_xlabel(xlabel)
    a.set_ylabel("test error (%)")
    a.set_title(title, fontsize=10)
    a.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return to_data_uri(fig)


def reliability(curves: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, float]]) -> str:
    """Reliability diagrams: accuracy per confidence bin against the diagonal; ECE in the title."""
    fig, axes = new_figure(width=3.6 * len(curves), height=3.4, ncols=len(curves))
    for ax, (name, edges, acc, count, ece) in zip(axes[0], curves):
        centers = (edges[:-1] + edges[1:]) / 2
        full = count > 0
        ax.bar(centers[full], acc[full], width=np.diff(edges)[full], edgecolor="black",
               color="#8172b3", lw=0.5, label="accuracy")
        ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{name}, ECE {100 * ece:.2f}%", fontsize=8)
        ax.legend(fontsize=7, loc="upper left")
    return to_data_uri(fig)
