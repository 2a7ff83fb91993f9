"""``cpvt-eval report``: re-render the tables and plots of a run directory from its stored results."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import console
from .app import app, guarded


@app.command(
    "report",
    epilog=(
        "Example: cpvt-eval report runs/tiny --format md,tex,png --pairs   "
        "(writes results.md, results.tex and the plots into runs/tiny)"
    ),
)
def report_cmd(
    run_dir: Annotated[
        Path, typer.Argument(help="A run directory written by `cpvt-eval resolution`, `shift` or `agreement`.")
    ],
    formats: Annotated[
        str, typer.Option("--format", "-f", help="Comma-separated: md, csv, tex, json, png.")
    ] = "md,csv,tex,json,png",
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write here (default: RUN_DIR).")] = None,
    pairs: Annotated[
        bool, typer.Option("--pairs", help="Add exact McNemar tests between models at the same size.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Write only the report as JSON on stdout.")] = False,
) -> None:
    """Tables (top-1 by size with 95% intervals, change from native size and from the paper; throughput),
    LaTeX (booktabs), JSON and plots, rendered from stored results without recomputing anything. Rows of
    `cpvt-eval shift` go to shift.md/.csv/.tex/.json and consistency_vs_resolution.png, rows of `cpvt-eval
    agreement` to agreement.* and agreement_vs_resolution.png, each with McNemar tests between models.
    """
    from .. import report
    from ..errors import EnvironmentFailure, ResultsError
    from ..probes import PROBES, split
    from ..results import RunStore

    with guarded():
        chosen = report.parse_formats(formats)
        store = RunStore.existing(run_dir)
        if out is not None:
            if out.exists() and not out.is_dir():
                raise ResultsError(f"--out {out} exists and is not a directory; name a folder for the reports")
            out.mkdir(parents=True, exist_ok=True)
        try:
            written = report.render(store, chosen, out, pairs=pairs)
        except OSError as e:
            if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise
            raise EnvironmentFailure(
                f"cannot write the reports into {out or run_dir} ({e.strerror}); write them elsewhere with --out DIR"
            ) from None
        if json_out:
            runs = store.provenance()
            provenance = runs[-1] if runs else None
            by_probe = split(store.rows())
            rows = by_probe.pop("resolution")
            doc = report.json_report(rows, report.pair_records(store, rows) if pairs else None, provenance)
            for name, probe_rows in by_probe.items():
                if probe_rows and name in PROBES:
                    probe = PROBES[name]()
                    pair_list = report.probe_report.pair_records(probe, store, probe_rows)
                    doc[name] = report.probe_report.json_doc(probe, probe_rows, pair_list, provenance)
            doc["files"] = [str(p) for p in written]
            text = json.dumps(doc, indent=2, ensure_ascii=False)
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # a file name that is not UTF-8: JSON escapes keep it exact
                text = json.dumps(doc, indent=2)
            print(text)
        else:
            for path in written:
                console.info(f"wrote {path}")
