"""Shared-data sweep vs a naive per-cell loop that behaves like timm's validate.py.

The naive loop evaluates each (model, size) cell with its own dataloader pass, with the transform of timm's
validate.py (PIL decode, Resize + CenterCrop + ToTensor + Normalize in the workers, float batches, ``no_grad``):
the same JPEGs are decoded and resized M x S times. The shared sweep (``cpvt_eval.engine.run_pass``) makes one pass
per size that feeds every model (uint8 batches, normalised after the copy). Both see the same images, sizes,
batch size and workers; both build their models once (timm's validate.py would also rebuild the model and
start a process per cell, which is not charged to the naive loop here). Runs alternate (naive, shared, shared,
naive, ...) and the table reports medians and the median of the per-round ratios; top-1 and the per-image
top-1 predictions are asserted identical.

The models are small on purpose (the toy CPVT/DeiT/CPVT-GAP at patch 32, width 32, depth 1, 0.14M parameters)
so that, as on a GPU, the data path rather than the model dominates the cost of a cell; the script prints the
models' own cost per image (``measure_throughput``) next to the result so that this can be checked.

``--memory`` instead runs the shared sweep in a fresh process on two dataset sizes and reports peak RSS, to
show that memory does not grow with the dataset (streaming).

Example::

    python benchmarks/bench_sweep.py --images 300 --rounds 3
    python benchmarks/bench_sweep.py --memory --images 400
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

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    dataset_stats,
    make_jpeg_imagefolder,
    median,
    spread,
    sweep,  # noqa: E402
)

import cpvt_eval  # noqa: E402, F401
from cpvt_eval.data import open_dataset  # noqa: E402
from cpvt_eval.engine import EvalModel, EvalSettings  # noqa: E402
from cpvt_eval.models.posenc import adapt_to_size  # noqa: E402
from cpvt_eval.models.registry import resolve  # noqa: E402
from cpvt_eval.throughput import TimingPlan, TimingSettings, measure_throughput  # noqa: E402

MODELS = ("cpvt_toy", "deit_toy", "cpvt_toy_gap")
MODEL_ARGS = dict(patch_size=32, img_size=224, embed_dim=32, depth=1, num_heads=2, num_classes=1000)
SIZES = (224, 384, 448, 512)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def build_models() -> list[EvalModel]:
    models = []
    for i, name in enumerate(MODELS):
        torch.manual_seed(i)
        spec = resolve(name)
        module = spec.create(**MODEL_ARGS).eval()
        models.append(EvalModel(name=name, spec=spec, module=module, mean=MEAN, std=STD))
    return models


class TimmStyleDataset(Dataset):
    """What timm's validate.py feeds a model: float, normalised tensors made in the worker."""

    def __init__(self, image_set, size: int, crop_pct: float = 0.875):
        self.image_set = image_set
        self.tf = transforms.Compose(
            [
                transforms.Resize(int(size / crop_pct), interpolation=transforms.InterpolationMode.BICUBIC),
                transforms.CenterCrop(size),
                transforms.ToTensor(),
                transforms.Normalize(MEAN, STD),
            ]
        )

    def __len__(self):
        return len(self.image_set.samples)

    def __getitem__(self, i):
        s = self.image_set.samples[i]
        with open(self.image_set.root / s.relpath, "rb") as f:
            img = Image.open(f).convert("RGB")
        return self.tf(img), s.label


def naive(models, image_set, sizes, batch, workers) -> dict:
    """One dataloader pass per model per size; returns per-cell per-image top-1 predictions."""
    preds = {}
    for m in models:
        for size in sizes:
            adapt_to_size(m.module, size)
            loader = DataLoader(TimmStyleDataset(image_set, size), batch_size=batch, shuffle=False, num_workers=workers)
            out = []
            with torch.no_grad():
                for x, _ in loader:
                    out.append(m.module(x).argmax(dim=1))
            preds[(m.name, size)] = torch.cat(out)
    return preds


def shared(models, image_set, sizes, batch, workers) -> dict:
    settings = EvalSettings(device=torch.device("cpu"), batch_size=batch, workers=workers)
    return {
        (c.model, c.size): torch.from_numpy(c.arrays["top5"][:, 0].astype("int64"))
        for c in sweep(models, image_set, sizes, settings)
    }


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def run_speed(args) -> None:
    data = make_jpeg_imagefolder(args.data, args.images)
    stats = dataset_stats(data)
    image_set = open_dataset(data, args.images)  # the folder may hold more images from an earlier, larger run
    stats["n"] = len(image_set)
    models = build_models()
    labels = torch.tensor([s.label for s in image_set.samples])
    times = {"naive": [], "shared": []}
    ratios = []
    reference = None
    for r in range(args.rounds):
        order = ("naive", "shared") if r % 2 == 0 else ("shared", "naive")
        this_round = {}
        for method in order:
            fn = naive if method == "naive" else shared
            dt, preds = timed(fn, models, image_set, SIZES, args.batch_size, args.workers)
            this_round[method] = dt
            times[method].append(dt)
            print(f"round {r + 1} {method:6s} {dt:7.2f} s", file=sys.stderr)
            # identical predictions: every cell, every image, both methods, every round
            if reference is None:
                reference = preds
            assert preds.keys() == reference.keys()
            for key in preds:
                assert torch.equal(preds[key], reference[key]), f"{method} differs at {key}"
        ratios.append(this_round["naive"] / this_round["shared"])
    top1 = {k: round(100 * float(v.eq(labels).float().mean()), 2) for k, v in reference.items()}
    n_cells = len(MODELS) * len(SIZES)
    print(
        f"\n{stats['n']} JPEGs {stats['dims'][0]}x{stats['dims'][1]}, mean {stats['mean_kb']:.0f} KB; "
        f"{len(MODELS)} models x {len(SIZES)} sizes {SIZES}; batch {args.batch_size}, workers {args.workers}, "
        f"torch threads {torch.get_num_threads()}, {args.rounds} alternating rounds\n"
    )
    print("| method | data passes | median wall s | range s | images/s (cells x images / s) |")
    print("|---|---|---|---|---|")
    for method, passes in (
        ("naive per-cell loop (timm validate.py style)", n_cells),
        ("shared-data sweep", len(SIZES)),
    ):
        key = "naive" if method.startswith("naive") else "shared"
        med = median(times[key])
        ips = n_cells * stats["n"] / med
        print(f"| {method} | {passes} | {med:.2f} | {spread(times[key])} | {ips:.1f} |")
    print(
        f"\nmedian speed-up (naive / shared, per round): **{median(ratios):.2f}x** (rounds: "
        + ", ".join(f"{x:.2f}" for x in ratios)
        + ")"
    )
    cost = {}
    for size in SIZES:
        for m in models:
            adapt_to_size(m.module, size)
            settings = TimingSettings(plan=TimingPlan(warmup=1, rounds=3), batch_size=args.batch_size, flops=False)
            r = measure_throughput(m.module, size, torch.device("cpu"), settings)
            cost[size] = cost.get(size, 0.0) + r.ms_per_batch / r.batch_size
    print(
        "model-only cost, ms per image, all three models together (batch "
        f"{args.batch_size}): " + ", ".join(f"{s} px {v:.2f}" for s, v in cost.items())
    )
    print("top-1 identical in every cell and round:", json.dumps({f"{k[0]}@{k[1]}": v for k, v in top1.items()}))


def child(args) -> None:
    """Run the shared sweep once on ``--limit`` images and print peak RSS (this process, and its workers)."""
    image_set = open_dataset(args.data, args.limit)
    settings = EvalSettings(device=torch.device("cpu"), batch_size=args.batch_size, workers=args.workers)
    n = sum(c.counts[2] for c in sweep(build_models(), image_set, SIZES, settings))
    main_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    workers_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(
        json.dumps(
            {"images": len(image_set), "cells_images": n, "main_mb": main_kb / 1024, "worker_mb": workers_kb / 1024}
        )
    )


def run_memory(args) -> None:
    data = make_jpeg_imagefolder(args.data, args.images)
    rows = []
    for limit in (args.images // 4, args.images):
        cmd = [sys.executable, __file__, "--child", "--data", str(data), "--limit", str(limit)]
        cmd += ["--batch-size", str(args.batch_size), "--workers", str(args.workers)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ}).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(
        f"\nshared sweep, {len(MODELS)} models x {len(SIZES)} sizes, batch {args.batch_size}, workers {args.workers}\n"
    )
    print("| images | peak RSS main process MB | peak RSS largest worker MB |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r['images']} | {r['main_mb']:.0f} | {r['worker_mb']:.0f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=300, help="generated JPEGs (~500x375, ~90 KB)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of both methods")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "cpvt_eval_bench_jpegs")
    p.add_argument("--memory", action="store_true", help="peak RSS at two dataset sizes instead of timing")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--limit", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
    elif args.memory:
        run_memory(args)
    else:
        run_speed(args)


if __name__ == "__main__":
    main()
