"""The evaluation loop every probe shares (``run_pass``): the models of a run, their settings and the forward
runner. Feeds the probes' accumulators; never prints.

A pass is one size: every model of the run sees each batch of it, and every probe that reads the same images
(accuracy, agreement, calibration) reads the same forward: an image is decoded, resized and cropped once per size
whatever the number of models and probes, and each model runs once per view. What a pass computes is the probes'
(``cpvt_eval.probes``).
Batches travel as uint8 and are normalised on the device with each model's own mean/std. On CUDA the loader pins
memory and the copies are non-blocking; an autocast dtype (bf16/fp16) is optional and recorded.

When a model runs out of device memory on a batch, that model (only) halves its batch and retries, splitting every
later batch of the pass into chunks of the smaller size; the batch it finally ran at is recorded in its cell.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

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

    def crop_mode_for(self, requested: str | None) -> str:
        """The crop mode: the run's, or the weights' own for ``weights`` (a transformers ViT processor: ``full``)."""
        return self.data.crop_mode if requested in (None, "weights") else requested

    def transform_at(self, size: int, settings: EvalSettings) -> EvalTransform:
        """The eval transform of this model at ``size`` under ``settings`` (``border`` pads with its mean)."""
        fill = tuple(round(255 * v) for v in self.mean)
        mode = self.crop_mode_for(settings.crop_mode)
        return EvalTransform(
            size,
            self.crop_pct_for(settings.crop_pct),
            self.interpolation_for(settings.interpolation),
            mode,
            fill if mode == "border" else (0, 0, 0),
        )

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    @property
    def num_classes(self) -> int:
        return int(getattr(self.module, "num_classes", 1000))


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
    # where a probe's large per-image records are mapped instead of held on the heap (``probes.base.per_image``)
    scratch: Path | None = None

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


class Outputs:
    """A model's outputs on one view of a batch, shared by every probe of the pass: float32 logits (the label
    subset's classes only, when there is one) and what probes derive from them, each computed once."""

    def __init__(self, logits: torch.Tensor, classes: torch.Tensor | None = None):
        self.logits = logits
        self.classes = classes
        self._top: dict[int, torch.Tensor] = {}
        self._log_probs: torch.Tensor | None = None

    def canonical(self, positions: torch.Tensor) -> torch.Tensor:
        """Positions among the logits as the model's canonical class indices."""
        return self.classes[positions] if self.classes is not None else positions

    def top(self, k: int) -> torch.Tensor:
        """Top-``k`` class indices of every image, best first. With a label subset the ranking is among its classes
        only, and the indices are still the model's (canonical ImageNet-1k) ones."""
        if k not in self._top:
            self._top[k] = self.canonical(self.logits.topk(k, dim=1).indices)
        return self._top[k]

    def log_probs(self) -> torch.Tensor:
        """The log-softmax over the logits' classes (float32)."""
        if self._log_probs is None:
            self._log_probs = torch.log_softmax(self.logits, dim=1)
        return self._log_probs


class ChunkedForward:
    """Run a model on a batch in chunks of at most ``chunk`` images; on OOM halve ``chunk`` and redo the batch.

    The chunk size persists across batches, so after one OOM the rest of the pass runs at the smaller size. With
    ``classes`` (a label subset) the logits are those classes' only, in the subset's order.
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

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Float32 logits of every image of ``x`` (the label subset's classes only, when there is one). Images with
        non-finite logits are counted in ``nonfinite`` (their ranking means nothing)."""
        while True:
            try:
                kept = []
                for start in range(0, x.shape[0], self.chunk):
                    with autocast_context(self.device, self.dtype):
                        logits = self.module(x[start : start + self.chunk])
                    logits = logits.float()
                    if self.classes is not None:
                        logits = logits.index_select(1, self.classes)
                    kept.append(logits)
                out = torch.cat(kept) if len(kept) > 1 else kept[0]
                self.nonfinite += int((~torch.isfinite(out)).any(dim=1).sum())
                return out
            except torch.OutOfMemoryError:
                # Handled after the except block: the traceback's frames hold the failed attempt's activations,
                # and they are only freed once the block is left.
                pass
            if self.chunk == 1:
                raise CpvtEvalError(
                    f"{self.name} does not fit in {self.device} memory even at batch 1 ({tuple(x.shape[1:])} input)"
                )
            kept = logits = None
            release_cached_memory(self.device)
            self.chunk = max(1, min(self.chunk, x.shape[0]) // 2)
            self.retries += 1

    def __call__(self, x: torch.Tensor) -> Outputs:
        return Outputs(self.logits(x), self.classes)


def clean_worker_error(e: Exception) -> Exception:
    """A DataLoader worker re-raises our error wrapped in its own traceback text; keep the last line only."""
    text = str(e).strip().splitlines()
    if isinstance(e, CpvtEvalError) and len(text) > 1:
        last = text[-1].split(": ", 1)[-1]
        return type(e)(last)
    return e


@dataclass
class Batch:
    """One loader batch as every probe sees it: labels (CPU and device), positions in the ImageSet, and where the
    batch starts in the pass (``at``: ``slice(start, start + size)``)."""

    target: torch.Tensor
    target_dev: torch.Tensor
    indices: torch.Tensor
    at: slice

    @property
    def size(self) -> int:
        return self.at.stop - self.at.start


@dataclass
class View:
    """Images a probe shows every model (uint8 on the device) and the probe's own tag for them (shift: the epoch
    and which of the pair)."""

    images: torch.Tensor
    tag: object = None


@dataclass
class PassInfo:
    """What the pass skeleton knows of each (model, size) cell, whatever the probe: how the model ran."""

    model: str
    size: int
    pe_policy: str
    grid: str
    resize_size: int
    duration_s: float
    batch_size: int
    oom_retries: int
    nonfinite: int


@dataclass
class Work:
    """One cell of a pass: the accumulator a probe keeps for one model."""

    probe: object
    model: EvalModel
    accumulator: object


def run_pass(
    work: list[Work],
    image_set: ImageSet,
    size: int,
    settings: EvalSettings,
    progress: Progress | None = None,
) -> list[PassInfo]:
    """Feed every accumulator of ``work`` one pass over ``image_set`` at ``size``; returns how each model ran (one
    ``PassInfo`` per item of ``work``, in its order).

    The skeleton every probe shares: the module and PE policy of each model at this size, one loader whose images
    are decoded once for every model and probe, normalisation on the device with each model's own mean/std, one
    forward per model and view whose outputs every probe of the pass reads (``Outputs``), the batch halving on
    out-of-memory, interrupts checked per batch, progress. The probes of one pass decode and view the images alike
    (``Probe.shares_passes``, or one probe alone): its first probe says how (``transform``, ``views``). Models
    whose transforms differ (each its weights' own crop or interpolation, ``border`` fills) are evaluated in one
    pass per transform.
    """
    groups: dict[tuple, list[int]] = {}
    for i, w in enumerate(work):
        t = w.probe.transform(w.model, size, settings)
        groups.setdefault((t.size, t.crop_pct, t.interpolation, t.crop_mode, t.fill), []).append(i)
    if len(groups) > 1:
        infos: dict[int, PassInfo] = {}
        for members in groups.values():
            part = run_pass([work[i] for i in members], image_set, size, settings, progress)
            infos.update(zip(members, part, strict=True))
        return [infos[i] for i in range(len(work))]
    progress = progress or Progress()
    models = list({w.model.name: w.model for w in work}.values())
    by_model = {m.name: [w.accumulator for w in work if w.model.name == m.name] for m in models}
    probe = work[0].probe
    # One module per model for this size: the model itself, or one timm built at this size (dropped after the pass).
    sized = [m.sizer.module_at(size, settings.pe) for m in models]
    modules = [module for module, _ in sized]
    rebuilt = any(module is not m.module for module, m in zip(modules, models, strict=True))
    transform = probe.transform(models[0], size, settings)
    loader = make_loader(
        EvalDataset(image_set, transform),
        settings.batch_size,
        settings.workers,
        pin_memory=settings.device.type == "cuda",
    )
    n_total = len(image_set)
    runners = settings.runners(modules, models)
    non_blocking = settings.device.type == "cuda"
    seen = 0
    names = ", ".join(m.name for m in models)
    probes = "+".join(dict.fromkeys(w.probe.name for w in work if w.probe.name != "resolution"))
    progress.start(f"{size}px {probes} · {names}" if probes else f"{size}px · {names}", n_total)
    t0 = time.perf_counter()
    try:
        with torch.inference_mode():
            for images, target, idx in loader:
                interrupts.check()
                b = images.shape[0]
                images = images.to(settings.device, non_blocking=non_blocking)
                batch = Batch(target, target.to(settings.device, non_blocking=non_blocking), idx, slice(seen, seen + b))
                for view in probe.views(images, batch, size):
                    normalized: dict[tuple, torch.Tensor] = {}
                    for runner, m in zip(runners, models, strict=True):
                        key = (m.mean, m.std)
                        if key not in normalized:
                            normalized[key] = normalize_batch(view.images, m.mean, m.std)
                        out = runner(normalized[key])
                        for acc in by_model[m.name]:
                            acc.update(batch, view, out)
                seen += b
                progress.advance(b)
    except CpvtEvalError as e:
        raise clean_worker_error(e) from None
    finally:
        progress.finish()
    duration = time.perf_counter() - t0
    grids = {m.name: grid_of(module) for m, module in zip(models, modules, strict=True)}
    info_of = {}
    for (_, policy), m, runner in zip(sized, models, runners, strict=True):
        grid = grids[m.name]
        info_of[m.name] = PassInfo(
            model=m.name,
            size=size,
            pe_policy=policy,
            grid=f"{grid[0]}x{grid[1]}" if grid else "",
            resize_size=transform.resize_size,
            duration_s=duration,
            batch_size=runner.chunk,
            oom_retries=runner.retries,
            nonfinite=runner.nonfinite,
        )
    del sized, modules
    if rebuilt:
        release_cached_memory(settings.device)
    if seen != n_total:
        raise DataError(f"the data pass at {size}px saw {seen} of {n_total} images")
    return [replace(info_of[w.model.name]) for w in work]
