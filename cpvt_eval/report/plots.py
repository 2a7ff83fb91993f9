"""Plots of the stored rows (PNG bytes): a figure with its intervals against resolution, and throughput."""

from __future__ import annotations

from ..figures import new_figure, png_bytes
from ..results import ResultRow
from .records import throughput_records

PLOT_THROUGHPUT = "throughput_vs_resolution.png"


def interval_plot(
    records: list[dict],
    value: str,
    published: str | None,
    ylabel: str,
    title: str,
    best: dict[str, int] | None = None,
) -> bytes:
    """One line per record label of ``value`` against size with its 95% interval (``value_ci95_low/high``), and the
    ``published`` figures as markers of the same colour; ``best`` (label -> size) marks each curve's best size."""
    from matplotlib.lines import Line2D

    fig = new_figure()
    ax = fig.add_subplot()
    any_published = False
    for i, label in enumerate(dict.fromkeys(r["label"] for r in records)):
        mine = [r for r in records if r["label"] == label]
        color = f"C{i % 10}"
        xs, ys = [r["img_size"] for r in mine], [r[value] for r in mine]
        ax.plot(xs, ys, color=color, marker="o", label=label)
        # the interval as drawn from its ends: a bootstrap interval of a biased figure (an ECE) need not hold it
        lows, highs = [r[f"{value}_ci95_low"] for r in mine], [r[f"{value}_ci95_high"] for r in mine]
        ax.vlines(xs, lows, highs, color=color, linewidth=1)
        ax.scatter(xs + xs, lows + highs, marker="_", s=60, color=color, linewidths=1)
        top = [r for r in mine if best and r["img_size"] == best.get(label)]
        if top:
            ax.scatter([top[0]["img_size"]], [top[0][value]], marker="*", s=160, color=color, zorder=4)
        pub = [(r["img_size"], r[published]) for r in mine if published and r[published] is not None]
        if pub:
            any_published = True
            ax.scatter([p[0] for p in pub], [p[1] for p in pub], marker="x", s=60, color=color, zorder=3)
    handles, names = ax.get_legend_handles_labels()
    if any_published:
        handles.append(Line2D([], [], color="0.3", marker="x", linestyle="none"))
        names.append("published")
    if best:
        handles.append(Line2D([], [], color="0.3", marker="*", markersize=10, linestyle="none"))
        names.append("best size")
    ax.legend(handles, names, fontsize="small")
    ax.set_xlabel("input size (px)")
    ax.set_ylabel(ylabel)
    ax.set_xticks(sorted({r["img_size"] for r in records}))
    ax.set_title(title, fontsize="medium")
    ax.grid(alpha=0.3)
    return png_bytes(fig)


def plot_throughput(rows: list[ResultRow]) -> bytes | None:
    """Images/s vs resolution (log scale), one line per model; None when no cell was timed."""
    from matplotlib.ticker import FuncFormatter

    tp = throughput_records(rows)
    if not tp:
        return None
    fig = new_figure()
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
    return png_bytes(fig)
