"""Reports from stored result rows, one pipeline for every probe (``pipeline``: Markdown, CSV, LaTeX, JSON and plots
from what each probe declares), built from records (``records``), tables (``tables``), sections (``sections``) and
plots (``plots``); ``render`` writes them all for a run directory, ``compare`` compares two runs for CI.

Everything here re-renders from what the run directory holds (rows and per-image predictions): nothing is
recomputed. No torch, no rich: pandas for the CSV, numpy for predictions, matplotlib for plots.
"""

from . import pipeline
from .compare import (
    CellDiff,
    Comparison,
    compare_runs,
    comparison_markdown,
    comparison_summary,
    load_rows,
    not_comparable_summary,
)
from .plots import PLOT_THROUGHPUT
from .records import ordered, row_labels, throughput_records
from .render import render
from .tables import FORMATS, parse_formats, rows_frame

__all__ = [
    "FORMATS",
    "PLOT_THROUGHPUT",
    "CellDiff",
    "Comparison",
    "compare_runs",
    "comparison_markdown",
    "comparison_summary",
    "load_rows",
    "not_comparable_summary",
    "ordered",
    "parse_formats",
    "pipeline",
    "render",
    "row_labels",
    "rows_frame",
    "throughput_records",
]
