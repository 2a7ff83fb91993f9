"""Tables from result rows (pandas): CSV and paper-style Markdown. No torch, no rich."""

from __future__ import annotations

import io
from functools import lru_cache
from importlib import resources

import pandas as pd

from .results import CSV_COLUMNS, ResultRow


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


def rows_frame(rows: list[ResultRow]) -> pd.DataFrame:
    df = pd.DataFrame([{c: getattr(r, c) for c in CSV_COLUMNS} for r in rows], columns=CSV_COLUMNS)
    if not df.empty:
        order = {m: i for i, m in enumerate(dict.fromkeys(r.model for r in rows))}
        df = df.sort_values(["model", "img_size"], key=lambda s: s.map(order) if s.name == "model" else s)
    return df.reset_index(drop=True)


def to_csv(rows: list[ResultRow]) -> str:
    return rows_frame(rows).to_csv(index=False, float_format="%.4f")


def _md_table(header: list[str], body: list[list[str]], align_right_from: int = 1) -> str:
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join("---" if i < align_right_from else "---:" for i in range(len(header))) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "–"
    return format(value, spec)


def pivot(rows: list[ResultRow], value: str) -> tuple[list[str], list[int], dict[tuple[str, int], object]]:
    models = list(dict.fromkeys(r.model for r in rows))
    sizes = sorted({r.img_size for r in rows})
    cells = {(r.model, r.img_size): getattr(r, value) for r in rows}
    return models, sizes, cells


def markdown_report(rows: list[ResultRow], title: str = "Resolution generalization without fine-tuning") -> str:
    """Paper-style pivots (models x sizes) for top-1 and images/s, the paper comparison, and the conditions."""
    if not rows:
        return f"# {title}\n\nNo finished cells yet.\n"
    out = [f"# {title}", ""]
    models, sizes, top1 = pivot(rows, "top1")
    pe = {r.model: r.pe for r in rows}
    out += ["## Top-1 accuracy (%)", ""]
    body = [[m, pe[m]] + [_fmt(top1.get((m, s)), ".2f") for s in sizes] for m in models]
    out += [_md_table(["model", "PE"] + [f"{s}px" for s in sizes], body, align_right_from=2), ""]

    comparisons = []
    for r in rows:
        pub = published_top1(r.model, r.img_size)
        if pub is not None:
            value, grade = pub
            comparisons.append(
                [
                    r.model,
                    f"{r.img_size}px",
                    f"{r.top1:.2f}",
                    f"{value:.1f}",
                    f"{r.top1 - value:+.2f}",
                    grade,
                ]
            )
    if comparisons:
        out += ["## Against the published numbers", ""]
        out += [_md_table(["model", "size", "top-1", "paper", "Δ", "confidence"], comparisons, align_right_from=2)]
        out += ["", "Rows graded `unverified` rest on a single transcription of the paper's table.", ""]

    _, _, ips = pivot(rows, "images_per_sec")
    if any(v is not None for v in ips.values()):
        out += ["## Throughput (images/s, model only)", ""]
        body = [[m] + [_fmt(ips.get((m, s)), ".1f") for s in sizes] for m in models]
        out += [_md_table(["model"] + [f"{s}px" for s in sizes], body), ""]

    first = rows[0]
    partial = any(r.partial for r in rows)
    out += ["## Conditions", ""]
    out += [
        f"- dataset: `{first.dataset}` ({first.n_images} images, fingerprint `{first.dataset_fingerprint}`)"
        + (" — **partial** (not the full 50,000-image validation set)" if partial else ""),
        f"- eval transform: shorter side to floor(size / {first.crop_pct}) ({first.interpolation}), centre crop",
        "- PE policy: " + ", ".join(sorted({f"{r.model}: {r.pe_policy}" for r in rows})),
        f"- dtype `{first.dtype}`, device `{first.device}`",
        f"- throughput: batch {first.throughput_batch}, median of timed runs after warm-up, synthetic input",
        f"- versions: {first.versions}",
        "",
    ]
    out += data_notes(rows)
    return "\n".join(out)


def data_notes(rows: list[ResultRow]) -> list[str]:
    """Markdown lines on how the data was read: layout and labels, skipped bad files, draft decoding, ReaL top-1."""
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
    if out:
        out.append("")
    models, sizes, real = pivot(rows, "real_top1")
    if any(v is not None for v in real.values()):
        out += ["## ImageNet-ReaL top-1 (%)", ""]
        body = [[m] + [_fmt(real.get((m, s)), ".2f") for s in sizes] for m in models]
        out += [_md_table(["model"] + [f"{s}px" for s in sizes], body)]
        out += ["", f"Images without a ReaL label are left out: {first.real_excluded} of {first.n_images}.", ""]
    return out
