"""``cpvt-eval throughput``: model-only images/s, GFLOPs and the share of the device's matmul peak."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import console
from ..config import DEFAULT_BUDGET_S, DEFAULT_MIN_ROUNDS
from ..errors import CpvtEvalError
from ..runtime import check_dtype
from .app import app, guarded
from .options import MODELS_FILE_HELP, SIZES_HELP
from .parsing import MultiValueCommand, expand_models, parse_models, parse_sizes

# The batch before it is fitted to the budget (the evaluation batch of `resolution`).
DEFAULT_BATCH = 64


@app.command(
    "throughput",
    cls=MultiValueCommand,
    epilog=(
        "Example: cpvt-eval throughput --model deit_ti cpvt_ti --sizes 224 384 --batch-size auto --dtype bf16 --json"
    ),
)
def throughput_cmd(
    model: Annotated[
        Optional[list[str]],
        typer.Option(
            "--model", "-m", help="Model name or alias, or a quoted glob (`'deit_*'`); repeat or list several."
        ),
    ] = None,
    models_file: Annotated[Optional[Path], typer.Option("--models-file", metavar="FILE", help=MODELS_FILE_HELP)] = None,
    sizes: Annotated[Optional[list[str]], typer.Option("--sizes", "-s", help=SIZES_HELP + " Default 224.")] = None,
    batch_size: Annotated[
        Optional[str],
        typer.Option(
            "--batch-size",
            "-b",
            help="Images per timed forward, or auto (CUDA: largest power of 2). Default: 64, halved until 3 "
            "forwards of the slowest model fit the budget (never below 8).",
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    dtype: Annotated[str, typer.Option(help="fp32, bf16 or fp16 (autocast); the peak is measured in it too.")] = "fp32",
    warmup: Annotated[int, typer.Option(min=0, help="Untimed forwards per model before the rounds.")] = 1,
    repeats: Annotated[
        Optional[int], typer.Option(min=1, help="Force this many timed rounds (default: as --budget allows).")
    ] = None,
    budget: Annotated[
        float, typer.Option(min=0.01, help="Seconds of timed forwards per model and size (at least 3 rounds).")
    ] = DEFAULT_BUDGET_S,
    threads: Annotated[Optional[int], typer.Option(min=1, help="CPU threads for torch (default: torch's own).")] = None,
    channels_last: Annotated[bool, typer.Option("--channels-last", help="Channels-last input and weights.")] = False,
    compile: Annotated[bool, typer.Option("--compile", help="Time torch.compile(model) (warm-up compiles).")] = False,
    flops: Annotated[bool, typer.Option(help="Count GFLOPs per image and measure the matmul peak.")] = True,
    json_out: Annotated[bool, typer.Option("--json", help="Write the rows as JSON on stdout.")] = False,
) -> None:
    """Model-only throughput: synthetic input, warm-up, device-synchronised timing in interleaved rounds.

    The models of a size are timed together, one forward each per round (A B A B ...), until the budget is spent
    (at least 3 rounds) or --repeats rounds have run, so that a drift of the machine lands on all of them alike.
    Each row gives the median of its rounds and their spread (IQR, min-max); "vs" is the median of the per-round
    images/s ratios to the first model.

    Without --batch-size the batch is fitted to the budget as in `resolution`, so a run takes about models x sizes
    x budget seconds plus warm-up.

    Weights do not change the speed: models are built with random weights (no checkpoint, no download).

    GFLOPs per image count attention; the achieved GFLOP/s is set against the device's dense-matmul peak.
    """
    import sys

    import torch

    from ..config import PEOptions
    from ..jobs.model_names import resolve_model
    from ..models.introspect import patch_size_of
    from ..models.posenc import check_sizes, size_adapter
    from ..runtime import resolve_device
    from ..throughput import TimingPlan, TimingSettings, time_models

    with guarded():
        names = expand_models(parse_models(model or [], models_file))
        if not names:
            raise CpvtEvalError("no model given: use --model NAME (see `cpvt-eval models`)")
        size_list = parse_sizes(sizes or ["224"])
        if not size_list:
            raise CpvtEvalError("no size given: use --sizes 224 384 ...")
        check_dtype(dtype)
        dev = resolve_device(device)
        if threads is not None:
            torch.set_num_threads(threads)
        settings = TimingSettings(
            plan=TimingPlan(warmup=warmup, rounds=repeats, budget_s=budget, min_rounds=DEFAULT_MIN_ROUNDS),
            batch_size=batch_size or DEFAULT_BATCH,
            fit_budget=batch_size is None,
            dtype=dtype,
            channels_last=channels_last,
            compile=compile,
            flops=flops,
        )
        # Machine-readable mode: stdout holds only JSON; messages go to stderr, and only when a person watches it.
        say = (lambda _m: None) if json_out and not sys.stderr.isatty() else console.info
        built = []
        for name in names:
            spec = resolve_model(name)
            module = spec.create().eval().to(dev)
            check_sizes(size_list, patch_size_of(module), spec.name)
            sizer = size_adapter(module, lambda _spec=spec, **size_args: _spec.create(**size_args).eval(), spec.name)
            built.append((spec.name, sizer))
        rows = []
        for size in size_list:
            # the module of each model at this size: adapted in place, or built by timm at the size
            sized = [(name, sizer.module_at(size, PEOptions())[0]) for name, sizer in built]
            say(f"{size}px: {', '.join(n for n, _ in sized)} ...")
            results = time_models(sized, size, dev, settings)
            rows += [r.to_dict() for r in results]
            del sized
        if json_out:
            print(json.dumps(rows, indent=2))
        else:
            console.out.print(console.throughput_table(rows))
