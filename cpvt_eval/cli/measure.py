"""What the measuring commands share (``resolution``, ``shift``, ``agreement``): their common options, declared
once, and the one way such a command runs its probe and prints the result.

A command is its own options plus ``**shared``; ``measuring()`` adds the shared options to the signature typer
reads, so that each flag is defined here only::

    @app.command(cls=MultiValueCommand)
    @measuring(crop=True)
    def agreement(sizes: SizesOpt = ["224", "384"], **shared) -> None:
        measure(Agreement(), sizes=sizes, **shared)
"""

from __future__ import annotations

import functools
import inspect
import json
import sys
from typing import Annotated

import typer

from .. import console, interrupts
from ..config import Hooks, RunConfig
from ..errors import CpvtEvalError
from .app import guarded, parse_crop_pct
from .options import (
    PROTOCOL,
    AntialiasOpt,
    ApeInterpOpt,
    BatchSizeOpt,
    CheckpointOpt,
    ClassesOpt,
    ClassMapOpt,
    DataOpt,
    DecodeDraftOpt,
    DeviceOpt,
    DtypeOpt,
    EmaOpt,
    ForceOpt,
    InterpolationOpt,
    JsonOpt,
    LabelKeyOpt,
    LabelsOpt,
    LabelSubsetOpt,
    LayoutOpt,
    LimitOpt,
    ModelArgOpt,
    ModelOpt,
    ModelsFileOpt,
    OnBadImageOpt,
    OutOpt,
    SincosOpt,
    SplitOpt,
    TestSetOpt,
    VerboseOpt,
    WindowOpt,
    WorkersOpt,
    common_run_config,
)

CropPctOpt = Annotated[
    str,
    typer.Option(
        help="Resize shorter side to floor(size / crop_pct), then crop; `weights`: each model's own (its "
        "pretrained config).",
        rich_help_panel=PROTOCOL,
    ),
]
CropModeOpt = Annotated[
    str,
    typer.Option(
        help="timm's modes: center (shorter side to size / crop_pct, centre crop; the table's protocol), "
        "squash (both sides to size / crop_pct, centre crop), border (longer side to size / crop_pct, padded "
        "with the mean colour); full: the whole image to size x size, crop_pct unused (the official CvT 384 "
        "evaluation); weights: each model's own (a transformers ViTImageProcessor: full).",
        rich_help_panel=PROTOCOL,
    ),
]

# (name, type with its typer.Option, default), in the order --help lists them after a command's own options
SHARED = (
    ("model", ModelOpt, []),
    ("models_file", ModelsFileOpt, None),
    ("data", DataOpt, None),
    ("checkpoint", CheckpointOpt, []),
    ("out", OutOpt, None),
    ("limit", LimitOpt, None),
    ("interpolation", InterpolationOpt, "bicubic"),
    ("batch_size", BatchSizeOpt, 64),
    ("workers", WorkersOpt, None),
    ("device", DeviceOpt, "auto"),
    ("dtype", DtypeOpt, "fp32"),
    ("ape_interp", ApeInterpOpt, "bicubic"),
    ("antialias", AntialiasOpt, False),
    ("sincos", SincosOpt, "regenerate"),
    ("window", WindowOpt, "keep"),
    ("model_arg", ModelArgOpt, []),
    ("ema", EmaOpt, None),
    ("force", ForceOpt, False),
    ("json_out", JsonOpt, False),
    ("verbose", VerboseOpt, False),
    ("layout", LayoutOpt, "auto"),
    ("labels", LabelsOpt, None),
    ("classes", ClassesOpt, None),
    ("class_map", ClassMapOpt, None),
    ("label_subset", LabelSubsetOpt, None),
    ("test_set", TestSetOpt, None),
    ("label_key", LabelKeyOpt, None),
    ("split", SplitOpt, None),
    ("on_bad_image", OnBadImageOpt, "stop"),
    ("decode_draft", DecodeDraftOpt, False),
)
# the eval transform's crop, for the commands whose measure depends on it (not shift: its canvas is fixed)
CROP = (("crop_pct", CropPctOpt, "0.875"), ("crop_mode", CropModeOpt, "center"))


def measuring(crop: bool):
    """Add the shared options (and, with ``crop``, ``--crop-pct`` and ``--crop-mode``) to a command whose own
    signature ends in ``**shared``: typer reads the combined ``__signature__``, the command receives them all."""

    def decorate(own):
        own_params = inspect.signature(own, eval_str=True).parameters.values()
        mine = [p for p in own_params if p.kind is not p.VAR_KEYWORD]
        added = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
            for name, annotation, default in (*(CROP if crop else ()), *SHARED)
        ]
        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in mine] + added

        @functools.wraps(own)
        def command(**options):
            return own(**options)

        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        del command.__wrapped__  # typer must read the combined signature, not the command's own
        return command

    return decorate


def measure(probe, **options) -> None:
    """Build the run's configuration from the typed options, run ``probe``'s job, print its rows."""
    with guarded():
        json_out, verbose = options.pop("json_out"), options.pop("verbose")
        if options["data"] is None:
            raise CpvtEvalError("no dataset: pass --data DIR or set CPVT_EVAL_DATA")
        if "crop_pct" in options:
            options["crop_pct"] = parse_crop_pct(options["crop_pct"])
        cfg = common_run_config(argv=("cpvt-eval", *sys.argv[1:]), **options)
        run_and_print(cfg, probe, json_out, verbose)


def run_and_print(cfg: RunConfig, probe, json_out: bool, verbose: bool) -> None:
    """Run the probe's job (under torchrun, or alone), then print its rows: a table, or JSON only on stdout."""
    from .. import distributed
    from ..jobs.run import run_probe
    from ..probes import split

    # Machine-readable mode: stdout holds only JSON; messages go to stderr, and only when a person watches it.
    quiet = json_out and not sys.stderr.isatty()
    hooks = Hooks(
        progress=console.BarProgress(),
        notify=(lambda _m: None) if quiet else console.info,
        log=console.info if verbose and not quiet else (lambda _m: None),
    )
    # Under torchrun every process runs this command; only rank 0 reports. The session is left only after
    # rank 0 has printed (its result or the error of any rank).
    with distributed.session(cfg.device) as dist, guarded(), interrupts.installed():
        if not dist.is_main:
            console.silence()
        outcome = run_probe(cfg, probe, hooks, dist)
        if outcome.store is None:
            return
        rows = split(outcome.store.rows())[probe.name]  # a run directory may hold other probes' rows too
        root = outcome.store.root
        if json_out:
            print(json.dumps([r.to_dict() for r in rows], indent=2))
        elif probe.report is None:
            console.print_results(rows)
            console.info(f"results: {root / 'results.csv'}, {root / 'results.md'}")
        else:
            console.print_probe_results(rows, probe.report.console_title, probe.console_cell)
            files = probe.report.files()
            console.info(f"results: {root / files['csv']}, {root / files['md']}")
