"""ImageNet-ReaL ("Are we done with ImageNet?", Beyer et al. 2020): reassessed multi-label validation labels.

The labels file is a JSON list of 50,000 lists of canonical class indices, entry i for
``ILSVRC2012_val_{i+1:08d}.JPEG``; timm ships it as ``timm/data/_info/imagenet_real_labels.json``. Images are
matched by file name, so subsets, ``--limit`` and shards work; an image with an empty ReaL list (the raters
found no valid label) or a name that is not a validation file name is excluded and counted. A prediction is
ReaL-correct when the top-1 class is among the image's ReaL labels: timm's ``RealLabelsImagenet`` rule.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import torch

from ..errors import DataError
from .image_set import ImageSet
from .labels import FULL_VAL_CLASSES, FULL_VAL_IMAGES, val_number

PACKAGED = "timm"  # --real-labels without a file: the copy that timm ships


def _packaged_text() -> tuple[str, str]:
    try:
        ref = resources.files("timm.data").joinpath("_info", "imagenet_real_labels.json")
        return ref.read_text(encoding="utf-8"), "timm:imagenet_real_labels.json"
    except (FileNotFoundError, ModuleNotFoundError):
        raise DataError(
            "the installed timm does not ship the ImageNet-ReaL labels: pass --real-labels FILE (real.json from "
            "google-research/reassessed-imagenet)"
        ) from None


@dataclass(frozen=True)
class RealLabels:
    """ReaL labels: ``labels[n - 1]`` are the valid classes of validation image ``n``."""

    labels: tuple[frozenset[int], ...]
    source: str

    def for_image_set(self, image_set: ImageSet) -> list[frozenset[int] | None]:
        """Per sample of ``image_set``: its ReaL label set, or None when it has none (excluded)."""
        out: list[frozenset[int] | None] = []
        named = 0
        for s in image_set.samples:
            n = val_number(s.name)
            named += n is not None
            labels = self.labels[n - 1] if n is not None else None
            out.append(labels or None)
        if image_set.samples and not named:
            raise DataError(
                f"ImageNet-ReaL labels are matched by file name (ILSVRC2012_val_NNNNNNNN), and none of the "
                f"{len(image_set.samples)} images in {image_set.root} has such a name"
            )
        return out


def load_real_labels(path: str | Path | None = None) -> RealLabels:
    """Read the ReaL labels from ``path`` or, for None / ``"timm"``, from the copy timm ships."""
    if path is None or str(path) == PACKAGED:
        return _packaged_labels()
    return _parse(*_read(Path(path)))


@lru_cache(maxsize=1)
def _packaged_labels() -> RealLabels:
    return _parse(*_packaged_text())


def _read(path: Path) -> tuple[str, str]:
    if not path.is_file():
        raise DataError(f"ReaL labels file not found: {path}")
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read ReaL labels {path}: {e}") from None


def _parse(text: str, source: str) -> RealLabels:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"ReaL labels {source} is not JSON: {e.msg} at line {e.lineno}") from None
    if not isinstance(raw, list) or len(raw) != FULL_VAL_IMAGES:
        raise DataError(f"ReaL labels {source}: expected a JSON list of {FULL_VAL_IMAGES} label lists")
    labels = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, list) or not all(
            isinstance(c, int) and not isinstance(c, bool) and 0 <= c < FULL_VAL_CLASSES for c in entry
        ):
            raise DataError(f"ReaL labels {source}: entry {i} ({entry!r:.40}) is not a list of class indices 0..999")
        labels.append(frozenset(entry))
    return RealLabels(tuple(labels), source)


@dataclass(frozen=True)
class RealScore:
    """ReaL top-1 of one cell: counts over the images that have ReaL labels."""

    correct1: int
    n: int
    excluded: int

    @property
    def top1(self) -> float | None:
        return 100.0 * self.correct1 / self.n if self.n else None


def real_hits(per_sample: list[frozenset[int] | None], indices: torch.Tensor, top1: torch.Tensor) -> torch.Tensor:
    """Per prediction, whether it is ReaL-correct: 1 yes, 0 no, -1 the image has no ReaL labels (excluded).

    Args:
        per_sample: ``RealLabels.for_image_set`` of the evaluated set.
        indices: ``(n,)`` positions in the image set of the predictions.
        top1: ``(n,)`` predicted class of each of them.
    """
    hits = [
        -1 if (labels := per_sample[i]) is None else int(pred in labels)
        for i, pred in zip(indices.tolist(), top1.tolist(), strict=True)
    ]
    return torch.tensor(hits, dtype=torch.int8)


def real_score(hits: torch.Tensor) -> RealScore:
    """ReaL top-1 of a cell from its per-image ``real_hits``."""
    n = int((hits >= 0).sum())
    return RealScore(int((hits == 1).sum()), n, len(hits) - n)
