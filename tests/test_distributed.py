"""torchrun evaluation: exact sharding, gathering to rank 0, completeness, error propagation.

The launches use CPU processes over gloo on a generated set of 101 images (a size that no world size here
divides, and 13 batches of 8 with a short last one), so the shards are uneven and one is short.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import cell_predictions, make_image, make_imagefolder
from typer.testing import CliRunner

import cpvt_eval
from cpvt_eval.cli import app
from cpvt_eval.data import default_workers, imagenet_synsets, open_dataset
from cpvt_eval.distributed import (
    DistContext,
    DistributedError,
    check_same_inputs,
    merge_cells,
    rank_device,
    shard_bounds,
    shard_image_set,
)
from cpvt_eval.errors import CheckpointError, DataError

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


def _part(model, size, indices, labels, top5, duration=1.0) -> dict:
    info = {
        "model": model,
        "size": size,
        "pe_policy": "peg-native",
        "grid": "8x8",
        "resize_size": 36,
        "duration_s": duration,
        "batch_size": 2,
        "oom_retries": 0,
        "nonfinite": 0,
    }
    records = {
        "indices": torch.tensor(indices, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
        "top5": torch.tensor(top5, dtype=torch.int16).reshape(len(indices), -1 if top5 else 2),
    }
    return {"cell": ("resolution", model, size), "info": info, "records": records}


def test_merge_orders_by_index_and_takes_the_slowest_rank():
    parts = [
        _part("m", 32, [0, 1], [5, 6], [[5, 1], [0, 6]], duration=2.0),
        _part("m", 32, [2], [7], [[7, 3]], duration=3.0),
        _part("m", 32, [], [], [], duration=0.1),  # an empty shard (fewer batches than ranks)
    ]
    records, info = merge_cells(parts, 3)
    assert records["indices"].tolist() == [0, 1, 2]
    assert records["labels"].tolist() == [5, 6, 7]
    assert records["top5"].tolist() == [[5, 1], [0, 6], [7, 3]]
    assert info.duration_s == 3.0  # the slowest rank sets the wall time of the pass


def test_merge_refuses_a_missing_image():
    parts = [_part("m", 32, [0, 1], [0, 0], [[0], [0]]), _part("m", 32, [3], [0], [[0]])]
    with pytest.raises(DistributedError, match=r"incomplete: 1 image\(s\) missing \(first: index 2\)"):
        merge_cells(parts, 4)


def test_merge_refuses_an_image_seen_twice():
    parts = [_part("m", 32, [0, 1], [0, 0], [[0], [0]]), _part("m", 32, [1, 2], [0, 0], [[0], [0]])]
    with pytest.raises(DistributedError, match=r"more than once \(first: index 1\)"):
        merge_cells(parts, 3)


def test_merge_refuses_cells_that_differ():
    parts = [_part("a", 32, [0], [0], [[0]]), _part("b", 32, [1], [0], [[0]])]
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


def _inputs(n=101, fingerprint="abc", sha="s1") -> dict:
    return {"host": "h", "device": "cpu", "n": n, "fingerprint": fingerprint, "checkpoints": {"cpvt_toy": sha}}


def test_ranks_must_see_the_same_dataset_and_weights():
    assert check_same_inputs([_inputs(), _inputs()]) == [
        {"rank": 0, "host": "h", "device": "cpu"},
        {"rank": 1, "host": "h", "device": "cpu"},
    ]
    with pytest.raises(DataError, match="rank 2 .* sees another dataset than rank 0: 100 images"):
        check_same_inputs([_inputs(), _inputs(), _inputs(n=100)])
    with pytest.raises(DataError, match="fingerprint xyz against 101 images, abc"):
        check_same_inputs([_inputs(), _inputs(fingerprint="xyz")])
    with pytest.raises(CheckpointError, match="rank 1 .* loaded other weights for cpvt_toy"):
        check_same_inputs([_inputs(), _inputs(sha="s2")])


def test_data_workers_are_shared_among_the_processes_of_a_node(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(16)), raising=False)
    assert default_workers() == 8
    assert default_workers(4) == 4
    assert default_workers(32) == 0


def test_library_call_opens_its_own_local_session(job, tmp_path, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    _, data, ckpts = job
    cfg = cpvt_eval.RunConfig(
        models=("cpvt_toy",),
        sizes=(32,),
        data=data,
        out=tmp_path / "run",
        checkpoints={"cpvt_toy": str(ckpts["cpvt_toy"])},
        model_args={"cpvt_toy": {"num_classes": 1000}},
        limit=12,
        batch_size=BATCH,
        workers=0,
        timing=False,
    )
    outcome = cpvt_eval.evaluate(cfg)
    assert outcome.store is not None and len(outcome.rows) == 1
    row = outcome.rows[0]
    assert (row.n_images, row.world_size, row.throughput_scope) == (12, 1, "")
    assert row.aggregate_images_per_sec > 0


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


ROUNDS_SCRIPT = """
import json, os, sys
from types import SimpleNamespace

from cpvt_eval import distributed

rank = int(os.environ["RANK"])
record = {}
try:
    with distributed.session("cpu") as ctx:
        models = [SimpleNamespace(name="a"), SimpleNamespace(name="b")]
        # Every rank answers differently; rank 0's answer must hold on every rank.
        mine = sorted((m.name, s) for m in models for s in (32, 40) if (m.name == "a") == (rank == 0) and s == 32)
        record["todo"] = sorted(list(c) for c in ctx.agree(mine))
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


def _torchrun(nproc: int, args: list[str], cwd: Path) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["HF_HUB_OFFLINE"] = "1"
    env["OMP_NUM_THREADS"] = "1"  # torchrun's own default for several processes per node, set to keep it quiet
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    # A session of its own, so that the launcher and its workers can be stopped together.
    return subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


@pytest.fixture(scope="module")
def launches(job):
    """Every torchrun launch of this module, started together: most of a launch is importing torch in each
    process, and the launches and the in-process one-process run overlap instead of queueing."""
    root, data, ckpts = job
    bad = make_imagefolder(root / "bad", class_indices=(0, 999), per_class=8)
    # Sorted last, so it falls in the last shard: rank 1 fails, rank 0's own shard is clean. A truncated JPEG
    # passes the open-only check made before the run and fails only when decoded, i.e. on rank 1 alone.
    whole = next((bad / imagenet_synsets()[999]).glob("*.JPEG")).read_bytes()
    (bad / imagenet_synsets()[999] / "zzz_broken.JPEG").write_bytes(whole[: len(whole) - 200])
    (root / "rounds").mkdir()
    (root / "rounds.py").write_text(ROUNDS_SCRIPT)
    cpvt = {"cpvt_toy": ckpts["cpvt_toy"]}
    runs = {
        2: _torchrun(2, ["-m", "cpvt_eval", *_args(data, ckpts, root / "run2", extra=["--json"])], root),
        3: _torchrun(3, ["-m", "cpvt_eval", *_args(data, ckpts, root / "run3", extra=["--json"])], root),
        "fail": _torchrun(
            2, ["-m", "cpvt_eval", *_args(bad, cpvt, root / "runbad", sizes=("32",), extra=["--no-throughput"])], root
        ),
        "rounds": _torchrun(3, [str(root / "rounds.py"), str(root / "rounds")], root),
        "calibration": _torchrun(2, ["-m", "cpvt_eval", *_calibration_args(data, ckpts, root / "cal2")], root),
    }
    try:
        yield runs  # the tests wait for the launch they look at
    finally:
        for proc in runs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def _calibration_args(data, ckpts, out) -> list[str]:
    args = _args(data, ckpts, out, extra=["--json"])
    at = args.index("--throughput-repeats")
    return ["calibration", *args[1:at], *args[at + 2 :]]


def _finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    """Wait for a launch; one that hangs (a rank stuck in a collective) fails the test instead of the suite."""
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def single(job, launches):
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


# What may differ between a one-process run and a torchrun job of the same cells: how and when it ran, and timings.
DIFFERS = {
    "world_size",
    "throughput_scope",
    "images_per_sec",
    "aggregate_images_per_sec",
    "started_at",
    "duration_s",
    "extra",
}


@pytest.mark.slow  # launches torchrun process groups
@pytest.mark.parametrize("nproc", [2, 3])
def test_torchrun_gives_the_single_process_results(job, launches, single, nproc):
    root, data, ckpts = job
    out = root / f"run{nproc}"
    returncode, stdout, stderr = _finish(launches[nproc])
    assert returncode == 0, stderr[-3000:]
    printed = json.loads(stdout)  # one JSON document: only rank 0 wrote to stdout
    assert len(printed) == 4

    base, rows = _rows(single), _rows(out)
    assert set(rows) == set(base) == {(m, s) for m in ckpts for s in (32, 40)}
    for key, row in rows.items():
        # Whole rows, the extra columns included (a field left out of the gathered payload shows up here).
        assert {f: v for f, v in row.items() if f not in DIFFERS} == {
            f: v for f, v in base[key].items() if f not in DIFFERS
        }, key
        assert set(row["extra"]) == set(base[key]["extra"])
        untimed = {k for k in row["extra"] if not k.startswith("throughput_")}
        assert {k: row["extra"][k] for k in untimed} == {k: base[key]["extra"][k] for k in untimed}, key
        assert row["extra"]["eval_batch"] == BATCH and row["extra"]["eval_oom_retries"] == 0
        assert row["n_images"] == 101
        assert 0 < row["correct1"] < row["correct5"] < 101  # the comparison is not between trivial counts
        assert row["world_size"] == nproc and base[key]["world_size"] == 1
        assert row["throughput_scope"] == "model-only per rank" and base[key]["throughput_scope"] == "model-only"
        assert row["images_per_sec"] > 0 and row["aggregate_images_per_sec"] > 0
        a = cell_predictions(single, key[0], key[1])
        b = cell_predictions(out, key[0], key[1])
        assert b["indices"].tolist() == list(range(101))
        for name in ("indices", "labels", "top5"):
            assert torch.equal(a[name], b[name]), (key, name)

    provenance = json.loads((out / "provenance.json").read_text())["runs"][-1]
    assert provenance["distributed"]["world_size"] == nproc
    assert provenance["distributed"]["backend"] == "gloo"
    assert [r["rank"] for r in provenance["distributed"]["ranks"]] == list(range(nproc))


@pytest.mark.slow  # launches torchrun process groups
def test_torchrun_merges_every_probes_records_image_by_image(job, launches):
    """Calibration's per-image records (its logits among them) are gathered like accuracy's: the ECE, NLL, Brier
    score and fitted temperature of two processes are those of one."""
    root, data, ckpts = job
    returncode, stdout, stderr = _finish(launches["calibration"])
    assert returncode == 0, stderr[-3000:]
    assert len(json.loads(stdout)) == 4
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = CliRunner().invoke(app, _calibration_args(data, ckpts, root / "cal1"))
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    base, rows = _rows(root / "cal1"), _rows(root / "cal2")
    assert set(rows) == set(base) == {(m, s) for m in ckpts for s in (32, 40)}
    for key, row in rows.items():
        assert row["probe"] == "calibration:bins=15" and row["ece"] > 0 and row["nll"] > 0
        assert {f: v for f, v in row.items() if f not in DIFFERS} == {
            f: v for f, v in base[key].items() if f not in DIFFERS
        }, key


@pytest.mark.slow  # launches torchrun process groups
def test_a_failing_rank_stops_the_run_with_its_message(job, launches):
    root, _, _ = job
    returncode, _, stderr = _finish(launches["fail"])
    assert returncode != 0
    assert "error: rank 1 of 2: cannot decode image" in stderr
    assert "zzz_broken.JPEG" in stderr
    assert not (root / "runbad" / "rows.jsonl").exists()


@pytest.mark.slow  # launches torchrun process groups
def test_rounds_share_rank0_decisions_and_any_failure(job, launches):
    """What a resumed run relies on (rank 0 decides the cells left, whatever the world size) and what stops a
    job when a rank raises an unexpected exception in the middle of a round."""
    root, _, _ = job
    returncode, _, stderr = _finish(launches["rounds"])
    assert returncode == 0, stderr[-3000:]
    records = [json.loads((root / "rounds" / f"rank{r}.json").read_text()) for r in range(3)]
    for record in records:
        assert record["todo"] == [["a", 32]]
        assert record["agree"] == "rank 0"
        assert "passed" not in record
    assert records[1]["error"] == "RuntimeError: boom"
    for r in (0, 2):
        assert records[r]["error"] == "RankFailedError: rank 1 of 3: RuntimeError: boom"
        assert records[r]["code"] == 1
