"""``cpvt-eval resolution``: top-1/top-5 and images/s of each model at each size, without fine-tuning."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer

from .. import console, interrupts
from ..config import DEFAULT_BUDGET_S, Hooks, RunConfig, ThroughputConfig
from ..errors import CpvtEvalError
from .app import MultiValueCommand, app, guarded, parse_crop_pct
from .options import (
    DATA,
    PROTOCOL,
    SPEED,
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


@app.command(
    cls=MultiValueCommand,
    epilog=(
        "Example: cpvt-eval resolution --model cpvt_ti --model deit_ti --sizes 224 384 448 512 "
        "--data /datasets/imagenet/val --checkpoint cpvt_ti=cpvt_ti.pth --out runs/tiny"
    ),
)
def resolution(
    model: ModelOpt = [],  # noqa: B006 (--models-file may give them all)
    models_file: ModelsFileOpt = None,
    sizes: SizesOpt = ["224", "384", "448", "512"],  # noqa: B006 (typer reads the default; it is never mutated)
    data: DataOpt = None,
    checkpoint: CheckpointOpt = [],  # noqa: B006
    out: OutOpt = None,
    limit: LimitOpt = None,
    crop_pct: Annotated[
        str,
        typer.Option(
            help="Resize shorter side to floor(size / crop_pct), then crop; `weights`: each model's own (its "
            "pretrained config).",
            rich_help_panel=PROTOCOL,
        ),
    ] = "0.875",
    interpolation: InterpolationOpt = "bicubic",
    crop_mode: Annotated[
        str,
        typer.Option(
            help="timm's modes: center (shorter side to size / crop_pct, centre crop; the table's protocol), "
            "squash (both sides to size / crop_pct, centre crop), border (longer side to size / crop_pct, padded "
            "with the mean colour); full: the whole image to size x size, crop_pct unused (the official CvT 384 "
            "evaluation).",
            rich_help_panel=PROTOCOL,
        ),
    ] = "center",
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
    throughput: Annotated[
        bool,
        typer.Option(
            help="Measure model-only images/s per cell: the models of a size are timed together, in interleaved "
            "rounds, after the size's data pass.",
            rich_help_panel=SPEED,
        ),
    ] = True,
    throughput_batch: Annotated[
        Optional[int],
        typer.Option(
            min=1,
            help="Batch of the timing runs (default: --batch-size, halved until the minimum rounds fit the budget).",
            rich_help_panel=SPEED,
        ),
    ] = None,
    throughput_repeats: Annotated[
        Optional[int],
        typer.Option(min=1, help="Force this many timed rounds (default: the budget decides).", rich_help_panel=SPEED),
    ] = None,
    throughput_budget: Annotated[
        float,
        typer.Option(
            min=0.01,
            help="Seconds of timed forwards per model and size; at least 3 rounds run whatever the budget.",
            rich_help_panel=SPEED,
        ),
    ] = DEFAULT_BUDGET_S,
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
    real_labels: Annotated[
        Optional[str],
        typer.Option(
            "--real-labels",
            metavar="[FILE]",
            help="Add ImageNet-ReaL top-1 (alone: the labels timm ships).",
            rich_help_panel=DATA,
        ),
    ] = None,
    on_bad_image: OnBadImageOpt = "stop",
    decode_draft: DecodeDraftOpt = False,
) -> None:
    """Top-1/top-5 and images/s of each model at each size, without fine-tuning.

    Writes rows.jsonl, per-image predictions, provenance.json and the reports (results.md/.csv/.tex/.json, plots)
    to the run directory. Each cell is stored the moment it finishes: rerunning the same command resumes and skips
    finished cells; Ctrl-C stops with exit code 130 and keeps them.
    """
    with guarded():
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
            crop_pct=parse_crop_pct(crop_pct),
            interpolation=interpolation,
            crop_mode=crop_mode,
            batch_size=batch_size,
            workers=workers,
            device=device,
            ema=ema,
            throughput=ThroughputConfig(
                enabled=throughput, batch_size=throughput_batch, repeats=throughput_repeats, budget_s=throughput_budget
            ),
            layout=layout,
            labels=labels,
            classes=classes,
            label_subset=label_subset,
            test_set=test_set,
            label_key=label_key,
            split=split,
            real_labels=real_labels,
            on_bad_image=on_bad_image,
            decode_draft=decode_draft,
            force=force,
        )
        run_and_print(cfg, json_out, verbose)


def run_and_print(cfg: RunConfig, json_out: bool, verbose: bool) -> None:
    """Run the job under torchrun or alone, then print the rows (a table, or JSON only on stdout)."""
    from .. import distributed
    from ..jobs.resolution import run_resolution
    from ..report import split_rows

    # Machine-readable mode: stdout holds only JSON; messages go to stderr, and only when a person watches it.
    quiet = json_out and not sys.stderr.isatty()
    hooks = Hooks(
        progress=console.BarProgress(),
        notify=(lambda _m: None) if quiet else console.info,
        log=console.info if verbose and not quiet else (lambda _m: None),
    )
    # Under torchrun every process runs this command; only rank 0 reports. The session is left only after
    # rank 0 has printed (its result or the error of any rank).
    with distributed.session(cfg.device) as dist, guarded(), interrupts.installed():
        if not dist.is_main:
            console.silence()
        outcome = run_resolution(cfg, hooks, dist)
        if outcome.store is None:
            return
        rows, _ = split_rows(outcome.store.rows())  # a directory may also hold `cpvt-eval shift` rows
        if json_out:
            print(json.dumps([r.to_dict() for r in rows], indent=2))
        else:
            console.print_results(rows)
            console.info(f"results: {outcome.store.root / 'results.csv'}, {outcome.store.root / 'results.md'}")
