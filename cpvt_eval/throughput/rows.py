"""One model-only timing as a record (``ThroughputResult``), and the figures a ``resolution`` row carries of it."""

from __future__ import annotations

from dataclasses import asdict, dataclass


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
    load_avg: float | None = None  # the machine's 1-minute load average when the rounds ended (all cores)
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
    "load_avg",
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
