"""A CI-sized run against timm's ``validate.py``: 400 images, DeiT-Ti at 224 and 384 px, batch 8, 2 workers.

Each condition runs as a user runs it, a fresh process from a cold start (a new interpreter, an empty
``CPVT_EVAL_CACHE``, a new run directory), on the same generated JPEGs and the same random-weight checkpoint:

* ``cpvt-eval``: ``cpvt-eval resolution -m deit_ti -c FILE -s 224 384 --data DIR -b 8 -j 2`` (the throughput
  column on, as by default);
* ``cpvt-eval --no-throughput``: the same without the throughput column;
* ``timm validate.py``: ``python validate.py DIR --model deit_tiny_patch16_224 --checkpoint FILE --img-size S
  --crop-pct 0.875 -b 8 -j 2 --device cpu``, once per size, the two processes' times added. At a size other
  than 224 it adds ``--model-kwargs dynamic_img_size=True``, the way validate.py evaluates a 224-trained ViT at
  another size (the position embedding resampled bicubically at every forward; without it timm's patch embedding
  refuses the input, and ``img_size=384`` refuses the checkpoint's 14x14 ``pos_embed``). ``--device cpu`` because
  validate.py's default device is ``cuda``;
* ``timm validate.py, passive OpenMP``: the same with ``OMP_WAIT_POLICY=PASSIVE``, the OpenMP setting cpvt-eval
  makes for itself, so that the table tells the setting's share of a difference from the rest;
* with ``--before DIR``, also ``cpvt-eval before``: the default run of the ``cpvt_eval`` package found in ``DIR``
  (an earlier version's source, e.g. ``git archive REV cpvt_eval | tar -x -C DIR``), started as
  ``PYTHONPATH=DIR python -m cpvt_eval``.

The environment of every run is the caller's without ``OMP_WAIT_POLICY``. ``--busy N`` keeps N busy processes
(pure-Python loops, as ``bench_normalised.py``'s) running through all the rounds: a machine shared with other jobs,
as a hosted CI runner or a shared workstation is.

The conditions run in interleaved rounds (the order rotates each round), so that the machine's load lands on all of
them alike; the table gives each one's median wall time and range, and its per-round ratio to timm's. The 1-minute
load average is read before each run.

A fair reading: validate.py computes top-1/top-5 and prints them; it times no throughput, writes no run directory,
reports, per-image predictions or plots, and hashes no checkpoint. ``--no-throughput`` is the like-for-like
condition; the default run also times the model alone for about 3 s per size.

validate.py is not part of timm's wheel: take it from timm's repository (the file is the same from tag v1.0.28 to
the main branch of 2026-08, sha256 ``1ff87867c808...``), ``curl -LO
https://raw.githubusercontent.com/huggingface/pytorch-image-models/v1.0.28/validate.py`` or a clone's, and pass its
path::

    python benchmarks/bench_ci_run.py --validate validate.py                 # 3 rounds, about 10 minutes on 2 cores
    python benchmarks/bench_ci_run.py --validate validate.py --rounds 5 --json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import dataset_stats, make_jpeg_imagefolder, median, spread  # noqa: E402

TIMM_MODEL = "deit_tiny_patch16_224"
# A busy process: an interpreter that spins on integer arithmetic until this script is gone.
BURNER = (
    "import os\nparent = os.getppid()\nx = 0\n"
    "while os.getppid() == parent:\n    for i in range(100_000):\n        x += i * i\n"
)
NATIVE = 224


def cpvt_eval_command() -> list[str]:
    script = Path(sys.executable).parent / "cpvt-eval"
    return [str(script)] if script.exists() else [sys.executable, "-m", "cpvt_eval"]


def save_random_deit(path: Path) -> Path:
    """Random DeiT-Ti weights in timm's layout (the accuracy does not matter for the time)."""
    if not path.exists():
        import timm
        import torch

        torch.manual_seed(0)
        torch.save(timm.create_model(TIMM_MODEL, pretrained=False).state_dict(), path)
    return path


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} -> exit {done.returncode}\n{done.stderr[-3000:]}")
    return seconds


CPVT = "cpvt-eval"
CPVT_NO_TP = "cpvt-eval --no-throughput"
CPVT_BEFORE = "cpvt-eval before"
TIMM = "timm validate.py"
TIMM_PASSIVE = "timm validate.py, passive OpenMP"


def run_condition(name: str, args, data: Path, checkpoint: Path, work: Path) -> float:
    """One cold run of a condition: a fresh cache and run directory; timm: one process per size, times added."""
    scratch = Path(tempfile.mkdtemp(prefix="run-", dir=work))
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update(HF_HUB_OFFLINE="1", CPVT_EVAL_CACHE=str(scratch / "cache"), PYTHONWARNINGS="ignore")
    if name == TIMM_PASSIVE:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    if name == CPVT_BEFORE:
        env["PYTHONPATH"] = str(args.before)
    common = ["-b", str(args.batch_size), "-j", str(args.workers)]
    try:
        if name.startswith(CPVT):
            sizes = [str(s) for s in args.sizes]
            start = [sys.executable, "-m", "cpvt_eval"] if name == CPVT_BEFORE else cpvt_eval_command()
            cmd = [*start, "resolution", "-m", "deit_ti", "-c", str(checkpoint), "-s", *sizes]
            cmd += ["--data", str(data), *common, "--out", str(scratch / "run")]
            if name == CPVT_NO_TP:
                cmd.append("--no-throughput")
            return timed(cmd, env, scratch)
        total = 0.0
        for size in args.sizes:
            cmd = [sys.executable, str(args.validate), str(data), "--model", TIMM_MODEL]
            cmd += [
                "--checkpoint",
                str(checkpoint),
                "--img-size",
                str(size),
                "--crop-pct",
                "0.875",
                *common,
                "--device",
                "cpu",
            ]
            if size != NATIVE:
                cmd += ["--model-kwargs", "dynamic_img_size=True"]
            total += timed(cmd, env, scratch)
        return total
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--validate", type=Path, required=True, help="path to timm's validate.py")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--images", type=int, default=400)
    p.add_argument("--sizes", type=int, nargs="+", default=[224, 384])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "cpvt_eval_bench_jpegs")
    p.add_argument("--before", type=Path, help="a folder holding an earlier version's cpvt_eval package, to add")
    p.add_argument("--busy", type=int, default=0, help="busy processes running beside every round")
    p.add_argument("--json", action="store_true", help="print the measurements as JSON")
    args = p.parse_args()
    if not args.validate.is_file():
        raise SystemExit(f"{args.validate}: no such file (see --help for where to get timm's validate.py)")

    import timm
    import torch

    data = make_jpeg_imagefolder(args.data, args.images)
    stats = dataset_stats(data)
    if stats["n"] != args.images:
        raise SystemExit(f"{data} holds {stats['n']} JPEGs, not {args.images}: give --data an empty folder")
    work = Path(tempfile.mkdtemp(prefix="cpvt_eval_bench_ci_"))
    if args.before is not None and not (args.before / "cpvt_eval" / "__main__.py").is_file():
        raise SystemExit(f"{args.before}: no cpvt_eval package in it")
    conditions = [CPVT, CPVT_NO_TP, TIMM, TIMM_PASSIVE] + ([CPVT_BEFORE] if args.before else [])
    seconds: dict[str, list[float]] = {c: [] for c in conditions}
    loads: dict[str, list[float]] = {c: [] for c in conditions}
    burners = []
    try:
        checkpoint = save_random_deit(work / "deit_tiny_random.pth")
        burners = [subprocess.Popen([sys.executable, "-c", BURNER]) for _ in range(args.busy)]
        for r in range(args.rounds):
            order = conditions[r % len(conditions) :] + conditions[: r % len(conditions)]
            for name in order:
                loads[name].append(os.getloadavg()[0])
                seconds[name].append(run_condition(name, args, data, checkpoint, work))
                print(f"round {r + 1} {name}: {seconds[name][-1]:.1f} s (load {loads[name][-1]:.2f})", file=sys.stderr)
    finally:
        for b in burners:
            b.kill()
            b.wait()
        shutil.rmtree(work, ignore_errors=True)

    timm_s = seconds[TIMM]
    out = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.platform()}",
        "torch": torch.__version__,
        "timm": timm.__version__,
        "validate_py_sha256": hashlib.sha256(args.validate.read_bytes()).hexdigest()[:12],
        "images": stats["n"],
        "image_dims": stats["dims"],
        "mean_kb": round(stats["mean_kb"], 1),
        "sizes": args.sizes,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "rounds": args.rounds,
        "busy_processes": args.busy,
        "seconds": seconds,
        "load_avg_1m": loads,
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(
        f"\n{stats['n']} JPEGs {stats['dims'][0]}x{stats['dims'][1]} (mean {stats['mean_kb']:.0f} KB), sizes "
        f"{' '.join(map(str, args.sizes))}, batch {args.batch_size}, {args.workers} workers, {args.rounds} interleaved "
        f"rounds, {args.busy} busy processes beside them; torch {torch.__version__}, timm {timm.__version__}, "
        f"validate.py sha256 {out['validate_py_sha256']}\n"
    )
    print("| condition | median s | range s | ratio to timm (median of rounds) | ratio range | load (median, range) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in conditions:
        ratios = [s / t for s, t in zip(seconds[name], timm_s, strict=True)]
        print(
            f"| {name} | {median(seconds[name]):.1f} | {spread(seconds[name])} | {median(ratios):.3f} | "
            f"{spread(ratios)} | {median(loads[name]):.2f} ({spread(loads[name])}) |"
        )


if __name__ == "__main__":
    main()
