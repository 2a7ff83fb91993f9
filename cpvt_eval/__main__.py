"""``python -m cpvt_eval`` (also the entry torchrun starts, and the ``cpvt-eval`` script).

Light on purpose: the command line (typer, rich, and then torch) is imported inside ``entry``, so that a Ctrl-C
during those imports ends with one line and exit code 130, not a traceback.
"""

import sys


def entry() -> None:
    try:
        from .cli import main

        code = main()
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    entry()
