"""What a probe reports, as data (``ReportSpec``): its main figure, its table of cells, its paired test, its plot,
its LaTeX table, its own records and conditions, further sections and figures, and how its command is used; and the
small formatting helpers the declarations use. The report pipeline (``report.pipeline``) reads these; nothing here
computes a figure.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..results import ResultRow

# a value of a record as Markdown shows it: a format spec (``.2f``; empty: as text) or a function of the record
Format = str | Callable[[dict], str]


@dataclass(frozen=True)
class Metric:
    """The probe's main figure: a row column in percent, its names, and its 95% interval: Wilson's from two count
    columns (``successes`` of ``trials``), or a column holding ``low-high`` (``interval``, e.g. a bootstrap's).

    ``title`` heads the table of the figure by size (``## <title> (%)``), ``short`` the table of cells and the
    paired tests; ``console`` is the console table's title and how a cell shows there (default: the figure)."""

    column: str
    title: str
    short: str = ""
    successes: str = ""
    trials: str = ""
    interval: str = ""
    console: tuple[str, Callable[[ResultRow], str] | None] = ("", None)

    @property
    def name(self) -> str:
        return self.short or self.title

    @property
    def ci_title(self) -> str:
        return "95% CI (Wilson)" if self.successes else "95% CI"


@dataclass(frozen=True)
class Cells:
    """The table of cells: ``heading`` says what it shows beside the figure; ``extra`` are its columns after the
    probe's own (``(header, record key, format)``); ``note(records, rows)`` the lines under it; ``by_family`` groups
    the table of the figure by PE family (and the LaTeX table)."""

    heading: str
    extra: tuple[tuple[str, str, Format], ...] = ()
    note: Callable[[list[dict], list[ResultRow]], list[str]] = lambda records, rows: []
    by_family: bool = False


@dataclass(frozen=True)
class Pairs:
    """The paired test between two models at a size: ``what`` each trial's outcome is (``only_a_<what>``, shown
    as ``only A <says>``), over which ``units``, the ``test``'s name and how to read a small p. ``always``: in
    every report (else only when asked: ``report --pairs``)."""

    what: str
    says: str
    units: str
    test: str
    reading: str
    always: bool = True


@dataclass(frozen=True)
class Plot:
    """The figure against size: its file, y label and title; ``published``: the record key of a published figure
    of the same measure (markers); ``best``: a star on each curve's best size."""

    file: str
    ylabel: str
    title: str
    published: str = ""
    best: bool = False


@dataclass(frozen=True)
class Tex:
    """The LaTeX table: its label, its caption (a function of the rows and records), and what follows each figure
    (a function of the record: `` (+2.00)``, or an empty text)."""

    label: str
    caption: Callable[[list[ResultRow], list[dict]], str]
    aside: Callable[[dict], str] = lambda record: ""


@dataclass(frozen=True)
class Pivot:
    """A further table of one column by size (a section), shown when a cell has it; ``note(rows)`` under it."""

    title: str
    column: str
    note: Callable[[list[ResultRow]], str] = lambda rows: ""


@dataclass(frozen=True)
class Figure:
    """A figure of the probe's own beside its plot: ``file`` (with ``{size}``: one file per size, its ``title``
    naming it too) drawn by ``draw(store, rows)`` into PNG bytes from the stored rows and arrays (the rows of one
    size when per size)."""

    file: str
    title: str
    draw: Callable[[Any, list[ResultRow]], bytes]

    @property
    def per_size(self) -> bool:
        return "{size}" in self.file


@dataclass(frozen=True)
class Usage:
    """How the probe is used: its command's default sizes and worked example (``--help``), and the settings of a
    quick run (the offline demo's), as ``Settings`` fields."""

    sizes: tuple[int, ...] = (224, 384, 448, 512)
    example: str = ""
    quick: tuple[tuple[str, object], ...] = ()


@dataclass(frozen=True)
class ReportSpec:
    """How the report pipeline (``report.pipeline``) shows a probe's cells: ``<stem>.md/.csv/.tex/.json``, plots,
    the console table.

    Attributes:
        title: the report's title; ``stem``: its file names.
        metric: the main figure (tables, plot, LaTeX, console).
        cells: the table of cells.
        pairs: the paired test between models (None: none).
        plot: the figure against size.
        tex: the LaTeX table.
        records: the probe's own record fields of a row (a published figure, ...).
        conditions: the probe's lines of the Conditions section (how it measured).
        sections: further sections, in order: ``best_size``, ``throughput`` (the model-only timing), ``Pivot``s.
        figures: further figures of the probe's own.
        schema: the ``schema`` of the JSON report (default ``cpvt-eval/<stem>-report-1``).
        usage: the command's default sizes and worked example.
    """

    title: str
    stem: str
    metric: Metric
    cells: Cells
    plot: Plot
    tex: Tex
    pairs: Pairs | None = None
    records: Callable[[ResultRow], dict] = lambda row: {}
    conditions: Callable[[list[ResultRow]], list[str]] = lambda rows: []
    sections: tuple = ()
    figures: tuple[Figure, ...] = ()
    schema: str = ""
    usage: Usage = Usage()

    def files(self) -> dict[str, str]:
        return {fmt: f"{self.stem}.{fmt}" for fmt in ("md", "csv", "tex", "json")}

    def console_cell(self, row: ResultRow) -> str:
        cell = self.metric.console[1]
        if cell is not None:
            return cell(row)
        value = getattr(row, self.metric.column)
        return "–" if value is None else f"{value:.2f}"

    def log_line(self, row: ResultRow) -> str:
        """The line a finished cell logs: the console cell on one line, and the images it counts."""
        text = " ".join(self.console_cell(row).split())
        return f"{row.model} @ {row.img_size}px: {self.metric.name.lower()} {text} ({row.n_images} images)"


def fmt_value(value, spec: str) -> str:
    """A value as a report shows it: ``–`` for none (or NaN), else ``format(value, spec)``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, spec)


def values_text(rows: list[ResultRow], name: str) -> str:
    """The distinct values of a column over ``rows``, as the Conditions section lists them."""
    return ", ".join(f"`{v}`" for v in dict.fromkeys(str(getattr(r, name)) for r in rows))


# What each crop mode does (timm's names, and full), as a report's conditions say it.
CROP_MODE_TEXT = (
    "squash: both sides to floor(size / crop_pct), centre crop; border: longer side to floor(size / crop_pct), "
    "padded with the mean colour; full: the whole image to size x size, crop_pct unused"
)


def eval_transform_line(rows: list[ResultRow]) -> str:
    """The Conditions line of a probe that decodes with the eval transform."""
    crop, interpolation = values_text(rows, "crop_pct"), values_text(rows, "interpolation")
    return (
        f"- eval transform: shorter side to floor(size / crop_pct), centre crop; crop_pct {crop}, interpolation "
        f"{interpolation}"
        + (
            f"; crop mode {values_text(rows, 'crop_mode')} ({CROP_MODE_TEXT})"
            if any(r.crop_mode != "center" for r in rows)
            else ""
        )
    )


def change_from_native(record: dict) -> str:
    """The Markdown cell of the change from the model's native size: ``native`` there, else signed points."""
    return "native" if record["img_size"] == record["native_size"] else fmt_value(record["delta_native"], "+.2f")
