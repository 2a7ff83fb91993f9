"""Ctrl-C and SIGTERM that are never lost: an interrupt is recorded before it is raised, and raised again at the
next safe point if something swallowed it.

Python turns SIGINT into a ``KeyboardInterrupt`` wherever the main thread happens to be. Some places drop it: an
exception raised inside a ``__del__`` or a weakref callback (a DataLoader iterator shutting its workers down at the
end of a pass, which takes a while on busy cores) is printed as "Exception ignored" and the program goes on. So
the handler here first records the signal, then raises; the job calls ``check()`` between units of work (every
batch, every cell, every timing round) and the command line exits 130 whenever one was recorded, whatever
happened to the exception.

``on_interrupt()`` registers what must stop at once (the data loader stops its workers, which would otherwise finish
the batch in hand first). ``deferred()`` holds an interrupt back for the few statements that must not be cut in two
(committing a finished cell: its predictions, then its row); the interrupt is raised when the block ends.

A SIGINT that the process was started ignoring (a job started in the background by a shell, ``nohup``) stays
ignored, as POSIX means it to. Only the standard library is imported: the entry point installs this before the
command line (and torch) is imported.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator

_state: dict = {"pending": None, "depth": 0, "installed": 0}
_on_interrupt: list[Callable[[], None]] = []


def on_interrupt(fn: Callable[[], None]) -> None:
    """Call ``fn`` (from the signal handler, in the main thread) when an interrupt arrives, before it is raised: to
    stop helper processes at once (the data loader's workers) rather than after they finish their work in hand."""
    if fn not in _on_interrupt:
        _on_interrupt.append(fn)


def _handler(signum, frame) -> None:
    first = _state["pending"] is None
    _state["pending"] = signum
    if first:
        for fn in list(_on_interrupt):
            with contextlib.suppress(Exception):
                fn()
    if _state["depth"] == 0:
        raise KeyboardInterrupt


def requested() -> bool:
    """Whether an interrupt (SIGINT or SIGTERM) has arrived since the outermost ``installed()`` was entered (always
    False outside one: an interrupt belongs to the command that received it)."""
    return _state["installed"] > 0 and _state["pending"] is not None


def check() -> None:
    """Raise ``KeyboardInterrupt`` if an interrupt arrived and was not acted on (swallowed somewhere)."""
    if requested() and _state["depth"] == 0:
        raise KeyboardInterrupt


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold an interrupt back until the block has finished, then raise it."""
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
    check()


def _install(signum: int) -> object | None:
    try:
        previous = signal.getsignal(signum)
        if signum == signal.SIGINT and previous == signal.SIG_IGN:
            return None  # ignored on purpose by whoever started us (a background job): leave it so
        signal.signal(signum, _handler)
        return previous
    except (ValueError, OSError):  # not the main thread, or a platform without it
        return None


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """SIGINT and SIGTERM recorded and raised as ``KeyboardInterrupt`` for the duration of the block (nested
    blocks share the outer one)."""
    if _state["installed"]:
        _state["installed"] += 1
        try:
            yield
        finally:
            _state["installed"] -= 1
        return
    _state.update(pending=None, depth=0, installed=1)
    previous = {s: _install(s) for s in (signal.SIGINT, getattr(signal, "SIGTERM", None)) if s is not None}
    try:
        yield
    finally:
        _state.update(pending=None, depth=0, installed=0)
        for signum, handler in previous.items():
            if handler is not None:
                with contextlib.suppress(ValueError, OSError):
                    signal.signal(signum, handler)
