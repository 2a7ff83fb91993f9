"""How to time: the rounds (a forced number, or a time budget with a floor and a cap) and the settings of a timing."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import DEFAULT_BUDGET_S, DEFAULT_MIN_ROUNDS
from ..errors import CpvtEvalError

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


@dataclass(frozen=True)
class TimingSettings:
    """Everything ``time_models`` needs besides the models, the size and the device.

    Attributes:
        plan: warm-up, and a forced round count or a time budget.
        batch_size: images per timed forward, the same for every model: a number, or ``auto`` (CUDA: the largest
            power of two that fits every model; the CPU: 64).
        fit_budget: halve the batch until ``plan.min_rounds`` forwards of the slowest model fit the budget, never
            below 8 images (``fit_batch_to_budget``; a forced round count keeps the batch).
        dtype: ``fp32``, or ``bf16``/``fp16`` autocast; the matmul peak is measured in it too.
        channels_last, compile, compile_backend: how the timed module is prepared (``prepare_for_timing``).
        flops: count GFLOPs per image (attention included) and measure the device's matmul peak.
    """

    plan: TimingPlan = TimingPlan()
    batch_size: int | str = 64
    fit_budget: bool = False
    dtype: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    compile_backend: str = "inductor"
    flops: bool = True
