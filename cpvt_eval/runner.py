"""The ``resolution`` job as a library call: build models, sweep sizes, store rows, render reports.

``run_resolution`` never prints: progress goes through the ``Progress`` hook and messages through ``log``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import distributed, report
from .checkpoints import fetch_pretrained, load_checkpoint
from .config import RunConfig
from .data import ImageSet, apply_bad_image_policy, default_workers, load_real_labels, open_dataset, real_score
from .distributed import DistContext
from .engine import CellOutput, EvalModel, EvalSettings, Progress, sweep
from .errors import CpvtEvalError, ModelError
from .models.posenc import patch_size_of, pe_kind_of
from .models.registry import ModelSpec, resolve
from .results import ResultRow, RunStore, format_ci, now_iso, versions_string
from .throughput import count_flops, measure_throughput

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CpvtEvalError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CpvtEvalError("--device cuda asked for, but no CUDA device is available")
    return device


def check_sizes(sizes, patch: int, model: str) -> None:
    for s in sizes:
        if s <= 0 or (patch and s % patch):
            raise ModelError(f"size {s} is not a positive multiple of {model}'s patch size {patch}")


def build_model(
    name: str,
    checkpoint: str | None = None,
    model_args: dict | None = None,
    device: torch.device | str = "cpu",
    ema: bool | None = None,
    log: Log = _quiet,
) -> EvalModel:
    """Resolve ``name``, build it, load its weights strictly and put it on ``device`` in eval mode."""
    spec = resolve(name)
    module = spec.create(**(model_args or {}))
    if checkpoint:
        load = load_checkpoint(module, checkpoint, ema=ema)
    elif spec.default_weights:
        path = fetch_pretrained(spec.default_weights)
        load = load_checkpoint(module, path, ema=ema)
        load.source = f"timm:{spec.default_weights}"
    else:
        raise ModelError(f"{spec.name} has no published weights: pass a checkpoint with --checkpoint {name}=PATH")
    log(f"{spec.name}: loaded {load.summary()}")
    module.eval().to(device)
    cfg = getattr(module, "pretrained_cfg", None) or {}
    mean = tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225)))
    return EvalModel(
        key=spec.name,
        spec=spec,
        module=module,
        mean=mean,
        std=std,
        checkpoint=load.source,
        checkpoint_sha256=load.sha256,
        load_report=load.to_dict(),
        model_args=dict(model_args or {}),
    )


def _pe_label(m: EvalModel) -> str:
    if m.spec.pe != "auto":
        return m.spec.pe
    return pe_kind_of(m.module)


@dataclass
class RunOutcome:
    store: RunStore | None  # None on the ranks other than 0 of a torchrun job
    rows: list[ResultRow] = field(default_factory=list)


def make_row(
    m: EvalModel,
    cell: CellOutput,
    cfg: RunConfig,
    image_set: ImageSet,
    device: torch.device,
    started_at: str,
    images_per_sec: float | None,
    throughput_batch: int | None,
    gflops: float | None,
) -> ResultRow:
    return ResultRow(
        model=m.key,
        pe=_pe_label(m),
        checkpoint=m.checkpoint,
        checkpoint_sha256=m.checkpoint_sha256,
        img_size=cell.size,
        grid=cell.grid,
        resize_size=cell.resize_size,
        crop_pct=cfg.crop_pct,
        interpolation=cfg.interpolation,
        pe_policy=cell.pe_policy,
        dtype=cfg.dtype,
        device=str(device),
        n_images=cell.n,
        n_skipped=0,
        correct1=cell.correct1,
        correct5=cell.correct5,
        top1=round(cell.top1, 4),
        top5=round(cell.top5_acc, 4),
        top1_ci95=format_ci(cell.correct1, cell.n),
        images_per_sec=None if images_per_sec is None else round(images_per_sec, 2),
        throughput_batch=throughput_batch,
        gflops_per_image=None if gflops is None else round(gflops, 4),
        params=m.num_params,
        dataset=str(image_set.root),
        dataset_fingerprint=image_set.fingerprint,
        partial=not image_set.is_full_imagenet_val,
        limit=image_set.limit,
        model_args=",".join(f"{k}={v}" for k, v in sorted(m.model_args.items())),
        versions=versions_string(),
        started_at=started_at,
        duration_s=round(cell.duration_s, 3),
    )


def prepare_models(cfg: RunConfig, device: torch.device, log: Log = _quiet) -> list[EvalModel]:
    if not cfg.models:
        raise CpvtEvalError("no model given: use --model NAME (see `cpvt-eval models`)")
    specs: list[ModelSpec] = [resolve(n) for n in cfg.models]
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise CpvtEvalError(f"model {dupes[0]} is given twice")
    canonical_ckpt = {}
    for key, path in cfg.checkpoints.items():
        canonical_ckpt[resolve(key).name] = path
    unknown = sorted(set(canonical_ckpt) - set(names))
    if unknown:
        raise CpvtEvalError(f"--checkpoint names {unknown[0]}, which is not among the --model values")
    canonical_args = {resolve(k).name: v for k, v in cfg.model_args.items()}
    models = []
    for name, spec in zip(cfg.models, specs, strict=True):
        m = build_model(name, canonical_ckpt.get(spec.name), canonical_args.get(spec.name), device, cfg.ema, log)
        check_sizes(cfg.sizes, patch_size_of(m.module), spec.name)
        models.append(m)
    return models


def run_resolution(
    cfg: RunConfig,
    progress: Progress | None = None,
    log: Log = _quiet,
    argv: list[str] | None = None,
    dist: DistContext | None = None,
) -> RunOutcome:
    """Evaluate every model at every size of ``cfg`` and write the run directory. Returns the rows.

    Under torchrun every process calls this: each evaluates its shard, rank 0 gathers the predictions and alone
    writes the run directory, reports progress and logs; the other ranks return an outcome without a store.
    ``dist`` is the caller's ``distributed.session``; without one the call opens its own.
    """
    if dist is None:
        with distributed.session(cfg.device) as dist:
            return run_resolution(cfg, progress, log, argv, dist)
    if not dist.is_main:
        progress, log = None, _quiet
    with dist.shared_failures():
        return _run_resolution(cfg, progress, log, argv, dist)


def _run_resolution(
    cfg: RunConfig, progress: Progress | None, log: Log, argv: list[str] | None, dist: DistContext
) -> RunOutcome:
    device = dist.device if dist.enabled else resolve_device(cfg.device)
    if not cfg.sizes:
        raise CpvtEvalError("no size given: use --sizes 224 384 ...")
    image_set = open_dataset(cfg.data, cfg.limit, cfg.layout, cfg.labels, cfg.classes, cfg.class_names)
    image_set.decode_draft = cfg.decode_draft
    log(f"dataset {image_set.root}: {len(image_set)} images, fingerprint {image_set.fingerprint}")
    apply_bad_image_policy(
        image_set, cfg.on_bad_image, default_workers() if cfg.workers is None else cfg.workers, progress
    )
    real = load_real_labels(cfg.real_labels).for_image_set(image_set) if cfg.real_labels else None
    models = prepare_models(cfg, device, log)
    store = RunStore(cfg.out) if dist.is_main else None
    dist.check_inputs(image_set, models)
    if store is not None:
        store.write_provenance(
            argv or [], str(device), {"config": _config_summary(cfg), "distributed": dist.describe()}
        )
        if image_set.skipped:
            store.write_text("skipped.tsv", "".join(f"{rel}\t{why}\n" for rel, why in image_set.skipped))
    settings = EvalSettings(
        device=device,
        batch_size=cfg.batch_size,
        workers=default_workers(dist.local_world_size) if cfg.workers is None else cfg.workers,
        crop_pct=cfg.crop_pct,
        interpolation=cfg.interpolation,
        dtype=cfg.dtype,
        pe=cfg.pe,
    )
    by_key = {m.key: m for m in models}
    outcome = RunOutcome(store=store)
    started = now_iso()
    shard = dist.shard(image_set, cfg.batch_size)
    for cell in dist.gather_cells(sweep(models, shard.image_set, cfg.sizes, settings, progress), shard):
        m = by_key[cell.model]
        ips = batch = gflops = None
        if cfg.throughput.enabled:
            batch = cfg.throughput.batch_size or cfg.batch_size
            t = measure_throughput(
                m.module, cell.size, device, batch, cfg.dtype, cfg.throughput.warmup, cfg.throughput.repeats
            )
            ips = t.images_per_sec
            gflops = count_flops(m.module, cell.size, device)
        row = make_row(m, cell, cfg, image_set, device, started, ips, batch, gflops)
        add_data_columns(row, cell, image_set, real)
        _scale_out_columns(row, cell, dist)
        store.append(row)
        store.save_predictions(
            f"{m.key}_{cell.size}",
            {"indices": cell.indices, "labels": cell.labels, "top5": cell.top5},
        )
        outcome.rows.append(row)
        write_reports(store)
        log(f"{m.key} @ {cell.size}px: top-1 {row.top1:.2f}%  top-5 {row.top5:.2f}%  ({cell.n} images)")
    return outcome


def add_data_columns(row: ResultRow, cell: CellOutput, image_set: ImageSet, real: list | None) -> None:
    """The data layer's columns of a row: layout, label source, skipped files, draft decoding, ReaL top-1."""
    row.layout = image_set.layout
    row.label_source = image_set.label_source
    row.n_skipped = len(image_set.skipped)
    row.skipped_files = ";".join(rel for rel, _ in image_set.skipped)
    row.decode_draft = image_set.decode_draft
    if real is not None:
        score = real_score(real, cell.indices, cell.top5[:, 0])
        row.real_top1 = None if score.top1 is None else round(score.top1, 4)
        row.real_n = score.n
        row.real_excluded = score.excluded


def _scale_out_columns(row: ResultRow, cell: CellOutput, dist: DistContext) -> None:
    """Say how the speed figures were measured, keeping the model-only and the data-parallel figures apart."""
    row.world_size = dist.world_size
    if row.images_per_sec is not None:
        row.throughput_scope = "model-only per rank" if dist.enabled else "model-only"
    if cell.duration_s > 0:
        row.aggregate_images_per_sec = round(cell.n / cell.duration_s, 2)


def write_reports(store: RunStore) -> list[Path]:
    rows = store.rows()
    return [
        store.write_text("results.csv", report.to_csv(rows)),
        store.write_text("results.md", report.markdown_report(rows)),
    ]


def _config_summary(cfg: RunConfig) -> dict:
    return {
        "models": list(cfg.models),
        "sizes": list(cfg.sizes),
        "data": str(cfg.data),
        "checkpoints": {k: str(v) for k, v in cfg.checkpoints.items()},
        "model_args": cfg.model_args,
        "limit": cfg.limit,
        "layout": cfg.layout,
        "labels": None if cfg.labels is None else str(cfg.labels),
        "classes": None if cfg.classes is None else str(cfg.classes),
        "class_names": None if cfg.class_names is None else list(cfg.class_names),
        "real_labels": cfg.real_labels,
        "on_bad_image": cfg.on_bad_image,
        "decode_draft": cfg.decode_draft,
        "crop_pct": cfg.crop_pct,
        "interpolation": cfg.interpolation,
        "batch_size": cfg.batch_size,
        "dtype": cfg.dtype,
        "pe": {"ape_interpolation": cfg.pe.ape_interpolation, "antialias": cfg.pe.antialias, "sincos": cfg.pe.sincos},
        "seed": 0,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def count_params(spec: ModelSpec) -> int:
    """Parameter count without allocating weights (the model is built on the meta device)."""
    with torch.device("meta"):
        module = spec.create()
    return sum(p.numel() for p in module.parameters())
