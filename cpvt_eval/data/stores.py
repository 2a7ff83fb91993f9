"""ImageNet as it is stored at scale, read in place: which store ``--data`` names, and the scan of each kind.

* ``wds``: POSIX tar shards of WebDataset samples (``KEY.jpg`` + ``KEY.cls`` or ``KEY.json``), given as a brace
  pattern (``val-{00..63}.tar``, ``{a,b}``, several patterns joined by ``::``), a glob, a folder of ``*.tar``, one
  shard, or timm's ``_info.json`` (its split's ``filenames``, checked against its ``shard_lengths``);
* ``parquet``: parquet files (one, a folder of them, a pattern) with an ``image`` column (the ``datasets`` Image
  struct of ``bytes`` and ``path``, or plain binary) and a ``label`` column;
* ``arrow``: a ``datasets`` ``save_to_disk`` folder (arrow stream files, ``state.json``, ``dataset_info.json``;
  a ``DatasetDict`` folder picks its split), or arrow files.

The index is built once in the calling process (``shards``: a streaming scan of each shard's tar headers;
``parquet_arrow``: the label, path and byte-length columns of each row group / record batch). Images are then read
by their bytes, lazily and per process (``store_reads``), so ``EvalDataset`` works from DataLoader worker processes
and the ``ImageSet`` stays plain picklable data. Image bytes are never re-encoded.

Only the standard library reads shards; ``pyarrow`` (the ``hf`` extra) is imported when a parquet/arrow store is
opened.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..errors import DataError, shown
from .image_set import STORE_LAYOUTS, ImageSet, is_image_name
from .labels import WNID
from .parquet_arrow import scan_arrow, scan_parquet
from .shards import scan_wds
from .store_base import StoreSpec, layout_files
from .store_patterns import expand_spec, is_pattern

SPLIT_NAMES = ("train", "validation", "val", "test")
_INFO_NAMES = ("_info.json", "info.json")
_HF_DIR_FILES = ("dataset_info.json", "state.json", "dataset_dict.json")
_SUFFIX_LAYOUT = {".tar": "wds", ".parquet": "parquet", ".arrow": "arrow"}


def _layout_of_file(path: str) -> str | None:
    return _SUFFIX_LAYOUT.get(os.path.splitext(path)[1].lower())


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
    try:
        with os.scandir(folder) as it:
            for e in it:
                if e.name.startswith("."):
                    continue
                if is_image_name(e.name):
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
            raise DataError(f"{shown(path)} is not a {layout} file (expected {layout_files(layout)})")
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
            listed = ", ".join(f"{len(found[k])} {layout_files(k)}" for k in kinds)
            raise DataError(f"{shown(path)} holds {listed}: pick one with --layout or a pattern as --data")
        if not kinds or not found[kinds[0]]:
            if layout in STORE_LAYOUTS:
                raise DataError(f"no {layout_files(layout)} in {shown(path)}")
            return None
        kind = kinds[0]
        files, chosen = _choose_split(path, found[kind], split, layout_files(kind))
        root, rels = _common_root(files)
        return StoreSpec(kind, root, rels, text, chosen)
    if not is_pattern(text):
        if layout in STORE_LAYOUTS:
            raise DataError(f"data path not found: {shown(text)}")
        return None
    names = expand_spec(text)
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


def _check_kind(kind: str, layout: str, path: Path) -> None:
    if layout not in ("auto", kind):
        raise DataError(f"{shown(path)} is a {kind} store, not {layout} (use --layout {kind} or auto)")


def scan_store(store: StoreSpec, label_key: str | None = None, require_labels: bool = True, space=None) -> ImageSet:
    """Index a store; with a model's own label space (``space``), parquet/arrow ``ClassLabel`` names are mapped onto
    it by name, and integer labels (shards' ``.cls``, unnamed columns) are taken as its indices."""
    if store.layout == "wds":
        image_set = scan_wds(store, label_key, require_labels)
    else:
        image_set = {"parquet": scan_parquet, "arrow": scan_arrow}[store.layout](
            store, label_key, require_labels, space
        )
    if space is not None:
        image_set.classes = space.names
    return image_set
