"""Label subsets (ImageNet-A and -R use 200 of the 1000 classes) and naming the test set a dataset is.

A label subset is a tuple of canonical ImageNet-1k indices: a model's 1000 logits restricted to them, in that order,
give the prediction among the subset's classes (the ImageNet-A/-R protocol). timm ships the two published subsets
(``timm/data/_info/imagenet_a_indices.txt``, ``imagenet_r_indices.txt``, with the matching ``*_synsets.txt``); any
other is a file of canonical indices or WordNet ids, one per line.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import DataError, shown
from .image_set import ImageSet
from .labels import FULL_VAL_CLASSES, WNID, imagenet_synsets, label_of_val_number, synset_to_index, val_number

# name -> (timm's index file, timm's synset file)
LABEL_SUBSETS = {
    "imagenet-a": ("imagenet_a_indices.txt", "imagenet_a_synsets.txt"),
    "imagenet-r": ("imagenet_r_indices.txt", "imagenet_r_synsets.txt"),
}


@dataclass(frozen=True)
class LabelSubset:
    """Classes of a test set that uses part of ImageNet-1k.

    Attributes:
        name: ``imagenet-a``, ``imagenet-r``, or the file's stem.
        indices: canonical ImageNet-1k indices, in the file's order, each once.
        source: where they were read (``timm:imagenet_a_indices.txt``, or the file's path).
    """

    name: str
    indices: tuple[int, ...]
    source: str

    @property
    def wnids(self) -> tuple[str, ...]:
        synsets = imagenet_synsets()
        return tuple(synsets[i] for i in self.indices)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def ident(self) -> str:
        """What identifies the subset in a cell's key: the name of a published one, else the file's name and a
        hash of its classes (the same classes in another file are the same protocol)."""
        if self.source.startswith("timm:"):
            return self.name
        digest = hashlib.sha256(",".join(map(str, sorted(self.indices))).encode()).hexdigest()[:8]
        return f"{self.name}:{digest}"


def apply_label_subset(image_set: ImageSet, subset: LabelSubset) -> None:
    """Restrict ``image_set``'s argmax to ``subset``; every labelled image must belong to one of its classes (an
    image outside could never be counted right: select the same classes with ``--classes`` first)."""
    if image_set.has_labels:
        allowed = set(subset.indices)
        outside = [s for s in image_set.samples if s.label not in allowed]
        if outside:
            wnid = imagenet_synsets()[outside[0].label]
            raise DataError(
                f"{len(outside)} image(s) of {shown(image_set.root)} have labels outside the label subset "
                f"{subset.name} ({len(subset)} classes), e.g. {shown(outside[0].relpath)} ({wnid}); keep the same "
                f"classes with --classes {subset.name if subset.source.startswith('timm:') else 'FILE'}"
            )
    image_set.label_subset = subset.ident
    image_set.label_subset_classes = subset.indices


def _timm_text(filename: str) -> str:
    try:
        return resources.files("timm.data").joinpath("_info", filename).read_text(encoding="utf-8")
    except (FileNotFoundError, ModuleNotFoundError, OSError):
        raise DataError(f"the installed timm does not ship {filename}: pass the subset as a file") from None


def parse_label_subset(text: str, where: str, name: str) -> LabelSubset:
    """Lines of canonical indices (0..999) or WordNet ids; blank lines and ``#`` comments ignored."""
    out: list[int] = []
    first_line: dict[int, int] = {}
    index = synset_to_index()
    for n, line in enumerate(text.splitlines(), 1):
        value = line.split("#", 1)[0].strip()
        if not value:
            continue
        at = f"{where}:{n}"
        if WNID.match(value):
            if value not in index:
                raise DataError(f"{shown(at)}: {value} is not an ImageNet-1k class (WordNet id)")
            i = index[value]
        elif re.fullmatch(r"[+-]?\d+", value):
            i = int(value)
            if not 0 <= i < FULL_VAL_CLASSES:
                raise DataError(f"{shown(at)}: class index {i} is outside 0..999")
        else:
            raise DataError(f"{shown(at)}: {value[:60]!r} is neither a class index (0..999) nor a WordNet id")
        if i in first_line:
            wnid = imagenet_synsets()[i]
            raise DataError(f"{shown(at)}: class {i} ({wnid}) is already listed on line {first_line[i]}")
        first_line[i] = n
        out.append(i)
    if not out:
        raise DataError(f"label subset {shown(where)} names no class")
    return LabelSubset(name, tuple(out), where)


def load_label_subset(spec: str | os.PathLike) -> LabelSubset:
    """``imagenet-a`` / ``imagenet-r`` (the lists timm ships, checked against timm's synset lists), or a FILE of
    canonical indices or WordNet ids, one per line (``#`` comments)."""
    text = os.fsdecode(spec)
    key = text.strip().lower().replace("_", "-")
    path = Path(text)
    if key in LABEL_SUBSETS and not path.exists():
        index_file, synset_file = LABEL_SUBSETS[key]
        subset = parse_label_subset(_timm_text(index_file), f"timm:{index_file}", key)
        wnids = parse_label_subset(_timm_text(synset_file), f"timm:{synset_file}", key)
        if subset.indices != wnids.indices:
            raise DataError(f"timm's {index_file} and {synset_file} disagree: the installed timm's files are damaged")
        return subset
    if not path.exists():
        known = ", ".join(LABEL_SUBSETS)
        raise DataError(f"unknown label subset {shown(text)!r}: not a file, and not one of {known}")
    if not path.is_file():
        raise DataError(f"label subset {shown(path)} is not a file")
    try:
        content = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"label subset {shown(path)} is not UTF-8 text") from None
    except OSError as e:
        raise DataError(f"cannot read label subset {shown(path)}: {e.strerror or e}") from None
    return parse_label_subset(content, str(path), path.stem)


def detect_test_set(image_set: ImageSet) -> str | None:
    """The test set ``image_set`` is, when its layout or contents say so; None when unsure.

    * ``imagenet-v2``: the ImageNetV2 layout (integer class folders);
    * ``imagenet-a`` / ``imagenet-r``: the labels are exactly that subset's 200 classes (no ``--classes`` filter);
    * ``imagenet-val``: the full 50,000-image validation set, or images that all carry validation file names
      (``ILSVRC2012_val_NNNNNNNN``) with their validation labels (a subset of it).
    """
    if image_set.label_space != "imagenet-1k":
        return None  # the ImageNet test sets are named in the ImageNet label space only
    if image_set.layout == "imagenetv2":
        return "imagenet-v2"
    if not image_set.has_labels or not image_set.samples:
        return None
    if image_set.is_full_imagenet_val:
        return "imagenet-val"
    present = {s.label for s in image_set.samples}
    if image_set.class_filter is None:
        for name in LABEL_SUBSETS:
            try:
                subset = load_label_subset(name)
            except DataError:
                continue
            if present == set(subset.indices):
                return name
    for s in image_set.samples:
        n = val_number(s.name)
        if n is None or label_of_val_number(n) != s.label:
            return None
    return "imagenet-val"
