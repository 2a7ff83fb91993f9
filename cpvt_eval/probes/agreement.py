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

The native size is always a cell of the run (its agreement is 100 by definition) and is computed first: its
softmax is kept in memory for the other sizes and stored with its cell (``probs``, float32, images x classes), so a
resumed run reads it back instead of computing it again. Where the images have labels, top-1 and top-5 are
reported beside; on an unlabelled folder (``--data`` any folder of images) they are empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ResultsError
from ..results import ResultRow, format_ci, mean_interval
from .base import Probe, ReportSpec, column

if TYPE_CHECKING:
    import torch

    from ..engine import EvalModel, EvalSettings, PassInfo

__all__ = ["Agreement", "AgreementCell", "AgreementRow"]


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


@dataclass
class Reference:
    """A model's predictions at its native size, by position in the ImageSet: softmax (n, classes) and top-k."""

    size: int
    probs: torch.Tensor
    top: torch.Tensor


@dataclass
class AgreementCell:
    info: PassInfo
    reference_size: int
    correct1: int
    correct5: int
    indices: torch.Tensor
    labels: torch.Tensor
    topk: torch.Tensor  # (n, k) canonical class indices, best first
    agree: torch.Tensor  # (n,) bool
    kl: torch.Tensor  # (n,) float32, nats
    overlap: torch.Tensor  # (n,) int: the reference's top-k classes among this size's top-k
    probs: torch.Tensor | None  # the native cell's softmax (n, classes); None at other sizes

    @property
    def model(self) -> str:
        return self.info.model

    @property
    def size(self) -> int:
        return self.info.size


class AgreementCounter:
    """Per-image agreement of one model at one size with its reference (or, at the native size, the reference
    itself, recorded as it is computed)."""

    def __init__(self, k: int, n: int, num_classes: int, reference: Reference | None, native_size: int, keep):
        import torch

        self.k, self.reference, self.native_size, self.keep = k, reference, native_size, keep
        dtype = torch.int16 if num_classes <= 32767 else torch.int32
        self.topk = torch.empty((n, k), dtype=dtype)
        self.labels = torch.empty(n, dtype=torch.int64)
        self.indices = torch.empty(n, dtype=torch.int64)
        self.agree = torch.ones(n, dtype=torch.bool)
        self.kl = torch.zeros(n, dtype=torch.float32)
        self.overlap = torch.full((n,), k, dtype=torch.int64)
        self.probs = None
        self.correct1 = self.correct5 = 0

    def update(self, batch, view, x, runner) -> None:
        import torch

        logits = runner.logits(x)
        top = runner.canonical(logits.topk(self.k, dim=1).indices)
        logp = torch.log_softmax(logits, dim=1)
        at = batch.at
        if self.reference is None:  # the native size: the reference itself (agree, overlap k, KL 0)
            if self.probs is None:
                self.probs = torch.empty((self.topk.shape[0], logits.shape[1]), dtype=torch.float32)
            self.probs[at] = logp.exp().cpu()
        else:
            ref_p = self.reference.probs[batch.indices].to(logp.device)
            ref_top = self.reference.top[batch.indices].to(top.device)
            # xlogy: a class the reference gives probability 0 adds 0, as in the definition
            kl = (torch.special.xlogy(ref_p, ref_p) - ref_p * logp).sum(dim=1)
            self.kl[at] = kl.clamp_min(0.0).cpu()
            self.agree[at] = top[:, 0].eq(ref_top[:, 0]).cpu()
            self.overlap[at] = (top[:, :, None] == ref_top[:, None, :]).any(dim=2).sum(dim=1).cpu()
        hits = top.eq(batch.target_dev.view(-1, 1))
        self.correct1 += int(hits[:, 0].sum())
        self.correct5 += int(hits.any(dim=1).sum())
        self.topk[at] = top.to("cpu", self.topk.dtype)
        self.labels[at] = batch.target
        self.indices[at] = batch.indices

    def finish(self, info: PassInfo) -> AgreementCell:
        cell = AgreementCell(
            info=info,
            reference_size=self.native_size,
            correct1=self.correct1,
            correct5=self.correct5,
            indices=self.indices,
            labels=self.labels,
            topk=self.topk,
            agree=self.agree,
            kl=self.kl,
            overlap=self.overlap,
            probs=self.probs,
        )
        if self.reference is None:
            self.keep(cell)
        return cell


class Agreement(Probe):
    """Each model's agreement at each size with its own predictions at its native size."""

    name = "agreement"
    row_type = AgreementRow
    needs_labels = False
    report = ReportSpec(
        title="Agreement with the native size",
        cells_heading="95% interval, top-5 overlap, KL divergence, top-1 where labelled",
        stem="agreement",
        plot="agreement_vs_resolution.png",
        metric="agreement_top1",
        metric_title="Agreement",
        successes="n_agree",
        trials="n_images",
        units="images",
        paired=("agrees", 'exact McNemar test on "agrees with native" on the same images'),
        paired_reading="A small p says one model keeps its native-size decisions on these images more often than "
        "the other, beyond chance.",
        aside=("kl_native", "the mean KL divergence (nats) from the native size's softmax", ".3f"),
        plot_ylabel="agreement (% of images whose top-1 equals the native size's)",
        plot_title="Agreement with the native size vs resolution (bars: 95% Wilson interval)",
        console_title="agreement % with the native size (top-5 overlap % · KL nats)",
        tex_label="agreement-native",
    )

    def __init__(self):
        self.references: dict[str, Reference] = {}

    def identity(self) -> str:
        return "agreement:ref=native"

    def _sizes_of(self, m: EvalModel, sizes) -> list[int]:
        return sorted({*sizes, m.spec.native_size})

    def cells(self, models, sizes) -> list[tuple[str, int]]:
        return [(m.name, s) for m in models for s in self._sizes_of(m, sizes)]

    def plan(self, models, sizes, todo=None):
        """The native sizes first (the references every other size needs), then the run's sizes in order."""

        def due(m, s) -> bool:
            return todo is None or todo(m, s)

        natives: dict[int, list] = {}
        for m in models:
            others = any(due(m, s) for s in self._sizes_of(m, sizes) if s != m.spec.native_size)
            if due(m, m.spec.native_size) or (others and m.name not in self.references):
                natives.setdefault(m.spec.native_size, []).append(m)
        for size, group in sorted(natives.items()):
            yield size, group
        for size in sorted({s for m in models for s in self._sizes_of(m, sizes)}):
            yield size, [m for m in models if size in sizes and size != m.spec.native_size and due(m, size)]

    def resume(self, store, rows: list[ResultRow], models: list[EvalModel]) -> None:
        """Read back the references of the models whose native cell is stored (a resumed run)."""
        import torch

        native = {m.name: m.spec.native_size for m in models}
        for row in rows:
            if row.probe != self.identity() or native.get(row.model) != row.img_size or row.model in self.references:
                continue
            try:
                a = store.load_predictions(row, ("indices", "top5", "probs"))
            except ResultsError:
                continue  # computed again by the native pass
            order = np.argsort(a["indices"], kind="stable")
            self.references[row.model] = Reference(
                row.img_size, torch.from_numpy(a["probs"][order]), torch.from_numpy(a["top5"][order].astype(np.int64))
            )

    def accumulator(self, m: EvalModel, size: int, n: int, settings: EvalSettings) -> AgreementCounter:
        native = m.spec.native_size
        reference = None if size == native else self.references.get(m.name)
        if size != native and reference is None:
            raise ResultsError(f"{m.name}: no native-size ({native}px) reference to compare {size}px with")
        return AgreementCounter(settings.k_for(m), n, m.num_classes, reference, native, self._keep)

    def _keep(self, cell: AgreementCell) -> None:
        """Keep a native cell's predictions as its model's reference for the other sizes of the run."""
        order = cell.indices.argsort()
        self.references[cell.model] = Reference(cell.size, cell.probs[order], cell.topk[order].long())

    def counts(self, cell: AgreementCell) -> tuple[int, int, int]:
        return cell.correct1, cell.correct5, len(cell.indices)

    def columns(self, cell: AgreementCell, row: ResultRow, n_images: int) -> dict:
        n = len(cell.indices)
        agree = int(cell.agree.sum())
        share = (100.0 * cell.overlap.double() / cell.topk.shape[1]).tolist()
        kl = cell.kl.double().tolist()
        share_lo, share_hi = mean_interval(share)
        kl_lo, kl_hi = mean_interval(kl)
        out = dict(
            reference_size=cell.reference_size,
            agreement_top1=round(100.0 * agree / n, 4),
            agreement_ci95=format_ci(agree, n),
            n_agree=agree,
            top5_overlap=round(sum(share) / n, 4),
            top5_overlap_ci95=f"{share_lo:.2f}-{share_hi:.2f}",
            kl_native=round(sum(kl) / n, 6),
            kl_native_ci95=f"{max(0.0, kl_lo):.4f}-{kl_hi:.4f}",
        )
        if not bool((cell.labels >= 0).all()):  # no labels: no accuracy
            out.update(top1=None, top5=None, top1_ci95="")
        return out

    def arrays(self, cell: AgreementCell) -> dict:
        """Per-image predictions and agreement: index, label, top-5, agrees, KL, top-5 overlap; at the native size
        also the softmax (the reference a resumed run reads back)."""
        top5 = cell.topk.numpy()
        out = {
            "indices": cell.indices.numpy().astype(np.int32),
            "labels": cell.labels.numpy().astype(np.int32),
            "top5": top5 if top5.dtype == np.int16 else top5.astype(np.int32),
            "agree": cell.agree.numpy().astype(np.uint8),
            "kl": cell.kl.numpy().astype(np.float32),
            "overlap": cell.overlap.numpy().astype(np.uint8),
        }
        if cell.probs is not None:
            out["probs"] = cell.probs.numpy().astype(np.float32)
        return out

    def log_line(self, row: AgreementRow) -> str:
        top1 = f", top-1 {row.top1:.2f}%" if row.top1 is not None else ""
        return (
            f"{row.model} @ {row.img_size}px: agreement with {row.reference_size}px {row.agreement_top1:.2f}%, "
            f"top-5 overlap {row.top5_overlap:.2f}%, KL {row.kl_native:.4f}{top1} ({row.n_images} images)"
        )

    # -- reports ---------------------------------------------------------------------------------------------------

    def outcomes(self, store, row: AgreementRow):
        a = store.load_predictions(row, ("indices", "agree"))
        order = np.argsort(a["indices"], kind="stable")
        return a["indices"][order].astype(np.int64)[:, None], a["agree"][order].astype(bool)

    def md_extra(self) -> list[tuple[str, str, str]]:
        return [("top-1", "top1", ".2f"), ("images", "n_images", "d")]

    def caption_detail(self, rows: list[AgreementRow]) -> str:
        return f"share of images whose top-1 is the native size's; {max(r.n_images for r in rows)} images"

    def protocol_lines(self, rows: list[AgreementRow]) -> list[str]:
        def values(name: str) -> str:
            return ", ".join(f"`{v}`" for v in dict.fromkeys(str(getattr(r, name)) for r in rows))

        refs = ", ".join(dict.fromkeys(f"{r.model}: {r.reference_size}px" for r in rows))
        return [
            f"- eval transform: shorter side to floor(size / crop_pct), centre crop; crop_pct {values('crop_pct')}, "
            f"interpolation {values('interpolation')}, crop mode {values('crop_mode')}",
            f"- reference: each model's own predictions at its native size ({refs}), under the same transform",
            "- agreement: % of images whose top-1 equals the reference's; top-5 overlap: mean % of the reference's "
            "top-5 classes among the size's top-5; KL: mean KL(native || size) of the softmax, in nats",
        ]

    def console_cell(self, row: AgreementRow) -> str:
        return f"{row.agreement_top1:.2f}\n({row.top5_overlap:.1f} · {row.kl_native:.3f})"
