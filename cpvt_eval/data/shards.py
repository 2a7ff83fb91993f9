"""WebDataset tar shards, indexed in one streaming pass over each shard's headers.

Every member's data offset and size is recorded; only the small label members (``.cls``, ``.json``) are read.
Samples are grouped as webdataset groups them (consecutive members sharing a key); a damaged shard is recorded in
``ImageSet.unreadable``, and the sample at the damage goes with it. Only the standard library reads shards.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from dataclasses import dataclass

from ..errors import DataError, shown
from .image_set import ImageSet, Sample
from .labels import imagenet_synsets
from .store_base import LABEL_COLUMN, StoreSpec, label_value

WDS_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # webdataset's keys, lower case, in timm's order of choice
_MAX_LABEL_MEMBER = 1 << 20  # a .cls / .json member larger than this is not a label
_META_MEMBER = re.compile(r"__[^/]*__($|/)")  # webdataset skips these (metadata members)
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext: key up to the first dot


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
        label, source = label_value(value, f"{where}.json {label_key}"), f"json:{label_key}"
    elif has_cls:
        text = _read_small(f, rel, group.members["cls"]).decode("utf-8", "replace").strip()
        if not re.fullmatch(r"-?\d+", text):
            raise DataError(f"{shown(where)}.cls holds {text[:40]!r}, not a class index")
        label, source = label_value(int(text), f"{where}.cls"), "cls"
    elif LABEL_COLUMN in meta:
        label, source = label_value(meta[LABEL_COLUMN], f"{where}.json label"), f"json:{LABEL_COLUMN}"
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
