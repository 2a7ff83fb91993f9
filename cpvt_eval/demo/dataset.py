"""A procedural image world for the offline demo: ten classes rendered from a seed, saved as JPEGs.

Why this design. The paper's effect is about position: a learned absolute PE is tied to the grid it was trained
on, a PEG infers position from local context (and the zero padding at the frame's edge) on any grid. So the world
is built so that position is *the* thing to learn, and everything else is cheap:

* **ten classes, five colour pairs x which colour is on the left**. The left part of the frame is filled with
  shapes of one colour, the right part with shapes of the other, an empty vertical band between them. The two
  classes of a pair ("red-left-of-blue", "blue-left-of-red") contain the same parts in the same amounts: only
  where they are differs, so a model without position (its tokens are an unordered set) is at 50% within a pair.
  Colour names the parts, so recognising them costs a model nothing; each hue is in two pairs, so no single
  colour names a class. No horizontal flip in training, for the same reason.
* **no position cue inside a patch**: every shape is left-right symmetric, one shape kind per image for both
  colours, and the band (10-16 px, 1-1.6 patches at 56 px) is wider than a patch, so no patch shows both colours
  and no patch shows which side of the band it is on.
* **the same evidence in every window, at one random scale**: each half is a jittered lattice of shapes of one
  random size that runs past the frame's edges, so a crop (a training RandomResizedCrop, or the eval centre crop
  at any size) shows the same kind of pattern, only at another scale in tokens; there is no single object whose
  whole view is new at a larger size.
* **little else**: a low-saturation grey gradient background (no hue of the palette hides in it) and pixel
  noise; sizes, spacings, positions, the shape kind and brightness are random.

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
from ..models.toys import CLASSES, PAIRS
from ..runtime import cache_dir

SHAPES = ("disk", "square", "triangle", "cross", "ring")  # each one left-right symmetric
# the parts of a motif are named by their colour: five hues, each in two pairs, so one colour never names a class
HUES = {"red": (220, 40, 40), "yellow": (230, 200, 30), "green": (40, 170, 60), "blue": (40, 80, 220),
        "magenta": (200, 50, 200)}  # fmt: skip
# PAIRS (class 2k: colour a left of colour b; class 2k + 1: b left of a) and the ten CLASSES they make are the toys'
# label space, defined with the toys' shipped weights in models/toys.py

ORIGINAL_SHORT_SIDE = 128  # 2.3x the native 56 px, as ~500 px ImageNet originals relate to 224
LONG_SIDES = (128, 144, 160, 171)  # 1:1 to 4:3, the common ImageNet aspect ratios
JPEG_QUALITY = 90
DATASET_VERSION = 2  # bump when the rendering changes: cached copies of another version are not reused
SPLITS = {"val": 0, "train": 1}

# the world's knobs, in original pixels (x 0.44 at 56 px, x 1.0 at 128 px) or in units of the shape radius u
UNIT = (5.0, 9.0)  # shape radius u
BAND = (10.0, 16.0)  # width of the empty band between the two halves, px: 1-1.6 patches at 56 px, 2.5-4 tokens at 128
SPACING = (1.2, 2.0)  # edge-to-edge gap between neighbouring shapes of a half, in u
JITTER = 0.25  # per-shape random shift, in u
SPLIT_JITTER = 0.06  # the band's centre moves by up to this fraction of the width around the middle


def _shape_mask(kind: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Soft (one pixel wide edge) mask of a shape of radius ``r`` centred at offset 0 (``dy`` grows downwards)."""
    if kind == "disk":
        d = r - np.hypot(dx, dy)
    elif kind == "square":
        d = 0.85 * r - np.maximum(np.abs(dx), np.abs(dy))
    elif kind == "triangle":  # pointing up, circumradius 1.15 r
        R = 1.15 * r
        n = (math.sqrt(3) / 2, 0.5)
        d = np.minimum(R / 2 - dy, R / 2 - (n[0] * np.abs(dx) - n[1] * dy))
    elif kind == "cross":
        arm = 0.32 * r
        d = np.maximum(np.minimum(arm - np.abs(dx), r - np.abs(dy)), np.minimum(arm - np.abs(dy), r - np.abs(dx)))
    elif kind == "ring":
        dist = np.hypot(dx, dy)
        d = np.minimum(r - dist, dist - 0.5 * r)
    else:
        raise ValueError(kind)
    return np.clip(d + 0.5, 0.0, 1.0)


def _paint_shape(canvas: np.ndarray, kind: str, cx: float, cy: float, r: float, colour: np.ndarray) -> None:
    h, w = canvas.shape[:2]
    x0, x1 = max(0, int(cx - 1.3 * r) - 1), min(w, int(cx + 1.3 * r) + 2)
    y0, y1 = max(0, int(cy - 1.3 * r) - 1), min(h, int(cy + 1.3 * r) + 2)
    if x0 >= x1 or y0 >= y1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    m = _shape_mask(kind, xx - cx, yy - cy, r)[..., None]
    patch = canvas[y0:y1, x0:x1]
    patch *= 1.0 - m
    patch += m * colour


def render(class_index: int, seed: int, index: int, split: str = "val") -> Image.Image:
    """One image of class ``class_index``, fully determined by ``(seed, split, class_index, index)``."""
    if not 0 <= class_index < len(CLASSES):
        raise DataError(f"demo class index {class_index} is outside 0..{len(CLASSES) - 1}")
    rng = np.random.default_rng([seed, SPLITS[split], class_index, index])
    a, b = PAIRS[class_index // 2]
    left, right = (a, b) if class_index % 2 == 0 else (b, a)
    long_side = int(rng.choice(LONG_SIDES))
    w, h = (long_side, ORIGINAL_SHORT_SIDE) if rng.random() < 0.7 else (ORIGINAL_SHORT_SIDE, long_side)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)

    # background: a gradient between two greys (low saturation, so no hue of the palette hides in it)
    g0, g1 = rng.uniform(30, 225, 2)
    tint = rng.uniform(-12, 12, (2, 3))
    c0, c1 = g0 + tint[0], g1 + tint[1]
    angle = rng.uniform(0, 2 * math.pi)
    t = (xx * math.cos(angle) + yy * math.sin(angle)) / max(w, h)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    canvas = c0 * (1 - t[..., None]) + c1 * t[..., None]
    # the parts: the pair's hues with a random brightness, one shape for the whole image
    colour = {name: np.array(HUES[name], dtype=np.float64) * rng.uniform(0.75, 1.1) for name in (left, right)}
    shape = SHAPES[int(rng.integers(len(SHAPES)))]

    # the left colour's shapes fill the frame left of a vertical empty band, the right colour's shapes fill it right
    # of the band: two jittered lattices at one random scale that run past the frame's edges
    u = rng.uniform(*UNIT)
    band = rng.uniform(*BAND)
    split = w / 2 + rng.uniform(-SPLIT_JITTER, SPLIT_JITTER) * w
    period_x, period_y = 2 * u + u * rng.uniform(*SPACING), 2 * u + u * rng.uniform(*SPACING)
    for name, x_from, x_to in ((left, -period_x, split - band / 2), (right, split + band / 2, w + period_x)):
        y = -rng.uniform(0, period_y)
        while y < h + period_y:
            x = x_to - u - rng.uniform(0, period_x) if name == left else x_from + u + rng.uniform(0, period_x)
            step = -period_x if name == left else period_x
            while (x > x_from) if name == left else (x < x_to):
                cx = x + rng.uniform(-JITTER, JITTER) * u
                # no shape crosses into the band: its edge stays on its own side
                cx = min(cx, split - band / 2 - u) if name == left else max(cx, split + band / 2 + u)
                _paint_shape(canvas, shape, cx, y + rng.uniform(-JITTER, JITTER) * u, u, colour[name])
                x += step
            y += period_y

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
