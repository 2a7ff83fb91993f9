"""Options that several commands share (model, checkpoint, data, size, PE, device, dtype, batch, output), as
``Annotated`` types: a command declares ``model: ModelOpt`` and gets the same flag, help and panel as the others.

Defaults stay in each command's signature (``sizes: SizesOpt = [...]``), since they may differ by command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..config import APE_INTERPOLATIONS, PEOptions, RunConfig
from ..runtime import check_dtype
from .app import default_out, expand_models, parse_checkpoints, parse_model_args, parse_models, parse_sizes

MODEL, DATA, PROTOCOL, SPEED, OUTPUT = "Model", "Data", "Protocol", "Speed", "Output"

ModelOpt = Annotated[
    list[str],
    typer.Option(
        "--model",
        "-m",
        help="Model name, alias or timm tag; repeat or list several. A quoted glob (`'deit_*'`) takes every "
        "registered and timm model it matches.",
        rich_help_panel=MODEL,
    ),
]
MODELS_FILE_HELP = "A file of models, one name, tag or glob per line (# comments); adds to --model."
ModelsFileOpt = Annotated[
    Optional[Path],
    typer.Option("--models-file", metavar="FILE", help=MODELS_FILE_HELP, rich_help_panel=MODEL),
]
SIZES_HELP = "Sizes in px: `224 384 512`, `224,384`, or START:STOP:STEP with the stop included (`224:512:32`)."
SizesOpt = Annotated[list[str], typer.Option("--sizes", "-s", help=SIZES_HELP, rich_help_panel=PROTOCOL)]
DataOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--data",
        "-d",
        envvar="CPVT_EVAL_DATA",
        help="ImageNet val: a folder in any --layout, or a manifest CSV.",
        rich_help_panel=DATA,
    ),
]
CheckpointOpt = Annotated[
    list[str],
    typer.Option(
        "--checkpoint",
        "-c",
        help="NAME=SOURCE (or SOURCE with one model): a .pth/.pt/.safetensors file, an https:// URL (cached; "
        "#sha256=<hex> pins it), hf-hub:org/name, or a timm tag like deit_tiny_patch16_224.fb_in1k; "
        "#drop=<glob>,... leaves keys out.",
        rich_help_panel=MODEL,
    ),
]
OutOpt = Annotated[
    Optional[Path],
    typer.Option("--out", "-o", help="Run directory (default: runs/MODEL+MODEL...).", rich_help_panel=OUTPUT),
]
LimitOpt = Annotated[
    Optional[int],
    typer.Option(help="Deterministic class-stratified subset of N images.", rich_help_panel=DATA),
]
InterpolationOpt = Annotated[
    str,
    typer.Option(
        help="Image resize interpolation: bicubic, bilinear, nearest, or weights (each model's own).",
        rich_help_panel=PROTOCOL,
    ),
]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", "-b", min=1, rich_help_panel=SPEED)]
WorkersOpt = Annotated[
    Optional[int],
    typer.Option("--workers", "-j", min=0, help="Data loader workers (default: the cores).", rich_help_panel=SPEED),
]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.", rich_help_panel=SPEED)]
DtypeOpt = Annotated[str, typer.Option(help="fp32, bf16 or fp16 (autocast).", rich_help_panel=PROTOCOL)]
ApeInterpOpt = Annotated[
    str, typer.Option(help="APE resampling: " + ", ".join(APE_INTERPOLATIONS), rich_help_panel=PROTOCOL)
]
AntialiasOpt = Annotated[
    bool,
    typer.Option(
        help="Antialias when resampling any learned APE (DeiT: no; timm's checkpoint filters: yes).",
        rich_help_panel=PROTOCOL,
    ),
]
SincosOpt = Annotated[
    str, typer.Option(help="Sin-cos APE at a new size: regenerate or resample.", rich_help_panel=PROTOCOL)
]
WindowOpt = Annotated[
    str,
    typer.Option(
        help="Windowed attention (Swin) at a new size: keep (timm's default: window kept, grid padded) or "
        "scale (window scaled with the grid, bias tables resampled).",
        rich_help_panel=PROTOCOL,
    ),
]
ModelArgOpt = Annotated[
    list[str],
    typer.Option(
        "--model-arg",
        help="[NAME:]key=value for the model constructor, e.g. peg_positions=0,3; a,b,... is a tuple.",
        rich_help_panel=MODEL,
    ),
]
EmaOpt = Annotated[
    Optional[bool],
    typer.Option(
        "--ema/--no-ema",
        help="Take the EMA weights (model_ema, state_dict_ema) or the plain ones; unset: plain when both exist. "
        "Recorded in load_reports.json.",
        rich_help_panel=MODEL,
    ),
]
ForceOpt = Annotated[
    bool,
    typer.Option(
        "--force",
        help="Recompute every cell, even those already finished in the run directory.",
        rich_help_panel=OUTPUT,
    ),
]
JsonOpt = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Write only the rows as JSON on stdout; stderr stays quiet unless a tty.",
        rich_help_panel=OUTPUT,
    ),
]
VerboseOpt = Annotated[
    bool, typer.Option("--verbose", "-v", help="Show checkpoint load reports.", rich_help_panel=OUTPUT)
]
LayoutOpt = Annotated[
    str,
    typer.Option(
        help="Dataset layout: auto, imagefolder, flat, imagenetv2 (folders 0..999) or manifest.",
        rich_help_panel=DATA,
    ),
]
LabelsOpt = Annotated[
    Optional[Path],
    typer.Option(
        help="Label file: devkit ground truth, Kaggle LOC_val_solution.csv or a path,label manifest.",
        rich_help_panel=DATA,
    ),
]
ClassesOpt = Annotated[
    Optional[Path],
    typer.Option(
        help="File of WordNet ids (or imagenet-a / imagenet-r: their 200 classes): evaluate only these classes.",
        rich_help_panel=DATA,
    ),
]
OnBadImageOpt = Annotated[
    str,
    typer.Option(
        help="stop: exit before any cell at the first bad file; skip: leave it out, record it.",
        rich_help_panel=DATA,
    ),
]
LabelSubsetOpt = Annotated[
    Optional[str],
    typer.Option(
        "--label-subset",
        metavar="imagenet-a|imagenet-r|FILE",
        help="Take the argmax over these classes only: ImageNet-A/-R's 200 (timm's index files) or a FILE of class "
        "indices or WordNet ids. Recorded in each row.",
        rich_help_panel=DATA,
    ),
]
TestSetOpt = Annotated[
    Optional[str],
    typer.Option(
        "--test-set",
        metavar="NAME",
        help="Name of the test set the data is, for the reports (default: detected: imagenet-val, imagenet-v2, "
        "imagenet-a, imagenet-r).",
        rich_help_panel=DATA,
    ),
]
LabelKeyOpt = Annotated[
    Optional[str],
    typer.Option(
        help="Where a store holds the label: a shard's .json field, a parquet/arrow column (default: .cls, then "
        "the json's `label`; the `label` column).",
        rich_help_panel=DATA,
    ),
]
SplitOpt = Annotated[
    Optional[str],
    typer.Option(help="The split of a store that holds several (default: validation).", rich_help_panel=DATA),
]
DecodeDraftOpt = Annotated[
    bool,
    typer.Option(
        help="Decode JPEGs at a reduced scale with PIL draft() (faster, changes pixels).", rich_help_panel=DATA
    ),
]


def common_run_config(
    *,
    model: list[str],
    models_file: Path | None = None,
    sizes: list[str],
    data: Path,
    out: Path | None,
    checkpoint: list[str],
    model_arg: list[str],
    ape_interp: str,
    antialias: bool,
    sincos: str,
    window: str,
    dtype: str,
    argv: tuple[str, ...],
    **rest,
) -> RunConfig:
    """A ``RunConfig`` from the shared options as typed: models (``--models-file`` added, globs expanded), sizes,
    checkpoints and model arguments parsed, the PE options and the dtype checked; ``rest`` (limit, batch_size,
    device, layout, ...) passes through as is."""
    models = expand_models(parse_models(model, models_file))  # before the checkpoints and model arguments name them
    return RunConfig(
        models=models,
        sizes=parse_sizes(sizes),
        data=data,
        out=out or default_out(models),
        checkpoints=parse_checkpoints(checkpoint, models),
        model_args=parse_model_args(model_arg, models),
        dtype=check_dtype(dtype),
        pe=PEOptions(ape_interpolation=ape_interp, antialias=antialias, sincos=sincos, window=window),
        argv=argv,
        **rest,
    )
