"""A procedural image world for the offline demo: ten classes rendered from a seed, saved as JPEGs.

Why this design. The paper's effect is about position: a learned absolute PE is tied to the grid it was trained
on, a PEG infers position from local context on any grid. So the classes are built so that a model *must* use
position and fine detail, and cannot win on colour or on a bag of patches:

* **layout** (5 ways): a disk and a square, arranged disk-above-square, square-above-disk, disk-left-of-square,
  square-left-of-disk, or disk-inside-square. The two "above" classes (and the two "left" ones) contain the same
  parts and differ only in where they are, so a model without any position encoding cannot tell them apart
  (its tokens are an unordered set); no horizontal flip is allowed in training for the same reason.
* **fine detail** (2 ways): both objects are filled with stripes or with a checkerboard of a period of 8-11 px
  at the original resolution, i.e. 3.5-5 px at the native 56 px eval size: near the limit of a 4 px patch, so a
  larger eval size shows the texture more clearly (as ImageNet objects show more detail at 384 than at 224).
* **clutter**: a textured, noisy background and small distractor shapes (solid, or dotted: a third texture that
  belongs to no class) around the objects; colours, sizes, positions, texture angle and period are random.

Images are rendered at an "original" resolution whose shorter side is 128 px (2.3x the native 56 px, as
ImageNet's ~500 px originals relate to 224) with ImageNet-like aspect ratios, saved as JPEG, and go through the
standard eval transform, exactly like ImageNet images. Everything is decided by ``numpy.random.default_rng``
seeded with ``(seed, split, class, index)``: the same seed gives the same bytes.
"""

from __future__ import annotations

import io
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError
from ..runtime import cache_dir

LAYOUTS = ("disk-above-square", "square-above-disk", "disk-left-of-square", "square-left-of-disk", "disk-in-square")
TEXTURES = ("stripes", "checker")
CLASSES: tuple[str, ...] = tuple(f"{layout}-{texture}" for texture in TEXTURES for layout in LAYOUTS)

ORIGINAL_SHORT_SIDE = 128  # 2.3x the native 56 px, as ~500 px ImageNet originals relate to 224
LONG_SIDES = (128, 144, 160, 171)  # 1:1 to 4:3, the common ImageNet aspect ratios
JPEG_QUALITY = 90
DATASET_VERSION = 1  # bump when the rendering changes: cached copies of another version are not reused
SPLITS = {"val": 0, "train": 1}


def _contrasting(rng: np.random.Generator, base: np.ndarray, min_diff: float) -> np.ndarray:
    """A random colour whose luma differs from ``base`` by at least ``min_diff`` (so textures stay visible)."""
    luma = np.array([0.299, 0.587, 0.114])
    for _ in range(64):
        c = rng.uniform(0, 255, 3)
        if abs(float((c - base) @ luma)) >= min_diff:
            return c
    return 255.0 - base


def _texture(kind: str, xx: np.ndarray, yy: np.ndarray, period: float, angle: float, phase: float) -> np.ndarray:
    """A [0, 1] pattern with soft edges (about one pixel wide, so it does not alias before the JPEG)."""
    u = xx * math.cos(angle) + yy * math.sin(angle)
    v = -xx * math.sin(angle) + yy * math.cos(angle)
    su = np.sin(2 * math.pi * u / period + phase)
    if kind == "stripes":
        s = su
    elif kind == "checker":
        s = su * np.sin(2 * math.pi * v / period + phase)
        s = np.sign(s) * np.sqrt(np.abs(s))  # squares, not blobs
    elif kind == "dots":
        s = (su + np.sin(2 * math.pi * v / period + phase)) / 2 - 0.4
    else:
        raise ValueError(kind)
    return np.clip(0.5 + 1.6 * s, 0.0, 1.0)


def _disk(xx, yy, cx, cy, r):
    return np.clip(r - np.hypot(xx - cx, yy - cy) + 0.5, 0.0, 1.0)


def _square(xx, yy, cx, cy, half):
    return np.clip(half - np.maximum(np.abs(xx - cx), np.abs(yy - cy)) + 0.5, 0.0, 1.0)


def _paint(canvas: np.ndarray, mask: np.ndarray, colour: np.ndarray) -> None:
    m = mask[..., None]
    canvas *= 1.0 - m
    canvas += m * colour


def _place_pair(rng: np.random.Generator, layout: str, cx: float, cy: float):
    """Centres and sizes of the disk and the square for ``layout`` (in original pixels)."""
    if layout == "disk-in-square":
        half = rng.uniform(30, 40)
        r = half * rng.uniform(0.45, 0.6)
        sx, sy = cx + rng.uniform(-8, 8), cy + rng.uniform(-8, 8)
        dx, dy = sx + rng.uniform(-0.2, 0.2) * half, sy + rng.uniform(-0.2, 0.2) * half
        return (dx, dy, r), (sx, sy, half)
    r = rng.uniform(16, 22)
    half = rng.uniform(14, 19)
    gap = rng.uniform(4, 12)
    along = (r + half + gap) / 2  # distance of each centre from the pair's middle
    across = rng.uniform(-6, 6, 2)
    first_is_disk = layout.startswith("disk")
    a, b = (-along, along)  # the first object comes first (above / left)
    if "above" in layout:
        first, second = (cx + across[0], cy + a), (cx + across[1], cy + b)
    else:
        first, second = (cx + a, cy + across[0]), (cx + b, cy + across[1])
    disk_c, square_c = (first, second) if first_is_disk else (second, first)
    return (*disk_c, r), (*square_c, half)


def render(class_index: int, seed: int, index: int, split: str = "val") -> Image.Image:
    """One image of class ``class_index``, fully determined by ``(seed, split, class_index, index)``."""
    if not 0 <= class_index < len(CLASSES):
        raise DataError(f"demo class index {class_index} is outside 0..{len(CLASSES) - 1}")
    rng = np.random.default_rng([seed, SPLITS[split], class_index, index])
    layout = LAYOUTS[class_index % len(LAYOUTS)]
    texture = TEXTURES[class_index // len(LAYOUTS)]
    long_side = int(rng.choice(LONG_SIDES))
    w, h = (long_side, ORIGINAL_SHORT_SIDE) if rng.random() < 0.7 else (ORIGINAL_SHORT_SIDE, long_side)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)

    # background: a gradient between two colours, a faint texture, pixel noise
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = (xx * math.cos(rng.uniform(0, 2 * math.pi)) + yy * math.sin(rng.uniform(0, 2 * math.pi))) / max(w, h)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    canvas = c0 * (1 - t[..., None]) + c1 * t[..., None]
    faint = _texture("stripes", xx, yy, rng.uniform(12, 30), rng.uniform(0, math.pi), rng.uniform(0, 6.3))
    canvas += (faint[..., None] - 0.5) * rng.uniform(0, 20)

    # distractors: small solid or dotted shapes anywhere (the objects are painted over them)
    for _ in range(int(rng.integers(3, 9))):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        size = rng.uniform(3, 7)
        mask = _disk(xx, yy, x, y, size) if rng.random() < 0.5 else _square(xx, yy, x, y, size * 0.85)
        colour = rng.uniform(0, 255, 3)
        if rng.random() < 0.4:
            dots = _texture("dots", xx, yy, rng.uniform(5, 8), rng.uniform(0, math.pi), rng.uniform(0, 6.3))
            other = _contrasting(rng, colour, 60)
            _paint(canvas, mask, colour)
            _paint(canvas, mask * dots, other)
        else:
            _paint(canvas, mask, colour)

    # the two objects, in the middle of the image (the eval centre crop keeps 87.5% of the shorter side)
    cx, cy = w / 2 + rng.uniform(-6, 6), h / 2 + rng.uniform(-6, 6)
    (dx, dy, r), (sx, sy, half) = _place_pair(rng, layout, cx, cy)
    period = rng.uniform(8, 11)
    for mask in (_square(xx, yy, sx, sy, half), _disk(xx, yy, dx, dy, r)):  # the disk may sit on the square
        fg = rng.uniform(0, 255, 3)
        bg = _contrasting(rng, fg, 70)
        pattern = _texture(texture, xx, yy, period, rng.uniform(0, math.pi), rng.uniform(0, 6.3))
        fill = bg * (1 - pattern[..., None]) + fg * pattern[..., None]
        m = mask[..., None]
        canvas = canvas * (1 - m) + fill * m

    canvas += rng.normal(0, 5, canvas.shape)
    return Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8), "RGB")


def render_jpeg(class_index: int, seed: int, index: int, split: str = "val") -> bytes:
    """The JPEG bytes of ``render(...)`` (baseline, quality 90, no metadata: the same inputs give the same bytes)."""
    buf = io.BytesIO()
    render(class_index, seed, index, split).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def iter_images(per_class: int, seed: int, split: str = "val") -> Iterator[tuple[int, int, bytes]]:
    """``(class_index, index, jpeg_bytes)`` for ``per_class`` images of every class."""
    for c in range(len(CLASSES)):
        for i in range(per_class):
            yield c, i, render_jpeg(c, seed, i, split)


def dataset_dir(per_class: int, seed: int, root: Path | None = None, split: str = "val") -> Path:
    root = cache_dir() if root is None else Path(root)
    tag = "" if split == "val" else f"-{split}"
    return root / f"demo-v{DATASET_VERSION}-seed{seed}{tag}-{per_class}x{len(CLASSES)}"


def materialize(per_class: int = 50, seed: int = 0, root: Path | None = None, split: str = "val") -> tuple[Path, bool]:
    """Write a split (the demo evaluates ``val``) as an ImageFolder (one folder per class) once; reuse it afterwards.

    The folder is built in a temporary sibling and renamed into place when complete, so an interrupted run never
    leaves a half-written dataset that a later run would trust.

    Returns:
        ``(directory, created)``: created is False when a complete copy was already there.
    """
    if per_class <= 0:
        raise DataError(f"images per class must be positive, got {per_class}")
    if split not in SPLITS:
        raise DataError(f"unknown demo split {split!r}; choose one of {', '.join(SPLITS)}")
    target = dataset_dir(per_class, seed, root, split)
    if (target / "COMPLETE").is_file():
        return target, False
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    except OSError as e:
        raise DataError(f"cannot create the demo dataset under {target.parent}: {e.strerror or e}") from None
    try:
        for name in CLASSES:
            (tmp / name).mkdir()
        for c, i, data in iter_images(per_class, seed, split):
            (tmp / CLASSES[c] / f"{CLASSES[c]}_{i:04d}.jpg").write_bytes(data)
        (tmp / "COMPLETE").write_text(f"version {DATASET_VERSION}\nseed {seed}\nsplit {split}\nper_class {per_class}\n")
        if target.exists():  # an incomplete copy from an interrupted run
            shutil.rmtree(target)
        os.replace(tmp, target)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"cannot write the demo dataset to {target}: {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target, True
