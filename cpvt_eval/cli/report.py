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
        Path, typer.Argument(help="A run directory written by a measuring command (`cpvt-eval resolution`, ...).")
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
    """Every probe's tables (its figure by size with 95% intervals, change from the native size, ...), LaTeX
    (booktabs), JSON and plots, rendered from stored results without recomputing anything: results.* for accuracy
    by size, shift.*, agreement.*, ... for the other probes, each with its paired tests between models.
    """
    from .. import report
    from ..errors import EnvironmentFailure, ResultsError
    from ..probes import PROBES, split
    from ..results import FIRST_PROBE, RunStore

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
            doc = {}
            for name, probe_rows in split(store.rows()).items():
                # the first probe's document is the top level (as ``results.json``, empty when it has no rows),
                # every other probe's under its name
                if name in PROBES and (probe_rows or name == FIRST_PROBE):
                    probe = PROBES[name]()
                    asked = probe.report.pairs is not None and (probe.report.pairs.always or pairs)
                    pair_list = report.pipeline.pair_records(probe, store, probe_rows) if asked else None
                    part = report.pipeline.json_doc(probe, probe_rows, pair_list, provenance)
                    if name == FIRST_PROBE:
                        doc.update(part)
                    else:
                        doc[name] = part
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
