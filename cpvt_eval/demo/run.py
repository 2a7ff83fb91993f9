"""The offline demo: the ``resolution`` job on the procedural world with the shipped toy checkpoints.

It is the ImageNet path in small: the validation split is materialised once as an ImageFolder of JPEGs in the
user cache, ``jobs.run.run_resolution`` evaluates the toy models at 56/96/112/128 px through the standard eval
transform, and the run directory gets the same reports as an ImageNet run plus ``paper.md``, the demo's table
next to the paper's. The same run directory also gets the shift table at the native size (``shift.*``) and the
agreement of each size with the native size (``agreement.*``).

Sizes map to the paper's through the token grid: patch 4 at 56 px gives the 14x14 grid of patch 16 at 224, and
96/112/128 px give the 24/28/32 grids of 384/448/512 px.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

from ..config import Hooks, Progress, RunConfig, ThroughputConfig, say_nothing
from ..errors import CheckpointError, ModelError
from ..jobs.run import RunOutcome, run_agreement, run_resolution, run_shift
from ..probes import split
from ..published import published_top1, single_reading
from ..results import ResultRow
from .dataset import CLASSES, materialize

NATIVE_SIZE = 56
DEMO_SIZES = (56, 96, 112, 128)
PAPER_SIZE = {56: 224, 96: 384, 112: 448, 128: 512}  # same token grid: 14, 24, 28, 32
# every toy model that has a shipped checkpoint, and its counterpart in the paper's tables. The registered
# cpvt_toy_gap and deit_toy_sincos have no checkpoint for the current world (dataset version 2) yet.
PAPER_MODEL = {
    "deit_toy": ("deit_tiny_patch16_224", "DeiT-Ti"),
    "cpvt_toy": ("cpvt_ti", "CPVT-Ti"),
    "deit_toy_nope": ("deit_tiny_nope", "DeiT-Ti no PE"),
}
DEMO_MODELS = tuple(PAPER_MODEL)
# learned APE, PEG, and the no-PE reference that shows what position is worth in this world
DEFAULT_MODELS = ("deit_toy", "cpvt_toy", "deit_toy_nope")
# what the shipped toys show, printed under their table so that nobody reads the paper's finding into it
FINDING = (
    "These toys use their position encoding (the README's ablations) but do not reproduce the paper's resolution "
    "effect: the resampled APE holds at every size. The README's section on the offline demo says why."
)


def checkpoint_path(model: str) -> Path:
    """The shipped checkpoint of a toy model (package data under ``cpvt_eval/resources/demo``)."""
    if model not in PAPER_MODEL:
        raise ModelError(f"{model} is not a demo model; choose from {', '.join(DEMO_MODELS)}")
    path = Path(str(resources.files("cpvt_eval.resources").joinpath("demo", f"{model}.safetensors")))
    if not path.is_file():
        raise CheckpointError(f"the shipped demo checkpoint {path} is missing (regenerate with scripts/train_demo.py)")
    return path


@dataclass(frozen=True)
class DemoConfig:
    """What defines a demo run.

    Attributes:
        out: run directory.
        models: toy models to evaluate (each with its shipped checkpoint).
        sizes: eval sizes in px (56 is the native size).
        per_class: validation images per class (10 classes).
        seed: the seed of the procedural world (the checkpoints were trained on seed 0's train split).
        cache_dir: where the dataset is materialised (default: ``dataset.cache_root()``).
        throughput: measure model-only images/s per cell (a short measurement: batch 8, 1 warm-up, 3 runs).
        shift_epochs: passes of the translation probe (`cpvt-eval shift`, Zhang's protocol) over the same images
            at the native size; 0 leaves it out.
        agreement: measure each model's agreement at every size with its own native-size predictions
            (`cpvt-eval agreement`) on the same images.
    """

    out: Path
    models: tuple[str, ...] = DEFAULT_MODELS
    sizes: tuple[int, ...] = DEMO_SIZES
    per_class: int = 50
    seed: int = 0
    cache_dir: Path | None = None
    batch_size: int = 64
    workers: int | None = None
    device: str = "auto"
    throughput: bool = True
    shift_epochs: int = 1
    agreement: bool = True
    checkpoints: dict = field(default_factory=dict, hash=False)  # model -> path, overrides the shipped files


@dataclass
class DemoOutcome:
    outcome: RunOutcome
    data_dir: Path
    data_created: bool
    paper_table: str
    shift_rows: list = field(default_factory=list)  # consistency under translation, one row per model and size
    agreement_rows: list = field(default_factory=list)  # agreement with the native size, one row per model and size


def run_demo(
    cfg: DemoConfig,
    progress: Progress | None = None,
    log: Callable[[str], None] = say_nothing,
    argv: list[str] | None = None,
) -> DemoOutcome:
    """Materialise the dataset (once), run the ``resolution`` job on it, and write ``paper.md``."""
    unknown = [m for m in cfg.models if m not in PAPER_MODEL]
    if unknown:
        raise ModelError(f"{unknown[0]} is not a demo model; choose from {', '.join(DEMO_MODELS)}")
    checkpoints = {m: str(cfg.checkpoints.get(m) or checkpoint_path(m)) for m in cfg.models}
    data_dir, created = materialize(cfg.per_class, cfg.seed, cfg.cache_dir)
    log(f"demo dataset {'written to' if created else 'found in'} {data_dir}")
    run_cfg = RunConfig(
        models=tuple(cfg.models),
        sizes=tuple(cfg.sizes),
        data=data_dir,
        out=cfg.out,
        checkpoints=checkpoints,
        class_names=CLASSES,
        batch_size=cfg.batch_size,
        workers=cfg.workers,
        device=cfg.device,
        # a short throughput measurement (batch 8, 1 warm-up, median of 3): the demo's point is accuracy, and its
        # budget is two minutes on two cores
        throughput=ThroughputConfig(enabled=cfg.throughput, batch_size=8, warmup=1, repeats=3),
        argv=tuple(argv or ()),
    )
    hooks = Hooks(progress=progress or Progress(), log=log)
    outcome = run_resolution(run_cfg, hooks)
    if cfg.shift_epochs:
        # The paper's second claim on the same models and images: consistency under translation (shift.md)
        from ..config import ShiftProtocol

        # at the native size only: two views per image at every size would double the demo's two-minute budget
        shift_cfg = replace(run_cfg, sizes=(NATIVE_SIZE,) if NATIVE_SIZE in cfg.sizes else run_cfg.sizes[:1])
        run_shift(shift_cfg, hooks, ShiftProtocol(epochs=cfg.shift_epochs))
    if cfg.agreement:
        # how each toy's decisions move with the size, against its own predictions at the native size
        run_agreement(replace(run_cfg, throughput=ThroughputConfig(enabled=False)), hooks)
    by_probe = split(outcome.store.rows())
    table = paper_table(by_probe["resolution"])
    outcome.store.write_text("paper.md", table + "\n\n" + FINDING + "\n")
    return DemoOutcome(
        outcome=outcome,
        data_dir=data_dir,
        data_created=created,
        paper_table=table,
        shift_rows=by_probe["shift"],
        agreement_rows=by_probe["agreement"],
    )


def _delta(value: float, base: float | None) -> str:
    if base is None:
        return f"{value:.1f}"
    return f"{value:.1f} ({value - base:+.1f})"


def paper_table(rows: list[ResultRow]) -> str:
    """Markdown: each demo model's top-1 by size (change from native), and its paper counterpart below it at the
    size with the same token grid. Paper values that rest on a single reading carry a ``?``."""
    models = list(dict.fromkeys(r.model for r in rows))
    sizes = sorted({r.img_size for r in rows})
    cells = {(r.model, r.img_size): r.top1 for r in rows}
    pe = {r.model: r.pe for r in rows}
    header = ["model", "PE"] + [f"{s} px ({PAPER_SIZE[s]})" if s in PAPER_SIZE else f"{s} px" for s in sizes]
    body = []
    for m in models:
        native = cells.get((m, NATIVE_SIZE))
        demo = [
            "–" if (m, s) not in cells else _delta(cells[(m, s)], None if s == NATIVE_SIZE else native) for s in sizes
        ]
        body.append([f"{m} (demo)", pe[m], *demo])
        paper_name, label = PAPER_MODEL.get(m, (None, None))
        if paper_name is None:
            continue
        base = published_top1(paper_name, 224)
        line = []
        for s in sizes:
            hit = published_top1(paper_name, PAPER_SIZE[s]) if s in PAPER_SIZE else None
            if hit is None:
                line.append("–")
                continue
            text = _delta(hit[0], None if s == NATIVE_SIZE or base is None else base[0])
            line.append(text + (" ?" if single_reading(hit[1]) else ""))
        body.append([f"{label} (paper, ImageNet)", pe[m]] + line)
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * len(sizes)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)
