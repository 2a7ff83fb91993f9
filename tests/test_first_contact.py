"""First contact: every command of the README's Usage section, as a new user types it on a fresh machine.

Each command runs in its own process through the installed ``cpvt-eval`` script, with empty user caches
(``CPVT_EVAL_CACHE``, ``XDG_CACHE_HOME``, ``TORCH_HOME`` and ``HF_HOME`` in a temporary folder) and nothing
stubbed: the FLOP counts of ``models`` are computed for real, the checkpoints are the shipped demo files, the
images are real JPEGs on disk. Tiny inputs keep it to about a minute on two cores.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from tests.conftest import make_image, make_imagefolder

pytestmark = pytest.mark.slow

TOYS = ("cpvt_toy", "deit_toy")


def _command() -> list[str]:
    script = Path(sys.executable).parent / "cpvt-eval"
    return [str(script)] if script.exists() else [sys.executable, "-m", "cpvt_eval"]


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    home = tmp_path_factory.mktemp("first_contact")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CPVT_EVAL_", "XDG_", "TORCH_", "HF_"))}
    env.update(
        CPVT_EVAL_CACHE=str(home / "cache"),
        XDG_CACHE_HOME=str(home / "xdg"),
        TORCH_HOME=str(home / "torch"),
        HF_HOME=str(home / "hf"),
        HF_HUB_OFFLINE="1",
        PYTHONWARNINGS="ignore",
    )
    make_imagefolder(home / "val", (0, 1, 999), per_class=3, size=(100, 80))
    (home / "photos" / "trip").mkdir(parents=True)  # a researcher's own photos: no classes, no labels
    for i in range(5):
        make_image(900 + i, (96, 72)).save(home / "photos" / ("trip" if i % 2 else "") / f"DSC{i:03d}.jpg")
    shipped = resources.files("cpvt_eval.resources") / "demo"
    checkpoints = []
    for name in TOYS:
        with resources.as_file(shipped / f"{name}.safetensors") as src:
            dst = home / f"{name}.safetensors"
            shutil.copyfile(src, dst)
        checkpoints += ["-c", f"{name}={dst}"]
    return home, env, checkpoints


def run(fresh, *args: str) -> subprocess.CompletedProcess:
    home, env, _ = fresh
    done = subprocess.run([*_command(), *args], cwd=home, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"cpvt-eval {' '.join(args)} -> {done.returncode}\n{done.stderr[-2000:]}"
    assert "Traceback" not in done.stderr
    return done


def test_every_usage_command_works_on_a_fresh_machine(fresh):
    home, _, checkpoints = fresh
    toys = ["-m", *TOYS, "--model-arg", "num_classes=10", *checkpoints]

    listed = run(fresh, "models")
    assert "cpvt_ti" in listed.stdout and "cait_xxs24_224" in listed.stdout
    rows = json.loads(run(fresh, "models", "--json").stdout)
    assert rows and all(r["params"] > 0 and r["gflops"] is not None and r["gflops"] > 0 for r in rows)
    assert (home / "cache").exists()  # the costs were computed here, from nothing, and cached

    timed = json.loads(run(fresh, "throughput", "-m", "cpvt_ti", "deit_ti", "-s", "224", "--repeats", "3",
                           "--batch-size", "2", "--json").stdout)  # fmt: skip
    assert [r["img_size"] for r in timed] == [224, 224] and all(r["images_per_sec"] > 0 for r in timed)

    checked = run(fresh, "check-data", "val")
    assert "9 images in 3 classes" in checked.stdout + checked.stderr

    run(fresh, "resolution", *toys, "-s", "56", "64", "--data", "val", "--out", "runs/r", "--throughput-repeats", "3")
    stored = [json.loads(line) for line in (home / "runs/r/rows.jsonl").read_text().splitlines()]
    assert sorted((r["model"], r["img_size"]) for r in stored) == sorted((m, s) for m in TOYS for s in (56, 64))
    assert all(r["n_images"] == 9 and r["mean"] and r["std"] for r in stored)

    run(fresh, "shift", *toys, "-s", "56", "--data", "val", "--out", "runs/s", "--epochs", "1")
    assert (home / "runs/s/shift.csv").exists()

    run(fresh, "agreement", *toys, "-s", "64", "--data", "photos", "--out", "runs/a")
    agreed = [json.loads(line) for line in (home / "runs/a/rows.jsonl").read_text().splitlines()]
    assert sorted((r["model"], r["img_size"]) for r in agreed) == sorted((m, s) for m in TOYS for s in (56, 64))
    assert all(r["n_images"] == 5 and r["top1"] is None for r in agreed)
    assert (home / "runs/a/agreement.md").stat().st_size > 0

    run(fresh, "report", "runs/r", "--format", "md,csv,tex,json,png", "--pairs")
    for name in ("results.md", "results.csv", "results.tex", "results.json", "top1_vs_resolution.png"):
        assert (home / "runs/r" / name).stat().st_size > 0, name

    compared = run(fresh, "compare", "runs/r", "runs/r", "--max-drop", "0.1")
    assert compared.stdout.startswith("ok") or "ok:" in compared.stdout + compared.stderr

    demo = run(fresh, "demo", "--per-class", "2", "-s", "56", "64", "--out", "runs/demo", "--cache-dir", "demo-data")
    assert (home / "runs/demo/paper.md").exists() and (home / "runs/demo/results.md").exists()
    assert "demo vs paper" in demo.stdout  # `cpvt-eval demo > demo.txt` keeps the tables

    # the toys by name, with their shipped weights, on the folder the demo wrote: no checkpoint, no class map
    (world,) = (home / "demo-data").glob("demo-v2-*")
    toys = run(
        fresh,
        "resolution",
        "-m",
        *TOYS,
        "-s",
        "56",
        "64",
        "--data",
        str(world),
        "--out",
        "runs/toys",
        "--throughput-repeats",
        "3",
    )
    assert "cpvt_toy" in toys.stdout and "deit_toy" in toys.stdout
