"""The folder layouts, each read into an ``ImageSet``, and the folder listings the layout detection shares.

* ``imagefolder``: one folder per WordNet id; ``imagenetv2``: integer folders ``0`` ... ``999``;
* ``flat``: ``ILSVRC2012_val_*.JPEG`` in one folder, labelled by the shipped list, Kaggle's CSV or the devkit;
* ``manifest``: a CSV of ``path,label``; ``images``: any folder of images, unlabelled.

A folder or link that cannot be listed or followed is recorded in ``ImageSet.unreadable``, never skipped silently.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from ..errors import DataError
from .image_set import ImageSet, Sample, is_image_name
from .labels import (
    FULL_VAL_CLASSES,
    find_label_file,
    imagenet_synsets,
    label_file_kind,
    label_of_val_number,
    read_label_file,
    read_manifest,
    val_name_wnid,
    val_number,
)


def more_note(items: list, shown: int = 1) -> str:
    """`` (+N more)`` for the ``items`` a message leaves out after naming the first ``shown``; empty when none."""
    return f" (+{len(items) - shown} more)" if len(items) > shown else ""


def _rel(path: str, root: Path) -> str:
    return os.path.relpath(path, root).replace(os.sep, "/")


def _walk_images(folder: Path, root: Path, problems: list[tuple[str, str]]) -> list[str]:
    """Relative paths of the images under ``folder``, following symlinked folders once each. A folder that
    cannot be listed, a symlink loop and a link that cannot be followed are added to ``problems``, never
    skipped silently (``os.walk`` would drop them without a word)."""
    out: list[str] = []
    seen: set[tuple[int, int]] = set()

    def visit(path: str) -> None:
        try:
            st = os.stat(path)
        except OSError as e:
            problems.append((_rel(path, root), _reason(e)))
            return
        if (st.st_dev, st.st_ino) in seen:
            problems.append((_rel(path, root), "symlink loop: this folder is already listed"))
            return
        seen.add((st.st_dev, st.st_ino))
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            problems.append((_rel(path, root), f"cannot list folder: {e.strerror or e}"))
            return
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                is_dir = e.is_dir()
            except OSError as err:  # a link that cannot be followed (loop): say so whatever its name
                if not is_image_name(e.name):
                    problems.append((_rel(e.path, root), _reason(err)))
                    continue
                is_dir = False
            if is_dir:
                visit(e.path)
            elif is_image_name(e.name):
                out.append(_rel(e.path, root))

    visit(str(folder))
    return out


def _reason(e: OSError) -> str:
    if e.errno == errno.ELOOP:
        return "symlink loop (too many levels of symbolic links)"
    if e.errno == errno.ENOENT:
        return "broken symlink (its target does not exist)"
    return f"cannot read: {e.strerror or e}"


def check_root(root: Path) -> None:
    """A DataError unless ``root`` is an existing folder."""
    if not root.exists():
        raise DataError(f"data directory not found: {root}")
    if not root.is_dir():
        raise DataError(f"data path is not a directory: {root}")


def list_entries(root: Path) -> list[os.DirEntry]:
    """The entries of ``root`` sorted by name; a DataError when it cannot be listed."""
    try:
        with os.scandir(root) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as e:
        raise DataError(f"cannot read data directory {root}: {e.strerror or e}") from None


def _is_dir(e: os.DirEntry) -> bool:
    try:
        return e.is_dir()
    except OSError:  # a link that cannot be followed: kept, so that the scan names it
        return not is_image_name(e.name)


def _is_file(e: os.DirEntry) -> bool:
    try:
        return e.is_file()
    except OSError:
        return is_image_name(e.name)


def class_folders(root: Path) -> list[str]:
    """The folders at the top of ``root`` (not hidden), links that cannot be followed included: the scan names them."""
    return sorted(e.name for e in list_entries(root) if _is_dir(e) and not e.name.startswith("."))


def top_images(root: Path) -> list[str]:
    """The image files at the top of ``root``."""
    return sorted(e.name for e in list_entries(root) if _is_file(e) and is_image_name(e.name))


def manifests_in(root: Path) -> list[Path]:
    """The manifest CSVs (a ``path,label`` header) at the top of ``root``."""
    out = []
    for e in list_entries(root):
        if e.name.lower().endswith(".csv") and _is_file(e):
            try:
                if label_file_kind(Path(e.path)) == "manifest":
                    out.append(Path(e.path))
            except DataError:
                continue
    return out


def scan_imagefolder(root: str | os.PathLike, classes: tuple[str, ...] | None = None, space=None) -> ImageSet:
    """Index an ImageFolder (one folder per class) with labels from the canonical class list.

    Args:
        root: the dataset directory.
        classes: the canonical class names in index order (default: the ImageNet-1k WordNet ids). A folder
            whose name is not among them is an error.
        space: a model's own label space (``label_space.LabelSpace``): each folder is the class of its name; a
            folder that names none is an error naming it and the closest class names.
    """
    root = Path(root)
    check_root(root)
    classes = (space.names if space is not None else None) or classes or imagenet_synsets()
    index = {c: i for i, c in enumerate(classes)}
    folders = class_folders(root)
    if not folders:
        raise DataError(f"no class folders in {root} (expected one folder per WordNet id, e.g. n01440764/)")
    if space is not None:
        index = {f: space.lookup(f, f"folder {root / f}") for f in folders}
    unknown = [f for f in folders if f not in index]
    if unknown:
        what = "an ImageNet-1k class (WordNet id)" if classes == imagenet_synsets() else "one of the dataset's classes"
        raise DataError(f"folder {root / unknown[0]} is not {what}{more_note(unknown)}")
    problems: list[tuple[str, str]] = []
    samples = [Sample(rel, index[folder]) for folder in folders for rel in _walk_images(root / folder, root, problems)]
    _check_found(root, samples, problems)
    samples.sort(key=lambda s: s.relpath)
    return ImageSet(root=root, samples=samples, layout="imagefolder", classes=tuple(classes), unreadable=problems)


def _check_found(root: Path, samples: list[Sample], problems: list[tuple[str, str]]) -> None:
    if samples:
        return
    if problems:
        rel, why = problems[0]
        raise DataError(f"no images found under {root}: {root / rel}: {why}{more_note(problems)}")
    raise DataError(f"no images found under {root}")


def scan_imagenetv2(root: str | os.PathLike) -> ImageSet:
    """Integer folders ``0`` ... ``999``: the folder's number is the canonical index."""
    root = Path(root)
    check_root(root)
    folders = class_folders(root)
    if not folders:
        raise DataError(f"no class folders in {root} (expected integer folders 0 ... 999)")
    bad = [f for f in folders if not (f.isdigit() and str(int(f)) == f and int(f) < FULL_VAL_CLASSES)]
    if bad:
        raise DataError(f"folder {root / bad[0]} is not a class index 0 ... 999{more_note(bad)}")
    # Numeric order: folder "10" is class 10, whatever its place in a lexicographic listing.
    problems: list[tuple[str, str]] = []
    samples = [
        Sample(rel, int(f)) for f in sorted(folders, key=int) for rel in sorted(_walk_images(root / f, root, problems))
    ]
    _check_found(root, samples, problems)
    return ImageSet(root=root, samples=samples, layout="imagenetv2", classes=imagenet_synsets(), unreadable=problems)


def scan_flat(root: str | os.PathLike, labels: str | os.PathLike | None = None) -> ImageSet:
    """``ILSVRC2012_val_*.JPEG`` in one folder, labelled by a Kaggle CSV, or by the shipped per-image list
    (checked against the devkit's ground truth when that file is given or lies next to the images)."""
    root = Path(root)
    check_root(root)
    names = top_images(root)
    if not names:
        raise DataError(f"no images in {root} (the flat layout expects ILSVRC2012_val_*.JPEG files)")
    label_path = Path(labels) if labels is not None else find_label_file(root)
    label_file = read_label_file(label_path) if label_path is not None else None
    if label_file is not None and label_file.kind == "manifest":
        raise DataError(f"{label_path} is a manifest: use --layout manifest (or leave --layout auto)")
    samples = []
    if label_file is not None and label_file.kind == "kaggle":
        listed = label_file.by_name
        present = set()
        for name in names:
            stem = name.rsplit(".", 1)[0]
            if stem not in listed:
                raise DataError(f"image {root / name} is not listed in {label_path}")
            present.add(stem)
            samples.append(Sample(name, listed[stem]))
        missing = sorted(set(listed) - present)
        if missing:
            raise DataError(
                f"{label_path} lists {len(missing)} image(s) that are not in {root}, e.g. {missing[0]}; "
                "evaluate a subset with --limit or --classes instead"
            )
    else:
        for name in names:
            number = val_number(name)
            if number is None:
                raise DataError(f"image {root / name} has no label: flat images must be named ILSVRC2012_val_NNNNNNNN")
            label = label_of_val_number(number)
            named = val_name_wnid(name)
            if named is not None and named != imagenet_synsets()[label]:
                raise DataError(
                    f"image {root / name} is named {named}, but validation image {number} is "
                    f"{imagenet_synsets()[label]} in the shipped labels"
                )
            samples.append(Sample(name, label))
    return ImageSet(
        root=root,
        samples=samples,
        layout="flat",
        classes=imagenet_synsets(),
        label_source=str(label_path) if label_path is not None else "",
    )


def scan_manifest(manifest: str | os.PathLike, root: str | os.PathLike | None = None, space=None) -> ImageSet:
    """A ``path,label`` CSV; paths relative to ``root`` (default: the CSV's folder). Every listed file must exist.
    Labels are ImageNet's (WordNet id or index), or with ``space`` the model's class names or indices."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise DataError(f"manifest not found: {manifest}")
    root = Path(root) if root is not None else manifest.parent
    check_root(root)
    listed = read_manifest(manifest) if space is None else read_manifest(manifest, space.parse_label)
    missing = [rel for rel in listed if not (root / rel).is_file()]
    if missing:
        raise DataError(f"{manifest} lists {root / missing[0]}, which does not exist{more_note(missing)}")
    samples = sorted((Sample(rel, label) for rel, label in listed.items()), key=lambda s: s.relpath)
    classes = space.names if space is not None else imagenet_synsets()
    return ImageSet(root=root, samples=samples, layout="manifest", classes=classes, label_source=str(manifest))


def scan_unlabelled(root: str | os.PathLike) -> ImageSet:
    """Every image under ``root`` (nested or flat, any names), label -1: the ``images`` layout, for jobs that need
    no labels. Folders that cannot be listed are recorded in ``unreadable``, as in the labelled layouts."""
    root = Path(root)
    check_root(root)
    if not list_entries(root):
        raise DataError(f"data directory {root} is empty")
    problems: list[tuple[str, str]] = []
    samples = [Sample(rel, -1) for rel in _walk_images(root, root, problems)]
    _check_found(root, samples, problems)
    samples.sort(key=lambda s: s.relpath)
    return ImageSet(
        root=root, samples=samples, layout="images", classes=imagenet_synsets(), unreadable=problems, has_labels=False
    )
