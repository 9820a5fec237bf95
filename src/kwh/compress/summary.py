"""The compressed model's summary (a JSON-ready dict) and its pretty printer.

Counting follows Louizos et al. 2017, Table 1 (REFERENCES.md sec. 5): the architecture string
lists kept filters for a conv layer and kept input units for a fully connected one
(5-10-76-16 = 5*25 + 10*5*25 + 76*16 + 16*10 = 2751 weights for LeNet-5); pruning is the
original weight count over the pruned dense architecture's (group priors) or 1 / (2 density)
(CSR with a 32-bit value and a 32-bit index per weight: unstructured, starred in the paper);
fast prediction is 32 |W| / sum_l |W_l| (1 + e + t_l); maximum compression is 32 |W| over the
bits of the real entropy-coded payload, as the .kwh codec writes it (weights, indices and
biases, on their grids (kwh.compress.floats) or float32: a little more than the paper, which
counts weights only). ``bias_bytes`` is the biases' size as float32, for reference. The payload is
measured by the codec, a layer above this package: ``summarize`` leaves it out and
``add_payload`` puts it in (kwh.compress(model) does both).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kwh.bayes import BayesLayer
from kwh.compress.chain import NORMS, Node
from kwh.compress.config import CompressConfig
from kwh.compress.precision import LayerPrecision
from kwh.compress.stages import Stage

SUMMARY_VERSION = 1


class Summary(dict):
    """The summary dict of a compressed model; ``str()`` gives the readable table."""

    def __str__(self) -> str:
        return format_summary(self)


PAYLOAD_SOURCE = ("kwh.codec payload_bytes: the entropy-coded tensor sections of the .kwh file "
                  "(packed weights, sparse indices, biases)")
NOT_QUANTIZED = "not measured: weights not quantized (quantize=False)"
NOT_MEASURED = ("not measured: the .kwh payload is measured by the codec (kwh.compress(model) "
                "adds it; kwh.compress.compress does not)")


def summarize(nodes: list[Node], stages: list[Stage], precisions: list[LayerPrecision],
              small: nn.Sequential, input_shape: tuple[int, ...],
              config: CompressConfig) -> dict:
    """Everything a report needs about a compressed chain, computed from the actual tensors."""
    plain = [m for m in small if isinstance(m, (nn.Linear, nn.Conv2d))]
    return summary_of([n.name for n in nodes if n.weighted], stages, precisions, plain, small,
                      sum(original_param_count(n.module) for n in nodes),
                      int(stages[-1].weight.shape[0]), input_shape, config)


def summary_of(names: list[str], stages: list[Stage], precisions: list[LayerPrecision],
               plain: list[nn.Module], small: nn.Module, original_params: int,
               num_classes: int, input_shape: tuple[int, ...], config: CompressConfig) -> dict:
    """The summary of any compressed model: ``names``, ``stages``, ``precisions`` and ``plain``
    (the built Linear/Conv2d layers) one per weighted layer, in order; ``original_params`` the
    parameters of the original model's modules (kwh.compress.summary.original_param_count)."""
    layers = [_layer(n, s, p, m) for n, s, p, m in zip(names, stages, precisions, plain)]
    w_orig = sum(d["weights_original"] for d in layers)
    w_dense = sum(d["weights_pruned_dense"] for d in layers)
    nnz = sum(d["nonzero"] for d in layers)
    unstructured = any(s.structured is False for s in stages)
    dense_bits = sum(d["weights_pruned_dense"] * d["bits"] for d in layers)
    csr_bits = sum(2 * d["nonzero"] * d["bits"] for d in layers)
    rates = {
        "kind": "csr (unstructured)" if unstructured else "structured",
        "pruning": _ratio(w_orig, 2 * nnz) if unstructured else _ratio(w_orig, w_dense),
        "fast_prediction": _ratio(32 * w_orig, csr_bits if unstructured else dense_bits),
        "fast_prediction_dense": _ratio(32 * w_orig, dense_bits),
        "max_compression": None,  # add_payload: from the codec's payload
        "max_compression_source": NOT_MEASURED if config.quantize else NOT_QUANTIZED,
    }
    small_bytes = sum(t.numel() for t in _float_tensors(small)) * 4
    return {
        "version": SUMMARY_VERSION,
        "input_shape": list(input_shape),
        "num_classes": num_classes,
        "priors": sorted({s.prior for s in stages if s.prior is not None}),
        "quantized": bool(config.quantize),
        "architecture_original": "-".join(str(d["arch_original"]) for d in layers),
        "architecture": "-".join(str(d["arch"]) for d in layers),
        "bits": "-".join(str(d["bits"]) for d in layers),
        "layers": layers,
        "weights_original": w_orig,
        "weights_pruned_dense": w_dense,
        "weights": sum(d["weights"] for d in layers),
        "nonzero": nnz,
        "density": nnz / w_orig if w_orig else 0.0,
        "macs_original": sum(d["macs_original"] for d in layers),
        "macs": sum(d["macs"] for d in layers),
        "macs_nonzero": sum(d["macs_nonzero"] for d in layers),
        "size_fp32_original_bytes": original_params * 4,
        "size_fp32_bytes": small_bytes,
        "bias_bytes": sum(4 * m.bias.numel() for m in plain if m.bias is not None),
        "payload_bytes": None,  # add_payload
        "rates": rates,
        "config": {"threshold": config.threshold, "thresholds": dict(config.thresholds),
                   "max_bits": config.max_bits, "bits": dict(config.bits),
                   "fold_batchnorm": config.fold_batchnorm, "bits_search": config.bits_search,
                   "bits_tolerance": config.bits_tolerance},
    }


def _layer(name: str, s: Stage, p: LayerPrecision, m: nn.Module) -> dict:
    conv = s.conv
    orig_shape = list(original_shape(s.module) or s.orig_weight_shape)
    # output pixels per example; a Linear's tokens
    positions = math.prod(s.out_shape[1:]) if conv else s.positions
    w = s.weight  # pruned, before quantization: the structure the posterior chose
    nz_cols = int((w.transpose(0, 1).reshape(w.shape[1], -1) != 0).any(dim=1).sum())
    kernel = math.prod(w.shape[2:]) if conv else 1
    nonzero = int(torch.count_nonzero(m.weight))  # after quantization: what is stored
    return {
        "name": name,
        "type": "Conv2d" if conv else "Linear",
        "prior": s.prior,
        "threshold": s.threshold,
        "batchnorm_folded": list(s.folded),
        "shape_original": orig_shape,
        "shape": list(m.weight.shape),
        "arch_original": orig_shape[0] if conv else orig_shape[1],
        "arch": int(w.shape[0]) if conv else nz_cols,
        "carrier_units": len(set(s.carriers) & set(s.rows.tolist())),
        "bits": p.bits,
        "frac_bits": p.frac_bits,
        "exp_bits": p.exp_bits,
        "posterior_frac_bits": p.posterior_frac_bits,
        "bits_source": p.source,
        "weights_original": math.prod(orig_shape),
        "weights": int(m.weight.numel()),
        "weights_pruned_dense": int(w.shape[0]) * nz_cols * kernel,
        "nonzero": nonzero,
        "macs_original": math.prod(orig_shape) * positions,
        "macs": int(m.weight.numel()) * positions,
        "macs_nonzero": nonzero * positions,  # zero-padding borders counted as full windows
    }


def add_payload(summary: dict, payload_bytes: int) -> dict:
    """``summary`` (changed in place and returned) with the real payload, the bytes the codec
    writes for the tensors, and the maximum compression 32 |W| / (8 payload) it gives.

    A payload of float32 weights says nothing about compression: an unquantized summary is
    returned unchanged.
    """
    if not summary["quantized"]:
        return summary
    summary["payload_bytes"] = int(payload_bytes)
    rates = summary["rates"]
    rates["max_compression"] = _ratio(32 * summary["weights_original"], 8 * payload_bytes)
    rates["max_compression_source"] = PAYLOAD_SOURCE
    return summary


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def original_shape(m: nn.Module) -> tuple[int, ...] | None:
    """The weight shape a layer had before it was shrunk while training (None: never shrunk).

    kwh.compress.shrink records it (``kwh_original_shape``), so that rates and "original"
    counts are against the network training started from, not the shrunk one."""
    shape = getattr(m, "kwh_original_shape", None)
    return None if shape is None else tuple(int(d) for d in shape)


def original_param_count(m: nn.Module) -> int:
    """Parameters of the deterministic original module (weights, biases, BatchNorm stats)."""
    if isinstance(m, BayesLayer):
        shape = original_shape(m) or m.prior.weight_shape
        return math.prod(shape) + (0 if m.bias is None else shape[0])
    if isinstance(m, NORMS):
        return m.num_features * (4 if m.affine else 2)
    return sum(p.numel() for p in m.parameters())


def _float_tensors(model: nn.Module):
    yield from model.parameters()
    yield from (b for b in model.buffers() if b.is_floating_point())


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _rate(x: float | None) -> str:
    """A ratio with three significant figures below 10x: '1.05x', '6.70x', '60.8x'."""
    if x is None:
        return "n/a"
    return f"{x:,.2f}x" if x < 10 else f"{x:,.1f}x"


def dense_original(summary: dict) -> str:
    """The one baseline of every "x smaller": the original model's float32 parameters."""
    nbytes = summary["size_fp32_original_bytes"]
    bn = any(d.get("batchnorm_folded") for d in summary.get("layers", []))
    what = "weights, biases and BatchNorm parameters" if bn else "weights and biases"
    return f"{nbytes // 4:,} float32 {what} = {nbytes:,} B"


def smaller_than_dense(summary: dict, file_bytes: int) -> str:
    """'57.2x smaller than the dense original (431,080 float32 weights and biases = ...)'."""
    ratio = summary["size_fp32_original_bytes"] / file_bytes if file_bytes else None
    return f"{_rate(ratio)} smaller than the dense original ({dense_original(summary)})"


def format_file_line(summary: dict | None, file_bytes: int, detail: str = "") -> str:
    """'file  N B (detail); R x smaller than the dense original (...)': the same words in
    `kwh compress`, `kwh inspect` and `kwh report`."""
    head = f"file          {file_bytes:,} B" + (f" ({detail})" if detail else "")
    if not summary or "size_fp32_original_bytes" not in summary:
        return head + "; no compression summary, so no dense original to compare with"
    return f"{head}; {smaller_than_dense(summary, file_bytes)}"


def rate_rows(summary: dict, file_bytes: int | None = None) -> list[tuple]:
    """What shrank, against the dense original: (measure, before, after, ratio, paper's name).

    The ratios are the summary's rates; each is named for what it counts, with the name
    Louizos et al. 2017 (Table 1) give it beside it where it has one.
    """
    s, r = summary, summary["rates"]
    csr = str(r.get("kind", "")).startswith("csr")
    layers = s["layers"]
    w_orig, nnz = s["weights_original"], s["nonzero"]
    if csr:
        kept = f"{nnz:,} nonzero as CSR (a value and an index each)"
        stored = sum(2 * d["nonzero"] * d["bits"] for d in layers)
    else:
        kept = f"{s['weights_pruned_dense']:,} in the pruned layout, {nnz:,} nonzero"
        stored = sum(d["weights_pruned_dense"] * d["bits"] for d in layers)
    bits_note = "" if s.get("quantized", True) else ", not applied"
    payload = s.get("payload_bytes")
    rows = [
        ("weights", f"{w_orig:,}", kept, r.get("pruning"), "pruning"),
        ("weights' bits", f"{32 * w_orig:,} (32 each)", f"{stored:,} ({s['bits']}{bits_note})",
         r.get("fast_prediction"), "fast prediction"),
        ("MACs", f"{s['macs_original']:,}", f"{s['macs_nonzero']:,} (nonzero weights)",
         _ratio(s["macs_original"], s["macs_nonzero"]), ""),
        ("weight bytes", f"{4 * w_orig:,} B float32",
         f"{payload:,} B .kwh payload" if payload is not None else
         "not measured (not quantized)" if not s.get("quantized", True) else "not measured",
         r.get("max_compression"), "max compression"),
    ]
    if file_bytes is not None:
        rows.append(("file bytes", f"{s['size_fp32_original_bytes']:,} B dense original",
                     f"{file_bytes:,} B on disk",
                     _ratio(s["size_fp32_original_bytes"], file_bytes), ""))
    return rows


BITS_NOTE = ("bits = 1 sign + e + t: t fraction bits set the step 2^-t; e = magnitude bits - t "
             "is negative when every |w| < 2^e (the top -e fraction bits are always zero and "
             "not stored)")
SPEED_NOTE = ("fast prediction counts stored bits, not speed: the arithmetic of one inference "
              "fell by the MACs rate")


def format_summary(summary: dict) -> str:
    """The summary as a readable text block (what `kwh compress` and `kwh inspect` print)."""
    s = summary
    priors = ", ".join(s["priors"]) or "none (plain layers)"
    width = max([12] + [len(d["name"]) for d in s["layers"]])  # module paths of a graph
    fg = s.get("float_grids") or {}
    floats = ("biases float32" if fg.get("bits") is None else
              f"biases and norms: {1 + fg['bits']} bits, on grids (kwh.compress.floats)")
    lines = [
        f"input {tuple(s['input_shape'])}, {s['num_classes']} outputs, prior: {priors}",
        f"architecture  {s['architecture_original']}  ->  {s['architecture']}"
        "   (conv: kept filters, fc: kept input units)",
        f"bits          {s['bits']}   total bits per weight, per layer ({floats})"
        + ("" if s["quantized"] else "   [not applied: weights left float32]"),
        "",
        f"{'layer':<{width}} {'type':<7} {'weight shape':<24} {'bits':>4} {'e':>3} {'t':>3} "
        f"{'nonzero/weights':>22} {'MACs':>22}",
    ]
    for d in s["layers"]:
        shape = f"{'x'.join(map(str, d['shape_original']))}->{'x'.join(map(str, d['shape']))}"
        frac = d["nonzero"] / d["weights"] if d["weights"] else 0.0
        nz = f"{d['nonzero']:,}/{d['weights']:,} ({_pct(frac)})"
        macs = f"{d['macs_original']:,}->{d['macs']:,}"
        extra = []
        if d["batchnorm_folded"]:
            extra.append("BN folded")
        if d["carrier_units"]:
            extra.append(f"{d['carrier_units']} carrier")
        if s.get("units_removed_by_rounding", {}).get(d["name"]):
            extra.append(f"{s['units_removed_by_rounding'][d['name']]} rounded to 0, removed")
        note = f"  [{', '.join(extra)}]" if extra else ""
        lines.append(f"{d['name']:<{width}} {d['type']:<7} {shape:<24} {d['bits']:>4} "
                     f"{d['exp_bits']:>3} {d['frac_bits']:>3} {nz:>22} {macs:>22}{note}")
    lines.append(f"  ({BITS_NOTE})")
    g = s.get("graph")
    if g:  # kwh.compress.dag: channels coupled across the graph
        frozen = "; ".join(f"{k} ({v})" for k, v in g["frozen_layers"].items())
        lines.append(f"channels      {g['channel_classes']:,} coupled channel groups: "
                     f"{g['removed_classes']:,} removed, {g['frozen_classes']:,} frozen by "
                     "operations they cannot cross exactly" +
                     (f"; layers kept whole: {frozen}" if frozen else ""))
    r = s["rates"]
    lines += [
        "",
        f"dense original  {dense_original(s)}: the baseline of every \"x smaller\"",
        f"rates ({r['kind']}), dense original -> this model, [Louizos et al. 2017's name]:",
    ]
    for measure, before, after, ratio, paper in rate_rows(s, s.get("file_bytes")):
        tag = f"[{paper}]" if paper else ""
        lines.append(f"  {measure:<14} {_rate(ratio):>8}  {tag:<18} {before} -> {after}")
    lines.append(f"  ({SPEED_NOTE})")
    g = s.get("bits_guard")
    if g:
        changes = ", ".join(f"{k} {v:+d}" for k, v in g["changes"].items()) or "none"
        lines.append(f"bits guard    {g['mode']}, <= {g['tolerance_pp']:g} points on "
                     f"{g['examples']:,} held-out training examples: error "
                     f"{_pct(g['error_unquantized'])} unquantized, "
                     f"{_pct(g['error_posterior_bits'])} at the posterior's bits, "
                     f"{_pct(g['error_chosen_bits'])} at these; fraction bits changed: {changes}")
    if fg.get("error_before") is not None:
        after = ("kept float32: " + ", ".join(f"{b} bits" for b in fg["tried"]) +
                 " cost more" if fg["bits"] is None else f"{_pct(fg['error_after'])} at "
                 f"{fg['bits']} magnitude bits")
        lines.append(f"float guard   biases and norms, <= {fg['tolerance_pp']:g} points on the "
                     f"held-out examples: error {_pct(fg['error_before'])} before, {after}")
    ev = s.get("eval")
    if ev:
        lines.append(f"test error    {_pct(ev['error_before_quantization'])} before quantization, "
                     f"{_pct(ev['error_after_quantization'])} after ({ev['examples']:,} examples)"
                     + ("" if "error_after_finetune" not in ev else
                        ", not measured after fine-tuning" if ev["error_after_finetune"] is None
                        else f", {_pct(ev['error_after_finetune'])} after fine-tuning"))
    ft = s.get("finetune")
    if ft:
        val = ""
        if ft.get("validation_error_after") is not None:
            val = (f": validation error {_pct(ft['validation_error_before'])} -> "
                   f"{_pct(ft['validation_error_after'])} ({ft['validation_examples']:,} examples)")
        n = ft["epochs"]
        lines.append(f"fine-tuned    {n} epoch{'s' if n != 1 else ''} at lr {ft['lr']:g} on the "
                     f"fixed-point grids, pruned weights held at zero{val}")
    return "\n".join(lines)
