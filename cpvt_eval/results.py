"""Result rows, the run directory and provenance.

A run directory holds:

* ``rows.jsonl``: one JSON row per finished cell, appended and fsynced the moment the cell finishes (a torn
  last line, e.g. after a SIGKILL, is ignored when reading);
* ``results.csv`` / ``results.md``: rendered from the rows, rewritten atomically (temp file + rename);
* ``predictions/``: per-image top-5 predictions of every cell (``.pt`` tensors, compact int16);
* ``provenance.json``: command line, versions, device, git sha, seed, timestamps.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import tempfile
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
    real_top1: float | None = None
    real_n: int | None = None  # images with ReaL labels (the denominator of real_top1)
    real_excluded: int | None = None  # images without ReaL labels, left out of real_top1

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


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with _suppress_oserror():
            os.unlink(tmp)
        raise


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


class RunStore:
    """The run directory: rows appended as cells finish, reports rendered from the rows."""

    ROWS = "rows.jsonl"

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise ResultsError(f"--out {self.root} exists and is not a directory")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ResultsError(f"cannot create run directory {self.root}: {e.strerror}") from None

    @property
    def rows_path(self) -> Path:
        return self.root / self.ROWS

    def append(self, row: ResultRow) -> None:
        """Append one row durably: a single ``write`` of a whole line, then fsync."""
        line = json.dumps(row.to_dict(), sort_keys=True) + "\n"
        with open(self.rows_path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def rows(self) -> list[ResultRow]:
        """All complete rows; a torn last line is skipped. A later row for the same cell replaces the earlier."""
        if not self.rows_path.exists():
            return []
        rows: dict[tuple, ResultRow] = {}
        with open(self.rows_path, encoding="utf-8") as f:
            for line in f:
                if not line.endswith("\n"):
                    break  # torn write at the end: the cell was not finished
                try:
                    row = ResultRow.from_dict(json.loads(line))
                except (json.JSONDecodeError, TypeError):
                    continue
                rows[(row.model, row.checkpoint_sha256, row.img_size, row.pe_policy, row.dtype)] = row
        return list(rows.values())

    def save_predictions(self, name: str, tensors: dict) -> Path:
        import torch

        path = self.root / "predictions" / f"{name}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        torch.save(tensors, tmp)
        os.replace(tmp, path)
        return path

    def write_text(self, name: str, text: str) -> Path:
        path = self.root / name
        atomic_write_text(path, text)
        return path

    def write_provenance(self, argv: list[str], device: str, extra: dict | None = None) -> Path:
        import torch

        info = {
            "command": " ".join(argv),
            "argv": argv,
            "versions": versions(),
            "git_sha": git_sha(),
            "device": device,
            "threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "python_executable": sys.executable,
            "written_at": now_iso(),
        }
        info.update(extra or {})
        return self.write_text("provenance.json", json.dumps(info, indent=2, sort_keys=True) + "\n")
