"""Our throughput figure vs timm's benchmark.py methodology, and CPVT-Ti vs DeiT-Ti at each size.

Part 1: for the same model, size and batch, ``cpvt_eval.throughput.measure_throughput`` (inference_mode, warm-up,
synchronised per-forward timing, median of the timed forwards) against timm's ``benchmark.py`` inference method
(``no_grad``, ``--num-warm-iter`` untimed steps, then ``--num-bench-iter`` steps; samples/s = all samples / the
elapsed time of the whole timed loop). timm's defaults are 10 + 50 steps; on a CPU that takes minutes per model,
so the step counts here are options (the method is the same). A ratio near 1 says our median-based figure
agrees with the field's mean-based one.

Part 2: CPVT-Ti (one PEG) and CPVT-Ti‡ (five PEGs, the paper's throughput row) against DeiT-Ti at every size,
same batch, measured in alternating rounds; the table gives median images/s and the ratio to DeiT-Ti. The paper
reports 2500.7 (CPVT-Ti‡) vs 2536.5 (DeiT-Ti) images/s on a V100 at 224 px, a ratio of 0.986. Next to the
wall-clock ratio the table gives the ratio of the process CPU time of the same forwards: on a machine shared
with other work, wall time includes the time other processes held the cores, CPU time does not (with
``--threads 1`` it is the model's own compute time).

Models are built with random weights (speed does not depend on them).

Example::

    python benchmarks/bench_throughput.py --rounds 5 --pair-rounds 9
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import median, spread  # noqa: E402

import cpvt_eval  # noqa: E402
from cpvt_eval.models.posenc import adapt_to_size  # noqa: E402
from cpvt_eval.runtime import device_name  # noqa: E402
from cpvt_eval.throughput import (  # noqa: E402
    TimingPlan,
    TimingSettings,
    count_flops,
    matmul_peak_gflops,
    measure_throughput,
)

BASELINE = "deit_tiny_patch16_224"
CPVT = ("cpvt_ti", "cpvt_ti_plus")
# Per-size batch on a 2-core CPU: about the same work per forward at every size (the comparison is between
# models at the same size and batch, so the batch does not need to be the same across sizes).
BATCH = {224: 8, 384: 2, 448: 2, 512: 1}
CPU = torch.device("cpu")


def timed(batch: int, warmup: int, repeats: int) -> TimingSettings:
    """A fixed batch and count of timed forwards, fp32, no FLOP count (the tables count FLOPs once, apart)."""
    return TimingSettings(plan=TimingPlan(warmup=warmup, rounds=repeats), batch_size=batch, flops=False)


def timm_benchmark_method(model, size, batch, warm_iter, bench_iter) -> float:
    """samples/s the way timm's benchmark.py InferenceBenchmarkRunner.run computes it (CPU: perf_counter)."""
    x = torch.randn(batch, 3, size, size)
    with torch.no_grad():
        for _ in range(warm_iter):
            model(x)
        t0 = time.perf_counter()
        for _ in range(bench_iter):
            model(x)
        elapsed = time.perf_counter() - t0
    return bench_iter * batch / elapsed


def build(name: str, size: int):
    torch.manual_seed(0)
    model = cpvt_eval.create_model(name).eval()
    adapt_to_size(model, size)
    return model


def part1(args) -> None:
    size, batch = 224, BATCH[224]
    print(f"\n### Our figure vs timm's benchmark.py method ({size} px, batch {batch})\n")
    print(
        f"ours: `measure_throughput`, warm-up {args.warmup}, median of {args.repeats} timed forwards; timm method: "
        f"{args.timm_warm} warm-up + {args.timm_iter} timed steps, samples / total elapsed; the two alternate, "
        f"{args.rounds} rounds; the ratio is the median of the per-round ratios\n"
    )
    print("| model | ours img/s (median) | timm method img/s (median) | ratio ours / timm | range of ratios |")
    print("|---|---|---|---|---|")
    for name in (BASELINE, CPVT[0]):
        model = build(name, size)
        ours, theirs, ratios = [], [], []
        for r in range(args.rounds):
            for which in ("ours", "timm") if r % 2 == 0 else ("timm", "ours"):
                if which == "ours":
                    v = measure_throughput(model, size, CPU, timed(batch, args.warmup, args.repeats))
                    ours.append(v.images_per_sec)
                else:
                    theirs.append(timm_benchmark_method(model, size, batch, args.timm_warm, args.timm_iter))
            ratios.append(ours[-1] / theirs[-1])
            print(f"  {name} round {r + 1}: ours {ours[-1]:.2f}, timm {theirs[-1]:.2f}", file=sys.stderr)
        print(f"| {name} | {median(ours):.2f} | {median(theirs):.2f} | {median(ratios):.3f} | {spread(ratios)} |")


def part2(args) -> None:
    peak = matmul_peak_gflops(CPU, "fp32")
    print(f"\n### CPVT-Ti vs DeiT-Ti at each size ({device_name(CPU)}, {torch.get_num_threads()} threads, fp32)\n")
    print(
        f"after {args.warmup} warm-up forwards per model, {args.pair_rounds} rounds; in each round each model is timed "
        f"once (`measure_throughput`, one synchronised forward) in alternating order, so that all models see the "
        f"same load; img/s is the median over rounds, the ratio the median of the per-round ratios. Measured fp32 "
        f"matmul peak {peak:.1f} GFLOP/s\n"
    )
    names = (BASELINE, *CPVT)
    print(
        "| size | batch | model | GFLOPs/img | img/s (median) | ratio to DeiT-Ti | range of ratios "
        "| ratio by CPU time | % of peak |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        batch = BATCH.get(size, 1)
        models = {n: build(n, size) for n in names}
        for n in names:
            measure_throughput(models[n], size, CPU, timed(batch, args.warmup, 1))
        ips = {n: [] for n in names}
        cpu_s = {n: [] for n in names}
        ratios = {n: [] for n in CPVT}
        cpu_ratios = {n: [] for n in CPVT}
        for r in range(args.pair_rounds):
            order = names if r % 2 == 0 else tuple(reversed(names))
            for n in order:
                c0 = time.process_time()
                res = measure_throughput(models[n], size, CPU, timed(batch, 0, 1))
                cpu_s[n].append(time.process_time() - c0)
                ips[n].append(res.images_per_sec)
            for n in CPVT:
                ratios[n].append(ips[n][-1] / ips[BASELINE][-1])
                cpu_ratios[n].append(cpu_s[BASELINE][-1] / cpu_s[n][-1])
        print(f"  {size}px: " + ", ".join(f"{n} {median(ips[n]):.2f}" for n in names), file=sys.stderr)
        for n in names:
            gflops = count_flops(models[n], size)
            if n == BASELINE:
                ratio = ("1", "", "1")
            else:
                ratio = (f"{median(ratios[n]):.3f}", spread(ratios[n]), f"{median(cpu_ratios[n]):.3f}")
            frac = 100 * gflops * median(ips[n]) / peak
            print(
                f"| {size} | {batch} | {n} | {gflops:.2f} | {median(ips[n]):.2f} | {ratio[0]} | {ratio[1]} | "
                f"{ratio[2]} | {frac:.0f}% |"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds of ours vs the timm method")
    p.add_argument("--pair-rounds", type=int, default=9, help="alternating rounds of the model comparison")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--timm-warm", type=int, default=2, help="timm default: 10")
    p.add_argument("--timm-iter", type=int, default=3, help="timm default: 50")
    p.add_argument("--sizes", type=int, nargs="+", default=[224, 384, 448, 512])
    p.add_argument("--skip-timm", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.skip_timm:
        part1(args)
    part2(args)


if __name__ == "__main__":
    main()
