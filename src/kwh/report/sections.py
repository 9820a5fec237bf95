"""The report's sections: each returns a :class:`Section` (figures and tables, or a note)."""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from html import escape
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kwh.energy.compare import Comparison
from kwh.energy.format import joules
from kwh.energy.measure import Unavailable

from . import figures
from .results import read_curves

__all__ = ["Section", "overview", "architecture", "log_alpha", "bits", "rates", "energy",
           "curves", "reliability", "SECTION_IDS"]

SECTION_IDS = ("overview", "architecture", "log-alpha", "bits", "rates", "energy", "curves",
               "reliability")


@dataclass
class Section:
    """One part of the page: an id, a title and its HTML body (``available`` False: a note)."""

    id: str
    title: str
    body: str
    available: bool = True


def img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{escape(alt)}">'


def note(text: str) -> str:
    return f'<p class="na">{escape(text)}</p>'


def table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _na(id_: str, title: str, why: str) -> Section:
    return Section(id_, title, note(f"Not available because {why}."), available=False)


def _layer_labels(summary: dict) -> list[str]:
    return [f"{d['name']}:{d['type']}" for d in summary["layers"]]


# ----------------------------------------------------------------------------- sections


def overview(label: str, summary: dict | None, file_bytes: int | None) -> Section:
    """What the model is: the compression summary as text, or why there is none."""
    parts = [f"<p>Model: <b>{escape(label)}</b>"
             + (f", file {file_bytes:,} bytes on disk" if file_bytes is not None else "")
             + "</p>"]
    if summary is None:
        parts.append(note("No compression summary: MODEL is not a kwh-compressed model, so the "
                          "sections that need one say so below."))
    else:
        try:
            from kwh.compress import format_summary
            text = format_summary(summary)
        except (ImportError, KeyError, TypeError):
            text = json.dumps({k: v for k, v in summary.items() if k != "layers"}, indent=1)
        parts.append(f"<pre>{escape(text)}</pre>")
    return Section("overview", "Overview", "".join(parts))


def architecture(summary: dict | None) -> Section:
    """Kept units per layer, before and after."""
    title = "Architecture before and after"
    if not summary or not summary.get("layers"):
        return _na("architecture", title, "MODEL carries no compression summary")
    L = summary["layers"]
    uri = figures.kept_units(_layer_labels(summary), [d["arch_original"] for d in L],
                             [d["arch"] for d in L])
    rows = [[f"{d['name']}:{d['type']}", "x".join(map(str, d["shape_original"])),
             "x".join(map(str, d["shape"])), d["arch_original"], d["arch"]] for d in L]
    body = (f"<p>{escape(summary['architecture_original'])} &rarr; "
            f"<b>{escape(summary['architecture'])}</b> (conv: kept filters, fc: kept input "
            "units)</p>" + img(uri, "kept units per layer")
            + table(["layer", "weight shape before", "after", "units before", "kept"], rows))
    return Section("architecture", title, body)


def log_alpha(bayes_model: nn.Module | None, log_records: list[dict] | None,
              summary: dict | None, why_no_checkpoint: str) -> Section:
    """Histograms of log alpha with thresholds (checkpoint), else their course (training log)."""
    title = "log alpha and pruning thresholds"
    thresholds = {d["name"]: d.get("threshold") for d in (summary or {}).get("layers", [])}
    if bayes_model is not None:
        from kwh.bayes import bayes_layers
        layers = []
        for name, layer in bayes_layers(bayes_model):
            la = layer.prior.log_alpha().detach().double().cpu().numpy().ravel()
            t = layer.threshold if layer.threshold is not None else layer.prior.threshold
            layers.append((name, la, None if t is None else float(t)))
        if layers:
            uri = figures.log_alpha_histograms(layers)
            return Section("log-alpha", title, "<p>From the Bayesian checkpoint: one value per "
                           "group (per weight for log-uniform); red: the threshold above which "
                           "it is pruned.</p>" + img(uri, "log alpha histograms"))
    epochs = [r for r in (log_records or []) if r.get("event") == "epoch" and r.get("log_alpha")]
    if epochs:
        names = list(epochs[-1]["log_alpha"])
        q = {n: [r["log_alpha"].get(n, {}) for r in epochs] for n in names}
        uri = figures.log_alpha_trajectories([r["epoch"] for r in epochs], q)
        last = epochs[-1]
        rows = [[n, last.get("alive", {}).get(n, ""), last.get("total", {}).get(n, ""),
                 thresholds.get(n, "")] for n in names]
        return Section("log-alpha", title, note(
            f"Histograms not available because {why_no_checkpoint}; the training log has "
            "log-alpha quantiles per epoch instead.") + img(uri, "log alpha over epochs")
            + table(["layer", "kept (last epoch)", "groups", "threshold"], rows))
    why = why_no_checkpoint + " and no training log with log-alpha statistics was found"
    s = _na("log-alpha", title, why)
    if thresholds:
        s.body += table(["layer", "threshold used"], [[k, v] for k, v in thresholds.items()])
    return s


def bits(summary: dict | None) -> Section:
    """Bits per weight, per layer."""
    title = "Bits per layer"
    if not summary or not summary.get("layers"):
        return _na("bits", title, "MODEL carries no compression summary")
    if not summary.get("quantized", True):
        return _na("bits", title, "the model was compressed without quantization (fp32 weights)")
    L = summary["layers"]
    uri = figures.bits_per_layer(_layer_labels(summary), [d["bits"] for d in L],
                                 [d.get("exp_bits", 0) for d in L],
                                 [d.get("frac_bits", 0) for d in L])
    return Section("bits", title, f"<p>Bits {escape(summary.get('bits', ''))} (1 sign + e "
                   "exponent + t fraction bits, from the posterior variance, Louizos et al. "
                   "2017).</p>" + img(uri, "bits per layer"))


def rates(summary: dict | None, file_bytes: int | None) -> Section:
    """Compression rates as the paper counts them, and the real file size."""
    title = "Compression rates"
    if not summary or "rates" not in summary:
        return _na("rates", title, "MODEL carries no compression summary")
    r = summary["rates"]

    def x(v):
        return "n/a" if v is None else f"{v:,.1f}x"

    rows = [["pruning (" + str(r.get("kind", "")) + ")", x(r.get("pruning"))],
            ["fast prediction", x(r.get("fast_prediction"))],
            ["maximum compression", x(r.get("max_compression"))],
            ["weights", f"{summary['weights_original']:,} -> {summary['weights_pruned_dense']:,}"
                        f" ({summary['nonzero']:,} nonzero)"],
            ["MACs", f"{summary['macs_original']:,} -> {summary['macs_nonzero']:,} nonzero"]]
    if file_bytes is not None:
        orig = summary.get("size_fp32_original_bytes")
        rows.append(["file on disk", f"{file_bytes:,} B" + (
            f" ({orig / file_bytes:,.1f}x smaller than {orig:,} B of fp32)" if orig else "")])
    src = r.get("max_compression_source")
    return Section("rates", title, table(["rate", "value"], rows)
                   + (f"<p class='small'>maximum compression from: {escape(src)}</p>"
                      if src else ""))


def _measured(m) -> str:
    if m is None:
        return "skipped"
    if isinstance(m, Unavailable):
        return "not measured: " + "; ".join(m.reasons)
    return (f"{joules(m.total_per_inference_j)} total, {joules(m.dynamic_per_inference_j)} "
            f"dynamic per inference ({m.counter}, {m.window_s:.1f} s window)")


def energy(comp: Comparison | None, why: str = "") -> Section:
    """Stacked bars per layer (compute vs memory) per variant, and the totals."""
    title = "Energy per layer (modelled)"
    if comp is None:
        return _na("energy", title, why or "the energy model was not run")
    panels = [(f"{v.label}\n{joules(v.estimate.total_j)} per {v.estimate.unit}",
               [l.name.split(" ")[0] for l in v.estimate.layers],
               [l.compute_j for l in v.estimate.layers],
               [l.memory_j for l in v.estimate.layers]) for v in comp.variants]
    uri = figures.energy_stacked(panels)
    rows = []
    for v in comp.variants:
        e = v.estimate
        rows.append([v.label, e.unit, joules(e.total_j), joules(e.compute_j),
                     joules(e.memory_j),
                     "n/a" if e.accuracy is None else f"{100 * e.accuracy:.2f}%",
                     joules(e.per_correct_j),
                     "n/a" if e.correct_per_kwh is None else f"{e.correct_per_kwh:.3g}",
                     f"{e.landauer_ratio:.3g}", _measured(v.measured)])
    first = comp.variants[0].estimate
    body = (img(uri, "energy per layer, compute vs memory")
            + table(["variant", "per", "energy", "compute", "memory", "accuracy",
                     "per correct", "correct / kWh", "x Landauer", "measured"], rows)
            + f"<p class='small'>Table: {escape(first.table)}; assumptions: "
            + escape(", ".join(f"{k}={v}" for k, v in first.config.items()))
            + ". " + escape(" ".join(n for v in comp.variants for n in v.estimate.notes))
            + "</p>")
    return Section("energy", title, body)


def curves(results_dir: Path | None) -> Section:
    """Accuracy against compression and against ops, from benchmark CSVs."""
    title = "Accuracy vs compression and vs operations"
    if results_dir is None:
        return _na("curves", title, "no benchmark results folder was found (give --results DIR)")
    c = read_curves(results_dir)
    parts = []
    if c.compression:
        parts.append(img(figures.scatter_curves(
            c.compression, c.compression_label, "accuracy %", "Accuracy vs compression"),
            "accuracy vs compression"))
    if c.ops:
        parts.append(img(figures.scatter_curves(
            c.ops, c.ops_label, "accuracy %", "Accuracy vs operations"), "accuracy vs ops"))
    if not parts:
        why = (f"no CSV in {results_dir} has an accuracy or error column together with a "
               "compression or ops column" + (f" ({'; '.join(c.skipped)})" if c.skipped else ""))
        return _na("curves", title, why)
    return Section("curves", title, "".join(parts)
                   + f"<p class='small'>From {escape(', '.join(c.sources))} in "
                     f"{escape(str(results_dir))}.</p>")


def _reliability_data_fn():
    """The uncertainty module's reliability-data function (the hook), if present."""
    for module, attr in (("kwh.uncertainty", "reliability_data"),
                         ("kwh.metrics", "reliability_data")):
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            continue
    return None


@torch.no_grad()
def _probs(model: nn.Module, x: torch.Tensor, samples: int) -> tuple[torch.Tensor, str]:
    """Posterior predictive (kwh.predict) of a Bayesian model, else the softmax."""
    import kwh
    predict = getattr(kwh, "predict", None)
    bayesian = any(hasattr(m, "prior") for m in model.modules())
    if bayesian and predict is not None:
        return predict(model, x, samples).probs, f"posterior predictive, {samples} samples"
    model.eval()
    return torch.softmax(model(x).double(), -1), "softmax of the deterministic model"


def reliability(models: list[tuple[str, nn.Module]], data: tuple | None, samples: int,
                why_no_data: str) -> Section:
    """Reliability diagrams of the Bayesian model (and the compressed one) on test data."""
    title = "Calibration (reliability diagram)"
    fn = _reliability_data_fn()
    if fn is None:
        return _na("reliability", title, "no reliability_data function is installed "
                   "(kwh.uncertainty / kwh.metrics)")
    if data is None:
        return _na("reliability", title, why_no_data)
    if not models:
        return _na("reliability", title, "there is no model to evaluate")
    x, y = data
    curves_, rows = [], []
    for name, model in models:
        p, how = _probs(model, x, samples)
        r = fn(p, y)
        curves_.append((f"{name}\n{how}", np.asarray(r.edges), np.asarray(r.accuracy),
                        np.asarray(r.count), float(r.ece)))
        rows.append([name, how, f"{100 * float(r.ece):.2f}%"])
    uri = figures.reliability(curves_)
    return Section("reliability", title, img(uri, "reliability diagrams")
                   + table(["model", "predictive", "ECE"], rows)
                   + f"<p class='small'>{len(y):,} test examples; bars: accuracy per "
                     "confidence bin, dashed: perfect calibration.</p>")
