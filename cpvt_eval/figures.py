"""Figures as PNG bytes: a matplotlib figure with an Agg canvas (no pyplot global state, no display), and its bytes.
Shared by the reports' plots and any probe that draws a figure of its own."""

from __future__ import annotations

import io


def new_figure(width: float = 6.4, height: float = 4.2):
    """An empty figure on an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig) -> bytes:
    """The figure as PNG bytes, laid out tightly, without the software stamp (so equal figures give equal bytes)."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()
