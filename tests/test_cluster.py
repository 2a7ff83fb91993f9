"""Runs that survive a cluster: the run directory's lock dies with the process that took it (never held by a forked
child), a killed run leaves no worker behind, a stop (SIGTERM) reaches the workers at once, and a SIGKILL mid-pass
is followed by an immediate rerun that resumes to the table of an uninterrupted run.

The holders of a lock and the loaders are real processes: a lock's owner, its children and a kill are what is tested.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cpvt_eval.results import RunStore
from cpvt_eval.results.lock import DirectoryInUse
from tests.conftest import make_imagefolder

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}

# Takes the run directory's lock, says so, then does what argv[2] says while holding it: "wait" (until stdin
# closes), "die" (SIGKILL to itself), "fork-die" (a child that sleeps, then SIGKILL to itself).
HOLDER = r"""
import os, signal, sys, time
from cpvt_eval.results import RunStore
with RunStore(sys.argv[1]).locked():
    if sys.argv[2] == "fork-die":
        child = os.fork()
        if child == 0:
            time.sleep(60)
            os._exit(0)
        print(child, flush=True)
    print("held", flush=True)
    if sys.argv[2] == "wait":
        sys.stdin.read()
    else:
        os.kill(os.getpid(), signal.SIGKILL)
"""


def _holder(root: Path, mode: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(root), mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by whoever adopted it, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pids, within: float) -> list[int]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.02)
    return [p for p in pids if _alive(p)]


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; fork")


def test_a_live_holder_is_refused_by_pid_and_its_lock_goes_with_it(tmp_path):
    root = tmp_path / "run"
    RunStore(root)
    holder = _holder(root, "wait")
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(DirectoryInUse, match=rf"in use by another cpvt-eval run \(pid {holder.pid}\); wait"):
            with RunStore(root).locked():
                pass
    finally:
        holder.kill()
        holder.wait()
    said = []
    with RunStore(root).locked(notify=said.append):  # the moment the holder is dead
        pass
    assert said == [f"{root}: the run that held its lock (pid {holder.pid}) is no longer running; taking the lock over"]


def test_a_lock_left_by_a_killed_run_is_taken_over_with_a_notice(tmp_path):
    root = tmp_path / "run"
    RunStore(root)
    holder = _holder(root, "die")
    assert holder.stdout.readline().strip() == "held"
    assert holder.wait() == -signal.SIGKILL
    assert (root / ".lock").read_text() == f"{holder.pid} {socket.gethostname()}\n"
    said = []
    with RunStore(root).locked(notify=said.append):
        assert (root / ".lock").read_text() == f"{os.getpid()} {socket.gethostname()}\n"
    assert len(said) == 1 and f"(pid {holder.pid}) is no longer running; taking the lock over" in said[0]
    assert (root / ".lock").read_text() == ""  # released in order: nothing for the next run to take over
    with RunStore(root).locked(notify=said.append):
        pass
    assert len(said) == 1


def test_a_record_of_another_host_is_named_with_its_host(tmp_path):
    root = tmp_path / "run"
    RunStore(root)
    (root / ".lock").write_text("4242 node17\n")  # a node that died with the lock of a shared run directory
    said = []
    with RunStore(root).locked(notify=said.append):
        pass
    assert said == [
        f"{root}: the run that held its lock (pid 4242 on node17) is no longer running; taking the lock over"
    ]


@linux_only
def test_a_forked_child_of_the_holder_does_not_hold_the_lock(tmp_path):
    root = tmp_path / "run"
    RunStore(root)
    holder = _holder(root, "fork-die")
    child = int(holder.stdout.readline())
    try:
        assert holder.stdout.readline().strip() == "held"
        assert holder.wait() == -signal.SIGKILL
        assert _alive(child)  # the holder's child outlives it, with the lock file open
        said = []
        with RunStore(root).locked(notify=said.append):
            pass
        assert len(said) == 1 and f"pid {holder.pid}" in said[0]
    finally:
        os.kill(child, signal.SIGKILL)


def test_a_second_lock_in_the_same_process_is_refused_and_the_first_is_kept(tmp_path):
    """A POSIX lock is the process's: a second attempt from the same process must neither succeed nor, by closing
    its descriptor, release the first."""
    root = tmp_path / "run"
    store = RunStore(root)
    probe = f"from cpvt_eval.results import RunStore\nwith RunStore({str(root)!r}).locked(): pass"
    with store.locked():
        with pytest.raises(DirectoryInUse, match=f"pid {os.getpid()}"):
            with RunStore(root).locked():
                pass
        other = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
        assert other.returncode == 1 and f"(pid {os.getpid()})" in other.stderr
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).returncode == 0


# A loader with two workers over a slow dataset, iterated by this process; prints the workers' pids once both are
# working, then the outcome of argv[1]: "kill" (SIGKILL to itself), or "wait" (for a signal from the test).
LOADER = r"""
import os, signal, sys, time
from cpvt_eval import interrupts
from cpvt_eval.data import make_loader

class Slow:
    def __len__(self):
        return 64
    def __getitem__(self, i):
        time.sleep(1.0)  # a batch of 8 takes 8 s: a worker that finished its batch first would outlive a kill
        return i

with interrupts.installed():
    loader = make_loader(Slow(), 8, 2)
    it = iter(loader)
    print(*(w.pid for w in it._workers), flush=True)
    try:
        if sys.argv[1] == "kill":
            time.sleep(1)
            os.kill(os.getpid(), signal.SIGKILL)
        for batch in it:
            pass
    except KeyboardInterrupt:
        del it
        print("interrupted", flush=True)
"""


def _loader(mode: str) -> tuple[subprocess.Popen, list[int]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", LOADER, mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
        start_new_session=True,
    )  # fmt: skip
    return proc, [int(p) for p in proc.stdout.readline().split()]


@linux_only
def test_loader_workers_end_within_a_second_of_a_killed_parent():
    proc, workers = _loader("kill")
    assert len(workers) == 2, proc.stderr.read()
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert not _wait_gone(workers, within=1.0)


@linux_only
def test_a_worker_whose_run_died_before_it_started_ends_itself():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    code = "import sys\nfrom cpvt_eval.data.loader import end_with_parent as e\ne(int(sys.argv[1]))\nprint('on')"
    gone = subprocess.run([sys.executable, "-c", code, str(dead.pid)], capture_output=True, text=True, env=ENV)
    assert gone.returncode == -signal.SIGKILL and gone.stdout == ""  # (with a live run: the loader tests)


@linux_only
@pytest.mark.slow
@pytest.mark.parametrize("whom", ["main", "group"])
def test_sigterm_stops_the_loader_within_seconds_without_a_worker_crash(whom):
    """SIGTERM to the main process (Kubernetes, torchrun's agent) or to every process of the job (SLURM): the
    workers stop mid-batch, none is reported killed, and the main process sees one interrupt."""
    proc, workers = _loader("wait")
    assert len(workers) == 2, proc.stderr.read()
    time.sleep(1)  # both workers inside their first batch
    t0 = time.monotonic()
    (os.killpg if whom == "group" else os.kill)(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert time.monotonic() - t0 < 6  # a worker finishing its batch first would take 8 s
    assert out.strip() == "interrupted" and "Error" not in err, err
    assert not _wait_gone(workers, within=1.0)


# The command with one patch: every image a loader worker reads first leaves a mark (its pid) and takes 50 ms, so
# that the test can tell when the second size's pass is in flight, and the pass lasts long enough to be stopped in it.
SLOW_RUN = r"""
import os, sys, time
import cpvt_eval.data as data
real = data.load_sample
def load_sample(*args, **kwargs):
    open(os.path.join(os.environ["CPVT_EVAL_TEST_MARKS"], str(os.getpid())), "w").close()
    time.sleep(0.05)
    return real(*args, **kwargs)
data.load_sample = load_sample
sys.argv = ["cpvt-eval", *sys.argv[1:]]
from cpvt_eval.__main__ import entry
entry()
"""

# What a rerun may change in results.csv: when and how fast it ran, and what ran it.
_VOLATILE = {"started_at", "duration_s", "images_per_sec", "aggregate_images_per_sec", "versions", "predictions"}


@pytest.fixture(scope="module")
def cluster_job(tmp_path_factory):
    """80 images (2 s a pass with two workers under the patch) and the arguments of a two-model, two-size run."""
    import torch

    import cpvt_eval

    home = tmp_path_factory.mktemp("cluster")
    make_imagefolder(home / "val", (0, 1, 2, 999), per_class=20)
    args = []
    for name in ("cpvt_toy", "deit_toy"):
        path = home / f"{name}.pth"
        torch.save({"model": cpvt_eval.create_model(name, num_classes=1000).state_dict()}, path)
        args += ["-m", name, "-c", f"{name}={path}"]
    args += ["--model-arg", "num_classes=1000", "-s", "56", "64", "--data", str(home / "val")]
    (home / "slow_run.py").write_text(SLOW_RUN)
    return home, [*args, "--workers", "2", "--batch-size", "8", "--no-throughput"]


def _start_slow(tmp_path, launcher: list[str], args: list[str]) -> tuple[subprocess.Popen, Path, list[int]]:
    """Start the patched command and wait until both 56 px cells are committed and a loader worker reads images of
    the 64 px pass. Returns the process, its run directory, and every process of the run (itself, its torchrun
    ranks, their workers)."""
    out, marks = tmp_path / "run", tmp_path / "marks"
    marks.mkdir()
    proc = subprocess.Popen(
        [*launcher, *args, "--out", str(out)],
        env={**ENV, "CPVT_EVAL_TEST_MARKS": str(marks), "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: a scheduler's signal to every process of the job
    )
    deadline = time.monotonic() + 300
    while True:
        assert proc.poll() is None, proc.stderr.read()[-1500:]
        assert time.monotonic() < deadline
        rows = (out / "rows.jsonl").read_text().splitlines() if (out / "rows.jsonl").exists() else []
        tree = _tree(proc.pid) if len(rows) == 2 else []
        if any((marks / str(p)).exists() for p in tree):
            return proc, out, tree
        time.sleep(0.02)


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (torchrun's ranks start sessions of their own: their group is not the job's)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(k) for k in f.read().split()]
        except OSError:
            continue
    return found


def _table(out: Path) -> list[dict]:
    with open(out / "results.csv", newline="") as f:
        rows = [{k: v for k, v in r.items() if k not in _VOLATILE and "throughput" not in k} for r in csv.DictReader(f)]
    return sorted(rows, key=lambda r: (r["model"], int(r["img_size"])))


def _rerun(args: list[str], out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cpvt_eval", "resolution", *args, "--out", str(out)],
        env=ENV,
        capture_output=True,
        text=True,
    )


@linux_only
@pytest.mark.slow
def test_sigkill_mid_pass_then_an_immediate_rerun_resumes_to_the_uninterrupted_table(cluster_job, tmp_path):
    home, args = cluster_job
    reference = _rerun(args, tmp_path / "ref")
    assert reference.returncode == 0, reference.stderr[-1500:]

    run, out, tree = _start_slow(tmp_path, [sys.executable, str(home / "slow_run.py"), "resolution"], args)
    assert len(tree) == 3  # the run and its two workers
    run.kill()
    run.wait()
    assert not _wait_gone(tree, within=1.0), "a process of the killed run outlived it"

    again = _rerun(args, out)  # at once, as a scheduler's retry
    assert again.returncode == 0, again.stderr[-1500:]
    assert f"(pid {run.pid}) is no longer running; taking the lock over" in again.stderr
    assert "skipping 2 finished cell(s) (cpvt_toy@56px, deit_toy@56px)" in again.stderr
    assert _table(out) == _table(tmp_path / "ref")
    records = json.loads((out / "provenance.json").read_text())["runs"]
    assert [r["status"] for r in records] == ["killed", "completed"]


@linux_only
@pytest.mark.slow
def test_sigterm_to_every_process_of_the_job_exits_130_in_seconds_with_one_line(cluster_job, tmp_path):
    """As SLURM stops a job (time limit, preemption, scancel): SIGTERM to every process, workers included."""
    home, args = cluster_job
    run, out, tree = _start_slow(tmp_path, [sys.executable, str(home / "slow_run.py"), "resolution"], args)
    t0 = time.monotonic()
    os.killpg(run.pid, signal.SIGTERM)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 130 and time.monotonic() - t0 < 15
    assert err.strip().splitlines() == ["error: interrupted; finished cells are kept in the run directory"], err
    assert len((out / "rows.jsonl").read_text().splitlines()) == 2
    assert not _wait_gone(tree, within=1.0)


@linux_only
@pytest.mark.slow
def test_sigkill_to_torchrun_ends_its_ranks_and_their_workers(cluster_job, tmp_path):
    home, args = cluster_job
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    run, out, tree = _start_slow(tmp_path, [*torchrun, str(home / "slow_run.py"), "resolution"], args)
    assert len(tree) >= 5  # torchrun, two ranks, their workers
    run.kill()
    run.wait()
    assert not _wait_gone(tree, within=1.0), "a rank or worker of the killed job outlived it"
    again = _rerun(args, out)
    assert again.returncode == 0, again.stderr[-1500:]
    assert "skipping 2 finished cell(s)" in again.stderr
