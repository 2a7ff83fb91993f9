"""Hugging Face parquet and arrow files, indexed by the label, image path and image byte-length columns of each
parquet row group / arrow record batch; the ClassLabel names they record are checked against the canonical order,
or, for a model with its own classes, mapped onto its label space by name (``label_space``).

``pyarrow`` (the ``hf`` extra) is imported when a parquet/arrow store is opened, never before.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

from ..errors import DataError, shown
from .image_set import ImageSet, Sample
from .labels import FULL_VAL_CLASSES, WNID, imagenet_synsets
from .store_base import IMAGE_COLUMN, LABEL_COLUMN, StoreSpec, first_line, label_value, layout_files


def hf_extra_missing(what: str) -> DataError:
    return DataError(f"reading {what} needs pyarrow, which is not installed: pip install 'cpvt-eval[hf]'")


def import_pyarrow(what: str = "Hugging Face parquet/arrow files"):
    """``(pyarrow, pyarrow.parquet, pyarrow.compute)``, or a one-line DataError naming the extra to install."""
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
    except ImportError:
        raise hf_extra_missing(what) from None
    return pa, pq, pc


# --- class names ----------------------------------------------------------------------------------------------


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


# --- the index ------------------------------------------------------------------------------------------------


def _image_kind(pa, image_field, where: str) -> str:
    t = image_field.type
    if pa.types.is_struct(t):
        names = [t.field(i).name for i in range(t.num_fields)]
        if "bytes" not in names:
            raise DataError(
                f"{where}: the {image_field.name!r} column is a struct without 'bytes' ({', '.join(names)})"
            )
        return "struct"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "binary"
    raise DataError(
        f"{where}: the {image_field.name!r} column holds {t}, not image bytes (a struct of bytes/path, binary)"
    )


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


@dataclass
class _RowIndex:
    """What a scan of parquet or arrow files gathers, file after file.

    Attributes:
        label_col: the column that holds the label.
        require_labels: a row without a label is an error (else its label is -1).
        samples: the rows indexed so far.
        problems: ``(where, reason)`` of every file, row group or batch that cannot be read.
        labelled: every file so far had the label column and every row a label.
        names_kind: what the checked ClassLabel names were (``WordNet ids``, ``names``).
        total: the rows of the files before the current one: names rows without a path.
    """

    label_col: str
    require_labels: bool
    samples: list[Sample] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)
    labelled: bool = True
    names_kind: set[str] = field(default_factory=set)
    total: int = 0
    remap: list[int] | None = None  # the current file's ClassLabel index -> the model's class index

    def add(self, rel: str, group: int, base_row: int, lengths, paths, labels) -> None:
        """Add the samples of one row group / batch, whose first row is row ``base_row`` of file ``rel``.

        A row is named ``FILE[row N]`` (N counts from 0 in its file); its name (``Sample.filename``) is the image's
        stored path, else ``row M`` with M counted over all the files, so that it does not depend on the split.
        """
        for j, size in enumerate(lengths):
            row = base_row + j
            where = f"{rel}[row {row}]"
            label = None
            if labels is not None:
                label = label_value(labels[j], f"{where} {self.label_col}")
                if label is not None and self.remap is not None:
                    if label >= len(self.remap):
                        raise DataError(f"{shown(where)}: label {label} is not a class of its ClassLabel feature")
                    label = self.remap[label]
            if label is None:
                self.labelled = False
                if self.require_labels:
                    raise DataError(f"{shown(where)} has no label (null or negative {self.label_col!r})")
            path = (paths[j] if paths is not None else None) or ""
            self.samples.append(
                Sample(
                    where,
                    -1 if label is None else label,
                    filename=path or f"row {self.total + base_row + j}",
                    loc=(rel, group, row - base_row, -1 if size is None else size),
                )
            )

    def image_set(self, store: StoreSpec, layout: str) -> ImageSet:
        if not self.samples and not self.problems:
            raise DataError(f"no rows in the {layout_files(layout)} of {shown(store.spec)}")
        labelled = self.labelled and bool(self.samples)
        source = ""
        if labelled:
            checked = f" (class {'/'.join(sorted(self.names_kind))} checked)" if self.names_kind else ""
            source = f"column:{self.label_col}{checked}"
        return ImageSet(
            root=store.root,
            samples=self.samples,
            layout=layout,
            classes=imagenet_synsets(),
            label_source=source,
            unreadable=self.problems,
            has_labels=labelled,
            spec=store.spec,
            split=store.split,
        )


def _scan_files(
    store: StoreSpec,
    layout: str,
    label_key: str | None,
    require_labels: bool,
    open_file: Callable,
    class_names: Callable,
    read_rows: Callable,
    space=None,
) -> ImageSet:
    """What the parquet and arrow scans share: each file opened (one that cannot be is recorded), its image and label
    columns and its class names checked, then its rows indexed.

    Args:
        open_file: ``(pa, pq, path) -> (schema, reader)``.
        class_names: ``(store, schema, label column, has the label column) -> ClassLabel names or None``.
        read_rows: ``(pa, pc, reader, rel, image column kind, label column or None, index) -> rows read``; adds the
            rows to the ``_RowIndex`` and records in it what cannot be read.
    """
    pa, pq, pc = import_pyarrow(f"{layout} files")
    index = _RowIndex(label_key or LABEL_COLUMN, require_labels)
    for rel in store.files:
        path = store.root / rel
        where = shown(path)
        try:
            schema, reader = open_file(pa, pq, path)
        except (OSError, pa.ArrowException, ValueError) as e:
            index.problems.append((rel, f"not a readable {layout} file: {first_line(e)}"))
            continue
        kind, has_label = _columns(pa, schema, where, index.label_col, require_labels)
        index.labelled &= has_label
        names = class_names(store, schema, index.label_col, has_label)
        index.remap = None
        if has_label and names is not None and space is not None and not space.imagenet:
            # the store's classes, by name, onto the model's: never by the order the store lists them in
            what = f"{where}: the {index.label_col!r} ClassLabel"
            index.remap = [
                space.lookup(str(n).strip(), f"{what} class {i} ({str(n).strip()!r})") for i, n in enumerate(names)
            ]
            index.names_kind.add("names mapped by name")
        elif has_label and names is not None:
            index.names_kind.add(check_class_names(names, where, index.label_col))
        rows = read_rows(pa, pc, reader, rel, kind, index.label_col if has_label else None, index)
        index.total += rows
    return index.image_set(store, layout)


# --- parquet --------------------------------------------------------------------------------------------------


def scan_parquet(store: StoreSpec, label_key: str | None = None, require_labels: bool = True, space=None) -> ImageSet:
    """Index parquet files: per row group, the label and image path columns and the image byte lengths."""
    return _scan_files(
        store, "parquet", label_key, require_labels, _open_parquet, _parquet_names, _read_row_groups, space
    )


def _open_parquet(pa, pq, path: Path):
    pf = pq.ParquetFile(path)
    return pf.schema_arrow, pf


def _parquet_names(store: StoreSpec, schema, label_col: str, has_label: bool) -> list | None:
    """The ClassLabel names of the file's ``huggingface`` metadata, read only when the file has the label column."""
    return _class_names_in(_hf_features_from_metadata(schema.metadata), label_col) if has_label else None


def _read_row_groups(pa, pc, pf, rel: str, kind: str, label_col: str | None, index: _RowIndex) -> int:
    """Index a parquet file row group by row group; a row group that cannot be read is recorded and its rows
    skipped. Returns the rows of the file."""
    columns = [IMAGE_COLUMN] + ([label_col] if label_col else [])
    base = 0
    with pf:
        for g in range(pf.num_row_groups):
            n_rows = pf.metadata.row_group(g).num_rows
            try:
                t = pf.read_row_group(g, columns=columns, use_threads=False)
                lengths, paths, labels = _batch_rows(pa, pc, t, kind, label_col)
            except (OSError, pa.ArrowException, ValueError) as e:
                index.problems.append(
                    (f"{rel}[row group {g}]", f"cannot read rows {base}..{base + n_rows - 1}: {first_line(e)}")
                )
                base += n_rows
                continue
            index.add(rel, g, base, lengths, paths, labels)
            base += n_rows
    return base


# --- arrow ----------------------------------------------------------------------------------------------------


def scan_arrow(store: StoreSpec, label_key: str | None = None, require_labels: bool = True, space=None) -> ImageSet:
    """Index arrow files (memory-mapped): per record batch, the label and path columns and the byte lengths."""
    return _scan_files(store, "arrow", label_key, require_labels, _open_arrow_file, _arrow_names, _read_batches, space)


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


def arrow_batches(pa, path: Path):
    """``(schema, iterator of batches)`` of one arrow file."""
    opened = _open_arrow(pa, path)
    if isinstance(opened, tuple):
        batches, schema = opened
        return schema, batches
    return opened.schema, iter(opened)


def _open_arrow_file(pa, _pq, path: Path):
    return arrow_batches(pa, path)


def _arrow_names(store: StoreSpec, schema, label_col: str, has_label: bool) -> list | None:
    """The ClassLabel names of the file's ``huggingface`` metadata, else of the ``save_to_disk`` folder's
    ``dataset_info.json``."""
    names = _class_names_in(_hf_features_from_metadata(schema.metadata), label_col)
    return names or _class_names_in((store.hf_info or {}).get("features"), label_col)


def _read_batches(pa, pc, batches, rel: str, kind: str, label_col: str | None, index: _RowIndex) -> int:
    """Index an arrow file batch by batch; a batch that cannot be read is recorded with the rows after it, which are
    lost. Returns the rows indexed."""
    base, b = 0, 0
    while True:
        try:
            batch = next(batches, None)
            if batch is None:
                break
            lengths, paths, labels = _batch_rows(pa, pc, batch, kind, label_col)
        except (OSError, pa.ArrowException, ValueError) as e:
            index.problems.append(
                (
                    f"{rel}[batch {b}]",
                    f"cannot read record batch {b} (rows from {base} on are lost): {first_line(e)}",
                )
            )
            break
        index.add(rel, b, base, lengths, paths, labels)
        base += len(lengths)
        b += 1
    return base
