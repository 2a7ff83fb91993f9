"""A dense size range (10 sizes, 56:128:8 on the toys, as 224:512:32 is at patch 16) against 4 sizes on the same
images: wall time of the shared-data sweep, in interleaved rounds, and the ratio of each round.

    python benchmarks/bench_range.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cpvt_eval  # noqa: E402
from benchmarks._common import sweep  # noqa: E402
from cpvt_eval.data import open_dataset  # noqa: E402
from cpvt_eval.engine import EvalSettings  # noqa: E402
from cpvt_eval.jobs.assemble import build_model  # noqa: E402
from tests.conftest import make_imagefolder  # noqa: E402

FOUR = (56, 96, 112, 128)  # the toys' 224/384/448/512
TEN = tuple(range(56, 129, 8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = make_imagefolder(Path(tmp) / "val", tuple(range(10)), per_class=6, size=(500, 375))
        image_set = open_dataset(root)
        models = []
        for name in ("cpvt_toy", "deit_toy"):
            torch.manual_seed(0)
            path = Path(tmp) / f"{name}.pth"
            torch.save({"model": cpvt_eval.create_model(name, num_classes=1000).state_dict()}, path)
            models.append(build_model(name, str(path), {"num_classes": 1000}))
        settings = EvalSettings(device=torch.device("cpu"), batch_size=32, workers=args.workers)
        times: dict[int, list[float]] = {4: [], 10: []}
        for _ in range(args.rounds):
            for key, sizes in ((4, FOUR), (10, TEN)):
                t0 = time.perf_counter()
                sweep(models, image_set, sizes, settings)
                times[key].append(time.perf_counter() - t0)
    ratios = [b / a for a, b in zip(times[4], times[10], strict=True)]
    print("4 sizes (s):", [round(x, 2) for x in times[4]], " 10 sizes (s):", [round(x, 2) for x in times[10]])
    print(f"ratio 10/4: median {statistics.median(ratios):.2f} (range {min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
