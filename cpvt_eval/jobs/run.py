"""The job every probe runs: build the models, open the data, plan the passes, store each cell, render the reports.

``run_probes`` never prints: progress, details and notices go through the ``Hooks`` of the caller. What a cell
measures is its probe's (``cpvt_eval.probes``); the job is the same for all of them, and for several at once:

* every input is read and checked (sizes, transform, the probes' settings, dataset, labels, models at every size)
  before the run directory is touched;
* the probes that read the same images share each size's pass (``Probe.shares_passes``): an image is decoded once
  per size and each model runs once per batch for all of them; a probe with its own views (``shift``) has passes of
  its own;
* a probe with a ``reference`` gets each model's native-size cell first, and its arrays go to the other sizes;
* runs resume: every cell is committed to the run directory the moment it finishes (its arrays, then its row), and
  a rerun of the same command skips the cells whose identity (``results.CellId``, the probe and its settings
  included) is already stored;
* the models of a size are timed together after its pass when a probe asks (``Probe.timing``);
* the reports are rewritten after every cell (Markdown and CSV) and rendered in every format at the end;
* under torchrun (probes that allow it) every process evaluates its shard and rank 0 alone writes.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import distributed, interrupts, report
from ..config import Hooks, RunConfig
from ..data import EvalTransform, ImageSet, apply_bad_image_policy, default_workers
from ..distributed import DistContext, launched
from ..engine import EvalModel, EvalSettings, PassInfo, Work, run_pass
from ..errors import CpvtEvalError, ModelError, ResultsError, is_no_space
from ..limits import check_transform
from ..probes import Probe, make
from ..results import FIRST_PROBE, SCHEMA_VERSION, CellId, ResultRow, RunStore, row_key
from ..results.store import ReadOnlyRunDir
from ..runtime import now_iso, resolve_device
from ..throughput import ThroughputResult, TimingPlan, TimingSettings, row_extra, time_models
from .assemble import check_models, prepare_models
from .inputs import open_run_dataset
from .rows import cell_id, make_row
from .rundir import config_summary, full_disk_translated, open_run, write_reports

__all__ = ["SEED", "RunOutcome", "evaluate", "run_probe", "run_probes"]

# Evaluation is deterministic; the seed is set anyway (and recorded) so that anything random in a model is repeatable.
SEED = 0

# Where large per-image records are mapped during a pass (``probes.base.per_image``): unlinked files, never left behind.
SCRATCH = ".scratch"

# A cell of a run: (probe name, model name, size)
CellKey = tuple[str, str, int]


@dataclass
class RunOutcome:
    store: RunStore | None  # None on the ranks other than 0 of a torchrun job
    rows: list[ResultRow] = field(default_factory=list)


def run_probe(
    cfg: RunConfig, probe: Probe | str, hooks: Hooks | None = None, dist: DistContext | None = None, **settings
) -> RunOutcome:
    """Measure every cell of ``probe`` (a ``Probe``, or a registered name and its ``settings``) for the models and
    sizes of ``cfg`` and write the run directory; see ``run_probes``."""
    if isinstance(probe, str):
        probe = make(probe, **settings)
    elif settings:
        raise TypeError("settings go with a probe's name; a Probe carries its own")
    return run_probes(cfg, [probe], hooks, dist)


def evaluate(cfg: RunConfig, hooks: Hooks | None = None, **settings) -> RunOutcome:
    """Accuracy by size, the tool's first probe (``results.*``): ``run_probe(cfg, "resolution", hooks, **settings)``
    (``throughput=False``, ``real_labels="timm"``, ...)."""
    return run_probe(cfg, FIRST_PROBE, hooks, **settings)


def run_probes(
    cfg: RunConfig, probes: list[Probe | str], hooks: Hooks | None = None, dist: DistContext | None = None
) -> RunOutcome:
    """Measure every cell of each of ``probes`` for the models and sizes of ``cfg`` and write the run directory.

    Cells already stored under the same identity are skipped unless ``cfg.force``; ``cfg.report_formats`` are
    rendered at the end (Markdown and CSV also after every cell). An interruption (``KeyboardInterrupt``) or a kill
    loses at most the cells in flight. Returns the rows computed by this call (``outcome.store.rows()`` has them
    all).

    Under torchrun every process calls this: each evaluates its shard, rank 0 gathers the per-image records and
    alone reads and writes the run directory, reports progress and logs; the other ranks return an outcome without
    a store. ``dist`` is the caller's ``distributed.session``; without one the call opens its own.
    """
    hooks = hooks or Hooks()
    probes = [make(p) if isinstance(p, str) else p for p in probes]
    if len({p.name for p in probes}) < len(probes):
        raise CpvtEvalError(f"a probe is named twice: {', '.join(p.name for p in probes)}")
    alone = [p.name for p in probes if not p.distributed]
    if alone and (launched() if dist is None else dist.enabled):
        raise CpvtEvalError(f"cpvt-eval {alone[0]} runs in one process; start it without torchrun")
    if dist is None:
        with distributed.session(cfg.device) as dist:
            return run_probes(cfg, probes, hooks, dist)
    if not dist.is_main:
        hooks = Hooks()
    with dist.shared_failures():
        job = _prepare(cfg, probes, hooks, dist)
        if not dist.is_main:
            return job.compute(None)
        store = RunStore(cfg.out)
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(store.locked(hooks.notify))
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


def _prepare(cfg: RunConfig, probes: list[Probe], hooks: Hooks, dist: DistContext) -> _Job:
    """Every input read and checked (dataset, labels, the probes' settings, models at every size) before the run
    directory is touched."""
    if not cfg.sizes:
        raise CpvtEvalError("no size given: use --sizes 224 384 ...")
    check_transform(cfg.crop_pct, cfg.interpolation)
    device = dist.device if dist.enabled else resolve_device(cfg.device)
    # a bad option fails before any work
    EvalTransform(
        cfg.sizes[0],
        cfg.crop_pct or 1.0,
        "bicubic" if cfg.interpolation == "weights" else cfg.interpolation,
        "center" if cfg.crop_mode == "weights" else cfg.crop_mode,
    )
    check_models(cfg)  # sizes against the specs' patch sizes, checkpoint files: before any scan, build or download
    image_set = open_run_dataset(cfg, hooks, require_labels=any(p.needs_labels for p in probes))
    for p in probes:
        p.settings.check(cfg.sizes, image_set)
    workers = default_workers(dist.local_world_size) if cfg.workers is None else cfg.workers
    apply_bad_image_policy(image_set, cfg.on_bad_image, workers, hooks.progress)
    models = prepare_models(cfg, device, hooks.log)
    dist.check_inputs(image_set, models)
    return _Job(cfg, probes, hooks, models, image_set, device, workers, dist)


def _sizes_of(probe: Probe, m: EvalModel, sizes) -> list[int]:
    """The sizes ``probe`` evaluates ``m`` at: the run's, and the native size first for a probe with a reference."""
    return list(dict.fromkeys([m.spec.native_size, *sizes] if probe.reference else sizes))


def plan(probes: list[Probe], models: list[EvalModel], sizes, due: set[CellKey]) -> list[tuple[int, list]]:
    """The passes of the probes that share them: ``(size, [(probe, model), ...])``. The native sizes of the cells
    a reference depends on come first (so that every other size finds its reference), then the run's sizes in
    order; at each size every probe's cell that is due joins the one pass."""
    order = sorted({m.spec.native_size for p in probes if p.reference for m in models})
    passes = []
    for size in dict.fromkeys([*order, *sizes]):
        work = [(p, m) for p in probes for m in models if (p.name, m.name, size) in due]
        if work:
            passes.append((size, work))
    return passes


@dataclass
class _Job:
    """What a run evaluates, once the inputs are known; ``compute`` evaluates the cells not yet stored."""

    cfg: RunConfig
    probes: list[Probe]
    hooks: Hooks
    models: list[EvalModel]
    image_set: ImageSet
    device: torch.device
    workers: int
    dist: DistContext

    def _ids(self) -> dict[CellKey, CellId]:
        return {
            (p.name, m.name, s): cell_id(m, s, self.cfg, self.image_set, p)
            for p in self.probes
            for m in self.models
            for s in _sizes_of(p, m, self.cfg.sizes)
        }

    def all_finished(self, store: RunStore) -> bool:
        if self.cfg.force:
            return False
        return {ident.key() for ident in self._ids().values()} <= store.finished_keys()

    def full_disk_translated(self, store: RunStore | None):
        """``full_disk_translated`` for this run's cells."""
        return full_disk_translated(store, lambda: self._ids().values())

    def _tidy(self, store: RunStore, ids: dict[CellKey, CellId]) -> None:
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

    def _references(self, store: RunStore, done: set[str], keys: dict[CellKey, str]) -> dict[tuple[str, str], dict]:
        """The arrays of the finished native cells that other sizes of a probe with a reference depend on, read
        back from the run directory (a resumed run); a cell whose arrays cannot be read is computed again."""
        refs = {}
        rows = {row_key(r): r for r in store.rows(strict=False)} if any(p.reference for p in self.probes) else {}
        for p in self.probes:
            for m in self.models if p.reference else ():
                key = keys[(p.name, m.name, m.spec.native_size)]
                if key not in done or key not in rows:
                    continue
                try:
                    refs[(p.name, m.name)] = by_position(store.map_predictions(rows[key]))
                except ResultsError:
                    done.discard(key)  # computed again by the native pass
        return refs

    def compute(self, store: RunStore | None) -> RunOutcome:
        with self.full_disk_translated(store):
            return self._compute(store)

    def _compute(self, store: RunStore | None) -> RunOutcome:
        cfg, hooks, models, image_set, dist = self.cfg, self.hooks, self.models, self.image_set, self.dist
        torch.manual_seed(SEED)
        ids = self._ids()
        keys = {cell: ident.key() for cell, ident in ids.items()}
        if store is not None:
            self._tidy(store, ids)
        summary = config_summary(cfg)
        for p in self.probes:
            summary.update(p.summary())
        summary["probe"] = ",".join(p.identity() or p.name for p in self.probes)
        # Only rank 0 reads the run directory; the other ranks learn the cells left to do from it.
        done, record = open_run(store, cfg, hooks, models, image_set, keys, self.device, SEED, summary, dist.describe())
        refs = self._references(store, done, keys) if store is not None and done else {}
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
            scratch=None if store is None else store.root / SCRATCH,
        )
        due = {cell for cell, key in keys.items() if key not in done}
        due = set(map(tuple, dist.agree(sorted(due) if dist.is_main else None)))
        groups = [[p for p in self.probes if p.shares_passes]] + [[p] for p in self.probes if not p.shares_passes]
        outcome = RunOutcome(store=store)
        status = "failed"
        try:
            shard = dist.shard(image_set, cfg.batch_size)
            for group in groups:
                for size, pairs in plan(group, models, cfg.sizes, due):
                    work = [
                        Work(p, m, p.accumulator(m, size, shard.image_set, settings, self._reference(p, m, size, refs)))
                        for p, m in pairs
                    ]
                    infos = run_pass(work, shard.image_set, size, settings, hooks.progress)
                    self._commit(work, infos, size, shard, ids, store, outcome, refs, record["started_at"])
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

    @staticmethod
    def _reference(p: Probe, m: EvalModel, size: int, refs: dict) -> dict | None:
        if not p.reference or size == m.spec.native_size:
            return None
        return refs.get((p.name, m.name))

    def _commit(self, work: list[Work], infos: list[PassInfo], size: int, shard, ids, store, outcome, refs, started):
        """Finish each cell of a pass (its records gathered from every rank under torchrun), time the models a
        probe asks to time, and commit each cell: its arrays, then its row."""
        timings: dict[str, dict[str, ThroughputResult]] = {}
        finished = (((w.probe.name, w.model.name, size), w, info) for w, info in zip(work, infos, strict=True))
        for cell_key, w, info in self.dist.gather_cells(finished, shard):
            interrupts.check()
            p, m = w.probe, w.model
            cell = w.accumulator.finish(info)
            ident = ids[cell_key]
            row = make_row(p, m, cell, ident, self.image_set, self.device, started, self.dist)
            self._check_finite(row)
            timing = p.timing() if self.cfg.timing else None
            if timing is not None:
                if p.name not in timings:
                    # The pass has just finished for every model due at this size (they are all adapted to it until
                    # the next pass starts): time them together, once.
                    due = [x.model for x in work if x.probe is p]
                    timings[p.name] = self._time_size(due, size, timing)
                self._add_throughput(row, timings[p.name][m.name])
            # The arrays first, then the row: the row is the commit, so a stored row always has its arrays.
            # An interrupt waits for the commit to finish, so a cell is stored whole or not at all.
            with interrupts.deferred():
                row.predictions = store.save_predictions(ident.key(), m.name, size, cell.arrays)
                store.append(row)
                outcome.rows.append(row)
            if p.reference and size == m.spec.native_size:
                # read back from the stored file, memory-mapped: a large reference stays off the heap
                refs[(p.name, m.name)] = by_position(store.map_predictions(row))
            write_reports(store, p.name)
            self.hooks.log(p.report.log_line(row))

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

    def _time_size(self, due: list[EvalModel], size: int, tp) -> dict[str, ThroughputResult]:
        """Model-only timing of the models ``due`` at ``size``, in interleaved rounds (rank 0 only under torchrun)."""
        plan_ = TimingPlan(warmup=tp.warmup, rounds=tp.repeats, budget_s=tp.budget_s, min_rounds=tp.min_rounds)
        how = f"{tp.repeats} rounds" if tp.repeats is not None else f"budget {tp.budget_s:g} s per model"
        self.hooks.log(f"timing {', '.join(m.name for m in due)} @ {size}px, interleaved ({how})")
        results = time_models(
            # the module each cell ran: adapted in place, or built again by timm at this size
            [(m.name, m.sizer.module_at(size, self.cfg.pe)[0]) for m in due],
            size,
            self.device,
            TimingSettings(
                plan=plan_,
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


def by_position(arrays: dict) -> dict:
    """A cell's arrays with their rows in image order (``indices``: the image of each row); a pass keeps that order
    already, so usually nothing is copied."""
    order = np.argsort(arrays["indices"], kind="stable")
    if np.array_equal(order, np.arange(len(order))):
        return arrays
    return {k: (v[order] if len(v) == len(order) else v) for k, v in arrays.items()}
