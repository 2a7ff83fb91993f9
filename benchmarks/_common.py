"""Helpers shared by the benchmark scripts: a generated set of realistic JPEGs and small timing utilities."""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter


def realistic_image(seed: int, size: tuple[int, int] = (500, 375)) -> Image.Image:
    """A photo-like RGB image: smooth low-frequency structure, edges and fine texture, so that a JPEG of it
    decodes and resizes at the cost of a real ImageNet photo (~100 KB at quality 90 for 500x375)."""
    rng = np.random.default_rng(seed)
    w, h = size
    # low-frequency colour fields: coarse noise upsampled bicubically
    coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.float32)
    # a few hard-edged shapes (objects)
    img = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    arr = np.asarray(img, dtype=np.float32).copy()
    for _ in range(6):
        x0, y0 = rng.integers(0, w - 40), rng.integers(0, h - 40)
        x1, y1 = x0 + rng.integers(20, w // 2), y0 + rng.integers(20, h // 2)
        arr[y0:y1, x0:x1] = 0.5 * arr[y0:y1, x0:x1] + 0.5 * rng.integers(0, 256, size=(3,))
    # fine texture: blurred noise (natural images have most energy at low frequency, some at high)
    noise = rng.normal(0, 40, size=(h, w, 3)).astype(np.float32)
    noise_img = Image.fromarray((noise + 128).clip(0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.7))
    arr += np.asarray(noise_img, dtype=np.float32) - 128
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8))


def make_jpeg_imagefolder(root: Path, n_images: int, n_classes: int = 10, quality: int = 90, seed: int = 0) -> Path:
    """An ImageFolder of ``n_images`` realistic JPEGs under the first ``n_classes`` ImageNet WordNet ids.

    Reuses the folder when it already holds exactly these images (the file names encode the parameters).
    """
    from cpvt_eval.data import imagenet_synsets

    synsets = imagenet_synsets()
    root = Path(root)
    for i in range(n_images):
        folder = root / synsets[i % n_classes]
        path = folder / f"img_{seed}_{quality}_{i:05d}.JPEG"
        if path.exists():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        realistic_image(seed * 1_000_003 + i).save(path, quality=quality)
    return root


def dataset_stats(root: Path) -> dict:
    files = sorted(Path(root).rglob("*.JPEG"))
    sizes = [f.stat().st_size for f in files]
    with Image.open(files[0]) as im:
        dims = im.size
    return {"n": len(files), "mean_kb": statistics.mean(sizes) / 1024, "dims": dims}


def median(values) -> float:
    return statistics.median(values)


def spread(values) -> str:
    return f"{min(values):.2f}-{max(values):.2f}"


def sweep(models, image_set, sizes, settings, probe=None) -> list:
    """Every (model, size) cell of ``probe`` (accuracy by default), size by size, as the job's passes make them:
    one pass per size feeds every model; finished ``Cell``s (``counts``, ``arrays``)."""
    from cpvt_eval.engine import Work, run_pass
    from cpvt_eval.probes import make

    probe = probe or make("resolution")
    cells = []
    for size in sizes:
        work = [Work(probe, m, probe.accumulator(m, size, image_set, settings)) for m in models]
        infos = run_pass(work, image_set, size, settings)
        cells += [w.accumulator.finish(info) for w, info in zip(work, infos, strict=True)]
    return cells
