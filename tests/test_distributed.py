"""torchrun evaluation: exact sharding, gathering to rank 0, completeness, error propagation.

The launches use CPU processes over gloo on a generated set of 101 images (a size that no world size here
divides, and 13 batches of 8 with a short last one), so the shards are uneven and one is short.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_image, make_imagefolder
from typer.testing import CliRunner

import cpvt_eval
from cpvt_eval.cli import app
from cpvt_eval.data import imagenet_synsets, open_dataset
from cpvt_eval.distributed import (
    DistContext,
    DistributedError,
    merge_cells,
    rank_device,
    shard_bounds,
    shard_image_set,
)
from cpvt_eval.engine import CellOutput

REPO = Path(__file__).resolve().parents[1]
CLASSES = (0, 1, 2, 3, 4, 5, 6, 7, 8, 999)
BATCH = 8


# -- sharding and merging (no processes) ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 101, 1000])
@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("batch", [1, 3, 8, 64])
def test_shards_partition_the_set_in_whole_batches(n, world, batch):
    bounds = [shard_bounds(n, world, r, batch) for r in range(world)]
    covered = [i for start, stop in bounds for i in range(start, stop)]
    assert covered == list(range(n))  # every index once, in order: no padding, no duplicate
    for start, _ in bounds:
        assert start % batch == 0  # each rank's batches are batches of the one-process run
    n_batches = [-(-(stop - start) // batch) for start, stop in bounds]
    assert max(n_batches) - min(n_batches) <= 1


def test_shard_image_set_keeps_global_positions(tmp_path):
    image_set = open_dataset(make_imagefolder(tmp_path / "val", class_indices=(0, 1), per_class=5))
    shards = [shard_image_set(image_set, 3, r, 2) for r in range(3)]
    joined = [s for sh in shards for s in sh.image_set.samples]
    assert joined == image_set.samples
    assert [(sh.start, sh.stop) for sh in shards] == [(0, 2), (2, 6), (6, 10)]  # 5 batches: 1, 2, 2
    assert all(sh.total == 10 for sh in shards)


def _part(model, size, indices, labels, top5, correct1, correct5, duration=1.0) -> dict:
    return {
        "model": model,
        "size": size,
        "pe_policy": "peg-native",
        "grid": "8x8",
        "resize_size": 36,
        "correct1": correct1,
        "correct5": correct5,
        "n": len(indices),
        "duration_s": duration,
        "indices": torch.tensor(indices, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
        "top5": torch.tensor(top5, dtype=torch.int16).reshape(len(indices), -1 if top5 else 2),
    }


def test_merge_orders_by_index_and_sums_counts():
    parts = [
        _part("m", 32, [0, 1], [5, 6], [[5, 1], [0, 6]], 1, 2, duration=2.0),
        _part("m", 32, [2], [7], [[7, 3]], 1, 1, duration=3.0),
        _part("m", 32, [], [], [], 0, 0, duration=0.1),  # an empty shard (fewer batches than ranks)
    ]
    cell = merge_cells(parts, 3)
    assert isinstance(cell, CellOutput)
    assert (cell.correct1, cell.correct5, cell.n) == (2, 3, 3)
    assert cell.indices.tolist() == [0, 1, 2]
    assert cell.labels.tolist() == [5, 6, 7]
    assert cell.top5.tolist() == [[5, 1], [0, 6], [7, 3]]
    assert cell.duration_s == 3.0  # the slowest rank sets the wall time of the pass


def test_merge_refuses_a_missing_image():
    parts = [_part("m", 32, [0, 1], [0, 0], [[0], [0]], 2, 2), _part("m", 32, [3], [0], [[0]], 1, 1)]
    with pytest.raises(DistributedError, match=r"incomplete: 1 image\(s\) missing \(first: index 2\)"):
        merge_cells(parts, 4)


def test_merge_refuses_an_image_seen_twice():
    parts = [_part("m", 32, [0, 1], [0, 0], [[0], [0]], 2, 2), _part("m", 32, [1, 2], [0, 0], [[0], [0]], 2, 2)]
    with pytest.raises(DistributedError, match=r"more than once \(first: index 1\)"):
        merge_cells(parts, 3)


def test_merge_refuses_cells_that_differ():
    parts = [_part("a", 32, [0], [0], [[0]], 1, 1), _part("b", 32, [1], [0], [[0]], 1, 1)]
    with pytest.raises(DistributedError, match="rank 1 sent b at 32px while rank 0 sent a"):
        merge_cells(parts, 2)


def test_rank_device():
    assert rank_device("cpu", 3) == torch.device("cpu")
    if not torch.cuda.is_available():
        assert rank_device("auto", 1) == torch.device("cpu")
        with pytest.raises(DistributedError, match="no CUDA device"):
            rank_device("cuda", 0)
    with pytest.raises(DistributedError, match="names one GPU"):
        rank_device("cuda:1", 0)
    with pytest.raises(DistributedError, match="unknown device"):
        rank_device("gpu7", 0)


def test_plain_process_is_not_distributed(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not DistContext.from_env("cpu").enabled
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    ctx = DistContext.from_env("cpu")
    assert not ctx.enabled and ctx.is_main and ctx.world_size == 1


# -- torchrun launches ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """101 images over 10 classes and two toy checkpoints whose heads favour those classes (so that top-1 and
    top-5 are neither 0 nor 100 and a changed prediction shows)."""
    root = tmp_path_factory.mktemp("dist")
    data = make_imagefolder(root / "val", class_indices=CLASSES, per_class=10)
    make_image(4242).save(data / imagenet_synsets()[999] / "zz_extra.JPEG")
    ckpts = {}
    for i, name in enumerate(("cpvt_toy", "deit_toy")):
        torch.manual_seed(i)
        model = cpvt_eval.create_model(name, num_classes=1000).eval()
        with torch.no_grad():
            model.head.weight[list(CLASSES)] *= 10
        ckpts[name] = root / f"{name}.pth"
        torch.save({"model": model.state_dict()}, ckpts[name])
    return root, data, ckpts


def _args(data, ckpts, out, sizes=("32", "40"), extra=()) -> list[str]:
    args = ["resolution", "--model", *ckpts, "--sizes", *sizes, "--data", str(data), "--out", str(out)]
    for name, path in ckpts.items():
        args += ["--checkpoint", f"{name}={path}"]
    return [*args, "--model-arg", "num_classes=1000", "-b", str(BATCH), "-j", "0", "--throughput-repeats", "1", *extra]


def torchrun(nproc: int, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["HF_HUB_OFFLINE"] = "1"
    env["OMP_NUM_THREADS"] = "1"  # torchrun's own default for several processes per node, set to keep it quiet
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd += ["-m", "cpvt_eval", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def single(job):
    root, data, ckpts = job
    out = root / "run1"
    # One thread, as each torchrun worker has (OMP_NUM_THREADS=1): the comparison is then between the same kernels.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = CliRunner().invoke(app, _args(data, ckpts, out, extra=["--json"]))
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    return out


def _rows(out: Path) -> dict:
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    return {(r["model"], r["img_size"]): r for r in rows}


SAME = ("n_images", "correct1", "correct5", "top1", "top5", "top1_ci95", "grid", "pe_policy", "resize_size")


@pytest.mark.parametrize("nproc", [2, 3])
def test_torchrun_gives_the_single_process_results(job, single, nproc):
    root, data, ckpts = job
    out = root / f"run{nproc}"
    proc = torchrun(nproc, _args(data, ckpts, out, extra=["--json"]), root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = json.loads(proc.stdout)  # one JSON document: only rank 0 wrote to stdout
    assert len(printed) == 4

    base, rows = _rows(single), _rows(out)
    assert set(rows) == set(base) == {(m, s) for m in ckpts for s in (32, 40)}
    for key, row in rows.items():
        assert {f: row[f] for f in SAME} == {f: base[key][f] for f in SAME}, key
        assert row["n_images"] == 101
        assert 0 < row["correct1"] < row["correct5"] < 101  # the comparison is not between trivial counts
        assert row["world_size"] == nproc and base[key]["world_size"] == 1
        assert row["throughput_scope"] == "model-only per rank" and base[key]["throughput_scope"] == "model-only"
        assert row["images_per_sec"] > 0 and row["aggregate_images_per_sec"] > 0
        a = torch.load(single / "predictions" / f"{key[0]}_{key[1]}.pt", weights_only=True)
        b = torch.load(out / "predictions" / f"{key[0]}_{key[1]}.pt", weights_only=True)
        assert b["indices"].tolist() == list(range(101))
        for name in ("indices", "labels", "top5"):
            assert torch.equal(a[name], b[name]), (key, name)

    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["distributed"]["world_size"] == nproc
    assert provenance["distributed"]["backend"] == "gloo"
    assert [r["rank"] for r in provenance["distributed"]["ranks"]] == list(range(nproc))


def test_a_failing_rank_stops_the_run_with_its_message(job, tmp_path):
    root, data, ckpts = job
    bad = tmp_path / "val"
    make_imagefolder(bad, class_indices=(0, 999), per_class=8)
    # Sorted last, so it falls in the last shard: rank 1 fails, rank 0's own shard is clean.
    (bad / imagenet_synsets()[999] / "zzz_broken.JPEG").write_bytes(b"not a jpeg")
    out = tmp_path / "run"
    cpvt = {"cpvt_toy": ckpts["cpvt_toy"]}
    proc = torchrun(2, _args(bad, cpvt, out, sizes=("32",), extra=["--no-throughput"]), tmp_path)
    assert proc.returncode != 0
    assert "error: rank 1 of 2: cannot decode image" in proc.stderr
    assert "zzz_broken.JPEG" in proc.stderr
    assert not (out / "rows.jsonl").exists()


ROUNDS_SCRIPT = """
import json, os, sys
from types import SimpleNamespace

from cpvt_eval import distributed

rank = int(os.environ["RANK"])
record = {}
try:
    with distributed.session("cpu") as ctx:
        models = [SimpleNamespace(key="a"), SimpleNamespace(key="b")]
        # Every rank answers differently; rank 0's answer must hold on every rank.
        todo = ctx.agreed_todo(lambda m, s: (m.key == "a") == (rank == 0) and s == 32, models, [32, 40])
        record["todo"] = sorted([m.key, s] for m in models for s in (32, 40) if todo(m, s))
        record["agree"] = ctx.agree(f"rank {rank}")
        if rank == 1:
            raise RuntimeError("boom")
        ctx.agree("unreachable")
        record["passed"] = True
except Exception as e:
    record["error"] = f"{type(e).__name__}: {e}"
    record["code"] = getattr(e, "exit_code", None)
with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as f:
    json.dump(record, f)
"""


def test_rounds_share_rank0_decisions_and_any_failure(tmp_path):
    """What a resumed run relies on (rank 0 decides the cells left, whatever the world size) and what stops a
    job when a rank raises an unexpected exception in the middle of a round."""
    script = tmp_path / "rounds.py"
    script.write_text(ROUNDS_SCRIPT)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3", str(script)]
    proc = subprocess.run(cmd + [str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(3)]
    for record in records:
        assert record["todo"] == [["a", 32]]
        assert record["agree"] == "rank 0"
        assert "passed" not in record
    assert records[1]["error"] == "RuntimeError: boom"
    for r in (0, 2):
        assert records[r]["error"] == "RankFailedError: rank 1 of 3: RuntimeError: boom"
        assert records[r]["code"] == 1
