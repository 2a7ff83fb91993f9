"""The ``shift`` job: consistency under translation of every model at every size, in a run directory.

``run_shift`` never prints: progress, details and notices go through the ``Hooks`` of the caller. It shares the
``resolution`` job's inputs (``RunConfig``: models, checkpoints, data, sizes, PE options, dtype, device, batch),
run directory, resume by cell identity (the probe and its settings are part of it, ``CellId.probe``) and
provenance. Each row is one (model, size, protocol) cell; its per-pair predictions are stored beside it.
"""

from __future__ import annotations

from dataclasses import asdict

import torch

from .. import interrupts, report
from ..config import Hooks, RunConfig, ShiftProtocol
from ..data import apply_bad_image_policy, default_workers
from ..distributed import launched
from ..engine import CellOutput, EvalModel, EvalSettings
from ..errors import CpvtEvalError, is_no_space
from ..limits import check_transform
from ..results import ResultRow, RunStore, format_ci
from ..results.store import ReadOnlyRunDir
from ..runtime import now_iso, resolve_device
from ..shift import ShiftCell, shift_sweep
from .assemble import prepare_models
from .inputs import open_run_dataset
from .resolution import RunOutcome, config_summary, no_space_error, open_run
from .rows import cell_id, make_row

__all__ = ["run_shift", "shift_arrays", "shift_row"]


def run_shift(cfg: RunConfig, hooks: Hooks | None = None, protocol: ShiftProtocol | None = None) -> RunOutcome:
    """Measure the consistency of every model of ``cfg`` at every size of ``cfg`` and write the run directory.

    ``cfg`` is the ``resolution`` job's configuration (its throughput, crop ratio and ReaL options play no part:
    the protocol fixes the canvas); ``protocol`` the shift settings (default: Zhang's, 5 epochs, seed 0). Cells
    already stored under the same identity are skipped unless ``cfg.force``; each finished cell is committed at
    once (per-pair predictions, then its row) and the reports are rendered (``shift.md``, ``shift.csv`` after every
    cell, all of ``cfg.report_formats`` at the end). Returns the rows computed by this call.
    """
    hooks = hooks or Hooks()
    protocol = protocol or ShiftProtocol()
    if launched():
        raise CpvtEvalError("cpvt-eval shift runs in one process; start it without torchrun")
    device = resolve_device(cfg.device)
    if not cfg.sizes:
        raise CpvtEvalError("no size given: use --sizes 224 384 ...")
    check_transform(cfg.crop_pct, cfg.interpolation)
    for size in cfg.sizes:
        protocol.max_shift_at(size)  # a bound that does not fit is an input error before anything runs
    image_set = open_run_dataset(cfg, hooks)
    workers = default_workers() if cfg.workers is None else cfg.workers
    apply_bad_image_policy(image_set, cfg.on_bad_image, workers, hooks.progress)
    models = prepare_models(cfg, device, hooks.log)
    probe = protocol.probe()
    ids = {(m.name, s): cell_id(m, s, cfg, image_set, probe) for s in cfg.sizes for m in models}
    store = RunStore(cfg.out)
    try:
        with store.locked():
            for n, problem in store.set_aside_damaged():
                hooks.notify(
                    f"{store.rows_path}:{n}: damaged row ({problem}) moved to {store.DAMAGED}; its cell is recomputed"
                )
            outcome = _compute(cfg, protocol, hooks, models, image_set, device, workers, store, ids)
            report.render(store, cfg.report_formats)
    except ReadOnlyRunDir:
        # Nothing to write when every cell is finished: the stored rows are the answer.
        if not cfg.force and {i.key() for i in ids.values()} <= store.finished_keys():
            hooks.notify(f"{store.root} is read-only; every cell is finished, nothing was written")
            return RunOutcome(store=store)
        raise
    except OSError as e:
        if not is_no_space(e):
            raise
        raise no_space_error(store, ids.values(), e) from None
    return outcome


def _compute(cfg, protocol, hooks, models: list[EvalModel], image_set, device, workers, store, ids) -> RunOutcome:
    torch.manual_seed(protocol.seed)
    probe = protocol.probe()
    keys = {cell: ident.key() for cell, ident in ids.items()}
    summary = {**config_summary(cfg), "shift": asdict(protocol), "probe": probe}
    done, record = open_run(store, cfg, hooks, models, image_set, keys, device, protocol.seed, summary, None)
    settings = EvalSettings(
        device=device,
        batch_size=cfg.batch_size,
        workers=workers,
        interpolation=cfg.interpolation,
        dtype=cfg.dtype,
        pe=cfg.pe,
        classes=image_set.label_subset_classes,
    )
    by_name = {m.name: m for m in models}
    outcome = RunOutcome(store=store)
    status = "failed"
    try:

        def todo(m: EvalModel, size: int) -> bool:
            return keys[(m.name, size)] not in done

        for cell in shift_sweep(models, image_set, cfg.sizes, settings, protocol, hooks.progress, todo):
            interrupts.check()
            m = by_name[cell.model]
            ident = ids[(m.name, cell.size)]
            row = shift_row(m, cell, ident, image_set, device, record["started_at"])
            # Predictions first, then the row: the row is the commit, so a stored row always has its predictions.
            with interrupts.deferred():  # a cell is stored whole or not at all
                row.predictions = store.save_predictions(ident.key(), m.name, cell.size, shift_arrays(cell))
                store.append(row)
                outcome.rows.append(row)
            report.render(store, ("md", "csv"))
            hooks.log(
                f"{m.name} @ {cell.size}px: consistency {cell.consistency_pct:.2f}% over {cell.n_pairs} pairs "
                f"(top-1 {cell.top1_a_pct:.2f}% / {cell.top1_b_pct:.2f}%)"
            )
        interrupts.check()
        status = "completed"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        record.update(status=status, finished_at=now_iso(), cells_computed=len(outcome.rows))
        store.record_provenance(record)
        if status == "interrupted":
            report.render(store, ("md", "csv"))
    return outcome


def shift_row(m: EvalModel, cell: ShiftCell, ident, image_set, device: torch.device, started_at: str) -> ResultRow:
    """The row of a computed shift cell: the ``resolution`` row's columns over the ``2 * n_pairs`` views (top-1,
    top-5 and their interval count both views of every pair), and the probe's columns in ``extra``."""
    n_views = 2 * cell.n_pairs
    views = CellOutput(
        model=cell.model,
        size=cell.size,
        pe_policy=cell.pe_policy,
        grid=cell.grid,
        resize_size=cell.canvas,
        correct1=cell.correct_a + cell.correct_b,
        correct5=cell.correct5,
        n=n_views,
        duration_s=cell.duration_s,
        indices=cell.indices,
        labels=cell.labels,
        topk=cell.top5_a,
        batch_size=cell.batch_size,
        oom_retries=cell.oom_retries,
    )
    row = make_row(m, views, ident, image_set, device, started_at)
    row.extra.update(
        consistency=round(cell.consistency_pct, 4),
        consistency_ci95=format_ci(cell.agree, cell.n_pairs),
        n_pairs=cell.n_pairs,
        n_agree=cell.agree,
        top1_a=round(cell.top1_a_pct, 4),
        top1_b=round(cell.top1_b_pct, 4),
        shift_mode=cell.protocol.mode,
        max_shift=cell.max_shift,
        shift_epochs=cell.protocol.epochs,
        shift_seed=cell.protocol.seed,
        canvas_size=cell.canvas,
        images_in_set=len(image_set),
    )
    return row


def shift_arrays(cell: ShiftCell) -> dict:
    """Per-pair predictions in compact numpy form: image index, epoch, label, offsets, both views' top-5."""
    import numpy as np

    def small(t: torch.Tensor):
        a = t.numpy()
        return a if a.dtype == np.int16 else a.astype(np.int32)

    return {
        "indices": cell.indices.numpy().astype(np.int32),
        "epochs": cell.epochs.numpy().astype(np.int32),
        "labels": cell.labels.numpy().astype(np.int32),
        "offsets": cell.offsets.numpy().astype(np.int16),
        "top5_a": small(cell.top5_a),
        "top5_b": small(cell.top5_b),
    }
