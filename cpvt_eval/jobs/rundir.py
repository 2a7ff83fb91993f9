"""The run directory as a job opens and closes it: the skipped cells said once, provenance, ``skipped.tsv``,
``load_reports.json``, the cheap reports after each cell, and the one translation of a full disk."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from pathlib import Path

import torch

from .. import report
from ..config import Hooks, RunConfig
from ..data import ImageSet
from ..engine import EvalModel
from ..errors import CpvtEvalError, EnvironmentFailure, is_no_space
from ..results import CellId, RunStore, provenance_record

__all__ = ["config_summary", "full_disk_translated", "no_space_error", "open_run", "skipped_tsv", "write_reports"]


@contextlib.contextmanager
def full_disk_translated(store: RunStore | None, cells: Callable[[], Iterable[CellId]]) -> Iterator[None]:
    """The one translation of a full disk: an ``OSError`` of no space (ENOSPC, EDQUOT) inside the block becomes
    ``no_space_error``'s line about ``cells()``; any other error, and any error on a rank without the run directory
    (``store`` None), passes as it is."""
    try:
        yield
    except OSError as e:
        if store is None or not is_no_space(e):
            raise
        raise no_space_error(store, cells(), e) from None


def no_space_error(store: RunStore, ids, e: OSError) -> EnvironmentFailure:
    """The one line of a full disk: where, and which of this run's cells are kept (the rerun resumes)."""
    try:
        finished = store.finished_keys()
    except (OSError, CpvtEvalError):
        finished = set()
    ids = list(ids)
    kept = [ident.describe() for ident in ids if ident.key() in finished]
    listed = f": {', '.join(kept)}" if kept else ""
    where = Path(e.filename).parent if e.filename else store.root
    return EnvironmentFailure(
        f"no space left on {where}; kept {len(kept)} of {len(ids)} finished cell(s){listed}; "
        "free some space and rerun the same command to resume"
    )


def open_run(
    store: RunStore | None,
    cfg: RunConfig,
    hooks: Hooks,
    models: list[EvalModel],
    image_set: ImageSet,
    keys: dict[tuple[str, str, int], str],
    device: torch.device,
    seed: int,
    summary: dict,
    dist_info: dict | None,
) -> tuple[set[str], dict]:
    """The opening of a job's computation: the finished cells it skips (said once, by name), and its provenance
    record, ``skipped.tsv`` and ``load_reports.json`` written to the run directory (none on a rank without one).

    Returns:
        ``(done, record)``: the keys of the finished cells, and the provenance record to complete at the end.
    """
    done = set() if cfg.force or store is None else store.finished_keys() & set(keys.values())
    skipped = [cell for cell, key in keys.items() if key in done]
    if skipped:
        several = len({probe for probe, _, _ in keys}) > 1
        listed = ", ".join(f"{probe} " * several + f"{name}@{size}px" for probe, name, size in skipped)
        hooks.notify(f"{store.root}: skipping {len(skipped)} finished cell(s) ({listed}); --force recomputes them")
    record = provenance_record(list(cfg.argv), str(device), seed, summary)
    record.update(cells_total=len(keys), cells_skipped=len(skipped), force=cfg.force, distributed=dist_info)
    if store is not None:
        store.record_provenance(record)
        if image_set.skipped:
            store.write_text("skipped.tsv", skipped_tsv(image_set.skipped))
        store.write_text("load_reports.json", json.dumps({m.name: m.load_report for m in models}, indent=2) + "\n")
    return done, record


def skipped_tsv(skipped: list[tuple[str, str]]) -> str:
    """``path<TAB>reason`` lines, quoted where a name holds a tab, a newline or a quote (csv's tab dialect), so that
    ``csv.reader(f, dialect="excel-tab")`` gives every name back."""
    buf = io.StringIO()
    writer = csv.writer(buf, dialect="excel-tab", lineterminator="\n")
    writer.writerows(skipped)
    return buf.getvalue()


def write_reports(store: RunStore, probe: str | None = None) -> list[Path]:
    """The cheap reports (Markdown and CSV), rewritten after every cell so that they always match the rows: those of
    ``probe`` (the probe of the cell just committed), or every probe's."""
    return report.render(store, ("md", "csv"), probes=None if probe is None else (probe,))


def config_summary(cfg: RunConfig) -> dict:
    """The run's configuration as provenance records it (paths as strings)."""
    summary = {}
    for name, value in asdict(cfg).items():
        if name in ("out", "argv", "report_formats", "force", "workers", "timing"):
            continue
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, dict) and name == "checkpoints":
            value = {k: str(v) for k, v in value.items()}
        elif isinstance(value, tuple):
            value = list(value)
        summary[name] = value
    return summary
