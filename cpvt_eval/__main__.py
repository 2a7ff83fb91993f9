"""``python -m cpvt_eval`` (also the entry torchrun starts, and the ``cpvt-eval`` script).

Light on purpose: the command line (typer, rich, and then torch) is imported inside ``entry``, so that a Ctrl-C
during those imports ends with one line and exit code 130, not a traceback.
"""

import sys


def entry() -> None:
    from . import interrupts

    code = None
    try:
        with interrupts.installed():  # before the imports: a SIGTERM during them is 130 too
            from .cli import main

            code = main()
            interrupts.check()  # an interrupt swallowed after the command's own guard
    except KeyboardInterrupt:
        if code != 130:  # the command has said it already
            sys.stderr.write("error: interrupted\n")
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    entry()
