"""Does a machine-normalised throughput figure survive a loaded machine?

The idea under test: every timing round also times a fixed reference workload on the same device (a square matmul
of known FLOPs, a few ms, in the model's dtype), and each model's images/s is divided by the reference's GFLOP/s
measured in the same round. If other processes slow the machine down, they should slow the model and the
reference alike, and the quotient (images per reference GFLOP) should stay put while raw images/s fall.

The measurement is the ``throughput`` command's: the models of a size timed together in interleaved rounds
(``cpvt_eval.throughput.interleaved_rounds``, one forward of each per round), synthetic input, warm-up, a time
budget per model with a floor of rounds, the batch fitted to the budget once at the start, before any busy process
(with ``fit_batch_to_budget``), and then kept for every condition, so that images/s are comparable. The reference
matmuls are two more forwards of each round, timed just before the models (one reference size per forward;
``--ref-n``).

Conditions, interleaved (idle, 2 busy, 4 busy, idle, 2 busy, 4 busy, ...): the timing alone, then beside N busy
processes the script starts itself (``--burner python``: pure-Python integer loops; ``--burner matmul``: torch
matmuls, one thread each), started 2 s before the rounds and stopped after them. Drops are taken per repetition
against the idle condition of the same repetition, then the median over repetitions.

Example (about 6 minutes on 2 cores)::

    python benchmarks/bench_normalised.py --reps 5
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import median, spread  # noqa: E402

from cpvt_eval.models.registry import resolve  # noqa: E402
from cpvt_eval.runtime import autocast_context, device_name, torch_dtype  # noqa: E402
from cpvt_eval.throughput import (  # noqa: E402
    TimingPlan,
    fit_batch_to_budget,
    forward_once,
    interleaved_rounds,
    quartiles,
    synthetic_input,
)

CPU = torch.device("cpu")


# The busy processes: separate interpreters that import nothing of this package (so they start in milliseconds and
# do not depend on the tree being measured); each stops by itself when this script is gone. ``python``: integer
# loops; ``matmul``: torch matmuls of 256 x 256, one thread each.
_WATCH = "import os\nparent = os.getppid()\n"
BURNERS = {
    "python": _WATCH + "x = 0\nwhile os.getppid() == parent:\n    for i in range(100_000):\n        x += i * i\n",
    "matmul": _WATCH
    + "import torch\ntorch.set_num_threads(1)\na = torch.randn(256, 256)\nwhile os.getppid() == parent:\n"
    + "    for _ in range(100):\n        a = torch.tanh(a @ a)\n",
}


def reference_forward(n: int, dtype: str):
    """A square ``n x n`` matmul in ``dtype`` (2 n^3 FLOPs), as a callable to time."""
    dt = torch_dtype(dtype)
    a = torch.randn(n, n).to(dt)
    b = torch.randn(n, n).to(dt)

    def run():
        with torch.inference_mode(), autocast_context(CPU, dtype):
            return torch.mm(a, b)

    return run


def one_condition(args, busy: int, forwards, n_models: int, batch: int) -> dict:
    procs = [subprocess.Popen([sys.executable, "-c", BURNERS[args.burner]]) for _ in range(busy)]
    try:
        if busy:
            time.sleep(2.0)
        load_before = os.getloadavg()[0]
        # the rounds stop after budget x models seconds; the reference forwards count in len(forwards)
        plan = TimingPlan(warmup=1, budget_s=args.budget * n_models / len(forwards), min_rounds=3)
        times = interleaved_rounds(forwards, plan)
        load_after = os.getloadavg()[0]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    n_refs = len(forwards) - n_models
    out = {"load": (load_before, load_after), "rounds": len(times[0])}
    for m in range(n_models):
        mine = times[n_refs + m]
        out[("raw", m)] = batch / statistics.median(mine)
        for j, n in enumerate(args.ref_n):
            # per round: images/s / reference GFLOP/s = images per reference GFLOP
            per_round = [(batch / t) / (2 * n**3 / r / 1e9) for t, r in zip(mine, times[j], strict=True)]
            q1, med, q3 = quartiles(per_round)
            out[("norm", m, n)] = med
            out[("norm_iqr", m, n)] = (q3 - q1) / med
    for j, n in enumerate(args.ref_n):
        out[("ref_ms", n)] = 1000 * statistics.median(times[j])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["deit_ti", "cpvt_ti"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--budget", type=float, default=3.0, help="seconds per model per condition")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--busy", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--burner", choices=("python", "matmul"), default="python")
    parser.add_argument("--ref-n", type=int, nargs="+", default=[512, 1024], help="reference matmul sizes")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--batch", type=int, default=64, help="the batch before fitting it to the budget")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the busy processes on the way out

    started = datetime.now().astimezone()
    load0 = os.getloadavg()[0]
    models = [resolve(name).create().eval() for name in args.models]
    names = [resolve(name).name for name in args.models]
    plan = TimingPlan(warmup=1, budget_s=args.budget, min_rounds=3)
    batch = fit_batch_to_budget(models, args.size, CPU, args.batch, args.dtype, plan)
    x = synthetic_input(batch, args.size, CPU, False)
    forwards = [reference_forward(n, args.dtype) for n in args.ref_n]
    forwards += [forward_once(m, x, CPU, args.dtype) for m in models]
    conditions = [0, *args.busy]
    results: dict[int, list[dict]] = {c: [] for c in conditions}
    for rep in range(args.reps):
        for busy in conditions:
            r = one_condition(args, busy, forwards, len(models), batch)
            results[busy].append(r)
            print(
                f"rep {rep + 1} busy {busy}: load {r['load'][0]:.2f}->{r['load'][1]:.2f}, {r['rounds']} rounds, "
                + ", ".join(f"{names[m]} {r[('raw', m)]:.2f} img/s" for m in range(len(models))),
                file=sys.stderr,
                flush=True,
            )

    print(
        f"\n`python benchmarks/bench_normalised.py {' '.join(sys.argv[1:])}` on {device_name(CPU)}, "
        f"{torch.get_num_threads()} torch threads, {args.dtype}, {args.size} px, batch {batch} (fitted to the "
        f"{args.budget:g} s budget at the start, load average {load0:.2f}), {args.reps} repetitions, {args.burner} "
        f"burners; started {started:%Y-%m-%d %H:%M %Z}\n"
    )
    header = "| model | busy | raw img/s | raw vs idle [range] |"
    header += "".join(f" norm. (ref {n}) | norm. vs idle [range] | norm. IQR |" for n in args.ref_n)
    header += " ref ms | load average (1 min) |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    verdict = {n: [] for n in args.ref_n}
    for m, name in enumerate(names):
        for busy in conditions:
            reps = results[busy]
            idle = results[0]
            raw = [r[("raw", m)] for r in reps]
            raw_drop = [r[("raw", m)] / i[("raw", m)] for r, i in zip(reps, idle, strict=True)]
            cells = [name, str(busy), f"{median(raw):.2f}", f"{median(raw_drop):.2f} [{spread(raw_drop)}]"]
            for n in args.ref_n:
                norm = [r[("norm", m, n)] for r in reps]
                drop = [r[("norm", m, n)] / i[("norm", m, n)] for r, i in zip(reps, idle, strict=True)]
                iqr = [r[("norm_iqr", m, n)] for r in reps]
                cells += [f"{median(norm):.4f}", f"{median(drop):.2f} [{spread(drop)}]", f"{100 * median(iqr):.0f}%"]
                if busy and median(raw_drop) <= 0.5:
                    verdict[n].append(abs(median(drop) - 1) <= 0.15)
            ref_ms = " / ".join(f"{median([r[('ref_ms', n)] for r in reps]):.1f}" for n in args.ref_n)
            loads = [r["load"][1] for r in reps]
            cells += [ref_ms, f"{median(loads):.2f} [{spread(loads)}]"]
            print("| " + " | ".join(cells) + " |")
    print()
    for n in args.ref_n:
        held = verdict[n]
        if not held:
            print(f"ref {n}: raw images/s never fell by 2x: the test cannot decide")
        else:
            print(
                f"ref {n}: the normalised figure held within 15% in {sum(held)} of {len(held)} loaded cells where "
                f"raw images/s fell by 2x or more: {'KEEP' if all(held) else 'DROP'}"
            )


if __name__ == "__main__":
    main()
