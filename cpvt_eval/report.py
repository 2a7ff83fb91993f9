"""Reports from stored result rows: Markdown, CSV, LaTeX (booktabs), JSON and plots; run comparison for CI.

Everything here re-renders from what the run directory holds (rows and per-image predictions): nothing is
recomputed. No torch, no rich: pandas for the published numbers, numpy for predictions, matplotlib for plots.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

import pandas as pd

from .errors import CpvtEvalError, ResultsError
from .results import (
    CSV_COLUMNS,
    ResultRow,
    RunStore,
    atomic_write_bytes,
    atomic_write_text,
    mcnemar_exact,
    row_key,
    wilson_interval,
)

FORMATS = ("md", "csv", "tex", "json", "png")
PLOT_TOP1 = "top1_vs_resolution.png"
PLOT_THROUGHPUT = "throughput_vs_resolution.png"
TITLE = "Resolution generalization without fine-tuning"

# Fields that may tell two rows of the same model apart in one run directory; the ones that differ go into labels.
_VARIANT_FIELDS = (
    ("checkpoint_sha256", "ckpt"),
    ("crop_pct", "crop"),
    ("interpolation", "interp"),
    ("pe_options", "pe"),
    ("dtype", "dtype"),
    ("model_args", "args"),
    ("dataset_fingerprint", "data"),
    ("limit", "limit"),
)


@lru_cache(maxsize=1)
def published_results() -> pd.DataFrame:
    """The paper's numbers shipped with the package: model, img_size, top1, confidence, source."""
    text = resources.files("cpvt_eval.resources").joinpath("published_results.csv").read_text()
    return pd.read_csv(io.StringIO(text))


def published_top1(model: str, size: int) -> tuple[float, str] | None:
    df = published_results()
    hit = df[(df["model"] == model) & (df["img_size"] == size)]
    if hit.empty:
        return None
    return float(hit.iloc[0]["top1"]), str(hit.iloc[0]["confidence"])


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


# ---------------------------------------------------------------------------------------------------- tables


def row_labels(rows: list[ResultRow]) -> dict[str, str]:
    """Row key -> display label: the model name, plus the conditions that tell a model's rows apart when the run
    directory holds the same model under several (checkpoint, crop, dtype, ...)."""
    by_model: dict[str, list[ResultRow]] = {}
    for r in rows:
        by_model.setdefault(r.model, []).append(r)
    varying_of = {
        model: [(f, short) for f, short in _VARIANT_FIELDS if len({str(getattr(r, f)) for r in group}) > 1]
        for model, group in by_model.items()
    }
    labels = {}
    for r in rows:
        varying = varying_of[r.model]
        parts = []
        for f, short in varying:
            value = getattr(r, f)
            if f in ("checkpoint_sha256", "dataset_fingerprint"):
                value = str(value)[:8]
            parts.append(f"{short}={value}")
        labels[row_key(r)] = r.model + (f" [{', '.join(parts)}]" if parts else "")
    return labels


def ordered(rows: list[ResultRow]) -> list[ResultRow]:
    """Rows grouped by label in order of first appearance, sizes ascending within a label."""
    labels = row_labels(rows)
    first = {lab: i for i, lab in reversed(list(enumerate(labels[row_key(r)] for r in rows)))}
    return sorted(rows, key=lambda r: (first[labels[row_key(r)]], r.img_size))


def _r(value: float | None, digits: int = 4) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return round(float(value), digits)


def top1_records(rows: list[ResultRow]) -> list[dict]:
    """One record per cell: top-1 with its Wilson 95% interval, the change from the model's native size and
    from the published number (with its confidence grade)."""
    labels = row_labels(rows)
    by_cell = {(labels[row_key(r)], r.img_size): r for r in rows}
    out = []
    for r in ordered(rows):
        label = labels[row_key(r)]
        lo, hi = wilson_interval(r.correct1, r.n_images)
        native = by_cell.get((label, r.native_size)) if r.native_size else None
        pub = published_top1(r.model, r.img_size)
        out.append(
            {
                "label": label,
                "model": r.model,
                "pe": r.pe,
                "img_size": r.img_size,
                "n_images": r.n_images,
                "correct1": r.correct1,
                "top1": _r(r.top1),
                "top5": _r(r.top5),
                "top1_ci95_low": _r(lo),
                "top1_ci95_high": _r(hi),
                "native_size": r.native_size,
                "delta_native": None if native is None else _r(r.top1 - native.top1),
                "published_top1": None if pub is None else pub[0],
                "published_confidence": None if pub is None else pub[1],
                "delta_published": None if pub is None else _r(r.top1 - pub[0]),
            }
        )
    return out


def throughput_records(rows: list[ResultRow]) -> list[dict]:
    labels = row_labels(rows)
    return [
        {
            "label": labels[row_key(r)],
            "model": r.model,
            "img_size": r.img_size,
            "images_per_sec": r.images_per_sec,
            "gflops_per_image": r.gflops_per_image,
            "throughput_batch": r.throughput_batch,
            "device": r.device,
            "dtype": r.dtype,
        }
        for r in ordered(rows)
        if r.images_per_sec is not None
    ]


def _correct_top1(store: RunStore, row: ResultRow):
    import numpy as np

    arrays = store.load_predictions(row)
    order = np.argsort(arrays["indices"], kind="stable")
    correct = arrays["top5"][order, 0].astype(np.int64) == arrays["labels"][order].astype(np.int64)
    return arrays["indices"][order], correct


def pair_records(store: RunStore, rows: list[ResultRow]) -> list[dict]:
    """Exact McNemar tests between every two models evaluated at the same size under the same conditions,
    paired image by image from the stored predictions."""
    import numpy as np

    labels = row_labels(rows)
    groups: dict[tuple, list[ResultRow]] = {}
    for r in ordered(rows):
        cond = (r.img_size, r.crop_pct, r.interpolation, r.dtype, r.dataset_fingerprint, r.limit)
        groups.setdefault(cond, []).append(r)
    out = []
    for (size, *_), members in sorted(groups.items(), key=lambda kv: kv[0][0]):
        cache = {row_key(r): _correct_top1(store, r) for r in members} if len(members) > 1 else {}
        for i, a in enumerate(members):
            for b in members[i + 1 :]:
                idx_a, ca = cache[row_key(a)]
                idx_b, cb = cache[row_key(b)]
                if not np.array_equal(idx_a, idx_b):
                    raise ResultsError(
                        f"predictions of {a.model} and {b.model} at {size}px cover different images; cannot pair them"
                    )
                only_a = int(np.sum(ca & ~cb))
                only_b = int(np.sum(~ca & cb))
                out.append(
                    {
                        "img_size": size,
                        "a": labels[row_key(a)],
                        "b": labels[row_key(b)],
                        "n_images": int(len(ca)),
                        "top1_a": _r(a.top1),
                        "top1_b": _r(b.top1),
                        "delta": _r(a.top1 - b.top1),
                        "only_a_correct": only_a,
                        "only_b_correct": only_b,
                        "p_value": _r(mcnemar_exact(only_a, only_b), 6),
                    }
                )
    return out


# ---------------------------------------------------------------------------------------------------- text formats


# Integer columns that may be empty: kept as nullable integers so that the CSV says 256, not 256.0000.
_NULLABLE_INT = ("throughput_batch", "limit", "native_size")


def rows_frame(rows: list[ResultRow]) -> pd.DataFrame:
    df = pd.DataFrame([{c: getattr(r, c) for c in CSV_COLUMNS} for r in ordered(rows)], columns=CSV_COLUMNS)
    for col in _NULLABLE_INT:
        df[col] = df[col].astype("Int64")
    return df


def to_csv(rows: list[ResultRow]) -> str:
    """The flat rows, one per cell, with the run conditions as columns, and the paper's top-1 for the cell (with
    its confidence grade and our difference to it) where the paper has one."""
    df = rows_frame(rows)
    published = [published_top1(m, int(s)) for m, s in zip(df["model"], df["img_size"], strict=True)]
    df["published_top1"] = [None if p is None else p[0] for p in published]
    df["published_confidence"] = [None if p is None else p[1] for p in published]
    df["top1_vs_published"] = [
        None if p is None else round(t - p[0], 4) for t, p in zip(df["top1"], published, strict=True)
    ]
    return df.to_csv(index=False, float_format="%.4f", lineterminator="\n")


def _md_table(header: list[str], body: list[list[str]], align_right_from: int = 1) -> str:
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join("---" if i < align_right_from else "---:" for i in range(len(header))) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, spec)


def _pivot(records: list[dict], value: str) -> tuple[list[str], list[int], dict[tuple[str, int], object]]:
    labels = list(dict.fromkeys(r["label"] for r in records))
    sizes = sorted({r["img_size"] for r in records})
    return labels, sizes, {(r["label"], r["img_size"]): r[value] for r in records}


def _conditions(rows: list[ResultRow], provenance: dict | None) -> list[str]:
    def values(name: str) -> str:
        return ", ".join(f"`{v}`" for v in dict.fromkeys(str(getattr(r, name)) for r in rows))

    datasets = dict.fromkeys((r.dataset, r.n_images, r.dataset_fingerprint) for r in rows)
    lines = [
        "- dataset: "
        + "; ".join(f"`{d}` ({n} images, fingerprint `{fp}`)" for d, n, fp in datasets)
        + (" — **partial** (not the full 50,000-image validation set)" if any(r.partial for r in rows) else ""),
        f"- eval transform: shorter side to floor(size / crop_pct), centre crop; crop_pct {values('crop_pct')}, "
        f"interpolation {values('interpolation')}",
        "- PE policy: " + ", ".join(dict.fromkeys(f"{r.model} {r.img_size}px: {r.pe_policy}" for r in ordered(rows))),
        f"- dtype {values('dtype')}, device {values('device')}",
    ]
    batches = {r.throughput_batch for r in rows if r.images_per_sec is not None}
    if batches:
        lines.append(
            "- throughput: batch " + ", ".join(str(b) for b in sorted(batches)) + ", median of timed runs after "
            "warm-up, synthetic input, model only"
        )
    lines.append(f"- versions: {values('versions')}")
    if provenance:
        lines.append(
            f"- last run: `{provenance.get('command', '')}` on {provenance.get('device_name', '')} "
            f"({provenance.get('threads', '')} threads), git `{provenance.get('git_sha') or 'none'}`, "
            f"seed {provenance.get('seed')}, {provenance.get('started_at')} – {provenance.get('finished_at')} "
            f"({provenance.get('status')})"
        )
    return lines


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
    labels, sizes, top1 = _pivot(records, "top1")
    out = [f"# {title}", "", "## Top-1 accuracy (%)", ""]
    body = [[lab, pe[lab]] + [_fmt(top1.get((lab, s)), ".2f") for s in sizes] for lab in labels]
    out += [_md_table(["model", "PE"] + [f"{s}px" for s in sizes], body, align_right_from=2), ""]

    out += ["## Top-1 by size: 95% interval, change from native size and from the paper", ""]
    body = [
        [
            r["label"],
            f"{r['img_size']}px",
            _fmt(r["top1"], ".2f"),
            f"{_fmt(r['top1_ci95_low'], '.2f')}–{_fmt(r['top1_ci95_high'], '.2f')}",
            "native" if r["img_size"] == r["native_size"] else _fmt(r["delta_native"], "+.2f"),
            _fmt(r["published_top1"], ".1f"),
            _fmt(r["delta_published"], "+.2f"),
            r["published_confidence"] or "–",
            str(r["n_images"]),
        ]
        for r in records
    ]
    header = ["model", "size", "top-1", "95% CI (Wilson)", "Δ native", "paper", "Δ paper", "confidence", "images"]
    out += [_md_table(header, body, align_right_from=2), ""]
    out += [
        "Δ native: points from the same model at its training size. Δ paper: points from the published top-1; "
        "rows graded `unverified` rest on a single transcription of the paper's table.",
        "",
    ]

    tp = throughput_records(rows)
    if tp:
        t_labels, t_sizes, ips = _pivot(tp, "images_per_sec")
        _, _, gflops = _pivot(tp, "gflops_per_image")
        out += ["## Throughput (images/s, model only)", ""]
        body = [[lab] + [_fmt(ips.get((lab, s)), ",.1f") for s in t_sizes] for lab in t_labels]
        out += [_md_table(["model"] + [f"{s}px" for s in t_sizes], body), ""]
        if any(v is not None for v in gflops.values()):
            out += ["GFLOPs per image (attention included):", ""]
            body = [[lab] + [_fmt(gflops.get((lab, s)), ".3f") for s in t_sizes] for lab in t_labels]
            out += [_md_table(["model"] + [f"{s}px" for s in t_sizes], body), ""]

    if pairs:
        out += ["## Paired differences (exact McNemar test on the same images)", ""]
        body = [
            [
                f"{p['img_size']}px",
                p["a"],
                p["b"],
                _fmt(p["top1_a"], ".2f"),
                _fmt(p["top1_b"], ".2f"),
                _fmt(p["delta"], "+.2f"),
                str(p["only_a_correct"]),
                str(p["only_b_correct"]),
                _fmt(p["p_value"], ".4f"),
            ]
            for p in pairs
        ]
        header = ["size", "A", "B", "top-1 A", "top-1 B", "Δ (A−B)", "only A right", "only B right", "p"]
        out += [_md_table(header, body, align_right_from=3), ""]
        out += ["A small p says the two models' difference on these images is unlikely to be chance.", ""]

    if plots:
        out += ["## Plots", ""]
        names = {PLOT_TOP1: "Top-1 vs resolution", PLOT_THROUGHPUT: "Images/s vs resolution"}
        out += [f"![{names.get(p, p)}]({p})" for p in plots] + [""]

    out += real_section(rows)
    out += ["## Conditions", ""] + _conditions(rows, provenance) + data_conditions(rows) + [""]
    return "\n".join(out)


def data_conditions(rows: list[ResultRow]) -> list[str]:
    """Markdown lines on how the data was read: layout and labels, skipped bad files, draft decoding."""
    first = rows[0]
    out = []
    if first.layout:
        out.append(
            f"- layout `{first.layout}`" + (f", labels from `{first.label_source}`" if first.label_source else "")
        )
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
    body = [[m] + [_fmt(real.get((m, s)), ".2f") for s in sizes] for m in models]
    first = rows[0]
    return [
        "## ImageNet-ReaL top-1 (%)",
        "",
        _md_table(["model"] + [f"{s}px" for s in sizes], body),
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


def _tex_tabular(header: list[str], body: list[list[str]], n_left: int) -> list[str]:
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
    labels, sizes, _ = _pivot(records, "top1")
    cells = {(r["label"], r["img_size"]): r for r in records}

    def top1_cell(label: str, size: int) -> str:
        r = cells.get((label, size))
        if r is None:
            return "--"
        text = f"{r['top1']:.2f}"
        if r["delta_native"] is not None and r["img_size"] != r["native_size"]:
            text += f" ({r['delta_native']:+.2f})"
        return text

    body = [[tex_escape(lab), tex_escape(pe[lab])] + [top1_cell(lab, s) for s in sizes] for lab in labels]
    n = max(r["n_images"] for r in records)
    lines += [
        r"\begin{table}[t]",
        r"  \centering",
        rf"  \caption{{{tex_escape(title)}: top-1 accuracy (\%) by input size on {n} images; in parentheses the "
        r"change in points from the model's training size.}",
        r"  \label{tab:resolution-top1}",
        *_tex_tabular(["Model", "PE"] + [f"{s}px" for s in sizes], body, 2),
        r"\end{table}",
    ]
    tp = throughput_records(rows)
    if tp:
        t_labels, t_sizes, ips = _pivot(tp, "images_per_sec")
        body = [
            [tex_escape(lab)] + [_fmt(ips.get((lab, s)), ".1f").replace("–", "--") for s in t_sizes] for lab in t_labels
        ]
        devices = ", ".join(dict.fromkeys(tex_escape(r["device"]) for r in tp))
        lines += [
            "",
            r"\begin{table}[t]",
            r"  \centering",
            rf"  \caption{{Model-only throughput (images/s) by input size on {devices}.}}",
            r"  \label{tab:resolution-throughput}",
            *_tex_tabular(["Model"] + [f"{s}px" for s in t_sizes], body, 1),
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
    if pairs is not None:
        doc["pairs"] = pairs
    if provenance is not None:
        doc["provenance"] = provenance
    return doc


# ---------------------------------------------------------------------------------------------------- plots


def _figure():
    # The object API with an Agg canvas: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def plot_top1(rows: list[ResultRow]) -> bytes:
    """Top-1 vs resolution: one line per model (with its 95% interval), the published points as markers."""
    from matplotlib.lines import Line2D

    records = top1_records(rows)
    fig = _figure()
    ax = fig.add_subplot()
    any_published = False
    for i, label in enumerate(dict.fromkeys(r["label"] for r in records)):
        mine = [r for r in records if r["label"] == label]
        color = f"C{i % 10}"
        xs = [r["img_size"] for r in mine]
        ys = [r["top1"] for r in mine]
        err = [
            [r["top1"] - r["top1_ci95_low"] for r in mine],
            [r["top1_ci95_high"] - r["top1"] for r in mine],
        ]
        ax.errorbar(xs, ys, yerr=err, color=color, marker="o", capsize=3, label=label)
        pub = [(r["img_size"], r["published_top1"]) for r in mine if r["published_top1"] is not None]
        if pub:
            any_published = True
            ax.scatter([p[0] for p in pub], [p[1] for p in pub], marker="x", s=60, color=color, zorder=3)
    handles, names = ax.get_legend_handles_labels()
    if any_published:
        handles.append(Line2D([], [], color="0.3", marker="x", linestyle="none"))
        names.append("published")
    ax.legend(handles, names, fontsize="small")
    ax.set_xlabel("input size (px)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_xticks(sorted({r["img_size"] for r in records}))
    ax.set_title("Top-1 vs resolution (no fine-tuning; bars: 95% Wilson interval)", fontsize="medium")
    ax.grid(alpha=0.3)
    return _png(fig)


def plot_throughput(rows: list[ResultRow]) -> bytes | None:
    """Images/s vs resolution (log scale), one line per model; None when no cell was timed."""
    from matplotlib.ticker import FuncFormatter

    tp = throughput_records(rows)
    if not tp:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    for i, label in enumerate(dict.fromkeys(r["label"] for r in tp)):
        mine = [r for r in tp if r["label"] == label]
        ax.plot([r["img_size"] for r in mine], [r["images_per_sec"] for r in mine], marker="o", color=f"C{i % 10}")
        ax.lines[-1].set_label(label)
    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:,.0f}")  # 2,000 rather than 2x10^3
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.set_xlabel("input size (px)")
    ax.set_ylabel("images/s (model only)")
    ax.set_xticks(sorted({r["img_size"] for r in tp}))
    ax.set_title("Throughput vs resolution", fontsize="medium")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3, which="both")
    return _png(fig)


# ---------------------------------------------------------------------------------------------------- render


def render(
    store: RunStore,
    formats: tuple[str, ...] = FORMATS,
    out_dir: str | Path | None = None,
    pairs: bool = False,
    title: str = TITLE,
) -> list[Path]:
    """Write the chosen formats for the rows stored in ``store`` to ``out_dir`` (default: the run directory).

    Files: results.md, results.csv, results.tex, results.json, top1_vs_resolution.png,
    throughput_vs_resolution.png. Plots are written first so that results.md can link the ones present.
    """
    out = Path(out_dir) if out_dir is not None else store.root
    if out.exists() and not out.is_dir():
        raise ResultsError(f"report output {out} exists and is not a directory")
    rows = store.rows()
    runs = store.provenance()
    provenance = runs[-1] if runs else None
    pair_list = pair_records(store, rows) if pairs else None
    written: list[Path] = []
    if "png" in formats and rows:
        for name, data in ((PLOT_TOP1, plot_top1(rows)), (PLOT_THROUGHPUT, plot_throughput(rows))):
            if data is not None:
                atomic_write_bytes(out / name, data)
                written.append(out / name)
    plots = tuple(name for name in (PLOT_TOP1, PLOT_THROUGHPUT) if (out / name).is_file())
    texts = {
        "md": ("results.md", lambda: markdown_report(rows, title, pair_list, plots, provenance)),
        "csv": ("results.csv", lambda: to_csv(rows)),
        "tex": ("results.tex", lambda: latex_report(rows, title)),
        "json": (
            "results.json",
            lambda: json.dumps(json_report(rows, pair_list, provenance), indent=2, ensure_ascii=False) + "\n",
        ),
    }
    for fmt in formats:
        if fmt in texts:
            name, make = texts[fmt]
            atomic_write_text(out / name, make())
            written.append(out / name)
    return written


# ---------------------------------------------------------------------------------------------------- compare

# Cells of two runs are the same cell when these agree (the checkpoint may change: that is what CI checks).
MATCH_FIELDS = ("model", "img_size", "crop_pct", "interpolation", "pe_options", "dtype", "model_args")


def load_rows(path: str | Path) -> list[ResultRow]:
    """Rows of a run directory, of its ``rows.jsonl``, or of a ``results.json`` written by ``report``."""
    path = Path(path)
    if path.is_file() and path.suffix == ".json":
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            rows = [ResultRow.from_dict(d) for d in doc["rows"]]
        except (json.JSONDecodeError, KeyError, TypeError, OSError) as e:
            raise ResultsError(f"cannot read result rows from {path}: {e}") from None
    else:
        store = RunStore.existing(path.parent if path.is_file() and path.name == RunStore.ROWS else path)
        rows = store.rows()
    if not rows:
        raise ResultsError(f"no finished cells in {path}")
    return rows


@dataclass
class CellDiff:
    model: str
    img_size: int
    protocol: str
    baseline: ResultRow
    current: ResultRow
    top1_delta: float  # current - baseline, points
    speed_ratio: float | None  # current / baseline images/s
    accuracy_failed: bool
    speed_failed: bool

    @property
    def status(self) -> str:
        failed = [name for name, bad in (("top-1 drop", self.accuracy_failed), ("slower", self.speed_failed)) if bad]
        return ", ".join(failed) if failed else "ok"

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "img_size": self.img_size,
            "protocol": self.protocol,
            "top1_baseline": self.baseline.top1,
            "top1_current": self.current.top1,
            "top1_delta": _r(self.top1_delta),
            "images_per_sec_baseline": self.baseline.images_per_sec,
            "images_per_sec_current": self.current.images_per_sec,
            "speed_ratio": _r(self.speed_ratio),
            "checkpoint_changed": self.baseline.checkpoint_sha256 != self.current.checkpoint_sha256,
            "accuracy_failed": self.accuracy_failed,
            "speed_failed": self.speed_failed,
            "status": self.status,
        }


@dataclass
class Comparison:
    max_drop: float
    max_slowdown: float
    cells: list[CellDiff] = field(default_factory=list)
    only_baseline: list[str] = field(default_factory=list)
    only_current: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(c.accuracy_failed or c.speed_failed for c in self.cells)

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "max_drop": self.max_drop,
            "max_slowdown": self.max_slowdown,
            "cells": [c.to_dict() for c in self.cells],
            "only_in_baseline": self.only_baseline,
            "only_in_current": self.only_current,
        }


# Counts are divided once, so equal counts give equal floats; the slack only keeps an exact-tolerance change
# (e.g. a drop of exactly --max-drop) from failing on the last bit of a float subtraction.
_EPS = 1e-9


def _match_key(r: ResultRow) -> tuple:
    return tuple(str(getattr(r, f)) for f in MATCH_FIELDS)


def _cell_name(r: ResultRow) -> str:
    return f"{r.model}@{r.img_size}px"


def compare_runs(
    baseline: list[ResultRow], current: list[ResultRow], max_drop: float = 0.1, max_slowdown: float = 0.1
) -> Comparison:
    """Match the cells of two runs and flag top-1 drops beyond ``max_drop`` points and throughput below
    ``(1 - max_slowdown)`` of the baseline. Runs that share no cell, or cells on different datasets, cannot be
    compared (``ResultsError``)."""
    if not max_drop >= 0:
        raise CpvtEvalError(f"--max-drop must be >= 0 points, got {max_drop}")
    if not 0 <= max_slowdown < 1:
        raise CpvtEvalError(f"--max-slowdown must be a ratio in [0, 1), got {max_slowdown}")
    sides = []
    for name, rows in (("baseline", baseline), ("current", current)):
        cells: dict[tuple, ResultRow] = {}
        for r in rows:
            if _match_key(r) in cells:
                raise ResultsError(
                    f"the {name} run holds {_cell_name(r)} twice under the same protocol (different checkpoints or "
                    "datasets); compare run directories with one of each"
                )
            cells[_match_key(r)] = r
        sides.append(cells)
    base, cur = sides
    common = [_match_key(r) for r in ordered(list(base.values())) if _match_key(r) in cur]
    if not common:
        raise ResultsError("the runs share no cell (same model, size, crop, interpolation, PE options, dtype)")
    result = Comparison(max_drop=max_drop, max_slowdown=max_slowdown)
    for k in common:
        b, c = base[k], cur[k]
        if b.dataset_fingerprint != c.dataset_fingerprint:
            raise ResultsError(
                f"{_cell_name(b)} was evaluated on different datasets (fingerprint {b.dataset_fingerprint} in the "
                f"baseline, {c.dataset_fingerprint} now); the runs cannot be compared"
            )
        delta = 100.0 * c.correct1 / c.n_images - 100.0 * b.correct1 / b.n_images
        ratio = None
        if b.images_per_sec and c.images_per_sec:
            ratio = c.images_per_sec / b.images_per_sec
        result.cells.append(
            CellDiff(
                model=b.model,
                img_size=b.img_size,
                protocol=f"crop={b.crop_pct},{b.interpolation},{b.pe_options},{b.dtype}",
                baseline=b,
                current=c,
                top1_delta=delta,
                speed_ratio=ratio,
                accuracy_failed=-delta > max_drop + _EPS,
                speed_failed=ratio is not None and ratio < 1.0 - max_slowdown - _EPS,
            )
        )
    result.only_baseline = [_cell_name(base[k]) for k in base if k not in cur]
    result.only_current = [_cell_name(cur[k]) for k in cur if k not in base]
    return result


def comparison_markdown(result: Comparison) -> str:
    """The matched cells as a Markdown table (readable in a CI log and pasteable into a review)."""
    body = [
        [
            c.model,
            f"{c.img_size}px",
            f"{c.baseline.top1:.2f}",
            f"{c.current.top1:.2f}",
            f"{c.top1_delta:+.2f}",
            _fmt(c.baseline.images_per_sec, ",.1f"),
            _fmt(c.current.images_per_sec, ",.1f"),
            _fmt(c.speed_ratio, ".3f"),
            c.status + (" (new checkpoint)" if c.baseline.checkpoint_sha256 != c.current.checkpoint_sha256 else ""),
        ]
        for c in result.cells
    ]
    header = ["model", "size", "top-1 base", "top-1 now", "Δ", "img/s base", "img/s now", "ratio", "status"]
    return _md_table(header, body, align_right_from=2)
