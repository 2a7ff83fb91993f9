"""Reports from stored result rows: records (``records``), CSV/Markdown/LaTeX/JSON of accuracy by size (``text``),
the same for every other probe from what it declares (``probe_report``), plots (``plots``), writing them all
(``render``) and run comparison for CI (``compare``).

Everything here re-renders from what the run directory holds (rows and per-image predictions): nothing is
recomputed. No torch, no rich: pandas for the CSV, numpy for predictions, matplotlib for plots.
"""

from ..published import published_top1
from . import probe_report
from .compare import CellDiff, Comparison, compare_runs, comparison_markdown, load_rows
from .plots import PLOT_THROUGHPUT, PLOT_TOP1, plot_throughput, plot_top1
from .records import ordered, pair_records, row_labels, throughput_records, top1_records
from .render import render
from .text import FORMATS, TITLE, json_report, latex_report, markdown_report, parse_formats, rows_frame, to_csv

__all__ = [
    "FORMATS",
    "PLOT_THROUGHPUT",
    "PLOT_TOP1",
    "TITLE",
    "CellDiff",
    "Comparison",
    "compare_runs",
    "comparison_markdown",
    "json_report",
    "latex_report",
    "load_rows",
    "markdown_report",
    "ordered",
    "pair_records",
    "parse_formats",
    "plot_throughput",
    "plot_top1",
    "probe_report",
    "published_top1",
    "render",
    "row_labels",
    "rows_frame",
    "throughput_records",
    "to_csv",
    "top1_records",
]
