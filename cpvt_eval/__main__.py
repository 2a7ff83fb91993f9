"""``python -m cpvt_eval`` (also the entry torchrun starts, and the ``cpvt-eval`` script).

Light on purpose: the command line (typer, rich, and then torch) is imported inside ``entry``, so that a Ctrl-C
during those imports ends with one line and exit code 130, not a traceback.

Before torch loads its OpenMP runtime, ``entry`` asks OpenMP threads to sleep rather than spin while they wait
(``OMP_WAIT_POLICY=PASSIVE``, unless the environment already sets it). A spinning thread keeps its core while
the data workers decode, and while it waits at a barrier for a thread that another process has pushed off its
core; on a CPU shared with the loader's workers or other jobs that halved the speed of a run (benchmarks/README.md).
It changes no computed value.

When the command has finished, ``entry`` collects its garbage and then leaves every object to the end of the
process (``gc.freeze``) rather than to the interpreter's teardown, which frees the modules of torch and timm one
object at a time (about 1 s).
"""

import gc
import os
import sys

# Read by the OpenMP runtime when torch loads it: the variable must be set before the first ``import torch``.
OPENMP_WAIT = ("OMP_WAIT_POLICY", "PASSIVE")


def entry() -> None:
    os.environ.setdefault(*OPENMP_WAIT)
    from . import interrupts

    code = None
    try:
        with interrupts.installed():  # before the imports: a SIGTERM during them is 130 too
            from .cli import main

            code = main()
            interrupts.check()  # an interrupt swallowed after the command's own guard
            with interrupts.deferred():
                gc.collect()  # the command's garbage, finalizers and all
                gc.freeze()  # the rest goes with the process, not object by object (atexit handlers still run)
    except KeyboardInterrupt:
        if code != 130:  # the command has said it already
            sys.stderr.write("error: interrupted\n")
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    entry()
