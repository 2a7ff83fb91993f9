"""Reports of the translation probe's rows (``cpvt-eval shift``): consistency by size as Markdown, CSV, LaTeX, JSON
and a plot, with exact McNemar tests between models on the agreement of the same view pairs.

A shift row is a ``ResultRow`` whose ``probe`` starts with ``shift:``; its probe columns live in ``extra``
(``SHIFT_COLUMNS``) and are lifted to the top level in the CSV and JSON. Nothing is recomputed: the pairs read the
stored per-pair predictions.
"""

from __future__ import annotations

import math

from ..errors import ResultsError
from ..published import published_shift
from ..results import ResultRow, RunStore, mcnemar_exact, row_key, wilson_interval
from .records import ordered, row_labels

SHIFT_PREFIX = "shift:"
SHIFT_TITLE = "Consistency under translation"
PLOT_CONSISTENCY = "consistency_vs_resolution.png"
SHIFT_FILES = {"md": "shift.md", "csv": "shift.csv", "tex": "shift.tex", "json": "shift.json"}
# The columns a shift row adds to the resolution row's (kept in ``ResultRow.extra``).
SHIFT_COLUMNS = (
    "consistency",
    "consistency_ci95",
    "n_pairs",
    "n_agree",
    "top1_a",
    "top1_b",
    "shift_mode",
    "max_shift",
    "shift_epochs",
    "shift_seed",
    "canvas_size",
    "images_in_set",
)
# Zhang's protocol as published: random crops, offsets in [0, 32) at 224 px.
_PUBLISHED_PROTOCOL = ("random", 224, 32)


def is_shift_row(row: ResultRow) -> bool:
    return row.probe.startswith(SHIFT_PREFIX)


def split_rows(rows: list[ResultRow]) -> tuple[list[ResultRow], list[ResultRow]]:
    """``(resolution rows, shift rows)``: the two tables a run directory can hold."""
    return [r for r in rows if not is_shift_row(r)], [r for r in rows if is_shift_row(r)]


def shift_row_dict(row: ResultRow) -> dict:
    """A shift row as one flat record: the row's columns with the probe's columns at the top level."""
    d = row.to_dict()
    extra = dict(d.pop("extra"))
    for name in SHIFT_COLUMNS:
        d[name] = extra.pop(name, None)
    d["extra"] = extra
    return d


def _r(value, digits: int = 4):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return round(float(value), digits)


def published_consistency(row: ResultRow) -> dict | None:
    """The published figure of this model under Zhang's protocol (random crops, [0, 32) at 224 px), matched on the
    model name or the timm weights tag of the checkpoint (``timm:resnet50.tv_in1k``)."""
    e = row.extra
    if (e.get("shift_mode"), row.img_size, e.get("max_shift")) != _PUBLISHED_PROTOCOL:
        return None
    names = {row.model, row.checkpoint.split(":", 1)[-1] if row.checkpoint.startswith("timm:") else row.model}
    for p in published_shift():
        if p["model"] in names:
            return {"consistency": float(p["consistency"]), "confidence": p["confidence"], "source": p["source"]}
    return None


def consistency_records(rows: list[ResultRow]) -> list[dict]:
    """One record per shift cell: consistency with its Wilson 95% interval, each view's top-1, the published
    figure where one exists."""
    labels = row_labels(rows)
    out = []
    for r in ordered(rows):
        e = r.extra
        lo, hi = wilson_interval(int(e["n_agree"]), int(e["n_pairs"]))
        pub = published_consistency(r)
        out.append(
            {
                "label": labels[row_key(r)],
                "model": r.model,
                "pe": r.pe,
                "img_size": r.img_size,
                "probe": r.probe,
                "shift_mode": e["shift_mode"],
                "max_shift": e["max_shift"],
                "shift_epochs": e["shift_epochs"],
                "shift_seed": e["shift_seed"],
                "canvas_size": e["canvas_size"],
                "n_pairs": e["n_pairs"],
                "n_agree": e["n_agree"],
                "consistency": _r(e["consistency"]),
                "consistency_ci95_low": _r(lo),
                "consistency_ci95_high": _r(hi),
                "top1_a": _r(e["top1_a"]),
                "top1_b": _r(e["top1_b"]),
                "top1": _r(r.top1),
                "published_consistency": None if pub is None else pub["consistency"],
                "published_confidence": None if pub is None else pub["confidence"],
                "delta_published": None if pub is None else _r(e["consistency"] - pub["consistency"]),
            }
        )
    return out


def pair_agreement(store: RunStore, row: ResultRow):
    """``(pairs, agree)`` of a stored shift cell, in (epoch, image) order: ``pairs`` (n, 6) = epoch, image index
    and the four offsets; ``agree`` whether the two views' top-1 are the same."""
    import numpy as np

    n = int(row.extra.get("n_pairs") or 0)
    a = store.load_predictions(row, ("indices", "epochs", "labels", "offsets", "top5_a", "top5_b"), n)
    order = np.lexsort((a["indices"], a["epochs"]))
    pairs = np.concatenate([a["epochs"][:, None], a["indices"][:, None], a["offsets"]], axis=1).astype(np.int64)
    agree = a["top5_a"][:, 0].astype(np.int64) == a["top5_b"][:, 0].astype(np.int64)
    return pairs[order], agree[order]


def shift_pair_records(store: RunStore, rows: list[ResultRow]) -> list[dict]:
    """Exact McNemar tests between every two models at the same size under the same probe and conditions, paired on
    the same view pairs: does one model keep its top-1 where the other changes it?"""
    import numpy as np

    labels = row_labels(rows)
    groups: dict[tuple, list[ResultRow]] = {}
    for r in ordered(rows):
        cond = (r.img_size, r.probe, r.interpolation, r.dtype, r.dataset_fingerprint, r.limit, r.decode_draft)
        groups.setdefault(cond, []).append(r)
    out = []
    for (size, *_), members in sorted(groups.items(), key=lambda kv: kv[0][0]):
        cache = {row_key(r): pair_agreement(store, r) for r in members} if len(members) > 1 else {}
        for i, a in enumerate(members):
            for b in members[i + 1 :]:
                pairs_a, agree_a = cache[row_key(a)]
                pairs_b, agree_b = cache[row_key(b)]
                if not np.array_equal(pairs_a, pairs_b):
                    raise ResultsError(
                        f"shift pairs of {a.model} and {b.model} at {size}px are not the same views; cannot pair them"
                    )
                only_a = int(np.sum(agree_a & ~agree_b))
                only_b = int(np.sum(~agree_a & agree_b))
                out.append(
                    {
                        "img_size": size,
                        "probe": a.probe,
                        "a": labels[row_key(a)],
                        "b": labels[row_key(b)],
                        "n_pairs": int(len(agree_a)),
                        "consistency_a": _r(a.extra["consistency"]),
                        "consistency_b": _r(b.extra["consistency"]),
                        "delta": _r(a.extra["consistency"] - b.extra["consistency"]),
                        "only_a_agrees": only_a,
                        "only_b_agrees": only_b,
                        "p_value": _r(mcnemar_exact(only_a, only_b), 6),
                    }
                )
    return out


def shift_csv(rows: list[ResultRow]) -> str:
    """The flat rows (the resolution row's columns, the probe's columns, the published figure where one exists)."""
    from .text import rows_frame

    df = rows_frame(rows)
    ordered_rows = ordered(rows)  # the frame's order
    for name in SHIFT_COLUMNS:
        df[name] = [r.extra.get(name) for r in ordered_rows]
    for name in ("n_pairs", "n_agree", "max_shift", "shift_epochs", "shift_seed", "canvas_size", "images_in_set"):
        df[name] = df[name].astype("Int64")
    pub = [published_consistency(r) for r in ordered_rows]
    df["published_consistency"] = [None if p is None else p["consistency"] for p in pub]
    df["consistency_vs_published"] = [
        None if p is None else round(r.extra["consistency"] - p["consistency"], 4)
        for r, p in zip(ordered_rows, pub, strict=True)
    ]
    return df.to_csv(index=False, float_format="%.4f", lineterminator="\n")


def _protocol_lines(rows: list[ResultRow]) -> list[str]:
    def values(get) -> str:
        return ", ".join(f"`{v}`" for v in dict.fromkeys(str(get(r)) for r in rows))

    return [
        "- views: shorter side to round(size x 256 / 224) ("
        + values(lambda r: r.interpolation)
        + "), centre crop of that square (the canvas: "
        + ", ".join(dict.fromkeys(f"{r.extra['canvas_size']}px at {r.img_size}px" for r in ordered(rows)))
        + "); per image and epoch two size x size views at offsets uniform in [0, max shift) per axis, drawn from "
        "(seed, epoch, image index)",
        "- mode "
        + values(lambda r: r.extra["shift_mode"])
        + " (random: crops of the canvas; circular: the centre crop rolled by the offsets), max shift "
        + ", ".join(dict.fromkeys(f"{r.extra['max_shift']} at {r.img_size}px" for r in ordered(rows)))
        + f", epochs {values(lambda r: r.extra['shift_epochs'])}, seed {values(lambda r: r.extra['shift_seed'])}",
        "- consistency: % of pairs whose two top-1 predictions agree; top-1 A / B: accuracy of each view",
    ]


def _conditions(rows: list[ResultRow], provenance: dict | None) -> list[str]:
    from .text import data_conditions

    def values(name: str) -> str:
        return ", ".join(f"`{v}`" for v in dict.fromkeys(str(getattr(r, name)) for r in rows))

    datasets = dict.fromkeys((r.dataset, r.extra.get("images_in_set"), r.dataset_fingerprint) for r in rows)
    lines = [
        "- dataset: "
        + "; ".join(f"`{d}` ({n} images, fingerprint `{fp}`)" for d, n, fp in datasets)
        + (" — **partial** (not the full 50,000-image validation set)" if any(r.partial for r in rows) else ""),
        *_protocol_lines(rows),
        "- PE policy: " + ", ".join(dict.fromkeys(f"{r.model} {r.img_size}px: {r.pe_policy}" for r in ordered(rows))),
        f"- dtype {values('dtype')}, device {values('device')}",
        f"- versions: {values('versions')}",
    ]
    if provenance:
        lines.append(
            f"- last run: `{provenance.get('command', '')}` on {provenance.get('device_name', '')} "
            f"({provenance.get('threads', '')} threads), git `{provenance.get('git_sha') or 'none'}`, "
            f"seed {provenance.get('seed')}, {provenance.get('started_at')} – {provenance.get('finished_at')} "
            f"({provenance.get('status')})"
        )
    return lines + data_conditions(rows)


def shift_markdown(
    rows: list[ResultRow],
    pairs: list[dict] | None = None,
    plots: tuple[str, ...] = (),
    provenance: dict | None = None,
    title: str = SHIFT_TITLE,
) -> str:
    """Consistency by size (pivot, then with intervals, each view's top-1 and the published figure), paired tests,
    plots, conditions."""
    from .text import _fmt, _md_table, _pivot, paired_section

    if not rows:
        return f"# {title}\n\nNo finished cells yet.\n"
    records = consistency_records(rows)
    pe = {r["label"]: r["pe"] for r in records}
    labels, sizes, cons = _pivot(records, "consistency")
    out = [f"# {title}", "", "## Consistency (%)", ""]
    body = [[lab, pe[lab]] + [_fmt(cons.get((lab, s)), ".2f") for s in sizes] for lab in labels]
    out += [_md_table(["model", "PE"] + [f"{s}px" for s in sizes], body, align_right_from=2), ""]

    out += ["## Consistency by size: 95% interval, each view's top-1, published figure", ""]
    body = [
        [
            r["label"],
            f"{r['img_size']}px",
            r["shift_mode"],
            str(r["max_shift"]),
            _fmt(r["consistency"], ".2f"),
            f"{_fmt(r['consistency_ci95_low'], '.2f')}–{_fmt(r['consistency_ci95_high'], '.2f')}",
            _fmt(r["top1_a"], ".2f"),
            _fmt(r["top1_b"], ".2f"),
            str(r["n_pairs"]),
            _fmt(r["published_consistency"], ".2f"),
            _fmt(r["delta_published"], "+.2f"),
        ]
        for r in records
    ]
    header = ["model", "size", "mode", "max shift", "consistency", "95% CI (Wilson)", "top-1 A", "top-1 B", "pairs"]
    out += [_md_table(header + ["published", "Δ published"], body, align_right_from=3), ""]
    out += [
        "Published: Zhang's protocol (random crops, offsets in [0, 32) at 224 px) from the antialiased-cnns README, "
        "shown only for cells measured under it.",
        "",
    ]
    if pairs:
        out += paired_section(
            pairs,
            "exact McNemar test on the agreement of the same view pairs",
            ("consistency", "consistency"),
            ("agrees", "agrees"),
            "A small p says one model's higher consistency on these pairs is unlikely to be chance.",
        )
    if plots:
        out += ["## Plots", "", *(f"![Consistency vs resolution]({p})" for p in plots), ""]
    out += ["## Conditions", "", *_conditions(rows, provenance), ""]
    return "\n".join(out)


def shift_latex(rows: list[ResultRow], title: str = SHIFT_TITLE) -> str:
    """A booktabs table: consistency by size, each view A's top-1 in parentheses."""
    from .text import _pivot, _tex_tabular, tex_escape

    lines = [r"% Generated by cpvt-eval report; needs \usepackage{booktabs}."]
    if not rows:
        return "\n".join(lines + ["% no finished cells"]) + "\n"
    records = consistency_records(rows)
    pe = {r["label"]: r["pe"] for r in records}
    labels, sizes, _ = _pivot(records, "consistency")
    cells = {(r["label"], r["img_size"]): r for r in records}

    def cell(label: str, size: int) -> str:
        r = cells.get((label, size))
        return "--" if r is None else f"{r['consistency']:.2f} ({r['top1_a']:.2f})"

    body = [[tex_escape(lab), tex_escape(pe[lab])] + [cell(lab, s) for s in sizes] for lab in labels]
    pairs = max(r["n_pairs"] for r in records)
    modes = ", ".join(dict.fromkeys(r["shift_mode"] for r in records))
    lines += [
        r"\begin{table}[t]",
        r"  \centering",
        rf"  \caption{{{tex_escape(title)}: consistency (\%, share of view pairs whose top-1 agree; {pairs} pairs, "
        rf"{tex_escape(modes)} shifts) by input size; in parentheses the top-1 accuracy (\%) of one view.}}",
        r"  \label{tab:shift-consistency}",
        *_tex_tabular(["Model", "PE"] + [f"{s}px" for s in sizes], body, 2),
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"


def shift_json(rows: list[ResultRow], pairs: list[dict] | None = None, provenance: dict | None = None) -> dict:
    doc = {
        "schema": "cpvt-eval/shift-report-1",
        "rows": [shift_row_dict(r) for r in ordered(rows)],
        "consistency": consistency_records(rows),
    }
    if pairs is not None:
        doc["pairs"] = pairs
    if provenance is not None:
        doc["provenance"] = provenance
    return doc


def plot_consistency(rows: list[ResultRow]) -> bytes:
    """Consistency vs resolution: one line per model (with its 95% interval), published figures as markers."""
    from .plots import interval_plot

    return interval_plot(
        consistency_records(rows),
        "consistency",
        "published_consistency",
        "consistency (% of pairs whose top-1 agree)",
        "Consistency under translation vs resolution (bars: 95% Wilson interval)",
    )


def render_shift(
    store: RunStore, rows: list[ResultRow], formats: tuple[str, ...], out, provenance: dict | None
) -> list:
    """Write the chosen formats of the shift rows (``shift.md``/``.csv``/``.tex``/``.json`` and the plot)."""
    import json

    from ..results import atomic_write_bytes, atomic_write_text

    written = []
    if "png" in formats and rows:
        atomic_write_bytes(out / PLOT_CONSISTENCY, plot_consistency(rows))
        written.append(out / PLOT_CONSISTENCY)
    plots = (PLOT_CONSISTENCY,) if (out / PLOT_CONSISTENCY).is_file() else ()
    pairs = shift_pair_records(store, rows) if any(f in formats for f in ("md", "json")) else None
    makers = {
        "md": lambda: shift_markdown(rows, pairs, plots, provenance),
        "csv": lambda: shift_csv(rows),
        "tex": lambda: shift_latex(rows),
        "json": lambda: json.dumps(shift_json(rows, pairs, provenance), indent=2, ensure_ascii=False) + "\n",
    }
    for fmt in formats:
        if fmt in makers:
            atomic_write_text(out / SHIFT_FILES[fmt], makers[fmt]())
            written.append(out / SHIFT_FILES[fmt])
    return written
