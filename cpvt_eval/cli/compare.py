"""``cpvt-eval compare``: a CI gate between a baseline run and the current one."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import console
from ..errors import EXIT_CHECK_FAILED, CpvtEvalError
from .app import app, guarded

# The file GitHub Actions renders on the job's page as Markdown; every step may append to it.
STEP_SUMMARY_ENV = "GITHUB_STEP_SUMMARY"


def append_step_summary(markdown: str) -> None:
    """Append ``markdown`` to the file ``$GITHUB_STEP_SUMMARY`` names, when it names one; a file that cannot be
    written is a warning (the exit code carries the verdict)."""
    path = os.environ.get(STEP_SUMMARY_ENV)
    if not path:
        return
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(markdown)
    except OSError as e:
        console.warn(f"cannot append the comparison to ${STEP_SUMMARY_ENV} ({path}): {e.strerror or e}")


@app.command(
    "compare",
    epilog=(
        "Example: cpvt-eval compare runs/baseline runs/current --max-drop 0.1 --max-slowdown 0.1   "
        "Exit codes: 0 within tolerance; 1 a top-1 drop, (with --max-slowdown) a slowdown beyond the tolerance and "
        "the measured noise, or a baseline cell missing from the current run; 2 the runs cannot be compared. "
        "When $GITHUB_STEP_SUMMARY names a file (GitHub Actions), the Markdown diff is appended to it."
    ),
)
def compare_cmd(
    baseline: Annotated[Path, typer.Argument(help="Baseline run directory (or its rows.jsonl / results.json).")],
    current: Annotated[Path, typer.Argument(help="Current run directory (or its rows.jsonl / results.json).")],
    max_drop: Annotated[float, typer.Option(help="Largest allowed top-1 drop, in points.")] = 0.1,
    max_slowdown: Annotated[
        Optional[float],
        typer.Option(
            help="Gate throughput: the largest allowed images/s drop, as a ratio (0.1 = 10%). Default: not gated. "
            "A larger drop still passes, reported 'within noise', when the interquartile ranges of the two runs' "
            "timed rounds overlap; a cell whose rounds disagree widely (IQR over a quarter of the median) in either "
            "run is not gated, reported 'timing unstable'."
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Write only the comparison as JSON on stdout.")] = False,
    allow_missing: Annotated[
        bool, typer.Option("--allow-missing", help="A baseline cell missing from the current run only warns.")
    ] = False,
) -> None:
    """Match the cells of two runs, print the differences, and fail (exit 1) on a regression or on a baseline
    cell the current run lacks.

    A regression is a top-1 drop beyond --max-drop. Throughput is compared and shown, and gated only with
    --max-slowdown: images/s follow the machine and its load. In a CI job with $GITHUB_STEP_SUMMARY set, the verdict
    and the diff table are appended to that file (also with --json), or why the runs cannot be compared.
    """
    from .. import report
    from ..report.compare import schema_version_of

    with guarded():
        try:
            result = report.compare_runs(
                report.load_rows(baseline),
                report.load_rows(current),
                max_drop,
                max_slowdown,
                allow_missing=allow_missing,
                versions=(schema_version_of(baseline), schema_version_of(current)),
            )
        except CpvtEvalError as e:
            append_step_summary(report.not_comparable_summary(str(baseline), str(current), str(e)))
            raise
    append_step_summary(report.comparison_summary(result, str(baseline), str(current)))
    if json_out:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        typer.echo(report.comparison_markdown(result))
        if result.note:
            console.info(result.note)
        if result.missing_failed:
            console.error(
                f"the current run lacks {len(result.only_baseline)} cell(s) of the baseline: "
                f"{', '.join(result.only_baseline)} (--allow-missing accepts that)"
            )
        else:
            for name in result.only_baseline:
                console.warn(f"{name} is only in the baseline")
        for name in result.only_current:
            console.info(f"{name} is new in the current run")
        verdict = result.verdict
        speed = "images/s not gated" if max_slowdown is None else f"{max_slowdown:.0%} images/s beyond the noise"
        console.info(f"{verdict}: tolerance {max_drop} points top-1, {speed}")
        noisy = [f"{c.model}@{c.img_size}px" for c in result.cells if c.speed_within_noise]
        if noisy:
            console.info(f"slower but within the measured spread of both runs: {', '.join(noisy)}")
        unstable = [f"{c.model}@{c.img_size}px" for c in result.cells if c.speed_unstable]
        if unstable:
            console.info(
                "timing unstable (the rounds' images/s spread over a quarter of their median), images/s not gated: "
                + ", ".join(unstable)
            )
    if not result.ok:
        raise typer.Exit(code=EXIT_CHECK_FAILED)
