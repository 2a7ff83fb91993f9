"""The measuring commands, one per registered probe (``cpvt-eval resolution``, ``shift``, ``agreement``, ...),
generated here from what each probe declares: its options are the fields of its ``Settings`` (``probes.option``),
beside the options every measuring command shares (declared once, below), its default sizes and worked example
come from its ``ReportSpec.usage``, and its help from its docstring. A probe that shares passes takes ``--also``:
further probes measured on the same run, each image decoded once per size for all that share the pass.
"""

from __future__ import annotations

import inspect
import json
import sys
import typing
from dataclasses import fields
from typing import Annotated, Optional

import typer

from .. import console, interrupts
from ..config import Hooks, RunConfig
from ..errors import CpvtEvalError
from .app import app, guarded
from .options import (
    OUTPUT,
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
    SizesOpt,
    SplitOpt,
    TestSetOpt,
    VerboseOpt,
    WindowOpt,
    WorkersOpt,
    common_run_config,
)
from .parsing import OPTIONAL_VALUE_OPTIONS, MultiValueCommand, parse_crop_pct

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
AlsoOpt = Annotated[
    list[str],
    typer.Option(
        "--also",
        help="Further probes on the same models and sizes (`calibration,agreement`), with their default settings; "
        "the probes that read the same images share each size's pass.",
        rich_help_panel=OUTPUT,
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
# the eval transform's crop, for the probes that decode with it (not shift: its canvas is fixed)
CROP = (("crop_pct", CropPctOpt, "0.875"), ("crop_mode", CropModeOpt, "center"))


def settings_options(probe_cls) -> list[inspect.Parameter]:
    """The command-line options of a probe's ``Settings``: one per field with a help text, typed as the field."""
    hints = typing.get_type_hints(probe_cls.Settings)
    params = []
    for f in fields(probe_cls.Settings):
        meta = f.metadata
        if meta.get("help") is None:
            continue  # a fixed setting, not an option
        kind = hints[f.name]
        if type(None) in typing.get_args(kind):
            kind = Optional[next(a for a in typing.get_args(kind) if a is not type(None))]
        decls = [meta["flag"]] if meta.get("flag") else []
        option = typer.Option(
            *decls,
            help=meta["help"],
            min=meta.get("min"),
            metavar=meta.get("metavar") or None,
            rich_help_panel=meta.get("panel") or probe_cls.name.capitalize(),
        )
        annotation = Annotated[kind, option]
        params.append(
            inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=annotation)
        )
        if meta.get("alone") is not None:
            OPTIONAL_VALUE_OPTIONS[meta.get("flag") or "--" + f.name.replace("_", "-")] = meta["alone"]
    return params


def probe_command(probe_cls) -> None:
    """Register the command of a probe class on the app: its settings' options, ``--sizes`` with its defaults,
    ``--also`` when it shares passes, the crop options when it decodes with the eval transform, the shared ones."""
    usage = probe_cls.report.usage
    own = settings_options(probe_cls)
    names = [p.name for p in own]
    param = inspect.Parameter
    head = [param("sizes", param.KEYWORD_ONLY, default=[str(s) for s in usage.sizes], annotation=SizesOpt)]
    from ..probes.base import Probe

    crop = probe_cls.transform is Probe.transform  # it decodes with the eval transform
    if crop and probe_cls.views is Probe.views:  # it can share a pass with another probe
        head.append(param("also", param.KEYWORD_ONLY, default=[], annotation=AlsoOpt))
    added = [
        param(name, param.KEYWORD_ONLY, default=default, annotation=annotation)
        for name, annotation, default in (*(CROP if crop else ()), *SHARED)
    ]
    params = head + own + added

    def command(**options) -> None:
        with guarded(run_dir=True):
            from ..probes import make

            settings = {name: options.pop(name) for name in names}
            also = [p.strip() for value in options.pop("also", []) for p in value.split(",") if p.strip()]
            probes = [make(probe_cls.name, **settings), *(make(name) for name in dict.fromkeys(also))]
            measure(probes, **options)

    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = probe_cls.__doc__
    command.__name__ = probe_cls.name
    epilog = f"Example: {usage.example}" if usage.example else None
    app.command(probe_cls.name, cls=MultiValueCommand, epilog=epilog)(command)


def measure(probes: list, **options) -> None:
    """Build the run's configuration from the typed options, run the probes' job, print their rows."""
    json_out, verbose = options.pop("json_out"), options.pop("verbose")
    if options["data"] is None:
        raise CpvtEvalError("no dataset: pass --data DIR or set CPVT_EVAL_DATA")
    if "crop_pct" in options:
        options["crop_pct"] = parse_crop_pct(options["crop_pct"])
    cfg = common_run_config(argv=("cpvt-eval", *sys.argv[1:]), **options)
    run_and_print(cfg, probes, json_out, verbose)


def run_and_print(cfg: RunConfig, probes: list, json_out: bool, verbose: bool) -> None:
    """Run the probes' job (under torchrun, or alone), then print their rows: a table each on stdout, or JSON only."""
    from ..runtime import lasting_imports

    with lasting_imports("cpvt_eval.jobs.run"):
        from .. import distributed
        from ..jobs.run import run_probes
        from ..probes import split

    # Machine-readable mode: stdout holds only JSON; messages go to stderr, and only when a person watches it.
    quiet = json_out and not sys.stderr.isatty()
    hooks = Hooks(
        progress=console.BarProgress(enabled=False if quiet else None),
        notify=(lambda _m: None) if quiet else console.info,
        log=console.info if verbose and not quiet else (lambda _m: None),
    )
    # Under torchrun every process runs this command; only rank 0 reports. The session is left only after
    # rank 0 has printed (its result or the error of any rank).
    with distributed.session(cfg.device) as dist, guarded(run_dir=True), interrupts.installed():
        if not dist.is_main:
            console.silence()
        outcome = run_probes(cfg, probes, hooks, dist)
        if outcome.store is None:
            return
        by_probe = split(outcome.store.rows())  # a run directory may hold other probes' rows too
        root = outcome.store.root
        if json_out:
            print(json.dumps([r.to_dict() for p in probes for r in by_probe[p.name]], indent=2))
            return
        for p in probes:
            spec = p.report
            console.print_table(by_probe[p.name], spec.metric.console[0] or spec.title, spec.console_cell)
            files = spec.files()
            console.info(f"results: {root / files['csv']}, {root / files['md']}")


def register_all() -> None:
    """A command for every registered probe, in the registry's order."""
    from ..probes import PROBES

    for probe_cls in PROBES.values():
        probe_command(probe_cls)
