"""Agreement across sizes (``cpvt-eval agreement``): how a model's decisions move with the input size, on any
images, labelled or not.

The reference of each model is its own prediction at its native (training) size, under the same eval transform
(each size's crop ratio, interpolation and normalisation are the run's, as in ``resolution``). At every size of the
run, per image:

* ``agree``: the top-1 equals the reference's top-1; ``agreement_top1`` is their share (percent), with its Wilson
  interval, and paired between models by an exact McNemar test on "agrees with native";
* ``kl``: the KL divergence KL(native || size) of the two softmax distributions, in nats (over the label subset's
  classes when there is one); ``kl_native`` is the mean;
* ``overlap``: how many of the reference's top-5 classes are among this size's top-5; ``top5_overlap`` is the
  mean share (percent).

The native size is always a cell of the run (its agreement is 100 by definition) and is computed first
(``Probe.reference``): its softmax is stored with its cell (``probs``, float32, images x classes) and read from
there by the other sizes, in this run or a resumed one. Where the images have labels, top-1 and top-5 are
reported beside; on an unlabelled folder (``--data`` any folder of images) they are empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ResultsError
from ..results import ResultRow, format_ci, mean_interval
from .base import Accumulator, Probe, ProbeSettings, column, option, per_image
from .presentation import Cells, Metric, Pairs, Plot, ReportSpec, Tex, Usage, eval_transform_line, fmt_value

if TYPE_CHECKING:
    from ..data import ImageSet
    from ..engine import EvalModel, EvalSettings

__all__ = ["Agreement", "AgreementRow"]


@dataclass(frozen=True)
class AgreementSettings(ProbeSettings):
    ref: str = option("native", None, identity="ref")  # the reference: each model's own native size


@dataclass
class AgreementRow(ResultRow):
    """An agreement cell's row: the accuracy columns are empty (None) when the images have no labels."""

    reference_size: int | None = column("native", "d")
    agreement_top1: float | None = column("agreement", ".2f")
    agreement_ci95: str = column(default="")
    n_agree: int | None = column()
    top5_overlap: float | None = column("top-5 overlap", ".2f")
    top5_overlap_ci95: str = column(default="")  # normal approximation of the mean (not a proportion of trials)
    kl_native: float | None = column("KL (nats)", ".4f")
    kl_native_ci95: str = column(default="")


class AgreementCounter(Accumulator):
    """Per-image agreement of one model at one size with its reference (the native cell's softmax and top-k, by
    image position), or, at the native size, the reference itself (agree, overlap k, KL 0)."""

    def __init__(self, k: int, n: int, settings, num_classes: int, reference: dict | None, native_size: int):
        import torch

        super().__init__(n, k, num_classes)
        self.reference, self.native_size = reference, native_size
        self.records["agree"] = torch.ones(n, dtype=torch.bool)
        self.records["kl"] = torch.zeros(n, dtype=torch.float32)
        self.records["overlap"] = torch.full((n,), k, dtype=torch.uint8)
        if reference is None:  # the native size: its softmax is the reference (off the heap when large)
            columns = len(settings.classes) or num_classes
            self.records["probs"] = per_image((n, columns), torch.float32, settings.scratch)

    def update(self, batch, view, out) -> None:
        import torch

        top = self.core.record(batch.at, batch, out)
        logp = out.log_probs()
        at = batch.at
        if self.reference is None:  # the native size: the reference itself
            self.records["probs"][at] = logp.exp().cpu()
            return
        rows = batch.indices.numpy()
        ref_p = torch.from_numpy(self.reference["probs"][rows]).to(logp.device)
        ref_top = torch.from_numpy(self.reference["top5"][rows].astype("int64")).to(top.device)
        # xlogy: a class the reference gives probability 0 adds 0, as in the definition
        kl = (torch.special.xlogy(ref_p, ref_p) - ref_p * logp).sum(dim=1)
        self.records["kl"][at] = kl.clamp_min(0.0).cpu()
        self.records["agree"][at] = top[:, 0].eq(ref_top[:, 0]).cpu()
        self.records["overlap"][at] = (top[:, :, None] == ref_top[:, None, :]).any(dim=2).sum(dim=1).cpu()

    def columns(self) -> dict:
        agree_t, overlap, kl_t = self.records["agree"], self.records["overlap"], self.records["kl"]
        n = len(agree_t)
        agree = int(agree_t.sum())
        share = (100.0 * overlap.double() / self.core.k).tolist()
        kl = kl_t.double().tolist()
        share_lo, share_hi = mean_interval(share)
        kl_lo, kl_hi = mean_interval(kl)
        return dict(
            reference_size=self.native_size,
            agreement_top1=round(100.0 * agree / n, 4),
            agreement_ci95=format_ci(agree, n),
            n_agree=agree,
            top5_overlap=round(sum(share) / n, 4),
            top5_overlap_ci95=f"{share_lo:.2f}-{share_hi:.2f}",
            kl_native=round(sum(kl) / n, 6),
            kl_native_ci95=f"{max(0.0, kl_lo):.4f}-{kl_hi:.4f}",
        )


def _conditions(rows: list[AgreementRow]) -> list[str]:
    refs = ", ".join(dict.fromkeys(f"{r.model}: {r.reference_size}px" for r in rows))
    return [
        eval_transform_line(rows),
        f"- reference: each model's own predictions at its native size ({refs}), under the same transform",
        "- agreement: % of images whose top-1 equals the reference's; top-5 overlap: mean % of the reference's "
        "top-5 classes among the size's top-5; KL: mean KL(native || size) of the softmax, in nats",
    ]


class Agreement(Probe):
    """How often each model's top-1 at each size equals its own top-1 at its native size, on any images.

    The reference is the model's prediction at its training size (always computed, once per model, first). Per size:
    agreement (% of images whose top-1 is the native one, Wilson interval), top-5 overlap with the native top-5, and
    the mean KL divergence from the native softmax; where the images have labels, top-1 and top-5 beside. --data may
    be any folder of images without labels. Writes rows.jsonl, per-image agreement, provenance.json and
    agreement.md/.csv/.tex/.json and agreement_vs_resolution.png (exact McNemar tests between models on "agrees with
    native") to the run directory; rerunning resumes, Ctrl-C stops with exit code 130 and keeps finished cells.
    """

    name = "agreement"
    Settings = AgreementSettings
    needs_labels = False
    reference = True
    row_type = AgreementRow
    report = ReportSpec(
        title="Agreement with the native size",
        stem="agreement",
        metric=Metric(
            "agreement_top1",
            "Agreement",
            successes="n_agree",
            trials="n_images",
            console=(
                "agreement % with the native size (top-5 overlap % · KL nats)",
                lambda r: f"{r.agreement_top1:.2f}\n({r.top5_overlap:.1f} · {r.kl_native:.3f})",
            ),
        ),
        cells=Cells(
            heading="95% interval, top-5 overlap, KL divergence, top-1 where labelled",
            extra=(("top-1", "top1", ".2f"), ("images", "n_images", "d")),
        ),
        pairs=Pairs(
            "agrees",
            "agrees",
            "images",
            'exact McNemar test on "agrees with native" on the same images',
            "A small p says one model keeps its native-size decisions on these images more often than the other, "
            "beyond chance.",
        ),
        plot=Plot(
            "agreement_vs_resolution.png",
            "agreement (% of images whose top-1 equals the native size's)",
            "Agreement with the native size vs resolution (bars: 95% Wilson interval)",
        ),
        tex=Tex(
            "agreement-native",
            lambda rows, records: (
                "Agreement with the native size: agreement (%, share of images whose top-1 is the "
                f"native size's; {max(r.n_images for r in rows)} images) by input size; in parentheses the mean KL "
                "divergence (nats) from the native size's softmax."
            ),
            lambda r: f" ({fmt_value(r['kl_native'], '.3f')})",
        ),
        conditions=_conditions,
        usage=Usage(
            example="cpvt-eval agreement -m cpvt_ti -m deit_ti --sizes 224:512:32 --data ~/photos/field-survey "
            "--checkpoint cpvt_ti=cpvt_ti.pth --out runs/agreement   (any folder of images, nested or flat: no "
            "labels needed; on ImageNet val, top-1 is reported beside)"
        ),
    )

    def accumulator(
        self, m: EvalModel, size: int, image_set: ImageSet, settings: EvalSettings, reference: dict | None = None
    ) -> AgreementCounter:
        native = m.spec.native_size
        if size != native and reference is None:
            raise ResultsError(f"{m.name}: no native-size ({native}px) reference to compare {size}px with")
        ref = None if size == native else reference
        return AgreementCounter(settings.k_for(m), len(image_set), settings, m.num_classes, ref, native)

    def outcomes(self, store, row: AgreementRow):
        import numpy as np

        a = store.load_predictions(row, ("indices", "agree"))
        order = np.argsort(a["indices"], kind="stable")
        return a["indices"][order].astype(np.int64)[:, None], a["agree"][order].astype(bool)
