"""Render the chosen report formats of a run directory, atomically, from what it stores."""

from __future__ import annotations

from pathlib import Path

from ..errors import ResultsError
from ..probes import PROBES, split
from ..results import FIRST_PROBE, RunStore
from . import pipeline
from .tables import FORMATS


def render(
    store: RunStore,
    formats: tuple[str, ...] = FORMATS,
    out_dir: str | Path | None = None,
    pairs: bool = False,
    probes: tuple[str, ...] | None = None,
) -> list[Path]:
    """Write the chosen formats for the rows stored in ``store`` to ``out_dir`` (default: the run directory).

    Each registered probe with rows in the run has its own files (``ReportSpec.stem``: results.*, shift.*,
    agreement.*, ...) and plots; a run without any row gets the first probe's (``results.md``: no finished cells
    yet). Rows of a probe this version does not know are left to the version that wrote them. ``pairs`` adds the
    paired tests of the probes that show them only when asked; ``probes``: only those probes' files (a cell just
    committed changes its own probe's reports alone).
    """
    out = Path(out_dir) if out_dir is not None else store.root
    if out.exists() and not out.is_dir():
        raise ResultsError(f"report output {out} exists and is not a directory")
    by_probe = split(store.rows())
    runs = store.provenance()
    provenance = runs[-1] if runs else None
    written: list[Path] = []
    for name, probe_rows in by_probe.items():
        empty = name == FIRST_PROBE and not any(by_probe.values())
        if name in PROBES and (probe_rows or empty) and (probes is None or name in probes):
            written += pipeline.render(PROBES[name](), store, probe_rows, formats, out, provenance, pairs)
    return written
