"""``cpvt-eval shift``: consistency under translation (Zhang 2019) of each model at each size."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer

from .. import console, interrupts
from ..config import Hooks, RunConfig, ShiftProtocol
from ..errors import CpvtEvalError
from .app import MultiValueCommand, app, guarded
from .options import (
    AntialiasOpt,
    ApeInterpOpt,
    BatchSizeOpt,
    CheckpointOpt,
    ClassesOpt,
    DataOpt,
    DecodeDraftOpt,
    DeviceOpt,
    DtypeOpt,
    EmaOpt,
    ForceOpt,
    InterpolationOpt,
    JsonOpt,
    LabelKeyOpt,
    LabelsOpt,
    LabelSubsetOpt,
    LayoutOpt,
    LimitOpt,
    ModelArgOpt,
    ModelOpt,
    ModelsFileOpt,
    OnBadImageOpt,
    OutOpt,
    SincosOpt,
    SizesOpt,
    SplitOpt,
    TestSetOpt,
    VerboseOpt,
    WindowOpt,
    WorkersOpt,
    common_run_config,
)

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
def shift(
    model: ModelOpt = [],  # noqa: B006 (--models-file may give them all)
    models_file: ModelsFileOpt = None,
    sizes: SizesOpt = ["224"],  # noqa: B006 (typer reads the default; it is never mutated)
    data: DataOpt = None,
    checkpoint: CheckpointOpt = [],  # noqa: B006
    out: OutOpt = None,
    limit: LimitOpt = None,
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
    interpolation: InterpolationOpt = "bicubic",
    batch_size: BatchSizeOpt = 64,
    workers: WorkersOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "fp32",
    ape_interp: ApeInterpOpt = "bicubic",
    antialias: AntialiasOpt = False,
    sincos: SincosOpt = "regenerate",
    window: WindowOpt = "keep",
    model_arg: ModelArgOpt = [],  # noqa: B006
    ema: EmaOpt = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = False,
    layout: LayoutOpt = "auto",
    labels: LabelsOpt = None,
    classes: ClassesOpt = None,
    label_subset: LabelSubsetOpt = None,
    test_set: TestSetOpt = None,
    label_key: LabelKeyOpt = None,
    split: SplitOpt = None,
    on_bad_image: OnBadImageOpt = "stop",
    decode_draft: DecodeDraftOpt = False,
) -> None:
    """How often each model's top-1 stays the same when the image shifts (consistency, Zhang 2019).

    At each size s: shorter side to round(s * 256 / 224), centre crop of that square; two s x s crops per image at
    offsets uniform in [0, --max-shift) per axis, --epochs times; consistency = % of pairs whose top-1 agree, with
    its Wilson interval and each crop's top-1. Writes rows.jsonl, per-pair predictions, provenance.json and
    shift.md/.csv/.tex/.json and consistency_vs_resolution.png (with exact McNemar tests between models) to the run
    directory; rerunning resumes, Ctrl-C stops with exit code 130 and keeps finished cells.
    """
    with guarded():
        protocol = ShiftProtocol(mode=mode, max_shift=max_shift, epochs=epochs, seed=seed)
        if data is None:
            raise CpvtEvalError("no dataset: pass --data DIR or set CPVT_EVAL_DATA")
        cfg = common_run_config(
            model=model,
            models_file=models_file,
            sizes=sizes,
            data=data,
            out=out,
            checkpoint=checkpoint,
            model_arg=model_arg,
            ape_interp=ape_interp,
            antialias=antialias,
            sincos=sincos,
            window=window,
            dtype=dtype,
            argv=("cpvt-eval", *sys.argv[1:]),
            limit=limit,
            interpolation=interpolation,
            batch_size=batch_size,
            workers=workers,
            device=device,
            ema=ema,
            layout=layout,
            labels=labels,
            classes=classes,
            label_subset=label_subset,
            test_set=test_set,
            label_key=label_key,
            split=split,
            on_bad_image=on_bad_image,
            decode_draft=decode_draft,
            force=force,
        )
        run_and_print(cfg, protocol, json_out, verbose)


def run_and_print(cfg: RunConfig, protocol: ShiftProtocol, json_out: bool, verbose: bool) -> None:
    """Run the job, then print the shift rows (a table, or JSON only on stdout)."""
    from ..jobs.shift import run_shift
    from ..report import shift_row_dict, split_rows

    quiet = json_out and not sys.stderr.isatty()
    hooks = Hooks(
        progress=console.BarProgress(),
        notify=(lambda _m: None) if quiet else console.info,
        log=console.info if verbose and not quiet else (lambda _m: None),
    )
    with guarded(), interrupts.installed():
        outcome = run_shift(cfg, hooks, protocol)
        _, rows = split_rows(outcome.store.rows())
        if json_out:
            print(json.dumps([shift_row_dict(r) for r in rows], indent=2))
        else:
            console.print_shift_results(rows)
            console.info(f"results: {outcome.store.root / 'shift.csv'}, {outcome.store.root / 'shift.md'}")
