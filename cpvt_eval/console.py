"""The only module that imports rich: progress bars, tables and messages, all on stderr except data tables."""

from __future__ import annotations

import sys

from rich.console import Console
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

from .engine import Progress

err = Console(stderr=True, highlight=False)
out = Console(highlight=False)


def error(message: str) -> None:
    """One line on stderr, no traceback."""
    first = str(message).strip().splitlines()[0] if str(message).strip() else "error"
    err.print(f"[bold red]error:[/] {first}", soft_wrap=True, markup=True)


def info(message: str) -> None:
    err.print(message, soft_wrap=True, markup=False)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {message}", soft_wrap=True)


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
        self._task = self._progress.add_task(label, total=total)

    def advance(self, n: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def finish(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def results_table(rows) -> Table:
    """Models x sizes: top-1 (top-5) and images/s in each cell."""
    models = list(dict.fromkeys(r.model for r in rows))
    sizes = sorted({r.img_size for r in rows})
    cells = {(r.model, r.img_size): r for r in rows}
    table = Table(title="top-1 % (top-5 %) · images/s", title_style="bold")
    table.add_column("model")
    table.add_column("PE")
    for s in sizes:
        table.add_column(f"{s}px", justify="right")
    for m in models:
        pe = next(r.pe for r in rows if r.model == m)
        values = []
        for s in sizes:
            r = cells.get((m, s))
            if r is None:
                values.append("–")
                continue
            text = f"{r.top1:.2f} ({r.top5:.2f})"
            if r.images_per_sec:
                text += f"\n{r.images_per_sec:,.1f}/s"
            values.append(text)
        table.add_row(m, pe, *values)
    return table


def print_results(rows) -> None:
    err.print(results_table(rows))


def models_table(specs, params: dict[str, int]) -> Table:
    table = Table(title="registered models", title_style="bold")
    for col, justify in (
        ("name", "left"),
        ("aliases", "left"),
        ("PE", "left"),
        ("params", "right"),
        ("native", "right"),
        ("default weights", "left"),
    ):
        table.add_column(col, justify=justify)
    for s in specs:
        p = params.get(s.name)
        table.add_row(
            s.name,
            ", ".join(s.aliases),
            s.pe,
            f"{p / 1e6:.2f}M" if p else "",
            str(s.native_size),
            s.default_weights or "checkpoint needed",
        )
    return table


def throughput_table(rows: list[dict]) -> Table:
    """One line per (model, size): images/s with its spread, and how far the achieved GFLOP/s is from the peak."""
    table = Table(title="model-only throughput (median of timed runs)", title_style="bold")
    for col in ("model", "size", "batch", "images/s", "ms/batch", "spread", "GFLOPs/img", "GFLOP/s", "% of peak"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        peak = r.get("peak_fraction")
        table.add_row(
            r["model"],
            str(r["img_size"]),
            str(r["batch_size"]),
            f"{r['images_per_sec']:,.1f}",
            f"{r['ms_per_batch']:.2f}",
            f"{r['spread_pct']:.1f}%",
            "" if r.get("gflops_per_image") is None else f"{r['gflops_per_image']:.3f}",
            "" if r.get("achieved_gflops_per_sec") is None else f"{r['achieved_gflops_per_sec']:,.1f}",
            "" if peak is None else f"{100 * peak:.1f}%",
        )
    if rows:
        r = rows[0]
        peak_gflops = r.get("peak_gflops_per_sec")
        table.caption = (
            f"{r['device_name']} · {r['dtype']} · {r['threads']} threads · warm-up {r['warmup']}, "
            f"{r['repeats']} timed runs · channels_last={r['channels_last']} · compile={r['compile']}"
            + ("" if peak_gflops is None else f" · matmul peak {peak_gflops:,.1f} GFLOP/s")
        )
    return table
