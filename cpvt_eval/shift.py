"""Consistency under translation: how often a model's top-1 stays the same when the image shifts. Never prints.

The measure is Zhang's ("Making Convolutional Networks Shift-Invariant Again", ICML 2019), scaled to each size
``s``: the image is decoded once, its shorter side resized to ``round(s * 256 / 224)`` and that square
centre-cropped (the *canvas*, uint8); each pair is two ``s`` x ``s`` views of the canvas at offsets drawn uniformly
from ``[0, max_shift)`` per axis, and the consistency is the share of pairs whose two top-1 predictions agree. In
``circular`` mode the views are the centre crop rolled by the offsets instead (``torch.roll``).

One data pass per size feeds every model and every epoch: each batch of canvases is decoded once and cropped
twice per epoch on the device. The offsets are a function of (seed, epoch, image index) alone, so the pairs, and
therefore the figures, do not depend on the batch size, the workers or which models share the pass. Every model
sees the same pairs, which is what makes paired tests between models exact.

The model side is the engine's: the module and PE policy of each size (``EvalModel.sizer``), normalisation on
the device with each model's own mean/std, autocast, and the batch halving on out-of-memory (``ChunkedForward``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from . import interrupts
from .config import Progress, ShiftProtocol
from .data import EvalDataset, EvalTransform, ImageSet, make_loader, normalize_batch
from .engine import EvalModel, EvalSettings, _clean_worker_error
from .errors import CpvtEvalError, DataError
from .models.introspect import grid_of
from .runtime import release_cached_memory

__all__ = ["ShiftCell", "pair_offsets", "shift_size", "shift_sweep", "shifted_views"]

# SplitMix64 constants: a counter-based generator, so that an image's offsets need no generator state.
_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def pair_offsets(seed: int, epoch: int, indices, max_shift: int) -> torch.Tensor:
    """``(n, 4)`` int64 offsets ``(y_a, x_a, y_b, x_b)``, each uniform in ``[0, max_shift)``, for the images at
    ``indices`` (positions in the ImageSet) in ``epoch``; all zero when ``max_shift`` is 0 or 1."""
    idx = np.asarray(indices, dtype=np.int64).astype(np.uint64)
    if max_shift <= 1:
        return torch.zeros((len(idx), 4), dtype=torch.int64)
    base = np.full(idx.shape, seed & 0xFFFFFFFFFFFFFFFF, dtype=np.uint64)
    key = _mix(_mix(_mix(base) + np.uint64(epoch)) + idx)
    draws = _mix(key[:, None] + np.arange(1, 5, dtype=np.uint64)[None, :] * _GAMMA)  # arrays wrap silently
    # the modulo bias of a 64-bit draw over a bound of a few hundred pixels is below 1e-16
    return torch.from_numpy((draws % np.uint64(max_shift)).astype(np.int64))


def shifted_views(
    canvas: torch.Tensor, offsets: torch.Tensor, size: int, mode: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two views of every canvas of ``canvas`` (B, C, H, W): ``size`` x ``size`` crops at ``offsets`` (B, 4)
    from the top-left corner (``random``), or the centre crop rolled by them with ``torch.roll`` (``circular``).

    A copy per image: on the CPU a slice copy is tens of times faster than one gather over the batch.
    """
    if mode not in ("random", "circular"):
        raise CpvtEvalError(f"unknown shift mode {mode!r}")
    b, c, h, w = canvas.shape
    top, left = (h - size) // 2, (w - size) // 2
    views = (canvas.new_empty((b, c, size, size)), canvas.new_empty((b, c, size, size)))
    for i, (ya, xa, yb, xb) in enumerate(offsets.tolist()):
        for view, (y, x) in zip(views, ((ya, xa), (yb, xb)), strict=True):
            if mode == "random":
                view[i] = canvas[i, :, y : y + size, x : x + size]
            else:
                view[i] = torch.roll(canvas[i, :, top : top + size, left : left + size], (y, x), (1, 2))
    return views


@dataclass
class ShiftCell:
    """One (model, size) cell of the probe: counts and per-pair predictions, pairs ordered epoch by epoch, images
    in dataset order within an epoch."""

    model: str
    size: int
    pe_policy: str
    grid: str
    canvas: int
    max_shift: int
    protocol: ShiftProtocol
    n_pairs: int
    agree: int
    correct_a: int  # top-1 hits of view A
    correct_b: int
    correct5: int  # top-5 hits over both views
    indices: torch.Tensor  # (n_pairs,) positions in the ImageSet
    epochs: torch.Tensor  # (n_pairs,)
    labels: torch.Tensor  # (n_pairs,)
    offsets: torch.Tensor  # (n_pairs, 4) y_a, x_a, y_b, x_b
    top5_a: torch.Tensor  # (n_pairs, k) class indices, best first
    top5_b: torch.Tensor
    duration_s: float
    batch_size: int
    oom_retries: int

    @property
    def consistency_pct(self) -> float:
        return 100.0 * self.agree / self.n_pairs if self.n_pairs else float("nan")

    @property
    def top1_a_pct(self) -> float:
        return 100.0 * self.correct_a / self.n_pairs if self.n_pairs else float("nan")

    @property
    def top1_b_pct(self) -> float:
        return 100.0 * self.correct_b / self.n_pairs if self.n_pairs else float("nan")


def shift_size(
    models: list[EvalModel],
    image_set: ImageSet,
    size: int,
    settings: EvalSettings,
    protocol: ShiftProtocol,
    progress: Progress | None = None,
) -> list[ShiftCell]:
    """Every model's consistency at ``size`` in one pass over ``image_set``; one ``ShiftCell`` per model.

    ``settings.crop_pct`` plays no part: the canvas is ``round(size * 256 / 224)`` by the protocol's definition.
    """
    groups: dict[str, list[EvalModel]] = {}
    for m in models:
        groups.setdefault(m.interpolation_for(settings.interpolation), []).append(m)
    if len(groups) > 1:  # each model's own interpolation (``weights``): one pass per interpolation
        done = {
            c.model: c for g in groups.values() for c in shift_size(g, image_set, size, settings, protocol, progress)
        }
        return [done[m.name] for m in models]
    progress = progress or Progress()
    max_shift = protocol.max_shift_at(size)
    # One module per model for this size: the model itself, or one timm built at this size (dropped after the pass).
    sized = [m.sizer.module_at(size, settings.pe) for m in models]
    modules = [module for module, _ in sized]
    policies = [policy for _, policy in sized]
    rebuilt = any(module is not m.module for module, m in zip(modules, models, strict=True))
    canvas = protocol.canvas_size(size)
    # The canvas is the eval transform at crop ratio 1: shorter side to `canvas`, centre crop `canvas`.
    transform = EvalTransform(canvas, 1.0, models[0].interpolation_for(settings.interpolation))
    loader = make_loader(
        EvalDataset(image_set, transform), settings.batch_size, settings.workers, settings.device.type == "cuda"
    )
    n_img, n_ep = len(image_set), protocol.epochs
    n_pairs = n_img * n_ep
    k = [settings.k_for(m) for m in models]
    pred_dtype = [torch.int16 if m.num_classes <= 32767 else torch.int32 for m in models]
    top5_a = [torch.empty((n_pairs, kk), dtype=dt) for kk, dt in zip(k, pred_dtype, strict=True)]
    top5_b = [torch.empty((n_pairs, kk), dtype=dt) for kk, dt in zip(k, pred_dtype, strict=True)]
    labels = torch.empty(n_pairs, dtype=torch.int64)
    indices = torch.empty(n_pairs, dtype=torch.int64)
    epochs = torch.arange(n_ep, dtype=torch.int64).repeat_interleave(n_img)
    offsets = torch.empty((n_pairs, 4), dtype=torch.int64)
    agree = [0] * len(models)
    correct_a = [0] * len(models)
    correct_b = [0] * len(models)
    correct5 = [0] * len(models)
    runners = settings.runners(modules, models)
    non_blocking = settings.device.type == "cuda"
    seen = 0
    progress.start(f"{size}px shift x{n_ep} · {', '.join(m.name for m in models)}", n_img)
    t0 = time.perf_counter()
    try:
        with torch.inference_mode():
            for images, target, idx in loader:
                interrupts.check()
                b = images.shape[0]
                images = images.to(settings.device, non_blocking=non_blocking)
                target_dev = target.to(settings.device, non_blocking=non_blocking).view(-1, 1)
                for e in range(n_ep):
                    at = slice(e * n_img + seen, e * n_img + seen + b)
                    off = pair_offsets(protocol.seed, e, idx, max_shift)
                    view_a, view_b = shifted_views(images, off, size, protocol.mode)
                    offsets[at], labels[at], indices[at] = off, target, idx
                    normalized: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
                    for j, m in enumerate(models):
                        key = (m.mean, m.std)
                        if key not in normalized:
                            normalized[key] = (
                                normalize_batch(view_a, m.mean, m.std),
                                normalize_batch(view_b, m.mean, m.std),
                            )
                        x_a, x_b = normalized[key]
                        # Two calls of the same shape, not one of 2B: a view pair that is the same image (no
                        # shift) then runs through identical kernels and agrees exactly.
                        pred_a = runners[j].topk(x_a, k[j])
                        pred_b = runners[j].topk(x_b, k[j])
                        hit_a, hit_b = pred_a.eq(target_dev), pred_b.eq(target_dev)
                        agree[j] += int(pred_a[:, 0].eq(pred_b[:, 0]).sum())
                        correct_a[j] += int(hit_a[:, 0].sum())
                        correct_b[j] += int(hit_b[:, 0].sum())
                        correct5[j] += int(hit_a.any(dim=1).sum()) + int(hit_b.any(dim=1).sum())
                        top5_a[j][at] = pred_a.to("cpu", pred_dtype[j])
                        top5_b[j][at] = pred_b.to("cpu", pred_dtype[j])
                seen += b
                progress.advance(b)
    except CpvtEvalError as e:
        raise _clean_worker_error(e) from None
    finally:
        progress.finish()
    if seen != n_img:
        raise DataError(f"the data pass at {size}px saw {seen} of {n_img} images")
    duration = time.perf_counter() - t0
    grids = [grid_of(module) for module in modules]
    del sized, modules
    if rebuilt:
        release_cached_memory(settings.device)
    out = []
    for j, m in enumerate(models):
        grid = grids[j]
        out.append(
            ShiftCell(
                model=m.name,
                size=size,
                pe_policy=policies[j],
                grid=f"{grid[0]}x{grid[1]}" if grid else "",
                canvas=canvas,
                max_shift=max_shift,
                protocol=protocol,
                n_pairs=n_pairs,
                agree=agree[j],
                correct_a=correct_a[j],
                correct_b=correct_b[j],
                correct5=correct5[j],
                indices=indices.clone(),
                epochs=epochs.clone(),
                labels=labels.clone(),
                offsets=offsets.clone(),
                top5_a=top5_a[j],
                top5_b=top5_b[j],
                duration_s=duration,
                batch_size=runners[j].chunk,
                oom_retries=runners[j].retries,
            )
        )
    return out


def shift_sweep(
    models: list[EvalModel],
    image_set: ImageSet,
    sizes,
    settings: EvalSettings,
    protocol: ShiftProtocol,
    progress: Progress | None = None,
    todo=None,
):
    """Yield every (model, size) ``ShiftCell``, size by size; ``todo(model, size)`` can skip finished cells."""
    for size in sizes:
        active = [m for m in models if todo is None or todo(m, size)]
        if active:
            yield from shift_size(active, image_set, size, settings, protocol, progress)
