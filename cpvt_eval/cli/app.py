"""The Typer app every command registers on, and the guard that turns library errors into one line and an exit
code (Ctrl-C and SIGTERM: ``interrupts``). How the command line is read is ``parsing``.

Exit codes: 0 ok; 1 a check failed; 2 usage or input error; 3 the environment failed (a full disk, a read-only
file system, no memory); 4 an internal error (a bug: ``--debug`` shows its traceback); 130 interrupted.
"""

from __future__ import annotations

import difflib
import os
import re

import typer
from typer.core import TyperGroup
from typer.exceptions import Abort, Exit, TyperException

from .. import console, interrupts
from ..errors import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    CpvtEvalError,
    EnvironmentFailure,
    from_os_error,
)

# ``--debug`` (or CPVT_EVAL_DEBUG=1): errors that are not bad input keep their traceback, for bug reports.
_debug = {"on": False}
# The command being read (``cpvt-eval resolution``), for a usage error that click raises without its context.
_command = {"path": "cpvt-eval"}


def debug_enabled() -> bool:
    return _debug["on"] or os.environ.get("CPVT_EVAL_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


# What the options users most often leave empty take, and an example: said when the value is missing or empty.
OPTION_VALUES = {
    "--model": "name a model, e.g. --model deit_ti",
    "--sizes": "name sizes in px, e.g. --sizes 224 384",
    "--data": "name a dataset, e.g. --data /datasets/imagenet/val",
    "--out": "name a run directory, e.g. --out runs/tiny",
    "--checkpoint": "name a checkpoint, e.g. --checkpoint cpvt_ti=cpvt_ti.pth",
}
SHORT_OPTIONS = {"-m": "--model", "-s": "--sizes", "-d": "--data", "-o": "--out", "-c": "--checkpoint"}


def no_value_message(option: str, how: str = "has no value", where: str = "cpvt-eval COMMAND") -> str:
    """``-m has no value: name a model, e.g. -m deit_ti``: the option as typed, what it takes and an example."""
    long = SHORT_OPTIONS.get(option, option)
    if long not in OPTION_VALUES:
        return f"{option} {how}: give it a value (`{where} -h` says what it takes)"
    return f"{option} {how}: {OPTION_VALUES[long].replace(long, option)}"


def is_usage_error(exc: BaseException) -> bool:
    """A click usage error (a missing value, an unknown option, an extra argument, a bad value). Matched by class
    name: typer vendors click since 0.20, and older releases use click itself. Not the help that a bare
    ``cpvt-eval`` prints (``NoArgsIsHelpError``)."""
    names = {c.__name__ for c in type(exc).__mro__}
    return "ClickException" in names and "NoArgsIsHelpError" not in names


def usage_message(exc) -> str:
    """A click usage error as one line that names the option or argument at fault and the way out."""
    ctx = getattr(exc, "ctx", None)
    where = ctx.command_path if ctx is not None else _command["path"]
    see = f"see `{where} -h`"
    kind = type(exc).__name__
    option = getattr(exc, "option_name", None)
    message = " ".join(exc.format_message().split())
    if kind == "NoSuchOption" and option:
        close = difflib.get_close_matches(option, list(getattr(exc, "possibilities", None) or ()), n=1, cutoff=0.0)
        return f"{where} has no option {option}" + (f"; did you mean {close[0]}?" if close else "") + f" ({see})"
    if kind == "BadOptionUsage" and option and "requires an argument" in message:
        return no_value_message(option, where=where)
    param = getattr(exc, "param", None)
    if kind == "MissingParameter" and param is not None:
        opts = getattr(param, "opts", None)
        name = opts[0] if opts and getattr(param, "param_type_name", "") == "option" else str(param.name).upper()
        return f"{where} needs {name} ({see})"
    extra = re.match(r"Got unexpected extra argument(?:s|\(s\))? \((.*)\)", message)
    if extra:
        return f"{where} takes no argument {extra.group(1)} here: each value follows its option ({see})"
    message = message[:1].lower() + message[1:].rstrip(".")
    if message.startswith("no such command"):
        return f"{message} (`{where} -h` lists the commands)"
    return f"{where}: {message} ({see})"


def refuse_empty_values(command, args: list[str], where: str) -> None:
    """An option given an empty value (``--out ''``, ``--data=``) is an error: an empty path would name the
    current directory."""
    takes_value = {
        name
        for p in getattr(command, "params", ())
        if getattr(p, "param_type_name", "") == "option" and not getattr(p, "is_flag", False)
        for name in (*p.opts, *p.secondary_opts)
    }
    for i, arg in enumerate(args):
        if arg == "--":
            return
        name, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if name in takes_value and ((eq and not value) or (not eq and i + 1 < len(args) and args[i + 1] == "")):
            raise CpvtEvalError(no_value_message(name, "is empty", where))


class GuardedGroup(TyperGroup):
    """Every command runs under ``guarded``, so that nothing a command does (its imports included) ends in a
    traceback or in click's "Aborted!" with exit 1; a usage error (reading the command line) is one line too."""

    def invoke(self, ctx):
        with interrupts.installed(), guarded():
            return super().invoke(ctx)

    def resolve_command(self, ctx, args):
        name, command, rest = super().resolve_command(ctx, args)
        if command is not None:
            _command["path"] = f"{ctx.command_path} {name}"
            refuse_empty_values(command, rest, _command["path"])
        return name, command, rest

    def make_context(self, *args, **kwargs):
        _command["path"] = "cpvt-eval"
        try:  # parsing the command line, before any command runs
            return super().make_context(*args, **kwargs)
        except KeyboardInterrupt:
            console.error("interrupted")
            raise typer.Exit(code=EXIT_INTERRUPTED) from None
        except Exception as e:
            if not is_usage_error(e):
                raise
            raise _fail(usage_message(e)) from None


app = typer.Typer(
    name="cpvt-eval",
    cls=GuardedGroup,
    help="How vision transformers behave when the input resolution changes without fine-tuning.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    console.error(message)
    return typer.Exit(code=code)


@app.callback()
def _options(
    debug: bool = typer.Option(
        False, "--debug", envvar="CPVT_EVAL_DEBUG", help="Show the traceback of an unexpected error (for bug reports)."
    ),
) -> None:
    """How vision transformers behave when the input resolution changes without fine-tuning."""
    _debug["on"] = debug


class guarded:
    """Turn library errors into one line and an exit code; Ctrl-C into 130; never a traceback unless ``--debug``.

    Bad input (a usage error of the command line too): 2. A full disk, a read-only file system or no memory: 3.
    Anything else is a bug: one line, exit 4. ``run_dir``: the command writes a run directory, so an interrupt
    says that its finished cells are kept there.
    """

    def __init__(self, run_dir: bool = False):
        self.run_dir = run_dir

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is not None and is_usage_error(exc):
            raise _fail(usage_message(exc)) from None
        if exc_type is not None and issubclass(exc_type, (Exit, TyperException, Abort)):
            return False
        if interrupts.requested() and (exc_type is None or issubclass(exc_type, Exception)):
            # an interrupt that something swallowed (an exception in a __del__ is only printed), or an error it caused
            # (a data worker that the same SIGTERM reached first is reported dead by torch): still 130
            exc_type = KeyboardInterrupt
        if exc_type is None:
            return False
        if issubclass(exc_type, KeyboardInterrupt):
            kept = "; finished cells are kept in the run directory" if self.run_dir else ""
            console.error(f"interrupted{kept}")
            raise typer.Exit(code=EXIT_INTERRUPTED)
        if not issubclass(exc_type, Exception):
            return False
        if isinstance(exc, OSError):
            exc = from_os_error(exc)
        elif isinstance(exc, MemoryError):
            exc = EnvironmentFailure("out of memory (a smaller --batch-size, size or --workers may fit)")
        if isinstance(exc, CpvtEvalError):
            raise _fail(str(exc), exc.exit_code)
        if debug_enabled():
            return False
        raise _fail(
            f"internal error: {exc_type.__name__}: {console.first_line(exc)} "
            "(a bug; rerun with --debug for the traceback and report it)",
            EXIT_INTERNAL,
        )
