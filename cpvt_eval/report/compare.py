"""Compare two runs for CI: match their cells, flag top-1 drops and (when asked) slowdowns.

Throughput is gated only when asked (``max_slowdown``): images/s depend on the machine and its load, and a CI gate
that fails on another process's work is worse than none. When asked, a slowdown beyond the tolerance still passes
if it is within the measured spread of both runs: the interquartile ranges of their timed rounds overlap. A cell
either of whose rows is unstable (its rounds' images/s have an IQR over a quarter of their median) is not gated at
all, and reported as such.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CpvtEvalError, ResultsError
from ..results import SCHEMA_VERSION, ResultRow, RunStore, id_fields
from ..results.schema import PROTOCOL, WHAT
from ..results.store import migrate_row, row_problem
from .records import ordered, round_or_none
from .tables import fmt_value, md_table

# Cells of two runs are the same cell when the identity's model, size and protocol agree; the weights may change
# (that is what CI checks), and the data must be the same (checked separately, with its own message).
MATCH_ROLES = (WHAT, PROTOCOL)
MATCH_FIELDS = tuple(f.name for f in id_fields(*MATCH_ROLES))
# Labels whose spelling may change between versions of the schema without the computation changing (e.g. PE
# options keyed only for the models they affect): across versions, a field of these that differs on every cell
# is left out of the matching, and the report says so. The others (crop, interpolation, dtype) never are.
RELABELLED_FIELDS = ("pe_options", "model_args")


def load_rows(path: str | Path) -> list[ResultRow]:
    """Rows of a run directory, of its ``rows.jsonl``, or of a ``results.json`` written by ``report``."""
    path = Path(path)
    if path.is_file() and path.suffix == ".json":
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            dicts = doc["rows"]
            for i, d in enumerate(dicts):
                problem = row_problem(d)
                if problem:
                    raise ResultsError(f"{path}: row {i + 1} is damaged ({problem})")
            version = schema_version_of(path)
            rows = [ResultRow.from_dict(migrate_row(d, version)) for d in dicts]
        except (json.JSONDecodeError, KeyError, TypeError, OSError, UnicodeDecodeError) as e:
            raise ResultsError(f"cannot read result rows from {path}: {e}") from None
    else:
        store = RunStore.existing(path.parent if path.is_file() and path.name == RunStore.ROWS else path)
        rows = store.rows()
    if not rows:
        raise ResultsError(f"no finished cells in {path}")
    return rows


def schema_version_of(path: str | Path) -> int:
    """The schema version a run directory (or a ``results.json``) was written with; 1 when it predates the record."""
    path = Path(path)
    if path.is_file() and path.suffix == ".json":
        try:
            prov = json.loads(path.read_text(encoding="utf-8")).get("provenance") or {}
            return int(prov.get("schema_version", 1))
        except (json.JSONDecodeError, OSError, ValueError, TypeError, AttributeError, UnicodeDecodeError):
            return 1
    return RunStore.existing(path.parent if path.is_file() and path.name == RunStore.ROWS else path).schema_version()


@dataclass
class CellDiff:
    model: str
    img_size: int
    protocol: str
    baseline: ResultRow
    current: ResultRow
    top1_delta: float | None  # current - baseline, points; None for a label-free cell
    speed_ratio: float | None  # current / baseline images/s
    accuracy_failed: bool
    speed_failed: bool
    speed_within_noise: bool = False  # slower than the tolerance, but within the spread of both runs' rounds
    speed_unstable: bool = False  # asked to gate, but a row's rounds disagree too widely: not gated

    @property
    def status(self) -> str:
        failed = [name for name, bad in (("top-1 drop", self.accuracy_failed), ("slower", self.speed_failed)) if bad]
        if failed:
            return ", ".join(failed)
        if self.speed_unstable:
            return "ok (timing unstable, not gated)"
        return "ok (slower, within noise)" if self.speed_within_noise else "ok"

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "img_size": self.img_size,
            "protocol": self.protocol,
            "top1_baseline": self.baseline.top1,
            "top1_current": self.current.top1,
            "top1_delta": round_or_none(self.top1_delta),
            "images_per_sec_baseline": images_per_sec(self.baseline),
            "images_per_sec_current": images_per_sec(self.current),
            "speed_ratio": round_or_none(self.speed_ratio),
            "checkpoint_changed": self.baseline.checkpoint_sha256 != self.current.checkpoint_sha256,
            "accuracy_failed": self.accuracy_failed,
            "speed_failed": self.speed_failed,
            "speed_within_noise": self.speed_within_noise,
            "speed_unstable": self.speed_unstable,
            "images_per_sec_iqr_baseline": _iqr_list(self.baseline),
            "images_per_sec_iqr_current": _iqr_list(self.current),
            "images_per_sec_spread_baseline": round_or_none(images_per_sec_spread(self.baseline)),
            "images_per_sec_spread_current": round_or_none(images_per_sec_spread(self.current)),
            "load_avg_baseline": self.baseline.extra.get("throughput_load_avg"),
            "load_avg_current": self.current.extra.get("throughput_load_avg"),
            "status": self.status,
        }


@dataclass
class Comparison:
    max_drop: float
    max_slowdown: float | None  # None: throughput is shown, not gated
    cells: list[CellDiff] = field(default_factory=list)
    only_baseline: list[str] = field(default_factory=list)
    only_current: list[str] = field(default_factory=list)
    allow_missing: bool = False  # a baseline cell the current run lacks fails the comparison unless allowed
    note: str = ""  # how cells were matched across schema versions, when they were

    @property
    def missing_failed(self) -> bool:
        return bool(self.only_baseline) and not self.allow_missing

    @property
    def ok(self) -> bool:
        return not any(c.accuracy_failed or c.speed_failed for c in self.cells) and not self.missing_failed

    @property
    def verdict(self) -> str:
        """``ok``, ``REGRESSION`` (a cell failed its gate) or ``MISSING CELLS`` (only baseline cells are lacking)."""
        if self.ok:
            return "ok"
        return "REGRESSION" if any(c.accuracy_failed or c.speed_failed for c in self.cells) else "MISSING CELLS"

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "missing_failed": self.missing_failed,
            "note": self.note,
            "max_drop": self.max_drop,
            "max_slowdown": self.max_slowdown,
            "cells": [c.to_dict() for c in self.cells],
            "only_in_baseline": self.only_baseline,
            "only_in_current": self.only_current,
        }


# Counts are divided once, so equal counts give equal floats; the slack only keeps an exact-tolerance change
# (e.g. a drop of exactly --max-drop) from failing on the last bit of a float subtraction.
_EPS = 1e-9


def images_per_sec(r: ResultRow) -> float | None:
    """The model-only images/s of a cell, where its probe times the models (None elsewhere)."""
    return getattr(r, "images_per_sec", None)


def images_per_sec_iqr(r: ResultRow) -> tuple[float, float] | None:
    """``(low, high)`` images/s of the middle half of a row's timed rounds; None for rows without the quartiles."""
    q1, q3 = r.extra.get("throughput_ms_per_batch_q1"), r.extra.get("throughput_ms_per_batch_q3")
    if not (q1 and q3 and getattr(r, "throughput_batch", None)):
        return None
    return 1000.0 * r.throughput_batch / q3, 1000.0 * r.throughput_batch / q1


def images_per_sec_spread(r: ResultRow) -> float | None:
    """The IQR of a row's per-round images/s over their median; None for rows without the quartiles."""
    iqr = images_per_sec_iqr(r)
    if iqr is None or not images_per_sec(r):
        return None
    return (iqr[1] - iqr[0]) / images_per_sec(r)


# Rounds whose images/s have an IQR over this share of their median disagree too widely to gate on.
UNSTABLE_SPREAD = 0.25


def is_unstable(r: ResultRow) -> bool:
    """Whether a row's timed rounds disagree too widely to gate on (rows without quartiles cannot tell: False)."""
    spread = images_per_sec_spread(r)
    return spread is not None and spread > UNSTABLE_SPREAD + _EPS


def _iqr_list(r: ResultRow) -> list[float] | None:
    iqr = images_per_sec_iqr(r)
    return None if iqr is None else [round_or_none(v) for v in iqr]


def within_noise(baseline: ResultRow, current: ResultRow) -> bool:
    """Whether the current run's images/s are within the measured spread of both runs: the interquartile ranges
    of their rounds overlap. Rows without quartiles (one timed run, or an older run) cannot tell: False."""
    b, c = images_per_sec_iqr(baseline), images_per_sec_iqr(current)
    if b is None or c is None:
        return False
    return c[1] >= b[0] - _EPS and b[1] >= c[0] - _EPS


def _match_key(r: ResultRow, names: tuple[str, ...] = MATCH_FIELDS) -> tuple:
    return tuple(str(getattr(r, f)) for f in names)


def _shared_fields(
    baseline: list[ResultRow], current: list[ResultRow], versions: tuple[int, int] | None
) -> tuple[tuple[str, ...], str]:
    """The fields cells are matched on, and a one-line note when runs of two schema versions lose some: a field
    one run's rows were written without, or a relabelled field that differs on every cell of the same model
    and size."""
    absent = {f for r in (*baseline, *current) for f in getattr(r, "_absent", ()) if f in MATCH_FIELDS}
    if not absent and (versions is None or versions[0] == versions[1]):
        return MATCH_FIELDS, ""
    dropped = [f for f in MATCH_FIELDS if f in absent]
    if versions is not None and versions[0] != versions[1]:
        pairs = [(b, c) for b in baseline for c in current if (b.model, b.img_size) == (c.model, c.img_size)]
        for f in RELABELLED_FIELDS:
            if f not in dropped and pairs and all(str(getattr(b, f)) != str(getattr(c, f)) for b, c in pairs):
                dropped.append(f)
    if not dropped:
        return MATCH_FIELDS, ""
    which = f"schema {versions[0]} vs {versions[1]}" if versions else "rows written without some fields"
    return (
        tuple(f for f in MATCH_FIELDS if f not in dropped),
        f"the runs were written by different versions ({which}): cells matched without {', '.join(dropped)}",
    )


def _why_no_common_cell(baseline: list[ResultRow], current: list[ResultRow], names: tuple[str, ...]) -> str:
    for b in baseline:
        for c in current:
            if (b.model, b.img_size) == (c.model, c.img_size):
                f = next(f for f in names if str(getattr(b, f)) != str(getattr(c, f)))
                return f": {_cell_name(b)} differs in {f} ({getattr(b, f)!r} in the baseline, {getattr(c, f)!r} now)"
    return ""


def _cell_name(r: ResultRow) -> str:
    return f"{r.model}@{r.img_size}px"


def compare_runs(
    baseline: list[ResultRow],
    current: list[ResultRow],
    max_drop: float = 0.1,
    max_slowdown: float | None = None,
    *,
    allow_missing: bool = False,
    versions: tuple[int, int] | None = None,
) -> Comparison:
    """Match the cells of two runs and flag top-1 drops beyond ``max_drop`` points and, when ``max_slowdown`` is
    given, throughput below ``(1 - max_slowdown)`` of the baseline unless it is within the measured spread of both
    runs (``within_noise``) or either row's rounds are unstable (``is_unstable``: such a cell is not gated). Runs
    that share no cell, or cells on different datasets, cannot be compared (``ResultsError``). A baseline cell the
    current run lacks fails the comparison unless ``allow_missing``. ``versions``: the schema versions of the two
    runs; across versions cells are matched on the fields both share (``Comparison.note`` says which were left
    out)."""
    if not max_drop >= 0:
        raise CpvtEvalError(f"--max-drop must be >= 0 points, got {max_drop}")
    if max_slowdown is not None and not 0 <= max_slowdown < 1:
        raise CpvtEvalError(f"--max-slowdown must be a ratio in [0, 1), got {max_slowdown}")
    names, note = _shared_fields(baseline, current, versions)
    sides = []
    for name, rows in (("baseline", baseline), ("current", current)):
        cells: dict[tuple, ResultRow] = {}
        for r in rows:
            if _match_key(r, names) in cells:
                raise ResultsError(
                    f"the {name} run holds {_cell_name(r)} twice under the same protocol (different checkpoints or "
                    "datasets); compare run directories with one of each"
                )
            cells[_match_key(r, names)] = r
        sides.append(cells)
    base, cur = sides
    common = [_match_key(r, names) for r in ordered(list(base.values())) if _match_key(r, names) in cur]
    if not common:
        why = _why_no_common_cell(baseline, current, names)
        rerun = (
            f"; the baseline was written by schema {versions[0]}, this version writes {SCHEMA_VERSION}: re-run the "
            "baseline's command (its provenance.json) with this version"
            if versions and versions[0] != versions[1]
            else ""
        )
        raise ResultsError(
            f"the runs share no cell (same model, size, crop, interpolation, PE options, dtype){why}{rerun}"
        )
    result = Comparison(max_drop=max_drop, max_slowdown=max_slowdown, allow_missing=allow_missing, note=note)
    for k in common:
        b, c = base[k], cur[k]
        if b.dataset_fingerprint != c.dataset_fingerprint:
            raise ResultsError(
                f"{_cell_name(b)} was evaluated on different datasets (fingerprint {b.dataset_fingerprint} in the "
                f"baseline, {c.dataset_fingerprint} now); the runs cannot be compared"
            )
        # a label-free cell (agreement on unlabelled images) has no top-1 to gate
        labelled = b.top1 is not None and c.top1 is not None
        delta = 100.0 * c.correct1 / c.n_images - 100.0 * b.correct1 / b.n_images if labelled else None
        ratio = None
        if images_per_sec(b) and images_per_sec(c):
            ratio = images_per_sec(c) / images_per_sec(b)
        gated = max_slowdown is not None and ratio is not None
        unstable = gated and (is_unstable(b) or is_unstable(c))
        too_slow = gated and not unstable and ratio < 1.0 - max_slowdown - _EPS
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
                accuracy_failed=delta is not None and -delta > max_drop + _EPS,
                speed_failed=too_slow and not noise,
                speed_within_noise=noise,
                speed_unstable=unstable,
            )
        )
    result.only_baseline = [_cell_name(base[k]) for k in base if k not in cur]  # missing now: fails unless allowed
    result.only_current = [_cell_name(cur[k]) for k in cur if k not in base]
    return result


def comparison_markdown(result: Comparison) -> str:
    """The matched cells as a Markdown table (readable in a CI log and pasteable into a review)."""
    body = [
        [
            c.model,
            f"{c.img_size}px",
            fmt_value(c.baseline.top1, ".2f"),
            fmt_value(c.current.top1, ".2f"),
            fmt_value(c.top1_delta, "+.2f"),
            fmt_value(images_per_sec(c.baseline), ",.1f"),
            fmt_value(images_per_sec(c.current), ",.1f"),
            fmt_value(c.speed_ratio, ".3f"),
            c.status + (" (new checkpoint)" if c.baseline.checkpoint_sha256 != c.current.checkpoint_sha256 else ""),
        ]
        for c in result.cells
    ]
    header = ["model", "size", "top-1 base", "top-1 now", "Δ", "img/s base", "img/s now", "ratio", "status"]
    return md_table(header, body, align_right_from=2)


def comparison_summary(result: Comparison, baseline: str, current: str) -> str:
    """The comparison as a CI job's summary (GitHub Actions' ``$GITHUB_STEP_SUMMARY`` is Markdown): a heading with
    the verdict and the tolerances, the diff table, and the cells only one run has."""
    speed = "images/s not gated" if result.max_slowdown is None else f"images/s gated at {result.max_slowdown:.0%}"
    lines = [
        f"### cpvt-eval compare: {result.verdict}",
        "",
        f"`{baseline}` (baseline) vs `{current}`: top-1 drop allowed {result.max_drop:g} points, {speed}.",
        "",
        comparison_markdown(result),
        "",
    ]
    if result.only_baseline:
        fails = "fails the comparison" if result.missing_failed else "allowed by --allow-missing"
        lines += [f"Missing from the current run ({fails}): {', '.join(result.only_baseline)}", ""]
    if result.only_current:
        lines += [f"New in the current run: {', '.join(result.only_current)}", ""]
    if result.note:
        lines += [f"Note: {result.note}", ""]
    return "\n".join(lines) + "\n"


def not_comparable_summary(baseline: str, current: str, reason: str) -> str:
    """The CI summary of two runs that cannot be compared (exit code 2): the heading and the reason."""
    return f"### cpvt-eval compare: NOT COMPARABLE\n\n`{baseline}` (baseline) vs `{current}`: {reason}\n\n"
