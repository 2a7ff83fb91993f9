"""Full throughput rows: batch chosen, models prepared and timed together, FLOPs and the device's peak added."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..config import DEFAULT_BUDGET_S, DEFAULT_MIN_ROUNDS
from ..errors import CpvtEvalError
from .batch import fit_batch_to_budget, resolve_batch
from .flops import count_flops
from .peak import matmul_peak_gflops
from .plan import TimingPlan, plan_for
from .rounds import measure_interleaved, prepare_for_timing
from .rows import ThroughputResult


def benchmark_models(
    models: Sequence[tuple[str, nn.Module]],
    size: int,
    device: torch.device,
    batch_size: str | int = 64,
    dtype: str = "fp32",
    plan: TimingPlan | None = None,
    channels_last: bool = False,
    compile: bool = False,
    flops: bool = True,
    peak: bool = True,
    compile_backend: str = "inductor",
    fit_budget: bool = False,
) -> list[ThroughputResult]:
    """Full throughput rows for ``(name, module)`` pairs already set up for ``size``, timed in interleaved rounds.

    All models are timed at one batch: ``auto`` on CUDA takes the smallest of their largest batches that fit.
    ``fit_budget`` lowers the batch so that the floor of rounds fits the budget (``fit_batch_to_budget``).
    FLOPs are counted on the plain modules (a compiled one hides its operators from the counter).
    """
    plan = plan or TimingPlan()
    if not models:
        raise CpvtEvalError("no model to time")
    resolved = [resolve_batch(batch_size, m, size, device, dtype, channels_last) for _, m in models]
    batch = min(b for b, _ in resolved)
    policy = resolved[0][1]
    timed = [prepare_for_timing(m, channels_last, compile, compile_backend) for _, m in models]
    if fit_budget:
        fitted = fit_batch_to_budget(timed, size, device, batch, dtype, plan, channels_last)
        if fitted < batch:
            batch, policy = fitted, "budget"
    results = measure_interleaved(
        timed, size, device, batch, dtype, plan, channels_last, compile, policy, [n for n, _ in models]
    )
    for result, (_, model) in zip(results, models, strict=True):
        result.params = sum(p.numel() for p in model.parameters())
        if flops:
            result.add_flops(count_flops(model, size, device), matmul_peak_gflops(device, dtype) if peak else None)
    return results


def benchmark_model(
    model: nn.Module,
    size: int,
    device: torch.device,
    batch_size: str | int = 64,
    dtype: str = "fp32",
    warmup: int = 2,
    repeats: int | None = None,
    channels_last: bool = False,
    compile: bool = False,
    flops: bool = True,
    peak: bool = True,
    name: str = "",
    compile_backend: str = "inductor",
    budget_s: float = DEFAULT_BUDGET_S,
    min_rounds: int = DEFAULT_MIN_ROUNDS,
) -> ThroughputResult:
    """A full throughput row for one model already set up for ``size`` (``benchmark_models`` of one model)."""
    (result,) = benchmark_models(
        [(name, model)],
        size,
        device,
        batch_size,
        dtype,
        plan_for(repeats, warmup, budget_s, min_rounds),
        channels_last,
        compile,
        flops,
        peak,
        compile_backend,
    )
    return result
