"""The command line: parse, build a config, call the library, render. Thin on purpose.

Exit codes: 0 ok; 1 a check failed; 2 usage or input error; 130 interrupted.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperCommand

from . import console, distributed
from .config import RunConfig, ThroughputConfig
from .errors import EXIT_INTERRUPTED, EXIT_USAGE, CpvtEvalError
from .models.posenc import APE_INTERPOLATIONS, PEOptions

# Options that take several values after one flag (`--sizes 224 384 512`), as users type them.
MULTI_VALUE_OPTIONS = {"--sizes", "-s", "--model", "-m"}
# Options whose value may be left out (`--real-labels` alone): the value they then take.
OPTIONAL_VALUE_OPTIONS = {"--real-labels": "timm"}


def fill_optional_values(args: list[str]) -> list[str]:
    """``--real-labels`` followed by nothing or by another option gets its default value."""
    out: list[str] = []
    for i, arg in enumerate(args):
        out.append(arg)
        if arg == "--":
            out.extend(args[i + 1 :])
            break
        if arg in OPTIONAL_VALUE_OPTIONS and (i + 1 == len(args) or args[i + 1].startswith("-")):
            out.append(OPTIONAL_VALUE_OPTIONS[arg])
    return out


def expand_multi_value(args: list[str]) -> list[str]:
    """Turn ``--sizes 224 384 --model a b`` into repeated flags; ``--sizes 224,384`` is split later."""
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        out.append(arg)
        i += 1
        if arg == "--":
            out.extend(args[i:])
            break
        if arg in MULTI_VALUE_OPTIONS:
            first = True
            while i < len(args) and not args[i].startswith("-"):
                if not first:
                    out.append(arg)
                out.append(args[i])
                first = False
                i += 1
    return out


class MultiValueCommand(TyperCommand):
    def parse_args(self, ctx, args):
        return super().parse_args(ctx, expand_multi_value(fill_optional_values(list(args))))


app = typer.Typer(
    name="cpvt-eval",
    help="How vision transformers behave when the input resolution changes without fine-tuning.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    console.error(message)
    return typer.Exit(code=code)


class guarded:
    """Turn library errors into one line and an exit code; Ctrl-C into 130."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            return False
        if issubclass(exc_type, CpvtEvalError):
            raise _fail(str(exc), exc.exit_code)
        if issubclass(exc_type, KeyboardInterrupt):
            console.error("interrupted; finished cells are kept in the run directory")
            raise typer.Exit(code=EXIT_INTERRUPTED)
        return False


@contextlib.contextmanager
def stop_on_sigterm():
    """A pre-empted job (SIGTERM) stops the way Ctrl-C does: finished cells kept, provenance closed, exit 130."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def parse_sizes(values: list[str]) -> tuple[int, ...]:
    sizes: list[int] = []
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                size = int(part)
            except ValueError:
                raise CpvtEvalError(f"size {part!r} is not a whole number of pixels") from None
            if size <= 0:
                raise CpvtEvalError(f"size {size} must be positive")
            if size not in sizes:
                sizes.append(size)
    return tuple(sizes)


def parse_models(values: list[str]) -> tuple[str, ...]:
    return tuple(p.strip() for v in values for p in v.split(",") if p.strip())


def parse_checkpoints(values: list[str], models: tuple[str, ...]) -> dict[str, str]:
    """``NAME=PATH`` pairs, or a bare ``PATH`` when exactly one model is given."""
    out: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or "/" in name or os.sep in name or "#" in name or not name:  # '#': PATH#drop=... fragment
            if len(models) != 1:
                raise CpvtEvalError(f"--checkpoint {value}: with several models, write NAME=PATH")
            name, path = models[0], value
        if name in out:
            raise CpvtEvalError(f"--checkpoint given twice for {name}")
        out[name] = path
    return out


def _coerce(value: str):
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


def parse_model_args(values: list[str], models: tuple[str, ...]) -> dict[str, dict]:
    """``[NAME:]key=value``; without a NAME the argument applies to every model."""
    out: dict[str, dict] = {}
    for value in values:
        target, sep, rest = value.partition(":")
        if not sep or "=" in target:
            targets, rest = list(models), value
        else:
            targets = [target]
        key, eq, raw = rest.partition("=")
        if not eq or not key:
            raise CpvtEvalError(f"--model-arg {value}: expected [NAME:]key=value")
        for t in targets:
            out.setdefault(t, {})[key.strip()] = raw if key.strip() == "peg_positions" else _coerce(raw)
    return out


def default_out(models: tuple[str, ...]) -> Path:
    from .models.registry import resolve

    names = []
    for m in models:
        try:
            names.append(resolve(m).name)
        except CpvtEvalError:
            names.append(m)
    return Path("runs") / "+".join(names)


@app.command(
    cls=MultiValueCommand,
    epilog=(
        "Example: cpvt-eval resolution --model cpvt_ti --model deit_ti --sizes 224 384 448 512 "
        "--data /datasets/imagenet/val --checkpoint cpvt_ti=cpvt_ti.pth --out runs/tiny"
    ),
)
def resolution(
    model: Annotated[list[str], typer.Option("--model", "-m", help="Model name or alias; repeat or list several.")],
    sizes: Annotated[list[str], typer.Option("--sizes", "-s", help="Sizes in px: `224 384 512` or `224,384`.")] = [
        "224",
        "384",
        "448",
        "512",
    ],
    data: Annotated[
        Optional[Path],
        typer.Option(
            "--data", "-d", envvar="CPVT_EVAL_DATA", help="ImageNet val: a folder in any --layout, or a manifest CSV."
        ),
    ] = None,
    checkpoint: Annotated[
        list[str],
        typer.Option(
            "--checkpoint",
            "-c",
            help="NAME=SOURCE (or SOURCE with one model): a .pth/.pt/.safetensors file, an https:// URL (cached; "
            "#sha256=<hex> pins it), hf-hub:org/name, or a timm tag like deit_tiny_patch16_224.fb_in1k; "
            "#drop=<glob>,... leaves keys out.",
        ),
    ] = [],
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="Run directory (default: runs/MODEL+MODEL...).")
    ] = None,
    limit: Annotated[Optional[int], typer.Option(help="Deterministic class-stratified subset of N images.")] = None,
    crop_pct: Annotated[float, typer.Option(help="Resize shorter side to floor(size / crop_pct), then crop.")] = 0.875,
    interpolation: Annotated[str, typer.Option(help="Image resize interpolation.")] = "bicubic",
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1)] = 64,
    workers: Annotated[
        Optional[int], typer.Option("--workers", "-j", min=0, help="Data loader workers (default: the cores).")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    dtype: Annotated[str, typer.Option(help="fp32, bf16 or fp16 (autocast).")] = "fp32",
    ape_interp: Annotated[str, typer.Option(help="APE resampling: " + ", ".join(APE_INTERPOLATIONS))] = "bicubic",
    antialias: Annotated[bool, typer.Option(help="Antialias when resampling the APE (DeiT: no).")] = False,
    sincos: Annotated[str, typer.Option(help="Sin-cos APE at a new size: regenerate or resample.")] = "regenerate",
    model_arg: Annotated[
        list[str],
        typer.Option("--model-arg", help="[NAME:]key=value for the model constructor, e.g. peg_positions=0,3."),
    ] = [],
    ema: Annotated[
        Optional[bool],
        typer.Option(
            "--ema/--no-ema",
            help="Take the EMA weights (model_ema, state_dict_ema) or the plain ones; unset: plain when both exist. "
            "Recorded in load_reports.json.",
        ),
    ] = None,
    throughput: Annotated[bool, typer.Option(help="Measure model-only images/s per cell.")] = True,
    throughput_batch: Annotated[
        Optional[int], typer.Option(min=1, help="Batch of the timing runs (default: --batch-size).")
    ] = None,
    throughput_repeats: Annotated[int, typer.Option(min=1)] = 5,
    force: Annotated[
        bool, typer.Option("--force", help="Recompute every cell, even those already finished in the run directory.")
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Write only the rows as JSON on stdout; stderr stays quiet unless a tty.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show checkpoint load reports.")] = False,
    layout: Annotated[
        str, typer.Option(help="Dataset layout: auto, imagefolder, flat, imagenetv2 (folders 0..999) or manifest.")
    ] = "auto",
    labels: Annotated[
        Optional[Path],
        typer.Option(help="Label file: devkit ground truth, Kaggle LOC_val_solution.csv or a path,label manifest."),
    ] = None,
    classes: Annotated[Optional[Path], typer.Option(help="File of WordNet ids: evaluate only these classes.")] = None,
    real_labels: Annotated[
        Optional[str],
        typer.Option("--real-labels", metavar="[FILE]", help="Add ImageNet-ReaL top-1 (alone: the labels timm ships)."),
    ] = None,
    on_bad_image: Annotated[
        str, typer.Option(help="stop: exit before any cell at the first bad file; skip: leave it out, record it.")
    ] = "stop",
    decode_draft: Annotated[
        bool, typer.Option(help="Decode JPEGs at a reduced scale with PIL draft() (faster, changes pixels).")
    ] = False,
) -> None:
    """Top-1/top-5 and images/s of each model at each size, without fine-tuning.

    Writes rows.jsonl, per-image predictions, provenance.json and the reports (results.md/.csv/.tex/.json, plots)
    to the run directory. Each cell is stored the moment it finishes: rerunning the same command resumes and skips
    finished cells; Ctrl-C stops with exit code 130 and keeps them.
    """
    from .runner import run_resolution

    with guarded():
        models = parse_models(model)
        if data is None:
            raise CpvtEvalError("no dataset: pass --data DIR or set CPVT_EVAL_DATA")
        cfg = RunConfig(
            models=models,
            sizes=parse_sizes(sizes),
            data=data,
            out=out or default_out(models),
            checkpoints=parse_checkpoints(checkpoint, models),
            model_args=parse_model_args(model_arg, models),
            limit=limit,
            crop_pct=crop_pct,
            interpolation=interpolation,
            batch_size=batch_size,
            workers=workers,
            device=device,
            dtype=_check_dtype(dtype),
            pe=PEOptions(ape_interpolation=ape_interp, antialias=antialias, sincos=sincos),
            ema=ema,
            throughput=ThroughputConfig(enabled=throughput, batch_size=throughput_batch, repeats=throughput_repeats),
            layout=layout,
            labels=labels,
            classes=classes,
            real_labels=real_labels,
            on_bad_image=on_bad_image,
            decode_draft=decode_draft,
        )
        # Machine-readable mode: stdout holds only JSON; messages go to stderr, and only when a person watches it.
        quiet = json_out and not sys.stderr.isatty()
        notify = (lambda _m: None) if quiet else console.info
        log = console.info if verbose and not quiet else (lambda _m: None)
        # Under torchrun every process runs this command; only rank 0 reports. The session is left only after
        # rank 0 has printed (its result or the error of any rank).
        with distributed.session(cfg.device) as dist, guarded(), stop_on_sigterm():
            if not dist.is_main:
                console.silence()
            outcome = run_resolution(
                cfg,
                console.BarProgress(),
                log=log,
                argv=["cpvt-eval", *sys.argv[1:]],
                force=force,
                notify=notify,
                dist=dist,
            )
            if outcome.store is None:
                return
            rows = outcome.store.rows()
            if json_out:
                print(json.dumps([r.to_dict() for r in rows], indent=2))
            else:
                console.print_results(rows)
                console.info(f"results: {outcome.store.root / 'results.csv'}, {outcome.store.root / 'results.md'}")


def _check_dtype(dtype: str) -> str:
    if dtype not in ("fp32", "bf16", "fp16"):
        raise CpvtEvalError(f"--dtype must be fp32, bf16 or fp16, got {dtype!r}")
    return dtype


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``cpvt-eval`` and ``python -m cpvt_eval``; returns the exit code."""
    try:
        app(args=argv, prog_name="cpvt-eval", standalone_mode=True)
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else EXIT_USAGE
    return 0


def entry() -> None:
    sys.exit(main())


# Subcommands that live in their own modules register themselves on `app` when imported here.
# (one import per command module, keep sorted)
from . import cli_check_data  # noqa: E402, F401, I001
from . import cli_compare  # noqa: E402, F401
from . import cli_demo  # noqa: E402, F401
from . import cli_models  # noqa: E402, F401
from . import cli_report  # noqa: E402, F401
from . import cli_throughput  # noqa: E402, F401
