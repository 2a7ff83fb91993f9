"""Calibration across sizes (``cpvt-eval calibration``): are a model's confidences still calibrated when it runs at
another resolution than it was trained at?

Per image, from the softmax over the model's classes (the label subset's, when there is one): the top-1
confidence and whether the top-1 is right, the negative log-likelihood of the label, and the Brier score (the sum
over classes of ``(p - onehot)^2``). Per cell:

* ``ece``: the expected calibration error of Guo et al. (2017), in percent: the images binned by top-1 confidence
  into ``bins`` equal-width bins ``((m-1)/M, m/M]``, and ``|accuracy - mean confidence|`` of each bin weighted by its
  share of the images; its 95% interval from a bootstrap over images (1,000 resamples, seeded, the same for every
  cell);
* ``nll`` (nats) and ``brier``: their means over the images; ``confidence``: the mean top-1 probability (percent);
* ``temperature``: the ``T > 0`` that minimises the NLL of ``softmax(logits / T)`` over the same images (to 1e-6
  relative): a description of how far the confidence has moved at this size (``T > 1``: over-confident), not a
  calibration fitted on held-out data. When every image is right the NLL falls all the way to ``T -> 0``, and when
  the labels sit below the mean logit it falls to ``T -> infinity``; there is no minimum then, and none is reported.

The per-image confidence, hit, NLL and Brier score are stored with each cell, so ``report`` redraws the reliability
diagram of each size (``reliability_<size>px.png``) without recomputing; the logits are kept only while the cell is
computed (classes x 4 bytes per image; mapped onto a scratch file in the run directory, not held on the heap,
when it is large).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..results import ResultRow
from .base import Accumulator, Probe, ProbeSettings, column, option, per_image
from .presentation import Cells, Figure, Metric, Plot, ReportSpec, Tex, Usage, eval_transform_line, fmt_value

if TYPE_CHECKING:
    from ..data import ImageSet
    from ..engine import EvalModel, EvalSettings

__all__ = ["Calibration", "CalibrationRow", "ece", "fit_temperature"]

RESAMPLES = 1000  # bootstrap resamples of the ECE's interval
SEED = 0


@dataclass(frozen=True)
class CalibrationSettings(ProbeSettings):
    bins: int = option(
        15, "Equal-width bins of the top-1 confidence for the ECE (Guo et al. 2017 use 15).", identity="bins", min=1
    )


@dataclass
class CalibrationRow(ResultRow):
    """A calibration cell's row: ECE, NLL, Brier, mean confidence and the fitted temperature at this size."""

    bins: int | None = column("bins", "d")
    ece: float | None = column("ECE", ".2f")
    ece_ci95: str = column(default="")  # a bootstrap interval over images (not a proportion of trials)
    nll: float | None = column("NLL (nats)", ".4f")
    brier: float | None = column("Brier", ".4f")
    confidence: float | None = column("confidence", ".2f")
    temperature: float | None = column("T", ".3f")


def bin_of(confidence: np.ndarray, bins: int) -> np.ndarray:
    """The bin of each confidence among ``bins`` equal-width bins ``((m-1)/M, m/M]`` (0-based)."""
    return np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)


def ece(confidence: np.ndarray, hit: np.ndarray, bins: int) -> float:
    """Expected calibration error in percent: ``sum_m |B_m|/n * |acc(B_m) - conf(B_m)|``."""
    b = bin_of(confidence, bins)
    gap = np.bincount(b, weights=hit.astype(np.float64), minlength=bins) - np.bincount(
        b, weights=confidence.astype(np.float64), minlength=bins
    )
    return 100.0 * float(np.abs(gap).sum()) / len(confidence)


def ece_interval(confidence: np.ndarray, hit: np.ndarray, bins: int) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles of the ECE over ``RESAMPLES`` bootstrap resamples of the images."""
    rng = np.random.default_rng(SEED)
    n = len(confidence)
    b = bin_of(confidence, bins)
    conf, ok = confidence.astype(np.float64), hit.astype(np.float64)
    values = np.empty(RESAMPLES)
    for i in range(RESAMPLES):
        idx = rng.integers(0, n, n)
        gap = np.bincount(b[idx], weights=ok[idx], minlength=bins) - np.bincount(
            b[idx], weights=conf[idx], minlength=bins
        )
        values[i] = 100.0 * np.abs(gap).sum() / n
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def _slope(logits, target, beta: float, rows: int = 4096) -> tuple[float, float]:
    """The first and second derivatives in ``beta = 1 / T`` of the mean NLL of ``softmax(beta * logits)``:
    ``mean(E_p[z] - z_y)`` and ``mean(Var_p[z])`` (float64, ``rows`` images at a time)."""
    import torch

    d1 = d2 = 0.0
    for start in range(0, len(target), rows):
        z = logits[start : start + rows].double()
        p = torch.softmax(beta * z, dim=1)
        mean = (p * z).sum(dim=1)
        d1 += float((mean - z.gather(1, target[start : start + rows, None])[:, 0]).sum())
        d2 += float(((p * z * z).sum(dim=1) - mean * mean).sum())
    return d1 / len(target), d2 / len(target)


def fit_temperature(logits, target, tol: float = 1e-6) -> float | None:
    """The ``T > 0`` minimising the mean NLL of ``softmax(logits / T)`` at the positions ``target``, or None when
    the NLL has no minimum (it falls all the way to T -> 0 or to T -> infinity).

    The NLL is convex in ``beta = 1 / T`` (a log-sum-exp minus a linear term), so its derivative rises with beta:
    the minimum is bracketed by doubling, then found by Newton steps kept inside the bracket (bisection where a
    step would leave it), to ``tol`` relative in beta.
    """
    lo, hi = 0.0, 1.0
    if _slope(logits, target, 0.0)[0] >= 0:
        return None  # the labels sit at or below the mean logit: flatter is always better
    # Past the minimum the slope is positive; while it is not (it reaches 0 only in rounding when every image is right
    # by a margin, and sharper is always better), there is no minimum to find.
    while _slope(logits, target, hi)[0] <= 0:
        lo, hi = hi, 2 * hi
        if hi > 1e6:
            return None
    beta = (lo + hi) / 2
    for _ in range(200):
        d1, d2 = _slope(logits, target, beta)
        if d1 < 0:
            lo = beta
        else:
            hi = beta
        step = beta - d1 / d2 if d2 > 0 else None
        new = step if step is not None and lo < step < hi else (lo + hi) / 2
        if abs(new - beta) <= tol * new or hi - lo <= tol * lo:
            beta = new
            break
        beta = new
    return 1.0 / beta


class Confidences(Accumulator):
    """Per image: the top-1 confidence, hit, NLL and Brier score of one model over a pass, and its logits (for the
    temperature, kept only while the cell is computed)."""

    def __init__(self, n: int, k: int, settings, num_classes: int, bins: int):
        import torch

        super().__init__(n, k, num_classes)
        self.bins = bins
        classes = settings.classes
        for name in ("confidence", "nll", "brier"):
            self.records[name] = torch.empty(n, dtype=torch.float64)
        self.records["hit"] = torch.empty(n, dtype=torch.bool)
        self.records["position"] = torch.empty(n, dtype=torch.int64)  # the label among the logits' classes
        self.records["logits"] = per_image((n, len(classes) or num_classes), torch.float32, settings.scratch)
        # canonical class -> its position among the logits (a label subset's order; every label is in the subset)
        order = torch.tensor(classes, dtype=torch.int64) if classes else torch.arange(num_classes)
        self.lookup = torch.full((max(int(order.max()) + 1, num_classes),), -1, dtype=torch.int64)
        self.lookup[order] = torch.arange(len(order))

    def update(self, batch, view, out) -> None:
        import torch

        top = self.core.record(batch.at, batch, out)
        at, target = batch.at, self.lookup[batch.target]
        logp = torch.log_softmax(out.logits.double(), dim=1).cpu()
        p = logp.exp()
        py = p.gather(1, target[:, None])[:, 0]
        self.records["confidence"][at] = p.max(dim=1).values
        self.records["hit"][at] = top[:, 0].cpu().eq(batch.target)
        self.records["nll"][at] = -logp.gather(1, target[:, None])[:, 0]
        self.records["brier"][at] = (p * p).sum(dim=1) - 2 * py + 1
        self.records["position"][at] = target
        self.records["logits"][at] = out.logits.cpu()

    def columns(self) -> dict:
        r = self.records
        confidence, hit = r["confidence"].numpy(), r["hit"].numpy()
        lo, hi = ece_interval(confidence, hit, self.bins)
        temperature = fit_temperature(r["logits"], r["position"])
        return dict(
            bins=self.bins,
            ece=round(ece(confidence, hit, self.bins), 4),
            ece_ci95=f"{lo:.2f}-{hi:.2f}",
            nll=round(float(r["nll"].mean()), 6),
            brier=round(float(r["brier"].mean()), 6),
            confidence=round(100.0 * float(r["confidence"].mean()), 4),
            temperature=None if temperature is None else round(temperature, 4),
        )

    def stored(self) -> dict:
        names = ("indices", "labels", "top5", "confidence", "hit", "nll", "brier")
        return {name: self.records[name] for name in names}


def draw_reliability(store, rows: list[CalibrationRow]) -> bytes:
    """The reliability diagram of one size: each model's accuracy against its mean confidence, bin by bin (the
    diagonal is perfect calibration), and under it the share of images in each bin."""
    from ..figures import new_figure, png_bytes

    fig = new_figure(6.4, 5.6)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 100], [0, 100], color="0.6", linestyle="--", linewidth=1, label="calibrated")
    for i, row in enumerate(rows):
        a = store.load_predictions(row, ("confidence", "hit"))
        conf, hit, bins = a["confidence"].astype(np.float64), a["hit"].astype(np.float64), row.bins
        b = bin_of(conf, bins)
        count = np.bincount(b, minlength=bins)
        used = count > 0
        mean_conf = np.bincount(b, weights=conf, minlength=bins)[used] / count[used]
        acc = np.bincount(b, weights=hit, minlength=bins)[used] / count[used]
        label = f"{row.model} (ECE {fmt_value(row.ece, '.2f')})"
        top.plot(100 * mean_conf, 100 * acc, marker="o", color=f"C{i % 10}", label=label)
        width = 100 / bins / len(rows)  # the models' bars side by side within each bin
        left = 100 * np.arange(bins) / bins + width * (i + 0.5)
        bottom.bar(left, 100 * count / count.sum(), width=width, color=f"C{i % 10}")
    top.set_ylabel("accuracy (%)")
    top.set_title(f"Reliability at {rows[0].img_size}px ({rows[0].bins} bins)", fontsize="medium")
    top.legend(fontsize="small")
    top.grid(alpha=0.3)
    bottom.set_xlabel("top-1 confidence (%)")
    bottom.set_ylabel("images (%)")
    bottom.set_xlim(0, 100)
    return png_bytes(fig)


def _conditions(rows: list[CalibrationRow]) -> list[str]:
    bins = ", ".join(dict.fromkeys(str(r.bins) for r in rows))
    return [
        eval_transform_line(rows),
        f"- ECE: {bins} equal-width bins of the top-1 confidence, |accuracy - mean confidence| weighted by each bin's "
        f"share of the images (Guo et al. 2017); 95% interval: {RESAMPLES} bootstrap resamples of the images (seed "
        f"{SEED}); NLL of the label in nats, Brier: sum over classes of (p - onehot)^2, both per image and averaged",
        "- T: the temperature minimising the NLL of softmax(logits / T) on these same images, a description of the "
        "shift in confidence (T > 1: over-confident), not a calibration fitted on held-out data; `–` where the NLL "
        "has no minimum (every image right, or the labels below the mean logit)",
    ]


class Calibration(Probe):
    """Are each model's confidences still calibrated at each size? ECE, NLL, Brier score and the fitted temperature.

    Per size: the expected calibration error (15 equal-width bins of the top-1 confidence, --bins; bootstrap 95%
    interval), the mean NLL of the label, the mean Brier score, the mean top-1 confidence and the temperature that
    minimises the NLL on the same images, with top-1/top-5. Writes rows.jsonl, per-image confidences and hits,
    provenance.json, calibration.md/.csv/.tex/.json, ece_vs_resolution.png and a reliability diagram per size
    (reliability_<size>px.png) to the run directory; rerunning resumes, Ctrl-C stops with exit code 130 and keeps
    finished cells.
    """

    name = "calibration"
    Settings = CalibrationSettings
    distributed = True
    row_type = CalibrationRow
    report = ReportSpec(
        title="Calibration across sizes",
        stem="calibration",
        metric=Metric(
            "ece",
            "Expected calibration error",
            short="ECE",
            interval="ece_ci95",
            console=(
                "ECE % (NLL nats · temperature)",
                lambda r: f"{r.ece:.2f}\n({r.nll:.3f} · {fmt_value(r.temperature, '.2f')})",
            ),
        ),
        cells=Cells(
            heading="bootstrap 95% interval, NLL, Brier score, mean confidence, fitted temperature, top-1",
            extra=(("top-1", "top1", ".2f"), ("images", "n_images", "d")),
            note=lambda records, rows: [
                "T is fitted on the same images it describes (T > 1: the model is over-confident at that size); "
                "`–`: the NLL has no minimum.",
                "",
            ],
        ),
        plot=Plot(
            "ece_vs_resolution.png",
            "expected calibration error (%)",
            "Expected calibration error vs resolution (bars: bootstrap 95% interval)",
        ),
        tex=Tex(
            "calibration-ece",
            lambda rows, records: (
                "Calibration across sizes: expected calibration error (%, "
                f"{', '.join(dict.fromkeys(str(r.bins) for r in rows))} bins; {max(r.n_images for r in rows)} images) "
                "by input size; in parentheses the temperature that minimises the NLL on the same images."
            ),
            lambda r: f" ({fmt_value(r['temperature'], '.2f')})",
        ),
        conditions=_conditions,
        figures=(Figure("reliability_{size}px.png", "Reliability diagram at {size}px", draw_reliability),),
        usage=Usage(
            example="cpvt-eval calibration -m cpvt_ti -m deit_ti --sizes 224 384 448 512 --data /datasets/imagenet/val "
            "--checkpoint cpvt_ti=cpvt_ti.pth --out runs/calibration   (or --also calibration on resolution: one "
            "pass per size for both)"
        ),
    )

    def accumulator(
        self, m: EvalModel, size: int, image_set: ImageSet, settings: EvalSettings, reference=None
    ) -> Confidences:
        return Confidences(len(image_set), settings.k_for(m), settings, m.num_classes, self.settings.bins)
