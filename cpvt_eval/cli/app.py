"""The Typer app every command registers on, and the guard that turns library errors into one line and an exit
code (Ctrl-C and SIGTERM: ``interrupts``). How the command line is read is ``parsing``.

Exit codes: 0 ok; 1 a check failed; 2 usage or input error; 3 the environment failed (a full disk, a read-only
file system, no memory); 4 an internal error (a bug: ``--debug`` shows its traceback); 130 interrupted.
"""

from __future__ import annotations

import os

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


def debug_enabled() -> bool:
    return _debug["on"] or os.environ.get("CPVT_EVAL_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


class GuardedGroup(TyperGroup):
    """Every command runs under ``guarded``, so that nothing a command does (its imports included) ends in a
    traceback or in click's "Aborted!" with exit 1."""

    def invoke(self, ctx):
        with interrupts.installed(), guarded():
            return super().invoke(ctx)

    def make_context(self, *args, **kwargs):
        try:  # parsing the command line, before any command runs
            return super().make_context(*args, **kwargs)
        except KeyboardInterrupt:
            console.error("interrupted")
            raise typer.Exit(code=EXIT_INTERRUPTED) from None


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

    Bad input: 2. A full disk, a read-only file system or no memory: 3. Anything else is a bug: one line, exit 4.
    """

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and issubclass(exc_type, (Exit, TyperException, Abort)):
            return False
        if interrupts.requested() and (exc_type is None or issubclass(exc_type, Exception)):
            # an interrupt that something swallowed (an exception in a __del__ is only printed), or an error it caused
            # (a data worker that the same SIGTERM reached first is reported dead by torch): still 130
            exc_type = KeyboardInterrupt
        if exc_type is None:
            return False
        if issubclass(exc_type, KeyboardInterrupt):
            console.error("interrupted; finished cells are kept in the run directory")
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
