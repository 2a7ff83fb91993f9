"""The probe interface: one measurement of models at sizes, in one module.

A probe says

* what it computes per image and per cell: the transform that decodes the images of a pass (``transform``), the
  views of a batch every model sees (``views``), and an accumulator per (model, size) (``accumulator``: ``update``
  per view, ``finish`` into the cell); the data pass around it is ``engine.run_pass``, the same for every probe;
* its typed row columns: ``row_type``, a ``ResultRow`` subclass whose fields are the probe's columns (declared
  with ``column``: a Markdown header and format make a column part of the Markdown report too), registered with
  ``results.register_row_type`` under the probe's ``name``, so that a stored row reads back as its probe's type;
* the arrays it stores per cell (``arrays``) and how a stored cell is paired with another (``outcomes``);
* its report sections: ``report`` (a ``ReportSpec``: title, files, the main figure and its counts, the paired
  test, the LaTeX aside) and the probe's own conditions lines (``protocol_lines``) and records (``record_extra``).

The job (``jobs.run``), the report pipeline (``report.render``) and the console table serve every probe from
these. ``cpvt_eval.probes`` finds the probes by name.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

from ..results import CellId, ResultRow, register_row_type

if TYPE_CHECKING:
    from ..engine import EvalModel, EvalSettings


def column(md: str = "", fmt: str = "", default=None):
    """A probe's row column. ``md``: its header in the Markdown table of cells (none: CSV and JSON only);
    ``fmt``: how Markdown formats it (``.2f``; empty: as text)."""
    return field(default=default, metadata={"md": md, "fmt": fmt})


def probe_columns(row_type: type[ResultRow]) -> list:
    """The fields a probe's row type adds to ``ResultRow``, in declaration order."""
    base = {f.name for f in fields(ResultRow)}
    return [f for f in fields(row_type) if f.name not in base]


def column_names(row_type: type[ResultRow]) -> tuple[str, ...]:
    return tuple(f.name for f in probe_columns(row_type))


@dataclass(frozen=True)
class ReportSpec:
    """How the report pipeline shows a probe whose main figure is a proportion (successes of trials, in percent).

    Attributes:
        title: the report's title; ``cells_heading``: what the table of cells shows besides the figure.
        stem: the file names: ``<stem>.md``, ``.csv``, ``.tex``, ``.json``.
        plot: the plot's file name.
        metric: the row column of the main figure (percent), and ``metric_title`` its name in headers.
        successes / trials: the row columns it is counted from (for its Wilson interval).
        units: what the trials are (``pairs``, ``images``).
        paired: the paired test between two models: what is compared (``agrees``) and the test's description.
        aside: a column shown in parentheses after the figure in the LaTeX table, its description and format.
        plot_ylabel / plot_title: the plot's labels.
        console_title: the title of the console's models-by-sizes table.
        tex_label: the LaTeX table's label (``tab:<tex_label>``).
        published: the record key of a published figure of the same measure (plotted as markers), if any.
        published_note: a line under the cells table on where published figures come from.
    """

    title: str
    cells_heading: str
    stem: str
    plot: str
    metric: str
    metric_title: str
    successes: str
    trials: str
    units: str
    paired: tuple[str, str]
    paired_reading: str
    aside: tuple[str, str, str]
    plot_ylabel: str
    plot_title: str
    console_title: str
    tex_label: str
    published: str | None = None
    published_note: str = ""

    def files(self) -> dict[str, str]:
        return {fmt: f"{self.stem}.{fmt}" for fmt in ("md", "csv", "tex", "json")}


# probe name -> its class: every ``Probe`` subclass defined in a module of this package, registered as it is defined
PROBE_TYPES: dict[str, type] = {}


class Probe:
    """The defaults of a probe: one pass per size, each model's own eval transform, no stored extras.

    Subclasses set ``name`` (the command, and the first part of ``CellId.probe``), ``row_type`` and ``report``,
    and implement ``accumulator``, ``counts``, ``columns``, ``arrays`` and ``outcomes``. A subclass defined in a
    module of ``cpvt_eval.probes`` registers itself under its name, its row type with it.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__module__.startswith(__package__ + ".") and cls.name:
            PROBE_TYPES[cls.name] = cls
            register_row_type(cls.name, cls.row_type)

    name: str = ""
    row_type: type[ResultRow] = ResultRow
    report: ReportSpec | None = None
    # the run can be split over torchrun processes (the cells then merge as ``engine.CellOutput`` says)
    distributed: bool = False
    # the eval transform's crop ratio is part of the measurement (the identity records each model's own)
    uses_crop: bool = True
    # a pass needs the images' labels
    needs_labels: bool = True

    def identity(self) -> str:
        """The probe and its settings as a cell identity records them (``CellId.probe``)."""
        return self.name

    def transform(self, m: EvalModel, size: int, settings: EvalSettings):
        return m.transform_at(size, settings)

    def pass_label(self, size: int, models: list[EvalModel]) -> str:
        return f"{size}px {self.name} · {', '.join(m.name for m in models)}"

    def plan(self, models: list[EvalModel], sizes: Iterable[int], todo=None) -> Iterator[tuple[int, list]]:
        """The passes of a run: ``(size, models due at it)``, size by size."""
        for size in sizes:
            yield size, [m for m in models if todo is None or todo(m, size)]

    def cells(self, models: list[EvalModel], sizes: Iterable[int]) -> list[tuple[str, int]]:
        """Every (model, size) cell of a run."""
        return [(m.name, s) for s in sizes for m in models]

    def check(self, sizes: Iterable[int]) -> None:
        """Refuse settings that cannot run at these sizes before any work (an input error)."""

    def resume(self, store, rows: list[ResultRow], models: list[EvalModel]) -> None:
        """Read back what the probe keeps across the cells of a run from the stored ``rows`` (a resumed run)."""

    def views(self, images, batch, size: int):
        """What the models see of a batch: the decoded images as they are (one view)."""
        from ..engine import View

        yield View(images)

    def accumulator(self, m: EvalModel, size: int, n: int, settings: EvalSettings):
        raise NotImplementedError

    def counts(self, cell) -> tuple[int, int, int]:
        """``(correct1, correct5, n)`` of a cell: the accuracy columns every row has."""
        raise NotImplementedError

    def columns(self, cell, row: ResultRow, n_images: int) -> dict:
        """The probe's typed columns of a computed cell."""
        return {}

    def arrays(self, cell) -> dict:
        """The per-cell arrays stored beside the row (numpy)."""
        raise NotImplementedError

    def summary(self) -> dict:
        """The probe's settings, as the provenance record keeps them."""
        return {}

    def log_line(self, row: ResultRow) -> str:
        return f"{row.model} @ {row.img_size}px: top-1 {row.top1:.2f}%  top-5 {row.top5:.2f}%  ({row.n_images} images)"

    # -- reports ---------------------------------------------------------------------------------------------------

    def outcomes(self, store, row: ResultRow):
        """``(units, outcome)`` of a stored cell for the paired test: an (n, ...) int array naming each trial
        (image, or epoch and image and offsets) in a fixed order, and its boolean outcome."""
        raise NotImplementedError

    def pair_condition(self, row: ResultRow) -> tuple:
        """What two cells must share to be paired (besides the size): the identity's ``shared`` fields."""
        return CellId.of(row).shared()

    def record_extra(self, row: ResultRow) -> dict:
        """Records of a cell beyond its columns (a published figure, ...)."""
        return {}

    def caption_detail(self, rows: list[ResultRow]) -> str:
        """What the LaTeX caption says of the figure in its parentheses (after the percent sign)."""
        spec = self.report
        return f"{max(int(getattr(r, spec.trials)) for r in rows)} {spec.units}"

    def md_extra(self) -> list[tuple[str, str, str]]:
        """Markdown columns after the row's own: ``(header, record key, format)``."""
        return []

    def protocol_lines(self, rows: list[ResultRow]) -> list[str]:
        """Markdown lines on how the probe measured (the Conditions section)."""
        return []

    def console_cell(self, row: ResultRow) -> str:
        return f"{getattr(row, self.report.metric):.2f}"
