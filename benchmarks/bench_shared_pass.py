"""The demo's data passes before and after the probes shared them: this checkout against a git revision, in
interleaved rounds.

Each round runs ``cpvt-eval demo --no-throughput`` once with this checkout's code and once with the revision's (a
git worktree of it, on ``PYTHONPATH``), each into a fresh run directory over the same cached dataset, and reads the
data-pass seconds back from the rows: every row records its pass's wall time (``duration_s``), the cells of one pass
share it, so the distinct values are the passes. Reported per side: the passes, their seconds summed (median and
range over the rounds), the whole command's wall time, and the median of the per-round ratios (after / before);
with the load average, since the two cores are shared.

    python benchmarks/bench_shared_pass.py --baseline 68264da --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def passes(run_dir: Path) -> list[tuple[str, int, float]]:
    """The distinct data passes of a run directory: (probe, size, seconds); cells of one pass share their seconds."""
    rows = [json.loads(line) for line in (run_dir / "rows.jsonl").read_text().splitlines() if line.strip()]
    seen: dict[tuple[int, float], set[str]] = {}
    for r in rows:
        seen.setdefault((r["img_size"], r["duration_s"]), set()).add((r.get("probe") or "resolution").split(":")[0])
    return [("+".join(sorted(probes)), size, secs) for (size, secs), probes in seen.items()]


def run_demo(code: Path, out: Path, cache: Path, per_class: int) -> float:
    env = dict(os.environ, PYTHONPATH=str(code), CPVT_EVAL_CACHE=str(cache), HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "cpvt_eval", "demo", "--no-throughput", "--per-class", str(per_class)]
    t0 = time.perf_counter()
    subprocess.run([*cmd, "--out", str(out)], cwd=code, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", required=True, help="git revision to compare against (before)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=50, help="demo images per class (10 classes)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="shared-pass-"))
    before = tmp / "before"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(before), args.baseline], check=True)
    try:
        cache = tmp / "cache"
        run_demo(REPO, tmp / "warm", cache, args.per_class)  # materialise the dataset once, outside the rounds
        sides = {"before": before, "after": REPO}
        data: dict[str, list[float]] = {"before": [], "after": []}
        wall: dict[str, list[float]] = {"before": [], "after": []}
        shape: dict[str, list] = {}
        for i in range(args.rounds):
            for name in ("before", "after") if i % 2 == 0 else ("after", "before"):
                out = tmp / f"{name}-{i}"
                wall[name].append(run_demo(sides[name], out, cache, args.per_class))
                found = passes(out)
                shape[name] = sorted((p, s) for p, s, _ in found)
                data[name].append(sum(secs for _, _, secs in found))
                shutil.rmtree(out)
        ratios = [a / b for a, b in zip(data["after"], data["before"], strict=True)]
        print(f"load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
        for name in ("before", "after"):
            d, w = data[name], wall[name]
            print(
                f"{name}: {len(shape[name])} passes {shape[name]}\n"
                f"  data-pass seconds median {statistics.median(d):.2f} (range {min(d):.2f}-{max(d):.2f}); "
                f"command wall median {statistics.median(w):.1f} s (range {min(w):.1f}-{max(w):.1f})"
            )
        print(
            f"after / before data-pass seconds: median {statistics.median(ratios):.3f} "
            f"(range {min(ratios):.3f}-{max(ratios):.3f}) over {args.rounds} interleaved rounds"
        )
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(before)], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
