"""Checks that the toy models use their position encoding: ablate it at the native size and see what it costs.

* ``ape-mean``: every patch position gets the mean of the learned APE table (the cls entry is kept). A model
  that encodes position in its APE loses it; one that ignores its APE loses nothing.
* ``ape-shuffle``: the table's rows are permuted (a fixed seed): every position still gets *a* learned vector,
  but the wrong one.
* ``peg-zero``: the PEG's depthwise convolution (weight and bias) is zeroed, so the PEG passes tokens through
  unchanged (``x + 0``) and the model has no position information at all.

Used by ``benchmarks/demo_mechanism.py`` (the figures in the README) and by the test that guards the shipped
checkpoints against a retraining that loses the mechanism.
"""

from __future__ import annotations

import io

import torch
from PIL import Image
from torch import nn

from ..data import EvalTransform, normalize_batch
from ..errors import ModelError
from .dataset import CLASSES, render_jpeg

ABLATIONS = ("ape-mean", "ape-shuffle", "peg-zero")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def applicable(model: nn.Module) -> tuple[str, ...]:
    """The ablations that make sense for ``model``: the APE ones for a learned table, ``peg-zero`` for a PEG."""
    if getattr(model, "pos_block", None) is not None:
        return ("peg-zero",)
    pe = getattr(model, "pos_embed", None)
    if isinstance(pe, nn.Parameter) and pe.requires_grad:
        return ("ape-mean", "ape-shuffle")
    return ()


@torch.no_grad()
def ablate(model: nn.Module, kind: str, seed: int = 0) -> nn.Module:
    """Apply ablation ``kind`` to ``model`` in place and return it."""
    if kind not in applicable(model):
        raise ModelError(f"ablation {kind!r} does not apply to this model (it supports: {applicable(model) or 'none'})")
    if kind == "peg-zero":
        for peg in model.pos_block:
            peg.pos.weight.zero_()
            peg.pos.bias.zero_()
        return model
    prefix = 0 if getattr(model, "no_embed_class", False) else int(model.num_prefix_tokens)
    table = model.pos_embed[:, prefix:]
    if kind == "ape-mean":
        table.copy_(table.mean(dim=1, keepdim=True).expand_as(table))
    else:
        perm = torch.randperm(table.shape[1], generator=torch.Generator().manual_seed(seed))
        table.copy_(table[:, perm].clone())
    return model


def val_sample(per_class: int, seed: int = 0, size: int = 56) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``per_class`` val images of every class (rendered in memory) through the eval transform at ``size``."""
    transform = EvalTransform(size)
    images, labels = [], []
    for c in range(len(CLASSES)):
        for i in range(per_class):
            images.append(transform(Image.open(io.BytesIO(render_jpeg(c, seed, i, "val"))).convert("RGB")))
            labels.append(c)
    return torch.stack(images), torch.tensor(labels)


@torch.inference_mode()
def top1(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 200) -> float:
    """Top-1 % of ``model`` (evaluation mode) on uint8 ``images``."""
    model.eval()
    correct = 0
    for i in range(0, len(images), batch_size):
        logits = model(normalize_batch(images[i : i + batch_size], MEAN, STD))
        correct += int((logits.argmax(1) == labels[i : i + batch_size]).sum())
    return 100.0 * correct / len(images)
