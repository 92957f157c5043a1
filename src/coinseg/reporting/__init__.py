"""Reporting: mask overlays and comparison figures, training samples and progress curves, and the
Table-1-style evaluation report (Markdown and self-contained HTML) built from ``metrics.json``."""

from coinseg.reporting.figures import comparison_grid, overlay, progress_plot, sample_grid
from coinseg.reporting.report import write_report

__all__ = [
    "comparison_grid",
    "overlay",
    "progress_plot",
    "sample_grid",
    "write_report",
]
