"""Time and memory as the data grows: every registered probe, the shipped toys at two sizes, on 2,000, 8,000 and
32,000 images of the demo's world.

Each dataset size runs in a fresh process (``--child``): ``run_probes`` with every registered probe (their quick
settings: one shift epoch), no model-only timing, ``--workers`` loader workers. Reported per size: the data-pass
seconds per image (the passes' wall time from the rows, every probe and model included; start-up, model builds and
reports are fixed costs and left out), the whole run's seconds per image, the peak RSS of the main process and of the
largest loader worker, the peak of the main process's heap in use (glibc's ``mallinfo2``, sampled: what the run's
tensors and arrays hold, without what the allocator keeps after a free), with the load average. The growth of the
peaks can be read against the per-image records the probes keep (what the README states).

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


class HeapPeak:
    """The peak of what the C heap holds in use (glibc's ``mallinfo2``: bytes in allocated chunks plus mmapped
    blocks, every arena), sampled every ``interval`` seconds on a thread. It counts every tensor and array on the heap
    and nothing the allocator keeps after a free, which the peak RSS does count; None where there is no glibc."""

    def __init__(self, interval: float = 0.02):
        import ctypes
        import threading

        fields = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()

        class Info(ctypes.Structure):
            _fields_ = [(name, ctypes.c_size_t) for name in fields]

        try:
            self._info = ctypes.CDLL("libc.so.6").mallinfo2
        except (OSError, AttributeError):
            self._info = None
            return
        self._info.restype = Info
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(interval,), daemon=True)
        self._thread.start()

    def _sample(self, interval: float) -> None:
        while not self._stop.wait(interval):
            info = self._info()
            self.peak = max(self.peak, info.uordblks + info.hblkhd)

    def stop(self) -> float | None:
        if self._info is None:
            return None
        self._stop.set()
        self._thread.join()
        return self.peak / 2**20


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
    heap = HeapPeak()
    t0 = time.perf_counter()
    outcome = run_probes(cfg, probes)
    wall = time.perf_counter() - t0
    heap_mb = heap.stop()
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
                "heap_mb": heap_mb,
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
    print(
        "| images | data-pass s/image | run s/image | peak RSS main (MB) | peak heap in use, main (MB) "
        "| largest worker (MB) | load average |"
    )
    print("|---:|---:|---:|---:|---:|---:|---|")
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
        heap = "–" if r["heap_mb"] is None else f"{r['heap_mb']:.0f}"
        print(
            f"| {r['images']:,} | {per_pass:.2f} ms | {per_run:.2f} ms | {r['main_mb']:.0f} | {heap} "
            f"| {r['worker_mb']:.0f} | {load} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
