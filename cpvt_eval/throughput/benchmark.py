"""The throughput entry points: ``time_models`` (the models of a size, timed together: the ``throughput`` command and
the ``resolution`` job) and ``measure_throughput`` (one model, the public convenience).

Each chooses the batch, prepares the modules, times them in interleaved rounds and adds the parameter count,
the FLOPs per image and the device's matmul peak."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..errors import CpvtEvalError
from .batch import fit_batch_to_budget, resolve_batch
from .flops import count_flops
from .peak import matmul_peak_gflops
from .plan import TimingSettings
from .rounds import prepare_for_timing, time_at_batch
from .rows import ThroughputResult


def time_models(
    models: Sequence[tuple[str, nn.Module]],
    size: int,
    device: torch.device,
    settings: TimingSettings = TimingSettings(),
    *,
    clock: Callable[[], float] = time.perf_counter,
) -> list[ThroughputResult]:
    """Full throughput rows for ``(name, module)`` pairs already set up for ``size``, timed in interleaved rounds.

    All models are timed at one batch: ``auto`` on CUDA takes the smallest of their largest batches that fit;
    ``settings.fit_budget`` then lowers it so that the floor of rounds fits the budget (the batch policy says
    ``budget`` when it did). FLOPs are counted on the plain modules (a compiled one hides its operators from the
    counter). ``clock``: the timer of the rounds and the budget fit (a fake one in tests).
    """
    s = settings
    if not models:
        raise CpvtEvalError("no model to time")
    resolved = [resolve_batch(s.batch_size, m, size, device, s.dtype, s.channels_last) for _, m in models]
    batch = min(b for b, _ in resolved)
    policy = resolved[0][1]
    timed = [prepare_for_timing(m, s.channels_last, s.compile, s.compile_backend) for _, m in models]
    if s.fit_budget:
        fitted = fit_batch_to_budget(timed, size, device, batch, s.dtype, s.plan, s.channels_last, clock)
        if fitted < batch:
            batch, policy = fitted, "budget"
    results = time_at_batch(timed, [n for n, _ in models], size, device, batch, s, policy, clock)
    for result, (_, model) in zip(results, models, strict=True):
        result.params = sum(p.numel() for p in model.parameters())
        if s.flops:
            result.add_flops(count_flops(model, size, device), matmul_peak_gflops(device, s.dtype))
    return results


def measure_throughput(
    model: nn.Module, size: int, device: torch.device, settings: TimingSettings | None = None, name: str = ""
) -> ThroughputResult:
    """A full throughput row for one model already set up for ``size`` (``time_models`` of one model).

    Example: ``measure_throughput(model, 224, torch.device("cpu"), TimingSettings(batch_size=32))``.
    """
    (result,) = time_models([(name, model)], size, device, settings or TimingSettings())
    return result
