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
"""

from __future__ import annotations

import errno
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from .labels import (
    FULL_VAL_CLASSES,
    FULL_VAL_IMAGES,
    WNID,
    find_label_file,
    imagenet_synsets,
    label_file_kind,
    label_of_val_number,
    read_label_file,
    read_manifest,
    read_wnid_list,
    val_name_wnid,
    val_number,
)

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

    @property
    def source(self) -> str:
        """What to name the dataset by in messages: ``--data`` as given."""
        return self.spec or str(self.root)

    @property
    def is_store(self) -> bool:
        return self.layout in STORE_LAYOUTS

    @property
    def is_full_imagenet_val(self) -> bool:
        if len(self.samples) != FULL_VAL_IMAGES or not self.has_labels:
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


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _more(items: list, shown: int = 1) -> str:
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
                if not _is_image(e.name):
                    problems.append((_rel(e.path, root), _reason(err)))
                    continue
                is_dir = False
            if is_dir:
                visit(e.path)
            elif _is_image(e.name):
                out.append(_rel(e.path, root))

    visit(str(folder))
    return out


def _reason(e: OSError) -> str:
    if e.errno == errno.ELOOP:
        return "symlink loop (too many levels of symbolic links)"
    if e.errno == errno.ENOENT:
        return "broken symlink (its target does not exist)"
    return f"cannot read: {e.strerror or e}"


def _check_root(root: Path) -> None:
    if not root.exists():
        raise DataError(f"data directory not found: {root}")
    if not root.is_dir():
        raise DataError(f"data path is not a directory: {root}")


def _entries(root: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(root) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as e:
        raise DataError(f"cannot read data directory {root}: {e.strerror or e}") from None


def _is_dir(e: os.DirEntry) -> bool:
    try:
        return e.is_dir()
    except OSError:  # a link that cannot be followed: kept, so that the scan names it
        return not _is_image(e.name)


def _is_file(e: os.DirEntry) -> bool:
    try:
        return e.is_file()
    except OSError:
        return _is_image(e.name)


def _class_folders(root: Path) -> list[str]:
    return sorted(e.name for e in _entries(root) if _is_dir(e) and not e.name.startswith("."))


def _top_images(root: Path) -> list[str]:
    return sorted(e.name for e in _entries(root) if _is_file(e) and _is_image(e.name))


def _manifests_in(root: Path) -> list[Path]:
    out = []
    for e in _entries(root):
        if e.name.lower().endswith(".csv") and _is_file(e):
            try:
                if label_file_kind(Path(e.path)) == "manifest":
                    out.append(Path(e.path))
            except DataError:
                continue
    return out


def scan_imagefolder(root: str | os.PathLike, classes: tuple[str, ...] | None = None) -> ImageSet:
    """Index an ImageFolder (one folder per class) with labels from the canonical class list.

    Args:
        root: the dataset directory.
        classes: the canonical class names in index order (default: the ImageNet-1k WordNet ids). A folder
            whose name is not among them is an error.
    """
    root = Path(root)
    _check_root(root)
    classes = classes or imagenet_synsets()
    index = {c: i for i, c in enumerate(classes)}
    folders = _class_folders(root)
    if not folders:
        raise DataError(f"no class folders in {root} (expected one folder per WordNet id, e.g. n01440764/)")
    unknown = [f for f in folders if f not in index]
    if unknown:
        what = "an ImageNet-1k class (WordNet id)" if classes == imagenet_synsets() else "one of the dataset's classes"
        raise DataError(f"folder {root / unknown[0]} is not {what}{_more(unknown)}")
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
        raise DataError(f"no images found under {root}: {root / rel}: {why}{_more(problems)}")
    raise DataError(f"no images found under {root}")


def scan_imagenetv2(root: str | os.PathLike) -> ImageSet:
    """Integer folders ``0`` ... ``999``: the folder's number is the canonical index."""
    root = Path(root)
    _check_root(root)
    folders = _class_folders(root)
    if not folders:
        raise DataError(f"no class folders in {root} (expected integer folders 0 ... 999)")
    bad = [f for f in folders if not (f.isdigit() and str(int(f)) == f and int(f) < FULL_VAL_CLASSES)]
    if bad:
        raise DataError(f"folder {root / bad[0]} is not a class index 0 ... 999{_more(bad)}")
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
    _check_root(root)
    names = _top_images(root)
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


def scan_manifest(manifest: str | os.PathLike, root: str | os.PathLike | None = None) -> ImageSet:
    """A ``path,label`` CSV; paths relative to ``root`` (default: the CSV's folder). Every listed file must exist."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise DataError(f"manifest not found: {manifest}")
    root = Path(root) if root is not None else manifest.parent
    _check_root(root)
    listed = read_manifest(manifest)
    missing = [rel for rel in listed if not (root / rel).is_file()]
    if missing:
        raise DataError(f"{manifest} lists {root / missing[0]}, which does not exist{_more(missing)}")
    samples = sorted((Sample(rel, label) for rel, label in listed.items()), key=lambda s: s.relpath)
    return ImageSet(
        root=root, samples=samples, layout="manifest", classes=imagenet_synsets(), label_source=str(manifest)
    )


def scan_unlabelled(root: str | os.PathLike) -> ImageSet:
    """Every image under ``root`` (nested or flat, any names), label -1: the ``images`` layout, for jobs that need
    no labels. Folders that cannot be listed are recorded in ``unreadable``, as in the labelled layouts."""
    root = Path(root)
    _check_root(root)
    if not _entries(root):
        raise DataError(f"data directory {root} is empty")
    problems: list[tuple[str, str]] = []
    samples = [Sample(rel, -1) for rel in _walk_images(root, root, problems)]
    _check_found(root, samples, problems)
    samples.sort(key=lambda s: s.relpath)
    return ImageSet(
        root=root, samples=samples, layout="images", classes=imagenet_synsets(), unreadable=problems, has_labels=False
    )


def detect_layout(root: Path, labels: Path | None = None) -> str:
    """The layout of ``root``: a store (shards, parquet/arrow files, their patterns and info files), else a manifest
    (given or found in the folder), then class folders (WordNet ids or integers), then images at the top level
    (flat). An unlabelled folder is not detected here: it opens as ``images`` only where labels are not needed."""
    from .stores import resolve_store

    store = resolve_store(root)
    if store is not None:
        return store.layout
    root = Path(root)
    if root.is_file():
        if root.suffix.lower() == ".csv":
            return "manifest"
        raise DataError(f"data path is not a directory: {root}")
    _check_root(root)
    if labels is not None and label_file_kind(labels) == "manifest":
        return "manifest"
    if _manifests_in(root):
        return "manifest"
    folders = _class_folders(root)
    top = _top_images(root)
    if folders:
        if all(WNID.match(f) for f in folders):
            return "imagefolder"
        if all(f.isdigit() for f in folders):
            return "imagenetv2"
        if not top:
            odd = [f for f in folders if not WNID.match(f) and not f.isdigit()]
            raise DataError(
                f"cannot tell the layout of {root}: folder {odd[0]} is neither a WordNet id nor a class index "
                "(use --layout, or --labels with a manifest)"
            )
    if top:
        return "flat"
    if not _entries(root):
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
    """
    if layout not in LAYOUTS:
        raise DataError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if layout in ("auto", *STORE_LAYOUTS):
        from .stores import resolve_store, scan_store

        store = resolve_store(root, layout, split)
        if store is not None:
            if labels is not None:
                raise DataError(f"--labels applies to the flat and manifest layouts; {store.layout} stores hold labels")
            return scan_store(store, label_key, require_labels)
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
        return _scan_labelled(root, layout, labels)
    except DataError as e:
        # An unlabelled folder opens as `images` only when labels are not needed and nothing asked for them; a
        # path that is missing, not a folder or empty stays the error it is.
        if require_labels or layout != "auto" or labels is not None or not root.is_dir() or not _entries(root):
            raise
        original = e
    try:
        return scan_unlabelled(root)
    except DataError:
        raise original from None


def _scan_labelled(root: Path, layout: str, labels: str | os.PathLike | None) -> ImageSet:
    labels = Path(labels) if labels is not None else None
    if labels is not None and not labels.is_file():
        raise DataError(f"label file not found: {labels}")
    if layout == "auto":
        layout = detect_layout(root, labels)
    if layout == "manifest":
        if labels is not None:
            if label_file_kind(labels) != "manifest":
                raise DataError(f"--labels {labels} is not a manifest (a CSV with a path,label header)")
            return scan_manifest(labels, root)
        if root.is_file():
            return scan_manifest(root)
        _check_root(root)
        found = _manifests_in(root)
        if len(found) != 1:
            what = "no manifest CSV" if not found else f"{len(found)} manifest CSVs"
            raise DataError(f"{what} in {root}: pass the manifest with --labels FILE")
        return scan_manifest(found[0], root)
    if layout == "flat":
        return scan_flat(root, labels)
    if labels is not None:
        raise DataError(f"--labels applies to the flat and manifest layouts; the {layout} layout is labelled by folder")
    if layout == "imagenetv2":
        return scan_imagenetv2(root)
    return scan_imagefolder(root)


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
            f"{image_set.root}{_more(absent)}"
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
) -> ImageSet:
    """Index ``root`` in its layout, keep ``--classes``, apply ``--limit``, and fingerprint the result.

    ``class_names`` is for an ImageFolder that is not ImageNet (the offline demo): its folder names in label order.
    ``root`` may also be a store (``--data 'val-{00..63}.tar'``, ``_info.json``, parquet/arrow files); see ``scan``
    for ``require_labels``, ``label_key`` and ``split``.
    """
    if class_names is not None:
        if layout not in ("auto", "imagefolder") or labels is not None or classes is not None:
            raise DataError("a dataset with its own class names is an ImageFolder without label or class files")
        image_set = scan_imagefolder(root, tuple(class_names))
    else:
        image_set = scan(root, layout, labels, require_labels=require_labels, label_key=label_key, split=split)
    if classes is not None:
        select_classes(image_set, classes)
    if limit is not None:
        image_set.samples = stratified_subset(image_set.samples, limit)
        image_set.limit = limit
    image_set.fingerprint = fingerprint(image_set)
    return image_set
