"""Errors the command line turns into one-line messages and documented exit codes."""

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
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
