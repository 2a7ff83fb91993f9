"""The evaluation loop. Returns counts and per-sample predictions; never prints.

For each size there is one pass over the dataset, and every model of the run sees each batch of that pass: an
image is decoded, resized and cropped once per size whatever the number of models. Batches travel as uint8 and
are normalised on the device with each model's own mean/std. On CUDA the loader pins memory and the copies are
non-blocking; an autocast dtype (bf16/fp16) is optional and recorded.

When a model runs out of device memory on a batch, that model (only) halves its batch and retries, splitting every
later batch of the pass into chunks of the smaller size; the batch it finally ran at is recorded in its cell.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from . import interrupts
from .config import Progress
from .data import EvalDataset, EvalTransform, ImageSet, make_loader, normalize_batch
from .errors import CpvtEvalError, DataError, ModelError
from .models.introspect import grid_of
from .models.posenc import InPlace, PEOptions
from .models.registry import DataConfig, ModelSpec
from .runtime import autocast_context, release_cached_memory


@dataclass
class EvalModel:
    """A model ready to evaluate: its canonical name, spec, module (on the device), and preprocessing constants.

    ``module`` is the model at its native size, weights as loaded; ``sizer`` gives the module to run at each size
    and its PE policy (``posenc.size_adapter``; default: the module itself, adapted in place).
    """

    name: str
    spec: ModelSpec
    module: nn.Module
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    checkpoint: str = ""
    checkpoint_sha256: str = ""
    load_report: dict = field(default_factory=dict)
    model_args: dict = field(default_factory=dict)
    sizer: object = None
    data: DataConfig | None = None  # the weights' own data config (mean/std above are its normalisation)

    def __post_init__(self):
        if self.sizer is None:
            self.sizer = InPlace(self.module)
        if self.data is None:
            self.data = DataConfig(mean=tuple(self.mean), std=tuple(self.std))

    def crop_pct_for(self, requested: float | None) -> float:
        """The crop ratio this model is evaluated at: the run's, or the weights' own when the run says None."""
        return self.data.crop_pct if requested is None else requested

    def interpolation_for(self, requested: str | None) -> str:
        return self.data.interpolation if requested in (None, "weights") else requested

    def transform_at(self, size: int, settings: EvalSettings) -> EvalTransform:
        """The eval transform of this model at ``size`` under ``settings`` (``border`` pads with its mean)."""
        fill = tuple(round(255 * v) for v in self.mean)
        return EvalTransform(
            size,
            self.crop_pct_for(settings.crop_pct),
            self.interpolation_for(settings.interpolation),
            settings.crop_mode,
            fill if settings.crop_mode == "border" else (0, 0, 0),
        )

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    @property
    def num_classes(self) -> int:
        return int(getattr(self.module, "num_classes", 1000))


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
    def top1_pct(self) -> float:
        return 100.0 * self.correct1 / self.n if self.n else float("nan")

    @property
    def top5_pct(self) -> float:
        return 100.0 * self.correct5 / self.n if self.n else float("nan")


@dataclass(frozen=True)
class EvalSettings:
    """How a data pass runs. ``crop_pct`` None and ``interpolation`` ``weights`` take each model's own."""

    device: torch.device
    batch_size: int = 64
    workers: int = 0
    crop_pct: float | None = 0.875
    interpolation: str = "bicubic"
    dtype: str = "fp32"
    pe: PEOptions = PEOptions()
    crop_mode: str = "center"
    # a label subset (ImageNet-A/-R: canonical indices): the argmax is taken over these classes only
    classes: tuple[int, ...] = ()

    def k_for(self, model: EvalModel) -> int:
        """How many predictions a cell keeps per image: 5, or fewer when the model (or the subset) has fewer."""
        return min(5, len(self.classes) or model.num_classes)

    def runners(self, modules: list[nn.Module], models: list[EvalModel]) -> list[ChunkedForward]:
        """One forward runner per model, restricted to the label subset when there is one."""
        classes = torch.tensor(self.classes, dtype=torch.int64, device=self.device) if self.classes else None
        for m in models:
            if self.classes and max(self.classes) >= m.num_classes:
                raise ModelError(
                    f"the label subset names class {max(self.classes)}, and {m.name} has {m.num_classes} classes"
                )
        return [
            ChunkedForward(module, self.batch_size, self.device, self.dtype, m.name, classes)
            for module, m in zip(modules, models, strict=True)
        ]


class ChunkedForward:
    """Run a model on a batch in chunks of at most ``chunk`` images; on OOM halve ``chunk`` and redo the batch.

    The chunk size persists across batches, so after one OOM the rest of the pass runs at the smaller size.
    """

    def __init__(
        self,
        module: nn.Module,
        chunk: int,
        device: torch.device,
        dtype: str,
        name: str = "the model",
        classes: torch.Tensor | None = None,
    ):
        self.module = module
        self.classes = classes
        self.name = name
        self.chunk = chunk
        self.device = device
        self.dtype = dtype
        self.retries = 0
        self.nonfinite = 0

    def topk(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Top-``k`` class indices of every image of ``x``, best first; images with non-finite logits are counted
        in ``nonfinite`` (their ranking means nothing). With ``classes`` (a label subset) the ranking is among
        those classes only, and the indices are still the model's (canonical ImageNet-1k) ones."""
        while True:
            try:
                preds = []
                bad = 0
                for start in range(0, x.shape[0], self.chunk):
                    with autocast_context(self.device, self.dtype):
                        logits = self.module(x[start : start + self.chunk])
                    logits = logits.float()
                    if self.classes is not None:
                        logits = logits.index_select(1, self.classes)
                    bad += int((~torch.isfinite(logits)).any(dim=1).sum())
                    top = logits.topk(k, dim=1).indices
                    preds.append(self.classes[top] if self.classes is not None else top)
                self.nonfinite += bad
                return torch.cat(preds) if len(preds) > 1 else preds[0]
            except torch.OutOfMemoryError:
                # Handled after the except block: the traceback's frames hold the failed attempt's activations,
                # and they are only freed once the block is left.
                pass
            if self.chunk == 1:
                raise CpvtEvalError(
                    f"{self.name} does not fit in {self.device} memory even at batch 1 ({tuple(x.shape[1:])} input)"
                )
            preds = logits = None
            release_cached_memory(self.device)
            self.chunk = max(1, min(self.chunk, x.shape[0]) // 2)
            self.retries += 1


def _clean_worker_error(e: Exception) -> Exception:
    # A DataLoader worker re-raises our error wrapped in its own traceback text; keep the last line only.
    text = str(e).strip().splitlines()
    if isinstance(e, CpvtEvalError) and len(text) > 1:
        last = text[-1].split(": ", 1)[-1]
        return type(e)(last)
    return e


def evaluate_size(
    models: list[EvalModel],
    image_set: ImageSet,
    size: int,
    settings: EvalSettings,
    progress: Progress | None = None,
) -> list[CellOutput]:
    """Evaluate every model at ``size`` in one pass over ``image_set``; return one ``CellOutput`` per model.

    Models whose eval transforms differ (each its weights' own crop or interpolation, ``border`` fills) are evaluated
    in one pass per transform.
    """
    groups: dict[tuple, list[EvalModel]] = {}
    for m in models:
        t = m.transform_at(size, settings)
        groups.setdefault((t.crop_pct, t.interpolation, t.crop_mode, t.fill), []).append(m)
    if len(groups) > 1:
        done = {
            o.model: o for group in groups.values() for o in evaluate_size(group, image_set, size, settings, progress)
        }
        return [done[m.name] for m in models]
    progress = progress or Progress()
    # One module per model for this size: the model itself, or one timm built at this size (dropped after the pass).
    sized = [m.sizer.module_at(size, settings.pe) for m in models]
    modules = [module for module, _ in sized]
    policies = [policy for _, policy in sized]
    rebuilt = any(module is not m.module for module, m in zip(modules, models, strict=True))
    transform = models[0].transform_at(size, settings)
    loader = make_loader(
        EvalDataset(image_set, transform),
        settings.batch_size,
        settings.workers,
        pin_memory=settings.device.type == "cuda",
    )
    n_total = len(image_set)
    k = [settings.k_for(m) for m in models]
    top5 = [torch.empty((n_total, kk), dtype=torch.int16) for kk in k]
    labels = torch.empty(n_total, dtype=torch.int64)
    indices = torch.empty(n_total, dtype=torch.int64)
    correct1 = [0] * len(models)
    correct5 = [0] * len(models)
    seen = 0
    progress.start(f"{size}px · {', '.join(m.name for m in models)}", n_total)
    t0 = time.perf_counter()
    non_blocking = settings.device.type == "cuda"
    runners = settings.runners(modules, models)
    try:
        with torch.inference_mode():
            for images, target, idx in loader:
                interrupts.check()
                b = images.shape[0]
                images = images.to(settings.device, non_blocking=non_blocking)
                target_dev = target.to(settings.device, non_blocking=non_blocking)
                normalized: dict[tuple, torch.Tensor] = {}
                for j, m in enumerate(models):
                    key = (m.mean, m.std)
                    if key not in normalized:
                        normalized[key] = normalize_batch(images, m.mean, m.std)
                    pred = runners[j].topk(normalized[key], k[j])
                    hits = pred.eq(target_dev.view(-1, 1))
                    correct1[j] += int(hits[:, 0].sum())
                    correct5[j] += int(hits.any(dim=1).sum())
                    top5[j][seen : seen + b] = pred.to("cpu", torch.int16)
                labels[seen : seen + b] = target
                indices[seen : seen + b] = idx
                seen += b
                progress.advance(b)
    except CpvtEvalError as e:
        raise _clean_worker_error(e) from None
    finally:
        progress.finish()
    duration = time.perf_counter() - t0
    grids = [grid_of(module) for module in modules]
    chunks = [r.chunk for r in runners]
    retries = [r.retries for r in runners]
    nonfinite = [r.nonfinite for r in runners]
    del sized, modules, runners
    if rebuilt:
        release_cached_memory(settings.device)
    if seen != n_total:
        raise DataError(f"the data pass at {size}px saw {seen} of {n_total} images")
    outputs = []
    for j, m in enumerate(models):
        grid = grids[j]
        outputs.append(
            CellOutput(
                model=m.name,
                size=size,
                pe_policy=policies[j],
                grid=f"{grid[0]}x{grid[1]}" if grid else "",
                resize_size=transform.resize_size,
                correct1=correct1[j],
                correct5=correct5[j],
                n=seen,
                duration_s=duration,
                indices=indices.clone(),
                labels=labels.clone(),
                topk=top5[j],
                batch_size=chunks[j],
                oom_retries=retries[j],
                nonfinite=nonfinite[j],
            )
        )
    return outputs


def sweep(
    models: list[EvalModel],
    image_set: ImageSet,
    sizes: Iterable[int],
    settings: EvalSettings,
    progress: Progress | None = None,
    todo: Callable[[EvalModel, int], bool] | None = None,
) -> Iterator[CellOutput]:
    """Yield every (model, size) cell, size by size; ``todo`` can skip cells already finished."""
    for size in sizes:
        active = [m for m in models if todo is None or todo(m, size)]
        if active:
            yield from evaluate_size(active, image_set, size, settings, progress)
