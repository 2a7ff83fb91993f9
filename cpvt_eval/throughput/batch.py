"""The batch to time at: a ``--batch-size`` value (a number or ``auto``), the largest power of two that fits, or
the batch at which the floor of rounds fits the time budget."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..errors import CpvtEvalError
from ..runtime import autocast_context, check_dtype, release_cached_memory, sync
from .plan import TimingPlan
from .rounds import forward_once, synthetic_input

# The batch sizes ``find_max_batch`` tries: powers of two (the DeiT throughput protocol) up to this cap.
MAX_AUTO_BATCH = 4096


# The batch ``fit_batch_to_budget`` probes at and never goes below: on CPUs a forward of one or two images can cost
# as much as one of eight (measured: DeiT-Ti at 384 px, 1.3 s for 1, 2 or 8 images), so smaller batches neither
# save time nor give a representative figure.
FIT_PROBE_BATCH = 8


def fit_batch_to_budget(
    models: Sequence[nn.Module],
    size: int,
    device: torch.device,
    batch_size: int,
    dtype: str,
    plan: TimingPlan,
    channels_last: bool = False,
    clock: Callable[[], float] = time.perf_counter,
) -> int:
    """The batch (``batch_size`` halved as needed) at which ``plan.min_rounds`` forwards of the slowest of ``models``
    fit in the budget, so that the floor of rounds cannot outgrow the budget (one forward of DeiT-S at 384 px and
    batch 64 takes tens of seconds on a CPU). A forced round count keeps ``batch_size``.

    The per-image cost is estimated from one forward at ``FIT_PROBE_BATCH`` images (after a warm-up forward), and
    the batch never goes below that probe (or ``batch_size`` when smaller).
    """
    probe = min(batch_size, FIT_PROBE_BATCH)
    if plan.rounds is not None or batch_size <= probe:
        return batch_size
    x = synthetic_input(probe, size, device, channels_last)
    per_image = 0.0
    for model in models:
        forward = forward_once(model, x, device, dtype)
        forward()
        sync(device)
        t0 = clock()
        forward()
        sync(device)
        per_image = max(per_image, (clock() - t0) / probe)
    per_forward = plan.budget_s / plan.min_rounds
    batch = batch_size
    while batch // 2 >= probe and batch * per_image > per_forward:
        batch //= 2
    return batch


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
                model(synthetic_input(batch, size, device, channels_last))
            sync(device)
        except torch.OutOfMemoryError:
            break
        best = batch
        batch *= 2
    release_cached_memory(device)
    if best == 0:
        raise CpvtEvalError(f"not even one {size}px image fits in {device} memory")
    return best


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
