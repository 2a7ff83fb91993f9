"""From a computed cell to its result row, and the cell's identity before it is computed."""

from __future__ import annotations

import torch

from ..config import RunConfig
from ..data import ImageSet, real_score
from ..distributed import DistContext
from ..engine import CellOutput, EvalModel
from ..results import CellId, ResultRow, format_ci
from ..runtime import now_iso, versions_string
from .assemble import model_args_label, pe_label, pe_options_of

__all__ = ["cell_id", "make_row", "now_iso", "prediction_arrays"]


def cell_id(m: EvalModel, size: int, cfg: RunConfig, image_set: ImageSet, probe: str = "") -> CellId:
    """The identity of ``m`` at ``size`` under ``cfg``, known before the cell is computed (so a rerun can skip it)."""
    return CellId(
        model=m.name,
        img_size=size,
        checkpoint_sha256=m.checkpoint_sha256,
        dataset_fingerprint=image_set.fingerprint,
        limit=image_set.limit,
        crop_pct=m.crop_pct_for(cfg.crop_pct) if not probe else cfg.crop_pct,
        interpolation=m.interpolation_for(cfg.interpolation),
        pe_options=pe_options_of(m, cfg.pe),
        dtype=cfg.dtype,
        model_args=model_args_label(m),
        ema=bool(m.load_report.get("ema")),
        decode_draft=image_set.decode_draft,
        probe=probe,
        crop_mode=cfg.crop_mode,
        mean=m.data.mean_text,
        std=m.data.std_text,
        label_subset=image_set.label_subset,
    )


def make_row(
    m: EvalModel,
    cell: CellOutput,
    ident: CellId,
    image_set: ImageSet,
    device: torch.device,
    started_at: str,
    real: list | None = None,
    dist: DistContext | None = None,
) -> ResultRow:
    """The row of a computed cell: its identity's fields, the counts, the conditions and the data columns.

    Speed columns are left empty; the job fills them from its throughput measurement.
    """
    row = ResultRow(
        **{name: getattr(ident, name) for name in ident.__dataclass_fields__},
        pe=pe_label(m),
        checkpoint=m.checkpoint,
        grid=cell.grid,
        resize_size=cell.resize_size,
        pe_policy=cell.pe_policy,
        device=str(device),
        n_images=cell.n,
        n_skipped=len(image_set.skipped),
        correct1=cell.correct1,
        correct5=cell.correct5,
        top1=round(cell.top1_pct, 4),
        top5=round(cell.top5_pct, 4),
        top1_ci95=format_ci(cell.correct1, cell.n),
        images_per_sec=None,
        throughput_batch=None,
        gflops_per_image=None,
        params=m.num_params,
        dataset=str(image_set.root),
        partial=not image_set.is_full_imagenet_val,
        versions=versions_string(),
        started_at=started_at,
        duration_s=round(cell.duration_s, 3),
        native_size=m.spec.native_size,
        layout=image_set.layout,
        label_source=image_set.label_source,
        skipped_files=";".join(rel for rel, _ in image_set.skipped),
        data_config_source=m.data.source,
        weights_crop_pct=m.data.crop_pct,
        weights_interpolation=m.data.interpolation,
        test_set=image_set.test_set,
    )
    row.extra.update(eval_batch=cell.batch_size, eval_oom_retries=cell.oom_retries)
    row.n_nonfinite = cell.nonfinite
    if real is not None:
        score = real_score(real, cell.indices, cell.topk[:, 0])
        row.real_top1 = None if score.top1 is None else round(score.top1, 4)
        row.real_n = score.n
        row.real_excluded = score.excluded
    world = dist.world_size if dist is not None else 1
    row.world_size = world
    if cell.duration_s > 0:
        # the data-parallel rate of the whole pass: all processes, decode and every model of the pass included
        row.aggregate_images_per_sec = round(cell.n / cell.duration_s, 2)
    return row


def prediction_arrays(cell: CellOutput) -> dict:
    """Per-image predictions in compact numpy form: sample index and label (int32), top-5 class indices."""
    import numpy as np

    top5 = cell.topk.numpy()
    return {
        "indices": cell.indices.numpy().astype(np.int32),
        "labels": cell.labels.numpy().astype(np.int32),
        "top5": top5 if top5.dtype == np.int16 else top5.astype(np.int32),
    }
