"""A `resolution` run interrupted in a subprocess (SIGINT, SIGKILL) and rerun ends with the same tables as an
uninterrupted run, and does not recompute the cells that had finished."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import make_imagefolder
from typer.testing import CliRunner

import cpvt_eval
from cpvt_eval.cli import app
from cpvt_eval.results import RunStore, row_key

REPO = Path(__file__).resolve().parents[1]

# Runs the real CLI, but parks the process (as if the work after the commit were slow) at the first safe point after
# the N-th row is stored, so that the test can interrupt it at a known point. The pause is not inside the commit
# (saving a cell's predictions, then its row): an interrupt there waits, by design, until the cell is stored whole.
# At the safe point `interrupts.check()` the commit has finished and a signal must be acted on at once. The script
# starts with SIGINT at its default, as a command started in the foreground: a test run started in the background
# by a non-interactive shell passes SIGINT on ignored, and the tool rightly keeps it ignored then.
# Nothing in the package is changed.
PAUSING_CLI = """
import signal, sys, time
from pathlib import Path

signal.signal(signal.SIGINT, signal.default_int_handler)

import cpvt_eval.interrupts as interrupts
import cpvt_eval.results as results

marker, stop_after, argv = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
append, check = results.RunStore.append, interrupts.check
stored = 0

def counting_append(self, row):
    global stored
    append(self, row)
    stored += 1

def pausing_check():
    if stored == stop_after and not marker.exists():
        marker.write_text("stored")
        time.sleep(300)
    check()

results.RunStore.append = counting_append
interrupts.check = pausing_check
from cpvt_eval.cli import main
sys.exit(main(argv))
"""

# Row fields that differ between two runs of the same cells by nature: when they ran.
VOLATILE = {"started_at", "duration_s", "aggregate_images_per_sec"}  # wall-clock figures


pytestmark = pytest.mark.usefixtures("one_thread")


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["HF_HUB_OFFLINE"] = "1"
    env["OMP_NUM_THREADS"] = "1"  # as in `one_thread`
    return env


def _args(imagefolder: Path, ckpts: dict, out: Path) -> list[str]:
    return [
        "resolution",
        "-m",
        "cpvt_toy",
        "deit_toy",
        "-s",
        "56",
        "64",
        "72",
        "--data",
        str(imagefolder),
        "-c",
        f"cpvt_toy={ckpts['cpvt_toy'][1]}",
        "-c",
        f"deit_toy={ckpts['deit_toy'][1]}",
        "--model-arg",
        "num_classes=1000",
        "--no-throughput",
        "-j",
        "0",
        "-b",
        "4",
        "--out",
        str(out),
    ]


def _stable_rows(out: Path) -> list[dict]:
    return [{k: v for k, v in r.to_dict().items() if k not in VOLATILE} for r in RunStore.existing(out).rows()]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Data, checkpoints and an uninterrupted reference run, shared by both interruptions."""
    root = tmp_path_factory.mktemp("resume")
    imagefolder = make_imagefolder(root / "val")
    ckpts = {}
    for i, name in enumerate(("cpvt_toy", "deit_toy")):
        torch.manual_seed(i)
        path = root / f"{name}.pth"
        torch.save(cpvt_eval.create_model(name, num_classes=1000).state_dict(), path)
        ckpts[name] = (None, path)
    reference = root / "reference"
    result = CliRunner().invoke(app, _args(imagefolder, ckpts, reference))
    assert result.exit_code == 0, result.output
    return imagefolder, ckpts, reference


@pytest.mark.slow  # kills a real subprocess mid-run, then reruns it
@pytest.mark.parametrize(
    "sig",
    [
        signal.SIGINT,
        signal.SIGKILL,
    ],
    ids=["sigint", "sigkill"],
)
def test_interrupted_run_resumes_to_the_same_tables(tmp_path, setup, sig):
    imagefolder, toy_checkpoints, reference = setup
    out = tmp_path / "run"
    script = tmp_path / "pausing_cli.py"
    script.write_text(PAUSING_CLI)
    marker = tmp_path / "stored"
    # 6 cells; the pass at 64px finishes both models, the first is stored, the test interrupts before the second.
    cmd = [sys.executable, str(script), str(marker), "3", *_args(imagefolder, toy_checkpoints, out)]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            assert proc.poll() is None, f"the run ended early: {proc.communicate()}"
            assert time.monotonic() < deadline, "the run never stored its third cell"
            time.sleep(0.05)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    store = RunStore.existing(out)
    before = {row_key(r): r for r in store.rows()}
    assert len(before) == 3
    if sig == signal.SIGINT:
        assert proc.returncode == 130, stderr
        assert "interrupted" in stderr and "Traceback" not in stderr
        assert store.provenance()[-1]["status"] == "interrupted"
        assert "interrupted" in (out / "results.md").read_text()
    else:
        assert proc.returncode == -signal.SIGKILL
        assert store.provenance()[-1]["status"] == "running"  # nobody could close it
        # a kill in the middle of writing the next row leaves a torn line: it must never be read
        with open(store.rows_path, "a") as f:
            f.write(store.rows_path.read_text().splitlines()[0][:57])
        assert len(store.rows()) == 3

    # The same command again (in-process: only the interrupted run needs a process of its own).
    rerun = CliRunner().invoke(app, _args(imagefolder, toy_checkpoints, out))
    assert rerun.exit_code == 0, rerun.output
    assert "skipping 3 finished cell(s)" in rerun.stderr

    # Finished cells were not recomputed: their rows are the ones stored before the interruption, once each.
    lines = store.rows_path.read_text().splitlines()
    assert len(lines) == 6 and all(json.loads(line) for line in lines)
    after = {row_key(r): r for r in store.rows()}
    for key, row in before.items():
        assert after[key] == row
    assert store.provenance()[-1]["cells_computed"] == 3

    # ... and the final tables are those of the uninterrupted run.
    assert _stable_rows(out) == _stable_rows(reference)
    assert (out / "results.tex").read_text() == (reference / "results.tex").read_text()
    assert _csv_without_times(out).equals(_csv_without_times(reference))
    for row in RunStore.existing(out).rows():
        assert (out / row.predictions).read_bytes() == (reference / row.predictions).read_bytes()


def _csv_without_times(run: Path):
    import pandas as pd

    return pd.read_csv(run / "results.csv").drop(columns=sorted(VOLATILE))
