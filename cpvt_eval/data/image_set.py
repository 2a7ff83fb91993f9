"""An indexed dataset: its samples (``Sample``), the ``ImageSet`` every layout and store is read into, the names
of the layouts, and the fingerprint that identifies the images evaluated."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from .labels import FULL_VAL_CLASSES, FULL_VAL_IMAGES

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
FOLDER_LAYOUTS = ("imagefolder", "flat", "imagenetv2", "manifest")
STORE_LAYOUTS = ("wds", "parquet", "arrow")
LAYOUTS = ("auto", *FOLDER_LAYOUTS, "images", *STORE_LAYOUTS)


@dataclass(frozen=True)
class Sample:
    """One image: where it is, relative to the dataset root, and its canonical class index (-1: unlabelled).

    Attributes:
        relpath: the file's path relative to the root; in a store, the member or row that holds the image
            (``shard-03.tar/KEY.jpg``, ``validation-00000-of-00014.parquet[row 12]``), unique in the set.
        label: canonical ImageNet-1k index, -1 when the set has no labels.
        filename: in a store, the image's own file name when the store records it (a shard's ``.json``
            ``filename``, the parquet ``image.path``), else its member name (or ``row N``); empty for files on disk.
            The stores' key: it does not depend on how the samples are split into shards, files or row groups.
        loc: in a store, where its bytes are (``(shard, offset, size)``; ``(file, row group or batch, row, size)``);
            empty for files on disk.
    """

    relpath: str
    label: int
    filename: str = ""
    loc: tuple = ()

    @property
    def name(self) -> str:
        """The image's file name, the same for the same image in every layout and store that records it."""
        return (self.filename or self.relpath).rsplit("/", 1)[-1]


@dataclass
class ImageSet:
    """An indexed dataset: its root, its samples in a fixed order, and where it came from.

    Attributes:
        root: the folder sample paths are relative to.
        samples: the images to evaluate, in a fixed order.
        layout: one of ``imagefolder``, ``flat``, ``imagenetv2``, ``manifest``.
        classes: index -> class name (WordNet id).
        limit: the ``--limit`` applied, if any.
        fingerprint: hash of the sorted relative paths, byte sizes and labels of ``samples``.
        label_source: the label file the labels came from or were checked against (empty: the layout itself).
        class_filter: the ``--classes`` file applied, if any.
        skipped: ``(relative path, reason)`` of every bad image left out under ``--on-bad-image skip``.
        decode_draft: JPEGs decoded with PIL's ``draft()`` (reduced DCT scale; changes pixels).
        unreadable: ``(relative path, reason)`` of every folder or link the scan could not list or follow
            (permission denied, symlink loop), of every shard or row group that cannot be read (``shard.tar``,
            ``file.parquet[row group 3]``): bad input, like a corrupt image, never left out silently.
        has_labels: False for the ``images`` layout and stores without labels (every label is then -1).
        spec: ``--data`` as given when it is not ``root`` itself (a shard pattern, ``_info.json``, a file).
        split: the split chosen from a store that holds several (``validation``), else empty.
        label_subset: the identity of the label subset the argmax is restricted to (``imagenet-a``, or a file's
            name and a hash of its classes), else empty; ``label_subset_classes``: its canonical indices.
        test_set: the test set the images are (``imagenet-a``, ``imagenet-v2``, ...: ``--test-set`` or detected).
        label_space: the id of the label space the labels index (``imagenet-1k``, ``custom-10:ab12cd34``: see
            ``label_space``), and ``label_space_source`` where its names came from.
    """

    root: Path
    samples: list[Sample]
    layout: str
    classes: tuple[str, ...]
    limit: int | None = None
    fingerprint: str = ""
    label_source: str = ""
    class_filter: str | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    decode_draft: bool = False
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    has_labels: bool = True
    spec: str = ""
    split: str = ""
    label_subset: str = ""
    label_subset_classes: tuple[int, ...] = ()
    test_set: str = ""
    label_space: str = "imagenet-1k"
    label_space_source: str = ""

    @property
    def source(self) -> str:
        """What to name the dataset by in messages: ``--data`` as given."""
        return self.spec or str(self.root)

    @property
    def is_store(self) -> bool:
        return self.layout in STORE_LAYOUTS

    @property
    def is_full_imagenet_val(self) -> bool:
        if len(self.samples) != FULL_VAL_IMAGES or not self.has_labels or self.label_space != "imagenet-1k":
            return False
        counts: dict[int, int] = {}
        for s in self.samples:
            counts[s.label] = counts.get(s.label, 0) + 1
        return len(counts) == FULL_VAL_CLASSES and all(c == 50 for c in counts.values())

    def label_map(self) -> dict[str, int]:
        """File name -> canonical index (the view that must agree across layouts of the same images)."""
        return {s.name: s.label for s in self.samples}

    def __len__(self) -> int:
        return len(self.samples)


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def fingerprint(image_set: ImageSet) -> str:
    """A short hash of the sorted relative paths, byte sizes and labels: the same files give the same value.

    A file that cannot be read counts with size -1 here; the bad-image policy then stops the run on it or
    leaves it out and fingerprints the images actually evaluated.

    A store hashes its samples sorted by key (``Sample.filename``: the recorded file name, else the member name),
    with the image's byte size and label: the value does not depend on how the samples are split into shards,
    files or row groups, nor on their order, and the same images under the same names give the same value in a
    WebDataset, a parquet and an arrow store.
    """
    if image_set.is_store:
        digest = hashlib.sha256(b"store\n")
        for key, size, label in sorted((s.filename, s.loc[-1], s.label) for s in image_set.samples):
            digest.update(f"{key}\t{size}\t{label}\n".encode("utf-8", "surrogateescape"))
        return digest.hexdigest()[:16]
    digest = hashlib.sha256()
    for s in sorted(image_set.samples, key=lambda s: s.relpath):
        try:
            size = (image_set.root / s.relpath).stat().st_size
        except OSError:
            size = -1
        # surrogateescape: a file name that is not UTF-8 hashes as the bytes the filesystem holds
        digest.update(f"{s.relpath}\t{size}\t{s.label}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:16]
