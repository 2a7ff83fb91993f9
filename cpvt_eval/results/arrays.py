"""A cell's per-image arrays as safetensors files, written and read without a copy of the whole on the heap.

``safetensors_chunks`` lays the arrays out as the safetensors format has them (an 8-byte little-endian header
length, the JSON header, the raw little-endian data, contiguous) and returns the pieces to write: the header and a
view of each array, so that a writer streams them to disk, even from a memory-mapped array, instead of building the
file in memory first. ``map_arrays`` reads a stored file back as read-only memory maps: a cell's softmax over 21,000
classes for 50,000 images (4.3 GB) is then served by the page cache, a batch at a time, never loaded whole. The
files are ordinary safetensors files; ``safetensors.numpy.load_file`` reads them too.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

# numpy dtype -> safetensors dtype name
_NAMES = {
    "bool": "BOOL",
    "uint8": "U8",
    "int8": "I8",
    "int16": "I16",
    "uint16": "U16",
    "int32": "I32",
    "uint32": "U32",
    "int64": "I64",
    "uint64": "U64",
    "float16": "F16",
    "float32": "F32",
    "float64": "F64",
}
_DTYPES = {v: np.dtype(k) for k, v in _NAMES.items()}


def safetensors_chunks(arrays: dict[str, np.ndarray]) -> list:
    """The pieces of a safetensors file of ``arrays``: its header, then a zero-copy view of each array's bytes."""
    header, views, offset = {}, [], 0
    for name in sorted(arrays):
        a = np.asarray(arrays[name])
        if not a.flags.c_contiguous:
            a = np.ascontiguousarray(a)
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        kind = _NAMES.get(a.dtype.name)
        if kind is None:
            raise ValueError(f"array {name!r}: dtype {a.dtype} has no safetensors name")
        header[name] = {"dtype": kind, "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        views.append(memoryview(a.reshape(-1).view(np.uint8)) if a.size else b"")
        offset += a.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors' own writer does
    return [struct.pack("<Q", len(text)) + text, *views]


def map_arrays(path: str | Path, names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """The arrays of a safetensors file as read-only memory maps (``names``: only those)."""
    path = Path(path)
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    start = 8 + length
    out = {}
    for name, spec in header.items():
        if name == "__metadata__" or (names is not None and name not in names):
            continue
        begin, end = spec["data_offsets"]
        dtype, shape = _DTYPES[spec["dtype"]], tuple(spec["shape"])
        if end == begin:
            out[name] = np.empty(shape, dtype=dtype)
        else:
            out[name] = np.memmap(path, dtype=dtype, mode="r", offset=start + begin, shape=shape)
    return out
