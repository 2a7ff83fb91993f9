"""The one place that starts data worker processes: every DataLoader of the tool comes from ``make_loader``.

A worker never outlives the run that started it, and never turns a stop into a crash:

* **The run is killed** (SIGKILL: a scheduler's hard kill, the OOM killer). Each worker asks the kernel for SIGKILL
  when its parent dies (Linux: ``PR_SET_PDEATHSIG``), then checks once that the run is still there, since it may
  have died before the request was made; elsewhere a thread of the worker checks its parent twice a second.
  (DataLoader's own check runs between batches: a slow batch kept a killed run's workers alive for tens of
  seconds.)
* **The run is stopped** (Ctrl-C, SIGTERM). The run tells its workers at once (``interrupts.on_interrupt``), and a
  worker leaves quietly on SIGTERM from anyone: a scheduler signals every process of a job (SLURM) and torchrun
  every process of a rank's group, and a worker killed by that signal would be reported as a crash of the run.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import threading
import time
import weakref

from torch.utils.data import DataLoader, Dataset

from .. import interrupts

_PR_SET_PDEATHSIG = 1
_POLL_S = 0.5
_live: weakref.WeakSet = weakref.WeakSet()  # the iterators of this process with worker processes running


def _exit_now() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _parent_death_signal() -> bool:
    """Ask the kernel to SIGKILL this process when its parent (the thread that forked it) ends; False where it
    cannot be asked."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie, dead but not yet reaped, has ended)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # another user's process: it exists
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


def _orphaned(main: int, parent: int) -> bool:
    return os.getppid() != parent or _gone(main)


def _watch(main: int, parent: int) -> None:
    while not _orphaned(main, parent):
        time.sleep(_POLL_S)
    _exit_now()


def _leave(signum, frame) -> None:
    os._exit(0)


def end_with_parent(main: int) -> None:
    """End this process (SIGKILL) when ``main`` ends: a loader's worker, or a torchrun rank whose agent is killed.

    The caller's parent is ``main`` (fork, spawn, torchrun's agent) or the fork server (Python's ``forkserver``),
    which itself ends with ``main``; the kernel's signal follows the parent, and the one check after asking for it
    covers a ``main`` that died first.
    """
    if os.name != "posix":  # Windows: DataLoader's own watchdog looks at the parent (os.kill would end it)
        return
    parent = os.getppid()
    if not _parent_death_signal():
        threading.Thread(target=_watch, args=(main, parent), daemon=True, name="cpvt-eval-parent-check").start()
    if _orphaned(main, parent):
        _exit_now()


def _worker_init(main: int, worker_id: int) -> None:
    if os.name == "posix":
        signal.signal(signal.SIGTERM, _leave)
    end_with_parent(main)


def _stop_workers() -> None:
    """On an interrupt: SIGTERM to every worker of this process still running (not yet reaped: the pid is its own)."""
    for it in list(_live):
        for w in getattr(it, "_workers", ()):
            with contextlib.suppress(Exception):
                if w.exitcode is None:
                    os.kill(w.pid, signal.SIGTERM)


class _Loader(DataLoader):
    def __iter__(self):
        it = super().__iter__()
        if self.num_workers > 0:
            _live.add(it)
        return it


def make_loader(
    dataset: Dataset, batch_size: int, workers: int, pin_memory: bool = False, collate_fn=None
) -> DataLoader:
    """Batches in the dataset's order, the last one short (DataLoader's defaults: no shuffle, no drop), workers
    started anew for each pass, each ending with the process that iterates the loader, at once when it is
    interrupted.

    Iterate it from a thread that lives as long as the pass (the main thread): on Linux a worker's parent is the
    thread that forked it.
    """
    init = functools.partial(_worker_init, os.getpid()) if workers > 0 else None
    return _Loader(
        dataset, batch_size, num_workers=workers, pin_memory=pin_memory, collate_fn=collate_fn, worker_init_fn=init
    )


if os.name == "posix":
    interrupts.on_interrupt(_stop_workers)
