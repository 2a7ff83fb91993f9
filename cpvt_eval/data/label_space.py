"""A label space: the names of a model's output classes in index order, and how a dataset's class names map onto it.

ImageNet-1k is the default space (index = position of the WordNet id in the sorted list). A model with its own
classes brings its own names: a transformers ``id2label``, timm's label names for its pretrained tag, or a
``--class-map`` file. Class folders, manifest labels and parquet/arrow ``ClassLabel`` names are mapped onto the
space by name, never by the order they have on disk. A 1000-class space whose names are ImageNet's (the WordNet ids,
or their human names as timm ships them: ``tench, Tinca tinca``, as a transformers ``id2label`` has them) is the
ImageNet-1k space.

A space is recorded in every row by its id: ``imagenet-1k``, or ``custom-<classes>:<8 hex digits of a hash of the
names>`` (``custom-10:ab12cd34``), so that two runs say whether they used the same classes.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from ..errors import DataError, shown
from .labels import FULL_VAL_CLASSES, imagenet_synsets, parse_label

IMAGENET_1K = "imagenet-1k"


@dataclass(frozen=True)
class LabelSpace:
    """The names of a model's classes, index order.

    Attributes:
        names: index -> class name (ImageNet-1k: the WordNet ids).
        source: where the names were read (``id2label of ./my-vit/config.json``, ``--class-map classes.txt``).
        imagenet: the canonical ImageNet-1k classes.
    """

    names: tuple[str, ...]
    source: str = ""
    imagenet: bool = False

    @property
    def id(self) -> str:
        if self.imagenet:
            return IMAGENET_1K
        digest = hashlib.sha256("\n".join(self.names).encode("utf-8", "surrogateescape")).hexdigest()[:8]
        return f"custom-{len(self.names)}:{digest}"

    def __len__(self) -> int:
        return len(self.names)

    def describe(self) -> str:
        return f"{self.id} ({self.source})" if self.source else self.id

    @cached_property
    def _index(self) -> dict[str, int | None]:
        """Name -> index; None for a name that two classes share (it cannot name one of them)."""
        out: dict[str, int | None] = {}
        for i, name in enumerate(self.names):
            out[name] = None if name in out else i
        return out

    def lookup(self, name: str, what: str) -> int:
        """The index of the class ``name``; ``what`` says what named it (``folder /data/val/bicycle``)."""
        index = self._index.get(name, -1)
        if index is None:
            raise DataError(f"{what} names {name!r}, which two classes of {self.describe()} share")
        if index == -1:
            close = difflib.get_close_matches(name, [n for n in self.names if isinstance(n, str)], n=3, cutoff=0.6)
            hint = f"; closest: {', '.join(repr(c) for c in close)}" if close else ""
            raise DataError(f"{what} names no class of the model's label space {self.describe()}{hint}")
        return index

    def parse_label(self, value: str, where: str) -> int:
        """A manifest label: a class name of the space, or its index."""
        if self.imagenet:
            return parse_label(value, where)
        value = value.strip()
        if value in self._index:
            return self.lookup(value, where)
        if value.isdigit():
            if int(value) < len(self.names):
                return int(value)
            raise DataError(f"{where}: class index {value} is outside 0..{len(self.names) - 1} of {self.describe()}")
        return self.lookup(value, f"{where}: label")

    def check_labels(self, samples, source: str) -> None:
        """Every label of ``samples`` (indices, -1 for none) is a class of this space."""
        bad = next((s for s in samples if s.label >= len(self.names)), None)
        if bad is not None:
            raise DataError(
                f"{shown(source)}: {shown(bad.relpath)} has label {bad.label}, outside the {len(self.names)} "
                f"classes of {self.describe()}"
            )


def imagenet_1k(source: str = "ImageNet-1k WordNet ids") -> LabelSpace:
    return LabelSpace(imagenet_synsets(), source, imagenet=True)


def _norm(name: str) -> str:
    return " ".join(str(name).lower().split())


def is_imagenet_names(names) -> bool:
    """The 1000 ImageNet-1k classes in canonical order: their WordNet ids, or their human names (timm's
    ``imagenet_synset_to_lemma.txt``; a name may also be its first synonym alone: ``tench``)."""
    names = [str(n) for n in names]
    if len(names) != FULL_VAL_CLASSES:
        return False
    if tuple(names) == imagenet_synsets():
        return True
    from .parquet_arrow import imagenet_lemmas

    try:
        lemmas = imagenet_lemmas()
    except DataError:
        return False
    return all(
        _norm(n) == _norm(lemma) or _norm(n) == _norm(lemma.split(",")[0])
        for n, lemma in zip(names, lemmas, strict=True)
    )


def from_names(names, source: str) -> LabelSpace:
    """The space of ``names`` (index order); ImageNet's classes are recognised as the ImageNet-1k space."""
    names = tuple(str(n) for n in names)
    if not names:
        raise DataError(f"{source} names no class")
    if is_imagenet_names(names):
        return imagenet_1k(f"{source}: ImageNet-1k classes")
    return LabelSpace(names, source)


_NAME_INDEX = re.compile(r"^(.*\S)\s*,\s*(\d+)\s*$")


def read_class_map(path: str | os.PathLike) -> LabelSpace:
    """A ``--class-map`` file, as timm's ``--class-map``: one class name per line, the line number (from 0) being its
    index; or ``name,index`` on every line. A blank line inside the list would shift every index after it, so it is
    an error; blank lines at the end are ignored."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"--class-map {shown(path)}: file not found") from None
    except UnicodeDecodeError:
        raise DataError(f"--class-map {shown(path)} is not UTF-8 text") from None
    except OSError as e:
        raise DataError(f"--class-map {shown(path)}: {e.strerror or e}") from None
    lines = [line.rstrip("\r\n") for line in text.splitlines()]
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DataError(f"--class-map {shown(path)} names no class")
    blank = next((i for i, line in enumerate(lines, 1) if not line.strip()), None)
    if blank is not None:
        raise DataError(f"--class-map {shown(path)}:{blank} is blank (the line number is the class index)")
    pairs = [_NAME_INDEX.match(line) for line in lines]
    source = f"--class-map {shown(path.name)}"
    if all(pairs):
        by_index: dict[int, str] = {}
        for n, m in enumerate(pairs, 1):
            index = int(m[2])
            if index in by_index:
                raise DataError(f"--class-map {shown(path)}:{n}: index {index} is given twice")
            by_index[index] = m[1].strip()
        if sorted(by_index) != list(range(len(by_index))):
            missing = min(set(range(len(by_index))) - set(by_index))
            raise DataError(f"--class-map {shown(path)}: no class has index {missing} (indices must be 0 ... N-1)")
        names = tuple(by_index[i] for i in range(len(by_index)))
    else:
        names = tuple(line.strip() for line in lines)
    twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if twice is not None:
        raise DataError(f"--class-map {shown(path)}: class {twice!r} is listed twice")
    return from_names(names, source)
