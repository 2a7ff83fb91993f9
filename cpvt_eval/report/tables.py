"""The pieces every report is made of: formats, the flat frame of rows, Markdown and LaTeX tables, the paired
section, the lines on the data and the last run."""

from __future__ import annotations

import pandas as pd

from ..errors import CpvtEvalError
from ..probes.presentation import fmt_value
from ..results import CSV_COLUMNS, ResultRow
from .records import ordered

__all__ = [
    "FORMATS",
    "data_conditions",
    "fmt_value",
    "md_table",
    "paired_section",
    "parse_formats",
    "pivot",
    "provenance_line",
    "rows_frame",
    "tex_escape",
    "tex_tabular",
]

FORMATS = ("md", "csv", "tex", "json", "png")


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


_NULLABLE_INT = ("limit", "native_size")


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


def md_table(header: list[str], body: list[list[str]], align_right_from: int = 1) -> str:
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join("---" if i < align_right_from else "---:" for i in range(len(header))) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def pivot(records: list[dict], value: str) -> tuple[list[str], list[int], dict[tuple[str, int], object]]:
    labels = list(dict.fromkeys(r["label"] for r in records))
    sizes = sorted({r["img_size"] for r in records})
    return labels, sizes, {(r["label"], r["img_size"]): r[value] for r in records}


def provenance_line(provenance: dict) -> str:
    """The Conditions line of the last run that wrote the directory."""
    return (
        f"- last run: `{provenance.get('command', '')}` on {provenance.get('device_name', '')} "
        f"({provenance.get('threads', '')} threads), git `{provenance.get('git_sha') or 'none'}`, "
        f"seed {provenance.get('seed')}, {provenance.get('started_at')} – {provenance.get('finished_at')} "
        f"({provenance.get('status')})"
    )


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


def tex_table(caption: str, label: str, tabular: list[str]) -> list[str]:
    """A booktabs table floated at the top: its (escaped) caption, label and tabular."""
    return [
        r"\begin{table}[t]",
        r"  \centering",
        rf"  \caption{{{caption}}}",
        rf"  \label{{tab:{label}}}",
        *tabular,
        r"\end{table}",
    ]
