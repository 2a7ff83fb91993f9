"""Which speed option helps on this machine, how far from the matmul peak, and what a whole pass costs.

Part 1 (options): for each model and size, the execution options of ``cpvt-eval throughput`` timed side by side
in interleaved rounds (one forward of each option per round, ``cpvt_eval.throughput.interleaved_rounds``): fp32,
bf16 autocast, channels-last (fp32), ``torch.compile`` (fp32, inductor), and for ``--combo-model`` at
``--combo-size`` also bf16 autocast + compile. The table gives images/s (median of the rounds, with its IQR),
the ratio to fp32 taken round by round (median of the per-round ratios), the achieved GFLOP/s (FLOPs counted
with attention, ``count_flops``) and that as a share of the measured dense-matmul peak in fp32 and in bf16
(``matmul_peak_gflops``). The first round of a compiled option compiles: warm-up forwards are untimed.

Part 2 (pipeline): images/s of the whole evaluation pipeline (JPEG decode + resize + crop + model, the engine's
one pass of the accuracy probe on a generated folder of ImageNet-like 500x375 JPEGs) next to the model alone at the same
batch, interleaved, at each size.

Models are built with random weights (speed does not depend on them). Everything is printed as Markdown.

Example::

    python benchmarks/bench_options.py --budget 1 --pipeline-images 16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    make_jpeg_imagefolder,  # noqa: E402
    sweep,  # noqa: E402
)

import cpvt_eval  # noqa: E402
from cpvt_eval.config import PEOptions  # noqa: E402
from cpvt_eval.data import default_workers, open_dataset  # noqa: E402
from cpvt_eval.engine import EvalModel, EvalSettings  # noqa: E402
from cpvt_eval.models.posenc import adapt_to_size  # noqa: E402
from cpvt_eval.models.registry import resolve  # noqa: E402
from cpvt_eval.runtime import device_name, sync  # noqa: E402
from cpvt_eval.throughput import (  # noqa: E402
    TimingPlan,
    count_flops,
    forward_once,
    interleaved_rounds,
    matmul_peak_gflops,
    prepare_for_timing,
)

CPU = torch.device("cpu")
# (label, dtype, channels_last, compile)
OPTIONS = [
    ("fp32", "fp32", False, False),
    ("bf16 autocast", "bf16", False, False),
    ("channels-last", "fp32", True, False),
    ("torch.compile", "fp32", False, True),
]
COMBO = ("bf16 + compile", "bf16", False, True)


def quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, med, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, med, q3


def build(name: str, size: int) -> torch.nn.Module:
    model = resolve(name).create().eval()
    adapt_to_size(model, size, PEOptions())
    return model


def options_part(args) -> list[dict]:
    peak = {dt: matmul_peak_gflops(CPU, dt) for dt in ("fp32", "bf16")}
    print(
        f"\nmatmul peak ({args.threads} threads, 1024x1024): fp32 {peak['fp32']:.1f}, bf16 {peak['bf16']:.1f} GFLOP/s\n"
    )
    print(
        "| model | size | batch | option | img/s (median) | IQR img/s | vs fp32 (median of rounds) | IQR of ratio "
        "| rounds | GFLOP/s | % of fp32 peak | % of bf16 peak |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for size in args.sizes:
        batch = args.batch_224 if size <= 224 else args.batch_384
        for name in args.models:
            model = build(name, size)
            gflops = count_flops(model, size)
            options = list(OPTIONS)
            if name == args.combo_model and size == args.combo_size:
                options.append(COMBO)
            forwards = []
            for _label, dtype, channels_last, compiled in options:
                # a fresh module per option: channels-last converts the weights in place
                module = prepare_for_timing(build(name, size), channels_last, compiled)
                x = torch.randn(batch, 3, size, size)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                forwards.append(forward_once(module, x, CPU, dtype))
            plan = TimingPlan(warmup=args.warmup, budget_s=args.budget, min_rounds=args.min_rounds)
            t0 = time.perf_counter()
            times = interleaved_rounds(forwards, plan, lambda: sync(CPU))
            wall = time.perf_counter() - t0
            for (label, _dtype, _cl, _c), mine in zip(options, times, strict=True):
                q1, med, q3 = quartiles(mine)
                r1, rmed, r3 = quartiles([ref / t for ref, t in zip(times[0], mine, strict=True)])
                ips = batch / med
                row = dict(
                    model=name,
                    size=size,
                    batch=batch,
                    option=label,
                    ips=ips,
                    ips_lo=batch / q3,
                    ips_hi=batch / q1,
                    ratio=rmed,
                    ratio_q1=r1,
                    ratio_q3=r3,
                    rounds=len(mine),
                    gflops_s=gflops * ips,
                    gflops=gflops,
                )
                rows.append(row)
                print(
                    f"| {name} | {size} | {batch} | {label} | {ips:.2f} | {batch / q3:.2f}-{batch / q1:.2f} | "
                    f"{rmed:.3f} | {r1:.2f}-{r3:.2f} | {len(mine)} | {gflops * ips:.1f} | "
                    f"{100 * gflops * ips / peak['fp32']:.0f}% | {100 * gflops * ips / peak['bf16']:.0f}% |",
                    flush=True,
                )
            print(f"<!-- {name}@{size}: {wall:.0f} s including warm-up/compile -->", file=sys.stderr, flush=True)
    return rows


def pipeline_part(args) -> None:
    root = Path(args.data or Path(tempfile.gettempdir()) / "cpvt_bench_jpegs")
    make_jpeg_imagefolder(root, args.pipeline_images)
    image_set = open_dataset(root, args.pipeline_images)
    workers = default_workers() if args.workers is None else args.workers
    spec = resolve(args.pipeline_model)
    module = spec.create().eval()
    model = EvalModel(name=spec.name, spec=spec, module=module, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    batch = args.pipeline_batch
    settings = EvalSettings(device=CPU, batch_size=batch, workers=workers)
    print(
        f"\nPipeline: {args.pipeline_model}, {len(image_set)} generated 500x375 JPEGs, batch {batch}, "
        f"{workers} loader workers, {args.pipeline_rounds} interleaved rounds\n"
    )
    print(
        "| size | pipeline img/s (decode + resize + model) | model-only img/s | pipeline / model-only | "
        "ms per image, pipeline | ms per image, model only | hours for 50,000 images (pipeline) |"
    )
    print("|---|---|---|---|---|---|---|")
    for size in args.pipeline_sizes:
        adapt_to_size(module, size, PEOptions())
        x = torch.randn(batch, 3, size, size)
        model_forward = forward_once(module, x, CPU, "fp32")
        model_forward()  # warm-up of the model alone; the pipeline's own first batch warms it too

        def whole_pass(size=size):
            sweep([model], image_set, [size], settings)

        plan = TimingPlan(warmup=0, rounds=args.pipeline_rounds)
        t_pipe, t_model = interleaved_rounds([whole_pass, model_forward], plan, lambda: sync(CPU))
        pipe_ips = len(image_set) / statistics.median(t_pipe)
        model_ips = batch / statistics.median(t_model)
        print(
            f"| {size} | {pipe_ips:.2f} | {model_ips:.2f} | {pipe_ips / model_ips:.2f} | {1000 / pipe_ips:.0f} | "
            f"{1000 / model_ips:.0f} | {50_000 / pipe_ips / 3600:.1f} |",
            flush=True,
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["deit_ti", "cpvt_ti", "deit_s", "cpvt_s"])
    p.add_argument("--sizes", nargs="+", type=int, default=[224, 384])
    p.add_argument("--batch-224", type=int, default=16, help="batch at 224 px")
    p.add_argument("--batch-384", type=int, default=4, help="batch above 224 px (about the same work per forward)")
    p.add_argument("--budget", type=float, default=1.0, help="seconds of timed forwards per option")
    p.add_argument("--min-rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2, help="untimed forwards per option (the first one compiles)")
    p.add_argument("--combo-model", default="deit_s")
    p.add_argument("--combo-size", type=int, default=224)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--skip-options", action="store_true")
    p.add_argument("--skip-pipeline", action="store_true")
    p.add_argument("--pipeline-model", default="deit_ti")
    p.add_argument("--pipeline-sizes", nargs="+", type=int, default=[224, 384, 448, 512])
    p.add_argument("--pipeline-images", type=int, default=16)
    p.add_argument("--pipeline-batch", type=int, default=16)
    p.add_argument("--pipeline-rounds", type=int, default=2)
    p.add_argument("--workers", type=int, default=None, help="loader workers (default: the tool's default)")
    p.add_argument("--data", default=None, help="folder for the generated JPEGs (default: the temp directory)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC · {device_name(CPU)} · {args.threads} threads · "
        f"torch {torch.__version__} · cpvt_eval {cpvt_eval.__version__}"
    )
    if not args.skip_options:
        options_part(args)
    if not args.skip_pipeline:
        pipeline_part(args)


if __name__ == "__main__":
    main()
