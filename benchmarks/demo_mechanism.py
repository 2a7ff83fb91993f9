"""Is the demo's effect the paper's mechanism? PE ablations of the shipped toy checkpoints at the native size.

On the first ``--per-class`` val images of every class (the demo's val split, seed 0, 56 px, the standard eval
transform), it evaluates each shipped toy model intact and with its position encoding ablated
(``cpvt_eval.demo.mechanism``):

* toy DeiT (learned APE): APE replaced by its mean; APE rows shuffled (``--shuffles`` seeds, median shown);
* toy CPVT and CPVT-GAP: PEG zeroed (the model is then without any position information);
* the no-PE and sin-cos toys, trained with the same recipe, as references.

Each row carries the number of images and a 95% Wilson interval of the top-1; the drop is paired (same images).

Usage::

    python benchmarks/demo_mechanism.py                 # 200 images per class: 2,000 images
    python benchmarks/demo_mechanism.py --per-class 20 --json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch

import cpvt_eval
from cpvt_eval.checkpoints import load_checkpoint
from cpvt_eval.demo.mechanism import ablate, applicable, top1, val_sample
from cpvt_eval.demo.run import DEMO_MODELS, checkpoint_path


def wilson(p: float, n: int) -> float:
    """Half-width (points) of the 95% Wilson interval around ``p`` % on ``n`` images (about 1.96 sqrt(pq/n))."""
    q = p / 100.0
    z = 1.96
    centre = (q + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(q * (1 - q) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return 100.0 * max(abs(centre + half - q), abs(q - (centre - half)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-class", type=int, default=200)
    p.add_argument("--models", nargs="+", default=list(DEMO_MODELS))
    p.add_argument("--shuffles", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    images, labels = val_sample(args.per_class)
    n = len(labels)
    rows = []
    for name in args.models:
        model = cpvt_eval.create_model(name)
        load_checkpoint(model, checkpoint_path(name))
        state = {k: v.clone() for k, v in model.state_dict().items()}
        intact = top1(model, images, labels)
        rows.append({"model": name, "variant": "intact", "top1": intact, "drop": 0.0})
        for kind in applicable(model):
            seeds = range(args.shuffles) if kind == "ape-shuffle" else (0,)
            values = []
            for seed in seeds:
                model.load_state_dict(state)
                values.append(top1(ablate(model, kind, seed), images, labels))
            value = statistics.median(values)
            rows.append({"model": name, "variant": kind, "top1": value, "drop": intact - value, "runs": values})
    for r in rows:
        r["n_images"] = n
        r["ci95"] = round(wilson(r["top1"], n), 1)
    result = {
        "benchmark": "PE ablations at 56 px (native), demo val split seed 0",
        "per_class": args.per_class,
        "n_images": n,
        "threads": args.threads,
        "torch": torch.__version__,
        "wall_s": round(time.perf_counter() - t0, 1),
        "rows": rows,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{n} val images at 56 px; top-1 % with 95% Wilson half-width; drop = intact - ablated (same images)\n")
    print("| model | variant | top-1 | drop |")
    print("|---|---|---:|---:|")
    for r in rows:
        extra = f" (seeds: {', '.join(f'{v:.1f}' for v in r['runs'])})" if len(r.get("runs", [])) > 1 else ""
        print(f"| {r['model']} | {r['variant']} | {r['top1']:.1f} ± {r['ci95']:.1f} | {r['drop']:+.1f}{extra} |")
    print(f"\n{result['wall_s']} s, {args.threads} threads, torch {result['torch']}")


if __name__ == "__main__":
    main()
