"""Errors the command line turns into one-line messages and documented exit codes."""

from __future__ import annotations

import errno
import os

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_ENVIRONMENT = 3
EXIT_INTERNAL = 4
EXIT_INTERRUPTED = 130


class CpvtEvalError(Exception):
    """Base class: bad input from the user (a path, a checkpoint, a size, a flag). Exit code 2."""

    exit_code = EXIT_USAGE


class ModelError(CpvtEvalError):
    """Unknown model name, a size the model cannot run at, a bad model argument."""


class CheckpointError(CpvtEvalError):
    """A checkpoint that cannot be read, is unsafe, or does not fit the model."""


class DataError(CpvtEvalError):
    """A dataset path, layout, label file or image that cannot be used."""


class ResultsError(CpvtEvalError):
    """A run directory or result file that cannot be read or compared."""


class EnvironmentFailure(CpvtEvalError):
    """The machine, not the input: a full disk, a read-only file system, no memory left. Exit code 3."""

    exit_code = EXIT_ENVIRONMENT


# errno values that say the storage, not the input, is at fault.
_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_READ_ONLY = {errno.EROFS}


def shown(text) -> str:
    """``text`` safe to print anywhere: bytes a file name holds that are not UTF-8 (kept by Python as surrogate
    escapes) become ``\\xNN``, so any name a filesystem allows can be named in a message."""
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    return str(text).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def is_no_space(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in _NO_SPACE


def from_os_error(e: OSError) -> CpvtEvalError:
    """The one-line error of an ``OSError`` met while reading or writing ``e.filename``.

    A full disk or a read-only file system is an environment failure (exit 3); a path that does not exist or
    cannot be read or written is bad input (exit 2).
    """
    path = os.fsdecode(e.filename) if e.filename is not None else ""
    reason = e.strerror or str(e) or type(e).__name__
    if e.errno in _NO_SPACE:
        return EnvironmentFailure(f"no space left on {shown(os.path.dirname(path) or path or 'the output device')}")
    if e.errno in _READ_ONLY:
        return EnvironmentFailure(f"cannot write {shown(path)}: read-only file system")
    return CpvtEvalError(f"{shown(path)}: {reason}" if path else reason)
