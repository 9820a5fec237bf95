"""Sigma-delta (herding) event-driven inference: O'Connor and Welling 2016."""

from __future__ import annotations

from .evaluate import Row, SweepPoint, compare, summarize, sweep_lambda
from .fanout import dense_macs, fanout_map, naive_macs
from .nets import (DenseFrameNet, RoundingNet, SequenceNet, SigmaDeltaNet, ThresholdNet,
                   convert)
from .plan import SUPPORTED, build_plan
from .quantize import Herding, herd, round_half_up, round_quantize, ste_round
from .result import SpikeRun
from .scales import train_scales

__all__ = [
    # conversion and the four networks on one harness
    "convert", "SigmaDeltaNet", "RoundingNet", "ThresholdNet", "DenseFrameNet", "SequenceNet",
    "SpikeRun", "build_plan", "SUPPORTED",
    # quantizers
    "round_half_up", "round_quantize", "herd", "Herding", "ste_round",
    # op counting
    "fanout_map", "dense_macs", "naive_macs",
    # scales and evaluation
    "train_scales", "sweep_lambda", "compare", "summarize", "Row", "SweepPoint",
]
