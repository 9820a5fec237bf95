"""The public verb ``kwh.compress(model, config)``: the core step, then the file's numbers.

kwh.compress.compress prunes, folds and quantizes; it cannot measure the .kwh payload (the
codec sits a layer above it). ``compress`` here runs it and adds the payload and the maximum
compression it gives (kwh.compress.summary.add_payload) from kwh.format.
"""

from __future__ import annotations

import types

from torch import nn

from kwh.compress import compress as compress_core
from kwh.compress.summary import add_payload
from kwh.format.codec import payload_bytes

__all__ = ["compress", "measure_payload", "CompressPackage"]


def compress(model: nn.Module, config=None, **kwargs) -> nn.Module:
    """``kwh.compress.compress(model, config, **kwargs)`` with the measured .kwh payload in
    its summary (``payload_bytes``, ``rates["max_compression"]``)."""
    return measure_payload(compress_core(model, config, **kwargs))


def measure_payload(small: nn.Module) -> nn.Module:
    """``small`` with the codec's payload in its ``kwh_summary`` (changed in place).

    A weight-only compression (``mode="weights"``) is measured in the file's state layout:
    ``payload_bytes`` counts every tensor of the state_dict, ``rates["max_compression"]`` is
    32 * weights_original / (8 * payload_bytes), and ``rates["max_compression_source"]`` says
    what is counted, or why nothing was measured.
    """
    summary = small.kwh_summary
    if summary.get("mode") == "weights":  # the architecture is the user's: the state layout
        from kwh.compress.summary import NOT_QUANTIZED
        from kwh.errors import ModelError

        rates = summary["rates"]
        summary["payload_bytes"], rates["max_compression"] = None, None
        if not summary["quantized"]:  # float32 weights: the payload says nothing
            rates["max_compression_source"] = NOT_QUANTIZED
            return small
        try:
            payload = payload_bytes(small, layout="state")
        except ModelError as err:  # a tensor of the user's model that a file cannot hold
            rates["max_compression_source"] = f"not measured: the model cannot be saved ({err})"
            return small
        summary["payload_bytes"] = int(payload)
        rates["max_compression"] = 32 * summary["weights_original"] / (8 * payload) \
            if payload else None
        rates["max_compression_source"] = (
            "kwh.codec payload_bytes of the state-layout .kwh file: the entropy-coded tensor "
            "sections of the whole state_dict (the Bayesian layers' packed weights and sparse "
            "indices, and every other tensor in its smallest exact form, float32, fixed-point "
            "or int64: biases, BatchNorm parameters "
            "and statistics, layers left uncompressed), against 32 bits for each of "
            "weights_original, the weights of the Bayesian layers only")
        return small
    if summary["quantized"]:  # float32 weights: the payload says nothing about compression
        add_payload(summary, payload_bytes(small, input_shape=list(summary["input_shape"])))
    return small


class CompressPackage(types.ModuleType):
    """The class of the package ``kwh.compress``, which makes it callable as the verb:
    ``kwh.compress(model, config, eval_data=...)`` is ``kwh.app.compress(...)``, and
    ``kwh.compress.CompressConfig`` and the other names still resolve as attributes."""

    def __call__(self, model: nn.Module, config=None, **kwargs) -> nn.Sequential:
        return compress(model, config, **kwargs)
