"""The offline demo: every probe on the procedural world with the shipped toy checkpoints.

It is the ImageNet path in small: the validation split is materialised once as an ImageFolder of JPEGs in the
user cache, and every registered probe measures the toy models in one run directory, each with its quick settings
(``Usage.quick``): the probes that read the eval transform's images share one pass per size at 56/96/112/128 px,
and a probe with views of its own (the translation probe) runs at the native size only. The run directory gets the
same reports as an ImageNet run plus ``paper.md``, the demo's accuracy table next to the paper's.

Sizes map to the paper's through the token grid: patch 4 at 56 px gives the 14x14 grid of patch 16 at 224, and
96/112/128 px give the 24/28/32 grids of 384/448/512 px.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..config import Hooks, Progress, RunConfig, say_nothing
from ..errors import CheckpointError, CpvtEvalError, ModelError
from ..jobs.run import RunOutcome, run_probes
from ..models.toys import shipped_weights
from ..probes import PROBES, make, split
from ..published import published_top1, single_reading
from ..results import FIRST_PROBE, ResultRow
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
    """The shipped checkpoint of a toy model (package data under ``cpvt_eval/resources/demo``, ``models.toys``)."""
    if model not in PAPER_MODEL:
        raise ModelError(f"{model} is not a demo model; choose from {', '.join(DEMO_MODELS)}")
    path = shipped_weights(model)
    if path is None:
        raise CheckpointError(
            f"the shipped demo checkpoint of {model} is missing from cpvt_eval/resources/demo "
            "(regenerate it with scripts/train_demo.py)"
        )
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
        throughput: time the models after each size's pass where a probe asks (a short timing: ``Usage.quick``).
        skip: probes left out (default: every registered probe runs).
        settings: probe name -> settings that override its quick ones (``{"shift": {"epochs": 2}}``).
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
    skip: tuple[str, ...] = ()
    settings: dict = field(default_factory=dict, hash=False)
    checkpoints: dict = field(default_factory=dict, hash=False)  # model -> path, overrides the shipped files


@dataclass
class DemoOutcome:
    outcome: RunOutcome
    data_dir: Path
    data_created: bool
    paper_table: str
    rows: dict = field(default_factory=dict)  # probe name -> its rows in the run directory


def run_demo(
    cfg: DemoConfig,
    progress: Progress | None = None,
    log: Callable[[str], None] = say_nothing,
    argv: list[str] | None = None,
) -> DemoOutcome:
    """Materialise the dataset (once), measure the toys with every registered probe, and write ``paper.md``."""
    unknown = [m for m in cfg.models if m not in PAPER_MODEL]
    if unknown:
        raise ModelError(f"{unknown[0]} is not a demo model; choose from {', '.join(DEMO_MODELS)}")
    for name in (*cfg.skip, *cfg.settings):
        if name not in PROBES:
            raise CpvtEvalError(f"unknown probe {name!r}; choose from {', '.join(PROBES)}")
    probes = [
        make(name, **{**dict(cls.report.usage.quick), **cfg.settings.get(name, {})})
        for name, cls in PROBES.items()
        if name not in cfg.skip
    ]
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
        timing=cfg.throughput,
        argv=tuple(argv or ()),
    )
    hooks = Hooks(progress=progress or Progress(), log=log)
    # the probes that read the same images share one pass per size; a probe with views of its own (two shifted
    # views per image and epoch) runs at the native size only, or the demo would outgrow its two minutes
    sharing = [p for p in probes if p.shares_passes]
    outcome = run_probes(run_cfg, sharing, hooks) if sharing else None
    native = (NATIVE_SIZE,) if NATIVE_SIZE in cfg.sizes else run_cfg.sizes[:1]
    for p in probes:
        if not p.shares_passes:
            outcome = run_probes(replace(run_cfg, sizes=native), [p], hooks)
    by_probe = split(outcome.store.rows()) if outcome is not None else {}
    table = paper_table(by_probe.get(FIRST_PROBE, []))
    if outcome is not None and by_probe.get(FIRST_PROBE):
        outcome.store.write_text("paper.md", table + "\n\n" + FINDING + "\n")
    return DemoOutcome(
        outcome=outcome,
        data_dir=data_dir,
        data_created=created,
        paper_table=table,
        rows={p.name: by_probe.get(p.name, []) for p in probes},
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
