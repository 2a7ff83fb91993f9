"""The run directory's lock: held by one process, never by its children, gone the moment that process dies.

A POSIX record lock (``fcntl.lockf``, ``F_SETLK``) belongs to the process that took it: a ``fork`` (a DataLoader
worker) does not inherit it, and the kernel drops it when the process ends, however it ends (SIGKILL, the OOM
killer). So a scheduler that retries a killed run at once finds the directory free, even while the dead run's
workers are still on their way out. (A ``flock`` belongs to the open file description, which every forked worker
shares: a killed run's workers used to keep the directory locked until they noticed and exited.) POSIX record locks
also work across hosts on NFS, where the run directory of a cluster job often lives.

The lock file holds ``PID HOST`` of the holder, for the message a second run gets, and is emptied on release. A
record left behind (its holder was killed) is taken over with a notice. Two rules of POSIX locks shape the code:
a process that closes *any* descriptor of the file loses its lock on it, so a second attempt from the same process
is refused before the file is opened again; and a process may re-take its own lock, which must not count as free.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import EnvironmentFailure, ResultsError

_held: dict[tuple[int, int], int] = {}  # (st_dev, st_ino) of the lock files this process holds -> its pid
_held_guard = threading.Lock()


class DirectoryInUse(ResultsError):
    """Another run holds the run directory's lock."""


def _in_use(root: Path, holder: str) -> DirectoryInUse:
    return DirectoryInUse(
        f"run directory {root} is in use by another cpvt-eval run{holder}; wait for it to finish or use another --out"
    )


def _record() -> bytes:
    return f"{os.getpid()} {socket.gethostname()}\n".encode()


def _read_record(fd: int) -> tuple[int | None, str]:
    """``(pid, host)`` of the lock file's record (``None``, "" when empty or unreadable)."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 256).decode(errors="replace").split()
    except OSError:
        return None, ""
    try:
        pid = int(text[0]) if text else None
    except ValueError:
        return None, ""
    return pid, text[1] if len(text) > 1 else ""


def _describe(pid: int | None, host: str) -> str:
    if pid is None:
        return ""
    here = not host or host == socket.gethostname()
    return f" (pid {pid})" if here else f" (pid {pid} on {host})"


def _try_lock(fd: int) -> bool:
    """Take the exclusive lock without waiting; False when another process holds it."""
    try:
        import fcntl
    except ImportError:  # Windows: no fork, and a byte-range lock that a process holds alone
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    # A run of an earlier version holds a flock (it does not see POSIX locks): probe for it, and let go at once, before
    # the POSIX lock is taken (on NFS a flock is a POSIX lock, and unlocking it would drop ours).
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
        raise
    return True


@contextlib.contextmanager
def hold(root: Path, name: str = ".lock", notify: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the lock of the run directory ``root`` for the block.

    Raises:
        DirectoryInUse: another process (or another run in this process) holds it; the message names the pid.
        OSError: the lock file cannot be created (the caller tells a read-only directory apart).
    """
    path = root / name
    with _held_guard:
        try:
            st = os.stat(path)
            ident = (st.st_dev, st.st_ino)
        except OSError:
            ident = None
        if ident is not None and _held.get(ident) == os.getpid():
            raise _in_use(root, _describe(os.getpid(), ""))  # opening it again would release the lock we hold
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags, 0o644)
        try:
            try:
                free = _try_lock(fd)
            except OSError as e:  # ENOLCK: a file system without locks (an NFS mount without its lock service)
                raise EnvironmentFailure(f"cannot lock run directory {root}: {e.strerror}") from None
            if not free:
                raise _in_use(root, _describe(*_read_record(fd)))
            st = os.fstat(fd)
            ident = (st.st_dev, st.st_ino)
            pid, host = _read_record(fd)
            if pid is not None and (pid, host or socket.gethostname()) != (os.getpid(), socket.gethostname()):
                if notify is not None:
                    notify(
                        f"{root}: the run that held its lock{_describe(pid, host)} is no longer running; "
                        "taking the lock over"
                    )
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, _record())
            _held[ident] = os.getpid()
        except BaseException:
            os.close(fd)
            raise
    try:
        yield
    finally:
        with _held_guard:
            _held.pop(ident, None)
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # released in order: the next run has nothing to take over
            os.close(fd)  # releases the lock (the end of the process would too)
