"""The only module that imports rich: progress bars and messages on stderr, result tables on stdout.

File names and messages are data: they are printed without markup interpretation (a folder named ``[bold]`` is
shown as it is), and bytes of a name that are not UTF-8 are shown as ``\\xNN`` (``errors.shown``).
"""

from __future__ import annotations

import sys

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress
from rich.table import Table
from rich.text import Text

from .config import Progress
from .errors import shown

# A pipe or a CI log has no width of its own, and rich would fall back to 80 columns, folding or cutting the very
# numbers a table exists to show ("5.6…"). Off a terminal the tables take their natural width instead.
PIPE_WIDTH = 10_000


def _console(stderr: bool) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, highlight=False, width=None if stream.isatty() else PIPE_WIDTH)


err = _console(stderr=True)
out = _console(stderr=False)


def first_line(message) -> str:
    """The first line of ``message``, printable whatever bytes it names."""
    text = shown(message).strip()
    return text.splitlines()[0] if text else ""


def plain(text) -> str:
    """``text`` for a rich renderable (a table cell, a bar label): markup escaped, undecodable bytes shown."""
    return escape(shown(text))


def error(message: str) -> None:
    """One line on stderr, no traceback."""
    err.print(f"[bold red]error:[/] {escape(first_line(message) or 'error')}", soft_wrap=True, markup=True)


def silence() -> None:
    """Mute messages and tables (the processes other than rank 0 of a torchrun job)."""
    err.quiet = True
    out.quiet = True


def info(message: str) -> None:
    err.print(shown(message), soft_wrap=True, markup=False)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {plain(message)}", soft_wrap=True)


class ImagesPerSecondColumn(TextColumn):
    def __init__(self):
        super().__init__("")

    def render(self, task):
        speed = task.finished_speed or task.speed
        return f"{speed:,.0f} img/s" if speed else ""


class BarProgress(Progress):
    """A rich bar per data pass (one pass per size feeds every model) with images/s and ETA, on stderr."""

    def __init__(self, enabled: bool | None = None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._progress: RichProgress | None = None
        self._task = None

    def start(self, label: str, total: int) -> None:
        if not self.enabled:
            return
        self._progress = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            ImagesPerSecondColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err,
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(plain(label), total=total)

    def advance(self, n: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def finish(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _models_by_sizes(rows, title: str, cell_text) -> Table:
    """A models x sizes table, one line per model with its PE kind; ``cell_text(row)`` fills each cell."""
    models = list(dict.fromkeys(r.model for r in rows))
    sizes = sorted({r.img_size for r in rows})
    cells = {(r.model, r.img_size): r for r in rows}
    table = Table(title=title, title_style="bold")
    table.add_column("model")
    table.add_column("PE")
    for s in sizes:
        table.add_column(f"{s}px", justify="right")
    for m in models:
        pe = next(r.pe for r in rows if r.model == m)
        values = [cell_text(cells[(m, s)]) if (m, s) in cells else "–" for s in sizes]
        table.add_row(plain(m), plain(pe), *values)
    return table


def models_by_sizes(rows, title: str, cell_text) -> Table:
    """The console table of a probe's rows: models x sizes, ``cell_text(row)`` in each cell."""
    return _models_by_sizes(rows, title, cell_text)


def print_table(rows, title: str, cell_text) -> None:
    """A probe's models x sizes table on stdout: the result a command exists to print."""
    out.print(models_by_sizes(rows, title, cell_text))


def _paper_cell(top1, confidence, crop_pct) -> str:
    """A paper figure, its grade, and the crop ratio it was measured at when the protocol names one."""
    if top1 is None:
        return "–"
    return f"{top1:.1f}\n{confidence}" + (f"\ncrop {float(crop_pct)}" if crop_pct is not None else "")


def models_table(rows: list[dict]) -> Table:
    """The rows of ``cpvt-eval models``: one line per model, aliases under the name, the grade under top-1."""
    table = Table(title="models (GFLOPs at the native size, attention included)", title_style="bold")
    table.add_column("name", no_wrap=True)
    table.add_column("PE", overflow="fold")
    table.add_column("params", justify="right")
    table.add_column("GFLOPs", justify="right")
    table.add_column("native", justify="right")
    table.add_column("paper top-1", justify="right", overflow="fold")
    table.add_column("default weights", overflow="fold")  # a reference table: fold, never cut a name short
    notes = []
    for r in rows:
        top1 = r["published_top1"]
        name = r["name"] + (f"\n({', '.join(r['aliases'])})" if r["aliases"] else "")
        if r.get("toy"):
            name += "\ntoy"
        if r["gflops"] is None:
            notes.append(f"{r['name']}: {r.get('gflops_note') or 'FLOPs not counted'}")
        weights = r["default_weights"] or "checkpoint needed"
        if r.get("toy") and r["default_weights"]:
            weights = "shipped in the package"  # the path is in --json
        elif weights.startswith(r["name"] + "."):
            weights = weights[len(r["name"]) :]  # the tag: the full name is in the first column
        table.add_row(
            name,
            r["pe"],
            f"{r['params'] / 1e6:.2f}M",
            "–" if r["gflops"] is None else f"{r['gflops']:.2f}",
            str(r["native_size"]),
            _paper_cell(top1, r["published_confidence"], r.get("published_crop_pct")),
            weights,
        )
    if any(r.get("toy") for r in rows):
        notes.append(
            "toy: a tiny model of the offline demo (`cpvt-eval demo`) and of smoke runs; the toys whose weights are "
            "shipped in the package load them by name (`-m deit_toy`)"
        )
    if notes:
        table.caption = Text("\n".join(notes), justify="left")  # a Text: a message is data, never markup
    return table


def print_data_check(summary: dict) -> None:
    """``check-data``'s findings on stdout (they are its result): a summary line, then every bad file and every odd
    one."""

    def say(message: str) -> None:
        out.print(shown(message), soft_wrap=True, markup=False)

    full = "the full ImageNet validation set" if summary["full_val"] else "partial (not the full 50,000-image set)"
    say(
        f"{summary['root']}: {summary['layout']} layout, {summary['n_images']:,} images in "
        f"{summary['n_classes']:,} classes, {full}, fingerprint {summary['fingerprint']}"
        + (f", labels from {summary['label_source']}" if summary["label_source"] else "")
    )
    # Plain lines, one per file, so the list can be grepped and no path is cut by the terminal width.
    if summary["problems"]:
        out.print(f"[bold red]{len(summary['problems'])} bad file(s):[/]")
        for item in summary["problems"]:
            say(f"  {item['path']}: {item['problem']}")
    if summary["notes"]:
        say(f"{len(summary['notes'])} odd but valid file(s):")
        for item in summary["notes"]:
            say(f"  {item['path']}: {item['note']}")
    if not summary["problems"]:
        say("every image decodes")


def throughput_table(rows: list[dict]) -> Table:
    """One line per (model, size): images/s with its spread over the rounds, the ratio to the first model timed in
    the same rounds, and how far the achieved GFLOP/s is from the peak."""
    table = Table(title="model-only throughput (median of interleaved rounds)", title_style="bold")
    columns = ("model", "size", "batch", "images/s", "ms/batch", "IQR / range", "rounds", "vs first [IQR]")
    for col in (*columns, "GFLOPs/img", "GFLOP/s", "% of peak"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        peak = r.get("peak_fraction")
        ratio, q1, q3 = r.get("ratio"), r.get("ratio_q1"), r.get("ratio_q3")
        vs = ""
        if ratio is not None and r.get("ratio_reference") != r["model"]:
            vs = f"{ratio:.3f} [{q1:.2f}-{q3:.2f}]" + ("~" if q1 <= 1 <= q3 else "")
        iqr = "" if r.get("iqr_pct") is None else f"{r['iqr_pct']:.0f}% / "
        table.add_row(
            r["model"],
            str(r["img_size"]),
            str(r["batch_size"]),
            f"{r['images_per_sec']:,.1f}",
            f"{r['ms_per_batch']:.2f}",
            f"{iqr}{r['spread_pct']:.0f}%",
            str(r["repeats"]),
            vs,
            "" if r.get("gflops_per_image") is None else f"{r['gflops_per_image']:.3f}",
            "" if r.get("achieved_gflops_per_sec") is None else f"{r['achieved_gflops_per_sec']:,.1f}",
            "" if peak is None else f"{100 * peak:.1f}%",
        )
    if rows:
        r = rows[0]
        peak_gflops = r.get("peak_gflops_per_sec")
        rounds = (
            f"{r['repeats']} rounds (forced)"
            if r.get("rounds_policy") == "fixed"
            else f"budget {r.get('budget_s')} s per model, at least {r.get('min_rounds')} rounds"
        )
        table.caption = (
            f"{r['device_name']} · {r['dtype']} · {r['threads']} threads · warm-up {r['warmup']}, {rounds} · "
            f"channels_last={r['channels_last']} · compile={r['compile']}"
            + ("" if peak_gflops is None else f" · matmul peak {peak_gflops:,.1f} GFLOP/s")
            + ("" if r.get("load_avg") is None else f" · load average {r['load_avg']:.2f}")
            + f" · vs first: median of per-round images/s ratios to {r['ratio_reference']}, the first model of a size"
            + "; ~: its IQR holds 1 (equal within noise)"
        )
    return table
