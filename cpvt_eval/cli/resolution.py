"""``cpvt-eval resolution``: top-1/top-5 and images/s of each model at each size, without fine-tuning."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Optional

import typer

from ..config import DEFAULT_BUDGET_S, ThroughputConfig
from .app import MultiValueCommand, app, guarded
from .measure import measure, measuring
from .options import DATA, SPEED, SizesOpt

_speed = partial(typer.Option, rich_help_panel=SPEED)


@app.command(
    cls=MultiValueCommand,
    epilog=(
        "Example: cpvt-eval resolution --model cpvt_ti --model deit_ti --sizes 224 384 448 512 "
        "--data /datasets/imagenet/val --checkpoint cpvt_ti=cpvt_ti.pth --out runs/tiny"
    ),
)
@measuring(crop=True)
def resolution(
    sizes: SizesOpt = ["224", "384", "448", "512"],  # noqa: B006 (typer reads the default; it is never mutated)
    throughput: Annotated[
        bool,
        _speed(
            help="Measure model-only images/s per cell: the models of a size are timed together, in interleaved "
            "rounds, after the size's data pass."
        ),
    ] = True,
    throughput_batch: Annotated[
        Optional[int],
        _speed(
            min=1,
            help="Batch of the timing runs (default: --batch-size, halved until the minimum rounds fit the budget).",
        ),
    ] = None,
    throughput_repeats: Annotated[
        Optional[int], _speed(min=1, help="Force this many timed rounds (default: the budget decides).")
    ] = None,
    throughput_budget: Annotated[
        float,
        _speed(
            min=0.01, help="Seconds of timed forwards per model and size; at least 3 rounds run whatever the budget."
        ),
    ] = DEFAULT_BUDGET_S,
    real_labels: Annotated[
        Optional[str],
        typer.Option(
            "--real-labels",
            metavar="[FILE]",
            help="Add ImageNet-ReaL top-1 (alone: the labels timm ships).",
            rich_help_panel=DATA,
        ),
    ] = None,
    **shared,
) -> None:
    """Top-1/top-5 and images/s of each model at each size, without fine-tuning.

    Writes rows.jsonl, per-image predictions, provenance.json and the reports (results.md/.csv/.tex/.json, plots)
    to the run directory. Each cell is stored the moment it finishes: rerunning the same command resumes and skips
    finished cells; Ctrl-C stops with exit code 130 and keeps them.
    """
    from ..probes import Resolution

    with guarded():
        throughput_cfg = ThroughputConfig(
            enabled=throughput, batch_size=throughput_batch, repeats=throughput_repeats, budget_s=throughput_budget
        )
        measure(Resolution(), sizes=sizes, throughput=throughput_cfg, real_labels=real_labels, **shared)
