"""``cpvt-eval shift``: consistency under translation (Zhang 2019) of each model at each size."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..config import ShiftProtocol
from .app import MultiValueCommand, app, guarded
from .measure import measure, measuring
from .options import SizesOpt

SHIFT = "Shift"


@app.command(
    cls=MultiValueCommand,
    epilog=(
        "Example: cpvt-eval shift -m cpvt_ti -m deit_ti --sizes 224 384 --data /datasets/imagenet/val "
        "--checkpoint cpvt_ti=cpvt_ti.pth --out runs/shift   "
        "(ResNet-50 as in the antialiased-cnns README: cpvt-eval shift -m resnet50.tv_in1k --sizes 224 "
        "--data /datasets/imagenet/val)"
    ),
)
@measuring(crop=False)
def shift(
    sizes: SizesOpt = ["224"],  # noqa: B006 (typer reads the default; it is never mutated)
    max_shift: Annotated[
        Optional[int],
        typer.Option(
            help="Offsets are uniform in [0, N) per axis (default: the canvas minus the size, 32 at 224); "
            "0 means no shift.",
            rich_help_panel=SHIFT,
        ),
    ] = None,
    epochs: Annotated[
        int, typer.Option(help="Passes over the data, new offsets each (the reference uses 5).", rich_help_panel=SHIFT)
    ] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the offsets.", rich_help_panel=SHIFT)] = 0,
    mode: Annotated[
        str,
        typer.Option(
            help="random: two crops of the canvas (Zhang); circular: the centre crop rolled (torch.roll).",
            rich_help_panel=SHIFT,
        ),
    ] = "random",
    **shared,
) -> None:
    """How often each model's top-1 stays the same when the image shifts (consistency, Zhang 2019).

    At each size s: shorter side to round(s * 256 / 224), centre crop of that square; two s x s crops per image at
    offsets uniform in [0, --max-shift) per axis, --epochs times; consistency = % of pairs whose top-1 agree, with
    its Wilson interval and each crop's top-1. Writes rows.jsonl, per-pair predictions, provenance.json and
    shift.md/.csv/.tex/.json and consistency_vs_resolution.png (with exact McNemar tests between models) to the run
    directory; rerunning resumes, Ctrl-C stops with exit code 130 and keeps finished cells.
    """
    from ..probes import Shift

    with guarded():
        protocol = ShiftProtocol(mode=mode, max_shift=max_shift, epochs=epochs, seed=seed)
        measure(Shift(protocol), sizes=sizes, **shared)
