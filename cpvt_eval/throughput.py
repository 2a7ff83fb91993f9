"""Model-only throughput and FLOPs, timed apart from accuracy.

Throughput follows the field's protocol (DeiT's ``throughput``, timm's ``benchmark.py``): synthetic input of the
evaluation shape, warm-up, device-synchronised timing; we report the median of repeated timed runs and their
spread rather than one mean, because a single slow run (another process, a clock change) should not move the
figure. FLOPs are counted with ``torch.utils.flop_counter`` while attention runs through the math SDPA backend,
because the counter does not see the fused CPU attention kernel (it would miss the ``QK^T`` and ``AV`` products).

Each result also carries the device's measured peak: a dense matmul microbenchmark in the same dtype, so that
achieved GFLOP/s can be read against what the hardware does on the friendliest possible workload.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from functools import lru_cache

import torch
from torch import nn

from .errors import CpvtEvalError
from .runtime import autocast_context, check_dtype, device_name, release_cached_memory, sync, torch_dtype

# The batch sizes ``find_max_batch`` tries: powers of two (the DeiT throughput protocol) up to this cap.
MAX_AUTO_BATCH = 4096


@dataclass
class ThroughputResult:
    """One model-only timing at one size, with the conditions it was measured under."""

    img_size: int
    batch_size: int  # the batch actually timed (after any OOM halving)
    images_per_sec: float  # batch / median batch time
    ms_per_batch: float  # median
    ms_per_batch_min: float
    ms_per_batch_max: float
    spread_pct: float  # (max - min) / median of the timed runs, in percent
    repeats: int
    warmup: int
    dtype: str
    threads: int
    device: str
    device_name: str
    channels_last: bool = False
    compile: bool = False
    batch_policy: str = "fixed"  # "fixed", or "auto" (largest power of two that fits)
    oom_retries: int = 0
    model: str = ""
    params: int = 0
    gflops_per_image: float | None = None
    achieved_gflops_per_sec: float | None = None  # gflops_per_image * images_per_sec
    peak_gflops_per_sec: float | None = None  # dense matmul in the same dtype on the same device
    peak_fraction: float | None = None  # achieved / peak

    def to_dict(self) -> dict:
        return asdict(self)

    def add_flops(self, gflops_per_image: float, peak_gflops_per_sec: float | None) -> ThroughputResult:
        """Fill the FLOP columns from a per-image count and the device's measured peak."""
        self.gflops_per_image = gflops_per_image
        self.achieved_gflops_per_sec = gflops_per_image * self.images_per_sec
        self.peak_gflops_per_sec = peak_gflops_per_sec
        if peak_gflops_per_sec:
            self.peak_fraction = self.achieved_gflops_per_sec / peak_gflops_per_sec
        return self


# The figures a ``resolution`` row carries besides images_per_sec / throughput_batch / gflops_per_image: in the
# row's ``extra`` under ``throughput_<name>``, so every row says how its throughput was measured.
ROW_EXTRA_FIELDS = (
    "ms_per_batch",
    "ms_per_batch_min",
    "ms_per_batch_max",
    "spread_pct",
    "repeats",
    "warmup",
    "threads",
    "device_name",
    "channels_last",
    "compile",
    "batch_policy",
    "oom_retries",
    "achieved_gflops_per_sec",
    "peak_gflops_per_sec",
    "peak_fraction",
)


def row_extra(result: ThroughputResult) -> dict:
    """The measurement conditions and FLOP-rate figures of ``result`` for a result row's ``extra``."""
    d = result.to_dict()
    return {f"throughput_{k}": d[k] for k in ROW_EXTRA_FIELDS}


def _input(batch: int, size: int, device: torch.device, channels_last: bool) -> torch.Tensor:
    # Synthetic input of the evaluation shape; fp32 like the normalised batches the engine feeds (autocast casts).
    x = torch.randn(batch, 3, size, size, device=device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def prepare_for_timing(
    model: nn.Module, channels_last: bool = False, compile: bool = False, compile_backend: str = "inductor"
) -> nn.Module:
    """The module to time: eval mode, optionally channels-last weights and ``torch.compile``."""
    model = model.eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        model = torch.compile(model, backend=compile_backend)
    return model


def _time_runs(
    model: nn.Module, x: torch.Tensor, device: torch.device, dtype: str, warmup: int, repeats: int
) -> list[float]:
    times = []
    with torch.inference_mode(), autocast_context(device, dtype):
        for _ in range(warmup):
            model(x)
        sync(device)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            sync(device)
            times.append(time.perf_counter() - t0)
    return times


def measure_throughput(
    model: nn.Module,
    size: int,
    device: torch.device,
    batch_size: int = 64,
    dtype: str = "fp32",
    warmup: int = 2,
    repeats: int = 5,
    channels_last: bool = False,
    compiled: bool = False,
    batch_policy: str = "fixed",
) -> ThroughputResult:
    """Time ``model`` on random ``(batch, 3, size, size)`` input; the model must already be set up for ``size``.

    Args:
        model: the module to time, as returned by ``prepare_for_timing`` (``compiled`` only labels the result).
        batch_size: images per timed forward; on device OOM it is halved until it fits, and the result records
            the batch that was timed and how many halvings it took.
        warmup: untimed forwards first (cudnn autotuning, allocator growth, ``torch.compile``).
        repeats: timed forwards; the figure is their median.
    """
    if repeats < 1:
        raise CpvtEvalError("repeats must be at least 1")
    if batch_size < 1:
        raise CpvtEvalError(f"batch size must be at least 1, got {batch_size}")
    check_dtype(dtype)
    batch, retries = batch_size, 0
    while True:
        try:
            times = _time_runs(model, _input(batch, size, device, channels_last), device, dtype, warmup, repeats)
            break
        except torch.OutOfMemoryError:
            pass
        if batch == 1:
            raise CpvtEvalError(f"not even one {size}px image fits in {device} memory")
        # Out of the except block, so the failed attempt's tensors (held by the traceback) are gone before freeing.
        release_cached_memory(device)
        batch //= 2
        retries += 1
    med = statistics.median(times)
    return ThroughputResult(
        img_size=size,
        batch_size=batch,
        images_per_sec=batch / med,
        ms_per_batch=1000 * med,
        ms_per_batch_min=1000 * min(times),
        ms_per_batch_max=1000 * max(times),
        spread_pct=100 * (max(times) - min(times)) / med,
        repeats=repeats,
        warmup=warmup,
        dtype=dtype,
        threads=torch.get_num_threads(),
        device=device.type,
        device_name=device_name(device),
        channels_last=channels_last,
        compile=compiled,
        batch_policy=batch_policy,
        oom_retries=retries,
        params=sum(p.numel() for p in model.parameters()),
    )


def find_max_batch(
    model: nn.Module,
    size: int,
    device: torch.device,
    dtype: str = "fp32",
    channels_last: bool = False,
    cap: int = MAX_AUTO_BATCH,
) -> int:
    """The largest power of two (up to ``cap``) at which one forward of ``model`` at ``size`` fits in memory.

    The DeiT throughput protocol times each model at the largest batch it can run; doubling from 1 finds it
    with a handful of forwards and stops at the first out-of-memory error.
    """
    check_dtype(dtype)
    best = 0
    batch = 1
    while batch <= cap:
        try:
            with torch.inference_mode(), autocast_context(device, dtype):
                model(_input(batch, size, device, channels_last))
            sync(device)
        except torch.OutOfMemoryError:
            break
        best = batch
        batch *= 2
    release_cached_memory(device)
    if best == 0:
        raise CpvtEvalError(f"not even one {size}px image fits in {device} memory")
    return best


def count_flops(model: nn.Module, size: int, device: torch.device | None = None) -> float:
    """GFLOPs per image at ``size`` (a multiply-add counts 2), attention products included."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    if device is None:
        device = next(model.parameters()).device
    x = torch.zeros(1, 3, size, size, device=device)
    counter = FlopCounterMode(display=False)
    # The math backend spells attention out as two batched matmuls the counter sees; the fused kernels it picks
    # by default on CPU are invisible to it.
    with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH), counter:
        model(x)
    return counter.get_total_flops() / 1e9


def _matmul_size(device: torch.device) -> int:
    # Big enough to reach the plateau of the BLAS/cuBLAS kernels, small enough to take well under a second.
    return 8192 if device.type == "cuda" else 1024


@lru_cache(maxsize=16)
def _matmul_peak(device_str: str, dtype: str, n: int, repeats: int) -> float:
    device = torch.device(device_str)
    dt = torch_dtype(dtype)
    a = torch.randn(n, n, device=device).to(dt)
    b = torch.randn(n, n, device=device).to(dt)
    times = []
    with torch.inference_mode():
        for _ in range(2):
            torch.mm(a, b)
        sync(device)
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(a, b)
            sync(device)
            times.append(time.perf_counter() - t0)
    # The fastest run: a peak is what the hardware can do, and slower runs only measure interference.
    return 2 * n**3 / min(times) / 1e9


def matmul_peak_gflops(device: torch.device, dtype: str = "fp32", n: int | None = None, repeats: int = 5) -> float:
    """The device's measured dense-matmul rate in GFLOP/s for ``dtype`` (an ``n x n`` by ``n x n`` product).

    Cached per (device, dtype, n) for the life of the process.
    """
    check_dtype(dtype)
    return _matmul_peak(str(device), dtype, n or _matmul_size(device), repeats)


def resolve_batch(
    value: str | int, model: nn.Module, size: int, device: torch.device, dtype: str, channels_last: bool
) -> tuple[int, str]:
    """``(batch, policy)`` for a ``--batch-size`` value: a positive integer, or ``auto``.

    ``auto`` searches the largest power of two that fits on CUDA. On the CPU memory is rarely the limit and the
    largest batch that fits is not the fastest, so ``auto`` there means the default batch of 64.
    """
    if isinstance(value, str) and value.strip().lower() == "auto":
        if device.type == "cuda":
            return find_max_batch(model, size, device, dtype, channels_last), "auto"
        return 64, "auto-cpu-default"
    try:
        batch = int(value)
    except (TypeError, ValueError):
        raise CpvtEvalError(f"--batch-size must be a positive integer or auto, got {value!r}") from None
    if batch < 1:
        raise CpvtEvalError(f"--batch-size must be a positive integer or auto, got {value!r}")
    return batch, "fixed"


def benchmark_model(
    model: nn.Module,
    size: int,
    device: torch.device,
    batch_size: str | int = 64,
    dtype: str = "fp32",
    warmup: int = 2,
    repeats: int = 5,
    channels_last: bool = False,
    compile: bool = False,
    flops: bool = True,
    peak: bool = True,
    name: str = "",
    compile_backend: str = "inductor",
) -> ThroughputResult:
    """A full throughput row for a model already set up for ``size``: timing, FLOPs, achieved vs peak.

    FLOPs are counted on the plain module (a compiled one hides its operators from the counter).
    """
    batch, policy = resolve_batch(batch_size, model, size, device, dtype, channels_last)
    timed = prepare_for_timing(model, channels_last, compile, compile_backend)
    result = measure_throughput(
        timed, size, device, batch, dtype, warmup, repeats, channels_last, compiled=compile, batch_policy=policy
    )
    result.model = name
    result.params = sum(p.numel() for p in model.parameters())
    if flops:
        result.add_flops(count_flops(model, size, device), matmul_peak_gflops(device, dtype) if peak else None)
    return result


__all__ = [
    "ThroughputResult",
    "benchmark_model",
    "count_flops",
    "find_max_batch",
    "matmul_peak_gflops",
    "measure_throughput",
    "prepare_for_timing",
    "resolve_batch",
    "row_extra",
]
