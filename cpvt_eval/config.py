"""Frozen configuration of a run: what the CLI builds and the library consumes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ModelError

REPORT_FORMATS = ("md", "csv", "tex", "json", "png")
APE_INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "area")
WINDOWS = ("keep", "scale")


def say_nothing(_: str) -> None:
    pass


class Progress:
    """Progress hook of a data pass; the CLI connects a rich bar to it. The default does nothing."""

    def start(self, label: str, total: int) -> None:  # noqa: B027 (a no-op default is the point)
        pass

    def advance(self, n: int) -> None:  # noqa: B027
        pass

    def finish(self) -> None:  # noqa: B027
        pass


@dataclass(frozen=True)
class Hooks:
    """How a job talks back to its caller, without printing: progress of each data pass, details (``log``,
    shown with ``--verbose``) and what a user should always see (``notify``, e.g. which finished cells a rerun
    skips). The defaults say nothing."""

    progress: Progress = field(default_factory=Progress)
    log: Callable[[str], None] = say_nothing
    notify: Callable[[str], None] = say_nothing


@dataclass(frozen=True)
class PEOptions:
    """How position encodings meet a new grid (recorded in every result row as ``pe_policy``).

    ``window``: windowed attention (Swin) keeps its window and pads the grid to it (``keep``, timm's default), or
    scales the window with the grid and resamples its relative position bias tables (``scale``).
    """

    ape_interpolation: str = "bicubic"
    antialias: bool = False
    sincos: str = "regenerate"  # or "resample"
    window: str = "keep"  # or "scale"

    def __post_init__(self):
        if self.ape_interpolation not in APE_INTERPOLATIONS:
            raise ModelError(
                f"unknown APE interpolation {self.ape_interpolation!r}; choose one of {', '.join(APE_INTERPOLATIONS)}"
            )
        if self.sincos not in ("regenerate", "resample"):
            raise ModelError(f"--sincos must be 'regenerate' or 'resample', got {self.sincos!r}")
        if self.window not in WINDOWS:
            raise ModelError(f"--window must be 'keep' or 'scale', got {self.window!r}")


# The bounded default of the throughput timing: each model at each size is timed for about this many seconds (its
# share of the interleaved rounds), and never in fewer than this many rounds; a few seconds on a CPU.
DEFAULT_BUDGET_S = 3.0
DEFAULT_MIN_ROUNDS = 3


@dataclass(frozen=True)
class ThroughputConfig:
    """How the model-only throughput column is measured.

    All the models of a size are timed together in interleaved rounds (one forward each per round) right after
    that size's data pass.

    Attributes:
        batch_size: images per timed forward; None: the evaluation batch, halved if need be so that
            ``min_rounds`` forwards of the slowest model fit in ``budget_s`` (never below 8 images).
        warmup: untimed forwards per model before the rounds.
        repeats: force exactly this many rounds; None: as many as ``budget_s`` allows.
        budget_s: seconds of timed forwards per model and size (the bounded default).
        min_rounds: the fewest rounds, whatever the budget.
    """

    enabled: bool = True
    batch_size: int | None = None
    warmup: int = 1
    repeats: int | None = None
    budget_s: float = DEFAULT_BUDGET_S
    min_rounds: int = DEFAULT_MIN_ROUNDS


@dataclass(frozen=True)
class RunConfig:
    """What every probe's run shares: the models, the sizes, the data, the eval transform, where the run is
    written. Each probe's own settings (throughput and ReaL for ``resolution``, the translation protocol for
    ``shift``) are the probe's (``probes``).

    Attributes:
        models: model names or aliases, in table order.
        sizes: evaluation sizes in px.
        data: dataset directory (ImageFolder of WordNet ids).
        out: run directory.
        checkpoints: model name -> checkpoint path; models without one use their default weights.
        model_args: model name -> extra constructor arguments (e.g. ``peg_positions``).
        limit: evaluate a deterministic, class-stratified subset of this many images.
        crop_pct / interpolation: the eval transform (shorter side to ``floor(size / crop_pct)``); None /
            ``"weights"``: each model's own (its weights' data config). Mean and std are always the weights' own.
        crop_mode: timm's ``center`` (the default), ``squash`` or ``border``, or ``full`` (the whole image resized to
            size x size, ``crop_pct`` unused: the official CvT 384 evaluation); see ``data.EvalTransform``;
            ``weights``: each model's own (its weights' data config: ``full`` for a transformers ViTImageProcessor).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        dtype: ``fp32``, ``bf16`` or ``fp16`` (autocast).
        ema: take EMA weights (True), plain weights (False), or plain-if-present (None).
        layout: dataset layout (``auto``, ``imagefolder``, ``flat``, ``imagenetv2``, ``manifest``).
        labels: label file (devkit ground truth, Kaggle LOC_val_solution.csv or a path,label manifest).
        classes: file of WordNet ids: evaluate only these classes.
        class_names: class folder names in label order, for an ImageFolder that is not ImageNet (the offline
            demo); None means the canonical ImageNet-1k WordNet ids.
        class_map: a file naming the models' classes (one name per line, or ``name,index`` rows: timm's
            ``--class-map``): the label space class folders, manifests and ``ClassLabel`` names are mapped onto;
            None: each model's own names (``id2label``, timm's label names), else ImageNet-1k.
        label_subset: restrict the argmax to a label subset: ``imagenet-a``, ``imagenet-r`` (timm's index files) or
            a file of class indices / WordNet ids.
        test_set: the name of the test set the data is, for the reports (else detected from the layout).
        label_key: where a store holds the label (a shard's ``.json`` field, a parquet/arrow column).
        split: the split of a store that holds several (default: ``validation``).
        on_bad_image: ``stop`` before any cell at the first bad file, or ``skip`` and record it.
        decode_draft: let PIL decode JPEGs at a reduced DCT scale (faster, changes pixels; recorded).
        force: recompute cells already finished in the run directory.
        timing: time the models after each size's pass where a probe asks for it (``Probe.timing``); False never
            does (a quick run).
        report_formats: the reports rendered at the end (Markdown and CSV are also rewritten after every cell).
        argv: the command line, for provenance.
    """

    models: tuple[str, ...]
    sizes: tuple[int, ...]
    data: Path
    out: Path
    checkpoints: dict = field(default_factory=dict, hash=False)
    model_args: dict = field(default_factory=dict, hash=False)
    limit: int | None = None
    crop_pct: float | None = 0.875
    interpolation: str = "bicubic"
    crop_mode: str = "center"
    batch_size: int = 64
    workers: int | None = None
    device: str = "auto"
    dtype: str = "fp32"
    pe: PEOptions = PEOptions()
    ema: bool | None = None
    layout: str = "auto"
    labels: Path | None = None
    classes: Path | None = None
    class_names: tuple[str, ...] | None = None
    class_map: Path | None = None
    label_subset: str | None = None
    test_set: str | None = None
    label_key: str | None = None
    split: str | None = None
    on_bad_image: str = "stop"
    decode_draft: bool = False
    force: bool = False
    timing: bool = True
    report_formats: tuple[str, ...] = REPORT_FORMATS
    argv: tuple[str, ...] = ()
