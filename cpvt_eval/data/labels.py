"""Canonical ImageNet-1k labels and the label files that come with the validation set.

The class index is always the position of the WordNet id in the sorted list of the 1000 ids (0 = n01440764,
999 = n15075141), whatever the file that named the class: a folder, a CSV row or a line number.
"""

from __future__ import annotations

import csv
import posixpath
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from ..errors import DataError

FULL_VAL_IMAGES = 50_000
FULL_VAL_CLASSES = 1000
# ``ILSVRC2012_val_00000001.JPEG``; Hugging Face's imagenet-1k names it ``ILSVRC2012_val_00000001_n01751748.JPEG``
VAL_NAME = re.compile(r"^ILSVRC2012_val_(\d{8})(?:_(n\d{8}))?(\.[A-Za-z0-9]+)?$")
WNID = re.compile(r"^n\d{8}$")
KAGGLE_NAME = "LOC_val_solution.csv"
DEVKIT_NAME = "ILSVRC2012_validation_ground_truth.txt"


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


def val_number(name: str) -> int | None:
    """``ILSVRC2012_val_00000293.JPEG`` (or its stem, or Hugging Face's ``ILSVRC2012_val_00000293_n01751748.JPEG``)
    -> 293; any other name -> None."""
    m = VAL_NAME.match(name)
    if m is None:
        return None
    n = int(m.group(1))
    return n if 1 <= n <= FULL_VAL_IMAGES else None


def val_name_wnid(name: str) -> str | None:
    """The WordNet id a validation file name carries (``ILSVRC2012_val_00000293_n01751748.JPEG``), else None."""
    m = VAL_NAME.match(name)
    return m.group(2) if m is not None else None


def label_of_val_number(n: int) -> int:
    """Canonical index of validation image number ``n`` (1-based) from the shipped synset list."""
    return synset_to_index()[imagenet_val_wnids()[n - 1]]


def parse_label(value: str, where: str) -> int:
    """A label written as a WordNet id or as a canonical index 0..999."""
    value = value.strip()
    if WNID.match(value):
        index = synset_to_index().get(value)
        if index is None:
            raise DataError(f"{where}: {value} is not an ImageNet-1k class (WordNet id)")
        return index
    try:
        index = int(value)
    except ValueError:
        raise DataError(f"{where}: label {value!r} is neither a WordNet id nor a class index") from None
    if not 0 <= index < FULL_VAL_CLASSES:
        raise DataError(f"{where}: class index {index} is outside 0..999")
    return index


def read_wnid_list(path: Path) -> tuple[int, ...]:
    """A ``--classes`` file: one WordNet id per line (blank lines and ``#`` comments ignored) -> indices."""
    lines = _read_lines(path)
    out: list[int] = []
    for i, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if not WNID.match(line):
            raise DataError(f"{path}:{i}: {line!r} is not a WordNet id (e.g. n01440764)")
        index = parse_label(line, f"{path}:{i}")
        if index not in out:
            out.append(index)
    if not out:
        raise DataError(f"class list {path} names no class")
    return tuple(out)


@dataclass(frozen=True)
class LabelFile:
    """A label file after parsing.

    Attributes:
        path: where it was read from.
        kind: ``devkit`` (ILSVRC2012 ground truth), ``kaggle`` (LOC_val_solution.csv) or ``manifest``.
        by_name: for ``kaggle``: image stem -> canonical index; for ``manifest``: relative path -> index;
            for ``devkit``: validation number -> index (checked against the shipped list).
    """

    path: Path
    kind: str
    by_name: dict


def _read_lines(path: Path) -> list[str]:
    if not path.exists():
        raise DataError(f"label file not found: {path}")
    if not path.is_file():
        raise DataError(f"label file is not a file: {path}")
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise DataError(f"label file {path} is not UTF-8 text") from None
    except OSError as e:
        raise DataError(f"cannot read label file {path}: {e.strerror}") from None


def label_file_kind(path: Path) -> str:
    """Tell the three label files apart by their content, not their name."""
    lines = [line for line in _read_lines(path) if line.strip()]
    if not lines:
        raise DataError(f"label file {path} is empty")
    header = [c.strip().lower() for c in lines[0].split(",")]
    if header[:2] == ["imageid", "predictionstring"]:
        return "kaggle"
    if "path" in header and "label" in header:
        return "manifest"
    if all(line.strip().isdigit() for line in lines[:100]):
        return "devkit"
    raise DataError(
        f"unrecognised label file {path}: expected the devkit's {DEVKIT_NAME}, Kaggle's {KAGGLE_NAME} "
        "or a manifest CSV with a path,label header"
    )


def read_label_file(path: str | Path) -> LabelFile:
    path = Path(path)
    kind = label_file_kind(path)
    if kind == "kaggle":
        return LabelFile(path, kind, _read_kaggle(path))
    if kind == "manifest":
        return LabelFile(path, kind, read_manifest(path))
    return LabelFile(path, kind, _read_devkit(path))


def _read_kaggle(path: Path) -> dict[str, int]:
    """``ImageId,PredictionString`` rows; the class is the first WordNet id of the prediction string."""
    out: dict[str, int] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = csv.reader(f)
        next(rows)
        for line_no, row in enumerate(rows, 2):
            if not row or not "".join(row).strip():
                continue
            where = f"{path}:{line_no}"
            if len(row) < 2 or not row[1].split():
                raise DataError(f"{where}: expected ImageId,PredictionString")
            stem = row[0].strip()
            if stem in out:
                raise DataError(f"{where}: {stem} is listed twice")
            out[stem] = parse_label(row[1].split()[0], where)
    return out


def read_manifest(path: Path, parse=parse_label) -> dict[str, int]:
    """``path,label`` rows (header required; extra columns ignored); label as WordNet id or index (``parse``: a
    model's own label space reads its class names and indices, ``LabelSpace.parse_label``)."""
    out: dict[str, int] = {}
    # surrogateescape: a file name that is not UTF-8 comes back as the bytes the filesystem holds
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        rows = csv.DictReader(f)
        fields = [c.strip().lower() for c in rows.fieldnames or []]
        if "path" not in fields or "label" not in fields:
            raise DataError(f"manifest {path} needs a path,label header")
        rows.fieldnames = fields
        for line_no, row in enumerate(rows, 2):
            rel = (row.get("path") or "").strip()
            raw = (row.get("label") or "").strip()
            if not rel and not raw:
                continue
            where = f"{path}:{line_no}"
            if not rel or not raw:
                raise DataError(f"{where}: expected path,label")
            # Normalised before the duplicate check: `./a.JPEG`, `a.JPEG` and `x/../a.JPEG` are one file.
            rel = posixpath.normpath(rel.replace("\\", "/"))
            if rel in out:
                raise DataError(f"{where}: {rel} is listed twice")
            out[rel] = parse(raw, where)
    if not out:
        raise DataError(f"manifest {path} lists no image")
    return out


def _read_devkit(path: Path) -> dict[int, int]:
    """The devkit's ground truth: line i holds the 1-based ILSVRC2012 class id of validation image i.

    Those ids follow the devkit's own class order (meta.mat), not the sorted WordNet ids, so the file cannot be
    used as an index directly. It is checked against the shipped per-image WordNet ids instead: every devkit id
    must name exactly one WordNet id and every WordNet id exactly one devkit id. The labels then come from the
    shipped list, which the check has shown to agree.
    """
    lines = [line.strip() for line in _read_lines(path)]
    while lines and not lines[-1]:
        lines.pop()
    wnids = imagenet_val_wnids()
    if len(lines) != len(wnids):
        raise DataError(f"devkit ground truth {path} has {len(lines)} lines, expected {len(wnids)}")
    ids = []
    for i, line in enumerate(lines, 1):
        if not line.isdigit() or not 1 <= int(line) <= FULL_VAL_CLASSES:
            raise DataError(f"{path}:{i}: {line!r} is not an ILSVRC2012 class id (1..1000)")
        ids.append(int(line))
    # Each id appears 50 times: the majority pairing names the mapping, and a line that departs from it (in either
    # direction) is the one to report, rather than whichever later line first collides with it.
    pairs = Counter(zip(ids, wnids, strict=True))
    id_wnid: dict[int, tuple[int, str]] = {}
    wnid_id: dict[str, tuple[int, int]] = {}
    for (cid, wnid), count in pairs.items():
        if count > id_wnid.get(cid, (0, ""))[0]:
            id_wnid[cid] = (count, wnid)
        if count > wnid_id.get(wnid, (0, 0))[0]:
            wnid_id[wnid] = (count, cid)
    bad = [
        i
        for i, (cid, wnid) in enumerate(zip(ids, wnids, strict=True), 1)
        if id_wnid[cid][1] != wnid or wnid_id[wnid][1] != cid
    ]
    if bad:
        i = bad[0]
        cid, wnid = ids[i - 1], wnids[i - 1]
        raise DataError(
            f"{path}:{i}: ILSVRC2012_val_{i:08d} has class id {cid}, which does not match the shipped labels "
            f"(this image is {wnid}, id {wnid_id[wnid][1]} elsewhere; id {cid} is {id_wnid[cid][1]} elsewhere)"
            + (f"; {len(bad) - 1} more such line(s)" if len(bad) > 1 else "")
        )
    index = synset_to_index()
    return {i: index[wnid] for i, wnid in enumerate(wnids, 1)}


def find_label_file(root: Path) -> Path | None:
    """A Kaggle or devkit label file lying next to flat validation images (in the folder or its parent)."""
    for folder in (root, root.parent):
        for name in (KAGGLE_NAME, DEVKIT_NAME):
            candidate = folder / name
            if candidate.is_file():
                return candidate
    return None
