"""The command line: parse, build a config, call the library or a job, render. Thin on purpose.

``app`` (in ``app.py``) sits below the command modules, which register themselves on it when imported here;
nothing below imports this package back. Exit codes: 0 ok; 1 a check failed; 2 usage or input error;
3 the environment failed (full disk, read-only file system); 4 internal error; 130 interrupted.
"""

from __future__ import annotations

import sys

from ..errors import EXIT_INTERRUPTED, EXIT_USAGE
from . import measure
from .app import app, guarded
from .parsing import expand_multi_value, fill_optional_values

measure.register_all()  # a command per registered probe, first among the commands
from . import check_data, compare, demo, models, report, throughput  # noqa: E402, F401 (register commands)

__all__ = ["app", "expand_multi_value", "fill_optional_values", "guarded", "main"]


def main(argv: list[str] | None = None) -> int:
    """Run the command line on ``argv`` (default: ``sys.argv``) and return the exit code; the ``cpvt-eval`` script and
    ``python -m cpvt_eval`` call it through ``cpvt_eval.__main__.entry``, which also turns a Ctrl-C during start-up
    into exit code 130."""
    try:
        app(args=argv, prog_name="cpvt-eval", standalone_mode=True)
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else EXIT_USAGE
    except KeyboardInterrupt:  # between parsing and the command's own guard
        sys.stderr.write("error: interrupted\n")
        return EXIT_INTERRUPTED
    return 0
