"""Where a checkpoint comes from: a local file, an ``https://`` URL, ``hf-hub:``, or a timm pretrained tag.

A URL is downloaded once into the user cache dir (``#sha256=<hex>`` pins the content); ``hf-hub:org/name``
(optionally ``hf-hub:org/name/file``); a timm tag (``deit_tiny_patch16_224.fb_in1k`` or ``timm:<tag>``). A
``#drop=<glob>,<glob>`` fragment drops checkpoint keys by request. Offline (``HF_HUB_OFFLINE=1`` or
``CPVT_EVAL_OFFLINE=1``), cached files work and anything else fails at once.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError
from ..runtime import cache_dir
from .surgery import file_sha256

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


CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin", ".ckpt")


def local_file(path: Path) -> Path:
    """``path`` when it is a file; otherwise an error that says what it is and what to give instead."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise CheckpointError(f"checkpoint not found: {path}")
    if (path / "config.json").is_file():
        raise CheckpointError(
            f"checkpoint {path} is a transformers save_pretrained folder (config.json): give it as the model, "
            f"--model {path}, without --checkpoint"
        )
    try:
        found = sorted(p.name for p in path.iterdir() if p.suffix in CHECKPOINT_SUFFIXES and p.is_file())
    except OSError:
        found = []
    inside = f"; it holds {', '.join(found[:3])}{', ...' if len(found) > 3 else ''}" if found else ""
    raise CheckpointError(
        f"checkpoint {path} is a directory, not a file{inside}: give a {'/'.join(CHECKPOINT_SUFFIXES)} file (a "
        "state_dict, or a training checkpoint holding one), an https:// URL, hf-hub:org/name or a timm tag"
    )


def check_local(text: str | os.PathLike) -> None:
    """A checkpoint that names a local path must be a file (checked before anything loads); the other sources are
    checked when they are fetched."""
    source = parse_source(text)
    if source.kind == "file":
        local_file(Path(source.location))


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
        path = local_file(Path(source.location))
    if source.sha256 and (actual := file_sha256(path)) != source.sha256:
        raise CheckpointError(f"{source.text}: sha256 of {path} is {actual}, the pin says {source.sha256}")
    return path
