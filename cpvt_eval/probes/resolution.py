"""Accuracy by size (``cpvt-eval resolution``): top-1 and top-5 of each model at each size, per image, with the
model-only images/s of each cell and, on ImageNet val, the ImageNet-ReaL top-1.

The probe the tool started with: its cells keep the keys of every earlier version (``CellId.probe`` empty) and its
reports are ``results.*``. Under torchrun each process evaluates its shard and the per-image records merge image
by image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config import DEFAULT_BUDGET_S, ThroughputConfig
from ..errors import CpvtEvalError
from ..published import applies_to, published_for
from ..results import ResultRow
from .base import Accumulator, Probe, ProbeSettings, column, option
from .presentation import (
    Cells,
    Metric,
    Pairs,
    Pivot,
    Plot,
    ReportSpec,
    Tex,
    Usage,
    change_from_native,
    eval_transform_line,
    fmt_value,
)

if TYPE_CHECKING:
    from ..data import ImageSet
    from ..engine import EvalModel, EvalSettings

__all__ = ["Resolution", "ResolutionRow", "ResolutionSettings"]

TITLE = "Resolution generalization without fine-tuning"


@dataclass(frozen=True)
class ResolutionSettings(ProbeSettings):
    """The model-only timing after each size's data pass, and ImageNet-ReaL.

    The models of a size are timed together in interleaved rounds (one forward each per round) right after that
    size's pass: ``throughput_budget`` seconds of timed forwards per model, never fewer than 3 rounds, or exactly
    ``throughput_repeats`` rounds; the timing batch is ``throughput_batch``, else the evaluation batch halved until
    3 forwards of the slowest model fit the budget.
    """

    throughput: bool = option(
        True,
        "Measure model-only images/s per cell: the models of a size are timed together, in interleaved rounds, "
        "after the size's data pass.",
        flag="--throughput/--no-throughput",
        panel="Speed",
    )
    throughput_batch: int | None = option(
        None,
        "Batch of the timing runs (default: --batch-size, halved until the minimum rounds fit the budget).",
        min=1,
        panel="Speed",
    )
    throughput_repeats: int | None = option(
        None, "Force this many timed rounds (default: the budget decides).", min=1, panel="Speed"
    )
    throughput_budget: float = option(
        DEFAULT_BUDGET_S,
        "Seconds of timed forwards per model and size; at least 3 rounds run whatever the budget.",
        min=0.01,
        panel="Speed",
    )
    throughput_warmup: int = option(1, None)  # untimed forwards per model before the rounds
    real_labels: str | None = option(
        None,
        "Add ImageNet-ReaL top-1 (alone: the labels timm ships).",
        flag="--real-labels",
        metavar="[FILE]",
        panel="Data",
        alone="timm",
    )

    def check(self, sizes, image_set: ImageSet) -> None:
        if self.real_labels:
            if not applies_to(image_set.label_space):
                raise CpvtEvalError(
                    f"--real-labels applies to the ImageNet-1k label space; the models' is {image_set.label_space}"
                )
            real_for(self.real_labels, image_set)

    def timing(self) -> ThroughputConfig | None:
        if not self.throughput:
            return None
        return ThroughputConfig(
            batch_size=self.throughput_batch,
            warmup=self.throughput_warmup,
            repeats=self.throughput_repeats,
            budget_s=self.throughput_budget,
        )


_REAL: dict[tuple[str, int], list] = {}


def real_for(path: str, image_set: ImageSet) -> list:
    """The ReaL label set of each image of ``image_set`` (None: it has none), read once per file and set."""
    from ..data import load_real_labels

    key = (path, id(image_set))
    if key not in _REAL:
        _REAL.clear()  # one set at a time: a run evaluates one
        _REAL[key] = load_real_labels(path).for_image_set(image_set)
    return _REAL[key]


@dataclass
class ResolutionRow(ResultRow):
    """An accuracy cell's row: the model-only speed of the cell (``images_per_sec``: the model alone on one device,
    ``throughput_scope`` says so; its rounds and spread in ``extra``) and ImageNet-ReaL top-1."""

    images_per_sec: float | None = column()
    throughput_batch: int | None = column()
    gflops_per_image: float | None = column()
    throughput_scope: str = column(default="")
    real_top1: float | None = column()
    real_n: int | None = column()  # images with ReaL labels (the denominator of real_top1)
    real_excluded: int | None = column()  # images without ReaL labels, left out of real_top1


class Accuracy(Accumulator):
    """Top-1/top-5 and the per-image top-k of one model over a pass; with ReaL labels, each image's ReaL hit."""

    def __init__(self, n: int, k: int, num_classes: int, real: list | None):
        import torch

        super().__init__(n, k, num_classes)
        self.real = real
        if real is not None:
            self.records["real"] = torch.full((n,), -1, dtype=torch.int8)  # -1: no ReaL label

    def update(self, batch, view, out) -> None:
        pred = self.core.record(batch.at, batch, out)
        if self.real is not None:
            from ..data import real_hits

            self.records["real"][batch.at] = real_hits(self.real, batch.indices, pred[:, 0].cpu())

    def columns(self) -> dict:
        if self.real is None:
            return {}
        from ..data import real_score

        score = real_score(self.records["real"])
        top1 = None if score.top1 is None else round(score.top1, 4)
        return dict(real_top1=top1, real_n=score.n, real_excluded=score.excluded)

    def stored(self) -> dict:
        return {name: self.records[name] for name in ("indices", "labels", "top5")}


def _published(row: ResultRow) -> dict:
    """The paper's top-1 of the cell, its confidence grade, our difference to it and the paper's crop ratio."""
    pub = published_for(row.model).get(row.img_size) if applies_to(row.label_space) else None
    return {
        "published_top1": None if pub is None else pub.top1,
        "published_confidence": None if pub is None else pub.confidence,
        "delta_published": None if pub is None or row.top1 is None else round(row.top1 - pub.top1, 4),
        "published_crop_pct": None if pub is None else pub.crop_pct,
    }


def _paper(record: dict) -> str:
    text = fmt_value(record["published_top1"], ".1f")
    crop = record["published_crop_pct"]
    return text + (f" (crop {float(crop)})" if crop is not None else "")


def _note(records: list[dict], rows: list[ResultRow]) -> list[str]:
    lines = [
        "Δ native: points from the same model at its training size. Δ paper: points from the published top-1; "
        "confidence `primary` is the paper's own table, `secondary-xN` N transcriptions that agree; `secondary`, "
        "`quoted` and `approximate` rest on a single reading.",
        "",
    ]
    crops = sorted({r["published_crop_pct"] for r in records if r["published_crop_pct"] is not None})
    if crops:
        run_crops = ", ".join(dict.fromkeys(str(r.crop_pct) for r in rows))
        lines += [
            f"Paper figures marked (crop {', '.join(str(float(c)) for c in crops)}) were measured at that crop "
            f"ratio; this table's images were cropped at {run_crops} (`--crop-pct`).",
            "",
        ]
    return lines


def _console(row: ResolutionRow) -> str:
    text = f"{fmt_value(row.top1, '.2f')} ({fmt_value(row.top5, '.2f')})"
    return text + (f"\n{row.images_per_sec:,.1f}/s" if row.images_per_sec else "")


def _real_note(rows: list[ResolutionRow]) -> str:
    first = rows[0]
    return f"Images without a ReaL label are left out: {first.real_excluded} of {first.n_images}."


class Resolution(Probe):
    """Top-1/top-5 and images/s of each model at each size, without fine-tuning.

    Writes rows.jsonl, per-image predictions, provenance.json and the reports (results.md/.csv/.tex/.json, plots)
    to the run directory. Each cell is stored the moment it finishes: rerunning the same command resumes and skips
    finished cells; Ctrl-C stops with exit code 130 and keeps them.
    """

    name = "resolution"
    Settings = ResolutionSettings
    distributed = True
    row_type = ResolutionRow
    report = ReportSpec(
        title=TITLE,
        stem="results",
        metric=Metric(
            "top1",
            "Top-1 accuracy",
            short="Top-1",
            successes="correct1",
            trials="n_images",
            console=("top-1 % (top-5 %) · images/s", _console),
        ),
        cells=Cells(
            heading="95% interval, change from native size and from the paper",
            extra=(
                ("Δ native", "delta_native", change_from_native),
                ("paper", "published_top1", _paper),
                ("Δ paper", "delta_published", "+.2f"),
                ("confidence", "published_confidence", ""),
                ("images", "n_images", "d"),
            ),
            note=_note,
            by_family=True,
        ),
        pairs=Pairs(
            "correct",
            "right",
            "images",
            "exact McNemar test on the same images",
            "A small p says the two models' difference on these images is unlikely to be chance.",
            always=False,
        ),
        plot=Plot(
            "top1_vs_resolution.png",
            "top-1 accuracy (%)",
            "Top-1 vs resolution (no fine-tuning; bars: 95% Wilson interval)",
            published="published_top1",
            best=True,
        ),
        tex=Tex(
            "resolution-top1",
            lambda rows, records: (
                f"{TITLE}: top-1 accuracy (%) by input size on "
                f"{max(r['n_images'] for r in records)} images; in parentheses the change in points from the model's "
                "training size."
            ),
            lambda r: (
                f" ({r['delta_native']:+.2f})"
                if r["delta_native"] is not None and r["img_size"] != r["native_size"]
                else ""
            ),
        ),
        records=_published,
        conditions=lambda rows: [eval_transform_line(rows)],
        sections=("best_size", "throughput", Pivot("ImageNet-ReaL top-1 (%)", "real_top1", _real_note)),
        schema="cpvt-eval/report-1",
        usage=Usage(
            # a short timing in a quick run: its point is accuracy
            quick=(("throughput_batch", 8), ("throughput_repeats", 3)),
            example="cpvt-eval resolution --model cpvt_ti --model deit_ti --sizes 224 384 448 512 "
            "--data /datasets/imagenet/val --checkpoint cpvt_ti=cpvt_ti.pth --out runs/tiny",
        ),
    )

    def accumulator(
        self, m: EvalModel, size: int, image_set: ImageSet, settings: EvalSettings, reference=None
    ) -> Accuracy:
        real = real_for(self.settings.real_labels, image_set) if self.settings.real_labels else None
        return Accuracy(len(image_set), settings.k_for(m), m.num_classes, real)

    def timing(self) -> ThroughputConfig | None:
        return self.settings.timing()
