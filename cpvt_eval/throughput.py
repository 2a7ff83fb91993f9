"""Model-only throughput and FLOPs, timed apart from accuracy.

Throughput follows the field's protocol (DeiT's ``throughput``, timm's ``benchmark.py``): synthetic input of the
evaluation shape, warm-up, device-synchronised timing; we report the median of repeated timed runs and their
spread rather than one mean, because a single slow run (another process, a clock change) should not move the
figure. Models compared at a size are timed together in interleaved rounds (one forward of each per round), so
that a drift of the machine lands on all of them alike and their ratio, taken round by round, stays put. How
long to time is a ``TimingPlan``: a forced number of rounds, or a time budget with a floor of rounds (the
bounded default of ``resolution``'s throughput column).

FLOPs are counted with ``torch.utils.flop_counter`` while attention runs through the math SDPA backend, because
the counter does not see the fused CPU attention kernel (it would miss the ``QK^T`` and ``AV`` products).

Each result also carries the device's measured peak: a dense matmul microbenchmark in the same dtype, so that
achieved GFLOP/s can be read against what the hardware does on the friendliest possible workload.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache

import torch
from torch import nn

from . import interrupts
from .config import DEFAULT_BUDGET_S, DEFAULT_MIN_ROUNDS
from .errors import CpvtEvalError
from .runtime import autocast_context, check_dtype, device_name, release_cached_memory, sync, torch_dtype

# The batch sizes ``find_max_batch`` tries: powers of two (the DeiT throughput protocol) up to this cap.
MAX_AUTO_BATCH = 4096

# Past a few dozen rounds the median and the quartiles no longer move; fast models stop here before their budget.
DEFAULT_MAX_ROUNDS = 100


@dataclass(frozen=True)
class TimingPlan:
    """How many timed rounds to run: a forced count, or as many as a time budget allows within a floor and a cap.

    Attributes:
        warmup: untimed forwards of every model before the first round.
        rounds: when set, exactly this many rounds (``--repeats``); the budget is then ignored.
        budget_s: seconds of timed forwards per model; the rounds stop once ``budget_s x models`` have passed.
        min_rounds: the fewest rounds a budget may stop at (a spread needs several).
        max_rounds: the most rounds a budget may run.
    """

    warmup: int = 1
    rounds: int | None = None
    budget_s: float = DEFAULT_BUDGET_S
    min_rounds: int = DEFAULT_MIN_ROUNDS
    max_rounds: int = DEFAULT_MAX_ROUNDS

    def __post_init__(self) -> None:
        if self.warmup < 0:
            raise CpvtEvalError(f"warm-up must be at least 0 forwards, got {self.warmup}")
        if self.rounds is not None and self.rounds < 1:
            raise CpvtEvalError(f"repeats must be at least 1, got {self.rounds}")
        if not self.budget_s > 0:
            raise CpvtEvalError(f"the throughput budget must be a positive number of seconds, got {self.budget_s}")
        if not 1 <= self.min_rounds <= self.max_rounds:
            raise CpvtEvalError(f"need 1 <= min rounds <= max rounds, got {self.min_rounds} and {self.max_rounds}")

    @property
    def policy(self) -> str:
        return "fixed" if self.rounds is not None else "budget"

    def finished(self, rounds_done: int, elapsed_s: float, n_models: int) -> bool:
        """Whether to stop after ``rounds_done`` rounds that took ``elapsed_s`` seconds for ``n_models`` models."""
        if self.rounds is not None:
            return rounds_done >= self.rounds
        if rounds_done < self.min_rounds:
            return False
        return rounds_done >= self.max_rounds or elapsed_s >= self.budget_s * n_models


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


@dataclass
class ThroughputResult:
    """One model-only timing at one size, with the conditions it was measured under.

    The timed forwards of all the models given together at a size are interleaved (one forward per model per
    round); ``ratio`` is the median over those rounds of this model's images/s over the ``ratio_reference``'s.
    """

    img_size: int
    batch_size: int  # the batch actually timed (after any OOM halving)
    images_per_sec: float  # batch / median batch time
    ms_per_batch: float  # median
    ms_per_batch_min: float
    ms_per_batch_max: float
    spread_pct: float  # (max - min) / median of the timed rounds, in percent
    repeats: int  # timed rounds actually run (one forward of this model per round)
    warmup: int
    dtype: str
    threads: int
    device: str
    device_name: str
    channels_last: bool = False
    compile: bool = False
    batch_policy: str = "fixed"  # "fixed", "auto" (largest power of two that fits), "budget" (fitted to the budget)
    oom_retries: int = 0
    model: str = ""
    params: int = 0
    ms_per_batch_q1: float | None = None  # quartiles of the rounds (inclusive method)
    ms_per_batch_q3: float | None = None
    iqr_pct: float | None = None  # (q3 - q1) / median, in percent
    rounds_policy: str = "fixed"  # "fixed" (a forced count) or "budget"
    budget_s: float | None = None  # seconds per model the rounds were allowed; None for a forced count
    min_rounds: int | None = None
    interleaved: int = 1  # models timed in the same rounds
    ratio_reference: str = ""  # the model the ratio is taken against (the first of the rounds)
    ratio: float | None = None  # median of per-round images/s ratios to the reference
    ratio_q1: float | None = None
    ratio_q3: float | None = None
    ratio_min: float | None = None
    ratio_max: float | None = None
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
    "ms_per_batch_q1",
    "ms_per_batch_q3",
    "spread_pct",
    "iqr_pct",
    "repeats",
    "rounds_policy",
    "budget_s",
    "min_rounds",
    "interleaved",
    "ratio_reference",
    "ratio",
    "ratio_q1",
    "ratio_q3",
    "ratio_min",
    "ratio_max",
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


def forward_once(model: nn.Module, x: torch.Tensor, device: torch.device, dtype: str) -> Callable[[], object]:
    """One inference forward of ``model`` on ``x`` under the autocast of ``dtype``, as a callable to time."""

    def run():
        with torch.inference_mode(), autocast_context(device, dtype):
            return model(x)

    return run


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, med, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, med, q3


def plan_for(repeats: int | None, warmup: int, budget_s: float, min_rounds: int) -> TimingPlan:
    """The ``TimingPlan`` of the command-line options: ``repeats`` forces a count, else the budget decides."""
    return TimingPlan(warmup=warmup, rounds=repeats, budget_s=budget_s, min_rounds=min_rounds)


def measure_interleaved(
    models: Sequence[nn.Module],
    size: int,
    device: torch.device,
    batch_size: int = 64,
    dtype: str = "fp32",
    plan: TimingPlan | None = None,
    channels_last: bool = False,
    compiled: bool = False,
    batch_policy: str = "fixed",
    names: Sequence[str] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> list[ThroughputResult]:
    """Time ``models`` together in interleaved rounds on random ``(batch, 3, size, size)`` input.

    Every model must already be set up for ``size``. One result per model, in order; each carries the median and
    the spread of its rounds and the median of its per-round ratios to the first model.

    Args:
        models: the modules to time, as returned by ``prepare_for_timing`` (``compiled`` only labels the results).
        batch_size: images per timed forward, the same for every model; on device OOM it is halved (for all)
            until it fits, and the results record the batch that was timed and how many halvings it took.
        plan: warm-up, and a forced round count or a time budget (default: ``TimingPlan()``).
        names: the models' names; ``ratio_reference`` is the first.
    """
    plan = plan or TimingPlan()
    if not models:
        raise CpvtEvalError("no model to time")
    if batch_size < 1:
        raise CpvtEvalError(f"batch size must be at least 1, got {batch_size}")
    check_dtype(dtype)
    names = list(names) if names is not None else [""] * len(models)
    batch, retries = batch_size, 0
    while True:
        try:
            x = _input(batch, size, device, channels_last)
            forwards = [forward_once(m, x, device, dtype) for m in models]
            times = interleaved_rounds(forwards, plan, lambda: sync(device), clock)
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
        q1, med, q3 = _quartiles(mine)
        # images/s ratio in one round = reference time / this time (the same batch for both)
        ratios = [ref / t for ref, t in zip(times[0], mine, strict=True)]
        r1, rmed, r3 = _quartiles(ratios)
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
                compile=compiled,
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
            )
        )
    return results


def measure_throughput(
    model: nn.Module,
    size: int,
    device: torch.device,
    batch_size: int = 64,
    dtype: str = "fp32",
    warmup: int = 2,
    repeats: int | None = None,
    channels_last: bool = False,
    compiled: bool = False,
    batch_policy: str = "fixed",
    budget_s: float = DEFAULT_BUDGET_S,
    min_rounds: int = DEFAULT_MIN_ROUNDS,
) -> ThroughputResult:
    """Time ``model`` alone on random ``(batch, 3, size, size)`` input; the model must already be set up for ``size``.

    Args:
        model: the module to time, as returned by ``prepare_for_timing`` (``compiled`` only labels the result).
        batch_size: images per timed forward; on device OOM it is halved until it fits, and the result records
            the batch that was timed and how many halvings it took.
        warmup: untimed forwards first (cudnn autotuning, allocator growth, ``torch.compile``).
        repeats: timed forwards, forced; None: as many as ``budget_s`` allows, at least ``min_rounds``. The
            figure is their median.
    """
    plan = plan_for(repeats, warmup, budget_s, min_rounds)
    (result,) = measure_interleaved(
        [model], size, device, batch_size, dtype, plan, channels_last, compiled, batch_policy
    )
    return result


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
    x = _input(probe, size, device, channels_last)
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
    # Under no_grad with the parameters frozen, as timm's own FLOP counts run: the counter's module tracker hooks
    # autograd, and inference_mode tensors have no autograd history to hook (CaiT's class attention fails there).
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        # The math backend spells attention out as two batched matmuls the counter sees; the fused kernels it picks
        # by default on CPU are invisible to it.
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
            model(x)
    finally:
        for p in frozen:
            p.requires_grad_(True)
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


__all__ = [
    "DEFAULT_BUDGET_S",
    "DEFAULT_MIN_ROUNDS",
    "ThroughputResult",
    "TimingPlan",
    "benchmark_model",
    "benchmark_models",
    "count_flops",
    "find_max_batch",
    "fit_batch_to_budget",
    "forward_once",
    "interleaved_rounds",
    "matmul_peak_gflops",
    "measure_interleaved",
    "measure_throughput",
    "prepare_for_timing",
    "plan_for",
    "resolve_batch",
    "row_extra",
]
