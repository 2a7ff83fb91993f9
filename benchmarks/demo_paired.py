"""Paired significance of the demo's resolution effect, from the per-image predictions of a run directory.

For a model with a PEG and the APE model (``deit_toy``), evaluated on the same images at the native size and at
larger sizes, it reports per size:

* each model's top-1 and change from native;
* ``diff``: the PEG model's change minus the APE model's change (positive: the PEG model holds better), with a
  95% percentile bootstrap interval that resamples images (one draw of images is shared by both models and all
  sizes, so the pairing is kept);
* the exact McNemar test between the two models at that size (the same test as ``cpvt-eval report RUN --pairs``),
  and between each model's native and larger-size predictions.

It reads only ``rows.jsonl`` and ``predictions/*.safetensors``, so it needs numpy and safetensors, not torch.

Usage::

    cpvt-eval demo --all --per-class 200 --out runs/demo-2000
    python benchmarks/demo_paired.py runs/demo-2000                     # every other model against deit_toy
    python benchmarks/demo_paired.py runs/demo-2000 --peg cpvt_toy --boot 10000
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

NATIVE = 56


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value (binomial test of b against b + c discordant pairs at 1/2)."""
    n = b + c
    if n == 0:
        return 1.0
    terms = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + n * math.log(0.5)
        for i in range(min(b, c) + 1)
    ]
    top = max(terms)
    return min(1.0, 2.0 * math.exp(top) * sum(math.exp(t - top) for t in terms))


def load_correct(run: Path) -> dict[tuple[str, int], np.ndarray]:
    """``(model, size) -> bool per image`` (top-1 correct), ordered by sample index; a later row for a key wins."""
    rows = {}
    for line in (run / "rows.jsonl").read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            rows[(r["model"], int(r["img_size"]))] = r
    out = {}
    for key, r in rows.items():
        arrays = load_file(str(run / r["predictions"]))
        order = np.argsort(arrays["indices"])
        out[key] = (arrays["top5"][order, 0] == arrays["labels"][order]).astype(bool)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path)
    p.add_argument("--ape", default="deit_toy")
    p.add_argument("--peg", nargs="*", help="models to compare with --ape [default: every other model in the run]")
    p.add_argument("--boot", type=int, default=10000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    correct = load_correct(args.run)
    models = list(dict.fromkeys(m for m, _ in correct))
    sizes = sorted({s for _, s in correct if s != NATIVE})
    others = args.peg or [m for m in models if m != args.ape]
    n = len(correct[(args.ape, NATIVE)])
    rng = np.random.default_rng(args.seed)
    draws = rng.integers(0, n, size=(args.boot, n))  # shared by every model and size: the pairing is kept
    a0 = correct[(args.ape, NATIVE)]
    results = []
    for m in others:
        b0 = correct[(m, NATIVE)]
        for s in sizes:
            a, b = correct[(args.ape, s)], correct[(m, s)]
            per_image = (b.astype(int) - b0) - (a.astype(int) - a0)  # change of m minus change of the APE model
            diff = 100.0 * per_image.mean()
            boot = 100.0 * per_image[draws].mean(axis=1)
            lo, hi = np.percentile(boot, [2.5, 97.5])
            results.append(
                {
                    "model": m,
                    "vs": args.ape,
                    "img_size": s,
                    "n_images": n,
                    "top1_native": [round(100 * a0.mean(), 2), round(100 * b0.mean(), 2)],
                    "top1": [round(100 * a.mean(), 2), round(100 * b.mean(), 2)],
                    "change": [round(100 * (a.mean() - a0.mean()), 2), round(100 * (b.mean() - b0.mean()), 2)],
                    "diff_in_change": round(diff, 2),
                    "diff_ci95": [round(lo, 2), round(hi, 2)],
                    "p_boot_le_0": round(float(np.mean(boot <= 0)), 4),
                    "mcnemar_p_at_size": mcnemar_exact(int(np.sum(b & ~a)), int(np.sum(~b & a))),
                    "mcnemar_p_change_ape": mcnemar_exact(int(np.sum(a & ~a0)), int(np.sum(~a & a0))),
                    "mcnemar_p_change_model": mcnemar_exact(int(np.sum(b & ~b0)), int(np.sum(~b & b0))),
                }
            )
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(
        f"{n} images, {args.boot} paired bootstrap resamples (seed {args.seed}); "
        f"change: top-1 at size - at {NATIVE} px\n"
    )
    print(
        f"| model vs {args.ape} | size | change {args.ape} | change model | diff in change [95% CI] "
        "| McNemar p at size | McNemar p change (APE / model) |"
    )
    print("|---|---:|---:|---:|---|---:|---:|")
    for r in results:
        print(
            f"| {r['model']} | {r['img_size']} | {r['change'][0]:+.1f} | {r['change'][1]:+.1f} | "
            f"{r['diff_in_change']:+.1f} [{r['diff_ci95'][0]:+.1f}, {r['diff_ci95'][1]:+.1f}] | "
            f"{r['mcnemar_p_at_size']:.2g} | {r['mcnemar_p_change_ape']:.2g} / {r['mcnemar_p_change_model']:.2g} |"
        )


if __name__ == "__main__":
    main()
