"""``cpvt-eval demo``: the offline demonstration (procedural dataset, shipped toy checkpoints, no network)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import console
from ..errors import CpvtEvalError
from .app import app, guarded
from .parsing import MultiValueCommand, parse_models, parse_sizes


@app.command(
    "demo",
    cls=MultiValueCommand,
    epilog="Example: cpvt-eval demo --out runs/demo   (--per-class 200 for the 2,000 images the README reports)",
)
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory.")] = Path("runs/demo"),
    model: Annotated[
        Optional[list[str]],
        typer.Option("--model", "-m", help="Toy models [default: deit_toy cpvt_toy deit_toy_nope]."),
    ] = None,
    all_models: Annotated[bool, typer.Option("--all", help="Every toy model with a shipped checkpoint.")] = False,
    sizes: Annotated[
        Optional[list[str]], typer.Option("--sizes", "-s", help="Sizes in px; 56 is native [default: 56 96 112 128].")
    ] = None,
    per_class: Annotated[int, typer.Option(min=1, help="Validation images per class (10 classes).")] = 50,
    seed: Annotated[int, typer.Option(help="Seed of the procedural dataset.")] = 0,
    cache_dir: Annotated[
        Optional[Path], typer.Option(help="Where the dataset is written [default: ~/.cache/cpvt-eval].")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1)] = 64,
    workers: Annotated[Optional[int], typer.Option("--workers", "-j", min=0, help="[default: cores]")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    throughput: Annotated[
        bool, typer.Option(help="Time the models after each size's pass (images/s, a short timing).")
    ] = True,
    skip: Annotated[
        list[str], typer.Option("--skip", help="Probes to leave out (`shift,agreement`); default: every probe runs.")
    ] = [],  # noqa: B006 (typer reads the default; it is never mutated)
    set_: Annotated[
        list[str],
        typer.Option("--set", help="A probe's setting over its quick one: PROBE:KEY=VALUE (`shift:epochs=2`)."),
    ] = [],  # noqa: B006
    json_out: Annotated[bool, typer.Option("--json", help="Write the rows as JSON on stdout.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show dataset and checkpoint messages.")] = False,
) -> None:
    """Measure toy DeiT (learned PE) and CPVT (PEG) models offline with every probe, on a procedural dataset.

    The models were trained at 56 px with patch 4 (a 14x14 grid, as patch 16 at 224); 96/112/128 px give the
    24/28/32 grids of 384/448/512 px. Writes each probe's reports plus paper.md (the demo next to the paper).
    """
    from ..demo.run import DEFAULT_MODELS, DEMO_MODELS, DEMO_SIZES, FINDING, DemoConfig, run_demo

    with guarded(run_dir=True):
        models = parse_models(model or []) or (DEMO_MODELS if all_models else DEFAULT_MODELS)
        cfg = DemoConfig(
            out=out,
            models=models,
            sizes=parse_sizes(sizes) if sizes else DEMO_SIZES,
            per_class=per_class,
            seed=seed,
            cache_dir=cache_dir,
            batch_size=batch_size,
            workers=workers,
            device=device,
            throughput=throughput,
            skip=tuple(p.strip() for value in skip for p in value.split(",") if p.strip()),
            settings=parse_probe_settings(set_),
        )
        log = console.info if verbose else (lambda _m: None)
        result = run_demo(cfg, console.BarProgress(), log=log, argv=["cpvt-eval", *sys.argv[1:]])
        from ..probes import PROBES
        from ..results import FIRST_PROBE

        if json_out:
            print(json.dumps([r.to_dict() for rows in result.rows.values() for r in rows], indent=2))
            return
        root = result.outcome.store.root
        for name, rows in result.rows.items():
            if not rows:
                continue
            spec = PROBES[name].report
            console.print_table(rows, spec.metric.console[0] or spec.title, spec.console_cell)
            if name == FIRST_PROBE:  # the accuracy table, and the paper's beside it
                console.out.print("demo vs paper (top-1 %, change from native size; the paper's size in brackets):")
                console.out.print(result.paper_table, markup=False, highlight=False)
                console.out.print(FINDING, markup=False, highlight=False)
        files = [root / PROBES[name].report.files()["md"] for name, rows in result.rows.items() if rows]
        console.info(f"results: {', '.join(str(f) for f in files)}, {root / 'paper.md'}")


def parse_probe_settings(values: list[str]) -> dict[str, dict]:
    """``PROBE:KEY=VALUE`` settings, numbers and booleans as such."""
    from .parsing import coerce

    out: dict[str, dict] = {}
    for value in values:
        probe, sep, rest = value.partition(":")
        key, eq, raw = rest.partition("=")
        if not sep or not eq or not probe.strip() or not key.strip():
            raise CpvtEvalError(f"--set {value}: expected PROBE:KEY=VALUE, e.g. shift:epochs=2")
        out.setdefault(probe.strip(), {})[key.strip().replace("-", "_")] = coerce(raw.strip())
    return out
