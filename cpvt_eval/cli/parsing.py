"""How the command line is read: options that take several values after one flag (``--sizes 224 384``), options
whose value may be left out (``--real-labels`` alone), sizes and size ranges, model names, globs and files,
checkpoints, constructor arguments, the default run directory. Bad text is a ``CpvtEvalError`` naming it."""

from __future__ import annotations

import hashlib
import os
from fnmatch import fnmatchcase
from pathlib import Path

from typer.core import TyperCommand

from ..errors import CpvtEvalError, ModelError, shown
from .app import no_value_message

# Options that take several values after one flag (`--sizes 224 384 512`), as users type them.
MULTI_VALUE_OPTIONS = {"--sizes", "-s", "--model", "-m"}
# Options whose value may be left out (`--real-labels` alone): the value they then take (the commands add theirs).
OPTIONAL_VALUE_OPTIONS: dict[str, str] = {}


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
    """Turn ``--sizes 224 384 --model a b`` into repeated flags; ``--sizes 224,384`` is split later. A flag followed
    by no value (``-m -s 56``, ``--sizes`` last) is an error naming it. Help asked for anywhere before ``--`` is
    the help, whatever else the line holds (``-m -h``, ``-h -c``), as argparse gives it."""
    head = args[: args.index("--")] if "--" in args else args
    if {"-h", "--help"} & set(head):
        return ["--help"]
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
            if first:
                raise CpvtEvalError(no_value_message(arg))
    return out


class MultiValueCommand(TyperCommand):
    def parse_args(self, ctx, args):
        return super().parse_args(ctx, expand_multi_value(fill_optional_values(list(args))))


# A range of more sizes than this is more likely a slip (a step of 1) than a plan: each size is a pass over the data.
MAX_RANGE_SIZES = 64


def parse_sizes(values: list[str]) -> tuple[int, ...]:
    """``--sizes`` as typed: whole numbers and ``START:STOP:STEP`` ranges (the stop included), separated by spaces
    or commas; duplicates dropped, the order kept. Whether a size suits a model (a multiple of its patch size) is
    the model layer's check (``check_sizes``), made once the model is built."""
    sizes: list[int] = []
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            for size in _size_range(part) if ":" in part else (_size(part),):
                if size not in sizes:
                    sizes.append(size)
    return tuple(sizes)


def _size(text: str, in_range: str = "") -> int:
    where = f" in the range {in_range!r}" if in_range else ""
    try:
        size = int(text)
    except ValueError:
        raise CpvtEvalError(f"size {text!r}{where} is not a whole number of pixels") from None
    if size <= 0:
        raise CpvtEvalError(f"size {size}{where} must be positive")
    return size


def _size_range(text: str) -> range:
    """``START:STOP:STEP``, the stop included: ``224:512:32`` is 224, 256, ..., 512."""
    parts = [p.strip() for p in text.split(":")]
    if len(parts) > 3:
        raise CpvtEvalError(f"size range {text!r} has {len(parts)} parts; write START:STOP:STEP, e.g. 224:512:32")
    start, stop = _size(parts[0], text), _size(parts[1], text)
    if stop < start:
        raise CpvtEvalError(f"size range {text!r}: the stop {stop} is below the start {start}")
    if len(parts) < 3:
        raise CpvtEvalError(f"size range {text!r} has no step; write START:STOP:STEP, e.g. 224:512:32")
    try:
        step = int(parts[2])
    except ValueError:
        raise CpvtEvalError(f"size range {text!r}: the step {parts[2]!r} is not a whole number of pixels") from None
    if step <= 0:
        raise CpvtEvalError(f"size range {text!r}: the step must be positive, got {step}")
    count = (stop - start) // step + 1
    if count > MAX_RANGE_SIZES:
        raise CpvtEvalError(f"size range {text!r} gives {count} sizes, more than {MAX_RANGE_SIZES}; take a larger step")
    last = start + (count - 1) * step
    if last != stop:
        raise CpvtEvalError(f"size range {text!r} ends at {last}, not at its stop {stop}; write {start}:{last}:{step}")
    return range(start, stop + 1, step)


def parse_crop_pct(value: str) -> float | None:
    """``--crop-pct``: a ratio in (0, 1], or ``weights`` (None: each model's own crop ratio)."""
    text = str(value).strip().lower()
    if text == "weights":
        return None
    try:
        return float(text)
    except ValueError:
        raise CpvtEvalError(f"--crop-pct must be a number in (0.05, 1] or `weights`, got {value!r}") from None


def parse_models(values: list[str], models_file: Path | None = None) -> tuple[str, ...]:
    """``--model`` values (``a,b`` lists several), then the entries of ``--models-file``; globs stay as typed
    (``expand_models`` expands them, where the command imports the model layer)."""
    values = [*values, *(read_models_file(models_file) if models_file is not None else ())]
    return tuple(p.strip() for v in values for p in v.split(",") if p.strip())


def read_models_file(path: Path) -> list[str]:
    """``--models-file``: one name, timm tag or glob per line; ``#`` starts a comment, blank lines are skipped."""
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise CpvtEvalError(f"--models-file {shown(path)}: cannot read it ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise CpvtEvalError(f"--models-file {shown(path)}: not UTF-8 text (byte {e.start})") from None
    names = [n for n in (line.partition("#")[0].strip() for line in text.splitlines()) if n]
    if not names:
        raise CpvtEvalError(f"--models-file {shown(path)} lists no model")
    return names


def is_model_glob(name: str) -> bool:
    return any(c in name for c in "*?[")


def expand_models(names: tuple[str, ...]) -> tuple[str, ...]:
    """Each glob (``'deit_*'``) replaced, in its place, by the models it matches: the registered names and aliases
    of this tool (as full names) first, then timm's model names (its pretrained tags too when the pattern has a
    dot), each sorted. A match listed already, by name or by an earlier glob, is not repeated; a glob that matches
    nothing is an error. Imports the model layer (timm): called by the commands, never at ``--help``."""
    if not any(is_model_glob(n) for n in names):
        return names
    import timm

    from ..models.registry import list_specs

    full_name = {key: spec.name for spec in list_specs(include_demo=True) for key in (spec.name, *spec.aliases)}

    def identity(name: str) -> str:
        base, dot, tag = name.partition(".")
        return full_name.get(base, base) + dot + tag

    listed = {identity(n) for n in names if not is_model_glob(n)}
    out: list[str] = []
    for name in names:
        if not is_model_glob(name):
            out.append(name)
            continue
        registered = sorted({full for key, full in full_name.items() if fnmatchcase(key, name)})
        known = timm.list_models(name, pretrained=True) if "." in name else timm.list_models(name)
        matches = [*registered, *sorted(set(known) - set(registered))]
        if not matches:
            raise ModelError(
                f"--model {name!r} matches no registered model, alias or timm model (see `cpvt-eval models`)"
            )
        for match in matches:
            if identity(match) not in listed:
                listed.add(identity(match))
                out.append(match)
    return tuple(out)


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


def coerce(value: str):
    """A number or a boolean from its text; any other text as it is."""
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


def _coerce_arg(value: str, key: str, raw: str):
    """A constructor argument from its text: numbers and booleans as such, ``a,b,...`` as a tuple of them
    (``depths=1,1,2,1``). ``peg_positions`` stays text, as its stored keys always had it."""
    if key == "peg_positions" or "," not in raw:
        return raw if key == "peg_positions" else coerce(raw)
    items = [item.strip() for item in raw.split(",")]
    if not all(items):
        raise CpvtEvalError(f"--model-arg {value}: empty item in the list {raw!r}")
    return tuple(coerce(item) for item in items)


def parse_model_args(values: list[str], models: tuple[str, ...]) -> dict[str, dict]:
    """``[NAME:]key=value``; without a NAME the argument applies to every model. A comma-separated value is a
    tuple."""
    out: dict[str, dict] = {}
    for value in values:
        target, sep, rest = value.partition(":")
        if not sep or "=" in target:
            targets, rest = list(models), value
        else:
            targets = [target]
        key, eq, raw = rest.partition("=")
        key = key.strip()
        if not eq or not key:
            raise CpvtEvalError(f"--model-arg {value}: expected [NAME:]key=value")
        for t in targets:
            out.setdefault(t, {})[key] = _coerce_arg(value, key, raw)
    return out


def default_out(models: tuple[str, ...]) -> Path:
    from ..models.registry import resolve

    names = []
    for m in models:
        try:
            names.append(resolve(m).name)
        except CpvtEvalError:
            # a transformers folder or hub repo: its last part (an absolute path would put the run inside the folder)
            names.append(Path(m.strip().rstrip("/")).name or m)
    joined = "+".join(names)
    if len(joined.encode()) > 200:
        # a glob may give dozens of models: a name the file system takes (255 bytes at most), the same for the
        # same models so that the rerun resumes
        digest = hashlib.sha256(joined.encode()).hexdigest()[:8]
        joined = f"{names[0]}+{len(names) - 1}-more-{digest}"
    return Path("runs") / joined
