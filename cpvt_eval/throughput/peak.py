"""The device's measured peak: a dense matmul microbenchmark in the same dtype, so that achieved GFLOP/s can be read
against what the hardware does on the friendliest possible workload."""

from __future__ import annotations

import time
from functools import lru_cache

import torch

from ..runtime import check_dtype, sync, torch_dtype


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
