"""Plots of the paper table: error vs compression, alive units over epochs, log-alpha histograms."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.baselines.table import PAPER  # noqa: E402


def error_vs_compression(rows: list[dict], net: str, path) -> None:
    """Test error against maximum compression rate (log scale), every method, paper points too."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for method in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == method]
        ax.scatter([r["max_compression"] for r in rs], [r["error_pct"] for r in rs], label=method, s=40)
    for m, _, _, _, _, c, e in PAPER.get(net, []):
        ax.scatter([c], [e], marker="x", color="grey")
        ax.annotate(f"paper {m}", (c, e), fontsize=7, color="grey", xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("maximum compression rate (x, the table's max compr. column)")
    ax.set_ylabel("test error (%)")
    ax.set_title(f"{net}: error vs compression (x = paper, Table 1)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def alive_units(histories: dict[str, list[dict]], layer_names: list[str], path) -> None:
    """Alive units (fc: input units, conv: filters) per layer over epochs, one panel per prior."""
    fig, axes = plt.subplots(1, len(histories), figsize=(4.5 * len(histories), 3.8), squeeze=False)
    for ax, (prior, hist) in zip(axes[0], histories.items()):
        epochs = [h["epoch"] for h in hist]
        for i, name in enumerate(layer_names):
            ax.plot(epochs, [h["alive"][i] for h in hist], marker=".", label=name)
        ax.set_yscale("log")
        ax.set_xlabel("Bayesian epoch")
        ax.set_ylabel("alive units")
        ax.set_title(prior)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def log_alpha_histograms(hists: dict[str, list[dict]], path) -> None:
    """Histogram of log alpha per layer at the end, one panel per prior, thresholds drawn."""
    fig, axes = plt.subplots(1, len(hists), figsize=(4.5 * len(hists), 3.8), squeeze=False)
    for ax, (prior, layers) in zip(axes[0], hists.items()):
        for d in layers:
            edges, counts = d["edges"], d["counts"]
            ax.stairs(counts, edges, label=d["layer"])
        for t in sorted({d["threshold"] for d in layers}):
            ax.axvline(t, color="red", linestyle="--", linewidth=1)
        ax.set_yscale("log")
        ax.set_xlabel("log alpha (red: pruning threshold)")
        ax.set_ylabel("count")
        ax.set_title(prior)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
