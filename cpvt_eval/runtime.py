"""What this process runs on: the device, the dtype and its autocast, device sync, the cache directory, versions.

One answer per question, used by evaluation, timing, provenance and the reports alike. ``torch`` is imported
where it is needed, so that ``cpvt-eval --help`` stays light.
"""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import CpvtEvalError

if TYPE_CHECKING:
    import torch

DTYPE_NAMES = ("fp32", "bf16", "fp16")


@contextlib.contextmanager
def lasting_imports(module: str) -> Iterator[None]:
    """The first import of ``module`` (and of what it imports, torch and timm) without the cyclic garbage collector,
    what it made then kept out of the collector's reach (``gc.freeze``). Those are millions of objects that live as
    long as the process; the full collections their creation triggered (seven, 0.7 s on two cores) found next to no
    garbage, and once frozen no later collection walks them. A no-op when ``module`` is loaded already."""
    if module in sys.modules or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def check_dtype(dtype: str) -> str:
    """``dtype`` if it is one of ``DTYPE_NAMES``; a usage error naming the value otherwise."""
    if dtype not in DTYPE_NAMES:
        raise CpvtEvalError(f"--dtype must be one of {', '.join(DTYPE_NAMES)}, got {dtype!r}")
    return dtype


def torch_dtype(dtype: str) -> torch.dtype:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[check_dtype(dtype)]


def autocast_context(device: torch.device, dtype: str):
    """Autocast for bf16/fp16; fp32 runs plain. The dtype is recorded in every row."""
    if dtype == "fp32":
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type=device.type, dtype=torch_dtype(dtype))


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is an error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CpvtEvalError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CpvtEvalError("--device cuda asked for, but no CUDA device is available")
    return device


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so that a timer measures finished work."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def release_cached_memory(device: torch.device) -> None:
    # After an OOM the caching allocator still holds the blocks of the failed attempt; give them back before
    # retrying at a smaller batch, or the retry can fail for fragmentation alone.
    if device.type == "cuda":
        import torch

        torch.cuda.empty_cache()


def device_name(device: torch.device | str) -> str:
    """A human name for the device: the GPU's name, or the CPU model."""
    import torch

    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    return cpu_name()


@lru_cache(maxsize=1)
def cpu_name() -> str:
    # platform.processor() is empty on most Linux systems; /proc/cpuinfo has the marketing name.
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def cache_dir() -> Path:
    """The user cache: ``$CPVT_EVAL_CACHE``, else ``$XDG_CACHE_HOME/cpvt-eval``, else ``~/.cache/cpvt-eval``.

    Downloads and the demo's dataset live here, never inside the installed package.
    """
    if os.environ.get("CPVT_EVAL_CACHE"):
        return Path(os.environ["CPVT_EVAL_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "cpvt-eval"


def versions() -> dict[str, str]:
    import timm
    import torch

    from .version import __version__

    v = {
        "cpvt_eval": __version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
    }
    if torch.version.cuda and torch.cuda.is_available():
        v["cuda"] = torch.version.cuda
    return v


def versions_string() -> str:
    return " ".join(f"{k}={v}" for k, v in versions().items())


def git_sha() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
