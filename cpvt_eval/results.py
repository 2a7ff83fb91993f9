"""Result rows, the run directory and provenance.

A run directory holds:

* ``rows.jsonl``: one JSON row per finished cell, appended and fsynced the moment the cell finishes (a torn
  last line, e.g. after a SIGKILL, is never read, and is cut off before the next append);
* ``predictions/``: per-image label and top-5 indices of every cell (safetensors, int16), written before the
  cell's row so that a row always has its predictions;
* ``results.*`` and plots: rendered from the rows, rewritten atomically (temp file + rename);
* ``provenance.json``: one record per invocation: command line, versions, device, threads, git sha, seed,
  timestamps, status;
* ``.lock``: held (``flock``) by the run writing the directory, so two runs never interleave.

A cell is identified by its key (``cell_key``): model, checkpoint sha256, size, protocol (crop, interpolation,
PE options), dtype, model arguments, dataset fingerprint and limit. A rerun skips the keys already stored.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

from .errors import ResultsError


@dataclass
class ResultRow:
    """One (model, checkpoint, size, protocol) cell. Accuracies in percent, computed once from integer counts."""

    model: str
    pe: str
    checkpoint: str
    checkpoint_sha256: str
    img_size: int
    grid: str
    resize_size: int
    crop_pct: float
    interpolation: str
    pe_policy: str
    dtype: str
    device: str
    n_images: int
    n_skipped: int
    correct1: int
    correct5: int
    top1: float
    top5: float
    top1_ci95: str
    images_per_sec: float | None
    throughput_batch: int | None
    gflops_per_image: float | None
    params: int
    dataset: str
    dataset_fingerprint: str
    partial: bool
    limit: int | None
    model_args: str
    versions: str
    started_at: str
    duration_s: float
    # Scale-out: processes of the run; how images_per_sec was measured ("model-only": the model alone on one
    # device; "model-only per rank": the same on rank 0's device of a torchrun job); the data-parallel rate of
    # the whole pass (images / wall time of the data pass at this size, all processes, decode and every model of
    # the pass included). The two figures answer different questions and are never mixed in one column.
    world_size: int = 1
    throughput_scope: str = ""
    aggregate_images_per_sec: float | None = None
    extra: dict = field(default_factory=dict)
    # The data layer's columns: how the set was read, which bad files were left out, ImageNet-ReaL top-1.
    layout: str = ""
    label_source: str = ""
    skipped_files: str = ""  # ";"-separated relative paths of the images left out (n_skipped of them)
    decode_draft: bool = False
    ema: bool = False  # the checkpoint's EMA weights were evaluated (same file, other weights)
    real_top1: float | None = None
    real_n: int | None = None  # images with ReaL labels (the denominator of real_top1)
    real_excluded: int | None = None  # images without ReaL labels, left out of real_top1
    pe_options: str = ""  # the requested APE/sin-cos handling; with the model and size it fixes ``pe_policy``
    native_size: int | None = None  # the model's training size: the reference of "change from native"
    predictions: str = ""  # per-image predictions, relative to the run directory

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ResultRow:
        names = {f.name for f in fields(cls)}
        known = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names}
        row = cls(**known)
        row.extra = {**row.extra, **extra}
        return row


CSV_COLUMNS = [f.name for f in fields(ResultRow) if f.name != "extra"]

# What makes two cells the same computation: change any of these and the cell is computed again.
KEY_FIELDS = (
    "model",
    "checkpoint_sha256",
    "img_size",
    "crop_pct",
    "interpolation",
    "pe_options",
    "dtype",
    "model_args",
    "dataset_fingerprint",
    "limit",
    "decode_draft",
    "ema",
)


def cell_key(
    *,
    model: str,
    checkpoint_sha256: str,
    img_size: int,
    crop_pct: float,
    interpolation: str,
    pe_options: str,
    dtype: str,
    model_args: str,
    dataset_fingerprint: str,
    limit: int | None,
    decode_draft: bool = False,
    ema: bool = False,
) -> str:
    """A short stable hash of the fields that define a cell (``KEY_FIELDS``)."""
    payload = {
        "model": model,
        "checkpoint_sha256": checkpoint_sha256,
        "img_size": int(img_size),
        "crop_pct": float(crop_pct),
        "interpolation": interpolation,
        "pe_options": pe_options,
        "dtype": dtype,
        "model_args": model_args,
        "dataset_fingerprint": dataset_fingerprint,
        "limit": None if limit is None else int(limit),
    }
    if decode_draft:  # draft() decoding changes pixels; absent otherwise so that existing keys stay the same
        payload["decode_draft"] = True
    if ema:  # EMA weights of the same file are other weights
        payload["ema"] = True
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def row_key(row: ResultRow) -> str:
    return cell_key(**{k: getattr(row, k) for k in KEY_FIELDS})


def pe_options_label(ape_interpolation: str, antialias: bool, sincos: str | None = None) -> str:
    label = f"ape={ape_interpolation},antialias={str(bool(antialias)).lower()}"
    return label if sincos is None else f"{label},sincos={sincos}"


def wilson_interval(correct: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score 95% interval for a proportion, in percent."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (100 * max(0.0, centre - half), 100 * min(1.0, centre + half))


def format_ci(correct: int, n: int) -> str:
    lo, hi = wilson_interval(correct, n)
    return f"{lo:.2f}-{hi:.2f}"


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: the binomial test of ``b`` against ``b + c`` discordant pairs at 1/2.

    ``b``: images only the first model gets right; ``c``: only the second. Summed in log space, so 50,000
    discordant pairs cost no big integers.
    """
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    log_half_n = n * math.log(0.5)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + log_half_n for i in range(k + 1)]
    top = max(terms)
    tail = math.exp(top) * sum(math.exp(t - top) for t in terms)
    return min(1.0, 2.0 * tail)


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


def versions() -> dict[str, str]:
    import timm
    import torch

    from . import __version__

    v = {
        "cpvt_eval": __version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
    }
    if torch.version.cuda and torch.cuda.is_available():
        v["cuda"] = torch.version.cuda
    return v


def versions_string() -> str:
    return " ".join(f"{k}={v}" for k, v in versions().items())


def device_name(device: str) -> str:
    """A human name for the device: the GPU's name, or the CPU model."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_sha() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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

    def load_predictions(self, row: ResultRow) -> dict:
        """The per-image ``indices``, ``labels`` and ``top5`` of a stored cell, as numpy arrays."""
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
        missing = {"indices", "labels", "top5"} - set(arrays)
        if missing or len(arrays.get("labels", ())) != row.n_images:
            raise ResultsError(f"predictions file {path} does not match its row ({row.n_images} images)")
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


def provenance_record(argv: list[str], device: str, seed: int, config: dict | None = None) -> dict:
    """Who computed what, where and how: command line, versions, device, threads, git sha, seed, timestamps."""
    import torch

    started = now_iso()
    return {
        "run_id": uuid.uuid4().hex[:12],
        "command": " ".join(argv),
        "argv": list(argv),
        "versions": versions(),
        "git_sha": git_sha(),
        "device": device,
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python_executable": sys.executable,
        "seed": seed,
        "started_at": started,
        "finished_at": None,
        "status": "running",
        "config": config or {},
    }


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
