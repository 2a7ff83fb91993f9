"""Datasets on disk, canonical ImageNet-1k labels, the per-size eval transform and the loaders.

Labels are always the canonical ImageNet-1k index (sorted WordNet ids: 0 = n01440764, 999 = n15075141),
never the order of folders found on disk, so a subset of class folders still gets the right indices; a model with
classes of its own brings its label space, and class names are mapped onto it by name (``label_space``).

``labels`` (canonical labels, label files), ``label_space`` (a model's own classes), ``image_set`` (samples, the
indexed set, its fingerprint), ``layouts`` (layout detection, ``--classes``, ``--limit``), ``folder_layouts`` (the
folder layouts), ``stores`` (which store ``--data`` names; its parts: ``store_base``, ``store_patterns``, ``shards``
for WebDataset, ``parquet_arrow`` for Hugging Face files, ``store_reads`` for their bytes), ``images`` (decoding, bad
files), ``subsets`` (label subsets such as ImageNet-A/-R, test-set names), ``real`` (ImageNet-ReaL) and ``loader``
(the one maker of loaders: workers that end with the run) hold the parts; this module keeps the transform and
datasets and re-exports the rest, so ``from cpvt_eval.data import ...`` is the one import path.
"""

from __future__ import annotations

import math
import os

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from ..errors import DataError
from .folder_layouts import scan_flat, scan_imagefolder, scan_imagenetv2, scan_manifest, scan_unlabelled
from .image_set import IMAGE_EXTENSIONS, LAYOUTS, STORE_LAYOUTS, ImageSet, Sample, fingerprint
from .images import (
    BAD_IMAGE_POLICIES,
    ImageCheck,
    apply_bad_image_policy,
    check_image,
    check_sample,
    decode_rgb,
    load_rgb,
    load_sample,
    scan_images,
)
from .label_space import IMAGENET_1K, LabelSpace, from_names, imagenet_1k, read_class_map
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
from .layouts import detect_layout, open_dataset, scan, select_classes, stratified_subset
from .loader import make_loader
from .real import RealLabels, RealScore, load_real_labels, real_hits, real_score
from .store_base import StoreSpec
from .store_patterns import expand_braces
from .stores import resolve_store
from .subsets import LABEL_SUBSETS, LabelSubset, apply_label_subset, detect_test_set, load_label_subset

__all__ = [
    "BAD_IMAGE_POLICIES",
    "IMAGENET_1K",
    "CROP_MODES",
    "FULL_VAL_CLASSES",
    "FULL_VAL_IMAGES",
    "IMAGE_EXTENSIONS",
    "INTERPOLATIONS",
    "LABEL_SUBSETS",
    "LAYOUTS",
    "STORE_LAYOUTS",
    "EvalDataset",
    "EvalTransform",
    "ImageCheck",
    "ImageSet",
    "LabelFile",
    "LabelSpace",
    "LabelSubset",
    "RealLabels",
    "RealScore",
    "Sample",
    "StoreSpec",
    "apply_bad_image_policy",
    "apply_label_subset",
    "check_image",
    "check_sample",
    "decode_rgb",
    "default_workers",
    "detect_layout",
    "detect_test_set",
    "expand_braces",
    "fingerprint",
    "from_names",
    "imagenet_1k",
    "imagenet_synsets",
    "imagenet_val_wnids",
    "load_label_subset",
    "load_real_labels",
    "load_rgb",
    "load_sample",
    "make_loader",
    "normalize_batch",
    "open_dataset",
    "read_class_map",
    "read_label_file",
    "real_hits",
    "real_score",
    "resolve_store",
    "resize_size",
    "scan",
    "scan_flat",
    "scan_imagefolder",
    "scan_imagenetv2",
    "scan_images",
    "scan_manifest",
    "scan_unlabelled",
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


# timm's inference crop modes under timm's names (``timm.data.create_transform(crop_mode=...)``), and ``full``.
CROP_MODES = ("center", "squash", "border", "full")


class EvalTransform:
    """PIL image -> uint8 ``(3, size, size)``, by crop mode (timm's meaning of each name):

    * ``center`` (the default, the DeiT/CPVT/timm eval transform): shorter side to ``floor(size / crop_pct)``,
      centre crop ``size``;
    * ``squash``: both sides to ``floor(size / crop_pct)`` (aspect ratio not kept), centre crop ``size``; nothing is
      cut off at ``crop_pct`` 1;
    * ``border``: the longer side to ``floor(size / crop_pct)`` (aspect ratio kept), then centre crop, padding the
      short side with ``fill`` (timm fills with the model's mean colour, ``round(255 * mean)``);
    * ``full``: the whole image resized to ``size x size``, ``crop_pct`` unused (the official CvT evaluation of its
      384 models; the same pixels as ``squash`` at ``crop_pct`` 1).

    The float conversion and the normalisation happen on the device (``normalize_batch``), which gives the same
    values as ``ToTensor`` + ``Normalize`` because the operations run in the same order.
    """

    def __init__(
        self,
        size: int,
        crop_pct: float = 0.875,
        interpolation: str = "bicubic",
        crop_mode: str = "center",
        fill: tuple[int, int, int] = (0, 0, 0),
    ):
        if interpolation not in INTERPOLATIONS:
            raise DataError(f"unknown interpolation {interpolation!r}; choose one of {', '.join(INTERPOLATIONS)}")
        if crop_mode not in CROP_MODES:
            raise DataError(f"unknown crop mode {crop_mode!r}; choose one of {', '.join(CROP_MODES)}")
        self.size = size
        self.crop_pct = crop_pct
        self.interpolation = interpolation
        self.crop_mode = crop_mode
        self.fill = tuple(int(v) for v in fill)
        self.resize_size = size if crop_mode == "full" else resize_size(size, crop_pct)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        mode = INTERPOLATIONS[self.interpolation]
        size, scale = self.size, self.resize_size
        if self.crop_mode == "full":
            return TF.pil_to_tensor(TF.resize(img, [size, size], interpolation=mode))
        if self.crop_mode == "squash":
            img = TF.resize(img, [scale, scale], interpolation=mode)
        elif self.crop_mode == "border":
            w, h = img.size
            ratio = max(h / scale, w / scale)
            img = TF.resize(img, [round(h / ratio), round(w / ratio)], interpolation=mode)
            w, h = img.size
            if w < size or h < size:
                left, top = max(0, (size - w) // 2), max(0, (size - h) // 2)
                right, bottom = max(0, (size - w + 1) // 2), max(0, (size - h + 1) // 2)
                img = TF.pad(img, [left, top, right, bottom], fill=self.fill)
        else:
            img = TF.resize(img, scale, interpolation=mode)
        img = TF.center_crop(img, [size, size])
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
        img = load_sample(self.image_set, s, draft)
        return self.transform(img), s.label, i


def default_workers(processes: int = 1) -> int:
    """Data workers sized to the cores this process may use, shared among ``processes`` on the same node."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(0, min(8, cores // max(1, processes)))


def normalize_batch(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 ``(B, 3, H, W)`` -> float normalised, in the order ``ToTensor`` + ``Normalize`` use."""
    x = images.float().div_(255.0)
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return x.sub_(mean_t).div_(std_t)
