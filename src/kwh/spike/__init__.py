"""Sigma-delta (herding) event-driven inference: O'Connor and Welling 2016."""

from __future__ import annotations

from .nets import (DenseFrameNet, RoundingNet, SequenceNet, SigmaDeltaNet, ThresholdNet,
                   convert)
from .result import SpikeRun

__all__ = ["convert", "SigmaDeltaNet", "RoundingNet", "ThresholdNet", "DenseFrameNet",
           "SequenceNet", "SpikeRun"]
