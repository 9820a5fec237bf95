"""The report's sections: each returns a :class:`Section` (figures and tables, or a note).

A section that needs more than MODEL itself says in one line which option gives it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from html import escape

import numpy as np
import torch
from torch import nn

from kwh.bayes import bayes_layers, predict
from kwh.compress.summary import format_file_line, format_summary
from kwh.energy.compare import Comparison
from kwh.energy.format import joules, ratio
from kwh.energy.measure import Unavailable
from kwh.energy.sensitivity import MemorySensitivity
from kwh.metrics import reliability_data

from . import figures
from .results import Comparison as Rows
from .results import axis_label

__all__ = ["Section", "overview", "architecture", "log_alpha", "bits", "rates", "energy",
           "comparison", "reliability", "SECTION_IDS", "data_hint", "NO_SUMMARY"]

SECTION_IDS = ("overview", "architecture", "log-alpha", "bits", "rates", "energy", "comparison",
               "reliability")
NO_SUMMARY = ("MODEL carries no compression summary (give a .kwh file written by "
              "kwh compress)")


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


def small(text: str) -> str:
    return f'<p class="small">{escape(text)}</p>'


def table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _na(id_: str, title: str, why: str) -> Section:
    return Section(id_, title, note(f"Not available because {why}."), available=False)


def _needs(id_: str, title: str, line: str) -> Section:
    """A section that needs an option: one line saying which, and what it gives."""
    return Section(id_, title, note(line), available=False)


def _layer_labels(summary: dict) -> list[str]:
    return [f"{d['name']}:{d['type']}" for d in summary["layers"]]


def data_hint(summary: dict | None) -> str:
    """The --data option to suggest for a model of this input shape."""
    shape = tuple((summary or {}).get("input_shape") or ())
    if shape == (1, 28, 28):
        return "--data mnist (or fashion-mnist, the data set it was trained on)"
    if shape == (3, 32, 32):
        return "--data cifar10"
    return "--data NAME (mnist, fashion-mnist or cifar10)"


# ----------------------------------------------------------------------------- sections


def overview(label: str, summary: dict | None, file_bytes: int | None,
             headlines: list[str]) -> Section:
    """What the model is: the headline figures in words, the compression summary as text."""
    parts = [f"<p>Model: <b>{escape(label)}</b>"
             + (f", file {file_bytes:,} bytes on disk" if file_bytes is not None else "")
             + "</p>"]
    if headlines:
        parts.append("<ul>" + "".join(f"<li>{escape(h)}</li>" for h in headlines) + "</ul>")
    if summary is None:
        parts.append(note("No compression summary: MODEL is not a kwh-compressed model, so the "
                          "sections that need one say so below."))
    else:
        try:
            text = format_summary(summary)
            if file_bytes is not None:
                text += "\n" + format_file_line(summary, file_bytes)
        except (KeyError, TypeError):  # a summary of another layout: shown as it is
            text = json.dumps({k: v for k, v in summary.items() if k != "layers"}, indent=1)
        parts.append(f"<pre>{escape(text)}</pre>")
    return Section("overview", "Overview", "".join(parts))


def architecture(summary: dict | None) -> Section:
    """Kept units per layer, before and after."""
    title = "Architecture before and after"
    if not summary or not summary.get("layers"):
        return _na("architecture", title, NO_SUMMARY)
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
              summary: dict | None) -> Section:
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
    need = ("Give --checkpoint RUN (the run folder of kwh train) for the posterior's log-alpha "
            "histograms: a .kwh file keeps the pruned weights, not the posterior.")
    epochs = [r for r in (log_records or []) if r.get("event") == "epoch" and r.get("log_alpha")]
    if epochs:
        names = list(epochs[-1]["log_alpha"])
        q = {n: [r["log_alpha"].get(n, {}) for r in epochs] for n in names}
        uri = figures.log_alpha_trajectories([r["epoch"] for r in epochs], q)
        last = epochs[-1]
        rows = [[n, last.get("alive", {}).get(n, ""), last.get("total", {}).get(n, ""),
                 thresholds.get(n, "")] for n in names]
        return Section("log-alpha", title, note(
            need + " The training log has log-alpha quantiles per epoch instead.")
            + img(uri, "log alpha over epochs")
            + table(["layer", "kept (last epoch)", "groups", "threshold"], rows))
    s = _needs("log-alpha", title, need)
    if thresholds:
        s.body += table(["layer", "threshold used"], [[k, v] for k, v in thresholds.items()])
    return s


def bits(summary: dict | None) -> Section:
    """Total bits per weight, per layer; the fixed-point split in the table and its note."""
    title = "Bits per layer"
    if not summary or not summary.get("layers"):
        return _na("bits", title, NO_SUMMARY)
    if not summary.get("quantized", True):
        return _na("bits", title, "the model was compressed without quantization (fp32 weights)")
    L = summary["layers"]
    uri = figures.bits_per_layer(_layer_labels(summary), [d["bits"] for d in L])
    rows = []
    for label, d in zip(_layer_labels(summary), L):
        t, e = d.get("frac_bits", 0), d.get("exp_bits", 0)
        rows.append([label, d["bits"], d["bits"] - 1, t, e, f"2^-{t} = {2.0 ** -t:.3g}",
                     f"2^{e} = {2.0 ** e:.3g}", d.get("bits_source", "")])
    body = (f"<p>Bits per weight {escape(summary.get('bits', ''))}, chosen from the posterior "
            "variance (Louizos et al. 2017, sec. 4); biases and norms go on their own "
            "fixed-point grids (kwh.compress.floats) or stay float32.</p>"
            + img(uri, "total bits per layer")
            + table(["layer", "total bits", "magnitude bits m", "fraction bits t",
                     "e = m - t", "step", "every |w| below", "from"], rows)
            + small("Each weight is a signed integer q times the step 2^-t, stored in "
                    "1 sign + m magnitude bits = 1 + e + t bits. t sets the resolution; e is "
                    "negative when every weight is below 2^e in magnitude, and then the top -e "
                    "fraction bits are always zero and are not stored (which is how a layer "
                    "with t = 8 needs only 7 bits when e = -2)."))
    return Section("bits", title, body)


def rates(summary: dict | None, file_bytes: int | None) -> Section:
    """What shrank against the dense original: each rate named for what it counts, the
    paper's name beside it, and the real file size."""
    title = "What shrank, against the dense original"
    if not summary or "rates" not in summary:
        return _na("rates", title, NO_SUMMARY)
    from kwh.compress.summary import SPEED_NOTE, dense_original, rate_rows
    rows = rate_rows(summary, file_bytes)
    names = [m + (f" [{p}]" if p else "") for m, _, _, _, p in rows]
    uri = figures.rates(names, [r for _, _, _, r, _ in rows])
    cells = [[m, p or "-", b, a, "n/a" if r is None else ratio(r)] for m, b, a, r, p in rows]
    src = summary["rates"].get("max_compression_source")
    return Section("rates", title, img(uri, "how many times smaller, per measure")
                   + table(["measure", "paper's name (Louizos et al. 2017)", "dense original",
                            "this model", "dense / this"], cells)
                   + small(f"Dense original: {dense_original(summary)}, the baseline of every "
                           f"\"x smaller\" that kwh compress, kwh inspect and this report "
                           f"print. The {summary['rates'].get('kind', '')} rates count as the "
                           f"paper does; {SPEED_NOTE}."
                           + (f" Max compression from: {src}." if src else "")))


def _measured(m) -> str:
    if m is None:
        return "skipped"
    if isinstance(m, Unavailable):
        return "not measured: " + "; ".join(m.reasons)
    return (f"{joules(m.total_per_inference_j)} total, {joules(m.dynamic_per_inference_j)} "
            f"dynamic per inference ({m.counter}, {m.window_s:.1f} s window)")


def energy(comp: Comparison | None, sensitivity: MemorySensitivity | None = None,
           why: str = "") -> Section:
    """Stacked bars per layer (compute vs memory) per variant, the totals, and how the
    dense / compressed ratio moves with where the weights are read from."""
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
                     joules(e.memory_j), e.layers[0].weight_mem if e.layers else "",
                     "n/a" if e.accuracy is None else f"{100 * e.accuracy:.2f}%",
                     joules(e.per_correct_j),
                     "n/a" if e.correct_per_kwh is None else f"{e.correct_per_kwh:.3g}",
                     f"{e.landauer_ratio:.3g}", _measured(v.measured)])
    first = comp.variants[0].estimate
    body = (img(uri, "energy per layer, compute vs memory")
            + table(["variant", "per", "energy", "compute", "memory", "weights in", "accuracy",
                     "per correct", "correct / kWh", "x Landauer", "measured"], rows))
    if sensitivity is not None:
        srows = [[sc.name, sc.where, joules(sc.dense_j), joules(sc.compressed_j),
                  ratio(sc.ratio)] for sc in sensitivity.scenarios]
        same = [sc.ratio for sc in sensitivity.scenarios if sc.name != "as modelled"]
        body += ("<p>The dense / compressed ratio rests on where the weights are read from: "
                 "the same two models, compute and activations unchanged, with the weights "
                 "where the model put them and with both models' weights in one memory.</p>"
                 + table(["weights", "where", "dense original", "compressed", "dense / "
                          "compressed"], srows)
                 + (small(f"With both in the same memory the ratio is {ratio(min(same))} to "
                          f"{ratio(max(same))}; --sram-kb "
                          f"{int(np.ceil(sensitivity.dense_on_chip_kb)):,} or more holds the "
                          "dense original's weights and activations on chip.") if same else ""))
    notes = [f"accuracy of {v.label}: {v.accuracy_note}." for v in comp.variants]
    body += (small(" ".join(notes))
             + f"<p class='small'>Table: {escape(first.table)}; assumptions: "
             + escape(", ".join(f"{k}={v}" for k, v in first.config.items()))
             + ". " + escape(" ".join(n for v in comp.variants for n in v.estimate.notes))
             + "</p>")
    return Section("energy", title, body)


# The summary's value of a results column, for this model and for its dense original.
_MODEL_X = {
    "max_compression": lambda s: (s["rates"].get("max_compression"), 1.0),
    "fast_prediction": lambda s: (s["rates"].get("fast_prediction"), 1.0),
    "pruning": lambda s: (s["rates"].get("pruning"), 1.0),
    "macs_nonzero": lambda s: (s["macs_nonzero"], s["macs_original"]),
    "mults": lambda s: (s["macs_nonzero"], s["macs_original"]),
    "macs": lambda s: (s["macs"], s["macs_original"]),
}


def _chart(summary: dict, rows: Rows | None, col: str, kind: str, model: tuple,
           dense: tuple, where: str) -> tuple[str, str]:
    """One test-error chart (compression or ops) and its caption."""
    series = {} if rows is None else (rows.compression if kind == "compression" else rows.ops)
    x_model, x_dense = _MODEL_X.get(col, lambda s: (None, None))(summary)
    label = axis_label(col)
    uri = figures.error_against(series, label, f"Test error vs {kind}: {where}",
                                "x" if kind == "compression" else "",
                                (model[0], x_model, model[1]), (dense[0], x_dense, dense[1]))
    caption = f"x: {label} (log scale); y: test error (%)."
    if x_model is None:
        caption += f" This model has no counterpart of the column {col!r}, so it is not drawn."
    return img(uri, f"test error vs {kind}"), caption


def comparison(summary: dict | None, network: str | None, model_error: tuple[float | None, str],
               dense_error: tuple[float | None, str], rows: Rows | None) -> Section:
    """Test error against compression and against MACs: this model and its dense original
    (from the summary), and with --compare the rows of one network and data set."""
    title = "This model against its dense original"
    if not summary or "rates" not in summary:
        return _na("comparison", title, NO_SUMMARY)
    arch = summary["architecture_original"]
    model = (f"this model ({summary['architecture']})", model_error[0])
    dense = (f"dense original ({arch})", dense_error[0])
    where = f"{network or 'this network'}" + (f" on {rows.data}" if rows and rows.data else "")
    comp_col = rows.compression_col if rows else (
        "max_compression" if summary["rates"].get("max_compression") else "fast_prediction")
    ops_col = rows.ops_col if rows else "macs_nonzero"
    parts, captions = [], []
    for col, kind in ((comp_col, "compression"), (ops_col, "MACs")):
        if col is None:
            continue
        uri, caption = _chart(summary, rows, col, kind, model, dense, where)
        parts.append(uri)
        captions.append(caption)
    body = "".join(p + small(c) for p, c in zip(parts, captions))
    body += small(f"Test error of this model: {model_error[1]}. Of the dense original: "
                  f"{dense_error[1]}.")
    if rows is None:
        body += note("Published or benchmark results are not shown: give --compare CSV to plot "
                     f"the rows of {network or 'this network'} (one data set) beside this "
                     "model.")
    else:
        names = dict.fromkeys([*rows.compression, *rows.ops])
        counts = [[n, max(len(rows.compression.get(n, [])), len(rows.ops.get(n, [])))]
                  for n in names]
        left = "; ".join(f"{n} rows of {why}" for why, n in rows.left_out.items())
        body += (table(["series from " + rows.source, "points"], counts)
                 + small(f"{rows.rows_used} rows of {rows.network}"
                         + (f" on {rows.data}" if rows.data else " (data set not stated)")
                         + f" from {rows.source}." + (f" Left out: {left}." if left else "")))
    return Section("comparison", title, body)


@torch.no_grad()
def _probs(model: nn.Module, x: torch.Tensor, samples: int) -> tuple[torch.Tensor, str]:
    """Posterior predictive (kwh.predict) of a Bayesian model, else the softmax."""
    if any(True for _ in bayes_layers(model)):
        return predict(model, x, samples).probs, f"posterior predictive, {samples} samples"
    model.eval()
    return torch.softmax(model(x).double(), -1), "softmax of the deterministic model"


def reliability(models: list[tuple[str, nn.Module]], data: tuple | None, samples: int,
                needs: str) -> Section:
    """Reliability diagrams of the Bayesian model (and the compressed one) on test data."""
    title = "Calibration (reliability diagram)"
    if data is None:
        return _needs("reliability", title, needs)
    if not models:
        return _na("reliability", title, "there is no model to evaluate")
    x, y = data
    curves_, rows = [], []
    for name, model in models:
        p, how = _probs(model, x, samples)
        r = reliability_data(p, y)
        curves_.append((f"{name}\n{how}", np.asarray(r.edges), np.asarray(r.accuracy),
                        np.asarray(r.count), float(r.ece)))
        rows.append([name, how, f"{100 * float(r.ece):.2f}%"])
    uri = figures.reliability(curves_)
    return Section("reliability", title, img(uri, "reliability diagrams")
                   + table(["model", "predictive", "ECE"], rows)
                   + f"<p class='small'>{len(y):,} test examples; bars: accuracy per "
                     "confidence bin, dashed: perfect calibration.</p>")
