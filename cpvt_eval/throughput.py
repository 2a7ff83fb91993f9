"""Model-only throughput and FLOPs, timed apart from accuracy.

Throughput follows the field's protocol (DeiT's ``throughput``, timm's ``benchmark.py``): synthetic input of the
evaluation shape, warm-up, device-synchronised timing, the median of repeated timed runs. FLOPs are counted
with ``torch.utils.flop_counter`` while attention runs through the math SDPA backend, because the counter does
not see the fused CPU attention kernel (it would miss the ``QK^T`` and ``AV`` products).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .engine import DTYPES, autocast_context


@dataclass
class ThroughputResult:
    """One model-only timing at one size, with the conditions it was measured under."""

    img_size: int
    batch_size: int
    images_per_sec: float  # median over repeats
    ms_per_batch: float  # median
    ms_per_batch_min: float
    ms_per_batch_max: float
    repeats: int
    warmup: int
    dtype: str
    threads: int
    device: str
    device_name: str

    def to_dict(self) -> dict:
        return asdict(self)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return platform.processor() or platform.machine() or "cpu"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_throughput(
    model: nn.Module,
    size: int,
    device: torch.device,
    batch_size: int = 64,
    dtype: str = "fp32",
    warmup: int = 2,
    repeats: int = 5,
    channels_last: bool = False,
) -> ThroughputResult:
    """Time ``model`` on random ``(batch, 3, size, size)`` input; the model must already be set up for ``size``."""
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    x = torch.randn(batch_size, 3, size, size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    times = []
    with torch.inference_mode(), autocast_context(device, dtype):
        for _ in range(warmup):
            model(x)
        _sync(device)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            _sync(device)
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return ThroughputResult(
        img_size=size,
        batch_size=batch_size,
        images_per_sec=batch_size / med,
        ms_per_batch=1000 * med,
        ms_per_batch_min=1000 * min(times),
        ms_per_batch_max=1000 * max(times),
        repeats=repeats,
        warmup=warmup,
        dtype=dtype,
        threads=torch.get_num_threads(),
        device=device.type,
        device_name=device_name(device),
    )


def count_flops(model: nn.Module, size: int, device: torch.device | None = None) -> float:
    """GFLOPs per image at ``size`` (a multiply-add counts 2), attention products included."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    if device is None:
        device = next(model.parameters()).device
    x = torch.zeros(1, 3, size, size, device=device)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH), counter:
        model(x)
    return counter.get_total_flops() / 1e9


__all__ = ["DTYPES", "ThroughputResult", "count_flops", "measure_throughput"]
