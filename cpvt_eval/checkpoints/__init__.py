"""Every checkpoint fix-up in one place: where a checkpoint comes from (``sources``) and how it is read, converted
and loaded strictly into a model (``surgery``). ``load_checkpoint`` does all of it and returns a ``LoadReport``;
``load_transformers`` does the same for a transformers folder or hub repo (``transformers_source``,
``transformers_layouts``).
"""

from __future__ import annotations

import os

from torch import nn

from .dataconfig import from_checkpoint, from_timm_tag
from .sources import (
    CheckpointSource,
    check_local,
    download_url,
    fetch,
    fetch_hf_hub,
    fetch_pretrained,
    hub_unreachable,
    is_offline,
    parse_source,
    url_cache_path,
)
from .surgery import LoadReport, extract_state_dict, file_sha256, load_strict, read_checkpoint
from .transformers_source import TransformersRepo, find_transformers, load_transformers


def load_checkpoint(model: nn.Module, source: str | os.PathLike, ema: bool | None = None, drop=()) -> LoadReport:
    """Fetch ``source`` if needed, read it safely and load it strictly into ``model``.

    Args:
        source: a path, URL, ``hf-hub:`` repo or timm tag, optionally with ``#sha256=...&drop=...``.
        ema: see ``extract_state_dict``; the choice is recorded in the report.
        drop: extra glob patterns of keys to drop (added to the ones in the fragment).
    """
    parsed = parse_source(source)
    path = fetch(parsed)
    report = LoadReport(source=parsed.text, path=str(path))
    obj = read_checkpoint(path)
    own = from_timm_tag(parsed.location) if parsed.kind == "timm" else from_checkpoint(path, obj)
    report.data_config = dict(own or {})
    sd, report.nested_under, report.ema = extract_state_dict(obj, ema)
    report.sha256 = file_sha256(path)
    return load_strict(model, sd, report, drop=(*parsed.drop, *drop))


__all__ = [
    "CheckpointSource",
    "LoadReport",
    "TransformersRepo",
    "check_local",
    "download_url",
    "extract_state_dict",
    "fetch",
    "fetch_hf_hub",
    "fetch_pretrained",
    "find_transformers",
    "from_checkpoint",
    "from_timm_tag",
    "file_sha256",
    "hub_unreachable",
    "is_offline",
    "load_checkpoint",
    "load_strict",
    "load_transformers",
    "parse_source",
    "read_checkpoint",
    "url_cache_path",
]
