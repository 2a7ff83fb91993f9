"""Datasets on disk, canonical ImageNet-1k labels, the per-size eval transform and the loaders.

Labels are always the canonical ImageNet-1k index (sorted WordNet ids: 0 = n01440764, 999 = n15075141),
never the order of folders found on disk, so a subset of class folders still gets the right indices.

``labels`` (canonical labels, label files), ``layouts`` (the on-disk layouts, subsets, fingerprint), ``images``
(decoding, bad files) and ``real`` (ImageNet-ReaL) hold the parts; this module keeps the transform and loaders
and re-exports the rest, so ``from cpvt_eval.data import ...`` is the one import path.
"""

from __future__ import annotations

import math
import os

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from ..errors import DataError
from .images import BAD_IMAGE_POLICIES, ImageCheck, apply_bad_image_policy, check_image, load_rgb, scan_images
from .labels import (
    FULL_VAL_CLASSES,
    FULL_VAL_IMAGES,
    LabelFile,
    imagenet_synsets,
    imagenet_val_wnids,
    read_label_file,
    synset_to_index,
    val_number,
)
from .layouts import (
    IMAGE_EXTENSIONS,
    LAYOUTS,
    ImageSet,
    Sample,
    detect_layout,
    fingerprint,
    open_dataset,
    scan,
    scan_flat,
    scan_imagefolder,
    scan_imagenetv2,
    scan_manifest,
    select_classes,
    stratified_subset,
)
from .real import RealLabels, RealScore, load_real_labels, real_score

__all__ = [
    "BAD_IMAGE_POLICIES",
    "CROP_MODES",
    "FULL_VAL_CLASSES",
    "FULL_VAL_IMAGES",
    "IMAGE_EXTENSIONS",
    "INTERPOLATIONS",
    "LAYOUTS",
    "EvalDataset",
    "EvalTransform",
    "ImageCheck",
    "ImageSet",
    "LabelFile",
    "RealLabels",
    "RealScore",
    "Sample",
    "apply_bad_image_policy",
    "check_image",
    "default_workers",
    "detect_layout",
    "fingerprint",
    "imagenet_synsets",
    "imagenet_val_wnids",
    "load_real_labels",
    "load_rgb",
    "make_loader",
    "normalize_batch",
    "open_dataset",
    "read_label_file",
    "real_score",
    "resize_size",
    "scan",
    "scan_flat",
    "scan_imagefolder",
    "scan_imagenetv2",
    "scan_images",
    "scan_manifest",
    "select_classes",
    "stratified_subset",
    "synset_to_index",
    "val_number",
]

INTERPOLATIONS = {
    "bicubic": InterpolationMode.BICUBIC,
    "bilinear": InterpolationMode.BILINEAR,
    "nearest": InterpolationMode.NEAREST,
}


def resize_size(size: int, crop_pct: float) -> int:
    """Shorter-side resize before the centre crop: ``floor(size / crop_pct)`` (224 -> 256 at 0.875)."""
    if not 0 < crop_pct <= 1:
        raise DataError(f"--crop-pct must be in (0, 1], got {crop_pct}")
    return int(math.floor(size / crop_pct))


CROP_MODES = ("center", "squash")


class EvalTransform:
    """PIL image -> uint8 ``(3, size, size)``: shorter side to ``floor(size / crop_pct)``, centre crop.

    The same maths as timm's and DeiT's eval transform (PIL resize, then crop); the float conversion and the
    normalisation happen on the device (``normalize_batch``), which gives the same values as ``ToTensor`` +
    ``Normalize`` because the operations run in the same order.

    ``crop_mode="squash"`` resizes the whole image to ``size x size`` instead (aspect ratio not kept, nothing cut
    off, ``crop_pct`` unused): the official CvT evaluation of its 384 models.
    """

    def __init__(self, size: int, crop_pct: float = 0.875, interpolation: str = "bicubic", crop_mode: str = "center"):
        if interpolation not in INTERPOLATIONS:
            raise DataError(f"unknown interpolation {interpolation!r}; choose one of {', '.join(INTERPOLATIONS)}")
        if crop_mode not in CROP_MODES:
            raise DataError(f"unknown crop mode {crop_mode!r}; choose one of {', '.join(CROP_MODES)}")
        self.size = size
        self.crop_pct = crop_pct
        self.interpolation = interpolation
        self.crop_mode = crop_mode
        self.resize_size = resize_size(size, crop_pct) if crop_mode == "center" else size

    def __call__(self, img: Image.Image) -> torch.Tensor:
        mode = INTERPOLATIONS[self.interpolation]
        if self.crop_mode == "squash":
            return TF.pil_to_tensor(TF.resize(img, [self.size, self.size], interpolation=mode))
        img = TF.resize(img, self.resize_size, interpolation=mode)
        img = TF.center_crop(img, [self.size, self.size])
        return TF.pil_to_tensor(img)


class EvalDataset(Dataset):
    """``(uint8 image, label, sample index)`` for every sample of an ``ImageSet`` at one size."""

    def __init__(self, image_set: ImageSet, transform: EvalTransform):
        self.image_set = image_set
        self.transform = transform

    def __len__(self) -> int:
        return len(self.image_set.samples)

    def __getitem__(self, i: int):
        s = self.image_set.samples[i]
        draft = self.transform.resize_size if self.image_set.decode_draft else None
        img = load_rgb(self.image_set.root / s.relpath, draft)
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
