"""Reports from stored result rows: records (``records``), CSV/Markdown/LaTeX/JSON (``text``), plots (``plots``),
writing them (``render``) and run comparison for CI (``compare``).

Everything here re-renders from what the run directory holds (rows and per-image predictions): nothing is
recomputed. No torch, no rich: pandas for the CSV, numpy for predictions, matplotlib for plots.
"""

from ..published import published_top1
from .compare import CellDiff, Comparison, compare_runs, comparison_markdown, load_rows
from .plots import PLOT_THROUGHPUT, PLOT_TOP1, plot_throughput, plot_top1
from .records import ordered, pair_records, row_labels, throughput_records, top1_records
from .render import render
from .shift import (
    PLOT_CONSISTENCY,
    SHIFT_COLUMNS,
    consistency_records,
    is_shift_row,
    plot_consistency,
    shift_csv,
    shift_json,
    shift_latex,
    shift_markdown,
    shift_pair_records,
    shift_row_dict,
    split_rows,
)
from .text import FORMATS, TITLE, json_report, latex_report, markdown_report, parse_formats, rows_frame, to_csv

__all__ = [
    "FORMATS",
    "PLOT_CONSISTENCY",
    "PLOT_THROUGHPUT",
    "PLOT_TOP1",
    "SHIFT_COLUMNS",
    "TITLE",
    "CellDiff",
    "Comparison",
    "compare_runs",
    "consistency_records",
    "comparison_markdown",
    "json_report",
    "latex_report",
    "load_rows",
    "markdown_report",
    "is_shift_row",
    "ordered",
    "pair_records",
    "parse_formats",
    "plot_consistency",
    "plot_throughput",
    "plot_top1",
    "published_top1",
    "render",
    "row_labels",
    "rows_frame",
    "shift_csv",
    "shift_json",
    "shift_latex",
    "shift_markdown",
    "shift_pair_records",
    "shift_row_dict",
    "split_rows",
    "throughput_records",
    "to_csv",
    "top1_records",
]
