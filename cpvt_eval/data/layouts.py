"""The layouts ImageNet validation sets come in, detected or forced, each read into the same ``ImageSet``.

* ``imagefolder``: one folder per WordNet id (``n01440764/...``);
* ``flat``: ``ILSVRC2012_val_00000001.JPEG`` ... in one folder; labels from the shipped per-image list, from
  Kaggle's ``LOC_val_solution.csv``, or the shipped list checked against the devkit's ground truth;
* ``imagenetv2``: integer folders ``0`` ... ``999`` naming the canonical index (numeric, not lexicographic);
* ``manifest``: a CSV of ``path,label`` (label as WordNet id or index), paths relative to the CSV's folder;
* ``images``: any folder of images, nested or flat, without labels (label -1): only when labels are not required;
* ``wds``, ``parquet``, ``arrow``: WebDataset tar shards and Hugging Face parquet / arrow files, read in place
  (``stores``).

Every layout yields canonical indices, so the same images give the same (file -> label) map in each.

The layouts themselves are in ``folder_layouts`` and ``stores``; this module detects the layout, dispatches to it,
keeps ``--classes``, applies ``--limit`` and fingerprints the result (``open_dataset``).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import DataError, shown
from .folder_layouts import (
    check_root,
    class_folders,
    list_entries,
    manifests_in,
    more_note,
    scan_flat,
    scan_imagefolder,
    scan_imagenetv2,
    scan_manifest,
    scan_unlabelled,
    top_images,
)
from .image_set import LAYOUTS, STORE_LAYOUTS, ImageSet, Sample, fingerprint
from .labels import WNID, imagenet_synsets, label_file_kind, read_wnid_list
from .stores import resolve_store, scan_store


def detect_layout(root: Path, labels: Path | None = None, space=None) -> str:
    """The layout of ``root``: a store (shards, parquet/arrow files, their patterns and info files), else a manifest
    (given or found in the folder), then class folders (WordNet ids or integers; with a model's own label space
    ``space``, any names: they are mapped onto it by name), then images at the top level (flat). An unlabelled
    folder is not detected here: it opens as ``images`` only where labels are not needed."""
    store = resolve_store(root)
    if store is not None:
        return store.layout
    root = Path(root)
    if root.is_file():
        if root.suffix.lower() == ".csv":
            return "manifest"
        raise DataError(f"data path is not a directory: {root}")
    check_root(root)
    if labels is not None and label_file_kind(labels) == "manifest":
        return "manifest"
    if manifests_in(root):
        return "manifest"
    folders = class_folders(root)
    top = top_images(root)
    if folders:
        if space is not None and not space.imagenet:
            return "imagefolder"  # the folders name the model's classes (the scan names any folder that does not)
        if all(WNID.match(f) for f in folders):
            return "imagefolder"
        if all(f.isdigit() for f in folders):
            return "imagenetv2"
        if not top:
            odd = [f for f in folders if not WNID.match(f) and not f.isdigit()]
            raise DataError(
                f"cannot tell the layout of {root}: folder {odd[0]} is neither a WordNet id nor a class index "
                "(class folders named by the model's classes need a model that names them, or --class-map FILE; "
                "or use --labels with a manifest)"
            )
    if top:
        return "flat"
    if not list_entries(root):
        raise DataError(f"data directory {root} is empty")
    raise DataError(f"no images found in {root}")


def scan(
    root: str | os.PathLike,
    layout: str = "auto",
    labels: str | os.PathLike | None = None,
    *,
    require_labels: bool = True,
    label_key: str | None = None,
    split: str | None = None,
    space=None,
) -> ImageSet:
    """Index a dataset in the given (or detected) layout.

    Args:
        root: a folder in a folder layout, a manifest CSV, or a store (``stores.resolve_store``: shard patterns,
            folders of shards or parquet files, ``_info.json``, ``save_to_disk`` folders, single files).
        layout: ``auto`` or one of ``LAYOUTS``.
        labels: a label file (flat and manifest layouts).
        require_labels: False lets an unlabelled folder open as ``images`` (auto-detection tries the labelled
            layouts first) and a store without labels open with label -1.
        label_key: the field that holds the label: a shard's ``.json`` field (default ``.cls``, then the ``.json``
            ``label``), a parquet/arrow column (default ``label``).
        split: the split of a store that holds several (default ``validation``).
        space: the models' own label space (``label_space.LabelSpace``) when it is not ImageNet-1k: class folders,
            manifest labels and ``ClassLabel`` names are mapped onto it by name.
    """
    if layout not in LAYOUTS:
        raise DataError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if layout in ("auto", *STORE_LAYOUTS):
        store = resolve_store(root, layout, split)
        if store is not None:
            if labels is not None:
                raise DataError(f"--labels applies to the flat and manifest layouts; {store.layout} stores hold labels")
            return scan_store(store, label_key, require_labels, space)
    if label_key is not None:
        raise DataError("--label-key applies to shards (a .json field) and parquet/arrow files (a column)")
    if split is not None:
        raise DataError("--split applies to stores that hold several splits (shards, parquet/arrow files)")
    root = Path(root)
    if layout == "images":
        if labels is not None:
            raise DataError("--labels does not apply to the images layout (unlabelled images)")
        return scan_unlabelled(root)
    try:
        return _scan_labelled(root, layout, labels, space)
    except DataError as e:
        # An unlabelled folder opens as `images` only when labels are not needed and nothing asked for them; a
        # path that is missing, not a folder or empty stays the error it is.
        if require_labels or layout != "auto" or labels is not None or not root.is_dir() or not list_entries(root):
            raise
        original = e
    try:
        return scan_unlabelled(root)
    except DataError:
        raise original from None


def _scan_labelled(root: Path, layout: str, labels: str | os.PathLike | None, space=None) -> ImageSet:
    labels = Path(labels) if labels is not None else None
    if labels is not None and not labels.is_file():
        raise DataError(f"label file not found: {labels}")
    if layout == "auto":
        layout = detect_layout(root, labels, space)
    if layout == "manifest":
        if labels is not None:
            if label_file_kind(labels) != "manifest":
                raise DataError(f"--labels {labels} is not a manifest (a CSV with a path,label header)")
            return scan_manifest(labels, root, space)
        if root.is_file():
            return scan_manifest(root, space=space)
        check_root(root)
        found = manifests_in(root)
        if len(found) != 1:
            what = "no manifest CSV" if not found else f"{len(found)} manifest CSVs"
            raise DataError(f"{what} in {root}: pass the manifest with --labels FILE")
        return scan_manifest(found[0], root, space)
    if space is not None and layout in ("flat", "imagenetv2"):
        raise DataError(
            f"the {layout} layout labels ImageNet-1k images, and the model's label space is {space.describe()}: "
            "name the class folders by its classes, or give a manifest"
        )
    if space is not None:
        if labels is not None:
            raise DataError("--labels applies to the flat and manifest layouts; class folders are labelled by name")
        return scan_imagefolder(root, space=space)
    if layout == "flat":
        return scan_flat(root, labels)
    if labels is not None:
        raise DataError(f"--labels applies to the flat and manifest layouts; the {layout} layout is labelled by folder")
    if layout == "imagenetv2":
        return scan_imagenetv2(root)
    return scan_imagefolder(root)


def check_option_files(labels: str | os.PathLike | None, classes: str | os.PathLike | None) -> None:
    """``--labels`` and ``--classes`` name files (``--classes`` also ``imagenet-a`` / ``imagenet-r``): a path that is
    missing or a folder is an error naming the option and what it takes."""
    from .subsets import LABEL_SUBSETS

    wanted = {
        "--labels": (labels, "the label file: devkit ground truth, Kaggle's LOC_val_solution.csv or a path,label CSV"),
        "--classes": (classes, "a file of WordNet ids, one per line (n01440764), or imagenet-a / imagenet-r"),
    }
    for option, (path, takes) in wanted.items():
        if path is None or Path(path).is_file():
            continue
        if option == "--classes" and os.fsdecode(path).strip().lower() in LABEL_SUBSETS and not Path(path).exists():
            continue
        what = "is a folder" if Path(path).is_dir() else "does not exist"
        raise DataError(f"{option} {shown(path)} {what}: give {takes}")


def select_classes(image_set: ImageSet, classes_file: str | os.PathLike) -> None:
    """Keep only the images of the classes (WordNet ids) listed in ``classes_file``."""
    if not image_set.has_labels:
        raise DataError(f"--classes keeps images by label, and {image_set.source} has no labels")
    from .subsets import LABEL_SUBSETS, load_label_subset

    key = os.fsdecode(classes_file).strip().lower()
    if key in LABEL_SUBSETS and not Path(classes_file).exists():
        wanted = list(load_label_subset(key).indices)  # the 200 classes of ImageNet-A/-R: the "clean" control
    else:
        wanted = read_wnid_list(Path(classes_file))
    present = {s.label for s in image_set.samples}
    absent = [i for i in wanted if i not in present]
    if absent:
        raise DataError(
            f"--classes {classes_file} names {imagenet_synsets()[absent[0]]}, which has no image in "
            f"{image_set.root}{more_note(absent)}"
        )
    keep = set(wanted)
    image_set.samples = [s for s in image_set.samples if s.label in keep]
    image_set.class_filter = str(classes_file)


def stratified_subset(samples: list[Sample], limit: int) -> list[Sample]:
    """The first ``limit`` samples of a round-robin over classes (each class in file-name order): deterministic,
    as balanced as ``limit`` allows, and the same images whatever the layout. The result keeps the input order."""
    if limit <= 0:
        raise DataError(f"--limit must be positive, got {limit}")
    if limit >= len(samples):
        return list(samples)
    by_class: dict[int, list[int]] = {}
    for i, s in enumerate(samples):
        by_class.setdefault(s.label, []).append(i)
    queues = [sorted(by_class[k], key=lambda i: (samples[i].name, samples[i].relpath)) for k in sorted(by_class)]
    chosen: list[int] = []
    depth = 0
    while len(chosen) < limit:
        for q in queues:
            if depth < len(q):
                chosen.append(q[depth])
                if len(chosen) == limit:
                    break
        depth += 1
    return [samples[i] for i in sorted(chosen)]


def open_dataset(
    root: str | os.PathLike,
    limit: int | None = None,
    layout: str = "auto",
    labels: str | os.PathLike | None = None,
    classes: str | os.PathLike | None = None,
    class_names: tuple[str, ...] | None = None,
    *,
    require_labels: bool = True,
    label_key: str | None = None,
    split: str | None = None,
    space=None,
) -> ImageSet:
    """Index ``root`` in its layout, keep ``--classes``, apply ``--limit``, and fingerprint the result.

    ``class_names`` is for an ImageFolder that is not ImageNet (the offline demo): its folder names in label order.
    ``root`` may also be a store (``--data 'val-{00..63}.tar'``, ``_info.json``, parquet/arrow files); see ``scan``
    for ``require_labels``, ``label_key``, ``split`` and ``space`` (the models' label space: ImageNet-1k when None).
    """
    check_option_files(labels, classes)  # before any folder is listed
    given, space = space, (None if space is None or space.imagenet else space)  # ImageNet-1k: the layouts as they are
    if space is not None and classes is not None:
        raise DataError(f"--classes lists ImageNet-1k WordNet ids; the model's label space is {space.describe()}")
    if class_names is not None:
        if layout not in ("auto", "imagefolder") or labels is not None or classes is not None:
            raise DataError("a dataset with its own class names is an ImageFolder without label or class files")
        image_set = scan_imagefolder(root, tuple(class_names))
    else:
        image_set = scan(
            root, layout, labels, require_labels=require_labels, label_key=label_key, split=split, space=space
        )
        if space is not None:
            space.check_labels(image_set.samples, image_set.source)
    if given is not None:
        image_set.label_space, image_set.label_space_source = given.id, given.source
    if classes is not None:
        select_classes(image_set, classes)
    if limit is not None:
        image_set.samples = stratified_subset(image_set.samples, limit)
        image_set.limit = limit
    image_set.fingerprint = fingerprint(image_set)
    return image_set
