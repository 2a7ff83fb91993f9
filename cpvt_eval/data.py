"""Datasets on disk, canonical ImageNet-1k labels, the per-size eval transform and the loaders.

Labels are always the canonical ImageNet-1k index (sorted WordNet ids: 0 = n01440764, 999 = n15075141),
never the order of folders found on disk, so a subset of class folders still gets the right indices.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from .errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
INTERPOLATIONS = {
    "bicubic": InterpolationMode.BICUBIC,
    "bilinear": InterpolationMode.BILINEAR,
    "nearest": InterpolationMode.NEAREST,
}
FULL_VAL_IMAGES = 50_000
FULL_VAL_CLASSES = 1000


@lru_cache(maxsize=1)
def imagenet_val_wnids() -> tuple[str, ...]:
    """WordNet id of ``ILSVRC2012_val_00000001.JPEG`` ... ``_00050000.JPEG``, in file order."""
    text = resources.files("cpvt_eval.resources").joinpath("imagenet_val_wnids.txt").read_text()
    return tuple(line.strip() for line in text.splitlines() if line.strip())


@lru_cache(maxsize=1)
def imagenet_synsets() -> tuple[str, ...]:
    """The 1000 ImageNet-1k WordNet ids in canonical (sorted) order: the class index is the position."""
    return tuple(sorted(set(imagenet_val_wnids())))


@lru_cache(maxsize=1)
def synset_to_index() -> dict[str, int]:
    return {wnid: i for i, wnid in enumerate(imagenet_synsets())}


@dataclass(frozen=True)
class Sample:
    """One image: path relative to the dataset root, canonical class index."""

    relpath: str
    label: int


@dataclass
class ImageSet:
    """An indexed dataset: its root, its samples in a fixed order, and where it came from."""

    root: Path
    samples: list[Sample]
    layout: str
    classes: tuple[str, ...]  # index -> class name (wnid for ImageNet)
    limit: int | None = None
    fingerprint: str = ""

    @property
    def is_full_imagenet_val(self) -> bool:
        if len(self.samples) != FULL_VAL_IMAGES:
            return False
        counts: dict[int, int] = {}
        for s in self.samples:
            counts[s.label] = counts.get(s.label, 0) + 1
        return len(counts) == FULL_VAL_CLASSES and all(c == 50 for c in counts.values())

    def __len__(self) -> int:
        return len(self.samples)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def scan_imagefolder(root: str | os.PathLike, classes: tuple[str, ...] | None = None) -> ImageSet:
    """Index an ImageFolder (one folder per class) with labels from the canonical class list.

    Args:
        root: the dataset directory.
        classes: the canonical class names in index order (default: the ImageNet-1k WordNet ids). A folder
            whose name is not among them is an error.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"data directory not found: {root}")
    if not root.is_dir():
        raise DataError(f"data path is not a directory: {root}")
    classes = classes or imagenet_synsets()
    index = {c: i for i, c in enumerate(classes)}
    folders = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not folders:
        raise DataError(f"no class folders in {root} (expected one folder per WordNet id, e.g. n01440764/)")
    unknown = [f for f in folders if f not in index]
    if unknown:
        more = f" (+{len(unknown) - 3} more)" if len(unknown) > 3 else ""
        raise DataError(f"folder {root / unknown[0]} is not an ImageNet-1k class (WordNet id){more}")
    samples = []
    for folder in folders:
        label = index[folder]
        for dirpath, _, files in os.walk(root / folder):
            for name in files:
                if _is_image(name):
                    rel = os.path.relpath(os.path.join(dirpath, name), root)
                    samples.append(Sample(rel.replace(os.sep, "/"), label))
    if not samples:
        raise DataError(f"no images found under {root}")
    samples.sort(key=lambda s: s.relpath)
    return ImageSet(root=root, samples=samples, layout="imagefolder", classes=tuple(classes))


def stratified_subset(samples: list[Sample], limit: int) -> list[Sample]:
    """The first ``limit`` samples of a round-robin over classes (each class in path order): deterministic and
    as balanced as ``limit`` allows. The result keeps the original order."""
    if limit <= 0:
        raise DataError(f"--limit must be positive, got {limit}")
    if limit >= len(samples):
        return list(samples)
    by_class: dict[int, list[int]] = {}
    for i, s in enumerate(samples):
        by_class.setdefault(s.label, []).append(i)
    chosen: list[int] = []
    queues = [by_class[k] for k in sorted(by_class)]
    depth = 0
    while len(chosen) < limit:
        for q in queues:
            if depth < len(q):
                chosen.append(q[depth])
                if len(chosen) == limit:
                    break
        depth += 1
    return [samples[i] for i in sorted(chosen)]


def fingerprint(image_set: ImageSet) -> str:
    """A short hash of the sorted relative paths, byte sizes and labels: the same files give the same value."""
    digest = hashlib.sha256()
    for s in sorted(image_set.samples, key=lambda s: s.relpath):
        size = (image_set.root / s.relpath).stat().st_size
        digest.update(f"{s.relpath}\t{size}\t{s.label}\n".encode())
    return digest.hexdigest()[:16]


def open_dataset(root: str | os.PathLike, limit: int | None = None) -> ImageSet:
    """Index ``root`` (ImageFolder of WordNet ids), apply ``--limit``, and fingerprint the result."""
    image_set = scan_imagefolder(root)
    if limit is not None:
        image_set.samples = stratified_subset(image_set.samples, limit)
        image_set.limit = limit
    image_set.fingerprint = fingerprint(image_set)
    return image_set


def resize_size(size: int, crop_pct: float) -> int:
    """Shorter-side resize before the centre crop: ``floor(size / crop_pct)`` (224 -> 256 at 0.875)."""
    if not 0 < crop_pct <= 1:
        raise DataError(f"--crop-pct must be in (0, 1], got {crop_pct}")
    return int(math.floor(size / crop_pct))


class EvalTransform:
    """PIL image -> uint8 ``(3, size, size)``: shorter side to ``floor(size / crop_pct)``, centre crop.

    The same maths as timm's and DeiT's eval transform (PIL resize, then crop); the float conversion and the
    normalisation happen on the device (``normalize_batch``), which gives the same values as ``ToTensor`` +
    ``Normalize`` because the operations run in the same order.
    """

    def __init__(self, size: int, crop_pct: float = 0.875, interpolation: str = "bicubic"):
        if interpolation not in INTERPOLATIONS:
            raise DataError(f"unknown interpolation {interpolation!r}; choose one of {', '.join(INTERPOLATIONS)}")
        self.size = size
        self.crop_pct = crop_pct
        self.interpolation = interpolation
        self.resize_size = resize_size(size, crop_pct)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        img = TF.resize(img, self.resize_size, interpolation=INTERPOLATIONS[self.interpolation])
        img = TF.center_crop(img, [self.size, self.size])
        return TF.pil_to_tensor(img)


def load_rgb(path: Path) -> Image.Image:
    """Decode an image to RGB the way the reference code does (``Image.open(...).convert('RGB')``)."""
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            img.load()
    except FileNotFoundError:
        raise DataError(f"image not found: {path}") from None
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
        raise DataError(f"cannot decode image {path}: {e}") from None
    return img.convert("RGB")


class EvalDataset(Dataset):
    """``(uint8 image, label, sample index)`` for every sample of an ``ImageSet`` at one size."""

    def __init__(self, image_set: ImageSet, transform: EvalTransform):
        self.image_set = image_set
        self.transform = transform

    def __len__(self) -> int:
        return len(self.image_set.samples)

    def __getitem__(self, i: int):
        s = self.image_set.samples[i]
        img = load_rgb(self.image_set.root / s.relpath)
        return self.transform(img), s.label, i


def default_workers(processes: int = 1) -> int:
    """Data workers sized to the cores this process may use, shared among ``processes`` on the same node."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(0, min(8, cores // max(1, processes)))


def make_loader(dataset: Dataset, batch_size: int, workers: int, pin_memory: bool = False) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=pin_memory,
        drop_last=False,
        persistent_workers=False,
    )


def normalize_batch(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 ``(B, 3, H, W)`` -> float normalised, in the order ``ToTensor`` + ``Normalize`` use."""
    x = images.float().div_(255.0)
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return x.sub_(mean_t).div_(std_t)
