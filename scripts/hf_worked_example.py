"""The README's worked example, "Your own models and data": a ViT trained with Hugging Face transformers on ten
classes of its own, saved with ``save_pretrained``, and a validation folder named by those classes.

The ten classes are the offline demo's procedural world (``cpvt_eval.demo.dataset``: which colour is left of which,
so position matters). The model is a small ``ViTForImageClassification`` (224 px, patch 32, width 64, 4 layers)
trained from scratch for a few epochs on CPU; its ``id2label`` names the classes and its ``ViTImageProcessor`` (224 x
224, mean/std 0.5) is saved beside it. Needs transformers (a test-only dependency of cpvt-eval).

    python scripts/hf_worked_example.py --out my-vit --data ten-classes
    cpvt-eval resolution -m ./my-vit -s 224:448:32 --data ten-classes/val --out runs/my-vit
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cpvt_eval.demo.dataset import CLASSES, render


def _tensor(img, size: int) -> torch.Tensor:
    """What ViTImageProcessor does: the whole image to size x size (bilinear), then (x - 0.5) / 0.5."""
    arr = np.asarray(img.convert("RGB").resize((size, size), resample=2), dtype=np.float32) / 255.0
    return (torch.from_numpy(arr).permute(2, 0, 1) - 0.5) / 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("my-vit"))
    parser.add_argument("--data", type=Path, default=Path("ten-classes"))
    parser.add_argument("--per-class", type=int, default=120, help="training images per class")
    parser.add_argument("--val-per-class", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import transformers

    torch.manual_seed(args.seed)
    for c, name in enumerate(CLASSES):  # the validation folder, one folder per class name
        folder = args.data / "val" / name
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(args.val_per_class):
            render(c, args.seed, j, "val").save(folder / f"{name}_{j:03d}.jpg", quality=90)
    xs = torch.stack([_tensor(render(c, args.seed, j, "train"), 224) for c in range(10) for j in range(args.per_class)])
    ys = torch.tensor([c for c in range(10) for _ in range(args.per_class)])

    config = transformers.ViTConfig(
        image_size=224,
        patch_size=32,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=256,
        id2label=dict(enumerate(CLASSES)),
        label2id={n: i for i, n in enumerate(CLASSES)},
    )
    model = transformers.ViTForImageClassification(config)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    steps = args.epochs * ((len(xs) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    started = time.monotonic()
    for epoch in range(args.epochs):
        model.train()
        order, correct = torch.randperm(len(xs)), 0
        for i in range(0, len(xs), 64):
            idx = order[i : i + 64]
            out = model(pixel_values=xs[idx]).logits
            loss = F.cross_entropy(out, ys[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            correct += int((out.argmax(1) == ys[idx]).sum())
        print(f"epoch {epoch + 1}: train top-1 {100 * correct / len(xs):.1f}% ({time.monotonic() - started:.0f} s)")
    model.eval().save_pretrained(args.out)
    transformers.ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(args.out)
    print(f"saved {args.out} (config.json, model.safetensors, preprocessor_config.json); validation: {args.data}/val")


if __name__ == "__main__":
    main()
