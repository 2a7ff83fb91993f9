"""Train the offline demo's toy models on the procedural dataset and write their checkpoints (package data).

Every variant gets the same recipe and the same seed, so the only difference between them is the position
encoding:

* data: ``--per-class`` training images per class rendered from the ``train`` split of the demo world (seed
  ``--seed``; disjoint from the ``val`` split the demo evaluates), JPEG-encoded like the eval images;
* augmentation: RandomResizedCrop to 56 px (DeiT's scale 0.08-1, ratio 3/4-4/3, bicubic) only. No flips: left/right
  is the class. No mixup/cutmix/colour jitter (the colours name the parts);
* optimiser: AdamW, lr ``--lr`` at batch 64, weight decay 0.05, 1 warm-up epoch then cosine to 0, label smoothing
  0.1, ``--epochs`` epochs, fp32 on CPU with ``--threads`` threads.

After each model it checks that the model uses its position encoding (``cpvt_eval.demo.mechanism``: APE replaced
by its mean, or the PEG zeroed, on held-out train-split images at 56 px) and records the figures in the
checkpoint's metadata next to the recipe.

Usage (regenerates cpvt_eval/resources/demo/*.safetensors)::

    python scripts/train_demo.py
    python scripts/train_demo.py --models deit_toy cpvt_toy --epochs 2 --out /tmp/demo-ckpt   # a quick try

Budget on a 2-core x86-64 machine, CPU only (fp32, two threads): 12 s per epoch when the machine is otherwise idle,
so about 5 minutes per model and 15 minutes for the three shipped ones; several times that when the cores are
shared (the README's demo section has the measured figures). No GPU is needed.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import time
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

import cpvt_eval
from cpvt_eval.data import EvalTransform, normalize_batch
from cpvt_eval.demo.dataset import CLASSES, materialize, render_jpeg
from cpvt_eval.demo.mechanism import ablate, applicable, top1
from cpvt_eval.demo.run import DEMO_MODELS, NATIVE_SIZE

# every registered toy; the default trains the shipped ones (DEMO_MODELS), the default demo's models first
TOYS = ("deit_toy", "cpvt_toy", "deit_toy_nope", "cpvt_toy_gap", "deit_toy_sincos")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
RECIPE = {
    "schedule": "1 warm-up epoch, cosine to 0",
    "label_smoothing": 0.1,
}


class JpegSet(Dataset):
    def __init__(self, items: list[tuple[bytes, int]], transform):
        self.items = items
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        data, label = self.items[i]
        img = Image.open(io.BytesIO(data)).convert("RGB")
        return self.transform(img), label


def render_split(per_class: int, seed: int, split: str, first: int = 0) -> list[tuple[bytes, int]]:
    return [(render_jpeg(c, seed, first + i, split), c) for c in range(len(CLASSES)) for i in range(per_class)]


def load_split(per_class: int, seed: int) -> list[tuple[bytes, int]]:
    """The training split as JPEG bytes, materialised once in the user cache (shared by parallel trainings)."""
    root, _ = materialize(per_class, seed, split="train")
    return [(f.read_bytes(), c) for c, name in enumerate(CLASSES) for f in sorted((root / name).glob("*.jpg"))]


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return 0.5 * base * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def holdout_tensors(items: list[tuple[bytes, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    transform = EvalTransform(NATIVE_SIZE)
    images = [transform(Image.open(io.BytesIO(data)).convert("RGB")) for data, _ in items]
    return torch.stack(images), torch.tensor([label for _, label in items])


def train_one(name: str, train_items, holdout, args) -> tuple[dict, dict]:
    torch.manual_seed(args.seed)
    model = cpvt_eval.create_model(name)
    train_tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(
                NATIVE_SIZE, scale=(args.min_scale, 1.0), interpolation=transforms.InterpolationMode.BICUBIC
            ),
            transforms.PILToTensor(),
        ]
    )
    gen = torch.Generator().manual_seed(args.seed)
    loader = DataLoader(
        JpegSet(train_items, train_tf),
        batch_size=args.batch_size,
        shuffle=True,
        generator=gen,
        num_workers=0,
        drop_last=True,
    )
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    crit = nn.CrossEntropyLoss(label_smoothing=0.1)
    total = args.epochs * len(loader)
    step = 0
    t0 = time.perf_counter()
    model.train()
    for epoch in range(args.epochs):
        running = 0.0
        for x, y in loader:
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, len(loader), args.lr)
            loss = crit(model(normalize_batch(x, MEAN, STD)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running += loss.item()
            step += 1
        acc = top1(model, *holdout)
        model.train()
        print(
            f"{name} epoch {epoch + 1}/{args.epochs}: loss {running / len(loader):.3f}  holdout top-1 {acc:.1f}%  "
            f"({time.perf_counter() - t0:.0f}s)",
            flush=True,
        )
    wall = time.perf_counter() - t0
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    info = {
        "model": name,
        "epochs": args.epochs,
        "train_images": len(train_items),
        "seed": args.seed,
        "holdout_images": len(holdout[1]),
        "holdout_top1_56px": round(acc, 2),
        "train_minutes": round(wall / 60, 2),
        "threads": args.threads,
    }
    # the check before any resolution result is read: does the model use its position encoding?
    for kind in applicable(model):
        info[f"holdout_top1_56px_{kind.replace('-', '_')}"] = round(top1(ablate(model, kind, args.seed), *holdout), 2)
        model.load_state_dict(state)
    print(f"{name}: {json.dumps(info)}", flush=True)
    return state, info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(DEMO_MODELS))
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "cpvt_eval/resources/demo")
    p.add_argument("--per-class", type=int, default=300)
    p.add_argument("--epochs", type=int, default=24)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    # DeiT's RandomResizedCrop scale (0.08, 1): the parts are seen over a wide range of sizes in tokens, including
    # the sizes they have at 96-128 px eval (magnification up to 1.4x the original pixels, 128 px eval is 1.14x)
    p.add_argument("--min-scale", type=float, default=0.08)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    unknown = sorted(set(args.models) - set(TOYS))
    if unknown:
        p.error(f"{unknown[0]} is not a toy model; choose from {', '.join(TOYS)}")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    train_items = load_split(args.per_class, args.seed)
    # a held-out slice of the train split (indices past the training images) to watch progress at 56 px
    holdout = holdout_tensors(render_split(20, args.seed, "train", first=args.per_class))
    print(f"rendered {len(train_items)} training images in {time.perf_counter() - t0:.0f}s", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    log = []
    for name in args.models:
        sd, info = train_one(name, train_items, holdout, args)
        recipe = {
            **RECIPE,
            "augmentation": f"RandomResizedCrop(56, scale=({args.min_scale:g}, 1), ratio=(3/4, 4/3), bicubic); no flip",
            "optimizer": f"AdamW(lr={args.lr:g}, weight_decay=0.05), batch {args.batch_size}",
        }
        meta = {k: str(v) for k, v in {**info, **recipe}.items()}
        save_file(sd, str(args.out / f"{name}.safetensors"), metadata=meta)
        log.append(info)
    print(json.dumps(log, indent=2))


if __name__ == "__main__":
    main()
