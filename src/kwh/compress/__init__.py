"""Compression: a trained Bayesian chain -> a smaller, low-bit plain model with its summary.

``kwh.compress`` is this package and, being callable, also the verb: ``kwh.compress(model)``
is ``kwh.compress.compress(model)``. (A function bound to the same name would hide the
package, so ``kwh.compress.codec`` would stop resolving as an attribute.)
"""

from __future__ import annotations

import sys
import types

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
from kwh.compress.summary import format_summary

__all__ = [
    "compress", "CompressConfig", "format_summary", "evaluate",
    "LayerPrecision", "choose_precision", "frac_bits_per_weight", "layer_frac_bits", "quantize",
]


class _CallableModule(types.ModuleType):
    """The package module, callable as ``kwh.compress(model, config, eval_data=...)``."""

    def __call__(self, model, config=None, **kwargs):
        return compress(model, config, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
