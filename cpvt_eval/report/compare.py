"""Compare two runs for CI: match their cells, flag top-1 drops and (when asked) slowdowns.

Throughput is gated only when asked (``max_slowdown``): images/s depend on the machine and its load, and a CI gate
that fails on another process's work is worse than none. When asked, a slowdown beyond the tolerance still passes
if it is within the measured spread of both runs: the interquartile ranges of their timed rounds overlap.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CpvtEvalError, ResultsError
from ..results import ResultRow, RunStore
from .records import _r, ordered
from .text import _fmt, _md_table

# Cells of two runs are the same cell when these agree (the checkpoint may change: that is what CI checks).
MATCH_FIELDS = ("model", "img_size", "crop_pct", "interpolation", "pe_options", "dtype", "model_args")


def load_rows(path: str | Path) -> list[ResultRow]:
    """Rows of a run directory, of its ``rows.jsonl``, or of a ``results.json`` written by ``report``."""
    path = Path(path)
    if path.is_file() and path.suffix == ".json":
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            rows = [ResultRow.from_dict(d) for d in doc["rows"]]
        except (json.JSONDecodeError, KeyError, TypeError, OSError) as e:
            raise ResultsError(f"cannot read result rows from {path}: {e}") from None
    else:
        store = RunStore.existing(path.parent if path.is_file() and path.name == RunStore.ROWS else path)
        rows = store.rows()
    if not rows:
        raise ResultsError(f"no finished cells in {path}")
    return rows


@dataclass
class CellDiff:
    model: str
    img_size: int
    protocol: str
    baseline: ResultRow
    current: ResultRow
    top1_delta: float  # current - baseline, points
    speed_ratio: float | None  # current / baseline images/s
    accuracy_failed: bool
    speed_failed: bool
    speed_within_noise: bool = False  # slower than the tolerance, but within the spread of both runs' rounds

    @property
    def status(self) -> str:
        failed = [name for name, bad in (("top-1 drop", self.accuracy_failed), ("slower", self.speed_failed)) if bad]
        if failed:
            return ", ".join(failed)
        return "ok (slower, within noise)" if self.speed_within_noise else "ok"

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "img_size": self.img_size,
            "protocol": self.protocol,
            "top1_baseline": self.baseline.top1,
            "top1_current": self.current.top1,
            "top1_delta": _r(self.top1_delta),
            "images_per_sec_baseline": self.baseline.images_per_sec,
            "images_per_sec_current": self.current.images_per_sec,
            "speed_ratio": _r(self.speed_ratio),
            "checkpoint_changed": self.baseline.checkpoint_sha256 != self.current.checkpoint_sha256,
            "accuracy_failed": self.accuracy_failed,
            "speed_failed": self.speed_failed,
            "speed_within_noise": self.speed_within_noise,
            "images_per_sec_iqr_baseline": _iqr_list(self.baseline),
            "images_per_sec_iqr_current": _iqr_list(self.current),
            "status": self.status,
        }


@dataclass
class Comparison:
    max_drop: float
    max_slowdown: float | None  # None: throughput is shown, not gated
    cells: list[CellDiff] = field(default_factory=list)
    only_baseline: list[str] = field(default_factory=list)
    only_current: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(c.accuracy_failed or c.speed_failed for c in self.cells)

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "max_drop": self.max_drop,
            "max_slowdown": self.max_slowdown,
            "cells": [c.to_dict() for c in self.cells],
            "only_in_baseline": self.only_baseline,
            "only_in_current": self.only_current,
        }


# Counts are divided once, so equal counts give equal floats; the slack only keeps an exact-tolerance change
# (e.g. a drop of exactly --max-drop) from failing on the last bit of a float subtraction.
_EPS = 1e-9


def images_per_sec_iqr(r: ResultRow) -> tuple[float, float] | None:
    """``(low, high)`` images/s of the middle half of a row's timed rounds; None for rows without the quartiles."""
    q1, q3 = r.extra.get("throughput_ms_per_batch_q1"), r.extra.get("throughput_ms_per_batch_q3")
    if not (q1 and q3 and r.throughput_batch):
        return None
    return 1000.0 * r.throughput_batch / q3, 1000.0 * r.throughput_batch / q1


def _iqr_list(r: ResultRow) -> list[float] | None:
    iqr = images_per_sec_iqr(r)
    return None if iqr is None else [_r(v) for v in iqr]


def within_noise(baseline: ResultRow, current: ResultRow) -> bool:
    """Whether the current run's images/s are within the measured spread of both runs: the interquartile ranges
    of their rounds overlap. Rows without quartiles (one timed run, or an older run) cannot tell: False."""
    b, c = images_per_sec_iqr(baseline), images_per_sec_iqr(current)
    if b is None or c is None:
        return False
    return c[1] >= b[0] - _EPS and b[1] >= c[0] - _EPS


def _match_key(r: ResultRow) -> tuple:
    return tuple(str(getattr(r, f)) for f in MATCH_FIELDS)


def _cell_name(r: ResultRow) -> str:
    return f"{r.model}@{r.img_size}px"


def compare_runs(
    baseline: list[ResultRow], current: list[ResultRow], max_drop: float = 0.1, max_slowdown: float | None = None
) -> Comparison:
    """Match the cells of two runs and flag top-1 drops beyond ``max_drop`` points and, when ``max_slowdown`` is
    given, throughput below ``(1 - max_slowdown)`` of the baseline unless it is within the measured spread of both
    runs (``within_noise``). Runs that share no cell, or cells on different datasets, cannot be compared
    (``ResultsError``)."""
    if not max_drop >= 0:
        raise CpvtEvalError(f"--max-drop must be >= 0 points, got {max_drop}")
    if max_slowdown is not None and not 0 <= max_slowdown < 1:
        raise CpvtEvalError(f"--max-slowdown must be a ratio in [0, 1), got {max_slowdown}")
    sides = []
    for name, rows in (("baseline", baseline), ("current", current)):
        cells: dict[tuple, ResultRow] = {}
        for r in rows:
            if _match_key(r) in cells:
                raise ResultsError(
                    f"the {name} run holds {_cell_name(r)} twice under the same protocol (different checkpoints or "
                    "datasets); compare run directories with one of each"
                )
            cells[_match_key(r)] = r
        sides.append(cells)
    base, cur = sides
    common = [_match_key(r) for r in ordered(list(base.values())) if _match_key(r) in cur]
    if not common:
        raise ResultsError("the runs share no cell (same model, size, crop, interpolation, PE options, dtype)")
    result = Comparison(max_drop=max_drop, max_slowdown=max_slowdown)
    for k in common:
        b, c = base[k], cur[k]
        if b.dataset_fingerprint != c.dataset_fingerprint:
            raise ResultsError(
                f"{_cell_name(b)} was evaluated on different datasets (fingerprint {b.dataset_fingerprint} in the "
                f"baseline, {c.dataset_fingerprint} now); the runs cannot be compared"
            )
        delta = 100.0 * c.correct1 / c.n_images - 100.0 * b.correct1 / b.n_images
        ratio = None
        if b.images_per_sec and c.images_per_sec:
            ratio = c.images_per_sec / b.images_per_sec
        too_slow = max_slowdown is not None and ratio is not None and ratio < 1.0 - max_slowdown - _EPS
        noise = too_slow and within_noise(b, c)
        result.cells.append(
            CellDiff(
                model=b.model,
                img_size=b.img_size,
                protocol=f"crop={b.crop_pct},{b.interpolation},{b.pe_options},{b.dtype}",
                baseline=b,
                current=c,
                top1_delta=delta,
                speed_ratio=ratio,
                accuracy_failed=-delta > max_drop + _EPS,
                speed_failed=too_slow and not noise,
                speed_within_noise=noise,
            )
        )
    result.only_baseline = [_cell_name(base[k]) for k in base if k not in cur]
    result.only_current = [_cell_name(cur[k]) for k in cur if k not in base]
    return result


def comparison_markdown(result: Comparison) -> str:
    """The matched cells as a Markdown table (readable in a CI log and pasteable into a review)."""
    body = [
        [
            c.model,
            f"{c.img_size}px",
            f"{c.baseline.top1:.2f}",
            f"{c.current.top1:.2f}",
            f"{c.top1_delta:+.2f}",
            _fmt(c.baseline.images_per_sec, ",.1f"),
            _fmt(c.current.images_per_sec, ",.1f"),
            _fmt(c.speed_ratio, ".3f"),
            c.status + (" (new checkpoint)" if c.baseline.checkpoint_sha256 != c.current.checkpoint_sha256 else ""),
        ]
        for c in result.cells
    ]
    header = ["model", "size", "top-1 base", "top-1 now", "Δ", "img/s base", "img/s now", "ratio", "status"]
    return _md_table(header, body, align_right_from=2)
