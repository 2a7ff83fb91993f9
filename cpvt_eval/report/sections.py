"""The further sections a probe's report may declare (``ReportSpec.sections``), each in every format it has:

* ``best_size``: the best test size of each model and the sizes it cannot be told from (Markdown, JSON);
* ``throughput``: the model-only images/s of the cells a probe timed (``Probe.timing``), with the ratios of the
  interleaved rounds and GFLOPs (Markdown, LaTeX, JSON, a plot, a Conditions line);
* a ``Pivot``: one more column by size (Markdown), e.g. ImageNet-ReaL top-1.
"""

from __future__ import annotations

from ..probes.presentation import Pivot, ReportSpec, fmt_value
from ..results import ResultRow
from .plots import PLOT_THROUGHPUT, plot_throughput
from .records import best_size_records, throughput_records
from .tables import md_table, pivot, tex_escape, tex_table, tex_tabular


class Section:
    """A section in every format: nothing by default."""

    placed_after_plots = False

    def md(self, spec: ReportSpec, records: list[dict], rows: list[ResultRow]) -> list[str]:
        return []

    def tex(self, rows: list[ResultRow]) -> list[str]:
        return []

    def json(self, spec: ReportSpec, records: list[dict], rows: list[ResultRow]) -> dict:
        return {}

    def png(self, rows: list[ResultRow]) -> dict[str, bytes]:
        return {}

    def plot_names(self) -> dict[str, str]:
        return {}

    def conditions(self, rows: list[ResultRow]) -> list[str]:
        return []


class BestSize(Section):
    def md(self, spec, records, rows):
        metric = spec.metric.column
        best = best_size_records(records, metric)
        if not best:
            return []
        body = [
            [
                b["label"],
                f"{b['best_size']}px" + (" (native)" if b["best_size"] == b["native_size"] else ""),
                fmt_value(b[metric], ".2f"),
                f"{fmt_value(b[f'{metric}_ci95_low'], '.2f')}–{fmt_value(b[f'{metric}_ci95_high'], '.2f')}",
                ", ".join(f"{s}px" for s in b["tied_sizes"]) or "none",
                f"{len(b['sizes'])} ({b['sizes'][0]}–{b['sizes'][-1]}px)",
            ]
            for b in best
        ]
        metric_header = [spec.metric.name.lower(), spec.metric.ci_title]
        header = ["model", "best size", *metric_header, "tied (intervals overlap)", "sizes"]
        return [
            "## Best test size (without fine-tuning)",
            "",
            md_table(header, body, align_right_from=2),
            "",
            "Tied: sizes whose 95% interval overlaps the best one's; on these images they are not told apart.",
            "",
        ]

    def json(self, spec, records, rows):
        return {"best_size": best_size_records(records, spec.metric.column)}


def _ratio_cell(r: dict | None) -> str:
    if r is None or r["ratio"] is None:
        return "–"
    if r["ratio_reference"] == r["model"]:
        return "1 (ref.)"
    noise = "~" if r["ratio_q1"] <= 1 <= r["ratio_q3"] else ""
    return f"{r['ratio']:.3f} [{r['ratio_q1']:.2f}–{r['ratio_q3']:.2f}]{noise}"


def _ratio_table(tp: list[dict], labels: list[str], sizes: list[int]) -> list[str]:
    """Images/s relative to the first model timed in the same rounds, when there is more than one model."""
    with_ratio = [r for r in tp if r["ratio"] is not None]
    if len({r["model"] for r in with_ratio}) < 2:
        return []
    by_cell = {(r["label"], r["img_size"]): r for r in with_ratio}
    refs = ", ".join(f"`{m}`" for m in dict.fromkeys(r["ratio_reference"] for r in with_ratio))
    body = [[lab] + [_ratio_cell(by_cell.get((lab, s))) for s in sizes] for lab in labels]
    return [
        f"Images/s relative to {refs}, timed in the same interleaved rounds: median of the per-round ratios "
        "[interquartile range]; ~ marks a ratio whose range holds 1 (equal within noise).",
        "",
        md_table(["model"] + [f"{s}px" for s in sizes], body),
        "",
    ]


def _rounds_text(rows: list[ResultRow]) -> str:
    timed = [r for r in rows if getattr(r, "images_per_sec", None) is not None]
    rounds = sorted({r.extra.get("throughput_repeats") for r in timed} - {None})
    if not any(r.extra.get("throughput_interleaved") for r in rows):  # rows written before interleaved rounds
        return ", median of timed runs after warm-up"
    budgets = sorted({r.extra.get("throughput_budget_s") for r in rows} - {None})
    return (
        ", median of the timed rounds after warm-up (the models of a size interleaved, one forward each per round), "
        + ("rounds " + ", ".join(str(n) for n in rounds) if rounds else "")
        + (" (budget " + ", ".join(f"{b:g}" for b in budgets) + " s per model)" if budgets else "")
    )


class Throughput(Section):
    def md(self, spec, records, rows):
        tp = throughput_records(rows)
        if not tp:
            return []
        labels, sizes, ips = pivot(tp, "images_per_sec")
        _, _, gflops = pivot(tp, "gflops_per_image")
        out = ["## Throughput (images/s, model only)", ""]
        body = [[lab] + [fmt_value(ips.get((lab, s)), ",.1f") for s in sizes] for lab in labels]
        out += [md_table(["model"] + [f"{s}px" for s in sizes], body), ""]
        out += _ratio_table(tp, labels, sizes)
        if any(v is not None for v in gflops.values()):
            out += ["GFLOPs per image (attention included):", ""]
            body = [[lab] + [fmt_value(gflops.get((lab, s)), ".3f") for s in sizes] for lab in labels]
            out += [md_table(["model"] + [f"{s}px" for s in sizes], body), ""]
        return out

    def tex(self, rows):
        tp = throughput_records(rows)
        if not tp:
            return []
        labels, sizes, ips = pivot(tp, "images_per_sec")
        body = [
            [tex_escape(lab)] + [fmt_value(ips.get((lab, s)), ".1f").replace("–", "--") for s in sizes]
            for lab in labels
        ]
        devices = ", ".join(dict.fromkeys(tex_escape(r["device"]) for r in tp))
        caption = f"Model-only throughput (images/s) by input size on {devices}."
        tabular = tex_tabular(["Model"] + [f"{s}px" for s in sizes], body, 1)
        return ["", *tex_table(caption, "resolution-throughput", tabular)]

    def json(self, spec, records, rows):
        return {"throughput": throughput_records(rows)}

    def png(self, rows):
        data = plot_throughput(rows)
        return {} if data is None else {PLOT_THROUGHPUT: data}

    def plot_names(self):
        return {PLOT_THROUGHPUT: "Images/s vs resolution"}

    def conditions(self, rows):
        batches = {r.throughput_batch for r in rows if getattr(r, "images_per_sec", None) is not None}
        if not batches:
            return []
        return [
            "- throughput: batch "
            + ", ".join(str(b) for b in sorted(batches))
            + _rounds_text(rows)
            + ", synthetic input, model only"
        ]


class PivotSection(Section):
    placed_after_plots = True

    def __init__(self, spec: Pivot):
        self.spec = spec

    def md(self, spec, records, rows):
        values = {(r.model, r.img_size): getattr(r, self.spec.column, None) for r in rows}
        if all(v is None for v in values.values()):
            return []
        models = list(dict.fromkeys(r.model for r in rows))
        sizes = sorted({r.img_size for r in rows})
        body = [[m] + [fmt_value(values.get((m, s)), ".2f") for s in sizes] for m in models]
        note = self.spec.note(rows)
        return [f"## {self.spec.title}", "", md_table(["model"] + [f"{s}px" for s in sizes], body), ""] + (
            [note, ""] if note else []
        )


_NAMED = {"best_size": BestSize, "throughput": Throughput}


def sections_of(declared) -> list[Section]:
    """The sections a ``ReportSpec`` declares, as objects."""
    return [PivotSection(s) if isinstance(s, Pivot) else _NAMED[s]() for s in declared]
