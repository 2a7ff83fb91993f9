"""Accuracy by size (``cpvt-eval resolution``): top-1 and top-5 of each model at each size, per image.

The probe the tool started with: its cells are ``CellOutput`` (integer counts and per-image top-5), its rows are
plain ``ResultRow`` (``CellId.probe`` empty, so its keys are those of every earlier version), and its reports are
``results.*`` (``report.text``). Under torchrun each process evaluates its shard and the cells merge field by field
as ``CellOutput`` says.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .base import Probe

if TYPE_CHECKING:
    import torch

    from ..config import Progress
    from ..data import ImageSet
    from ..engine import EvalModel, EvalSettings, PassInfo

__all__ = ["CellOutput", "Resolution", "evaluate_size", "sweep"]


def _merged(how: str, default=dataclasses.MISSING):
    """A ``CellOutput`` field and how the shards of a torchrun job combine it (see ``distributed.merge_cells``):
    ``same`` (every rank has the same value), ``sum``, ``max``, ``min``, or ``samples`` (per-image tensors,
    concatenated and put back in dataset order)."""
    return field(default=default, metadata={"merge": how})


@dataclass
class CellOutput:
    """The outcome of one (model, size) cell: integer counts and per-sample predictions."""

    model: str = _merged("same")
    size: int = _merged("same")
    pe_policy: str = _merged("same")
    grid: str = _merged("same")
    resize_size: int = _merged("same")
    correct1: int = _merged("sum")
    correct5: int = _merged("sum")
    n: int = _merged("sum")
    # The ranks start a pass together, so the slowest rank's time is the wall time of the data-parallel pass.
    duration_s: float = _merged("max")
    indices: torch.Tensor = _merged("samples")  # (n,) positions in the ImageSet
    labels: torch.Tensor = _merged("samples")  # (n,)
    topk: torch.Tensor = _merged("samples")  # (n, k) predicted class indices, best first (k = min(5, classes))
    batch_size: int = _merged("min", 0)  # the batch the model finally ran at (smaller after an OOM)
    oom_retries: int = _merged("sum", 0)
    nonfinite: int = _merged("sum", 0)  # images whose logits hold a NaN or an infinity (broken weights, fp16 overflow)

    @property
    def info(self) -> PassInfo:
        """How the model ran, as every probe's cell says it."""
        from ..engine import PassInfo

        return PassInfo(
            self.model,
            self.size,
            self.pe_policy,
            self.grid,
            self.resize_size,
            self.duration_s,
            self.batch_size,
            self.oom_retries,
            self.nonfinite,
        )

    @property
    def top1_pct(self) -> float:
        return 100.0 * self.correct1 / self.n if self.n else float("nan")

    @property
    def top5_pct(self) -> float:
        return 100.0 * self.correct5 / self.n if self.n else float("nan")


class Accuracy:
    """Top-1/top-5 hits and the per-image top-k of one model over a pass."""

    def __init__(self, k: int, n: int):
        import torch

        self.k = k
        self.topk = torch.empty((n, k), dtype=torch.int16)
        self.labels = torch.empty(n, dtype=torch.int64)
        self.indices = torch.empty(n, dtype=torch.int64)
        self.correct1 = self.correct5 = self.n = 0

    def update(self, batch, view, x, runner) -> None:
        pred = runner.topk(x, self.k)
        hits = pred.eq(batch.target_dev.view(-1, 1))
        self.correct1 += int(hits[:, 0].sum())
        self.correct5 += int(hits.any(dim=1).sum())
        self.topk[batch.at] = pred.to("cpu", self.topk.dtype)
        self.labels[batch.at] = batch.target
        self.indices[batch.at] = batch.indices
        self.n += batch.size

    def finish(self, info: PassInfo) -> CellOutput:
        return CellOutput(
            model=info.model,
            size=info.size,
            pe_policy=info.pe_policy,
            grid=info.grid,
            resize_size=info.resize_size,
            correct1=self.correct1,
            correct5=self.correct5,
            n=self.n,
            duration_s=info.duration_s,
            indices=self.indices,
            labels=self.labels,
            topk=self.topk,
            batch_size=info.batch_size,
            oom_retries=info.oom_retries,
            nonfinite=info.nonfinite,
        )


class Resolution(Probe):
    """Top-1/top-5 of each model at each size under the eval transform (the paper's experiment)."""

    name = "resolution"
    distributed = True

    def identity(self) -> str:
        return ""  # the cells of the first probe keep the keys they always had

    def pass_label(self, size: int, models: list[EvalModel]) -> str:
        return f"{size}px · {', '.join(m.name for m in models)}"

    def accumulator(self, m: EvalModel, size: int, n: int, settings: EvalSettings) -> Accuracy:
        return Accuracy(settings.k_for(m), n)

    def counts(self, cell: CellOutput) -> tuple[int, int, int]:
        return cell.correct1, cell.correct5, cell.n

    def arrays(self, cell: CellOutput) -> dict:
        """Per-image predictions in compact numpy form: sample index and label (int32), top-5 class indices."""
        import numpy as np

        top5 = cell.topk.numpy()
        return {
            "indices": cell.indices.numpy().astype(np.int32),
            "labels": cell.labels.numpy().astype(np.int32),
            "top5": top5 if top5.dtype == np.int16 else top5.astype(np.int32),
        }


RESOLUTION = Resolution()


def evaluate_size(
    models: list[EvalModel],
    image_set: ImageSet,
    size: int,
    settings: EvalSettings,
    progress: Progress | None = None,
) -> list[CellOutput]:
    """Every model's accuracy at ``size`` in one pass over ``image_set``; one ``CellOutput`` per model."""
    from ..engine import run_pass

    return run_pass(RESOLUTION, models, image_set, size, settings, progress)


def sweep(models, image_set, sizes, settings, progress=None, todo=None):
    """Yield every (model, size) ``CellOutput``, size by size; ``todo(model, size)`` can skip finished cells."""
    from ..engine import sweep as run_sweep

    return run_sweep(RESOLUTION, models, image_set, sizes, settings, progress, todo)
