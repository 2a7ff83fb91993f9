"""The ``resolution`` job as a library call: build models, sweep sizes, store rows, render reports.

``run_resolution`` never prints: progress goes through the ``Progress`` hook and messages through ``log`` (details)
and ``notify`` (what a user should always see, e.g. which finished cells a rerun skips).

Runs resume: every cell is committed to the run directory the moment it finishes, and a rerun of the same command
skips the cells whose key (``results.cell_key``) is already stored.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import distributed, report
from .checkpoints import load_checkpoint
from .config import RunConfig
from .data import ImageSet, apply_bad_image_policy, default_workers, load_real_labels, open_dataset, real_score
from .distributed import DistContext
from .engine import CellOutput, EvalModel, EvalSettings, Progress, sweep
from .errors import CpvtEvalError, ModelError
from .models.posenc import PEOptions, check_runs_at, patch_size_of, pe_kind_of
from .models.registry import ModelSpec, resolve
from .results import (
    ResultRow,
    RunStore,
    cell_key,
    format_ci,
    now_iso,
    pe_options_label,
    provenance_record,
    versions_string,
)
from .throughput import benchmark_model, row_extra

Log = Callable[[str], None]

# Evaluation is deterministic; the seed is set anyway (and recorded) so that anything random in a model is repeatable.
SEED = 0


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
        load = load_checkpoint(module, f"timm:{spec.default_weights}", ema=ema)
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
    predictions: str = "",
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
        model_args=model_args_label(m),
        versions=versions_string(),
        started_at=started_at,
        duration_s=round(cell.duration_s, 3),
        pe_options=pe_options_of(m, cfg.pe),
        native_size=m.spec.native_size,
        predictions=predictions,
        ema=bool(m.load_report.get("ema")),
    )


def model_args_label(m: EvalModel) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(m.model_args.items()))


def pe_options_of(m: EvalModel, pe: PEOptions) -> str:
    """The PE options that can change this model's outputs, as recorded in its rows and keys.

    A learned APE depends on how it is resampled, a sin-cos APE on regenerate vs resample; a PEG or a model
    without PE depends on none of them, so changing ``--ape-interp`` keeps their finished cells.
    """
    kind = pe_kind_of(m.module)
    if kind == "ape-sincos" and pe.sincos == "regenerate":
        return "sincos=regenerate"
    if kind.startswith("ape"):
        return pe_options_label(pe.ape_interpolation, pe.antialias, pe.sincos if kind == "ape-sincos" else None)
    return ""


def key_of(m: EvalModel, size: int, cfg: RunConfig, image_set: ImageSet) -> str:
    """The cell key of ``m`` at ``size``, known before the cell is computed (so that a rerun can skip it)."""
    return cell_key(
        model=m.key,
        checkpoint_sha256=m.checkpoint_sha256,
        img_size=size,
        crop_pct=cfg.crop_pct,
        interpolation=cfg.interpolation,
        pe_options=pe_options_of(m, cfg.pe),
        dtype=cfg.dtype,
        model_args=model_args_label(m),
        dataset_fingerprint=image_set.fingerprint,
        limit=image_set.limit,
        decode_draft=image_set.decode_draft,
        ema=bool(m.load_report.get("ema")),
    )


def prediction_arrays(cell: CellOutput) -> dict:
    """Per-image predictions in compact numpy form: sample index and label (int32), top-5 class indices."""
    import numpy as np

    top5 = cell.top5.numpy()
    return {
        "indices": cell.indices.numpy().astype(np.int32),
        "labels": cell.labels.numpy().astype(np.int32),
        "top5": top5 if top5.dtype == np.int16 else top5.astype(np.int32),
    }


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
        check_runs_at(m.module, cfg.sizes)
        models.append(m)
    return models


def run_resolution(
    cfg: RunConfig,
    progress: Progress | None = None,
    log: Log = _quiet,
    argv: list[str] | None = None,
    force: bool = False,
    notify: Log = _quiet,
    report_formats: tuple[str, ...] = report.FORMATS,
    dist: DistContext | None = None,
) -> RunOutcome:
    """Evaluate every model at every size of ``cfg`` and write the run directory.

    Cells already stored under the same key are skipped unless ``force``; ``report_formats`` are rendered at the
    end (Markdown and CSV also after every cell). Each finished cell is committed at
    once (predictions, then its row), so an interruption (``KeyboardInterrupt``) or a kill loses at most the
    cells in flight. Returns the rows computed by this call (``outcome.store.rows()`` has them all).

    Under torchrun every process calls this: each evaluates its shard, rank 0 gathers the predictions and alone
    reads and writes the run directory, reports progress and logs; the other ranks return an outcome without a
    store. ``dist`` is the caller's ``distributed.session``; without one the call opens its own.
    """
    if dist is None:
        with distributed.session(cfg.device) as dist:
            return run_resolution(cfg, progress, log, argv, force, notify, report_formats, dist)
    if not dist.is_main:
        progress, log, notify = None, _quiet, _quiet
    with dist.shared_failures():
        return _run_resolution(cfg, progress, log, argv or [], force, notify, report_formats, dist)


def _run_resolution(
    cfg: RunConfig,
    progress: Progress | None,
    log: Log,
    argv: list[str],
    force: bool,
    notify: Log,
    report_formats: tuple[str, ...],
    dist: DistContext,
) -> RunOutcome:
    device = dist.device if dist.enabled else resolve_device(cfg.device)
    if not cfg.sizes:
        raise CpvtEvalError("no size given: use --sizes 224 384 ...")
    image_set = open_dataset(cfg.data, cfg.limit, cfg.layout, cfg.labels, cfg.classes, cfg.class_names)
    image_set.decode_draft = cfg.decode_draft
    log(f"dataset {image_set.root}: {len(image_set)} images, fingerprint {image_set.fingerprint}")
    workers = default_workers(dist.local_world_size) if cfg.workers is None else cfg.workers
    apply_bad_image_policy(image_set, cfg.on_bad_image, workers, progress)
    real = load_real_labels(cfg.real_labels).for_image_set(image_set) if cfg.real_labels else None
    models = prepare_models(cfg, device, log)
    dist.check_inputs(image_set, models)
    job = _Job(cfg, models, image_set, real, device, workers, dist)
    if not dist.is_main:
        return job.run(None, progress, log, notify, argv, force)
    store = RunStore(cfg.out)
    with store.locked():
        outcome = job.run(store, progress, log, notify, argv, force)
        report.render(store, report_formats)
    return outcome


@dataclass
class _Job:
    """What a run evaluates, once the inputs are known; ``run`` computes the cells not yet stored."""

    cfg: RunConfig
    models: list[EvalModel]
    image_set: ImageSet
    real: list | None
    device: torch.device
    workers: int
    dist: DistContext

    def run(
        self, store: RunStore | None, progress: Progress | None, log: Log, notify: Log, argv: list[str], force: bool
    ) -> RunOutcome:
        cfg, models, image_set, device, dist = self.cfg, self.models, self.image_set, self.device, self.dist
        torch.manual_seed(SEED)
        keys = {(m.key, s): key_of(m, s, cfg, image_set) for s in cfg.sizes for m in models}
        # Only rank 0 reads the run directory; the other ranks learn the cells left to do from it.
        done = set() if force or store is None else store.finished_keys() & set(keys.values())
        skipped = [cell for cell, key in keys.items() if key in done]
        if skipped:
            listed = ", ".join(f"{name}@{size}px" for name, size in skipped)
            notify(f"{store.root}: skipping {len(skipped)} finished cell(s) ({listed}); --force recomputes them")
        record = provenance_record(argv, str(device), SEED, _config_summary(cfg))
        record.update(cells_total=len(keys), cells_skipped=len(skipped), force=force, distributed=dist.describe())
        if store is not None:
            store.record_provenance(record)
            if image_set.skipped:
                store.write_text("skipped.tsv", "".join(f"{rel}\t{why}\n" for rel, why in image_set.skipped))
            store.write_text("load_reports.json", json.dumps({m.key: m.load_report for m in models}, indent=2) + "\n")
        settings = EvalSettings(
            device=device,
            batch_size=cfg.batch_size,
            workers=self.workers,
            crop_pct=cfg.crop_pct,
            interpolation=cfg.interpolation,
            dtype=cfg.dtype,
            pe=cfg.pe,
        )
        by_key = {m.key: m for m in models}
        outcome = RunOutcome(store=store)
        started = record["started_at"]
        status = "failed"
        try:
            todo = dist.agreed_todo(lambda m, size: keys[(m.key, size)] not in done, models, cfg.sizes)
            shard = dist.shard(image_set, cfg.batch_size)
            for cell in dist.gather_cells(sweep(models, shard.image_set, cfg.sizes, settings, progress, todo), shard):
                m = by_key[cell.model]
                ips = batch = gflops = None
                extra = {"eval_batch": cell.batch_size, "eval_oom_retries": cell.oom_retries}
                if cfg.throughput.enabled:
                    t = benchmark_model(
                        m.module,
                        cell.size,
                        device,
                        cfg.throughput.batch_size or cfg.batch_size,
                        cfg.dtype,
                        cfg.throughput.warmup,
                        cfg.throughput.repeats,
                        name=m.key,
                    )
                    ips, batch, gflops = t.images_per_sec, t.batch_size, t.gflops_per_image
                    extra.update(row_extra(t))
                key = keys[(m.key, cell.size)]
                # Predictions first, then the row: the row is the commit, so a stored row always has its predictions.
                rel = store.save_predictions(key, m.key, cell.size, prediction_arrays(cell))
                row = make_row(m, cell, cfg, image_set, device, started, ips, batch, gflops, rel)
                row.extra.update(extra)
                add_data_columns(row, cell, image_set, self.real)
                _scale_out_columns(row, cell, dist)
                store.append(row)
                outcome.rows.append(row)
                write_reports(store)
                log(f"{m.key} @ {cell.size}px: top-1 {row.top1:.2f}%  top-5 {row.top5:.2f}%  ({cell.n} images)")
            status = "completed"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            if store is not None:
                record.update(status=status, finished_at=now_iso(), cells_computed=len(outcome.rows))
                store.record_provenance(record)
                if status == "interrupted":
                    write_reports(store)  # so that results.md states the interruption
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
    """The cheap reports (Markdown and CSV), rewritten after every cell so that they always match the rows."""
    return report.render(store, ("md", "csv"))


def _config_summary(cfg: RunConfig) -> dict:
    return {
        "models": list(cfg.models),
        "sizes": list(cfg.sizes),
        "data": str(cfg.data),
        "checkpoints": {k: str(v) for k, v in cfg.checkpoints.items()},
        "model_args": cfg.model_args,
        "ema": cfg.ema,
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
    }


def count_params(spec: ModelSpec) -> int:
    """Parameter count without allocating weights (the model is built on the meta device)."""
    with torch.device("meta"):
        module = spec.create()
    return sum(p.numel() for p in module.parameters())
