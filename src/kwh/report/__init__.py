"""The HTML report: one self-contained page with architecture, bits, rates, energy, calibration."""

from __future__ import annotations

from .build import build_report, read_log, write_report
from .html import render_page, write_page
from .results import read_curves
from .sections import SECTION_IDS, Section

__all__ = [
    # building and writing
    "build_report", "write_report", "render_page", "write_page",
    # inputs and parts
    "read_log", "read_curves", "Section", "SECTION_IDS",
]
