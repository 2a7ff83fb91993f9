"""Reading a store's image bytes, lazily and per process: ``os.pread`` at a shard member's recorded offset, the
image column of a parquet row group or an arrow record batch.

The open shards and decoded row groups are this process's own (rebuilt after a fork), so ``EvalDataset`` works from
DataLoader worker processes and the ``ImageSet`` stays plain picklable data.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

from ..errors import DataError, shown
from .image_set import ImageSet, Sample
from .parquet_arrow import arrow_batches, import_pyarrow
from .store_base import IMAGE_COLUMN, first_line


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
    pa, pq, _pc = import_pyarrow("parquet files")
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
        pa, _pq, _pc = import_pyarrow("arrow files")
        _schema, it = arrow_batches(pa, Path(path))
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
        raise DataError(f"cannot read {where}: {first_line(e)}") from None
