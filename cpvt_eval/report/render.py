"""Render the chosen report formats of a run directory, atomically, from what it stores."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ResultsError
from ..probes import PROBES, split
from ..results import RunStore, atomic_write_bytes, atomic_write_text
from . import probe_report
from .plots import PLOT_THROUGHPUT, PLOT_TOP1, plot_throughput, plot_top1
from .records import pair_records
from .text import FORMATS, TITLE, json_report, latex_report, markdown_report, to_csv


def render(
    store: RunStore,
    formats: tuple[str, ...] = FORMATS,
    out_dir: str | Path | None = None,
    pairs: bool = False,
    title: str = TITLE,
) -> list[Path]:
    """Write the chosen formats for the rows stored in ``store`` to ``out_dir`` (default: the run directory).

    Files: results.md, results.csv, results.tex, results.json, top1_vs_resolution.png,
    throughput_vs_resolution.png. Plots are written first so that results.md can link the ones present.
    The rows of every other probe have their own files (``probes``: shift.*, consistency_vs_resolution.png;
    agreement.*, agreement_vs_resolution.png); results.* are written when the run holds resolution rows or no row
    at all.
    """
    out = Path(out_dir) if out_dir is not None else store.root
    if out.exists() and not out.is_dir():
        raise ResultsError(f"report output {out} exists and is not a directory")
    by_probe = split(store.rows())
    rows = by_probe.pop("resolution")
    runs = store.provenance()
    provenance = runs[-1] if runs else None
    written: list[Path] = []
    for name, probe_rows in by_probe.items():
        if probe_rows and name in PROBES:  # a probe of a later version is left to that version's reports
            written += probe_report.render(PROBES[name](), store, probe_rows, formats, out, provenance)
    if not rows and any(by_probe.values()):
        return written
    pair_list = pair_records(store, rows) if pairs else None
    if "png" in formats and rows:
        for name, data in ((PLOT_TOP1, plot_top1(rows)), (PLOT_THROUGHPUT, plot_throughput(rows))):
            if data is not None:
                atomic_write_bytes(out / name, data)
                written.append(out / name)
    plots = tuple(name for name in (PLOT_TOP1, PLOT_THROUGHPUT) if (out / name).is_file())
    texts = {
        "md": ("results.md", lambda: markdown_report(rows, title, pair_list, plots, provenance)),
        "csv": ("results.csv", lambda: to_csv(rows)),
        "tex": ("results.tex", lambda: latex_report(rows, title)),
        "json": (
            "results.json",
            lambda: json.dumps(json_report(rows, pair_list, provenance), indent=2, ensure_ascii=False) + "\n",
        ),
    }
    for fmt in formats:
        if fmt in texts:
            name, make = texts[fmt]
            atomic_write_text(out / name, make())
            written.append(out / name)
    return written
