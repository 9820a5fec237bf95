"""Compression: a trained Bayesian model (a chain or a traced graph) -> a smaller, low-bit
plain model with its summary.

``kwh.compress.compress`` is the core step; it knows nothing of files. The public verb
``kwh.compress(model, config)`` (this package, made callable by kwh/__init__.py through
kwh.app.verb) runs it and adds what only the .kwh codec can measure: the payload bytes and the
maximum compression in the summary.
"""

from __future__ import annotations

from kwh.compress.config import CompressConfig
from kwh.compress.metrics import evaluate
from kwh.compress.precision import (
    LayerPrecision,
    choose_precision,
    frac_bits_per_weight,
    layer_frac_bits,
    quantize,
)
from kwh.compress.prune import compress
from kwh.compress.summary import add_payload, format_summary

__all__ = [
    "compress", "CompressConfig", "format_summary", "add_payload", "evaluate",
    "LayerPrecision", "choose_precision", "frac_bits_per_weight", "layer_frac_bits", "quantize",
]
