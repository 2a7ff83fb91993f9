"""From a computed cell to its result row, and the cell's identity before it is computed."""

from __future__ import annotations

import torch

from ..config import RunConfig
from ..data import ImageSet
from ..distributed import DistContext
from ..engine import EvalModel
from ..probes import Probe
from ..probes.base import Cell
from ..results import CellId, ResultRow, format_ci
from ..runtime import now_iso, versions_string
from .assemble import model_args_label, pe_label, pe_options_of

__all__ = ["cell_id", "make_row", "now_iso"]

# What a probe that decodes its own way (``shift``: a canvas) records as the crop of its cells: the defaults, so that
# its keys do not change with the crop options of the probes it runs beside.
_OWN_DECODE = {"crop_pct": RunConfig.__dataclass_fields__["crop_pct"].default, "crop_mode": "center"}


def cell_id(m: EvalModel, size: int, cfg: RunConfig, image_set: ImageSet, probe: Probe) -> CellId:
    """The identity of ``m`` at ``size`` under ``cfg`` for ``probe``, known before the cell is computed (so a rerun
    can skip it)."""
    follows = probe.follows_crop
    return CellId(
        model=m.name,
        img_size=size,
        checkpoint_sha256=m.checkpoint_sha256,
        dataset_fingerprint=image_set.fingerprint,
        limit=image_set.limit,
        crop_pct=m.crop_pct_for(cfg.crop_pct) if follows else _OWN_DECODE["crop_pct"],
        interpolation=m.interpolation_for(cfg.interpolation),
        pe_options=pe_options_of(m, cfg.pe),
        dtype=cfg.dtype,
        model_args=model_args_label(m),
        ema=bool(m.load_report.get("ema")),
        decode_draft=image_set.decode_draft,
        probe=probe.identity(),
        crop_mode=m.crop_mode_for(cfg.crop_mode) if follows else _OWN_DECODE["crop_mode"],
        mean=m.data.mean_text,
        std=m.data.std_text,
        label_subset=image_set.label_subset,
    )


def make_row(
    probe: Probe,
    m: EvalModel,
    cell: Cell,
    ident: CellId,
    image_set: ImageSet,
    device: torch.device,
    started_at: str,
    dist: DistContext | None = None,
) -> ResultRow:
    """The row of a computed cell of ``probe``: its identity's fields, the counts, the conditions, the data columns
    and the probe's own columns (``cell.columns``), as the probe's row type. A probe's timing columns are filled by
    the job from its measurement."""
    info = cell.info
    correct1, correct5, n = cell.counts
    row = probe.row_type(
        **{name: getattr(ident, name) for name in ident.__dataclass_fields__},
        pe=pe_label(m),
        checkpoint=m.checkpoint,
        grid=info.grid,
        resize_size=info.resize_size,
        pe_policy=info.pe_policy,
        device=str(device),
        n_images=n,
        n_skipped=len(image_set.skipped),
        correct1=correct1,
        correct5=correct5,
        top1=round(100.0 * correct1 / n, 4) if cell.labelled else None,
        top5=round(100.0 * correct5 / n, 4) if cell.labelled else None,
        top1_ci95=format_ci(correct1, n) if cell.labelled else "",
        params=m.num_params,
        dataset=str(image_set.root),
        partial=not image_set.is_full_imagenet_val,
        versions=versions_string(),
        started_at=started_at,
        duration_s=round(info.duration_s, 3),
        native_size=m.spec.native_size,
        layout=image_set.layout,
        label_source=image_set.label_source,
        skipped_files=";".join(rel for rel, _ in image_set.skipped),
        data_config_source=m.data.source,
        weights_crop_pct=m.data.crop_pct,
        weights_interpolation=m.data.interpolation,
        test_set=image_set.test_set,
        world_size=dist.world_size if dist is not None else 1,
        n_nonfinite=info.nonfinite,
        label_space=image_set.label_space,
    )
    row.extra.update(eval_batch=info.batch_size, eval_oom_retries=info.oom_retries)
    for name, value in cell.columns.items():
        setattr(row, name, value)
    if info.duration_s > 0:
        # the data-parallel rate of the whole pass: all processes, decode and every model of the pass included
        row.aggregate_images_per_sec = round(n / info.duration_s, 2)
    return row
