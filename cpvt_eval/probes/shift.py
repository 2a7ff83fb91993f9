"""Consistency under translation (``cpvt-eval shift``): how often a model's top-1 stays the same when the image
shifts.

The measure is Zhang's ("Making Convolutional Networks Shift-Invariant Again", ICML 2019), scaled to each size
``s``: the image is decoded once, its shorter side resized to ``round(s * 256 / 224)`` and that square
centre-cropped (the *canvas*, uint8); each pair is two ``s`` x ``s`` views of the canvas at offsets drawn uniformly
from ``[0, max_shift)`` per axis, and the consistency is the share of pairs whose two top-1 predictions agree. In
``circular`` mode the views are the centre crop rolled by the offsets instead (``torch.roll``).

One data pass per size feeds every model and every epoch: each batch of canvases is decoded once and cropped
twice per epoch on the device. The offsets are a function of (seed, epoch, image index) alone, so the pairs, and
therefore the figures, do not depend on the batch size, the workers or which models share the pass. Every model
sees the same pairs, which is what makes paired tests between models exact.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..config import ShiftProtocol
from ..errors import CpvtEvalError
from ..published import applies_to, published_shift
from ..results import ResultRow, format_ci
from .base import Probe, ReportSpec, column

if TYPE_CHECKING:
    import torch

    from ..engine import EvalModel, EvalSettings, PassInfo

__all__ = ["Shift", "ShiftCell", "ShiftRow", "pair_offsets", "shifted_views"]

# SplitMix64 constants: a counter-based generator, so that an image's offsets need no generator state.
_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def pair_offsets(seed: int, epoch: int, indices, max_shift: int) -> torch.Tensor:
    """``(n, 4)`` int64 offsets ``(y_a, x_a, y_b, x_b)``, each uniform in ``[0, max_shift)``, for the images at
    ``indices`` (positions in the ImageSet) in ``epoch``; all zero when ``max_shift`` is 0 or 1."""
    import torch

    idx = np.asarray(indices, dtype=np.int64).astype(np.uint64)
    if max_shift <= 1:
        return torch.zeros((len(idx), 4), dtype=torch.int64)
    base = np.full(idx.shape, seed & 0xFFFFFFFFFFFFFFFF, dtype=np.uint64)
    key = _mix(_mix(_mix(base) + np.uint64(epoch)) + idx)
    draws = _mix(key[:, None] + np.arange(1, 5, dtype=np.uint64)[None, :] * _GAMMA)  # arrays wrap silently
    # the modulo bias of a 64-bit draw over a bound of a few hundred pixels is below 1e-16
    return torch.from_numpy((draws % np.uint64(max_shift)).astype(np.int64))


def shifted_views(
    canvas: torch.Tensor, offsets: torch.Tensor, size: int, mode: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two views of every canvas of ``canvas`` (B, C, H, W): ``size`` x ``size`` crops at ``offsets`` (B, 4)
    from the top-left corner (``random``), or the centre crop rolled by them with ``torch.roll`` (``circular``).

    A copy per image: on the CPU a slice copy is tens of times faster than one gather over the batch.
    """
    import torch

    if mode not in ("random", "circular"):
        raise CpvtEvalError(f"unknown shift mode {mode!r}")
    b, c, h, w = canvas.shape
    top, left = (h - size) // 2, (w - size) // 2
    views = (canvas.new_empty((b, c, size, size)), canvas.new_empty((b, c, size, size)))
    for i, (ya, xa, yb, xb) in enumerate(offsets.tolist()):
        for view, (y, x) in zip(views, ((ya, xa), (yb, xb)), strict=True):
            if mode == "random":
                view[i] = canvas[i, :, y : y + size, x : x + size]
            else:
                view[i] = torch.roll(canvas[i, :, top : top + size, left : left + size], (y, x), (1, 2))
    return views


@dataclass
class ShiftRow(ResultRow):
    """A shift cell's row: the accuracy columns count both views of every pair (``2 * n_pairs`` images)."""

    shift_mode: str = column("mode", default="")
    max_shift: int | None = column("max shift", "d")
    consistency: float | None = column("consistency", ".2f")
    consistency_ci95: str = column(default="")
    top1_a: float | None = column("top-1 A", ".2f")
    top1_b: float | None = column("top-1 B", ".2f")
    n_pairs: int | None = column("pairs", "d")
    n_agree: int | None = column()
    shift_epochs: int | None = column()
    shift_seed: int | None = column()
    canvas_size: int | None = column()
    images_in_set: int | None = column()


@dataclass
class ShiftCell:
    """One (model, size) cell of the probe: counts and per-pair predictions, pairs ordered epoch by epoch, images
    in dataset order within an epoch."""

    info: PassInfo
    canvas: int
    max_shift: int
    n_pairs: int
    agree: int
    correct_a: int  # top-1 hits of view A
    correct_b: int
    correct5: int  # top-5 hits over both views
    indices: torch.Tensor  # (n_pairs,) positions in the ImageSet
    epochs: torch.Tensor  # (n_pairs,)
    labels: torch.Tensor  # (n_pairs,)
    offsets: torch.Tensor  # (n_pairs, 4) y_a, x_a, y_b, x_b
    top5_a: torch.Tensor  # (n_pairs, k) class indices, best first
    top5_b: torch.Tensor

    @property
    def model(self) -> str:
        return self.info.model

    @property
    def size(self) -> int:
        return self.info.size

    @property
    def consistency_pct(self) -> float:
        return 100.0 * self.agree / self.n_pairs if self.n_pairs else float("nan")


class PairCounter:
    """Agreement, hits and per-pair predictions of one model over a pass: view A of an epoch is held until its
    view B arrives."""

    def __init__(self, k: int, n_img: int, protocol: ShiftProtocol, max_shift: int, canvas: int, num_classes: int):
        import torch

        self.k, self.n_img, self.max_shift, self.canvas = k, n_img, max_shift, canvas
        n_pairs = n_img * protocol.epochs
        dtype = torch.int16 if num_classes <= 32767 else torch.int32
        self.top5_a = torch.empty((n_pairs, k), dtype=dtype)
        self.top5_b = torch.empty((n_pairs, k), dtype=dtype)
        self.labels = torch.empty(n_pairs, dtype=torch.int64)
        self.indices = torch.empty(n_pairs, dtype=torch.int64)
        self.epochs = torch.arange(protocol.epochs, dtype=torch.int64).repeat_interleave(n_img)
        self.offsets = torch.empty((n_pairs, 4), dtype=torch.int64)
        self.agree = self.correct_a = self.correct_b = self.correct5 = 0
        self.pred_a = None

    def update(self, batch, view, x, runner) -> None:
        # Two calls of the same shape, not one of 2B: a view pair that is the same image (no shift) then runs
        # through identical kernels and agrees exactly.
        epoch, which, offsets = view.tag
        pred = runner.topk(x, self.k)
        if which == "a":
            self.pred_a = pred
            return
        pred_a, pred_b, self.pred_a = self.pred_a, pred, None
        at = slice(epoch * self.n_img + batch.at.start, epoch * self.n_img + batch.at.stop)
        target = batch.target_dev.view(-1, 1)
        hit_a, hit_b = pred_a.eq(target), pred_b.eq(target)
        self.agree += int(pred_a[:, 0].eq(pred_b[:, 0]).sum())
        self.correct_a += int(hit_a[:, 0].sum())
        self.correct_b += int(hit_b[:, 0].sum())
        self.correct5 += int(hit_a.any(dim=1).sum()) + int(hit_b.any(dim=1).sum())
        self.top5_a[at] = pred_a.to("cpu", self.top5_a.dtype)
        self.top5_b[at] = pred_b.to("cpu", self.top5_b.dtype)
        self.offsets[at], self.labels[at], self.indices[at] = offsets, batch.target, batch.indices

    def finish(self, info: PassInfo) -> ShiftCell:
        return ShiftCell(
            info=info,
            canvas=self.canvas,
            max_shift=self.max_shift,
            n_pairs=len(self.indices),
            agree=self.agree,
            correct_a=self.correct_a,
            correct_b=self.correct_b,
            correct5=self.correct5,
            indices=self.indices,
            epochs=self.epochs,
            labels=self.labels,
            offsets=self.offsets,
            top5_a=self.top5_a,
            top5_b=self.top5_b,
        )


# Zhang's protocol as published: random crops, offsets in [0, 32) at 224 px.
_PUBLISHED_PROTOCOL = ("random", 224, 32)


class Shift(Probe):
    """Consistency of each model's top-1 under translation, at each size (Zhang 2019's protocol, scaled)."""

    name = "shift"
    row_type = ShiftRow
    uses_crop = False  # the canvas is round(size * 256 / 224) by the protocol's definition
    report = ReportSpec(
        title="Consistency under translation",
        cells_heading="95% interval, each view's top-1, published figure",
        stem="shift",
        plot="consistency_vs_resolution.png",
        metric="consistency",
        metric_title="Consistency",
        successes="n_agree",
        trials="n_pairs",
        units="pairs",
        paired=("agrees", "exact McNemar test on the agreement of the same view pairs"),
        paired_reading="A small p says one model's higher consistency on these pairs is unlikely to be chance.",
        aside=("top1_a", "the top-1 accuracy (\\%) of one view", ".2f"),
        plot_ylabel="consistency (% of pairs whose top-1 agree)",
        plot_title="Consistency under translation vs resolution (bars: 95% Wilson interval)",
        console_title="consistency % (top-1 % of view A / view B)",
        tex_label="shift-consistency",
        published="published_consistency",
        published_note="Published: Zhang's protocol (random crops, offsets in [0, 32) at 224 px) from the "
        "antialiased-cnns README, shown only for cells measured under it.",
    )

    def __init__(self, protocol: ShiftProtocol | None = None):
        self.protocol = protocol or ShiftProtocol()

    def identity(self) -> str:
        return self.protocol.probe()

    def summary(self) -> dict:
        return {"shift": asdict(self.protocol)}

    def check(self, sizes) -> None:
        for size in sizes:
            self.protocol.max_shift_at(size)  # a bound that does not fit is an input error before anything runs

    def transform(self, m: EvalModel, size: int, settings: EvalSettings):
        from ..data import EvalTransform

        # The canvas is the eval transform at crop ratio 1: shorter side to `canvas`, centre crop `canvas`.
        return EvalTransform(self.protocol.canvas_size(size), 1.0, m.interpolation_for(settings.interpolation))

    def pass_label(self, size: int, models: list[EvalModel]) -> str:
        return f"{size}px shift x{self.protocol.epochs} · {', '.join(m.name for m in models)}"

    def views(self, images, batch, size: int):
        from ..engine import View

        max_shift = self.protocol.max_shift_at(size)
        for epoch in range(self.protocol.epochs):
            offsets = pair_offsets(self.protocol.seed, epoch, batch.indices, max_shift)
            view_a, view_b = shifted_views(images, offsets, size, self.protocol.mode)
            yield View(view_a, (epoch, "a", offsets))
            yield View(view_b, (epoch, "b", offsets))

    def accumulator(self, m: EvalModel, size: int, n: int, settings: EvalSettings) -> PairCounter:
        canvas = self.protocol.canvas_size(size)
        return PairCounter(settings.k_for(m), n, self.protocol, self.protocol.max_shift_at(size), canvas, m.num_classes)

    def counts(self, cell: ShiftCell) -> tuple[int, int, int]:
        # the accuracy columns count both views of every pair
        return cell.correct_a + cell.correct_b, cell.correct5, 2 * cell.n_pairs

    def columns(self, cell: ShiftCell, row: ResultRow, n_images: int) -> dict:
        def pct(k: int) -> float:
            return round(100.0 * k / cell.n_pairs, 4) if cell.n_pairs else float("nan")

        return dict(
            resize_size=cell.canvas,
            consistency=pct(cell.agree),
            consistency_ci95=format_ci(cell.agree, cell.n_pairs),
            n_pairs=cell.n_pairs,
            n_agree=cell.agree,
            top1_a=pct(cell.correct_a),
            top1_b=pct(cell.correct_b),
            shift_mode=self.protocol.mode,
            max_shift=cell.max_shift,
            shift_epochs=self.protocol.epochs,
            shift_seed=self.protocol.seed,
            canvas_size=cell.canvas,
            images_in_set=n_images,
        )

    def arrays(self, cell: ShiftCell) -> dict:
        """Per-pair predictions in compact numpy form: image index, epoch, label, offsets, both views' top-5."""

        def small(t):
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

    def log_line(self, row: ShiftRow) -> str:
        return (
            f"{row.model} @ {row.img_size}px: consistency {row.consistency:.2f}% over {row.n_pairs} pairs "
            f"(top-1 {row.top1_a:.2f}% / {row.top1_b:.2f}%)"
        )

    # -- reports ---------------------------------------------------------------------------------------------------

    def outcomes(self, store, row: ShiftRow):
        """``(pairs, agree)`` of a stored cell, in (epoch, image) order: ``pairs`` (n, 6) = epoch, image index and
        the four offsets; ``agree`` whether the two views' top-1 are the same."""
        a = store.load_predictions(row, ("indices", "epochs", "labels", "offsets", "top5_a", "top5_b"), row.n_pairs)
        order = np.lexsort((a["indices"], a["epochs"]))
        pairs = np.concatenate([a["epochs"][:, None], a["indices"][:, None], a["offsets"]], axis=1).astype(np.int64)
        agree = a["top5_a"][:, 0].astype(np.int64) == a["top5_b"][:, 0].astype(np.int64)
        return pairs[order], agree[order]

    def record_extra(self, row: ShiftRow) -> dict:
        pub = published_consistency(row)
        return {
            "published_consistency": None if pub is None else pub["consistency"],
            "published_confidence": None if pub is None else pub["confidence"],
            "delta_published": None if pub is None else round(row.consistency - pub["consistency"], 4),
        }

    def md_extra(self) -> list[tuple[str, str, str]]:
        return [("published", "published_consistency", ".2f"), ("Δ published", "delta_published", "+.2f")]

    def caption_detail(self, rows: list[ShiftRow]) -> str:
        modes = ", ".join(dict.fromkeys(r.shift_mode for r in rows))
        return f"share of view pairs whose top-1 agree; {max(r.n_pairs for r in rows)} pairs, {modes} shifts"

    def protocol_lines(self, rows: list[ShiftRow]) -> list[str]:
        def values(get) -> str:
            return ", ".join(f"`{v}`" for v in dict.fromkeys(str(get(r)) for r in rows))

        return [
            "- views: shorter side to round(size x 256 / 224) ("
            + values(lambda r: r.interpolation)
            + "), centre crop of that square (the canvas: "
            + ", ".join(dict.fromkeys(f"{r.canvas_size}px at {r.img_size}px" for r in rows))
            + "); per image and epoch two size x size views at offsets uniform in [0, max shift) per axis, drawn "
            "from (seed, epoch, image index)",
            "- mode "
            + values(lambda r: r.shift_mode)
            + " (random: crops of the canvas; circular: the centre crop rolled by the offsets), max shift "
            + ", ".join(dict.fromkeys(f"{r.max_shift} at {r.img_size}px" for r in rows))
            + f", epochs {values(lambda r: r.shift_epochs)}, seed {values(lambda r: r.shift_seed)}",
            "- consistency: % of pairs whose two top-1 predictions agree; top-1 A / B: accuracy of each view",
        ]

    def console_cell(self, row: ShiftRow) -> str:
        return f"{row.consistency:.2f}\n({row.top1_a:.2f} / {row.top1_b:.2f})"


def published_consistency(row: ShiftRow) -> dict | None:
    """The published figure of this model under Zhang's protocol (random crops, [0, 32) at 224 px), matched on the
    model name or the timm weights tag of the checkpoint (``timm:resnet50.tv_in1k``)."""
    if (row.shift_mode, row.img_size, row.max_shift) != _PUBLISHED_PROTOCOL or not applies_to(row.label_space):
        return None
    names = {row.model, row.checkpoint.split(":", 1)[-1] if row.checkpoint.startswith("timm:") else row.model}
    for p in published_shift():
        if p["model"] in names:
            return {"consistency": float(p["consistency"]), "confidence": p["confidence"], "source": p["source"]}
    return None
