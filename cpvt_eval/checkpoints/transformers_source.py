"""Where a transformers checkpoint is and how its weights load: a ``save_pretrained`` folder or ``hf-hub:org/name``.

``find_transformers`` reads what is cheap first: ``config.json`` (its ``model_type``, sizes and ``id2label``) and
``preprocessor_config.json`` (the data config), from the folder or the hub (cache first; offline, a repo not in the
cache fails at once), never the weights. ``load_transformers`` then reads the weights: ``model.safetensors``, a
sharded ``model.safetensors.index.json``, or ``pytorch_model.bin`` (``torch.load(weights_only=True)``; its index for
shards), renames them (``transformers_layouts``) and loads them strictly. A sharded checkpoint's sha256 is that of
the list ``shard name<TAB>shard sha256`` (sorted), so that it names the weights whatever the shards' order.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from torch import nn

from ..errors import CheckpointError, ModelError, shown
from .dataconfig import from_preprocessor
from .sources import fetch_hf_hub
from .surgery import LoadReport, extract_state_dict, file_sha256, load_strict, read_checkpoint
from .transformers_layouts import convert

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


@dataclass(frozen=True)
class TransformersRepo:
    """A transformers checkpoint found by name.

    Attributes:
        origin: what the weights are named by in rows: the folder as given, or ``hf-hub:org/name``.
        folder: the local folder of ``config.json`` (for a hub repo, its snapshot in the hub cache).
        config: ``config.json``; ``processor``: ``preprocessor_config.json``, or None without one.
        repo: ``org/name`` of a hub repo, else empty.
    """

    origin: str
    folder: Path
    config: dict
    processor: dict | None = None
    repo: str = ""

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type"))

    def data_config(self) -> dict | None:
        """The weights' data config from ``preprocessor_config.json`` (``dataconfig.from_preprocessor``)."""
        if self.processor is None:
            return None
        return from_preprocessor(self.processor, f"preprocessor_config.json of {self.origin}")


def _read_json(path: Path, what: str) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"cannot read {what} {shown(path)}: {e}") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{what} {shown(path)} is not a JSON object")
    return doc


def _hub_file(repo: str, name: str) -> Path | None:
    """A file of a hub repo (hub cache first), or None when the repo has no such file or it cannot be had."""
    try:
        return fetch_hf_hub(repo, name)
    except CheckpointError:
        return None


def _checked(config: dict, origin: str, path: Path) -> dict:
    if "model_type" in config:
        return config
    arch = config.get("architecture")
    if isinstance(arch, str):  # a timm hub repo: its config.json names the timm architecture
        repo = origin.removeprefix("hf-hub:")
        raise ModelError(
            f"{origin} holds timm weights ({arch}), not a transformers model: evaluate them as -m {arch} "
            f"-c hf-hub:{repo}"
        )
    raise ModelError(f"{shown(path)} has no model_type: not a transformers config.json")


def find_transformers(name: str) -> TransformersRepo | None:
    """The transformers checkpoint ``name`` names: a folder holding ``config.json``, or ``hf-hub:org/name`` whose
    ``config.json`` has a ``model_type``; None when ``name`` is neither (a model name, a timm tag)."""
    text = str(name).strip()
    if text.lower().startswith("hf-hub:"):
        repo = text[len("hf-hub:") :].strip("/")
        if repo.count("/") != 1:
            raise ModelError(f"--model {text}: expected hf-hub:org/name")
        return _find_hub(repo)
    folder = Path(text)
    if not (folder.is_dir() and (folder / "config.json").is_file()):
        return None
    config = _checked(_read_json(folder / "config.json", "config.json"), text, folder / "config.json")
    processor_path = folder / "preprocessor_config.json"
    processor = _read_json(processor_path, "preprocessor_config.json") if processor_path.is_file() else None
    return TransformersRepo(text.rstrip("/") or text, folder, config, processor)


@lru_cache(maxsize=32)
def _find_hub(repo: str) -> TransformersRepo:
    """A hub repo's configs, fetched once per process (a run resolves its models several times; each hub request
    costs a round trip). A repo that cannot be had raises, and is asked again next time."""
    # fails at once offline when the repo is not cached (fetch_hf_hub's local_files_only)
    path = fetch_hf_hub(repo, "config.json")
    origin = f"hf-hub:{repo}"
    config = _checked(_read_json(path, "config.json"), origin, path)
    processor_path = _hub_file(repo, "preprocessor_config.json")
    processor = _read_json(processor_path, "preprocessor_config.json") if processor_path else None
    return TransformersRepo(origin, path.parent, config, processor, repo)


def _locate(repo: TransformersRepo, name: str) -> Path | None:
    if repo.repo:
        return _hub_file(repo.repo, name)
    path = repo.folder / name
    return path if path.is_file() else None


def weight_files(repo: TransformersRepo) -> tuple[str, list[Path], set[str] | None]:
    """``(the file that names the weights, the files that hold them, the keys an index lists)``: the first of
    ``WEIGHT_FILES`` there is, its shards when it is an index (None: not an index)."""
    for name in WEIGHT_FILES:
        path = _locate(repo, name)
        if path is None:
            continue
        if not name.endswith(".index.json"):
            return name, [path], None
        index = _read_json(path, "weight index")
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{shown(path)} has no weight_map")
        shards = []
        for shard in sorted(set(map(str, weight_map.values()))):
            if "/" in shard or "\\" in shard or shard.startswith("."):
                raise CheckpointError(f"{shown(path)} names a shard outside its folder: {shard!r}")
            found = _locate(repo, shard)
            if found is None:
                raise CheckpointError(f"{repo.origin}: shard {shard} of {name} is missing")
            shards.append(found)
        return name, shards, set(map(str, weight_map))
    where = "in the hub cache or on the hub" if repo.repo else f"in {repo.folder}"
    raise CheckpointError(f"{repo.origin}: no weights ({', '.join(WEIGHT_FILES)}) {where}")


def _read_weights(name: str, files: list[Path], listed: set[str] | None) -> dict:
    sd: dict = {}
    for path in files:
        part, _, _ = extract_state_dict(read_checkpoint(path), ema=False)
        twice = sorted(set(part) & set(sd))
        if twice:
            raise CheckpointError(f"{shown(path)}: {twice[0]} is in two shards of {name}")
        sd.update(part)
    if listed is not None and listed != set(sd):
        gap = sorted(listed ^ set(sd))
        raise CheckpointError(f"{name}: the index and its shards disagree on {gap[0]}")
    return sd


def _sha256(files: list[Path]) -> str:
    if len(files) == 1:
        return file_sha256(files[0])
    lines = "".join(f"{p.name}\t{file_sha256(p)}\n" for p in sorted(files, key=lambda p: p.name))
    return hashlib.sha256(lines.encode()).hexdigest()


def load_transformers(module: nn.Module, repo: TransformersRepo) -> LoadReport:
    """Read ``repo``'s weights, rename them onto ``module`` (built from its config) and load them strictly."""
    name, files, listed = weight_files(repo)
    source = f"{repo.origin}/{name}"
    report = LoadReport(source=source, path=str(files[0]) if len(files) == 1 else str(files[0].parent))
    report.data_config = dict(repo.data_config() or {})
    report.sha256 = _sha256(files)
    if len(files) > 1:
        report.notes.append(f"{len(files)} shards")
    sd = convert(_read_weights(name, files, listed), repo.model_type, module, source, report)
    return load_strict(module, sd, report)
