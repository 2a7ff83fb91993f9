"""What the stores share: the resolved store (``StoreSpec``), the parquet/arrow column names, the reading of a
stored label value, and the wording of their messages."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from .labels import FULL_VAL_CLASSES, parse_label

IMAGE_COLUMN = "image"
LABEL_COLUMN = "label"


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


def layout_files(layout: str) -> str:
    """What a store of ``layout`` is made of, as messages name it (``.tar shards``)."""
    return {"wds": ".tar shards", "parquet": ".parquet files", "arrow": ".arrow files"}[layout]


def label_value(value, where: str) -> int | None:
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
        return label_value(int(value), where)
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"-\d+", text):
            return None
        return parse_label(text, where)
    raise DataError(f"{where}: label {value!r} is neither a class index nor a WordNet id")


def first_line(e: BaseException) -> str:
    """The first line of an error's message (its type's name when it has none), for one-line messages."""
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]
