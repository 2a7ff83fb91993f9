"""Model-only throughput and FLOPs, timed apart from accuracy.

Throughput follows the field's protocol (DeiT's ``throughput``, timm's ``benchmark.py``): synthetic input of the
evaluation shape, warm-up, device-synchronised timing; we report the median of repeated timed runs and their
spread rather than one mean, because a single slow run (another process, a clock change) should not move the
figure. Models compared at a size are timed together in interleaved rounds (one forward of each per round), so
that a drift of the machine lands on all of them alike and their ratio, taken round by round, stays put. How
long to time is a ``TimingPlan``: a forced number of rounds, or a time budget with a floor of rounds (the
bounded default of ``resolution``'s throughput column); everything else about a timing is a ``TimingSettings``.

Two entry points: ``time_models(models, size, device, settings)`` times the models of a size together (the
``throughput`` command and the ``resolution`` job), ``measure_throughput(model, size, device, settings)`` one model
(the public convenience, ``cpvt_eval.measure_throughput``).

FLOPs are counted with ``torch.utils.flop_counter`` while attention runs through the math SDPA backend, because
the counter does not see the fused CPU attention kernel (it would miss the ``QK^T`` and ``AV`` products).

Each result also carries the device's measured peak: a dense matmul microbenchmark in the same dtype, so that
achieved GFLOP/s can be read against what the hardware does on the friendliest possible workload.

Modules: ``plan`` (``TimingPlan``, ``TimingSettings``), ``rounds`` (the interleaved timing loop), ``rows``
(``ThroughputResult`` and the figures a result row carries), ``batch`` (the batch to time at), ``flops``, ``peak``
(the matmul peak) and ``benchmark`` (the entry points, full rows from all of them). Every public name is
importable from here.
"""

from ..config import DEFAULT_BUDGET_S, DEFAULT_MIN_ROUNDS
from .batch import FIT_PROBE_BATCH, MAX_AUTO_BATCH, find_max_batch, fit_batch_to_budget, resolve_batch
from .benchmark import measure_throughput, time_models
from .flops import count_flops
from .peak import matmul_peak_gflops
from .plan import DEFAULT_MAX_ROUNDS, TimingPlan, TimingSettings
from .rounds import forward_once, interleaved_rounds, load_average, prepare_for_timing, quartiles, synthetic_input
from .rows import ROW_EXTRA_FIELDS, ThroughputResult, row_extra

__all__ = [
    "DEFAULT_BUDGET_S",
    "DEFAULT_MAX_ROUNDS",
    "DEFAULT_MIN_ROUNDS",
    "FIT_PROBE_BATCH",
    "MAX_AUTO_BATCH",
    "ROW_EXTRA_FIELDS",
    "ThroughputResult",
    "TimingPlan",
    "TimingSettings",
    "count_flops",
    "find_max_batch",
    "fit_batch_to_budget",
    "forward_once",
    "interleaved_rounds",
    "load_average",
    "matmul_peak_gflops",
    "measure_throughput",
    "prepare_for_timing",
    "quartiles",
    "resolve_batch",
    "row_extra",
    "synthetic_input",
    "time_models",
]
