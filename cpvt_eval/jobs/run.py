"""The job every probe runs: build the models, open the data, sweep the sizes, store each cell, render the reports.

``run_probe`` never prints: progress, details and notices go through the ``Hooks`` of the caller. What a cell
measures is the probe's (``cpvt_eval.probes``); the job is the same for all of them:

* every input is read and checked (sizes, transform, dataset, labels, models at every size) before the run
  directory is touched;
* runs resume: every cell is committed to the run directory the moment it finishes (its arrays, then its row), and
  a rerun of the same command skips the cells whose identity (``results.CellId``, the probe and its settings
  included) is already stored;
* the reports are rewritten after every cell (Markdown and CSV) and rendered in every format at the end;
* under torchrun (probes that allow it: ``resolution``) every process evaluates its shard and rank 0 alone writes.

``run_resolution``, ``run_shift`` and ``run_agreement`` are the three probes' jobs under their own names.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from .. import distributed, interrupts, report
from ..config import Hooks, RunConfig, ShiftProtocol
from ..data import EvalTransform, ImageSet, apply_bad_image_policy, default_workers, load_real_labels
from ..distributed import DistContext, launched
from ..engine import EvalModel, EvalSettings, sweep
from ..errors import CpvtEvalError, ModelError, is_no_space
from ..limits import check_transform
from ..probes import Agreement, Probe, Resolution, Shift
from ..results import SCHEMA_VERSION, CellId, ResultRow, RunStore, row_key
from ..results.store import ReadOnlyRunDir
from ..runtime import now_iso, resolve_device
from ..throughput import ThroughputResult, TimingPlan, TimingSettings, row_extra, time_models
from .assemble import prepare_models
from .inputs import open_run_dataset
from .rows import cell_id, make_row
from .rundir import config_summary, full_disk_translated, open_run, write_reports

__all__ = ["SEED", "RunOutcome", "run_agreement", "run_probe", "run_resolution", "run_shift"]

# Evaluation is deterministic; the seed is set anyway (and recorded) so that anything random in a model is repeatable.
SEED = 0


@dataclass
class RunOutcome:
    store: RunStore | None  # None on the ranks other than 0 of a torchrun job
    rows: list[ResultRow] = field(default_factory=list)


def run_resolution(cfg: RunConfig, hooks: Hooks | None = None, dist: DistContext | None = None) -> RunOutcome:
    """Top-1/top-5 (and model-only images/s) of every model at every size of ``cfg``: ``results.*``."""
    return run_probe(cfg, Resolution(), hooks, dist)


def run_shift(cfg: RunConfig, hooks: Hooks | None = None, protocol: ShiftProtocol | None = None) -> RunOutcome:
    """Consistency under translation of every model at every size (``protocol``: Zhang's by default): ``shift.*``.
    ``cfg``'s throughput, crop ratio and ReaL options play no part: the protocol fixes the canvas."""
    return run_probe(cfg, Shift(protocol), hooks)


def run_agreement(cfg: RunConfig, hooks: Hooks | None = None) -> RunOutcome:
    """Agreement of every model at every size with its own native-size predictions: ``agreement.*``."""
    return run_probe(cfg, Agreement(), hooks)


def run_probe(cfg: RunConfig, probe: Probe, hooks: Hooks | None = None, dist: DistContext | None = None) -> RunOutcome:
    """Measure every cell of ``probe`` for the models and sizes of ``cfg`` and write the run directory.

    Cells already stored under the same identity are skipped unless ``cfg.force``; ``cfg.report_formats`` are
    rendered at the end (Markdown and CSV also after every cell). An interruption (``KeyboardInterrupt``) or a kill
    loses at most the cells in flight. Returns the rows computed by this call (``outcome.store.rows()`` has them
    all).

    Under torchrun every process calls this: each evaluates its shard, rank 0 gathers the predictions and alone
    reads and writes the run directory, reports progress and logs; the other ranks return an outcome without a
    store. ``dist`` is the caller's ``distributed.session``; without one the call opens its own.
    """
    hooks = hooks or Hooks()
    if (launched() if dist is None else dist.enabled) and not probe.distributed:
        raise CpvtEvalError(f"cpvt-eval {probe.name} runs in one process; start it without torchrun")
    if dist is None:
        with distributed.session(cfg.device) as dist:
            return run_probe(cfg, probe, hooks, dist)
    if not dist.is_main:
        hooks = Hooks()
    with dist.shared_failures():
        job = _prepare(cfg, probe, hooks, dist)
        if not dist.is_main:
            return job.compute(None)
        store = RunStore(cfg.out)
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(store.locked())
            except ReadOnlyRunDir:
                # Nothing to write when every cell is finished: the stored rows are the answer.
                if job.all_finished(store):
                    hooks.notify(f"{store.root} is read-only; every cell is finished, nothing was written")
                    return RunOutcome(store=store)
                raise
            outcome = job.compute(store)
            with job.full_disk_translated(store):
                report.render(store, cfg.report_formats)
        return outcome


def _prepare(cfg: RunConfig, probe: Probe, hooks: Hooks, dist: DistContext) -> _Job:
    """Every input read and checked (dataset, labels, models at every size) before the run directory is touched."""
    if not cfg.sizes:
        raise CpvtEvalError("no size given: use --sizes 224 384 ...")
    check_transform(cfg.crop_pct, cfg.interpolation)
    probe.check(cfg.sizes)
    device = dist.device if dist.enabled else resolve_device(cfg.device)
    # a bad option fails before any work
    EvalTransform(
        cfg.sizes[0],
        cfg.crop_pct or 1.0,
        "bicubic" if cfg.interpolation == "weights" else cfg.interpolation,
        cfg.crop_mode,
    )
    image_set = open_run_dataset(cfg, hooks, require_labels=probe.needs_labels)
    workers = default_workers(dist.local_world_size) if cfg.workers is None else cfg.workers
    apply_bad_image_policy(image_set, cfg.on_bad_image, workers, hooks.progress)
    scores_real = cfg.real_labels and isinstance(probe, Resolution)
    real = load_real_labels(cfg.real_labels).for_image_set(image_set) if scores_real else None
    models = prepare_models(cfg, device, hooks.log)
    dist.check_inputs(image_set, models)
    return _Job(cfg, probe, hooks, models, image_set, real, device, workers, dist)


@dataclass
class _Job:
    """What a run evaluates, once the inputs are known; ``compute`` evaluates the cells not yet stored."""

    cfg: RunConfig
    probe: Probe
    hooks: Hooks
    models: list[EvalModel]
    image_set: ImageSet
    real: list | None
    device: torch.device
    workers: int
    dist: DistContext

    def _keys(self) -> dict[tuple[str, int], CellId]:
        by_name = {m.name: m for m in self.models}
        return {
            (name, s): cell_id(by_name[name], s, self.cfg, self.image_set, self.probe)
            for name, s in self.probe.cells(self.models, self.cfg.sizes)
        }

    def all_finished(self, store: RunStore) -> bool:
        if self.cfg.force:
            return False
        return {ident.key() for ident in self._keys().values()} <= store.finished_keys()

    def full_disk_translated(self, store: RunStore | None):
        """``full_disk_translated`` for this run's cells."""
        return full_disk_translated(store, lambda: self._keys().values())

    def _tidy(self, store: RunStore, ids: dict[tuple[str, int], CellId]) -> None:
        """Before a resumed run: set damaged rows aside, and the rows an earlier version wrote for the cells
        this run computes (their key has changed), so that the reports list each cell once."""
        for n, problem in store.set_aside_damaged():
            self.hooks.notify(
                f"{store.rows_path}:{n}: damaged row ({problem}) moved to {store.DAMAGED}; its cell is recomputed"
            )
        if (store.opened_version or store.schema_version()) >= SCHEMA_VERSION:
            return
        planned = {ident.key() for ident in ids.values()}
        same = {ident.stable() for ident in ids.values()}
        old = [r for r in store.rows(strict=False) if row_key(r) not in planned and CellId.of(r).stable() in same]
        if old:
            store.set_aside(old, store.SUPERSEDED)
            listed = ", ".join(f"{r.model}@{r.img_size}px" for r in old)
            self.hooks.notify(
                f"{store.root}: {len(old)} cell(s) written by an earlier version ({listed}) are recomputed under "
                f"this version's cell identity; the old rows are kept in {store.SUPERSEDED}"
            )

    def compute(self, store: RunStore | None) -> RunOutcome:
        with self.full_disk_translated(store):
            return self._compute(store)

    def _compute(self, store: RunStore | None) -> RunOutcome:
        cfg, hooks, probe, models, image_set, dist = (
            self.cfg,
            self.hooks,
            self.probe,
            self.models,
            self.image_set,
            self.dist,
        )
        torch.manual_seed(SEED)
        ids = self._keys()
        keys = {cell: ident.key() for cell, ident in ids.items()}
        if store is not None:
            self._tidy(store, ids)
        # Only rank 0 reads the run directory; the other ranks learn the cells left to do from it.
        summary = {**config_summary(cfg), **probe.summary(), "probe": probe.identity()}
        done, record = open_run(store, cfg, hooks, models, image_set, keys, self.device, SEED, summary, dist.describe())
        if store is not None and done:
            probe.resume(store, store.rows(strict=False), models)
        settings = EvalSettings(
            device=self.device,
            batch_size=cfg.batch_size,
            workers=self.workers,
            crop_pct=cfg.crop_pct,
            interpolation=cfg.interpolation,
            dtype=cfg.dtype,
            pe=cfg.pe,
            crop_mode=cfg.crop_mode,
            classes=image_set.label_subset_classes,
        )
        by_name = {m.name: m for m in models}
        outcome = RunOutcome(store=store)
        started = record["started_at"]
        status = "failed"
        try:
            sizes = sorted({s for _, s in keys})
            todo = dist.agreed_todo(lambda m, size: keys.get((m.name, size)) not in done, models, sizes)
            shard = dist.shard(image_set, cfg.batch_size)
            cells = sweep(probe, models, shard.image_set, cfg.sizes, settings, hooks.progress, todo)
            timings: dict[int, dict[str, ThroughputResult]] = {}
            for cell in dist.gather_cells(cells, shard):
                interrupts.check()
                m = by_name[cell.model]
                ident = ids[(m.name, cell.size)]
                row = make_row(probe, m, cell, ident, image_set, self.device, started, self.real, dist)
                self._check_finite(row)
                if isinstance(probe, Resolution) and cfg.throughput.enabled:
                    if cell.size not in timings:
                        # The sweep has just finished this size's data pass for every model due at it (they are
                        # all adapted to the size until the next pass starts): time them together, once.
                        due = [mm for mm in models if todo is None or todo(mm, cell.size)]
                        timings[cell.size] = self._time_size(due, cell.size)
                    self._add_throughput(row, timings[cell.size][m.name])
                # The arrays first, then the row: the row is the commit, so a stored row always has its arrays.
                # An interrupt waits for the commit to finish, so a cell is stored whole or not at all.
                with interrupts.deferred():
                    row.predictions = store.save_predictions(ident.key(), m.name, cell.size, probe.arrays(cell))
                    store.append(row)
                    outcome.rows.append(row)
                write_reports(store)
                hooks.log(probe.log_line(row))
            interrupts.check()
            status = "completed"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        except OSError as e:
            if store is not None and is_no_space(e):
                status = "no space left"  # and ``compute`` says so in one line
            raise
        finally:
            if store is not None:
                record.update(status=status, finished_at=now_iso(), cells_computed=len(outcome.rows))
                # Best effort on a full disk: the record stays "running", and the next run marks it "killed".
                with contextlib.suppress(OSError):
                    store.record_provenance(record)
                    if status == "interrupted":
                        write_reports(store)  # so that the Markdown report states the interruption
        return outcome

    def _check_finite(self, row: ResultRow) -> None:
        """Non-finite logits make a cell's ranking meaningless: all of them is an error, some are flagged."""
        n, bad = row.n_images, row.n_nonfinite
        if bad and bad >= n:
            overflow = f", or {self.cfg.dtype} overflows (try --dtype fp32)" if self.cfg.dtype != "fp32" else ""
            raise ModelError(
                f"{row.model} @ {row.img_size}px: the logits of every image ({n}) hold NaN or infinity; the "
                f"weights are broken{overflow}"
            )
        if bad:
            self.hooks.notify(
                f"warning: {row.model} @ {row.img_size}px: {bad} of {n} image(s) gave NaN or infinite "
                "logits (counted in n_nonfinite; their predictions mean nothing)"
            )

    def _time_size(self, due: list[EvalModel], size: int) -> dict[str, ThroughputResult]:
        """Model-only timing of the models ``due`` at ``size``, in interleaved rounds (rank 0 only under torchrun)."""
        tp = self.cfg.throughput
        plan = TimingPlan(warmup=tp.warmup, rounds=tp.repeats, budget_s=tp.budget_s, min_rounds=tp.min_rounds)
        how = f"{tp.repeats} rounds" if tp.repeats is not None else f"budget {tp.budget_s:g} s per model"
        self.hooks.log(f"timing {', '.join(m.name for m in due)} @ {size}px, interleaved ({how})")
        results = time_models(
            # the module each cell ran: adapted in place, or built again by timm at this size
            [(m.name, m.sizer.module_at(size, self.cfg.pe)[0]) for m in due],
            size,
            self.device,
            TimingSettings(
                plan=plan,
                batch_size=tp.batch_size or self.cfg.batch_size,
                fit_budget=tp.batch_size is None,
                dtype=self.cfg.dtype,
            ),
        )
        return {r.model: r for r in results}

    def _add_throughput(self, row: ResultRow, t: ThroughputResult) -> None:
        row.images_per_sec = round(t.images_per_sec, 2)
        row.throughput_batch = t.batch_size
        row.gflops_per_image = None if t.gflops_per_image is None else round(t.gflops_per_image, 4)
        row.throughput_scope = "model-only per rank" if self.dist.enabled else "model-only"
        row.extra.update(row_extra(t))
