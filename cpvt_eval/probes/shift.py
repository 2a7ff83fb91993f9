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

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import CpvtEvalError
from ..published import applies_to, published_shift
from ..results import ResultRow, format_ci
from .base import Accumulator, Probe, ProbeSettings, column, option
from .presentation import Cells, Metric, Pairs, Plot, ReportSpec, Tex, Usage, fmt_value

if TYPE_CHECKING:
    import torch

    from ..data import ImageSet
    from ..engine import EvalModel, EvalSettings

__all__ = ["SHIFT_MODES", "Shift", "ShiftProtocol", "ShiftRow", "pair_offsets", "shifted_views"]

SHIFT_MODES = ("random", "circular")


@dataclass(frozen=True)
class ShiftProtocol(ProbeSettings):
    """The translation probe (Zhang, "Making Convolutional Networks Shift-Invariant Again", ICML 2019), at each size.

    At size ``s`` the image's shorter side goes to ``round(s * 256 / 224)`` and that square is centre-cropped (the
    canvas); each pair is two ``s`` x ``s`` views of it at offsets drawn uniformly from ``[0, max_shift)`` per axis.
    Offsets depend on (seed, epoch, image index) only, never on the batch or the workers; the reference evaluation
    uses 5 epochs.
    """

    mode: str = option(
        "random",
        "random: two crops of the canvas (Zhang); circular: the centre crop rolled by the offsets (torch.roll), so no "
        "pixel enters or leaves the view.",
        identity="",
    )
    max_shift: int | None = option(
        None,
        "Offsets are uniform in [0, N) per axis (default: the canvas minus the size, 32 at 224); 0 means no shift.",
        identity="max",
        auto="auto",
    )
    epochs: int = option(5, "Passes over the data, new offsets each (the reference uses 5).", identity="epochs")
    seed: int = option(0, "Seed of the offsets.", identity="seed")

    def __post_init__(self):
        if self.mode not in SHIFT_MODES:
            raise CpvtEvalError(f"--mode must be one of {', '.join(SHIFT_MODES)}, got {self.mode!r}")
        if self.max_shift is not None and self.max_shift < 0:
            raise CpvtEvalError(f"--max-shift must be 0 or more pixels, got {self.max_shift}")
        if self.epochs < 1:
            raise CpvtEvalError(f"--epochs must be 1 or more, got {self.epochs}")

    def check(self, sizes, image_set=None) -> None:
        for size in sizes:
            self.max_shift_at(size)  # a bound that does not fit is an input error before anything runs

    @staticmethod
    def canvas_size(size: int) -> int:
        """The square the views are taken from: ``round(size * 256 / 224)`` (256 at 224, as in Zhang's code)."""
        return round(size * 256 / 224)

    def max_shift_at(self, size: int) -> int:
        """The offset bound at ``size``; a random crop must stay inside the canvas."""
        room = self.canvas_size(size) - size
        if self.max_shift is None:
            return room
        if self.mode == "random" and self.max_shift > room + 1:
            raise CpvtEvalError(
                f"--max-shift {self.max_shift} does not fit at {size}px: the canvas is {self.canvas_size(size)}px, "
                f"so random crops allow offsets below {room + 1} (use --mode circular for larger shifts)"
            )
        return self.max_shift


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


class PairCounter(Accumulator):
    """Per-pair predictions of one model over a pass, pairs ordered epoch by epoch and images in dataset order
    within an epoch: both views' top-k, the epoch and the offsets."""

    def __init__(self, k: int, n_img: int, protocol: ShiftProtocol, max_shift: int, canvas: int, num_classes: int):
        import torch

        super().__init__(n_img * protocol.epochs, k, num_classes, tops=("top5_a", "top5_b"))
        self.n_img, self.protocol, self.max_shift, self.canvas = n_img, protocol, max_shift, canvas
        self.records["epochs"] = torch.arange(protocol.epochs, dtype=torch.int64).repeat_interleave(n_img)
        self.records["offsets"] = torch.empty((n_img * protocol.epochs, 4), dtype=torch.int16)

    def update(self, batch, view, out) -> None:
        # Two calls of the same shape, not one of 2B: a view pair that is the same image (no shift) then runs
        # through identical kernels and agrees exactly.
        epoch, which, offsets = view.tag
        at = slice(epoch * self.n_img + batch.at.start, epoch * self.n_img + batch.at.stop)
        self.core.record(at, batch, out, f"top5_{which}")
        self.records["offsets"][at] = offsets

    def columns(self) -> dict:
        top_a, top_b, labels = (self.records[k] for k in ("top5_a", "top5_b", "labels"))
        n = len(labels)
        agree = int(top_a[:, 0].eq(top_b[:, 0]).sum())
        correct_a, correct_b = int(top_a[:, 0].long().eq(labels).sum()), int(top_b[:, 0].long().eq(labels).sum())

        def pct(k: int) -> float:
            return round(100.0 * k / n, 4) if n else float("nan")

        return dict(
            consistency=pct(agree),
            consistency_ci95=format_ci(agree, n),
            n_pairs=n,
            n_agree=agree,
            top1_a=pct(correct_a),
            top1_b=pct(correct_b),
            shift_mode=self.protocol.mode,
            max_shift=self.max_shift,
            shift_epochs=self.protocol.epochs,
            shift_seed=self.protocol.seed,
            canvas_size=self.canvas,
            images_in_set=self.n_img,
        )


# Zhang's protocol as published: random crops, offsets in [0, 32) at 224 px.
_PUBLISHED_PROTOCOL = ("random", 224, 32)


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


def _published(row: ShiftRow) -> dict:
    pub = published_consistency(row)
    return {
        "published_consistency": None if pub is None else pub["consistency"],
        "published_confidence": None if pub is None else pub["confidence"],
        "delta_published": None if pub is None else round(row.consistency - pub["consistency"], 4),
    }


def _conditions(rows: list[ShiftRow]) -> list[str]:
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


def _caption(rows: list[ShiftRow], records: list[dict]) -> str:
    modes = ", ".join(dict.fromkeys(r.shift_mode for r in rows))
    return (
        f"Consistency under translation: consistency (%, share of view pairs whose top-1 agree; "
        f"{max(r.n_pairs for r in rows)} pairs, {modes} shifts) by input size; in parentheses the top-1 accuracy (%) "
        "of one view."
    )


class Shift(Probe):
    """How often each model's top-1 stays the same when the image shifts (consistency, Zhang 2019).

    At each size s: shorter side to round(s * 256 / 224), centre crop of that square; two s x s crops per image at
    offsets uniform in [0, --max-shift) per axis, --epochs times; consistency = % of pairs whose top-1 agree, with
    its Wilson interval and each crop's top-1. Writes rows.jsonl, per-pair predictions, provenance.json and
    shift.md/.csv/.tex/.json and consistency_vs_resolution.png (with exact McNemar tests between models) to the run
    directory; rerunning resumes, Ctrl-C stops with exit code 130 and keeps finished cells.
    """

    name = "shift"
    Settings = ShiftProtocol
    row_type = ShiftRow
    report = ReportSpec(
        title="Consistency under translation",
        stem="shift",
        metric=Metric(
            "consistency",
            "Consistency",
            successes="n_agree",
            trials="n_pairs",
            console=(
                "consistency % (top-1 % of view A / view B)",
                lambda r: f"{r.consistency:.2f}\n({r.top1_a:.2f} / {r.top1_b:.2f})",
            ),
        ),
        cells=Cells(
            heading="95% interval, each view's top-1, published figure",
            extra=(("published", "published_consistency", ".2f"), ("Δ published", "delta_published", "+.2f")),
            note=lambda records, rows: [
                "Published: Zhang's protocol (random crops, offsets in [0, 32) at 224 px) from the antialiased-cnns "
                "README, shown only for cells measured under it.",
                "",
            ],
        ),
        pairs=Pairs(
            "agrees",
            "agrees",
            "pairs",
            "exact McNemar test on the agreement of the same view pairs",
            "A small p says one model's higher consistency on these pairs is unlikely to be chance.",
        ),
        plot=Plot(
            "consistency_vs_resolution.png",
            "consistency (% of pairs whose top-1 agree)",
            "Consistency under translation vs resolution (bars: 95% Wilson interval)",
            published="published_consistency",
        ),
        tex=Tex("shift-consistency", _caption, lambda r: f" ({fmt_value(r['top1_a'], '.2f')})"),
        records=_published,
        conditions=_conditions,
        usage=Usage(
            (224,),
            quick=(("epochs", 1),),
            example="cpvt-eval shift -m cpvt_ti -m deit_ti --sizes 224 384 --data /datasets/imagenet/val "
            "--checkpoint cpvt_ti=cpvt_ti.pth --out runs/shift   (ResNet-50 as in the antialiased-cnns README: "
            "cpvt-eval shift -m resnet50.tv_in1k --sizes 224 --data /datasets/imagenet/val)",
        ),
    )

    def transform(self, m: EvalModel, size: int, settings: EvalSettings):
        from ..data import EvalTransform

        # The canvas is the eval transform at crop ratio 1: shorter side to `canvas`, centre crop `canvas`.
        return EvalTransform(self.settings.canvas_size(size), 1.0, m.interpolation_for(settings.interpolation))

    def views(self, images, batch, size: int):
        from ..engine import View

        protocol = self.settings
        max_shift = protocol.max_shift_at(size)
        for epoch in range(protocol.epochs):
            offsets = pair_offsets(protocol.seed, epoch, batch.indices, max_shift)
            view_a, view_b = shifted_views(images, offsets, size, protocol.mode)
            yield View(view_a, (epoch, "a", offsets))
            yield View(view_b, (epoch, "b", offsets))

    def accumulator(
        self, m: EvalModel, size: int, image_set: ImageSet, settings: EvalSettings, reference=None
    ) -> PairCounter:
        protocol = self.settings
        canvas = protocol.canvas_size(size)
        return PairCounter(
            settings.k_for(m), len(image_set), protocol, protocol.max_shift_at(size), canvas, m.num_classes
        )

    def outcomes(self, store, row: ShiftRow):
        """``(pairs, agree)`` of a stored cell, in (epoch, image) order: ``pairs`` (n, 6) = epoch, image index and
        the four offsets; ``agree`` whether the two views' top-1 are the same."""
        a = store.load_predictions(row, ("indices", "epochs", "labels", "offsets", "top5_a", "top5_b"), row.n_pairs)
        order = np.lexsort((a["indices"], a["epochs"]))
        pairs = np.concatenate([a["epochs"][:, None], a["indices"][:, None], a["offsets"]], axis=1).astype(np.int64)
        agree = a["top5_a"][:, 0].astype(np.int64) == a["top5_b"][:, 0].astype(np.int64)
        return pairs[order], agree[order]
