"""Checkpoint surgery: safe reading, unwrapping, key layouts, a strict load, and the report of what it did.

Reading never runs code: ``.safetensors`` files are read with safetensors, everything else with
``torch.load(weights_only=True)``; a pickle that needs more than tensors and containers is refused, never
retried unsafely. Loading is strict: a missing, unexpected or mis-shaped key stops the run with the keys listed.
What was renamed, resampled, regenerated or dropped on the way is kept in a ``LoadReport`` stored with the results.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import pickle
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from ..models.introspect import grid_of, pe_kind_of
from ..models.pos_embed import resample_abs_pos_embed
from .cvt_layouts import hf_activation_note, hf_to_release, is_hf_cvt

WRAPPER_KEYS = ("model", "state_dict", "module", "net", "network")
EMA_KEYS = ("model_ema", "state_dict_ema", "ema")
STRIP_PREFIXES = ("module.", "_orig_mod.", "model.")


@dataclass
class LoadReport:
    """What loading a checkpoint did, kept with the results."""

    source: str
    path: str = ""
    sha256: str = ""
    nested_under: str = ""
    ema: bool = False
    stripped_prefixes: list[str] = field(default_factory=list)
    renamed: list[tuple[str, str]] = field(default_factory=list)
    resampled: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    regenerated: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # facts about the load a reader needs (CvT: the activation)
    # the weights' own data config (mean, std, interpolation, crop_pct, source), where the checkpoint carries one
    data_config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        parts = [f"{self.source}"]
        if self.nested_under:
            parts.append(f"under '{self.nested_under}'")
        if self.ema:
            parts.append("EMA weights")
        if self.stripped_prefixes:
            parts.append("stripped " + ", ".join(repr(p) for p in self.stripped_prefixes))
        if self.renamed:
            shown = ", ".join(f"{a} -> {b}" for a, b in self.renamed[:8])
            more = f" (+{len(self.renamed) - 8} more)" if len(self.renamed) > 8 else ""
            parts.append(f"renamed {shown}{more}")
        if self.resampled:
            parts.append("resampled " + ", ".join(self.resampled))
        if self.dropped:
            parts.append("dropped " + ", ".join(self.dropped))
        if self.regenerated:
            parts.append("regenerated " + ", ".join(self.regenerated))
        parts.extend(self.notes)
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
    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
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
    except Exception as e:  # noqa: BLE001 (torch's unpickler fails on arbitrary bytes with any error type)
        # e.g. a text file (IndexError: pop from empty list) or other bytes (KeyError): not a checkpoint at all
        raise CheckpointError(
            f"cannot read checkpoint {path}: not a PyTorch checkpoint ({type(e).__name__} while unpickling)"
        ) from None


def _looks_like_safetensors(path: Path) -> bool:
    """A safetensors file under another name: an 8-byte little-endian header length, then a JSON object."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return False
    if len(head) < 9 or head[8:9] != b"{":
        return False
    n = int.from_bytes(head[:8], "little")
    return 2 <= n <= size - 8


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
        found = _unwrap(obj, EMA_KEYS, took_ema=True)
        if found is None:
            raise CheckpointError(f"--ema asked for EMA weights but the checkpoint has none (keys: {_key_list(obj)})")
        return found
    if _is_state_dict(obj):
        return obj, "", False
    found = _unwrap(obj, WRAPPER_KEYS, took_ema=False) or (_unwrap(obj, EMA_KEYS, True) if ema is None else None)
    if found is None:
        raise CheckpointError(f"no weights found in checkpoint (top-level keys: {_key_list(obj)})")
    return found


def _unwrap(obj: dict, keys: tuple[str, ...], took_ema: bool) -> tuple[dict, str, bool] | None:
    """The state dict under the first of ``keys`` that holds a dict (itself unwrapped, never to EMA weights), with
    the path it was found under; None when no key holds one."""
    for key in keys:
        if isinstance(obj.get(key), dict):
            sd, inner, _ = extract_state_dict(obj[key], ema=False)
            return sd, key + (f".{inner}" if inner else ""), took_ema
    return None


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
    hf_cvt = is_hf_cvt(sd)
    if hf_cvt:
        report.notes.append(hf_activation_note(getattr(model, "act", None)))
    out = {}
    for key, value in sd.items():
        new = key
        if hf_cvt:
            new = hf_to_release(key)
        elif key not in own:
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


def drop_keys(sd: dict[str, torch.Tensor], patterns, report: LoadReport) -> dict[str, torch.Tensor]:
    """Remove the keys matching any of the glob ``patterns`` (asked for by the user); each must match something."""
    if not patterns:
        return sd
    out = dict(sd)
    for pattern in patterns:
        hits = [k for k in out if fnmatch.fnmatchcase(k, pattern)]
        if not hits:
            raise CheckpointError(f"{report.source}: drop={pattern} matches no checkpoint key")
        for k in hits:
            del out[k]
            report.dropped.append(k)
    return out


def _fill_fixed_sincos(sd: dict, model: nn.Module, report: LoadReport) -> dict:
    # A fixed sin-cos table is often a non-persistent buffer in training code, so checkpoints may lack it: it is
    # a function of the grid, not a learned weight, and the model's own table is the right one.
    if "pos_embed" in sd or pe_kind_of(model) != "ape-sincos" or "pos_embed" not in model.state_dict():
        return sd
    sd = dict(sd)
    sd["pos_embed"] = model.state_dict()["pos_embed"].clone()
    report.regenerated.append("pos_embed (fixed 2-D sin-cos, absent from the checkpoint)")
    return sd


def _fill_bn_counters(sd: dict, model: nn.Module, report: LoadReport) -> dict:
    # BatchNorm's ``num_batches_tracked`` only counts training steps; evaluation never reads it (the momentum is
    # set), and release files differ on whether they keep it. Absent, it takes the model's own value (zero).
    # The running mean and variance are weights like any other: absent, the load fails.
    own = model.state_dict()
    absent = [k for k in own if k.endswith(".num_batches_tracked") and k not in sd]
    if not absent:
        return sd
    sd = dict(sd)
    for k in absent:
        sd[k] = own[k].clone()
    report.regenerated.append(f"num_batches_tracked of {len(absent)} BatchNorm layer(s) (absent; unused in eval)")
    return sd


_PEG_INDEX = re.compile(r"^pos_block\.(\d+)\.")


def _peg_hint(model: nn.Module, keys) -> str:
    """When the PEG count differs between checkpoint and model, say which model or option would fit."""
    theirs = sorted({int(m.group(1)) for k in keys if (m := _PEG_INDEX.match(k))})
    positions = getattr(model, "peg_positions", None)
    if positions is None or not theirs or len(theirs) == len(positions):
        return ""
    return (
        f" (the checkpoint has {len(theirs)} PEG(s), the model {len(positions)} at blocks "
        f"{','.join(map(str, positions))}: pick the matching model, e.g. a *_plus one for blocks 0-4, or set "
        f"--model-arg peg_positions=...)"
    )


def load_strict(model: nn.Module, sd: dict[str, torch.Tensor], report: LoadReport, drop=()) -> LoadReport:
    """Load ``sd`` into ``model``; any missing, unexpected or mis-shaped key raises ``CheckpointError``.

    Args:
        drop: glob patterns of checkpoint keys (after prefix stripping) to leave out, by request.
    """
    sd = strip_prefixes(sd, report)
    sd = drop_keys(sd, drop, report)
    sd = rename_keys(sd, model, report)
    sd = _maybe_resample_pos_embed(sd, model, report)
    sd = _fill_fixed_sincos(sd, model, report)
    sd = _fill_bn_counters(sd, model, report)
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    mismatched = sorted(k for k in set(own) & set(sd) if tuple(own[k].shape) != tuple(sd[k].shape))
    head = getattr(model, "head", None)
    if "head.weight" in mismatched and isinstance(head, nn.Linear):
        theirs = sd["head.weight"].shape[0]
        raise CheckpointError(
            f"{report.source}: the checkpoint's head has {theirs} classes, the model expects {head.out_features} "
            f"(set --model-arg num_classes={theirs} to evaluate it as it is)"
        )
    if missing or unexpected or mismatched:
        problems = []
        bn_stats = [k for k in missing if k.endswith((".running_mean", ".running_var"))]
        if bn_stats:
            problems.append(f"missing BatchNorm running statistics {_preview(bn_stats)}")
            missing = [k for k in missing if k not in bn_stats]
        if missing:
            problems.append(f"missing {_preview(missing)}")
        if unexpected:
            problems.append(f"unexpected {_preview(unexpected)}")
        if mismatched:
            shapes = [f"{k} {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}" for k in mismatched]
            problems.append(f"mis-shaped {_preview(shapes)}")
        raise CheckpointError(
            f"{report.source} does not fit {type(model).__name__}: " + "; ".join(problems) + _peg_hint(model, sd)
        )
    model.load_state_dict(sd, strict=True)
    return report


def _preview(items: list[str], n: int = 6) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return f"{len(items)} key(s): " + ", ".join(items[:n]) + more
