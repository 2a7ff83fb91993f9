"""The one report pipeline: every probe's reports, built from what it declares (``probes.base.ReportSpec``, its
typed columns, ``Probe.outcomes``):

* Markdown: the figure by size (pivot), the cells with the figure's 95% interval, the change from the native size
  and every column the probe gives a Markdown header, the declared sections, the paired tests between models,
  plots, conditions;
* CSV: the rows' columns, the probe's columns, and the probe's records (published figures);
* LaTeX: a booktabs table of the figure by size, the probe's aside in parentheses, and the sections' tables;
* JSON: the flat rows, the records, the sections, the paired tests and the provenance;
* PNG: the figure against size with its intervals, the sections' plots and the probe's own figures.

Nothing is recomputed: the paired tests and figures read the stored per-cell arrays.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..pe_families import family_title
from ..probes import Probe, column_names, probe_columns
from ..results import ResultRow, RunStore, atomic_write_bytes, atomic_write_text, row_key, wilson_interval
from .records import by_family, mcnemar_pairs, ordered, round_or_none, row_labels
from .sections import sections_of
from .tables import (
    data_conditions,
    fmt_value,
    md_table,
    paired_section,
    pivot,
    provenance_line,
    rows_frame,
    tex_escape,
    tex_table,
    tex_tabular,
)


def _interval(probe: Probe, r: ResultRow) -> tuple[float | None, float | None]:
    metric = probe.report.metric
    if metric.successes:
        if getattr(r, metric.column) is None:
            return None, None
        return wilson_interval(int(getattr(r, metric.successes)), int(getattr(r, metric.trials)))
    low, _, high = str(getattr(r, metric.interval, "") or "").partition("-")
    try:
        return float(low), float(high)
    except ValueError:
        return None, None


def records(probe: Probe, rows: list[ResultRow]) -> list[dict]:
    """One record per cell: the figure with its 95% interval and its change from the model's native size, the
    accuracy, the probe's columns and the probe's own records."""
    metric = probe.report.metric.column
    labels = row_labels(rows)
    by_cell = {(labels[row_key(r)], r.img_size): r for r in rows}
    out = []
    for r in ordered(rows):
        label = labels[row_key(r)]
        lo, hi = _interval(probe, r)
        value = getattr(r, metric)
        native = by_cell.get((label, r.native_size)) if r.native_size else None
        base = None if native is None else getattr(native, metric)
        out.append(
            {
                "label": label,
                "model": r.model,
                "pe": r.pe,
                "pe_family": family_title(r.pe),
                "img_size": r.img_size,
                **({"probe": r.probe} if r.probe else {}),
                "n_images": r.n_images,
                "correct1": r.correct1,
                "top1": round_or_none(r.top1),
                "top5": round_or_none(r.top5),
                metric: round_or_none(value),
                f"{metric}_ci95_low": round_or_none(lo),
                f"{metric}_ci95_high": round_or_none(hi),
                "native_size": r.native_size,
                "delta_native": None if value is None or base is None else round_or_none(value - base),
                **{name: getattr(r, name) for name in column_names(probe.row_type)},
                **probe.report.records(r),
            }
        )
    return out


def pair_records(probe: Probe, store: RunStore, rows: list[ResultRow]) -> list[dict]:
    """Exact McNemar tests between every two models at the same size under the same conditions (the identity's
    ``shared`` fields), paired on the same trials (``probe.outcomes``): does one succeed where the other does not?"""
    from ..results import CellId

    pairs = probe.report.pairs
    return mcnemar_pairs(
        rows,
        lambda r: probe.outcomes(store, r),
        lambda r: CellId.of(r).shared(),
        probe.report.metric.column,
        pairs.units,
        pairs.what,
    )


def to_csv(probe: Probe, rows: list[ResultRow]) -> str:
    """The flat rows: the common columns, the probe's columns, and the probe's records (published figures)."""
    df = rows_frame(rows)
    ordered_rows = ordered(rows)  # the frame's order
    for f in probe_columns(probe.row_type):
        df[f.name] = [getattr(r, f.name) for r in ordered_rows]
        if "int" in str(f.type):
            df[f.name] = df[f.name].astype("Int64")
    extras = [probe.report.records(r) for r in ordered_rows]
    for name in dict.fromkeys(k for e in extras for k in e):
        # the difference to a published figure, named after the figure (top1_vs_published)
        column_name = f"{probe.report.metric.column}_vs_published" if name == "delta_published" else name
        df[column_name] = [e.get(name) for e in extras]
    return df.to_csv(index=False, float_format="%.4f", lineterminator="\n")


def _conditions(probe: Probe, rows: list[ResultRow], provenance: dict | None) -> list[str]:
    def values(name: str) -> str:
        return ", ".join(f"`{v}`" for v in dict.fromkeys(str(getattr(r, name)) for r in rows))

    rows = ordered(rows)
    datasets = dict.fromkeys(
        (r.dataset, getattr(r, "images_in_set", None) or r.n_images, r.dataset_fingerprint) for r in rows
    )
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
        *probe.report.conditions(rows),
        "- normalisation (the weights' own data config): "
        + ", ".join(
            dict.fromkeys(
                f"{r.model}: mean {r.mean or '?'}, std {r.std or '?'}"
                + (f" (from `{r.data_config_source}`)" if r.data_config_source else "")
                for r in rows
            )
        ),
        "- PE policy: " + ", ".join(dict.fromkeys(f"{r.model} {r.img_size}px: {r.pe_policy}" for r in rows)),
        f"- dtype {values('dtype')}, device {values('device')}",
        *(line for section in sections_of(probe.report.sections) for line in section.conditions(rows)),
        f"- versions: {values('versions')}",
    ]
    if provenance:
        lines.append(provenance_line(provenance))
    return lines + data_conditions(rows)


def _cells_columns(probe: Probe) -> list[tuple[str, object]]:
    """The cells table's columns after model and size: ``(header, how)``; ``how`` is ``(record key, format)``, or
    None for the figure's interval. The figure leads unless the probe's columns place it."""
    spec = probe.report
    metric = spec.metric.column
    own = [f for f in probe_columns(probe.row_type) if f.metadata.get("md")]
    columns: list[tuple[str, object]] = []
    if metric not in {f.name for f in own}:
        columns += [(spec.metric.name.lower(), (metric, ".2f")), (spec.metric.ci_title, None)]
    for f in own:
        columns.append((f.metadata["md"], (f.name, f.metadata.get("fmt", ""))))
        if f.name == metric:
            columns.append((spec.metric.ci_title, None))
    return columns + [(header, (key, form)) for header, key, form in spec.cells.extra]


def markdown(
    probe: Probe,
    rows: list[ResultRow],
    pairs: list[dict] | None = None,
    plots: tuple[str, ...] = (),
    provenance: dict | None = None,
) -> str:
    """The figure by size (pivot), then each cell with its interval and the probe's columns, the sections, paired
    tests, plots, conditions."""
    spec = probe.report
    if not rows:
        return f"# {spec.title}\n\nNo finished cells yet.\n"
    metric = spec.metric.column
    recs = records(probe, rows)
    pe = {r["label"]: r["pe"] for r in recs}
    labels, sizes, value = pivot(recs, metric)
    out = [f"# {spec.title}", "", f"## {spec.metric.title} (%)", ""]
    if spec.cells.by_family:
        # one table, grouped by PE family: APE, PEG, RoPE, relative bias, convolution, none
        body = [
            [family_title(pe[lab]), lab, pe[lab]] + [fmt_value(value.get((lab, s)), ".2f") for s in sizes]
            for lab in by_family(labels, pe)
        ]
        out += [md_table(["PE family", "model", "PE"] + [f"{s}px" for s in sizes], body, align_right_from=3), ""]
    else:
        body = [[lab, pe[lab]] + [fmt_value(value.get((lab, s)), ".2f") for s in sizes] for lab in labels]
        out += [md_table(["model", "PE"] + [f"{s}px" for s in sizes], body, align_right_from=2), ""]

    columns = _cells_columns(probe)

    def cell(r: dict, how) -> str:
        if how is None:
            return f"{fmt_value(r[f'{metric}_ci95_low'], '.2f')}–{fmt_value(r[f'{metric}_ci95_high'], '.2f')}"
        key, form = how
        if callable(form):
            return form(r)
        return fmt_value(r[key], form) if form else str(r[key] if r[key] is not None else "–")

    # text columns that lead the probe's own (the shift mode) stay left-aligned, as model and size
    leading_text = next((i for i, (_, how) in enumerate(columns) if how is None or how[1] != ""), len(columns))
    body = [[r["label"], f"{r['img_size']}px"] + [cell(r, how) for _, how in columns] for r in recs]
    out += [f"## {spec.metric.name} by size: {spec.cells.heading}", ""]
    out += [md_table(["model", "size"] + [h for h, _ in columns], body, align_right_from=2 + leading_text), ""]
    out += spec.cells.note(recs, rows)
    sections = sections_of(spec.sections)
    for section in sections:
        if not section.placed_after_plots:
            out += section.md(spec, recs, rows)
    if pairs:
        p = spec.pairs
        out += paired_section(pairs, p.test, (metric, spec.metric.name.lower()), (p.what, p.says), p.reading)
    if plots:
        names = {spec.plot.file: f"{spec.metric.name} vs resolution"}
        for section in sections:
            names.update(section.plot_names())
        names.update(_figure_names(spec, sorted({r.img_size for r in rows})))
        out += ["## Plots", "", *(f"![{names.get(p, p)}]({p})" for p in plots), ""]
    for section in sections:
        if section.placed_after_plots:
            out += section.md(spec, recs, rows)
    out += ["## Conditions", "", *_conditions(probe, rows, provenance), ""]
    return "\n".join(out)


def _figure_names(spec, sizes: list[int]) -> dict[str, str]:
    """The files of the probe's own figures and their titles (one of each per size where the file names its size)."""
    out = {}
    for f in spec.figures:
        for size in sizes if f.per_size else [None]:
            out[f.file.format(size=size)] = f.title.format(size=size)
    return out


def latex(probe: Probe, rows: list[ResultRow]) -> str:
    """A booktabs table of the figure by size (the probe's aside in parentheses), then the sections' tables."""
    spec = probe.report
    lines = [r"% Generated by cpvt-eval report; needs \usepackage{booktabs}."]
    if not rows:
        return "\n".join(lines + ["% no finished cells"]) + "\n"
    metric = spec.metric.column
    recs = records(probe, rows)
    pe = {r["label"]: r["pe"] for r in recs}
    labels, sizes, _ = pivot(recs, metric)
    cells = {(r["label"], r["img_size"]): r for r in recs}

    def cell(label: str, size: int) -> str:
        r = cells.get((label, size))
        if r is None or r[metric] is None:
            return "--"
        return (f"{r[metric]:.2f}" + spec.tex.aside(r)).replace("–", "--")

    if spec.cells.by_family:
        header, n_left = ["PE family", "Model", "PE"], 3
        body = [
            [tex_escape(family_title(pe[lab])), tex_escape(lab), tex_escape(pe[lab])] + [cell(lab, s) for s in sizes]
            for lab in by_family(labels, pe)
        ]
    else:
        header, n_left = ["Model", "PE"], 2
        body = [[tex_escape(lab), tex_escape(pe[lab])] + [cell(lab, s) for s in sizes] for lab in labels]
    tabular = tex_tabular(header + [f"{s}px" for s in sizes], body, n_left)
    lines += tex_table(tex_escape(spec.tex.caption(rows, recs)), spec.tex.label, tabular)
    for section in sections_of(spec.sections):
        lines += section.tex(rows)
    return "\n".join(lines) + "\n"


def json_doc(probe: Probe, rows: list[ResultRow], pairs: list[dict] | None = None, provenance=None) -> dict:
    """Everything the other formats show, as one JSON document."""
    spec = probe.report
    recs = records(probe, rows)
    doc = {
        "schema": spec.schema or f"cpvt-eval/{spec.stem}-report-1",
        "rows": [r.to_dict() for r in ordered(rows)],
        spec.metric.column: recs,
    }
    for section in sections_of(spec.sections):
        doc.update(section.json(spec, recs, rows))
    if pairs is not None:
        doc["pairs"] = pairs
    if provenance is not None:
        doc["provenance"] = provenance
    return doc


def pngs(probe: Probe, store: RunStore, rows: list[ResultRow]) -> dict[str, bytes]:
    """The figure vs resolution (one line per model with its 95% interval, published figures as markers, a star on
    each curve's best size when declared), the sections' plots and the probe's own figures."""
    from .plots import interval_plot

    spec = probe.report
    metric = spec.metric.column
    recs = [r for r in records(probe, rows) if r[metric] is not None and r[f"{metric}_ci95_low"] is not None]
    out = {}
    if recs:
        best = None
        if spec.plot.best:
            from .records import best_size_records

            best = {b["label"]: b["best_size"] for b in best_size_records(recs, metric)}
        out[spec.plot.file] = interval_plot(recs, metric, spec.plot.published, spec.plot.ylabel, spec.plot.title, best)
    for section in sections_of(spec.sections):
        out.update(section.png(rows))
    for figure in spec.figures:
        if figure.per_size:
            for size in sorted({r.img_size for r in rows}):
                out[figure.file.format(size=size)] = figure.draw(store, [r for r in rows if r.img_size == size])
        else:
            out[figure.file] = figure.draw(store, rows)
    return out


def render(
    probe: Probe,
    store: RunStore,
    rows: list[ResultRow],
    formats: tuple[str, ...],
    out: Path,
    provenance: dict | None,
    pairs: bool = False,
) -> list[Path]:
    """Write the chosen formats of the probe's rows: ``<stem>.md/.csv/.tex/.json`` and the plots (written first, so
    that the Markdown links the ones present). ``pairs``: the paired tests of a probe that shows them only when
    asked."""
    spec = probe.report
    written = []
    if "png" in formats and rows:
        for name, data in pngs(probe, store, rows).items():
            atomic_write_bytes(out / name, data)
            written.append(out / name)
    names = [spec.plot.file, *(n for s in sections_of(spec.sections) for n in s.plot_names())]
    names += list(_figure_names(spec, sorted({r.img_size for r in rows})))
    plots = tuple(name for name in names if (out / name).is_file())
    asked = spec.pairs is not None and (spec.pairs.always or pairs)
    pair_list = pair_records(probe, store, rows) if asked and any(f in formats for f in ("md", "json")) else None
    makers = {
        "md": lambda: markdown(probe, rows, pair_list, plots, provenance),
        "csv": lambda: to_csv(probe, rows),
        "tex": lambda: latex(probe, rows),
        "json": lambda: json.dumps(json_doc(probe, rows, pair_list, provenance), indent=2, ensure_ascii=False) + "\n",
    }
    files = spec.files()
    for fmt_ in formats:
        if fmt_ in makers:
            atomic_write_text(out / files[fmt_], makers[fmt_]())
            written.append(out / files[fmt_])
    return written
