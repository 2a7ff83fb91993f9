"""benchmarks/gpu_check.sh: its table and checks (fast), and the whole script in its CPU smoke mode (slow)."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def helpers():
    spec = importlib.util.spec_from_file_location("gpu_check_helpers", ROOT / "benchmarks" / "gpu_check_helpers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tp_row(model, size, ips, ratio, ref="deit_tiny_patch16_224", retries=0):
    batch = 256
    ms = 1000 * batch / ips
    return {
        "model": model,
        "img_size": size,
        "dtype": "fp32",
        "batch_size": batch,
        "images_per_sec": ips,
        "ms_per_batch_q1": 0.9 * ms,
        "ms_per_batch_q3": 1.1 * ms,
        "repeats": 5,
        "ratio_reference": ref,
        "ratio": ratio,
        "ratio_q1": ratio - 0.01,
        "ratio_q3": ratio + 0.01,
        "peak_fraction": 0.4,
        "device_name": "NVIDIA Test GPU",
        "oom_retries": retries,
    }


def test_the_table_sets_the_paper_v100_figures_next_to_the_measured_ones(tmp_path):
    rows = [tp_row("deit_tiny_patch16_224", 224, 5000.0, 1.0), tp_row("cpvt_ti_plus", 224, 4900.0, 0.98)]
    rows.append(tp_row("cpvt_ti_plus", 384, 1500.0, 0.99))
    (tmp_path / "tp.json").write_text(json.dumps(rows))
    helpers().table(str(tmp_path / "table.md"), str(tmp_path / "tp.json"))
    text = (tmp_path / "table.md").read_text()
    assert text.startswith("Device: NVIDIA Test GPU")
    lines = [line for line in text.splitlines() if line.startswith("| ")][1:]
    assert lines[0].endswith("| 5,000.0 | 4,545-5,556 | 5 |  | 40% | 2536.5 |")
    assert "| 0.980 [0.97-0.99] | 40% | 2500.7 |" in lines[1]
    assert lines[2].endswith("| 40% |  |")  # the paper has no 384 px figure


def test_the_oom_check_needs_a_halving(tmp_path):
    path = tmp_path / "oom.json"
    path.write_text(json.dumps([tp_row("deit_base_patch16_224", 512, 100.0, 1.0, retries=3)]))
    helpers().oom(str(path))
    path.write_text(json.dumps([tp_row("deit_base_patch16_224", 512, 100.0, 1.0, retries=0)]))
    with pytest.raises(SystemExit) as e:
        helpers().oom(str(path))
    assert e.value.code == 1


@pytest.mark.slow
def test_cpu_smoke_runs_every_step(tmp_path):
    """The whole script on the CPU with toy models (one to three minutes on two shared cores)."""
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    result = subprocess.run(
        ["bash", str(SCRIPT), "--cpu-smoke", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout + result.stderr
    steps = {r["step"]: r["exit"] for r in csv.DictReader(open(out / "steps.tsv"), delimiter="\t")}
    assert steps.pop("pinned") == steps.pop("oom") == "skipped"  # CUDA only
    expected = {"env", "inputs", "eval-fp32", "eval-fp32-check", "eval-bf16", "eval-bf16-check", "tp-deit_toy-fp32"}
    expected |= {"table", "torchrun", "torchrun-check"}
    assert steps == dict.fromkeys(expected, "0")
    table = (out / "throughput_table.md").read_text()
    for model in ("deit_toy", "cpvt_toy"):
        for size in (32, 48):
            assert f"| {model} | {size} | fp32 |" in table
    assert "torchrun processes 2 (gloo)" in (out / "summary.md").read_text()
