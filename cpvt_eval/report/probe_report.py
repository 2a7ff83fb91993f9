"""Reports of a probe whose main figure is a proportion (``shift``: consistency, ``agreement``: agreement with
the native size), built from what the probe declares (``probes.base.ReportSpec``, its typed columns):

* Markdown: the figure by size (pivot), the cells with its Wilson interval and every column the probe gives a
  Markdown header, the paired tests between models, plots, conditions;
* CSV: the rows' columns, the probe's columns, and the probe's records (published figures);
* LaTeX: a booktabs table of the figure by size, the probe's aside in parentheses;
* JSON: the flat rows, the records, the paired tests and the provenance;
* a plot of the figure against size with its intervals.

Nothing is recomputed: the paired tests read the stored per-cell arrays (``probe.outcomes``).
"""

from __future__ import annotations

import json

from ..probes import Probe, column_names, probe_columns
from ..results import (
    ResultRow,
    RunStore,
    atomic_write_bytes,
    atomic_write_text,
    row_key,
    wilson_interval,
)
from .records import mcnemar_pairs, ordered, round_or_none, row_labels
from .text import (
    data_conditions,
    fmt_value,
    md_table,
    paired_section,
    pivot,
    provenance_line,
    rows_frame,
    tex_escape,
    tex_tabular,
)


def records(probe: Probe, rows: list[ResultRow]) -> list[dict]:
    """One record per cell: the figure with its Wilson 95% interval, the probe's columns, the probe's extras."""
    spec = probe.report
    labels = row_labels(rows)
    out = []
    for r in ordered(rows):
        lo, hi = wilson_interval(int(getattr(r, spec.successes)), int(getattr(r, spec.trials)))
        record = {
            "label": labels[row_key(r)],
            "model": r.model,
            "pe": r.pe,
            "img_size": r.img_size,
            "probe": r.probe,
            **{name: getattr(r, name) for name in column_names(probe.row_type)},
            f"{spec.metric}_ci95_low": round_or_none(lo),
            f"{spec.metric}_ci95_high": round_or_none(hi),
            "top1": round_or_none(r.top1),
            "n_images": r.n_images,
        }
        record[spec.metric] = round_or_none(getattr(r, spec.metric))
        record.update(probe.record_extra(r))
        out.append(record)
    return out


def pair_records(probe: Probe, store: RunStore, rows: list[ResultRow]) -> list[dict]:
    """Exact McNemar tests between every two models at the same size under the same probe and conditions, paired
    on the same trials (``probe.outcomes``): does one model succeed where the other does not?"""
    spec = probe.report
    return mcnemar_pairs(
        rows, lambda r: probe.outcomes(store, r), probe.pair_condition, spec.metric, spec.units, spec.paired[0]
    )


def to_csv(probe: Probe, rows: list[ResultRow]) -> str:
    """The flat rows: the common columns, the probe's columns, and the probe's records (published figures)."""
    df = rows_frame(rows)
    ordered_rows = ordered(rows)  # the frame's order
    for f in probe_columns(probe.row_type):
        values = [getattr(r, f.name) for r in ordered_rows]
        df[f.name] = values
        if "int" in str(f.type):
            df[f.name] = df[f.name].astype("Int64")
    extras = [probe.record_extra(r) for r in ordered_rows]
    for name in dict.fromkeys(k for e in extras for k in e):
        # the difference to a published figure, named as results.csv names it (top1_vs_published)
        column_name = f"{probe.report.metric}_vs_published" if name == "delta_published" else name
        df[column_name] = [e.get(name) for e in extras]
    return df.to_csv(index=False, float_format="%.4f", lineterminator="\n")


def _conditions(probe: Probe, rows: list[ResultRow], provenance: dict | None) -> list[str]:
    def values(name: str) -> str:
        return ", ".join(f"`{v}`" for v in dict.fromkeys(str(getattr(r, name)) for r in rows))

    in_set = {r.model: r for r in rows}
    datasets = dict.fromkeys(
        (r.dataset, getattr(r, "images_in_set", None) or r.n_images, r.dataset_fingerprint) for r in in_set.values()
    )
    lines = [
        "- dataset: "
        + "; ".join(f"`{d}` ({n} images, fingerprint `{fp}`)" for d, n, fp in datasets)
        + (" — **partial** (not the full 50,000-image validation set)" if any(r.partial for r in rows) else ""),
        *([f"- test set: {values('test_set')}"] if any(r.test_set for r in rows) else []),
        *probe.protocol_lines(ordered(rows)),
        "- PE policy: " + ", ".join(dict.fromkeys(f"{r.model} {r.img_size}px: {r.pe_policy}" for r in ordered(rows))),
        f"- dtype {values('dtype')}, device {values('device')}",
        f"- versions: {values('versions')}",
    ]
    if provenance:
        lines.append(provenance_line(provenance))
    return lines + data_conditions(rows)


def markdown(
    probe: Probe,
    rows: list[ResultRow],
    pairs: list[dict] | None = None,
    plots: tuple[str, ...] = (),
    provenance: dict | None = None,
) -> str:
    """The figure by size (pivot), then each cell with its interval and the probe's columns, paired tests, plots,
    conditions."""
    spec = probe.report
    if not rows:
        return f"# {spec.title}\n\nNo finished cells yet.\n"
    recs = records(probe, rows)
    pe = {r["label"]: r["pe"] for r in recs}
    labels, sizes, value = pivot(recs, spec.metric)
    out = [f"# {spec.title}", "", f"## {spec.metric_title} (%)", ""]
    body = [[lab, pe[lab]] + [fmt_value(value.get((lab, s)), ".2f") for s in sizes] for lab in labels]
    out += [md_table(["model", "PE"] + [f"{s}px" for s in sizes], body, align_right_from=2), ""]

    # the probe's columns with a Markdown header, the figure followed by its interval, then the probe's extras
    columns: list[tuple[str, object]] = []
    for f in probe_columns(probe.row_type):
        if f.metadata.get("md"):
            columns.append((f.metadata["md"], (f.name, f.metadata.get("fmt", ""))))
            if f.name == spec.metric:
                columns.append(("95% CI (Wilson)", None))
    columns += [(header, (key, form)) for header, key, form in probe.md_extra()]

    def cell(r: dict, how) -> str:
        if how is None:
            return f"{fmt_value(r[f'{spec.metric}_ci95_low'], '.2f')}–{fmt_value(r[f'{spec.metric}_ci95_high'], '.2f')}"
        key, form = how
        return fmt_value(r[key], form) if form else str(r[key])

    body = [[r["label"], f"{r['img_size']}px"] + [cell(r, how) for _, how in columns] for r in recs]
    out += [f"## {spec.metric_title} by size: {spec.cells_heading}", ""]
    out += [md_table(["model", "size"] + [h for h, _ in columns], body, align_right_from=3), ""]
    if spec.published_note:
        out += [spec.published_note, ""]
    if pairs:
        what = spec.paired[0]
        out += paired_section(
            pairs, spec.paired[1], (spec.metric, spec.metric_title.lower()), (what, what), spec.paired_reading
        )
    if plots:
        out += ["## Plots", "", *(f"![{spec.metric_title} vs resolution]({p})" for p in plots), ""]
    out += ["## Conditions", "", *_conditions(probe, rows, provenance), ""]
    return "\n".join(out)


def latex(probe: Probe, rows: list[ResultRow]) -> str:
    """A booktabs table: the figure by size, the probe's aside in parentheses."""
    spec = probe.report
    lines = [r"% Generated by cpvt-eval report; needs \usepackage{booktabs}."]
    if not rows:
        return "\n".join(lines + ["% no finished cells"]) + "\n"
    recs = records(probe, rows)
    pe = {r["label"]: r["pe"] for r in recs}
    labels, sizes, _ = pivot(recs, spec.metric)
    cells = {(r["label"], r["img_size"]): r for r in recs}
    aside, aside_text, aside_fmt = spec.aside

    def cell(label: str, size: int) -> str:
        r = cells.get((label, size))
        return "--" if r is None else f"{r[spec.metric]:.2f} ({fmt_value(r[aside], aside_fmt).replace('–', '--')})"

    body = [[tex_escape(lab), tex_escape(pe[lab])] + [cell(lab, s) for s in sizes] for lab in labels]
    lines += [
        r"\begin{table}[t]",
        r"  \centering",
        rf"  \caption{{{tex_escape(spec.title)}: {tex_escape(spec.metric_title.lower())} (\%, "
        rf"{tex_escape(probe.caption_detail(rows))}) by input size; in parentheses {aside_text}.}}",
        rf"  \label{{tab:{spec.tex_label}}}",
        *tex_tabular(["Model", "PE"] + [f"{s}px" for s in sizes], body, 2),
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"


def json_doc(probe: Probe, rows: list[ResultRow], pairs: list[dict] | None = None, provenance=None) -> dict:
    doc = {
        "schema": f"cpvt-eval/{probe.report.stem}-report-1",
        "rows": [r.to_dict() for r in ordered(rows)],
        probe.report.metric: records(probe, rows),
    }
    if pairs is not None:
        doc["pairs"] = pairs
    if provenance is not None:
        doc["provenance"] = provenance
    return doc


def plot(probe: Probe, rows: list[ResultRow]) -> bytes:
    """The figure vs resolution: one line per model (with its 95% interval), published figures as markers."""
    from .plots import interval_plot

    spec = probe.report
    recs = records(probe, rows)
    return interval_plot(recs, spec.metric, spec.published, spec.plot_ylabel, spec.plot_title)


def render(
    probe: Probe, store: RunStore, rows: list[ResultRow], formats: tuple[str, ...], out, provenance: dict | None
) -> list:
    """Write the chosen formats of the probe's rows (``<stem>.md``/``.csv``/``.tex``/``.json`` and the plot)."""
    spec = probe.report
    written = []
    if "png" in formats and rows:
        atomic_write_bytes(out / spec.plot, plot(probe, rows))
        written.append(out / spec.plot)
    plots = (spec.plot,) if (out / spec.plot).is_file() else ()
    pairs = pair_records(probe, store, rows) if any(f in formats for f in ("md", "json")) else None
    makers = {
        "md": lambda: markdown(probe, rows, pairs, plots, provenance),
        "csv": lambda: to_csv(probe, rows),
        "tex": lambda: latex(probe, rows),
        "json": lambda: json.dumps(json_doc(probe, rows, pairs, provenance), indent=2, ensure_ascii=False) + "\n",
    }
    files = spec.files()
    for fmt_ in formats:
        if fmt_ in makers:
            atomic_write_text(out / files[fmt_], makers[fmt_]())
            written.append(out / files[fmt_])
    return written
