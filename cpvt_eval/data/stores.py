"""ImageNet as it is stored at scale: WebDataset tar shards and Hugging Face parquet / arrow files, read in place.

* ``wds``: POSIX tar shards of WebDataset samples (``KEY.jpg`` + ``KEY.cls`` or ``KEY.json``), given as a brace
  pattern (``val-{00..63}.tar``, ``{a,b}``, several patterns joined by ``::``), a glob, a folder of ``*.tar``, one
  shard, or timm's ``_info.json`` (its split's ``filenames``, checked against its ``shard_lengths``);
* ``parquet``: parquet files (one, a folder of them, a pattern) with an ``image`` column (the ``datasets`` Image
  struct of ``bytes`` and ``path``, or plain binary) and a ``label`` column;
* ``arrow``: a ``datasets`` ``save_to_disk`` folder (arrow stream files, ``state.json``, ``dataset_info.json``;
  a ``DatasetDict`` folder picks its split), or arrow files.

The index is built once in the calling process: a streaming scan of each shard's tar headers (the data offset
and size of every member; only the small label members are read), or the label, path and byte-length columns of
each parquet row group / arrow batch. Images are then read by their bytes (``os.pread`` at the recorded offset,
the row group's column), lazily and per process, so ``EvalDataset`` works from DataLoader worker processes and
the ``ImageSet`` stays plain picklable data. Image bytes are never re-encoded.

Only the standard library reads shards; ``pyarrow`` (the ``hf`` extra) is imported when a parquet/arrow store is
opened.
"""

from __future__ import annotations

import glob as globlib
import json
import os
import re
import tarfile
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from ..errors import DataError, shown
from .labels import FULL_VAL_CLASSES, WNID, imagenet_synsets, parse_label
from .layouts import ImageSet, Sample

STORE_LAYOUTS = ("wds", "parquet", "arrow")
WDS_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # webdataset's keys, lower case, in timm's order of choice
SPLIT_NAMES = ("train", "validation", "val", "test")
IMAGE_COLUMN = "image"
LABEL_COLUMN = "label"
_INFO_NAMES = ("_info.json", "info.json")
_HF_DIR_FILES = ("dataset_info.json", "state.json", "dataset_dict.json")
_MAX_LABEL_MEMBER = 1 << 20  # a .cls / .json member larger than this is not a label
_MAX_EXPANSION = 1_000_000
_META_MEMBER = re.compile(r"__[^/]*__($|/)")  # webdataset skips these (metadata members)
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext: key up to the first dot


def hf_extra_missing(what: str) -> DataError:
    return DataError(f"reading {what} needs pyarrow, which is not installed: pip install 'cpvt-eval[hf]'")


def _pyarrow(what: str = "Hugging Face parquet/arrow files"):
    """``(pyarrow, pyarrow.parquet, pyarrow.compute)``, or a one-line DataError naming the extra to install."""
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
    except ImportError:
        raise hf_extra_missing(what) from None
    return pa, pq, pc


# --- which files: patterns, folders, info files ---------------------------------------------------------------


def expand_braces(pattern: str) -> list[str]:
    """Brace expansion as webdataset (``braceexpand``) does it: ``{00..63}`` (zero-padded when a bound is),
    ``{a,b,c}``, nested groups; a group that is neither stays as it is."""
    start = pattern.find("{")
    while start != -1:
        depth = 0
        for end in range(start, len(pattern)):
            if pattern[end] == "{":
                depth += 1
            elif pattern[end] == "}":
                depth -= 1
                if depth == 0:
                    break
        else:
            return [pattern]  # unbalanced: literal
        inner = pattern[start + 1 : end]
        alts = _brace_alternatives(inner)
        if alts is None:  # a literal group: keep it, expand what follows
            head = pattern[: end + 1]
            return [head + rest for rest in expand_braces(pattern[end + 1 :])]
        rests = expand_braces(pattern[end + 1 :])
        if len(alts) * len(rests) > _MAX_EXPANSION:
            raise DataError(f"--data pattern {shown(pattern)} expands to more than {_MAX_EXPANSION:,} files")
        return [pattern[:start] + a + r for a in alts for r in rests]
    return [pattern]


def _brace_alternatives(inner: str) -> list[str] | None:
    parts, depth, cur = [], 0, []
    for ch in inner:
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur.append(ch)
    parts.append("".join(cur))
    if len(parts) > 1:
        return [x for p in parts for x in expand_braces(p)]
    m = re.fullmatch(r"(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?", inner)
    if m is None:
        return None
    a, b = int(m.group(1)), int(m.group(2))
    step = abs(int(m.group(3) or 1)) or 1
    if abs(b - a) // step + 1 > _MAX_EXPANSION:
        raise DataError(f"brace range {{{inner}}} expands to more than {_MAX_EXPANSION:,} names")
    padded = any(g.lstrip("-").startswith("0") and len(g.lstrip("-")) > 1 for g in m.groups()[:2])
    width = max(len(m.group(1)), len(m.group(2))) if padded else 0
    values = range(a, b + 1, step) if a <= b else range(a, b - 1, -step)
    return [f"{v:0{width}d}" if width else str(v) for v in values]


@dataclass(frozen=True)
class StoreSpec:
    """What ``--data`` named, resolved: the layout, the folder sample paths are relative to, the files.

    Attributes:
        layout: ``wds``, ``parquet`` or ``arrow``.
        root: the common folder of ``files``.
        files: the shards / files, relative to ``root``, in reading order.
        spec: ``--data`` as given.
        split: the split chosen from an info file or a folder of several splits ("" when none was chosen).
        shard_lengths: samples per file as an info file states them (checked), else empty.
        alt_label: the ``_info.json`` split's ``alt_label`` (timm: the json field that holds the label).
        hf_info: ``dataset_info.json`` of a ``save_to_disk`` folder (its features name the classes), if any.
    """

    layout: str
    root: Path
    files: tuple[str, ...]
    spec: str
    split: str = ""
    shard_lengths: tuple[int, ...] = ()
    alt_label: str = ""
    hf_info: dict | None = None


_SUFFIX_LAYOUT = {".tar": "wds", ".parquet": "parquet", ".arrow": "arrow"}


def _layout_of_file(path: str) -> str | None:
    return _SUFFIX_LAYOUT.get(os.path.splitext(path)[1].lower())


def _is_pattern(text: str) -> bool:
    return "{" in text or "::" in text or any(c in text for c in "*?[")


def _expand_spec(text: str) -> list[str]:
    out: list[str] = []
    for part in text.split("::"):
        if not part:
            continue
        for name in expand_braces(part):
            if any(c in name for c in "*?[") and not os.path.exists(name):
                matches = sorted(globlib.glob(name))
                if not matches:
                    raise DataError(f"no file matches {shown(name)}")
                out.extend(matches)
            else:
                out.append(name)
    return out


def _common_root(paths: list[Path]) -> tuple[Path, tuple[str, ...]]:
    parents = [os.path.abspath(p.parent) for p in paths]
    root = Path(os.path.commonpath(parents))
    return root, tuple(os.path.relpath(os.path.abspath(p), root).replace(os.sep, "/") for p in paths)


def _split_of(rel: str) -> str | None:
    """The split a file name announces (``imagenet1k-validation-0003.tar``, ``data/val-00001-of-00004.parquet``)."""
    parts = rel.split("/")
    for text in (parts[-1], *(parts[-2:-1])):
        for token in re.split(r"[-_.]", text.lower()):
            if token in SPLIT_NAMES:
                return "validation" if token == "val" else token
    return None


def _choose_split(where: Path, files: list[Path], split: str | None, what: str) -> tuple[list[Path], str]:
    """A folder holding the files of several splits: the ``split`` asked for, else ``validation``."""
    by_split: dict[str, list[Path]] = {}
    for f in files:
        by_split.setdefault(_split_of(f.name if f.parent == where else str(f.relative_to(where))) or "", []).append(f)
    named = sorted(k for k in by_split if k)
    wanted = None if split is None else ("validation" if split == "val" else split)
    if wanted is not None:
        if wanted not in by_split:
            raise DataError(f"{where} holds no {what} of split {split!r} (splits found: {', '.join(named) or 'none'})")
        return by_split[wanted], wanted
    if len(by_split) <= 1:
        return files, ""
    if "validation" in by_split:
        return by_split["validation"], "validation"
    raise DataError(
        f"{where} holds {what} of several splits ({', '.join(named)}): pass one, e.g. --data "
        f"'{shown(where)}/*{named[0]}*{os.path.splitext(files[0].name)[1]}'"
    )


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise DataError(f"cannot read {what} {shown(path)}: {e.strerror or e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{what} {shown(path)} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise DataError(f"{what} {shown(path)} is not a JSON object")
    return data


def _from_info_json(path: Path, spec: str, split: str | None) -> StoreSpec:
    """timm's ``_info.json``: ``{"splits": {"validation": {"filenames": [...], "shard_lengths": [...], ...}}}``."""
    info = _read_json(path, "shard info file")
    splits = info.get("splits")
    if not isinstance(splits, dict) or not splits:
        raise DataError(f"shard info file {shown(path)} has no 'splits' (timm's _info.json format)")
    if split is not None:
        name = split if split in splits else ("validation" if split == "val" and "validation" in splits else None)
        if name is None:
            raise DataError(f"{shown(path)} has no split {split!r} (splits: {', '.join(map(str, splits))})")
    elif "validation" in splits:
        name = "validation"
    elif len(splits) == 1:
        name = next(iter(splits))
    else:
        raise DataError(f"{shown(path)} holds several splits ({', '.join(map(str, splits))}): name one with --split")
    entry = splits[name]
    filenames = entry.get("filenames") if isinstance(entry, dict) else None
    if not isinstance(filenames, list) or not filenames or not all(isinstance(f, str) for f in filenames):
        raise DataError(f"{shown(path)}: split {name!r} lists no shard filenames")
    lengths = entry.get("shard_lengths") or ()
    if lengths and (len(lengths) != len(filenames) or not all(isinstance(n, int) for n in lengths)):
        raise DataError(f"{shown(path)}: split {name!r} has {len(lengths)} shard_lengths for {len(filenames)} shards")
    paths = [path.parent / f for f in filenames]
    _check_exist(paths, f"listed in {shown(path)}")
    root, rels = _common_root(paths)
    alt = entry.get("alt_label") or ""
    return StoreSpec("wds", root, rels, spec, str(name), tuple(lengths), alt if isinstance(alt, str) else "")


def _check_exist(paths: list[Path], how: str) -> None:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"shard/file {shown(missing[0])} {how} does not exist{more}")


def _from_hf_dir(folder: Path, spec: str, split: str | None) -> StoreSpec:
    """A ``datasets`` ``save_to_disk`` folder (``state.json`` names its arrow files), or a DatasetDict's."""
    if (folder / "dataset_dict.json").is_file() and not (folder / "state.json").is_file():
        splits = _read_json(folder / "dataset_dict.json", "dataset dict").get("splits") or []
        if split is not None:
            name = split if split in splits else ("validation" if split == "val" else split)
        elif "validation" in splits:
            name = "validation"
        elif len(splits) == 1:
            name = splits[0]
        else:
            raise DataError(f"{shown(folder)} holds several splits ({', '.join(splits)}): name one with --split")
        if name not in splits or not (folder / name).is_dir():
            raise DataError(f"{shown(folder)} has no split {name!r} (splits: {', '.join(splits) or 'none'})")
        inner = _from_hf_dir(folder / name, spec, None)
        return StoreSpec("arrow", inner.root, inner.files, spec, name, hf_info=inner.hf_info)
    state = _read_json(folder / "state.json", "dataset state")
    data_files = state.get("_data_files") or []
    names = [d.get("filename") for d in data_files if isinstance(d, dict)]
    if not names or not all(isinstance(n, str) for n in names):
        raise DataError(f"{shown(folder / 'state.json')} lists no arrow files (_data_files)")
    paths = [folder / n for n in names]
    _check_exist(paths, f"listed in {shown(folder / 'state.json')}")
    info_path = folder / "dataset_info.json"
    info = _read_json(info_path, "dataset info") if info_path.is_file() else None
    return StoreSpec("arrow", folder, tuple(names), spec, split or "", hf_info=info)


def _store_files_in(folder: Path, layout: str) -> dict[str, list[Path]]:
    """The store files at the top of ``folder`` (and, for parquet, under ``data/`` as a hub snapshot has them)."""
    found: dict[str, list[Path]] = {k: [] for k in STORE_LAYOUTS}
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as e:
        raise DataError(f"cannot read data directory {shown(folder)}: {e.strerror or e}") from None
    for e in entries:
        kind = _layout_of_file(e.name)
        if kind is not None and not e.name.startswith(".") and _safe_is_file(e):
            found[kind].append(Path(e.path))
    if not found["parquet"] and (layout == "parquet" or not any(found.values())):
        sub = folder / "data"
        pattern = "**/*.parquet" if layout == "parquet" else "*.parquet"
        base = folder if layout == "parquet" else sub
        if base.is_dir():
            found["parquet"] = sorted(p for p in base.glob(pattern) if p.is_file() and not p.name.startswith("."))
    return found


def _safe_is_file(e: os.DirEntry) -> bool:
    try:
        return e.is_file()
    except OSError:
        return False


def _folder_looks_labelled(folder: Path) -> bool:
    """Class folders (WordNet ids or integers) or images at the top: a folder layout, whatever tars lie beside."""
    from .layouts import _is_image

    try:
        with os.scandir(folder) as it:
            for e in it:
                if e.name.startswith("."):
                    continue
                if _is_image(e.name):
                    return True
                try:
                    is_dir = e.is_dir()
                except OSError:
                    continue
                if is_dir and (WNID.match(e.name) or e.name.isdigit()):
                    return True
    except OSError:
        return False
    return False


def resolve_store(data: str | os.PathLike, layout: str = "auto", split: str | None = None) -> StoreSpec | None:
    """The store ``data`` names, or None when it is a folder (or CSV) for the folder layouts.

    Args:
        data: a brace pattern / glob / ``::`` list of shards or files; a folder of them; one shard or file; timm's
            ``_info.json``; a ``save_to_disk`` folder (or its ``dataset_info.json`` / ``state.json``).
        layout: ``auto`` or one of ``STORE_LAYOUTS`` (which kind of files a folder is searched for).
        split: the split of an info file, a DatasetDict, or a folder that holds several (default ``validation``).
    """
    text = os.fsdecode(data)
    path = Path(text)
    if path.is_file():
        name = path.name.lower()
        kind = _layout_of_file(name)
        if kind is not None:
            _check_kind(kind, layout, path)
            root, rels = _common_root([path])
            return StoreSpec(kind, root, rels, text, split or "")
        if name in _HF_DIR_FILES:
            _check_kind("arrow", layout, path)
            return _from_hf_dir(path.parent, text, split)
        if name.endswith(".json"):
            _check_kind("wds", layout, path)
            return _from_info_json(path, text, split)
        if layout in STORE_LAYOUTS:
            raise DataError(f"{shown(path)} is not a {layout} file (expected {_expected(layout)})")
        return None
    if path.is_dir():
        if layout in ("auto", "arrow") and any((path / n).is_file() for n in ("state.json", "dataset_dict.json")):
            return _from_hf_dir(path, text, split)
        if layout in ("auto", "wds"):
            for n in _INFO_NAMES:
                if (path / n).is_file():
                    return _from_info_json(path / n, text, split)
        if layout == "auto" and _folder_looks_labelled(path):
            return None
        found = _store_files_in(path, layout)
        kinds = [k for k in STORE_LAYOUTS if found[k]] if layout == "auto" else [layout]
        if layout == "auto" and len(kinds) > 1:
            listed = ", ".join(f"{len(found[k])} {_expected(k)}" for k in kinds)
            raise DataError(f"{shown(path)} holds {listed}: pick one with --layout or a pattern as --data")
        if not kinds or not found[kinds[0]]:
            if layout in STORE_LAYOUTS:
                raise DataError(f"no {_expected(layout)} in {shown(path)}")
            return None
        kind = kinds[0]
        files, chosen = _choose_split(path, found[kind], split, _expected(kind))
        root, rels = _common_root(files)
        return StoreSpec(kind, root, rels, text, chosen)
    if not _is_pattern(text):
        if layout in STORE_LAYOUTS:
            raise DataError(f"data path not found: {shown(text)}")
        return None
    names = _expand_spec(text)
    if not names:
        raise DataError(f"--data pattern {shown(text)} names no file")
    paths = [Path(n) for n in names]
    kinds = {_layout_of_file(n) for n in names}
    if None in kinds or len(kinds) > 1:
        first = _layout_of_file(names[0])
        odd = next(n for n in names if _layout_of_file(n) != first or first is None)
        raise DataError(
            f"--data pattern {shown(text)} names {shown(odd)}: name files of one kind (.tar, .parquet, .arrow)"
        )
    kind = kinds.pop()
    _check_kind(kind, layout, paths[0])
    _check_exist(paths, f"(from {shown(text)})")
    if len(set(map(os.path.abspath, names))) != len(names):
        dup = next(n for i, n in enumerate(names) if os.path.abspath(n) in map(os.path.abspath, names[:i]))
        raise DataError(f"--data pattern {shown(text)} names {shown(dup)} twice")
    root, rels = _common_root(paths)
    return StoreSpec(kind, root, rels, text, split or "")


def _expected(layout: str) -> str:
    return {"wds": ".tar shards", "parquet": ".parquet files", "arrow": ".arrow files"}[layout]


def _check_kind(kind: str, layout: str, path: Path) -> None:
    if layout not in ("auto", kind):
        raise DataError(f"{shown(path)} is a {kind} store, not {layout} (use --layout {kind} or auto)")


# --- labels ---------------------------------------------------------------------------------------------------


def _label_value(value, where: str) -> int | None:
    """A stored label: an int (negative = none, as timm and ``datasets`` write it), or a WordNet id / index text."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise DataError(f"{where}: label {value!r} is not a class index")
    if isinstance(value, int):
        if value < 0:
            return None
        if value >= FULL_VAL_CLASSES:
            raise DataError(f"{where}: class index {value} is outside 0..999")
        return value
    if isinstance(value, float) and value.is_integer():
        return _label_value(int(value), where)
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"-\d+", text):
            return None
        return parse_label(text, where)
    raise DataError(f"{where}: label {value!r} is neither a class index nor a WordNet id")


def _json_field(meta: dict, key: str):
    """``meta[key]``, with ``a.b`` descending into objects; a KeyError when absent."""
    if key in meta:
        return meta[key]
    node = meta
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


@lru_cache(maxsize=1)
def imagenet_lemmas() -> tuple[str, ...]:
    """The human names of the 1000 classes in canonical order (timm's ``imagenet_synset_to_lemma.txt``), the names
    Hugging Face's ``imagenet-1k`` ClassLabel carries (``"tench, Tinca tinca"``)."""
    try:
        text = resources.files("timm.data").joinpath("_info", "imagenet_synset_to_lemma.txt").read_text("utf-8")
    except (FileNotFoundError, ModuleNotFoundError, OSError):
        raise DataError(
            "the installed timm does not ship imagenet_synset_to_lemma.txt, which the class names of this dataset "
            "are checked against"
        ) from None
    lemma = dict(line.split("\t", 1) for line in text.splitlines() if "\t" in line)
    return tuple(lemma.get(w, "").strip() for w in imagenet_synsets())


def check_class_names(names, where: str, column: str = LABEL_COLUMN) -> str:
    """Check a dataset's ClassLabel names against the canonical order; return what they were (``WordNet ids`` or
    ``names``). A mismatch is an error naming the first index that differs."""
    names = [str(n).strip() for n in names]
    synsets = imagenet_synsets()
    wnids = all(WNID.match(n) for n in names)
    reference = synsets if wnids else imagenet_lemmas()
    for i, (got, want) in enumerate(zip(names, reference, strict=False)):
        if got != want:
            canonical = synsets[i] if wnids else f"{synsets[i]} ({want!r})"
            raise DataError(
                f"{where}: class {i} of the {column!r} column is {got!r}, but canonical ImageNet-1k class {i} is "
                f"{canonical}: the labels are not the canonical index"
            )
    if len(names) != FULL_VAL_CLASSES:
        raise DataError(
            f"{where}: the {column!r} column names {len(names)} classes, ImageNet-1k has {FULL_VAL_CLASSES} "
            "(the labels must be the canonical ImageNet-1k index)"
        )
    return "WordNet ids" if wnids else "names"


def _class_names_in(features, column: str) -> list | None:
    if not isinstance(features, dict):
        return None
    feature = features.get(column)
    if isinstance(feature, dict) and feature.get("_type") == "ClassLabel" and isinstance(feature.get("names"), list):
        return feature["names"]
    return None


def _hf_features_from_metadata(metadata) -> dict | None:
    raw = (metadata or {}).get(b"huggingface")
    if raw is None:
        return None
    try:
        info = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return (info.get("info") or {}).get("features") if isinstance(info, dict) else None


# --- WebDataset shards ----------------------------------------------------------------------------------------


@dataclass
class _Group:
    key: str
    members: dict  # lower-case extension -> (member name, data offset, size)


def _iter_shard_members(f, rel: str, size: int, problems: list) -> tuple[list[tuple[str, int, int]], bool]:
    """``(name, data offset, size)`` of the regular members of one shard, and whether it read to its end."""
    out: list[tuple[str, int, int]] = []
    try:
        tf = tarfile.open(fileobj=f, mode="r:")
    except (tarfile.TarError, OSError, ValueError) as e:
        problems.append((rel, f"not a readable tar shard: {_tar_reason(e, size)}"))
        return out, False
    while True:
        try:
            m = tf.next()
        except (tarfile.TarError, OSError, ValueError, EOFError) as e:
            last = f" after member {out[-1][0]}" if out else ""
            problems.append((rel, f"truncated or corrupt tar{last}: {_tar_reason(e, size)}"))
            return out, False
        if m is None:
            break
        tf.members = []  # one pass: keep no TarInfo list
        if m.issparse():
            problems.append((f"{rel}/{m.name}", "sparse tar member (its bytes cannot be read in place)"))
            continue
        if not m.isreg():
            continue
        if m.offset_data + m.size > size:
            problems.append((rel, f"truncated tar: member {m.name} ends past the end of the file"))
            return out, False
        out.append((m.name, m.offset_data, m.size))
    end = tf.offset
    # tarfile ends silently at a header it cannot parse or at the end of the file; a whole shard ends with the
    # end-of-archive marker (zero blocks). Anything else is a shard cut short or damaged after its last member.
    f.seek(end)
    block = f.read(tarfile.BLOCKSIZE)
    if len(block) < tarfile.BLOCKSIZE or block.count(0) != tarfile.BLOCKSIZE:
        last = f" after member {out[-1][0]}" if out else ""
        why = "no end-of-archive marker" if len(block) < tarfile.BLOCKSIZE else "an unreadable header"
        problems.append((rel, f"truncated or corrupt tar{last}: {why} at byte {end}"))
        return out, False
    return out, True


def _tar_reason(e: BaseException, size: int) -> str:
    if size == 0:
        return "empty file (0 bytes)"
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def _group_members(rel: str, members: list[tuple[str, int, int]], problems: list) -> list[_Group]:
    """webdataset's grouping: consecutive members with the same key form one sample; the extension (lower case)
    names the field; ``__meta__`` members and names without an extension are not sample members."""
    groups: list[_Group] = []
    for name, offset, size in members:
        if _META_MEMBER.match(name) or ("/" not in name and name.startswith("__") and name.endswith("__")):
            continue
        m = _KEY_EXT.match(name)
        if m is None:
            continue
        key, ext = m.group(1), m.group(2).lower()
        if not groups or groups[-1].key != key:
            groups.append(_Group(key, {}))
        group = groups[-1]
        if ext in group.members:
            problems.append((f"{rel}/{name}", f"a second .{ext} member for key {key} (webdataset refuses this)"))
            group.members[ext] = None
            continue
        group.members[ext] = (name, offset, size)
    return groups


def _read_small(f, rel: str, member: tuple[str, int, int]) -> bytes:
    name, offset, size = member
    if size > _MAX_LABEL_MEMBER:
        raise DataError(f"{shown(rel)}/{shown(name)}: {size:,} bytes is too large for a label member")
    f.seek(offset)
    data = f.read(size)
    if len(data) != size:
        raise DataError(f"{shown(rel)}/{shown(name)}: the shard ends inside this member")
    return data


def _wds_sample(
    f, rel: str, group: _Group, label_key: str | None, require_labels: bool
) -> tuple[Sample | None, str | None]:
    """One webdataset sample -> ``Sample`` (and what labelled it), or None for a key that holds no sample."""
    images = [ext for ext in WDS_IMAGE_EXTENSIONS if group.members.get(ext)]
    has_cls, has_json = bool(group.members.get("cls")), bool(group.members.get("json"))
    where = f"{rel}/{group.key}"
    if not images:
        if has_cls or has_json:
            listed = ", ".join(f".{e}" for e in group.members)
            raise DataError(
                f"sample {shown(where)} has a label but no image member ({listed}; images are .jpg, "
                ".jpeg, .png or .webp)"
            )
        return None, None
    name, offset, size = group.members[images[0]]
    meta: dict = {}
    if has_json:
        raw = _read_small(f, rel, group.members["json"])
        try:
            meta = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise DataError(f"{shown(where)}.json is not valid JSON: {e}") from None
        if not isinstance(meta, dict):
            raise DataError(f"{shown(where)}.json is not a JSON object")
    label, source = None, None
    if label_key:
        if not has_json:
            raise DataError(f"sample {shown(where)} has no .json member, which --label-key {label_key!r} reads")
        try:
            value = _json_field(meta, label_key)
        except KeyError:
            raise DataError(
                f"{shown(where)}.json has no field {label_key!r} (fields: {', '.join(sorted(meta)) or 'none'})"
            ) from None
        label, source = _label_value(value, f"{where}.json {label_key}"), f"json:{label_key}"
    elif has_cls:
        text = _read_small(f, rel, group.members["cls"]).decode("utf-8", "replace").strip()
        if not re.fullmatch(r"-?\d+", text):
            raise DataError(f"{shown(where)}.cls holds {text[:40]!r}, not a class index")
        label, source = _label_value(int(text), f"{where}.cls"), "cls"
    elif LABEL_COLUMN in meta:
        label, source = _label_value(meta[LABEL_COLUMN], f"{where}.json label"), f"json:{LABEL_COLUMN}"
    if label is None and require_labels:
        what = "a negative (missing) label" if source else "no label (.cls, or a .json 'label' field)"
        raise DataError(f"sample {shown(where)}.{name.rsplit('.', 1)[-1]} has {what}")
    filename = meta.get("filename") if isinstance(meta.get("filename"), str) and meta.get("filename") else name
    sample = Sample(f"{rel}/{name}", -1 if label is None else label, filename=filename, loc=(rel, offset, size))
    return sample, (source if label is not None else None)


def scan_wds(store: StoreSpec, label_key: str | None = None, require_labels: bool = True) -> ImageSet:
    """Index WebDataset shards: one streaming pass over each shard's headers, reading only the label members."""
    samples: list[Sample] = []
    problems: list[tuple[str, str]] = []
    sources: set[str] = set()
    label_key = label_key or store.alt_label or None
    for i, rel in enumerate(store.files):
        path = store.root / rel
        try:
            f = open(path, "rb")  # noqa: SIM115 (closed below; an unreadable shard is a recorded problem)
        except OSError as e:
            problems.append((rel, f"cannot read: {e.strerror or e}"))
            continue
        with f:
            size = os.fstat(f.fileno()).st_size
            members, whole = _iter_shard_members(f, rel, size, problems)
            groups = _group_members(rel, members, problems)
            if not whole and groups:
                groups.pop()  # the sample at the damage may be incomplete: it goes with the damage
            n_before = len(samples)
            for group in groups:
                if None in group.members.values():
                    continue  # a duplicate member, recorded above
                sample, source = _wds_sample(f, rel, group, label_key, require_labels)
                if sample is not None:
                    samples.append(sample)
                    if source:
                        sources.add(source)
            found = len(samples) - n_before
            if whole and store.shard_lengths and found != store.shard_lengths[i]:
                problems.append((rel, f"holds {found} samples, the info file says {store.shard_lengths[i]}"))
    if not samples and not problems:
        raise DataError(f"no samples (KEY.jpg/.png/.webp members) in the shards of {shown(store.spec)}")
    labelled = bool(samples) and all(s.label >= 0 for s in samples)
    return ImageSet(
        root=store.root,
        samples=samples,
        layout="wds",
        classes=imagenet_synsets(),
        label_source=", ".join(sorted(sources)) if labelled else "",
        unreadable=problems,
        has_labels=labelled,
        spec=store.spec,
        split=store.split,
    )


# --- Hugging Face parquet / arrow -----------------------------------------------------------------------------


def _image_kind(pa, field, where: str) -> str:
    t = field.type
    if pa.types.is_struct(t):
        names = [t.field(i).name for i in range(t.num_fields)]
        if "bytes" not in names:
            raise DataError(f"{where}: the {field.name!r} column is a struct without 'bytes' ({', '.join(names)})")
        return "struct"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "binary"
    raise DataError(f"{where}: the {field.name!r} column holds {t}, not image bytes (a struct of bytes/path, binary)")


def _columns(pa, schema, where: str, label_col: str, require_labels: bool) -> tuple[str, bool]:
    names = schema.names
    if IMAGE_COLUMN not in names:
        raise DataError(f"{where} has no {IMAGE_COLUMN!r} column (columns: {', '.join(names)})")
    kind = _image_kind(pa, schema.field(IMAGE_COLUMN), where)
    if label_col not in names:
        if require_labels:
            raise DataError(
                f"{where} has no label column {label_col!r} (columns: {', '.join(names)}; --label-key names another)"
            )
        return kind, False
    return kind, True


def _batch_rows(pa, pc, table_or_batch, kind: str, label_col: str | None):
    """``(byte lengths, paths, labels)`` of the rows of one row group / record batch."""
    col = table_or_batch.column(IMAGE_COLUMN)
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    data = col.field("bytes") if kind == "struct" else col
    lengths = pc.binary_length(data).to_pylist()
    paths = col.field("path").to_pylist() if kind == "struct" and col.type.get_field_index("path") >= 0 else None
    labels = table_or_batch.column(label_col).to_pylist() if label_col else None
    return lengths, paths, labels


def _hf_samples(rel, group, base_row, global_row, lengths, paths, labels, where_label, require_labels, out) -> bool:
    """Append one row group's / batch's samples to ``out``; True when every row had a label.

    A row is named ``FILE[row N]`` (N counts from 0 in its file); its name (``Sample.filename``) is the image's
    stored path, else ``row M`` with M counted over all the files, so that it does not depend on the split.
    """
    all_labelled = True
    for j, size in enumerate(lengths):
        row = base_row + j
        where = f"{rel}[row {row}]"
        label = None
        if labels is not None:
            label = _label_value(labels[j], f"{where} {where_label}")
        if label is None:
            all_labelled = False
            if require_labels:
                raise DataError(f"{shown(where)} has no label (null or negative {where_label!r})")
        path = (paths[j] if paths is not None else None) or ""
        out.append(
            Sample(
                where,
                -1 if label is None else label,
                filename=path or f"row {global_row + j}",
                loc=(rel, group, row - base_row, -1 if size is None else size),
            )
        )
    return all_labelled


def scan_parquet(store: StoreSpec, label_key: str | None = None, require_labels: bool = True) -> ImageSet:
    """Index parquet files: per row group, the label and image path columns and the image byte lengths."""
    pa, pq, pc = _pyarrow("parquet files")
    label_col = label_key or LABEL_COLUMN
    samples: list[Sample] = []
    problems: list[tuple[str, str]] = []
    labelled, names_kind = True, set()
    total = 0  # rows of the files before this one: names rows without a path
    for rel in store.files:
        path = store.root / rel
        where = shown(path)
        try:
            pf = pq.ParquetFile(path)
            schema = pf.schema_arrow
        except (OSError, pa.ArrowException, ValueError) as e:
            problems.append((rel, f"not a readable parquet file: {_first_line(e)}"))
            continue
        kind, has_label = _columns(pa, schema, where, label_col, require_labels)
        labelled &= has_label
        names = _class_names_in(_hf_features_from_metadata(schema.metadata), label_col) if has_label else None
        if names is not None:
            names_kind.add(check_class_names(names, where, label_col))
        columns = [IMAGE_COLUMN] + ([label_col] if has_label else [])
        base = 0
        with pf:
            for g in range(pf.num_row_groups):
                n_rows = pf.metadata.row_group(g).num_rows
                try:
                    t = pf.read_row_group(g, columns=columns, use_threads=False)
                    lengths, paths, labels = _batch_rows(pa, pc, t, kind, label_col if has_label else None)
                except (OSError, pa.ArrowException, ValueError) as e:
                    problems.append(
                        (f"{rel}[row group {g}]", f"cannot read rows {base}..{base + n_rows - 1}: {_first_line(e)}")
                    )
                    base += n_rows
                    continue
                labelled &= _hf_samples(
                    rel, g, base, total + base, lengths, paths, labels, label_col, require_labels, samples
                )
                base += n_rows
        total += base
    return _hf_image_set(store, "parquet", samples, problems, labelled, label_col, names_kind)


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def _open_arrow(pa, path: Path):
    """The record batches of an arrow file (``datasets`` writes the IPC stream format; the file format works too),
    memory-mapped: nothing is copied."""
    source = pa.memory_map(str(path), "r")
    try:
        return pa.ipc.open_stream(source)
    except pa.ArrowInvalid:
        source.seek(0)
        reader = pa.ipc.open_file(source)
        return (reader.get_batch(i) for i in range(reader.num_record_batches)), reader.schema


def _arrow_batches(pa, path: Path):
    """``(schema, iterator of batches)`` of one arrow file."""
    opened = _open_arrow(pa, path)
    if isinstance(opened, tuple):
        batches, schema = opened
        return schema, batches
    return opened.schema, iter(opened)


def scan_arrow(store: StoreSpec, label_key: str | None = None, require_labels: bool = True) -> ImageSet:
    """Index arrow files (memory-mapped): per record batch, the label and path columns and the byte lengths."""
    pa, _pq, pc = _pyarrow("arrow files")
    label_col = label_key or LABEL_COLUMN
    samples: list[Sample] = []
    problems: list[tuple[str, str]] = []
    labelled, names_kind = True, set()
    info_names = _class_names_in((store.hf_info or {}).get("features"), label_col)
    total = 0
    for rel in store.files:
        path = store.root / rel
        where = shown(path)
        try:
            schema, batches = _arrow_batches(pa, path)
        except (OSError, pa.ArrowException, ValueError) as e:
            problems.append((rel, f"not a readable arrow file: {_first_line(e)}"))
            continue
        kind, has_label = _columns(pa, schema, where, label_col, require_labels)
        labelled &= has_label
        names = _class_names_in(_hf_features_from_metadata(schema.metadata), label_col) or info_names
        if has_label and names is not None:
            names_kind.add(check_class_names(names, where, label_col))
        base, b = 0, 0
        while True:
            try:
                batch = next(batches, None)
                if batch is None:
                    break
                lengths, paths, labels = _batch_rows(pa, pc, batch, kind, label_col if has_label else None)
            except (OSError, pa.ArrowException, ValueError) as e:
                problems.append(
                    (
                        f"{rel}[batch {b}]",
                        f"cannot read record batch {b} (rows from {base} on are lost): {_first_line(e)}",
                    )
                )
                break
            labelled &= _hf_samples(
                rel, b, base, total + base, lengths, paths, labels, label_col, require_labels, samples
            )
            base += len(lengths)
            b += 1
        total += base
    return _hf_image_set(store, "arrow", samples, problems, labelled, label_col, names_kind)


def _hf_image_set(store, layout, samples, problems, labelled, label_col, names_kind) -> ImageSet:
    if not samples and not problems:
        raise DataError(f"no rows in the {_expected(layout)} of {shown(store.spec)}")
    labelled = labelled and bool(samples)
    source = ""
    if labelled:
        source = f"column:{label_col}" + (f" (class {'/'.join(sorted(names_kind))} checked)" if names_kind else "")
    return ImageSet(
        root=store.root,
        samples=samples,
        layout=layout,
        classes=imagenet_synsets(),
        label_source=source,
        unreadable=problems,
        has_labels=labelled,
        spec=store.spec,
        split=store.split,
    )


def scan_store(store: StoreSpec, label_key: str | None = None, require_labels: bool = True) -> ImageSet:
    scanner = {"wds": scan_wds, "parquet": scan_parquet, "arrow": scan_arrow}[store.layout]
    return scanner(store, label_key, require_labels)


# --- reading image bytes, lazily, per process -----------------------------------------------------------------


class _Handles:
    """Open shards and decoded row groups of this process (rebuilt after a fork: nothing is shared)."""

    MAX_FDS = 64
    MAX_GROUP_BYTES = 256 << 20

    def __init__(self):
        self.pid = os.getpid()
        self.fds: OrderedDict[str, int] = OrderedDict()
        self.groups: OrderedDict[tuple, tuple[object, int]] = OrderedDict()
        self.group_bytes = 0
        self.arrow: OrderedDict[str, list] = OrderedDict()
        self.files: OrderedDict[str, object] = OrderedDict()

    def close(self) -> None:
        for fd in self.fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds.clear()
        self.groups.clear()
        self.arrow.clear()
        self.files.clear()
        self.group_bytes = 0


_handles: _Handles | None = None


def _h() -> _Handles:
    global _handles
    if _handles is None or _handles.pid != os.getpid():
        # a fork's copy: its fds are the parent's (pread is safe on them, but a fresh set keeps ownership plain)
        _handles = _Handles()
    return _handles


def close_handles() -> None:
    """Close the shards this process holds open (tests, long-lived processes switching datasets)."""
    if _handles is not None and _handles.pid == os.getpid():
        _handles.close()


def _fd(path: str) -> int:
    h = _h()
    fd = h.fds.get(path)
    if fd is not None:
        h.fds.move_to_end(path)
        return fd
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    h.fds[path] = fd
    while len(h.fds) > h.MAX_FDS:
        _, old = h.fds.popitem(last=False)
        os.close(old)
    return fd


def read_shard_bytes(path: str, offset: int, size: int, limit: int | None = None) -> bytes:
    """``size`` bytes (at most ``limit``) at ``offset`` of a shard; an OSError or a short read is the caller's."""
    want = size if limit is None else min(size, limit)
    fd = _fd(path)
    data = os.pread(fd, want, offset)
    while len(data) < want:
        more = os.pread(fd, want - len(data), offset + len(data))
        if not more:
            raise OSError(f"the shard ends {want - len(data)} bytes before the end of this member")
        data += more
    return data


def _parquet_group(path: str, group: int):
    h = _h()
    key = ("parquet", path, group)
    hit = h.groups.get(key)
    if hit is not None:
        h.groups.move_to_end(key)
        return hit[0]
    pa, pq, _pc = _pyarrow("parquet files")
    pf = h.files.get(path)
    if pf is None:
        pf = h.files[path] = pq.ParquetFile(path)
        while len(h.files) > 16:
            h.files.popitem(last=False)
    table = pf.read_row_group(group, columns=[IMAGE_COLUMN], use_threads=False)
    col = table.column(IMAGE_COLUMN).combine_chunks()
    data = col.field("bytes") if pa.types.is_struct(col.type) else col
    nbytes = data.nbytes
    h.groups[key] = (data, nbytes)
    h.group_bytes += nbytes
    while len(h.groups) > 1 and h.group_bytes > h.MAX_GROUP_BYTES:
        _, (_, n) = h.groups.popitem(last=False)
        h.group_bytes -= n
    return data


def _arrow_file_batches(path: str) -> list:
    h = _h()
    batches = h.arrow.get(path)
    if batches is None:
        pa, _pq, _pc = _pyarrow("arrow files")
        _schema, it = _arrow_batches(pa, Path(path))
        batches = []
        for batch in it:
            col = batch.column(IMAGE_COLUMN)
            batches.append(col.field("bytes") if pa.types.is_struct(col.type) else col)
        h.arrow[path] = batches
        while len(h.arrow) > 16:
            h.arrow.popitem(last=False)
    return batches


def read_store_bytes(image_set: ImageSet, sample: Sample, limit: int | None = None) -> bytes:
    """The stored bytes of one sample of a store (at most ``limit`` of a shard member: enough to identify it).

    Raises DataError naming the sample when they cannot be read.
    """
    layout = image_set.layout
    where = shown(image_set.root / sample.relpath)
    try:
        if layout == "wds":
            rel, offset, size = sample.loc
            return read_shard_bytes(str(image_set.root / rel), offset, size, limit)
        rel, group, row, _size = sample.loc
        path = str(image_set.root / rel)
        column = _parquet_group(path, group) if layout == "parquet" else _arrow_file_batches(path)[group]
        value = column[row]
        if not value.is_valid:
            raise DataError(f"{where}: the row holds no image bytes (null)")
        return value.as_py()
    except DataError:
        raise
    except Exception as e:  # OSError, ArrowException: one line naming the sample
        raise DataError(f"cannot read {where}: {_first_line(e)}") from None
