"""``cpvt-eval demo``: the offline demonstration (procedural dataset, shipped toy checkpoints, no network)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import console
from .app import MultiValueCommand, app, guarded, parse_models, parse_sizes


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
    throughput: Annotated[bool, typer.Option(help="Measure model-only images/s per cell.")] = True,
    shift_epochs: Annotated[
        int,
        typer.Option(
            "--shift-epochs", min=0, help="Passes of the translation probe (consistency, shift.md); 0 leaves it out."
        ),
    ] = 1,
    agreement: Annotated[
        bool, typer.Option(help="Agreement of each size with the native size's predictions (agreement.md).")
    ] = True,
    json_out: Annotated[bool, typer.Option("--json", help="Write the rows as JSON on stdout.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show dataset and checkpoint messages.")] = False,
) -> None:
    """Run the resolution job offline on a procedural dataset with toy DeiT (learned PE) and CPVT (PEG) models.

    The models were trained at 56 px with patch 4 (a 14x14 grid, as patch 16 at 224); 96/112/128 px give the
    24/28/32 grids of 384/448/512 px. Writes the usual reports plus paper.md (the demo next to the paper).
    """
    from ..demo.run import DEFAULT_MODELS, DEMO_MODELS, DEMO_SIZES, FINDING, DemoConfig, run_demo

    with guarded():
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
            shift_epochs=shift_epochs,
            agreement=agreement,
        )
        log = console.info if verbose else (lambda _m: None)
        result = run_demo(cfg, console.BarProgress(), log=log, argv=["cpvt-eval", *sys.argv[1:]])
        from ..probes import Agreement, Shift, split

        rows = split(result.outcome.store.rows())["resolution"]
        if json_out:
            print(json.dumps([r.to_dict() for r in rows], indent=2))
        else:
            console.print_results(rows)
            console.info("demo vs paper (top-1 %, change from native size; the paper's size in brackets):")
            console.info(result.paper_table)
            console.info(FINDING)
            root = result.outcome.store.root
            more = ""
            for probe, probe_rows in ((Shift(), result.shift_rows), (Agreement(), result.agreement_rows)):
                if probe_rows:
                    console.print_probe_results(probe_rows, probe.report.console_title, probe.console_cell)
                    more += f", {root / probe.report.files()['md']}"
            console.info(f"results: {root / 'results.csv'}, {root / 'results.md'}, {root / 'paper.md'}{more}")
