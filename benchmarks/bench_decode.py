"""Would decoding each JPEG once for *all* sizes pay? Decode cost vs resize cost on realistic JPEGs.

The shared sweep decodes every image once per size (one pass per size feeds every model). Decoding once for all
sizes would save ``(S - 1) x decode`` per image, out of ``S x decode + sum(resize)``. This script measures both
terms with the evaluation transform itself (``cpvt_eval.data.load_rgb`` and ``EvalTransform``), single-threaded,
as medians over alternating rounds, and prints the bound on the saving.

Example::

    python benchmarks/bench_decode.py --images 100 --rounds 3
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import dataset_stats, make_jpeg_imagefolder, median  # noqa: E402

from cpvt_eval.data import EvalTransform, load_rgb  # noqa: E402

SIZES = (224, 384, 448, 512)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "cpvt_eval_bench_jpegs")
    args = p.parse_args()
    data = make_jpeg_imagefolder(args.data, args.images)
    stats = dataset_stats(data)
    files = sorted(data.rglob("*.JPEG"))[: args.images]
    transforms = {s: EvalTransform(s) for s in SIZES}
    decode_ms, resize_ms = [], {s: [] for s in SIZES}
    for r in range(args.rounds):
        t0 = time.perf_counter()
        images = [load_rgb(f) for f in files]
        decode_ms.append(1000 * (time.perf_counter() - t0) / len(files))
        for s in SIZES if r % 2 == 0 else tuple(reversed(SIZES)):
            t0 = time.perf_counter()
            for img in images:
                transforms[s](img)
            resize_ms[s].append(1000 * (time.perf_counter() - t0) / len(files))
    dec = median(decode_ms)
    res = {s: median(v) for s, v in resize_ms.items()}
    per_size = dec * len(SIZES) + sum(res.values())
    once = dec + sum(res.values())
    print(
        f"\n{len(files)} JPEGs {stats['dims'][0]}x{stats['dims'][1]} (mean {stats['mean_kb']:.0f} KB), "
        f"median of {args.rounds} rounds, one thread, ms per image\n"
    )
    print("| step | ms / image |")
    print("|---|---|")
    print(f"| decode (PIL, to RGB) | {dec:.2f} |")
    for s in SIZES:
        t = transforms[s]
        print(f"| resize to {t.resize_size} (bicubic) + crop {s} + to uint8 tensor | {res[s]:.2f} |")
    print(f"| data work, decode once per size (current) | {per_size:.2f} |")
    print(f"| data work, decode once for all sizes | {once:.2f} |")
    print(
        f"\nsaving bound of decoding once for all {len(SIZES)} sizes: {100 * (1 - once / per_size):.1f}% of data work"
    )


if __name__ == "__main__":
    main()
