"""Provenance: who computed a run directory's cells, where and how (one record per invocation)."""

from __future__ import annotations

import os
import platform
import sys
import uuid

from ..runtime import device_name, git_sha, now_iso, versions
from .schema import SCHEMA_VERSION


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
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "platform": platform.platform(),
        "python_executable": sys.executable,
        "seed": seed,
        "started_at": started,
        "finished_at": None,
        "status": "running",
        "config": config or {},
        "schema_version": SCHEMA_VERSION,
    }
