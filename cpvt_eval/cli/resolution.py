"""``cpvt-eval resolution``: top-1/top-5 and images/s of each model at each size, without fine-tuning."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import console
from ..config import APE_INTERPOLATIONS, DEFAULT_BUDGET_S, Hooks, PEOptions, RunConfig, ThroughputConfig
from ..errors import CpvtEvalError
from ..runtime import check_dtype
from .app import (
    MultiValueCommand,
    app,
    default_out,
    guarded,
    parse_checkpoints,
    parse_model_args,
    parse_models,
    parse_sizes,
    stop_on_sigterm,
)

MODEL, DATA, PROTOCOL, SPEED, OUTPUT = "Model", "Data", "Protocol", "Speed", "Output"


@app.command(
    cls=MultiValueCommand,
    epilog=(
        "Example: cpvt-eval resolution --model cpvt_ti --model deit_ti --sizes 224 384 448 512 "
        "--data /datasets/imagenet/val --checkpoint cpvt_ti=cpvt_ti.pth --out runs/tiny"
    ),
)
def resolution(
    model: Annotated[
        list[str],
        typer.Option("--model", "-m", help="Model name or alias; repeat or list several.", rich_help_panel=MODEL),
    ],
    sizes: Annotated[
        list[str],
        typer.Option("--sizes", "-s", help="Sizes in px: `224 384 512` or `224,384`.", rich_help_panel=PROTOCOL),
    ] = ["224", "384", "448", "512"],  # noqa: B006 (typer reads the default; it is never mutated)
    data: Annotated[
        Optional[Path],
        typer.Option(
            "--data",
            "-d",
            envvar="CPVT_EVAL_DATA",
            help="ImageNet val: a folder in any --layout, or a manifest CSV.",
            rich_help_panel=DATA,
        ),
    ] = None,
    checkpoint: Annotated[
        list[str],
        typer.Option(
            "--checkpoint",
            "-c",
            help="NAME=SOURCE (or SOURCE with one model): a .pth/.pt/.safetensors file, an https:// URL (cached; "
            "#sha256=<hex> pins it), hf-hub:org/name, or a timm tag like deit_tiny_patch16_224.fb_in1k; "
            "#drop=<glob>,... leaves keys out.",
            rich_help_panel=MODEL,
        ),
    ] = [],  # noqa: B006
    out: Annotated[
        Optional[Path],
        typer.Option("--out", "-o", help="Run directory (default: runs/MODEL+MODEL...).", rich_help_panel=OUTPUT),
    ] = None,
    limit: Annotated[
        Optional[int],
        typer.Option(help="Deterministic class-stratified subset of N images.", rich_help_panel=DATA),
    ] = None,
    crop_pct: Annotated[
        float, typer.Option(help="Resize shorter side to floor(size / crop_pct), then crop.", rich_help_panel=PROTOCOL)
    ] = 0.875,
    interpolation: Annotated[str, typer.Option(help="Image resize interpolation.", rich_help_panel=PROTOCOL)] = (
        "bicubic"
    ),
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, rich_help_panel=SPEED)] = 64,
    workers: Annotated[
        Optional[int],
        typer.Option("--workers", "-j", min=0, help="Data loader workers (default: the cores).", rich_help_panel=SPEED),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.", rich_help_panel=SPEED)] = "auto",
    dtype: Annotated[str, typer.Option(help="fp32, bf16 or fp16 (autocast).", rich_help_panel=PROTOCOL)] = "fp32",
    ape_interp: Annotated[
        str, typer.Option(help="APE resampling: " + ", ".join(APE_INTERPOLATIONS), rich_help_panel=PROTOCOL)
    ] = "bicubic",
    antialias: Annotated[
        bool, typer.Option(help="Antialias when resampling the APE (DeiT: no).", rich_help_panel=PROTOCOL)
    ] = False,
    sincos: Annotated[
        str, typer.Option(help="Sin-cos APE at a new size: regenerate or resample.", rich_help_panel=PROTOCOL)
    ] = "regenerate",
    model_arg: Annotated[
        list[str],
        typer.Option(
            "--model-arg",
            help="[NAME:]key=value for the model constructor, e.g. peg_positions=0,3.",
            rich_help_panel=MODEL,
        ),
    ] = [],  # noqa: B006
    ema: Annotated[
        Optional[bool],
        typer.Option(
            "--ema/--no-ema",
            help="Take the EMA weights (model_ema, state_dict_ema) or the plain ones; unset: plain when both exist. "
            "Recorded in load_reports.json.",
            rich_help_panel=MODEL,
        ),
    ] = None,
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
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Recompute every cell, even those already finished in the run directory.",
            rich_help_panel=OUTPUT,
        ),
    ] = False,
    json_out: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Write only the rows as JSON on stdout; stderr stays quiet unless a tty.",
            rich_help_panel=OUTPUT,
        ),
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show checkpoint load reports.", rich_help_panel=OUTPUT)
    ] = False,
    layout: Annotated[
        str,
        typer.Option(
            help="Dataset layout: auto, imagefolder, flat, imagenetv2 (folders 0..999) or manifest.",
            rich_help_panel=DATA,
        ),
    ] = "auto",
    labels: Annotated[
        Optional[Path],
        typer.Option(
            help="Label file: devkit ground truth, Kaggle LOC_val_solution.csv or a path,label manifest.",
            rich_help_panel=DATA,
        ),
    ] = None,
    classes: Annotated[
        Optional[Path],
        typer.Option(help="File of WordNet ids: evaluate only these classes.", rich_help_panel=DATA),
    ] = None,
    real_labels: Annotated[
        Optional[str],
        typer.Option(
            "--real-labels",
            metavar="[FILE]",
            help="Add ImageNet-ReaL top-1 (alone: the labels timm ships).",
            rich_help_panel=DATA,
        ),
    ] = None,
    on_bad_image: Annotated[
        str,
        typer.Option(
            help="stop: exit before any cell at the first bad file; skip: leave it out, record it.",
            rich_help_panel=DATA,
        ),
    ] = "stop",
    decode_draft: Annotated[
        bool,
        typer.Option(
            help="Decode JPEGs at a reduced scale with PIL draft() (faster, changes pixels).", rich_help_panel=DATA
        ),
    ] = False,
) -> None:
    """Top-1/top-5 and images/s of each model at each size, without fine-tuning.

    Writes rows.jsonl, per-image predictions, provenance.json and the reports (results.md/.csv/.tex/.json, plots)
    to the run directory. Each cell is stored the moment it finishes: rerunning the same command resumes and skips
    finished cells; Ctrl-C stops with exit code 130 and keeps them.
    """
    with guarded():
        models = parse_models(model)
        if data is None:
            raise CpvtEvalError("no dataset: pass --data DIR or set CPVT_EVAL_DATA")
        cfg = RunConfig(
            models=models,
            sizes=parse_sizes(sizes),
            data=data,
            out=out or default_out(models),
            checkpoints=parse_checkpoints(checkpoint, models),
            model_args=parse_model_args(model_arg, models),
            limit=limit,
            crop_pct=crop_pct,
            interpolation=interpolation,
            batch_size=batch_size,
            workers=workers,
            device=device,
            dtype=check_dtype(dtype),
            pe=PEOptions(ape_interpolation=ape_interp, antialias=antialias, sincos=sincos),
            ema=ema,
            throughput=ThroughputConfig(
                enabled=throughput, batch_size=throughput_batch, repeats=throughput_repeats, budget_s=throughput_budget
            ),
            layout=layout,
            labels=labels,
            classes=classes,
            real_labels=real_labels,
            on_bad_image=on_bad_image,
            decode_draft=decode_draft,
            force=force,
            argv=("cpvt-eval", *sys.argv[1:]),
        )
        run_and_print(cfg, json_out, verbose)


def run_and_print(cfg: RunConfig, json_out: bool, verbose: bool) -> None:
    """Run the job under torchrun or alone, then print the rows (a table, or JSON only on stdout)."""
    from .. import distributed
    from ..jobs.resolution import run_resolution

    # Machine-readable mode: stdout holds only JSON; messages go to stderr, and only when a person watches it.
    quiet = json_out and not sys.stderr.isatty()
    hooks = Hooks(
        progress=console.BarProgress(),
        notify=(lambda _m: None) if quiet else console.info,
        log=console.info if verbose and not quiet else (lambda _m: None),
    )
    # Under torchrun every process runs this command; only rank 0 reports. The session is left only after
    # rank 0 has printed (its result or the error of any rank).
    with distributed.session(cfg.device) as dist, guarded(), stop_on_sigterm():
        if not dist.is_main:
            console.silence()
        outcome = run_resolution(cfg, hooks, dist)
        if outcome.store is None:
            return
        rows = outcome.store.rows()
        if json_out:
            print(json.dumps([r.to_dict() for r in rows], indent=2))
        else:
            console.print_results(rows)
            console.info(f"results: {outcome.store.root / 'results.csv'}, {outcome.store.root / 'results.md'}")
