"""``cpvt-eval throughput``: model-only images/s, GFLOPs and the share of the device's matmul peak."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from .. import console
from ..errors import CpvtEvalError
from ..runtime import check_dtype
from .app import MultiValueCommand, app, guarded, parse_models, parse_sizes


@app.command(
    "throughput",
    cls=MultiValueCommand,
    epilog=(
        "Example: cpvt-eval throughput --model cpvt_ti deit_ti --sizes 224 384 --batch-size auto --dtype bf16 --json"
    ),
)
def throughput_cmd(
    model: Annotated[list[str], typer.Option("--model", "-m", help="Model name or alias; repeat or list several.")],
    sizes: Annotated[
        Optional[list[str]], typer.Option("--sizes", "-s", help="Sizes in px: `224 384` or `224,384` (default 224).")
    ] = None,
    batch_size: Annotated[
        str, typer.Option("--batch-size", "-b", help="Images per timed forward, or auto (CUDA: largest power of 2).")
    ] = "64",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    dtype: Annotated[str, typer.Option(help="fp32, bf16 or fp16 (autocast); the peak is measured in it too.")] = "fp32",
    warmup: Annotated[int, typer.Option(min=0, help="Untimed forwards before timing.")] = 3,
    repeats: Annotated[int, typer.Option(min=1, help="Timed forwards; the figure is their median.")] = 10,
    threads: Annotated[Optional[int], typer.Option(min=1, help="CPU threads for torch (default: torch's own).")] = None,
    channels_last: Annotated[bool, typer.Option("--channels-last", help="Channels-last input and weights.")] = False,
    compile: Annotated[bool, typer.Option("--compile", help="Time torch.compile(model) (warm-up compiles).")] = False,
    flops: Annotated[bool, typer.Option(help="Count GFLOPs per image and measure the matmul peak.")] = True,
    json_out: Annotated[bool, typer.Option("--json", help="Write the rows as JSON on stdout.")] = False,
) -> None:
    """Model-only throughput: synthetic input, warm-up, device-synchronised timing, median of repeated runs.

    Weights do not change the speed: models are built with random weights (no checkpoint, no download).

    Each row states batch, dtype, threads, device, layout and compilation next to images/s and ms/batch.

    GFLOPs per image count attention; the achieved GFLOP/s is set against the device's dense-matmul peak.
    """
    import torch

    from ..models.build import check_sizes
    from ..models.posenc import PEOptions, patch_size_of, size_adapter
    from ..models.registry import resolve
    from ..runtime import resolve_device
    from ..throughput import benchmark_model

    with guarded():
        names = parse_models(model)
        if not names:
            raise CpvtEvalError("no model given: use --model NAME (see `cpvt-eval models`)")
        size_list = parse_sizes(sizes or ["224"])
        if not size_list:
            raise CpvtEvalError("no size given: use --sizes 224 384 ...")
        check_dtype(dtype)
        dev = resolve_device(device)
        if threads is not None:
            torch.set_num_threads(threads)
        rows = []
        for name in names:
            spec = resolve(name)
            module = spec.create().eval().to(dev)
            check_sizes(size_list, patch_size_of(module), spec.name)
            sizer = size_adapter(module, lambda _spec=spec, **size_args: _spec.create(**size_args).eval(), spec.name)
            for size in size_list:
                sized, _ = sizer.module_at(size, PEOptions())
                console.info(f"{spec.name} @ {size}px ...")
                result = benchmark_model(
                    sized,
                    size,
                    dev,
                    batch_size=batch_size,
                    dtype=dtype,
                    warmup=warmup,
                    repeats=repeats,
                    channels_last=channels_last,
                    compile=compile,
                    flops=flops,
                    name=spec.name,
                )
                rows.append(result.to_dict())
        if json_out:
            print(json.dumps(rows, indent=2))
        else:
            console.out.print(console.throughput_table(rows))
