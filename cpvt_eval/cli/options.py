"""Options that several commands share (model, checkpoint, data, size, PE, device, dtype, batch, output), as
``Annotated`` types: a command declares ``model: ModelOpt`` and gets the same flag, help and panel as the others.

Defaults stay in each command's signature (``sizes: SizesOpt = [...]``), since they may differ by command.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..config import APE_INTERPOLATIONS, PEOptions, RunConfig
from ..runtime import check_dtype
from .parsing import default_out, expand_models, parse_checkpoints, parse_model_args, parse_models, parse_sizes

MODEL, DATA, PROTOCOL, SPEED, OUTPUT = "Model", "Data", "Protocol", "Speed", "Output"
# typer.Option in each panel of --help
_model_option = partial(typer.Option, rich_help_panel=MODEL)
_data_option = partial(typer.Option, rich_help_panel=DATA)
_protocol_option = partial(typer.Option, rich_help_panel=PROTOCOL)
_speed_option = partial(typer.Option, rich_help_panel=SPEED)
_output_option = partial(typer.Option, rich_help_panel=OUTPUT)

ModelOpt = Annotated[
    list[str],
    _model_option(
        "--model",
        "-m",
        help="Model name, alias or timm tag, a transformers save_pretrained folder, or hf-hub:org/name; repeat or "
        "list several. A quoted glob (`'deit_*'`) takes every registered and timm model it matches.",
    ),
]
MODELS_FILE_HELP = "A file of models, one name, tag or glob per line (# comments); adds to --model."
ModelsFileOpt = Annotated[Optional[Path], _model_option("--models-file", metavar="FILE", help=MODELS_FILE_HELP)]
SIZES_HELP = "Sizes in px: `224 384 512`, `224,384`, or START:STOP:STEP with the stop included (`224:512:32`)."
SizesOpt = Annotated[list[str], _protocol_option("--sizes", "-s", help=SIZES_HELP)]
DataOpt = Annotated[
    Optional[Path],
    _data_option(
        "--data", "-d", envvar="CPVT_EVAL_DATA", help="ImageNet val: a folder in any --layout, or a manifest CSV."
    ),
]
CheckpointOpt = Annotated[
    list[str],
    _model_option(
        "--checkpoint",
        "-c",
        help="NAME=SOURCE (or SOURCE with one model): a .pth/.pt/.safetensors file, an https:// URL (cached; "
        "#sha256=<hex> pins it), hf-hub:org/name, or a timm tag like deit_tiny_patch16_224.fb_in1k; "
        "#drop=<glob>,... leaves keys out.",
    ),
]
OutOpt = Annotated[Optional[Path], _output_option("--out", "-o", help="Run directory (default: runs/MODEL+MODEL...).")]
LimitOpt = Annotated[Optional[int], _data_option(help="Deterministic class-stratified subset of N images.")]
InterpolationOpt = Annotated[
    str, _protocol_option(help="Image resize interpolation: bicubic, bilinear, nearest, or weights (each model's own).")
]
BatchSizeOpt = Annotated[int, _speed_option("--batch-size", "-b", min=1)]
WorkersOpt = Annotated[
    Optional[int], _speed_option("--workers", "-j", min=0, help="Data loader workers (default: the cores).")
]
DeviceOpt = Annotated[str, _speed_option(help="auto, cpu, cuda or cuda:N.")]
DtypeOpt = Annotated[str, _protocol_option(help="fp32, bf16 or fp16 (autocast).")]
ApeInterpOpt = Annotated[str, _protocol_option(help="APE resampling: " + ", ".join(APE_INTERPOLATIONS))]
AntialiasOpt = Annotated[
    bool, _protocol_option(help="Antialias when resampling any learned APE (DeiT: no; timm's checkpoint filters: yes).")
]
SincosOpt = Annotated[str, _protocol_option(help="Sin-cos APE at a new size: regenerate or resample.")]
WindowOpt = Annotated[
    str,
    _protocol_option(
        help="Windowed attention (Swin) at a new size: keep (timm's default: window kept, grid padded) or "
        "scale (window scaled with the grid, bias tables resampled)."
    ),
]
ModelArgOpt = Annotated[
    list[str],
    _model_option(
        "--model-arg", help="[NAME:]key=value for the model constructor, e.g. peg_positions=0,3; a,b,... is a tuple."
    ),
]
EmaOpt = Annotated[
    Optional[bool],
    _model_option(
        "--ema/--no-ema",
        help="Take the EMA weights (model_ema, state_dict_ema) or the plain ones; unset: plain when both exist. "
        "Recorded in load_reports.json.",
    ),
]
ForceOpt = Annotated[
    bool, _output_option("--force", help="Recompute every cell, even those already finished in the run directory.")
]
JsonOpt = Annotated[
    bool, _output_option("--json", help="Write only the rows as JSON on stdout; stderr stays quiet unless a tty.")
]
VerboseOpt = Annotated[bool, _output_option("--verbose", "-v", help="Show checkpoint load reports.")]
LayoutOpt = Annotated[
    str, _data_option(help="Dataset layout: auto, imagefolder, flat, imagenetv2 (folders 0..999) or manifest.")
]
LabelsOpt = Annotated[
    Optional[Path],
    _data_option(help="Label file: devkit ground truth, Kaggle LOC_val_solution.csv or a path,label manifest."),
]
ClassesOpt = Annotated[
    Optional[Path],
    _data_option(
        help="File of WordNet ids (or imagenet-a / imagenet-r: their 200 classes): evaluate only these classes."
    ),
]
ClassMapOpt = Annotated[
    Optional[Path],
    _data_option(
        "--class-map",
        metavar="FILE",
        help="The models' class names: one per line (the line number is the index) or name,index rows (timm's "
        "--class-map). Class folders, manifest labels and ClassLabel names are mapped onto them by name. Default: "
        "each model's own (a transformers id2label, timm's label names), else ImageNet-1k.",
    ),
]
OnBadImageOpt = Annotated[
    str, _data_option(help="stop: exit before any cell at the first bad file; skip: leave it out, record it.")
]
LabelSubsetOpt = Annotated[
    Optional[str],
    _data_option(
        "--label-subset",
        metavar="imagenet-a|imagenet-r|FILE",
        help="Take the argmax over these classes only: ImageNet-A/-R's 200 (timm's index files) or a FILE of class "
        "indices or WordNet ids. Recorded in each row.",
    ),
]
TestSetOpt = Annotated[
    Optional[str],
    _data_option(
        "--test-set",
        metavar="NAME",
        help="Name of the test set the data is, for the reports (default: detected: imagenet-val, imagenet-v2, "
        "imagenet-a, imagenet-r).",
    ),
]
LabelKeyOpt = Annotated[
    Optional[str],
    _data_option(
        help="Where a store holds the label: a shard's .json field, a parquet/arrow column (default: .cls, then "
        "the json's `label`; the `label` column)."
    ),
]
SplitOpt = Annotated[Optional[str], _data_option(help="The split of a store that holds several (default: validation).")]
DecodeDraftOpt = Annotated[
    bool, _data_option(help="Decode JPEGs at a reduced scale with PIL draft() (faster, changes pixels).")
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
