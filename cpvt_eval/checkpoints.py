"""Every checkpoint fix-up in one place: safe reading, unwrapping, key layouts, a strict load and its report.

Reading never runs code: ``.safetensors`` files are read with safetensors, everything else with
``torch.load(weights_only=True)``; a pickle that needs more than tensors and containers is refused, never
retried unsafely. Loading is strict: a missing, unexpected or mis-shaped key stops the run with the keys listed.
What was renamed or resampled on the way is kept in a ``LoadReport`` stored with the results.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointError
from .models.posenc import grid_of, resample_abs_pos_embed

WRAPPER_KEYS = ("model", "state_dict", "module", "net", "network")
EMA_KEYS = ("model_ema", "state_dict_ema", "ema")
STRIP_PREFIXES = ("module.", "_orig_mod.", "model.")


@dataclass
class LoadReport:
    """What loading a checkpoint did, kept with the results."""

    source: str
    sha256: str = ""
    nested_under: str = ""
    ema: bool = False
    stripped_prefixes: list[str] = field(default_factory=list)
    renamed: list[tuple[str, str]] = field(default_factory=list)
    resampled: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        parts = [f"{self.source}"]
        if self.nested_under:
            parts.append(f"under '{self.nested_under}'")
        if self.stripped_prefixes:
            parts.append("stripped " + ", ".join(repr(p) for p in self.stripped_prefixes))
        if self.renamed:
            parts.append(f"renamed {len(self.renamed)} keys")
        if self.resampled:
            parts.append("resampled " + ", ".join(self.resampled))
        if self.dropped:
            parts.append("dropped " + ", ".join(self.dropped))
        return "; ".join(parts)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint file without executing code; return the raw object (usually a dict)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"cannot read safetensors checkpoint {path}: {e}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "global" not in str(e).lower():  # not a refused object: the file is simply not a checkpoint
            raise CheckpointError(f"cannot read checkpoint {path}: not a PyTorch checkpoint ({e})") from None
        # weights_only refused an object: loading it would run arbitrary code. Never retried unsafely.
        first = str(e).strip().splitlines()
        detail = next((ln for ln in first if "Unsupported" in ln or "global" in ln.lower()), first[0] if first else "")
        raise CheckpointError(
            f"refusing {path}: it holds objects other than tensors, which could run code when loaded ({detail.strip()})"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {msg}") from None


def extract_state_dict(obj, ema: bool | None = None) -> tuple[dict[str, torch.Tensor], str, bool]:
    """Find the tensor dict inside a training checkpoint.

    Args:
        obj: what ``read_checkpoint`` returned.
        ema: True takes the EMA weights (``model_ema``/``state_dict_ema``) and fails if there are none; False
            never takes them; None takes the plain weights when both exist.

    Returns:
        ``(state_dict, nested_under, took_ema)``.
    """
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint holds a {type(obj).__name__}, not a dict of tensors")
    if ema:
        for key in EMA_KEYS:
            if isinstance(obj.get(key), dict):
                sd, inner, _ = extract_state_dict(obj[key], ema=False)
                return sd, key + (f".{inner}" if inner else ""), True
        raise CheckpointError(f"--ema asked for EMA weights but the checkpoint has none (keys: {_key_list(obj)})")
    if _is_state_dict(obj):
        return obj, "", False
    for key in WRAPPER_KEYS:
        if isinstance(obj.get(key), dict):
            sd, inner, _ = extract_state_dict(obj[key], ema=False)
            return sd, key + (f".{inner}" if inner else ""), False
    if ema is None:
        for key in EMA_KEYS:
            if isinstance(obj.get(key), dict):
                sd, inner, _ = extract_state_dict(obj[key], ema=False)
                return sd, key + (f".{inner}" if inner else ""), True
    raise CheckpointError(f"no weights found in checkpoint (top-level keys: {_key_list(obj)})")


def _is_state_dict(obj: dict) -> bool:
    return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _key_list(obj: dict, n: int = 8) -> str:
    keys = list(obj)
    more = f", ... ({len(keys)} in all)" if len(keys) > n else ""
    return ", ".join(map(str, keys[:n])) + more


def strip_prefixes(sd: dict[str, torch.Tensor], report: LoadReport) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes (DDP ``module.``, ``torch.compile``'s ``_orig_mod.``) present on every key."""
    changed = True
    while changed:
        changed = False
        for prefix in STRIP_PREFIXES:
            if sd and all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix) :]: v for k, v in sd.items()}
                report.stripped_prefixes.append(prefix)
                changed = True
    return sd


# PEG layouts. The canonical key is ``pos_block.K.pos.{weight,bias}`` with K the index of the PEG.
_PEG_PATTERNS = (
    (re.compile(r"^pos_block\.pos\.(weight|bias)$"), r"pos_block.0.pos.\1"),  # paper Algorithm 1, one PEG
    (re.compile(r"^pos_block\.proj\.0\.(weight|bias)$"), r"pos_block.0.pos.\1"),  # Twins PosCNN, one PEG
    (re.compile(r"^pos_block\.(\d+)\.proj\.0\.(weight|bias)$"), r"pos_block.\1.pos.\2"),  # Twins, several
    (re.compile(r"^pos_blocks?\.(\d+)\.pos\.(weight|bias)$"), r"pos_block.\1.pos.\2"),  # several PEGs
)


def rename_keys(sd: dict[str, torch.Tensor], model: nn.Module, report: LoadReport) -> dict[str, torch.Tensor]:
    """Map known foreign layouts onto the model's own key names (only keys the model does not already have)."""
    own = set(model.state_dict())
    out = {}
    for key, value in sd.items():
        new = key
        if key not in own:
            for pattern, repl in _PEG_PATTERNS:
                if pattern.match(key):
                    new = pattern.sub(repl, key)
                    break
        if new != key:
            report.renamed.append((key, new))
        out[new] = value
    return out


def _maybe_resample_pos_embed(sd: dict, model: nn.Module, report: LoadReport) -> dict:
    """A learned pos_embed trained at another grid is resampled to the model's native grid (and reported)."""
    own = model.state_dict().get("pos_embed")
    theirs = sd.get("pos_embed")
    if own is None or theirs is None or own.shape == theirs.shape or own.shape[-1] != theirs.shape[-1]:
        return sd
    num_prefix = 0 if getattr(model, "no_embed_class", False) else int(getattr(model, "num_prefix_tokens", 1))
    n_old = theirs.shape[1] - num_prefix
    side = int(round(n_old**0.5))
    new_grid = grid_of(model)
    if side * side != n_old or new_grid is None:
        return sd
    sd = dict(sd)
    sd["pos_embed"] = resample_abs_pos_embed(theirs, new_grid, (side, side), num_prefix)
    report.resampled.append(f"pos_embed {side}x{side} -> {new_grid[0]}x{new_grid[1]}")
    return sd


def load_strict(model: nn.Module, sd: dict[str, torch.Tensor], report: LoadReport) -> LoadReport:
    """Load ``sd`` into ``model``; any missing, unexpected or mis-shaped key raises ``CheckpointError``."""
    sd = strip_prefixes(sd, report)
    sd = rename_keys(sd, model, report)
    sd = _maybe_resample_pos_embed(sd, model, report)
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    mismatched = sorted(k for k in set(own) & set(sd) if tuple(own[k].shape) != tuple(sd[k].shape))
    head = getattr(model, "head", None)
    if "head.weight" in mismatched and isinstance(head, nn.Linear):
        theirs = sd["head.weight"].shape[0]
        raise CheckpointError(
            f"{report.source}: the checkpoint's head has {theirs} classes, the model expects {head.out_features}"
        )
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"missing {_preview(missing)}")
        if unexpected:
            problems.append(f"unexpected {_preview(unexpected)}")
        if mismatched:
            shapes = [f"{k} {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}" for k in mismatched]
            problems.append(f"mis-shaped {_preview(shapes)}")
        raise CheckpointError(f"{report.source} does not fit {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(sd, strict=True)
    return report


def _preview(items: list[str], n: int = 6) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return f"{len(items)} key(s): " + ", ".join(items[:n]) + more


def load_checkpoint(model: nn.Module, path: str | os.PathLike, ema: bool | None = None) -> LoadReport:
    """Read ``path`` safely and load it strictly into ``model``."""
    report = LoadReport(source=str(path))
    obj = read_checkpoint(path)
    sd, report.nested_under, report.ema = extract_state_dict(obj, ema)
    report.sha256 = file_sha256(path)
    return load_strict(model, sd, report)


def fetch_pretrained(tag: str) -> Path:
    """Download (or find in the hub cache) the weights of a timm pretrained tag; return the local file.

    Fails fast with a clear message when offline or unreachable: the caller should then pass a local file.
    """
    import timm

    cfg = timm.models.get_pretrained_cfg(tag)
    if cfg is None:
        raise CheckpointError(f"timm has no pretrained weights named {tag!r}")
    hint = f"pass a local file with --checkpoint NAME=PATH (timm tag {tag})"
    if cfg.hf_hub_id:
        from huggingface_hub import hf_hub_download

        last = None
        for filename in ("model.safetensors", "pytorch_model.bin"):
            try:
                return Path(hf_hub_download(cfg.hf_hub_id, filename=filename, etag_timeout=10))
            except Exception as e:  # noqa: BLE001  (hub errors are many types; all mean "not available")
                last = e
                if "404" not in str(e) and "EntryNotFound" not in type(e).__name__:
                    break
        reason = str(last).strip().splitlines()[0] if last and str(last).strip() else type(last).__name__
        raise CheckpointError(f"cannot fetch pretrained weights for {tag} from the hub ({reason}); {hint}")
    raise CheckpointError(f"{tag} has no hub-hosted weights; {hint}")
