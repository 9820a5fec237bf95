"""The HTML report: one self-contained page about one model: architecture, bits, rates, energy,
comparison with its dense original, calibration."""

from __future__ import annotations

from .build import build_report, read_log, write_report
from .html import render_page, write_page
from .results import read_comparison
from .sections import SECTION_IDS, Section

__all__ = [
    # building and writing
    "build_report", "write_report", "render_page", "write_page",
    # inputs and parts
    "read_log", "read_comparison", "Section", "SECTION_IDS",
]
