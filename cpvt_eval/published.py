"""The published numbers shipped with the package, read in one place.

``published_results.csv``: top-1 by model and size, with the protocol it was measured under and a confidence grade
(``primary`` = the paper's own table; ``secondary-xN`` = N independent transcriptions that agree; ``secondary``,
``quoted``, ``approximate`` = a single reading: one note, a quote elsewhere, a figure read by eye). A protocol
other than ``train224-no-finetune`` says how the figure differs: ``...-crop1.0`` (evaluated with crop ratio 1.0),
``finetune384`` (a model fine-tuned at that size, not a zero-shot result: never shown as one), ``native384-full``
(the figure of a model registered at native size 384, e.g. ``cvt_13_384``, whose weights were fine-tuned there: its
native-size figure, official evaluation of the whole image resized to 384x384, ``--crop-mode full``).
``published_throughput.csv``: the paper's V100 figures, for context. ``published_shift.csv``: shift consistency
(Zhang 2019 protocol).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

ZERO_SHOT = "train224-no-finetune"


@dataclass(frozen=True)
class Published:
    """One published figure: the model's top-1 at a size, with its protocol, grade and source."""

    model: str
    pe: str
    protocol: str
    img_size: int
    top1: float
    confidence: str
    source: str

    @property
    def zero_shot(self) -> bool:
        """Measured without fine-tuning at this size (the resolution table's question)."""
        return not self.protocol.startswith("finetune")

    @property
    def crop_pct(self) -> float | None:
        """The evaluation crop ratio the protocol names, when it names one (``...-crop1.0``)."""
        _, sep, tail = self.protocol.partition("-crop")
        return float(tail) if sep else None


def _read(name: str) -> list[dict]:
    text = resources.files("cpvt_eval.resources").joinpath(name).read_text(encoding="utf-8")
    return list(csv.DictReader(io.StringIO(text)))


@lru_cache(maxsize=1)
def published_results() -> tuple[Published, ...]:
    """Every row of ``published_results.csv``."""
    return tuple(
        Published(
            model=r["model"],
            pe=r["pe"],
            protocol=r["protocol"],
            img_size=int(r["img_size"]),
            top1=float(r["top1"]),
            confidence=r["confidence"],
            source=r["source"],
        )
        for r in _read("published_results.csv")
    )


def applies_to(label_space: str) -> bool:
    """Published figures are ImageNet-1k figures: a row in another label space (a model's own classes) has none."""
    return label_space in ("", "imagenet-1k")


def published_for(model: str, zero_shot_only: bool = True) -> dict[int, Published]:
    """``{size: Published}`` of a model; fine-tuned figures only when asked for."""
    return {p.img_size: p for p in published_results() if p.model == model and (p.zero_shot or not zero_shot_only)}


# grades that rest on a single reading of the paper; compact tables mark their figures with "?"
SINGLE_READING = frozenset({"secondary", "quoted", "approximate", "unverified"})


def single_reading(confidence: str) -> bool:
    """Whether a figure of this grade rests on one reading only (not the paper's table, no agreeing copies)."""
    return confidence in SINGLE_READING


def published_top1(model: str, size: int) -> tuple[float, str] | None:
    """``(top1, confidence)`` of the zero-shot published figure of ``model`` at ``size``, or None."""
    hit = published_for(model).get(size)
    return None if hit is None else (hit.top1, hit.confidence)


@lru_cache(maxsize=1)
def published_throughput() -> tuple[dict, ...]:
    return tuple(
        {**r, "img_size": int(r["img_size"]), "images_per_sec": float(r["images_per_sec"])}
        for r in _read("published_throughput.csv")
    )


@lru_cache(maxsize=1)
def published_shift() -> tuple[dict, ...]:
    return tuple(_read("published_shift.csv"))
