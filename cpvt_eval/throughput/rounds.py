"""Timing models in interleaved rounds on synthetic input of the evaluation shape, median and spread per model.

Models compared at a size are timed together, one forward of each per round (A B A B ...), so that a drift of the
machine lands on all of them alike and their ratio, taken round by round, stays put.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .. import interrupts
from ..errors import CpvtEvalError
from ..runtime import autocast_context, check_dtype, device_name, release_cached_memory, sync
from .plan import TimingPlan, TimingSettings
from .rows import ThroughputResult


def interleaved_rounds(
    forwards: Sequence[Callable[[], object]],
    plan: TimingPlan,
    sync_device: Callable[[], None] = lambda: None,
    clock: Callable[[], float] = time.perf_counter,
) -> list[list[float]]:
    """Time each of ``forwards`` once per round, in the same order every round (A B A B ...), until ``plan`` stops.

    Machine drift (another process, a clock change) then lands on every model of a round alike, so ratios taken
    round by round are steadier than ratios of separate timings. Returns the seconds of each forward, per forward
    callable, one entry per round.

    Args:
        forwards: one forward each (of a model on its input); each is warmed up ``plan.warmup`` times first.
        sync_device: waits for the device (``torch.cuda.synchronize``); called after every forward.
        clock: a monotonic clock in seconds (a fake one in tests).
    """
    for forward in forwards:
        for _ in range(plan.warmup):
            forward()
        sync_device()
    times: list[list[float]] = [[] for _ in forwards]
    start = clock()
    rounds = 0
    while True:
        interrupts.check()
        for i, forward in enumerate(forwards):
            t0 = clock()
            forward()
            sync_device()
            times[i].append(clock() - t0)
        rounds += 1
        if plan.finished(rounds, clock() - start, len(forwards)):
            return times


def synthetic_input(batch: int, size: int, device: torch.device, channels_last: bool) -> torch.Tensor:
    """Random input of the evaluation shape ``(batch, 3, size, size)``."""
    # fp32 like the normalised batches the engine feeds (autocast casts).
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


def forward_once(model: nn.Module, x: torch.Tensor, device: torch.device, dtype: str) -> Callable[[], object]:
    """One inference forward of ``model`` on ``x`` under the autocast of ``dtype``, as a callable to time."""

    def run():
        with torch.inference_mode(), autocast_context(device, dtype):
            return model(x)

    return run


def load_average() -> float | None:
    """The machine's 1-minute load average (runnable processes, all cores), None where the OS has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """``(q1, median, q3)`` of ``values``, inclusive method (one value: that value three times)."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, med, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, med, q3


def time_at_batch(
    models: Sequence[nn.Module],
    names: Sequence[str],
    size: int,
    device: torch.device,
    batch_size: int,
    settings: TimingSettings,
    batch_policy: str = "fixed",
    clock: Callable[[], float] = time.perf_counter,
) -> list[ThroughputResult]:
    """Time ``models`` together in interleaved rounds on random ``(batch, 3, size, size)`` input (``time_models``
    once the batch is chosen and the modules prepared).

    Every model must already be set up for ``size``. One result per model, in order; each carries the median and
    the spread of its rounds, the median of its per-round ratios to the first model, and the machine's load
    average when the rounds ended.

    Args:
        models: the modules to time, as returned by ``prepare_for_timing``.
        names: the models' names; ``ratio_reference`` is the first.
        batch_size: images per timed forward, the same for every model; on device OOM it is halved (for all)
            until it fits, and the results record the batch that was timed and how many halvings it took.
        settings: the plan of rounds, the dtype and the options the results record (``settings.batch_size`` and
            ``fit_budget`` are not read here).
    """
    plan, dtype, channels_last = settings.plan, settings.dtype, settings.channels_last
    if not models:
        raise CpvtEvalError("no model to time")
    if batch_size < 1:
        raise CpvtEvalError(f"batch size must be at least 1, got {batch_size}")
    check_dtype(dtype)
    batch, retries = batch_size, 0
    while True:
        try:
            x = synthetic_input(batch, size, device, channels_last)
            forwards = [forward_once(m, x, device, dtype) for m in models]
            times = interleaved_rounds(forwards, plan, lambda: sync(device), clock)
            load = load_average()
            break
        except torch.OutOfMemoryError:
            pass
        if batch == 1:
            raise CpvtEvalError(f"not even one {size}px image fits in {device} memory")
        # Out of the except block, so the failed attempt's tensors (held by the traceback) are gone before freeing.
        x = forwards = None
        release_cached_memory(device)
        batch //= 2
        retries += 1
    results = []
    for model, name, mine in zip(models, names, times, strict=True):
        q1, med, q3 = quartiles(mine)
        # images/s ratio in one round = reference time / this time (the same batch for both)
        ratios = [ref / t for ref, t in zip(times[0], mine, strict=True)]
        r1, rmed, r3 = quartiles(ratios)
        results.append(
            ThroughputResult(
                img_size=size,
                batch_size=batch,
                images_per_sec=batch / med,
                ms_per_batch=1000 * med,
                ms_per_batch_min=1000 * min(mine),
                ms_per_batch_max=1000 * max(mine),
                spread_pct=100 * (max(mine) - min(mine)) / med,
                repeats=len(mine),
                warmup=plan.warmup,
                dtype=dtype,
                threads=torch.get_num_threads(),
                device=device.type,
                device_name=device_name(device),
                channels_last=channels_last,
                compile=settings.compile,
                batch_policy=batch_policy,
                oom_retries=retries,
                model=name,
                params=sum(p.numel() for p in model.parameters()),
                ms_per_batch_q1=1000 * q1,
                ms_per_batch_q3=1000 * q3,
                iqr_pct=100 * (q3 - q1) / med,
                rounds_policy=plan.policy,
                budget_s=None if plan.rounds is not None else plan.budget_s,
                min_rounds=plan.min_rounds,
                interleaved=len(models),
                ratio_reference=names[0],
                ratio=rmed,
                ratio_q1=r1,
                ratio_q3=r3,
                ratio_min=min(ratios),
                ratio_max=max(ratios),
                load_avg=load,
            )
        )
    return results
