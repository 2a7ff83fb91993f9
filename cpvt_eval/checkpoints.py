"""Every checkpoint fix-up in one place: sources, safe reading, unwrapping, key layouts, a strict load, its report.

Sources: a local file; an ``https://`` URL downloaded once into the user cache dir (``#sha256=<hex>`` pins the
content); ``hf-hub:org/name`` (optionally ``hf-hub:org/name/file``); a timm pretrained tag
(``deit_tiny_patch16_224.fb_in1k`` or ``timm:<tag>``). A ``#drop=<glob>,<glob>`` fragment drops checkpoint keys by
request (e.g. ``head_dist.*``, profiler counters), and the report lists them. Offline (``HF_HUB_OFFLINE=1`` or
``CPVT_EVAL_OFFLINE=1``), cached files work and anything else fails at once.

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
import socket
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointError
from .models.posenc import grid_of, pe_kind_of, resample_abs_pos_embed

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


# --- Where a checkpoint comes from -------------------------------------------------------------------------------

DOWNLOAD_TIMEOUT_S = 10.0
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclass(frozen=True)
class CheckpointSource:
    """A parsed ``--checkpoint`` value.

    Attributes:
        kind: ``file``, ``url``, ``hf-hub`` or ``timm``.
        location: the path, URL, ``org/name[/file]`` repo, or timm tag.
        sha256: the pinned content hash (lower-case hex), or None.
        drop: glob patterns of keys to drop by request.
    """

    text: str
    kind: str
    location: str
    sha256: str | None = None
    drop: tuple[str, ...] = ()


def parse_source(text: str | os.PathLike) -> CheckpointSource:
    """Read a checkpoint argument: path, URL, ``hf-hub:``, ``timm:`` or a bare timm tag, with a ``#`` fragment."""
    text = str(text).strip()
    if not text:
        raise CheckpointError("empty checkpoint argument")
    if Path(text).is_file():  # an existing file wins, even if its name contains '#'
        return CheckpointSource(text, "file", text)
    base, _, fragment = text.partition("#")
    sha, drop = None, ()
    for item in filter(None, fragment.split("&")):
        key, eq, value = item.partition("=")
        if key == "sha256" and eq:
            if not _SHA256.match(value):
                raise CheckpointError(f"{text}: sha256 pin must be 64 hex digits, got {value!r}")
            sha = value.lower()
        elif key == "drop" and eq and value:
            drop = tuple(p for p in value.split(",") if p)
        else:
            raise CheckpointError(f"{text}: unknown checkpoint option {item!r} (use #sha256=<hex> and/or drop=<glob>)")
    lower = base.lower()
    if lower.startswith(("https://", "http://")):
        url = urllib.parse.urlparse(base)
        if url.scheme == "http" and sha is None and url.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise CheckpointError(f"{base}: plain http needs a #sha256=<hex> pin (or use https)")
        return CheckpointSource(text, "url", base, sha, drop)
    if lower.startswith("hf-hub:"):
        repo = base[len("hf-hub:") :].strip("/")
        if repo.count("/") < 1:
            raise CheckpointError(f"{text}: expected hf-hub:org/name or hf-hub:org/name/file")
        return CheckpointSource(text, "hf-hub", repo, sha, drop)
    if lower.startswith("timm:"):
        return CheckpointSource(text, "timm", base[len("timm:") :], sha, drop)
    if not Path(base).exists() and _is_timm_tag(base):
        return CheckpointSource(text, "timm", base, sha, drop)
    return CheckpointSource(text, "file", base, sha, drop)


def _is_timm_tag(name: str) -> bool:
    if "/" in name or os.sep in name or name.endswith((".pth", ".pt", ".bin", ".safetensors", ".ckpt")):
        return False
    import timm

    try:
        return timm.models.get_pretrained_cfg(name) is not None and timm.is_model(name.partition(".")[0])
    except (RuntimeError, ValueError):
        return False


def is_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` or ``CPVT_EVAL_OFFLINE`` is set to a true value (read at call time)."""
    return any(
        os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")
        for var in ("HF_HUB_OFFLINE", "CPVT_EVAL_OFFLINE")
    )


def cache_dir() -> Path:
    """Download cache: ``$CPVT_EVAL_CACHE``, else ``$XDG_CACHE_HOME/cpvt-eval``, else ``~/.cache/cpvt-eval``."""
    if os.environ.get("CPVT_EVAL_CACHE"):
        return Path(os.environ["CPVT_EVAL_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "cpvt-eval"


def url_cache_path(url: str, root: Path | None = None) -> Path:
    """The cache file of ``url``: a hash of the whole URL (two URLs never share a file) plus its file name."""
    name = Path(urllib.parse.urlparse(url).path).name or "checkpoint"
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    return (root or cache_dir()) / "downloads" / f"{key}-{name}"


def download_url(url: str, sha256: str | None = None, root: Path | None = None, timeout: float | None = None) -> Path:
    """Download ``url`` once into the cache and return the local file; verify the ``sha256`` pin when given.

    A cached file is used without touching the network. The download goes to a temporary file in the cache and
    is renamed into place only after its hash is checked, so an interrupted or wrong download never stays.
    """
    path = url_cache_path(url, root)
    if path.is_file():
        if sha256 and (actual := file_sha256(path)) != sha256:
            raise CheckpointError(
                f"cached {path} for {url} has sha256 {actual}, the pin says {sha256}; delete it to download again"
            )
        return path
    if is_offline():
        raise CheckpointError(
            f"offline and {url} is not in the cache ({path}); pass a local file with --checkpoint NAME=PATH"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as f:
            request = urllib.request.Request(url, headers={"User-Agent": "cpvt-eval"})
            with urllib.request.urlopen(request, timeout=timeout or DOWNLOAD_TIMEOUT_S) as response:
                while block := response.read(1 << 20):
                    digest.update(block)
                    f.write(block)
        if sha256 and digest.hexdigest() != sha256:
            raise CheckpointError(f"{url}: downloaded sha256 {digest.hexdigest()} does not match the pin {sha256}")
        os.replace(tmp, path)
    except urllib.error.HTTPError as e:
        raise CheckpointError(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise CheckpointError(f"cannot download {url}: {reason}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _hub_error(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the hub endpoint cannot be reached (name lookup or TCP connect), or None when it can.

    The hub client retries a failing request with back-off for most of a minute; asking first keeps a machine
    without network to an error within seconds. The lookup runs in a thread so a slow resolver cannot stall it.
    """
    import huggingface_hub.constants

    url = urllib.parse.urlparse(huggingface_hub.constants.ENDPOINT)
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    outcome: list[str | None] = []

    def attempt():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as e:
            outcome.append(f"{host}:{port} unreachable ({e.strerror or e})")

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout + 2.0)
    return outcome[0] if outcome else f"{host}:{port} did not answer within {timeout + 2.0:.0f} s"


def fetch_hf_hub(repo: str, filename: str | None = None, cache: str | os.PathLike | None = None) -> Path:
    """A file of a Hugging Face Hub repo (``model.safetensors``, else ``pytorch_model.bin`` when not named).

    Offline, or when the hub cannot be reached, only the hub cache is looked at (``local_files_only``), so a
    missing file fails at once.
    """
    from huggingface_hub import hf_hub_download

    names = (filename,) if filename else ("model.safetensors", "pytorch_model.bin")
    offline = is_offline()
    unreachable = None if offline else hub_unreachable()
    last: Exception | None = None
    for name in names:
        try:
            return Path(
                hf_hub_download(
                    repo,
                    filename=name,
                    cache_dir=cache,
                    local_files_only=offline or unreachable is not None,
                    etag_timeout=DOWNLOAD_TIMEOUT_S,
                )
            )
        except Exception as e:  # noqa: BLE001  (hub errors are many types; each means "not available here")
            last = e
            not_there = (
                "EntryNotFound" in type(e).__name__ or "404" in str(e) or "LocalEntryNotFound" in type(e).__name__
            )
            if not not_there:
                break
    if offline:
        reason = f"offline and not in the hub cache ({', '.join(names)})"
    elif unreachable:
        reason = f"hub {unreachable} and not in the hub cache ({', '.join(names)})"
    else:
        reason = f"hub: {_hub_error(last)}"
    raise CheckpointError(f"cannot get {repo}: {reason}; pass a local file with --checkpoint NAME=PATH")


def fetch_pretrained(tag: str, cache: str | os.PathLike | None = None) -> Path:
    """The weights file of a timm pretrained tag (hub cache or download); fails fast when offline or unreachable."""
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(tag)
    except RuntimeError:  # a known architecture with an unknown tag
        cfg = None
    if cfg is None:
        known = timm.list_pretrained(tag.partition(".")[0] + ".*")
        hint = f" (known: {', '.join(known[:6])})" if known else ""
        raise CheckpointError(f"timm has no pretrained weights named {tag!r}{hint}")
    if cfg.hf_hub_id:
        repo, _, name = cfg.hf_hub_id.partition("/")
        if "/" in name:  # "org/name/file" spelling
            name, _, filename = name.partition("/")
            return fetch_hf_hub(f"{repo}/{name}", filename, cache)
        return fetch_hf_hub(cfg.hf_hub_id, getattr(cfg, "hf_hub_filename", None), cache)
    if cfg.url:
        return download_url(cfg.url)
    raise CheckpointError(f"{tag} has no downloadable weights; pass a local file with --checkpoint NAME=PATH")


def fetch(source: CheckpointSource) -> Path:
    """The local file of ``source`` (downloaded or found in a cache), its pin verified."""
    if source.kind == "url":
        return download_url(source.location, source.sha256)
    if source.kind == "hf-hub":
        parts = source.location.split("/", 2)
        path = fetch_hf_hub("/".join(parts[:2]), parts[2] if len(parts) > 2 else None)
    elif source.kind == "timm":
        path = fetch_pretrained(source.location)
    else:
        path = Path(source.location)
        if not path.is_file():
            raise CheckpointError(f"checkpoint not found: {path}")
    if source.sha256 and (actual := file_sha256(path)) != source.sha256:
        raise CheckpointError(f"{source.text}: sha256 of {path} is {actual}, the pin says {source.sha256}")
    return path


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
    sd, report.nested_under, report.ema = extract_state_dict(obj, ema)
    report.sha256 = file_sha256(path)
    return load_strict(model, sd, report, drop=(*parsed.drop, *drop))
