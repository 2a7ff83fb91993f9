"""The run directory: rows appended as cells finish, predictions beside them, atomic writes, a lock.

A run directory holds:

* ``rows.jsonl``: one JSON row per finished cell, appended and fsynced the moment the cell finishes (a torn
  last line, e.g. after a SIGKILL, is never read, and is cut off before the next append);
* ``predictions/``: per-image label and top-5 indices of every cell (safetensors, int16), written before the
  cell's row so that a row always has its predictions;
* ``results.*`` and plots: rendered from the rows, rewritten atomically (temp file + rename);
* ``provenance.json``: one record per invocation: command line, versions, device, threads, git sha, seed,
  timestamps, status;
* ``.lock``: held (``flock``) by the run writing the directory, so two runs never interleave.

A cell is identified by its key (``schema.CellId``); a rerun skips the keys already stored.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import ResultsError
from .schema import ResultRow, row_key


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never a part."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _file_mode() -> int:
    # mkstemp creates 0600 files; results are meant to be shared like any file the user writes (umask applies).
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


class _suppress_oserror:
    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        return exc_type is not None and issubclass(exc_type, OSError)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


class RunStore:
    """The run directory: rows appended as cells finish, predictions beside them, reports rendered from the rows."""

    ROWS = "rows.jsonl"
    PROVENANCE = "provenance.json"
    LOCK = ".lock"

    def __init__(self, root: str | os.PathLike, create: bool = True):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise ResultsError(f"run directory {self.root} exists and is not a directory")
        if not create:
            if not self.rows_path.is_file():
                raise ResultsError(f"{self.root} is not a run directory (no {self.ROWS})")
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ResultsError(f"cannot create run directory {self.root}: {e.strerror}") from None

    @classmethod
    def existing(cls, root: str | os.PathLike) -> RunStore:
        """Open a run directory for reading; a missing one is an error (exit 2), never created."""
        root = Path(root)
        if not root.exists():
            raise ResultsError(f"run directory not found: {root}")
        return cls(root, create=False)

    @property
    def rows_path(self) -> Path:
        return self.root / self.ROWS

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the directory's lock for a writing run; a second writer gets a one-line error, not a mix."""
        path = self.root / self.LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                _lock_fd(fd)
            except OSError:
                holder = os.read(fd, 64).decode(errors="replace").strip()
                who = f" (pid {holder})" if holder else ""
                raise ResultsError(
                    f"run directory {self.root} is in use by another cpvt-eval run{who}; "
                    "wait for it to finish or use another --out"
                ) from None
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock (and a killed process releases it too)

    def _cut_torn_tail(self) -> None:
        """Drop a partial last line (a write cut short by a kill) so that the next row starts on its own line."""
        try:
            size = self.rows_path.stat().st_size
        except FileNotFoundError:
            return
        if size == 0:
            return
        with open(self.rows_path, "rb+") as f:
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            f.seek(0)
            data = f.read()
            f.truncate(data.rfind(b"\n") + 1)
            f.flush()
            os.fsync(f.fileno())

    def append(self, row: ResultRow) -> None:
        """Append one row durably: one ``write`` of a whole line on an O_APPEND descriptor, then fsync."""
        self._cut_torn_tail()
        line = (json.dumps(row.to_dict(), sort_keys=True) + "\n").encode()
        new = not self.rows_path.exists()
        fd = os.open(self.rows_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        if new:
            _fsync_dir(self.root)

    def rows(self) -> list[ResultRow]:
        """All complete rows in the order their cells first finished; a later row for the same key replaces the
        earlier one (``--force``). A torn last line is never read."""
        if not self.rows_path.exists():
            return []
        rows: dict[str, ResultRow] = {}
        with open(self.rows_path, encoding="utf-8") as f:
            for line in f:
                if not line.endswith("\n"):
                    break  # torn write at the end: the cell was not finished
                try:
                    row = ResultRow.from_dict(json.loads(line))
                except (json.JSONDecodeError, TypeError, AttributeError):
                    continue
                rows[row_key(row)] = row
        return list(rows.values())

    def finished_keys(self) -> set[str]:
        return {row_key(r) for r in self.rows()}

    def save_predictions(self, key: str, model: str, size: int, arrays: dict) -> str:
        """Write one cell's per-image predictions (numpy arrays) atomically; return the path relative to the root."""
        from safetensors.numpy import save

        rel = f"predictions/{_safe_name(model)}_{size}px_{key}.safetensors"
        atomic_write_bytes(self.root / rel, save(arrays))
        return rel

    def load_predictions(
        self, row: ResultRow, required: tuple[str, ...] = ("indices", "labels", "top5"), n: int | None = None
    ) -> dict:
        """The per-image ``indices``, ``labels`` and ``top5`` of a stored cell, as numpy arrays.

        Another kind of cell (the shift probe's pairs) names the ``required`` arrays and their length ``n``
        (default: the row's ``n_images``)."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        if not row.predictions:
            raise ResultsError(f"{row.model} @ {row.img_size}px in {self.root} has no per-image predictions")
        path = self.root / row.predictions
        try:
            arrays = load_file(str(path))
        except FileNotFoundError:
            raise ResultsError(f"predictions file not found: {path}") from None
        except (SafetensorError, OSError, ValueError) as e:
            raise ResultsError(f"cannot read predictions file {path}: {e}") from None
        n = row.n_images if n is None else n
        missing = set(required) - set(arrays)
        if missing or any(len(arrays[name]) != n for name in required):
            raise ResultsError(f"predictions file {path} does not match its row ({n} entries)")
        return arrays

    def write_text(self, name: str, text: str) -> Path:
        path = self.root / name
        atomic_write_text(path, text)
        return path

    def write_bytes(self, name: str, data: bytes) -> Path:
        path = self.root / name
        atomic_write_bytes(path, data)
        return path

    def provenance(self) -> list[dict]:
        """The provenance records, oldest first (one per invocation that wrote this directory)."""
        path = self.root / self.PROVENANCE
        if not path.exists():
            return []
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, OSError) as e:
            raise ResultsError(f"cannot read {path}: {e}") from None
        return list(data.get("runs", [])) if isinstance(data, dict) else []

    def record_provenance(self, record: dict) -> None:
        """Add (or update, by ``run_id``) this invocation's record and rewrite the file atomically."""
        runs = [r for r in self.provenance() if r.get("run_id") != record.get("run_id")]
        runs.append(record)
        self.write_text(self.PROVENANCE, json.dumps({"runs": runs}, indent=2, sort_keys=True) + "\n")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync, rename: readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        with _suppress_oserror():
            os.unlink(tmp)
        raise


def _fsync_dir(path: Path) -> None:
    # Makes a newly created file's directory entry durable; not possible (nor needed) on every platform.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def _lock_fd(fd: int) -> None:
    """Take an exclusive, non-blocking lock on ``fd``; raise OSError when another process holds it."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
