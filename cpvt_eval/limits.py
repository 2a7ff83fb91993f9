"""Limits checked before any work: the eval transform's settings, and whether one image at each size fits in the
memory of the device that will run it.

The memory figure is an estimate from the model's shape (tokens, width, heads), kept on the low side: it only
refuses a size that cannot run at batch 1 (smaller batches are the engine's business: it halves a batch that
runs out of memory). So ``--sizes 100000`` stops at once, naming the largest size that fits, instead of after
the cells before it were computed, or after a 30 GB allocation.
"""

from __future__ import annotations

import math
import os

from .errors import CpvtEvalError, ModelError

# Below this the resize before the crop is more than 20x the size: nobody means it, and 224 at 0.001 is a
# 224,000 px resize (hundreds of GB).
MIN_CROP_PCT = 0.05


def check_transform(crop_pct: float | None, interpolation: str) -> None:
    """``--crop-pct`` in (0.05, 1] (None: each model's own) and a known ``--interpolation`` (or ``weights``: each
    model's own); usage errors before anything is read."""
    from .data import INTERPOLATIONS

    if crop_pct is None and interpolation == "weights":
        return
    if interpolation == "weights":
        interpolation = "bicubic"
    if crop_pct is None:
        crop_pct = 1.0
    if not isinstance(crop_pct, (int, float)) or not MIN_CROP_PCT < crop_pct <= 1:
        raise CpvtEvalError(f"--crop-pct must be in ({MIN_CROP_PCT}, 1], got {crop_pct}")
    if interpolation not in INTERPOLATIONS:
        raise CpvtEvalError(
            f"unknown --interpolation {interpolation!r}; choose one of {', '.join(INTERPOLATIONS)} or weights"
        )


def _fmt(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1024 or unit == "PB":
            return f"{n:,.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} PB"  # pragma: no cover


def host_memory() -> int | None:
    """Physical memory of this machine, or of its cgroup when that is smaller; None when unknown."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def device_memory(device) -> tuple[int | None, str]:
    """Bytes the run can still use on ``device`` (CUDA: free plus what torch holds unused; CPU: the RAM)."""
    import torch

    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        spare = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return free + max(0, spare), f"free memory on {device}"
    if device.type == "cpu":
        return host_memory(), "RAM"
    return None, str(device)


def _first(module, *names):
    for name in names:
        value = getattr(module, name, None)
        if isinstance(value, (list, tuple)) and value:
            value = value[0]
        if isinstance(value, int) and value > 0:
            return value
    return None


def _first_stride(module) -> int:
    stages = getattr(module, "patch_embeds", None)
    embed = stages[0] if stages is not None and len(stages) else getattr(module, "patch_embed", None)
    ps = getattr(embed, "patch_size", None)
    if isinstance(ps, (list, tuple)):
        ps = ps[0]
    return int(ps) if isinstance(ps, int) and ps > 0 else 4  # a conv stem of stride 4 (CvT) when unknown


def image_bytes(module, size: int, dtype: str = "fp32") -> int:
    """A low estimate of the memory one image needs in ``module`` at ``size`` px: the input, the tokens of the
    first stage at its width (residual, norm, q, k, v, output), and the attention matrix when the model's
    attention is not fused (a fused kernel never holds it)."""
    elem = 2 if dtype in ("bf16", "fp16") else 4
    tokens = (size // _first_stride(module)) ** 2 + int(getattr(module, "num_prefix_tokens", 0) or 0)
    dim = _first(module, "embed_dim", "embed_dims", "num_features") or 64
    heads, fused = 1, True
    for m in module.modules():
        if hasattr(m, "num_heads") and isinstance(m.num_heads, int):
            heads = m.num_heads
            fused = bool(getattr(m, "fused_attn", False))
            break
    act = 6 * tokens * dim * elem
    attn = 0 if fused else 2 * heads * tokens * tokens * elem
    return 3 * size * size * (1 + 4) + act + attn


def decode_bytes(size: int, crop_pct: float) -> int:
    """The decoded image resized before the crop (PIL: the source and the resized copy, RGB bytes)."""
    side = math.floor(size / crop_pct)
    return 2 * 3 * side * side


def check_fits(name: str, module, sizes, crop_pct: float, device, dtype: str = "fp32", stride: int = 0) -> None:
    """Refuse, before any work, a size at which one image of ``module`` cannot fit in the device's memory (or
    its resize in the host's); name the largest size that fits."""
    avail, where = device_memory(device)
    host = host_memory()

    def need(s: int) -> tuple[int, int]:
        on_device = image_bytes(module, s, dtype)
        on_host = decode_bytes(s, crop_pct) + (on_device if device.type == "cpu" else 0)
        return on_device, on_host

    def fits(s: int) -> bool:
        d, h = need(s)
        return (avail is None or d <= avail) and (host is None or h <= host)

    step = stride or 1
    for size in sorted(set(sizes)):
        if fits(size):
            continue
        lo, hi = 1, size // step  # largest k with fits(k * step), by bisection (the need grows with the size)
        if not fits(step):
            hi = 0
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if fits(mid * step):
                lo = mid
            else:
                hi = mid - 1
        best = f"the largest size that fits is {hi * step} px" if hi else "no size fits"
        d, h = need(size)
        if avail is not None and d > avail:
            what = f"one image of {name} needs about {_fmt(d)} (activations and attention), more than the {_fmt(avail)}"
            what += f" of {where}"
        else:
            what = f"decoding one image needs about {_fmt(h)} at crop {crop_pct}, more than the {_fmt(host)} of RAM"
        raise ModelError(f"size {size} cannot run: {what}; {best}")
