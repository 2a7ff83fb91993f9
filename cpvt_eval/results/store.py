"""The run directory: rows appended as cells finish, predictions beside them, atomic writes, a lock.

A run directory holds:

* ``rows.jsonl``: one JSON row per finished cell, appended and fsynced the moment the cell finishes (a torn
  last line, e.g. after a SIGKILL, is never read, and is cut off before the next append);
* ``predictions/``: per-image label and top-5 indices of every cell (safetensors, int16), written before the
  cell's row so that a row always has its predictions;
* ``results.*`` and plots: rendered from the rows, rewritten atomically (temp file + rename);
* ``provenance.json``: one record per invocation: command line, versions, device, threads, git sha, seed,
  timestamps, status;
* ``.lock``: held by the run writing the directory (``lock``: the process's own POSIX lock, with its pid),
  so two runs never interleave;
* ``run.json``: the schema version of the rows (``schema.SCHEMA_VERSION``) and the version that created it.

A cell is identified by its key (``schema.CellId``); a rerun skips the keys already stored whose predictions can
still be read. Reading validates: ``report`` and ``compare`` refuse a damaged row naming the file and line; a
resuming run moves damaged lines to ``rows.damaged.jsonl`` and recomputes their cells.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import struct
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import MISSING, fields
from pathlib import Path

from ..errors import EnvironmentFailure, ResultsError, from_os_error
from .arrays import map_arrays, safetensors_chunks
from .lock import hold
from .schema import SCHEMA_VERSION, ResultRow, row_key, row_type_of


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never a part.

    A file name that is not UTF-8 (held by Python as surrogate escapes) is written as the bytes it has on disk.
    """
    atomic_write_bytes(path, text.encode("utf-8", "surrogateescape"))


def _file_mode() -> int:
    # mkstemp creates 0600 files; results are meant to be shared like any file the user writes (umask applies).
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


class ReadOnlyRunDir(EnvironmentFailure):
    """The run directory cannot be written (read-only storage, no permission)."""


_TYPES = {"int": int, "float": (int, float), "str": str, "bool": bool, "dict": dict, "None": type(None)}


def _type_ok(value, annotation: str) -> bool:
    allowed = []
    for part in str(annotation).split("|"):
        t = _TYPES.get(part.strip())
        if t is None:
            return True  # a type this check does not know: accepted as is
        allowed.append(t)
    if isinstance(value, bool) and bool not in allowed:
        return False  # True is an int to Python, not a count
    return any(isinstance(value, t) for t in allowed)


def row_problem(d) -> str | None:
    """Why a stored row cannot be used (None when it can): a missing field, a value of the wrong type, counts
    that cannot be (no image, more hits than images), a non-finite accuracy."""
    if not isinstance(d, dict):
        return "not a JSON object"
    for f in fields(row_type_of(d.get("probe") or "") if isinstance(d.get("probe"), str) else ResultRow):
        if f.name not in d:
            if f.default is MISSING and f.default_factory is MISSING:
                return f"no {f.name} field (written by another version of cpvt-eval?)"
            continue
        if not _type_ok(d[f.name], f.type):
            return f"{f.name} is {d[f.name]!r}, not {str(f.type).removesuffix(' | None')}"
    n, c1, c5 = d["n_images"], d["correct1"], d["correct5"]
    if n <= 0:
        return f"n_images is {n}"
    if not (0 <= c1 <= n and 0 <= c5 <= n):
        return f"correct1 {c1} or correct5 {c5} is outside 0 ... n_images {n}"
    if d["img_size"] <= 0:
        return f"img_size is {d['img_size']}"
    for name in ("top1", "top5"):
        if d[name] is not None and not (math.isfinite(d[name]) and 0 <= d[name] <= 100):
            return f"{name} is {d[name]!r}"
    return None


class RunStore:
    """The run directory: rows appended as cells finish, predictions beside them, reports rendered from the rows."""

    ROWS = "rows.jsonl"
    DAMAGED = "rows.damaged.jsonl"
    SUPERSEDED = "rows.superseded.jsonl"
    PROVENANCE = "provenance.json"
    LOCK = ".lock"
    RUN = "run.json"

    def __init__(self, root: str | os.PathLike, create: bool = True):
        self.root = Path(root)
        self.opened_version: int | None = None  # the schema a writing run found (set under the lock)
        if self.root.exists() and not self.root.is_dir():
            raise ResultsError(f"run directory {self.root} exists and is not a directory")
        if not create:
            if not self.rows_path.is_file():
                raise ResultsError(f"{self.root} is not a run directory (no {self.ROWS})")
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            if isinstance(from_os_error(e), EnvironmentFailure):  # a full disk or read-only storage
                raise EnvironmentFailure(f"cannot create run directory {self.root}: {e.strerror}") from None
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
    def locked(self, notify: Callable[[str], None] | None = None) -> Iterator[None]:
        """Hold the directory's lock for a writing run; a second writer gets a one-line error, not a mix.

        The lock is the process's own (``lock.hold``): its loader workers never hold it, and it goes with the
        process however it ends. A lock left by a run that was killed is taken over, said through ``notify``.
        """
        if not os.access(self.root, os.W_OK):  # read-only storage, or a folder this user may not write
            raise ReadOnlyRunDir(f"run directory {self.root} is not writable (read-only or no permission)")
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(hold(self.root, self.LOCK, notify))
            except OSError as e:
                if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                    raise ReadOnlyRunDir(f"run directory {self.root} is not writable ({e.strerror})") from None
                raise
            self._close_stale_records()
            self.opened_version = self.schema_version()
            self._migrate(self.opened_version)
            self._write_run_info()
            yield

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
        """Append one row durably: one ``write`` of a whole line on an O_APPEND descriptor, then fsync.

        A write that fails part-way (a full disk) is cut back off, so that no torn line is left behind.
        """
        self._cut_torn_tail()
        line = (json.dumps(row.to_dict(), sort_keys=True) + "\n").encode()
        new = not self.rows_path.exists()
        fd = os.open(self.rows_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            before = os.fstat(fd).st_size
            try:
                written = os.write(fd, line)
                if written != len(line):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.rows_path))
                os.fsync(fd)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, before)
                raise
        finally:
            os.close(fd)
        if new:
            _fsync_dir(self.root)

    def _read_lines(self) -> Iterator[tuple[int, str, dict | None, str | None]]:
        """``(line number, text, row dict or None, problem or None)`` of every complete line of rows.jsonl."""
        try:
            f = open(self.rows_path, encoding="utf-8", errors="surrogateescape")
        except FileNotFoundError:
            return
        except OSError as e:
            raise from_os_error(e) from None
        with f:
            for n, line in enumerate(f, 1):
                if not line.endswith("\n"):
                    break  # torn write at the end: the cell was not finished
                if not line.strip():
                    continue
                try:
                    d = json.loads(line)
                except json.JSONDecodeError as e:
                    yield n, line, None, f"not JSON ({e.msg})"
                    continue
                problem = row_problem(d)
                yield n, line, (None if problem else d), problem

    def rows(self, strict: bool = True) -> list[ResultRow]:
        """All complete rows in the order their cells first finished; a later row for the same key replaces the
        earlier one (``--force``). A torn last line is never read.

        Args:
            strict: a damaged line (not JSON, a field missing or of the wrong type, impossible counts) is an
                error naming the file and line; otherwise it is passed over (``damaged`` lists it).
        """
        rows: dict[str, ResultRow] = {}
        version = self.schema_version()
        for n, _line, d, problem in self._read_lines():
            if problem:
                if strict:
                    raise ResultsError(
                        f"{self.rows_path}:{n}: damaged row ({problem}); a rerun of the command that wrote "
                        "the run directory moves it aside and recomputes its cell"
                    )
                continue
            row = ResultRow.from_dict(migrate_row(d, version))
            # The fields the row was written without (an earlier version): compare matches on the others.
            object.__setattr__(row, "_absent", frozenset(f.name for f in fields(ResultRow) if f.name not in d))
            rows[row_key(row)] = row
        return list(rows.values())

    def damaged(self) -> list[tuple[int, str]]:
        """``(line number, problem)`` of every damaged line of rows.jsonl."""
        return [(n, problem) for n, _line, _d, problem in self._read_lines() if problem]

    def set_aside_damaged(self) -> list[tuple[int, str]]:
        """Move the damaged lines of rows.jsonl to rows.damaged.jsonl (under the lock, before a resumed run), so
        that their cells are recomputed and the reports read a clean file. Returns what was moved."""
        moved = [(n, problem) for n, _line, _d, problem in self._read_lines() if problem]
        if moved:
            self._move_lines(lambda d: d is None, self.DAMAGED)
        return moved

    def set_aside(self, rows: list[ResultRow], name: str) -> None:
        """Move the lines of ``rows`` (by key) from rows.jsonl to the file ``name`` of the run directory."""
        keys = {row_key(r) for r in rows}
        self._move_lines(lambda d: d is not None and row_key(ResultRow.from_dict(d)) in keys, name)

    def _move_lines(self, moved, name: str) -> None:
        keep: list[str] = []
        out: list[str] = []
        for _n, line, d, _problem in self._read_lines():
            (out if moved(d) else keep).append(line)
        if not out:
            return
        with open(self.root / name, "a", encoding="utf-8", errors="surrogateescape") as f:
            f.writelines(out)
            f.flush()
            os.fsync(f.fileno())
        atomic_write_text(self.rows_path, "".join(keep))

    def finished_keys(self) -> set[str]:
        """Keys of the cells stored with their predictions; a cell whose predictions file is missing or cannot be
        read is not finished (the rerun recomputes it)."""
        return {row_key(r) for r in self.rows(strict=False) if self._predictions_ok(r)}

    def _predictions_ok(self, row: ResultRow) -> bool:
        if not row.predictions:
            return True  # written before predictions were stored: nothing to check
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(self.root / row.predictions), framework="numpy") as f:
                # every kind of cell stores its image indices and labels (the shift probe: per pair)
                return {"indices", "labels"} <= set(f.keys())
        except (SafetensorError, OSError, ValueError):
            return False

    def schema_version(self) -> int:
        """The schema version of the rows: run.json's, else the provenance records', else 1 (written before
        the version was recorded)."""
        try:
            info = json.loads((self.root / self.RUN).read_text(encoding="utf-8"))
            return int(info["schema_version"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        try:
            versions = [int(r.get("schema_version", 1)) for r in self.provenance()]
        except (ResultsError, ValueError, TypeError):
            versions = []
        return min(versions) if versions else 1

    def _write_run_info(self, migrated_from: int | None = None) -> None:
        from ..version import __version__

        if migrated_from is not None:
            try:
                info = json.loads((self.root / self.RUN).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                info = {}
            info = info if isinstance(info, dict) else {}
            info.update(
                schema_version=SCHEMA_VERSION, migrated_from=migrated_from, migrated_by=f"cpvt-eval {__version__}"
            )
            self.write_text(self.RUN, json.dumps(info, indent=2) + "\n")
            return
        if (self.root / self.RUN).exists() or self.rows_path.exists():
            return  # an existing run directory keeps the version it was written with
        info = {"schema_version": SCHEMA_VERSION, "created_by": f"cpvt-eval {__version__}"}
        self.write_text(self.RUN, json.dumps(info, indent=2) + "\n")

    def _migrate(self, version: int) -> None:
        """Before a run writes a directory of an earlier schema: rewrite its rows in today's spelling (schema 2's
        ``crop_mode`` "squash" is today's "full"), so that old and new rows never mean different things under
        one name. Rows that cannot be read are left as they are (the run sets them aside)."""
        if version >= SCHEMA_VERSION or not self.rows_path.exists():
            return
        lines = []
        changed = False
        for _n, line, d, _problem in self._read_lines():
            if d is not None:
                new = migrate_row(dict(d), version)
                if new != d:
                    line = json.dumps(new, sort_keys=True) + "\n"
                    changed = True
            lines.append(line)
        if changed:
            atomic_write_text(self.rows_path, "".join(lines))
        self._write_run_info(migrated_from=version)

    def _close_stale_records(self) -> None:
        """Under the lock no other invocation is running: a record still ``running`` belongs to one that was
        killed (SIGKILL, power loss) before it could close its record. Say so instead of leaving it running."""
        try:
            runs = self.provenance()
        except ResultsError:
            return
        stale = [r for r in runs if r.get("status") == "running"]
        if not stale:
            return
        for r in stale:
            r["status"] = "killed"
            r["note"] = "the process ended without closing this record (SIGKILL, power loss, or no space to write it)"
        self.write_text(self.PROVENANCE, json.dumps({"runs": runs}, indent=2, sort_keys=True) + "\n")

    def save_predictions(self, key: str, model: str, size: int, arrays: dict) -> str:
        """Write one cell's per-image predictions (numpy arrays) atomically; return the path relative to the root."""
        rel = f"predictions/{_safe_name(model)}_{size}px_{key}.safetensors"
        atomic_write_bytes(self.root / rel, safetensors_chunks(arrays))  # streamed: no copy of the whole file
        return rel

    def map_predictions(self, row: ResultRow, required: tuple[str, ...] = ("indices",)) -> dict:
        """The arrays of a stored cell as read-only memory maps (``map_arrays``): a large one (a softmax per image)
        is read a batch at a time from the page cache, never loaded whole. Checked as ``load_predictions``."""
        path = self.root / row.predictions
        if not row.predictions or not path.is_file():
            raise ResultsError(f"predictions file not found: {path}")
        try:
            arrays = map_arrays(path)
        except (OSError, ValueError, KeyError, struct.error) as e:
            raise ResultsError(f"cannot read predictions file {path}: {e}") from None
        if set(required) - set(arrays) or any(len(arrays[name]) != row.n_images for name in required):
            raise ResultsError(f"predictions file {path} does not match its row ({row.n_images} entries)")
        return arrays

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


def migrate_row(d: dict, version: int) -> dict:
    """A stored row of schema ``version`` in today's spelling: before schema 3, ``crop_mode`` "squash" resized the
    whole image to size x size, which is today's "full" ("squash" now means timm's squash)."""
    if version < 3 and d.get("crop_mode") == "squash":
        d = {**d, "crop_mode": "full"}
    return d


def atomic_write_bytes(path: Path, data) -> None:
    """Write ``data`` (bytes, or a list of byte buffers written in turn) to a temp file beside ``path``, fsync,
    rename: readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            for piece in data if isinstance(data, list) else [data]:
                f.write(piece)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:  # a failed write names no file: name the one meant
            raise OSError(e.errno, e.strerror, str(path)) from None
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
