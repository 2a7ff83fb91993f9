"""Time and memory as the data grows: every registered probe, the shipped toys at two sizes, on 2,000, 8,000 and
32,000 images of the demo's world.

Each dataset size runs in a fresh process (``--child``): ``run_probes`` with every registered probe (their quick
settings: one shift epoch), no model-only timing, ``--workers`` loader workers. Reported per size: the data-pass
seconds per image (the passes' wall time from the rows, every probe and model included; start-up, model builds and
reports are fixed costs and left out), the whole run's seconds per image, the peak RSS of the main process and of the
largest loader worker, and the per-image records the probes keep (what the README states, so that the growth of the
peak can be read against them), with the load average.

    python benchmarks/bench_scale.py --images 2000 8000 32000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = ("deit_toy", "cpvt_toy")
SIZES = (56, 64)


def child(args) -> None:
    from cpvt_eval.config import RunConfig
    from cpvt_eval.demo.dataset import CLASSES, materialize
    from cpvt_eval.demo.run import checkpoint_path
    from cpvt_eval.jobs.run import run_probes
    from cpvt_eval.probes import PROBES, make

    per_class = args.images[0] // len(CLASSES)
    data, _ = materialize(per_class, 0, Path(args.cache))
    cfg = RunConfig(
        models=MODELS,
        sizes=SIZES,
        data=data,
        out=Path(args.out),
        checkpoints={m: str(checkpoint_path(m)) for m in MODELS},
        class_names=CLASSES,
        batch_size=64,
        workers=args.workers,
        device="cpu",
        timing=False,
        report_formats=("md", "csv"),
    )
    probes = [make(name, **dict(cls.report.usage.quick)) for name, cls in PROBES.items()]
    t0 = time.perf_counter()
    outcome = run_probes(cfg, probes)
    wall = time.perf_counter() - t0
    rows = outcome.store.rows()
    passes = {(r.probe.split(":")[0], r.img_size, r.duration_s) for r in rows}  # the cells of a pass share it
    passes = {(size, secs) for _, size, secs in passes}
    print(
        json.dumps(
            {
                "images": per_class * len(CLASSES),
                "cells": len(rows),
                "pass_s": sum(secs for _, secs in passes),
                "wall_s": wall,
                "main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, nargs="+", default=[2000, 8000, 32000])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    tmp = Path(tempfile.mkdtemp(prefix="scale-"))
    print(f"{', '.join(MODELS)} at {SIZES} px, every registered probe (quick settings), workers {args.workers}")
    print("| images | data-pass s/image | run s/image | peak RSS main (MB) | largest worker (MB) | load average |")
    print("|---:|---:|---:|---:|---:|---|")
    for n in args.images:
        cmd = [sys.executable, __file__, "--child", "--images", str(n), "--workers", str(args.workers)]
        cmd += ["--out", str(tmp / f"run-{n}"), "--cache", str(tmp / "cache")]
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{n} images: exit {done.returncode}\n{done.stderr[-2000:]}")
        r = json.loads(done.stdout.strip().splitlines()[-1])
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        per_pass, per_run = 1000 * r["pass_s"] / r["images"], 1000 * r["wall_s"] / r["images"]
        print(
            f"| {r['images']:,} | {per_pass:.2f} ms | {per_run:.2f} ms | {r['main_mb']:.0f} | {r['worker_mb']:.0f} | "
            f"{load} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
