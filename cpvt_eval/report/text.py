"""Text formats of the stored rows: CSV, Markdown, LaTeX (booktabs) and JSON."""

from __future__ import annotations

import math

import pandas as pd

from ..errors import CpvtEvalError
from ..pe_families import family_title
from ..published import applies_to, published_for
from ..results import CSV_COLUMNS, ResultRow
from .plots import PLOT_THROUGHPUT, PLOT_TOP1
from .records import best_size_records, by_family, ordered, throughput_records, top1_records

FORMATS = ("md", "csv", "tex", "json", "png")
TITLE = "Resolution generalization without fine-tuning"


def parse_formats(text: str) -> tuple[str, ...]:
    """``md,csv,png`` -> ('md', 'csv', 'png'); an unknown format is a usage error."""
    chosen: list[str] = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        if part not in FORMATS:
            raise CpvtEvalError(f"unknown report format {part!r}; choose from {','.join(FORMATS)}")
        if part not in chosen:
            chosen.append(part)
    if not chosen:
        raise CpvtEvalError(f"--format is empty; choose from {','.join(FORMATS)}")
    return tuple(chosen)


_NULLABLE_INT = ("throughput_batch", "limit", "native_size")


def rows_frame(rows: list[ResultRow]) -> pd.DataFrame:
    """The rows as a frame, one column per ``ResultRow`` field. Text columns stay Python strings (``object``):
    pandas' Arrow-backed strings cannot hold a file name that is not UTF-8, which the CSV writes back as its bytes."""
    records = [{c: getattr(r, c) for c in CSV_COLUMNS} for r in ordered(rows)]
    columns = {}
    for c in CSV_COLUMNS:
        values = [d[c] for d in records]
        text = any(isinstance(v, str) for v in values)
        columns[c] = pd.Series(values, dtype=object) if text else pd.Series(values)
    df = pd.DataFrame(columns, columns=CSV_COLUMNS)
    for col in _NULLABLE_INT:
        df[col] = df[col].astype("Int64")
    return df


def to_csv(rows: list[ResultRow]) -> str:
    """The flat rows, one per cell, with the run conditions as columns, and the paper's top-1 for the cell (with
    its confidence grade and our difference to it) where the paper has one."""
    df = rows_frame(rows)
    published = [
        published_for(m).get(int(s)) if applies_to(space) else None
        for m, s, space in zip(df["model"], df["img_size"], df["label_space"].fillna(""), strict=True)
    ]
    df["published_top1"] = [None if p is None else p.top1 for p in published]
    df["published_confidence"] = [None if p is None else p.confidence for p in published]
    df["top1_vs_published"] = [
        None if p is None else round(t - p.top1, 4) for t, p in zip(df["top1"], published, strict=True)
    ]
    # the crop ratio of the paper's protocol, where it names one (RoPE-ViT: 1.0, not this tool's 0.875)
    df["published_crop_pct"] = [None if p is None else p.crop_pct for p in published]
    return df.to_csv(index=False, float_format="%.4f", lineterminator="\n")


def md_table(header: list[str], body: list[list[str]], align_right_from: int = 1) -> str:
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join("---" if i < align_right_from else "---:" for i in range(len(header))) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def fmt_value(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, spec)


def pivot(records: list[dict], value: str) -> tuple[list[str], list[int], dict[tuple[str, int], object]]:
    labels = list(dict.fromkeys(r["label"] for r in records))
    sizes = sorted({r["img_size"] for r in records})
    return labels, sizes, {(r["label"], r["img_size"]): r[value] for r in records}


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
    rounds = sorted({r.extra.get("throughput_repeats") for r in rows if r.images_per_sec is not None} - {None})
    if not any(r.extra.get("throughput_interleaved") for r in rows):  # rows written before interleaved rounds
        return ", median of timed runs after warm-up"
    budgets = sorted({r.extra.get("throughput_budget_s") for r in rows} - {None})
    return (
        ", median of the timed rounds after warm-up (the models of a size interleaved, one forward each per round), "
        + ("rounds " + ", ".join(str(n) for n in rounds) if rounds else "")
        + (" (budget " + ", ".join(f"{b:g}" for b in budgets) + " s per model)" if budgets else "")
    )


# What each crop mode does (timm's names, and full), as the conditions line of a report says it.
CROP_MODE_TEXT = (
    "squash: both sides to floor(size / crop_pct), centre crop; border: longer side to floor(size / crop_pct), "
    "padded with the mean colour; full: the whole image to size x size, crop_pct unused"
)


def _conditions(rows: list[ResultRow], provenance: dict | None) -> list[str]:
    def values(name: str) -> str:
        return ", ".join(f"`{v}`" for v in dict.fromkeys(str(getattr(r, name)) for r in rows))

    datasets = dict.fromkeys((r.dataset, r.n_images, r.dataset_fingerprint) for r in rows)
    lines = [
        "- dataset: "
        + "; ".join(f"`{d}` ({n} images, fingerprint `{fp}`)" for d, n, fp in datasets)
        + (" — **partial** (not the full 50,000-image validation set)" if any(r.partial for r in rows) else ""),
        *([f"- test set: {values('test_set')}"] if any(r.test_set for r in rows) else []),
        *(
            [f"- label subset: {values('label_subset')} (the argmax is taken over the subset's classes only)"]
            if any(r.label_subset for r in rows)
            else []
        ),
        f"- eval transform: shorter side to floor(size / crop_pct), centre crop; crop_pct {values('crop_pct')}, "
        f"interpolation {values('interpolation')}"
        + (
            f"; crop mode {values('crop_mode')} ({CROP_MODE_TEXT})"
            if any(r.crop_mode != "center" for r in rows)
            else ""
        ),
        "- normalisation (the weights' own data config): "
        + ", ".join(
            dict.fromkeys(
                f"{r.model}: mean {r.mean or '?'}, std {r.std or '?'}"
                + (f" (from `{r.data_config_source}`)" if r.data_config_source else "")
                for r in ordered(rows)
            )
        ),
        "- PE policy: " + ", ".join(dict.fromkeys(f"{r.model} {r.img_size}px: {r.pe_policy}" for r in ordered(rows))),
        f"- dtype {values('dtype')}, device {values('device')}",
    ]
    batches = {r.throughput_batch for r in rows if r.images_per_sec is not None}
    if batches:
        lines.append(
            "- throughput: batch " + ", ".join(str(b) for b in sorted(batches)) + _rounds_text(rows) + ", synthetic "
            "input, model only"
        )
    lines.append(f"- versions: {values('versions')}")
    if provenance:
        lines.append(provenance_line(provenance))
    return lines


def provenance_line(provenance: dict) -> str:
    """The Conditions line of the last run that wrote the directory."""
    return (
        f"- last run: `{provenance.get('command', '')}` on {provenance.get('device_name', '')} "
        f"({provenance.get('threads', '')} threads), git `{provenance.get('git_sha') or 'none'}`, "
        f"seed {provenance.get('seed')}, {provenance.get('started_at')} – {provenance.get('finished_at')} "
        f"({provenance.get('status')})"
    )


def markdown_report(
    rows: list[ResultRow],
    title: str = TITLE,
    pairs: list[dict] | None = None,
    plots: tuple[str, ...] = (),
    provenance: dict | None = None,
) -> str:
    """Top-1 by size (pivot, then with intervals and changes), throughput, paired tests, plots, conditions."""
    if not rows:
        return f"# {title}\n\nNo finished cells yet.\n"
    records = top1_records(rows)
    pe = {r["label"]: r["pe"] for r in records}
    labels, sizes, top1 = pivot(records, "top1")
    out = [f"# {title}", "", "## Top-1 accuracy (%)", ""]
    # one table, grouped by PE family: APE, PEG, RoPE, relative bias, convolution, none
    body = [
        [family_title(pe[lab]), lab, pe[lab]] + [fmt_value(top1.get((lab, s)), ".2f") for s in sizes]
        for lab in by_family(labels, pe)
    ]
    out += [md_table(["PE family", "model", "PE"] + [f"{s}px" for s in sizes], body, align_right_from=3), ""]

    out += ["## Top-1 by size: 95% interval, change from native size and from the paper", ""]
    body = [
        [
            r["label"],
            f"{r['img_size']}px",
            fmt_value(r["top1"], ".2f"),
            f"{fmt_value(r['top1_ci95_low'], '.2f')}–{fmt_value(r['top1_ci95_high'], '.2f')}",
            "native" if r["img_size"] == r["native_size"] else fmt_value(r["delta_native"], "+.2f"),
            fmt_value(r["published_top1"], ".1f")
            + (f" (crop {float(r['published_crop_pct'])})" if r["published_crop_pct"] is not None else ""),
            fmt_value(r["delta_published"], "+.2f"),
            r["published_confidence"] or "–",
            str(r["n_images"]),
        ]
        for r in records
    ]
    header = ["model", "size", "top-1", "95% CI (Wilson)", "Δ native", "paper", "Δ paper", "confidence", "images"]
    out += [md_table(header, body, align_right_from=2), ""]
    out += [
        "Δ native: points from the same model at its training size. Δ paper: points from the published top-1; "
        "confidence `primary` is the paper's own table, `secondary-xN` N transcriptions that agree; `secondary`, "
        "`quoted` and `approximate` rest on a single reading.",
        "",
    ]
    crops = sorted({r["published_crop_pct"] for r in records if r["published_crop_pct"] is not None})
    if crops:
        run_crops = ", ".join(dict.fromkeys(str(r.crop_pct) for r in rows))
        out += [
            f"Paper figures marked (crop {', '.join(str(float(c)) for c in crops)}) were measured at that crop "
            f"ratio; this table's images were cropped at {run_crops} (`--crop-pct`).",
            "",
        ]

    out += best_size_section(records)

    tp = throughput_records(rows)
    if tp:
        t_labels, t_sizes, ips = pivot(tp, "images_per_sec")
        _, _, gflops = pivot(tp, "gflops_per_image")
        out += ["## Throughput (images/s, model only)", ""]
        body = [[lab] + [fmt_value(ips.get((lab, s)), ",.1f") for s in t_sizes] for lab in t_labels]
        out += [md_table(["model"] + [f"{s}px" for s in t_sizes], body), ""]
        out += _ratio_table(tp, t_labels, t_sizes)
        if any(v is not None for v in gflops.values()):
            out += ["GFLOPs per image (attention included):", ""]
            body = [[lab] + [fmt_value(gflops.get((lab, s)), ".3f") for s in t_sizes] for lab in t_labels]
            out += [md_table(["model"] + [f"{s}px" for s in t_sizes], body), ""]

    if pairs:
        out += paired_section(
            pairs,
            "exact McNemar test on the same images",
            ("top1", "top-1"),
            ("correct", "right"),
            "A small p says the two models' difference on these images is unlikely to be chance.",
        )

    if plots:
        out += ["## Plots", ""]
        names = {PLOT_TOP1: "Top-1 vs resolution", PLOT_THROUGHPUT: "Images/s vs resolution"}
        out += [f"![{names.get(p, p)}]({p})" for p in plots] + [""]

    out += real_section(rows)
    out += ["## Conditions", ""] + _conditions(rows, provenance) + data_conditions(rows) + [""]
    return "\n".join(out)


def best_size_section(records: list[dict]) -> list[str]:
    """The best test size of each model evaluated at several sizes, and the sizes it cannot be told from."""
    best = best_size_records(records)
    if not best:
        return []
    body = [
        [
            b["label"],
            f"{b['best_size']}px" + (" (native)" if b["best_size"] == b["native_size"] else ""),
            fmt_value(b["top1"], ".2f"),
            f"{fmt_value(b['top1_ci95_low'], '.2f')}–{fmt_value(b['top1_ci95_high'], '.2f')}",
            ", ".join(f"{s}px" for s in b["tied_sizes"]) or "none",
            f"{len(b['sizes'])} ({b['sizes'][0]}–{b['sizes'][-1]}px)",
        ]
        for b in best
    ]
    header = ["model", "best size", "top-1", "95% CI (Wilson)", "tied (intervals overlap)", "sizes"]
    return [
        "## Best test size (without fine-tuning)",
        "",
        md_table(header, body, align_right_from=2),
        "",
        "Tied: sizes whose 95% interval overlaps the best one's; on these images they are not told apart.",
        "",
    ]


def paired_section(
    pairs: list[dict], test: str, value: tuple[str, str], only: tuple[str, str], reading: str
) -> list[str]:
    """Markdown: the paired comparisons of two models at each size. ``value`` is ``(key, title)`` of the compared
    figure (``top1_a``/``top1_b`` in a pair record), ``only`` of the discordant counts (``only_a_correct``...)."""
    (key, title), (only_key, only_title) = value, only
    body = [
        [
            f"{p['img_size']}px",
            p["a"],
            p["b"],
            fmt_value(p[f"{key}_a"], ".2f"),
            fmt_value(p[f"{key}_b"], ".2f"),
            fmt_value(p["delta"], "+.2f"),
            str(p[f"only_a_{only_key}"]),
            str(p[f"only_b_{only_key}"]),
            fmt_value(p["p_value"], ".4f"),
        ]
        for p in pairs
    ]
    header = ["size", "A", "B", f"{title} A", f"{title} B", "Δ (A−B)", f"only A {only_title}", f"only B {only_title}"]
    return [f"## Paired differences ({test})", "", md_table(header + ["p"], body, align_right_from=3), "", reading, ""]


def data_conditions(rows: list[ResultRow]) -> list[str]:
    """Markdown lines on how the data was read: layout and labels, skipped bad files, draft decoding."""
    first = rows[0]
    out = []
    if first.layout:
        out.append(
            f"- layout `{first.layout}`" + (f", labels from `{first.label_source}`" if first.label_source else "")
        )
    spaces = list(dict.fromkeys(r.label_space for r in rows if r.label_space))
    if spaces:
        # the classes the labels and outputs index; published figures are ImageNet-1k's and shown only there
        out.append("- label space " + ", ".join(f"`{s}`" for s in spaces))
    if first.n_skipped:
        out.append(f"- {first.n_skipped} bad image(s) skipped (listed in skipped.tsv): `{first.skipped_files}`")
    if any(r.decode_draft for r in rows):
        out.append("- JPEGs decoded with PIL draft() (reduced DCT scale): pixels differ from a full decode")
    return out


def real_section(rows: list[ResultRow]) -> list[str]:
    """ImageNet-ReaL top-1 by size, when the run asked for it."""
    real = {(r.model, r.img_size): r.real_top1 for r in rows}
    if all(v is None for v in real.values()):
        return []
    models = list(dict.fromkeys(r.model for r in rows))
    sizes = sorted({r.img_size for r in rows})
    body = [[m] + [fmt_value(real.get((m, s)), ".2f") for s in sizes] for m in models]
    first = rows[0]
    return [
        "## ImageNet-ReaL top-1 (%)",
        "",
        md_table(["model"] + [f"{s}px" for s in sizes], body),
        "",
        f"Images without a ReaL label are left out: {first.real_excluded} of {first.n_images}.",
        "",
    ]


_TEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def tex_escape(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in str(text))


def tex_tabular(header: list[str], body: list[list[str]], n_left: int) -> list[str]:
    spec = "l" * n_left + "r" * (len(header) - n_left)
    return [
        rf"  \begin{{tabular}}{{{spec}}}",
        r"    \toprule",
        "    " + " & ".join(header) + r" \\",
        r"    \midrule",
        *("    " + " & ".join(row) + r" \\" for row in body),
        r"    \bottomrule",
        r"  \end{tabular}",
    ]


def latex_report(rows: list[ResultRow], title: str = TITLE) -> str:
    """Booktabs tables: top-1 by size (with the change from the native size) and images/s by size."""
    lines = [r"% Generated by cpvt-eval report; needs \usepackage{booktabs}."]
    if not rows:
        return "\n".join(lines + ["% no finished cells"]) + "\n"
    records = top1_records(rows)
    pe = {r["label"]: r["pe"] for r in records}
    labels, sizes, _ = pivot(records, "top1")
    cells = {(r["label"], r["img_size"]): r for r in records}

    def top1_cell(label: str, size: int) -> str:
        r = cells.get((label, size))
        if r is None:
            return "--"
        text = f"{r['top1']:.2f}"
        if r["delta_native"] is not None and r["img_size"] != r["native_size"]:
            text += f" ({r['delta_native']:+.2f})"
        return text

    body = [
        [tex_escape(family_title(pe[lab])), tex_escape(lab), tex_escape(pe[lab])] + [top1_cell(lab, s) for s in sizes]
        for lab in by_family(labels, pe)
    ]
    n = max(r["n_images"] for r in records)
    lines += [
        r"\begin{table}[t]",
        r"  \centering",
        rf"  \caption{{{tex_escape(title)}: top-1 accuracy (\%) by input size on {n} images; in parentheses the "
        r"change in points from the model's training size.}",
        r"  \label{tab:resolution-top1}",
        *tex_tabular(["PE family", "Model", "PE"] + [f"{s}px" for s in sizes], body, 3),
        r"\end{table}",
    ]
    tp = throughput_records(rows)
    if tp:
        t_labels, t_sizes, ips = pivot(tp, "images_per_sec")
        body = [
            [tex_escape(lab)] + [fmt_value(ips.get((lab, s)), ".1f").replace("–", "--") for s in t_sizes]
            for lab in t_labels
        ]
        devices = ", ".join(dict.fromkeys(tex_escape(r["device"]) for r in tp))
        lines += [
            "",
            r"\begin{table}[t]",
            r"  \centering",
            rf"  \caption{{Model-only throughput (images/s) by input size on {devices}.}}",
            r"  \label{tab:resolution-throughput}",
            *tex_tabular(["Model"] + [f"{s}px" for s in t_sizes], body, 1),
            r"\end{table}",
        ]
    return "\n".join(lines) + "\n"


def json_report(rows: list[ResultRow], pairs: list[dict] | None = None, provenance: dict | None = None) -> dict:
    """Everything the other formats show, as one JSON document."""
    doc = {
        "schema": "cpvt-eval/report-1",
        "rows": [r.to_dict() for r in ordered(rows)],
        "top1": top1_records(rows),
        "throughput": throughput_records(rows),
    }
    doc["best_size"] = best_size_records(doc["top1"])
    if pairs is not None:
        doc["pairs"] = pairs
    if provenance is not None:
        doc["provenance"] = provenance
    return doc
