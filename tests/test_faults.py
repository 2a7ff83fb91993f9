"""Hostile paths, names, sizes, a full disk and damaged run directories: one line, a documented exit code, the
path or value named, never a traceback, and nothing left out silently."""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import make_image, make_imagefolder
from typer.testing import CliRunner

import cpvt_eval
from cpvt_eval.cli import app
from cpvt_eval.errors import EXIT_ENVIRONMENT, EXIT_INTERNAL
from cpvt_eval.results import RunStore

REPO = Path(__file__).resolve().parents[1]
FAST = ["--no-throughput", "--workers", "0", "--batch-size", "6", "--model-arg", "num_classes=1000"]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0

pytestmark = pytest.mark.usefixtures("one_thread")


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def run(data, out, ckpt, *extra, sizes=("56",)):
    return invoke("resolution", "-m", "cpvt_toy", "-s", *sizes, "--data", data, "-c", ckpt, "--out", out, *FAST, *extra)


def one_line(result) -> str:
    """The one error line of a failed command (and no traceback anywhere)."""
    assert "Traceback" not in result.output, result.output
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def ckpt(toy_checkpoints):
    return toy_checkpoints["cpvt_toy"][1]


@pytest.fixture
def data(tmp_path):
    return make_imagefolder(tmp_path / "val", class_indices=(0, 1, 2), per_class=2)


def rows_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]


# -- a class folder the process cannot read ------------------------------------------------------------------------


@pytest.fixture
def unreadable(monkeypatch, data):
    """Listing one class folder fails with EACCES, as it does for a non-root user after `chmod 000`."""
    folder = data / "n01443537"
    real = os.scandir

    def scandir(path="."):
        if os.fspath(path) == os.fspath(folder):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    return folder


def test_unreadable_folder_stops_the_run(unreadable, data, ckpt, tmp_path):
    result = run(data, tmp_path / "out", ckpt)
    assert result.exit_code == 2
    line = one_line(result)
    assert str(unreadable) in line and "Permission denied" in line
    assert not (tmp_path / "out").exists()


def test_unreadable_folder_is_skipped_and_counted_under_skip(unreadable, data, ckpt, tmp_path):
    full = run(data, tmp_path / "full", ckpt, "--on-bad-image", "skip")  # same data, the folder readable below
    assert full.exit_code == 0, full.output
    (row,) = rows_of(tmp_path / "full")
    assert row["n_images"] == 4 and row["n_skipped"] == 1 and row["partial"] is True
    assert row["skipped_files"] == "n01443537"
    listed = list(csv.reader((tmp_path / "full" / "skipped.tsv").open(newline=""), dialect="excel-tab"))
    assert listed == [["n01443537", "cannot list folder: Permission denied"]]
    check = invoke("check-data", data)
    assert check.exit_code == 1 and "n01443537: cannot list folder: Permission denied" in check.stdout


def test_fingerprint_is_of_what_was_evaluated(unreadable, data, ckpt, tmp_path, monkeypatch):
    assert run(data, tmp_path / "a", ckpt, "--on-bad-image", "skip").exit_code == 0
    monkeypatch.undo()  # the folder readable again: other images, another fingerprint, another cell
    assert run(data, tmp_path / "b", ckpt).exit_code == 0
    (a,) = rows_of(tmp_path / "a")
    (b,) = rows_of(tmp_path / "b")
    assert (a["n_images"], b["n_images"]) == (4, 6)
    assert a["dataset_fingerprint"] != b["dataset_fingerprint"]


@pytest.mark.skipif(IS_ROOT, reason="root reads a chmod 000 folder anyway; the simulated tests above cover it")
def test_unreadable_folder_for_real(data, ckpt, tmp_path):
    folder = data / "n01443537"
    folder.chmod(0)
    try:
        result = run(data, tmp_path / "out", ckpt)
        assert result.exit_code == 2 and str(folder) in one_line(result)
    finally:
        folder.chmod(0o755)


DROP_PRIVILEGES = """
import os, sys
from cpvt_eval.data import apply_bad_image_policy, imagenet_synsets, open_dataset
import PIL.JpegImagePlugin  # noqa: F401 (read before the user loses access to the environment)
imagenet_synsets()
os.setgid(65534)
os.setuid(65534)
image_set = open_dataset(sys.argv[1])
try:
    apply_bad_image_policy(image_set, "stop")
except Exception as e:
    print(e)
apply_bad_image_policy(image_set, "skip")
print(sorted(image_set.skipped), len(image_set))
"""


@pytest.mark.skipif(not IS_ROOT, reason="drops root privileges to read as another user")
def test_unreadable_folder_and_file_for_real_as_another_user(tmp_path):
    root = Path(tempfile.mkdtemp(prefix="cpvt-faults-"))
    try:
        root.chmod(0o755)
        data = make_imagefolder(root / "val", class_indices=(0, 1, 2), per_class=2)
        for dirpath, _dirs, files in os.walk(root):
            os.chmod(dirpath, 0o755)
            for name in files:
                os.chmod(os.path.join(dirpath, name), 0o644)
        (data / "n01443537").chmod(0)
        (data / "n01440764" / "img_0_0.JPEG").chmod(0)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.run(
            [sys.executable, "-c", DROP_PRIVILEGES, str(data)], capture_output=True, text=True, env=env, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        first, second = proc.stdout.strip().splitlines()
        assert first.startswith(f"cannot read {data / 'n01443537'}: cannot list folder: Permission denied")
        assert second == (
            "[('n01440764/img_0_0.JPEG', 'cannot read: Permission denied'), "
            "('n01443537', 'cannot list folder: Permission denied')] 3"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- symlink loops, markup and undecodable bytes in names ------------------------------------------------------------


@pytest.fixture
def looped(data):
    folder = data / "n01440764"
    os.symlink(folder / "b.JPEG", folder / "a.JPEG")
    os.symlink(folder / "a.JPEG", folder / "b.JPEG")
    os.symlink(folder, folder / "again")  # a folder link back to itself
    return folder


def test_symlink_loop_stops_the_run_naming_it(looped, data, ckpt, tmp_path):
    result = run(data, tmp_path / "out", ckpt)
    assert result.exit_code == 2
    line = one_line(result)
    assert "symlink loop" in line and "n01440764/again" in line


def test_symlink_loop_under_skip_and_in_check_data(looped, data, ckpt, tmp_path):
    result = run(data, tmp_path / "out", ckpt, "--on-bad-image", "skip")
    assert result.exit_code == 0, result.output
    (row,) = rows_of(tmp_path / "out")
    assert sorted(row["skipped_files"].split(";")) == [
        "n01440764/a.JPEG",
        "n01440764/again",
        "n01440764/b.JPEG",
    ]
    assert row["n_skipped"] == 3 and row["n_images"] == 6
    check = invoke("check-data", data)
    assert check.exit_code == 1 and "Traceback" not in check.output
    for name in ("a.JPEG", "b.JPEG", "again"):
        assert f"n01440764/{name}: symlink loop" in check.stdout


def test_markup_in_names_is_printed_as_it_is(data, ckpt, tmp_path):
    folder = data / "n01440764" / "[" / "n01440764"
    folder.mkdir(parents=True)
    (folder / "z]").mkdir()
    (folder / "z]" / "x.JPEG").write_bytes(b"")
    (data / "n01440764" / "[bold red]x.JPEG").write_bytes(b"not an image")
    result = run(data, tmp_path / "out", ckpt)
    assert result.exit_code == 2
    assert "[bold red]x.JPEG" in one_line(result) or "[/n01440764/z]/x.JPEG" in one_line(result)
    check = invoke("check-data", data)
    assert check.exit_code == 1 and "Traceback" not in check.output
    assert "n01440764/[bold red]x.JPEG: not an image" in check.stdout
    assert "n01440764/[/n01440764/z]/x.JPEG: empty file" in check.stdout


def test_name_that_is_not_utf8(data, ckpt, tmp_path):
    folder = os.fsencode(data / "n01440764")
    make_image(7).save(os.path.join(folder, b"\xe9t\xe9.JPEG"), format="JPEG")  # latin-1 'ete'
    result = run(data, tmp_path / "out", ckpt)
    assert result.exit_code == 0, result.output
    assert rows_of(tmp_path / "out")[0]["n_images"] == 7
    check = invoke("check-data", data)
    assert check.exit_code == 0 and "\\xe9t\\xe9.JPEG: file name is not valid UTF-8" in check.stdout
    with open(os.path.join(folder, b"\xe9t\xe9.JPEG"), "wb") as f:
        f.write(b"broken")
    result = run(data, tmp_path / "out2", ckpt)
    assert result.exit_code == 2 and "n01440764/\\xe9t\\xe9.JPEG" in one_line(result)
    assert run(data, tmp_path / "out3", ckpt, "--on-bad-image", "skip").exit_code == 0
    skipped = (tmp_path / "out3" / "skipped.tsv").read_bytes()
    assert skipped.startswith(b"n01440764/\xe9t\xe9.JPEG\t")  # the bytes the filesystem holds


# -- checkpoints that are not what their name says -------------------------------------------------------------------


def test_text_file_as_checkpoint(data, tmp_path):
    text = tmp_path / "text.pth"
    text.write_text("hello\n")
    result = run(data, tmp_path / "out", text)
    assert result.exit_code == 2
    assert f"cannot read checkpoint {text}: not a PyTorch checkpoint" in one_line(result)


def test_safetensors_file_named_pth_is_read_as_safetensors(data, toy_checkpoints, tmp_path):
    renamed = tmp_path / "weights.pth"
    shutil.copy(tmp_path / "cpvt_toy.safetensors", renamed)
    result = run(data, tmp_path / "out", renamed)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output


# -- sizes and crops checked before any work -------------------------------------------------------------------------


def test_impossible_size_is_refused_before_the_first_cell(data, ckpt, tmp_path, monkeypatch):
    import cpvt_eval.limits

    monkeypatch.setattr(cpvt_eval.limits, "host_memory", lambda: 8 << 30)  # the same answer on any machine
    result = run(data, tmp_path / "out", ckpt, sizes=("56", "100000"))
    assert result.exit_code == 2
    line = one_line(result)
    assert "size 100000 cannot run: one image of cpvt_toy needs about" in line and "more than the 8.0 GB of RAM" in line
    largest = int(line.split("the largest size that fits is ")[1].split()[0])
    assert 56 <= largest < 100000 and largest % 4 == 0
    assert not (tmp_path / "out").exists()  # nothing computed, no run directory


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--crop-pct", "0.001"], "--crop-pct must be in (0.05, 1], got 0.001"),
        (["--crop-pct", "1.5"], "--crop-pct must be in (0.05, 1], got 1.5"),
        (["--interpolation", "sinc"], "unknown --interpolation 'sinc'"),
    ],
)
def test_crop_and_interpolation_are_usage_errors_before_the_run_directory(data, ckpt, tmp_path, flags, message):
    result = run(data, tmp_path / "out", ckpt, *flags)
    assert result.exit_code == 2
    assert message in one_line(result)
    assert not (tmp_path / "out").exists()


# -- a full disk -----------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="finds the rows file by its descriptor")
def test_full_disk_stops_cleanly_and_the_rerun_resumes(data, ckpt, tmp_path, monkeypatch):
    out = tmp_path / "out"
    rows_path = os.fspath(out / "rows.jsonl")
    real_write = os.write
    appended = {"n": 0}

    def write(fd, payload):
        # The second row hits a full disk half-way through its line: a torn line unless the store cuts it off.
        if os.readlink(f"/proc/self/fd/{fd}") == rows_path:
            appended["n"] += 1
            if appended["n"] == 2:
                real_write(fd, payload[: len(payload) // 2])
                raise OSError(errno.ENOSPC, "No space left on device", rows_path)
        return real_write(fd, payload)

    monkeypatch.setattr(os, "write", write)
    result = run(data, out, ckpt, sizes=("56", "64"))
    assert result.exit_code == EXIT_ENVIRONMENT
    line = one_line(result)
    assert f"no space left on {out}" in line and "kept 1 of 2 finished cell(s): cpvt_toy@56px" in line
    monkeypatch.undo()
    assert [r["img_size"] for r in rows_of(out)] == [56]  # every line whole
    with RunStore(out).locked():  # the lock was released
        pass
    again = run(data, out, ckpt, sizes=("56", "64"))
    assert again.exit_code == 0, again.output
    assert "skipping 1 finished cell(s) (cpvt_toy@56px)" in again.stderr
    assert [r["img_size"] for r in rows_of(out)] == [56, 64]


def test_full_disk_in_the_atomic_writer(data, ckpt, tmp_path, monkeypatch):
    import cpvt_eval.results.store as store_module

    out = tmp_path / "out"
    real = store_module.atomic_write_bytes

    def full(path, payload):
        if "predictions" in os.fspath(path):
            raise OSError(errno.ENOSPC, "No space left on device", os.fspath(path))
        return real(path, payload)

    monkeypatch.setattr(store_module, "atomic_write_bytes", full)
    result = run(data, out, ckpt)
    assert result.exit_code == EXIT_ENVIRONMENT
    assert f"no space left on {out / 'predictions'}; kept 0 of 1" in one_line(result)
    monkeypatch.undo()
    assert run(data, out, ckpt).exit_code == 0
    (record_a, record_b) = RunStore(out).provenance()
    assert (record_a["status"], record_b["status"]) == ("no space left", "completed")


@contextlib.contextmanager
def tmpfs(size: str):
    """A tmpfs of ``size``, where this process may mount one (root, and a host that allows it)."""
    if not IS_ROOT or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mount = Path(tempfile.mkdtemp(prefix="cpvt-tmpfs-"))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        mount.rmdir()
        pytest.skip("this host does not allow mounting a tmpfs")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)
        mount.rmdir()


@pytest.fixture
def small_tmpfs():
    with tmpfs("300k") as mount:
        yield mount


def test_full_disk_for_real_on_a_small_tmpfs(small_tmpfs, data, ckpt):
    out = small_tmpfs / "run"
    filler = small_tmpfs / "filler"
    filler.write_bytes(b"\0" * 264 * 1024)  # leaves room for a few cells, not for all of them
    sizes = ("56", "64", "72", "80")
    result = run(data, out, ckpt, sizes=sizes)
    assert result.exit_code == EXIT_ENVIRONMENT
    assert f"no space left on {out}" in one_line(result)
    if (out / "rows.jsonl").exists():
        rows_of(out)  # every line whole
    filler.unlink()
    again = run(data, out, ckpt, sizes=sizes)
    assert again.exit_code == 0, again.output
    assert sorted(r["img_size"] for r in rows_of(out)) == [56, 64, 72, 80]


# -- damaged run directories -----------------------------------------------------------------------------------------


@pytest.fixture
def finished(data, ckpt, tmp_path):
    out = tmp_path / "run"
    result = run(data, out, ckpt, sizes=("56", "64"))
    assert result.exit_code == 0, result.output
    return out


def _rewrite(out: Path, lineno: int, change) -> None:
    lines = (out / "rows.jsonl").read_text().splitlines(keepends=True)
    lines[lineno - 1] = change(lines[lineno - 1])
    (out / "rows.jsonl").write_text("".join(lines))


@pytest.mark.parametrize(
    "field,value,message",
    [("n_images", 0, "n_images is 0"), ("top1", "seventy", "top1 is 'seventy', not float")],
)
def test_damaged_row_is_an_error_in_report_and_compare(finished, tmp_path, field, value, message):
    good = tmp_path / "good"
    shutil.copytree(finished, good)
    _rewrite(finished, 2, lambda line: json.dumps({**json.loads(line), field: value}) + "\n")
    for result in (invoke("report", finished, "--format", "md"), invoke("compare", good, finished)):
        assert result.exit_code == 2
        line = one_line(result)
        assert f"{finished / 'rows.jsonl'}:2: damaged row ({message})" in line


def test_garbage_line_is_named_then_recomputed_on_resume(finished, data, ckpt):
    _rewrite(finished, 1, lambda line: "{garbage\n")
    result = invoke("report", finished, "--format", "md")
    assert result.exit_code == 2 and f"{finished / 'rows.jsonl'}:1: damaged row (not JSON" in one_line(result)
    again = run(data, finished, ckpt, sizes=("56", "64"))
    assert again.exit_code == 0, again.output
    assert "rows.jsonl:1: damaged row" in again.stderr and "moved to rows.damaged.jsonl" in again.stderr
    assert sorted(r["img_size"] for r in rows_of(finished)) == [56, 64]
    assert (finished / "rows.damaged.jsonl").read_text() == "{garbage\n"
    assert invoke("report", finished, "--format", "md").exit_code == 0


def test_compare_fails_when_the_current_run_lacks_a_baseline_cell(finished, tmp_path):
    current = tmp_path / "current"
    shutil.copytree(finished, current)
    _rewrite(current, 2, lambda line: "")
    result = invoke("compare", finished, current)
    assert result.exit_code == 1
    assert "the current run lacks 1 cell(s) of the baseline: cpvt_toy@64px" in one_line(result)
    assert "MISSING CELLS" in result.stderr
    assert invoke("compare", finished, current, "--allow-missing").exit_code == 0


def test_deleted_or_unreadable_predictions_file_is_recomputed(finished, data, ckpt):
    (row56, row64) = rows_of(finished)
    (finished / row56["predictions"]).unlink()
    again = run(data, finished, ckpt, sizes=("56", "64"))
    assert again.exit_code == 0, again.output
    assert "skipping 1 finished cell(s) (cpvt_toy@64px)" in again.stderr
    assert (finished / row56["predictions"]).is_file()
    (finished / row64["predictions"]).write_bytes(b"garbage")
    again = run(data, finished, ckpt, sizes=("56", "64"))
    assert again.exit_code == 0 and "skipping 1 finished cell(s) (cpvt_toy@56px)" in again.stderr
    assert invoke("report", finished, "--format", "md", "--pairs").exit_code == 0


def _as_earlier_version(run_dir: Path, **change) -> None:
    """What an earlier version wrote: no run.json, no schema_version, rows without the newer fields, PE options
    labelled for every model."""
    (run_dir / "run.json").unlink()
    prov = json.loads((run_dir / "provenance.json").read_text())
    for r in prov["runs"]:
        r.pop("schema_version", None)
    (run_dir / "provenance.json").write_text(json.dumps(prov))
    lines = []
    for d in rows_of(run_dir):
        for name in ("n_nonfinite", "probe", "native_size", "mean", "std", "data_config_source"):
            d.pop(name, None)
        d["pe_options"] = "ape=bicubic,antialias=false"
        d.update(change)
        lines.append(json.dumps(d) + "\n")
    (run_dir / "rows.jsonl").write_text("".join(lines))


def test_baseline_from_an_earlier_version_compares_on_the_shared_fields(finished, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(finished, old)
    _as_earlier_version(old)
    result = invoke("compare", old, finished)
    assert result.exit_code == 0, result.output
    assert "different versions (schema 1 vs 3): cells matched without probe, pe_options" in result.stderr
    assert "| cpvt_toy | 64px |" in result.stdout


def test_baseline_from_an_earlier_version_that_differs_is_refused_naming_the_field(finished, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(finished, old)
    _as_earlier_version(old, crop_pct=0.9)
    result = invoke("compare", old, finished)
    assert result.exit_code == 2
    line = one_line(result)
    assert "cpvt_toy@56px differs in crop_pct (0.9 in the baseline, 0.875 now)" in line and "re-run" in line


def test_resuming_an_earlier_version_lists_each_model_once(finished, data, ckpt):
    _as_earlier_version(finished)
    again = run(data, finished, ckpt, sizes=("56", "64"))
    assert again.exit_code == 0, again.output
    assert "written by an earlier version" in again.stderr
    assert [r["pe_options"] for r in rows_of(finished)] == ["", ""]
    table = (finished / "results.md").read_text()
    assert table.count("| cpvt_toy ") == table.count("| cpvt_toy |") and "[pe=" not in table


def test_schema_2_squash_is_migrated_to_full(finished, data, ckpt):
    """Before 0.3 `--crop-mode squash` resized the whole image to size x size: such rows read as today's `full`
    (timm's squash is another transform), in reports and comparisons, and a run that opens the directory rewrites
    them so that one name never means two things in one file."""
    info = json.loads((finished / "run.json").read_text())
    (finished / "run.json").write_text(json.dumps({**info, "schema_version": 2}))
    lines = [json.dumps({**d, "crop_mode": "squash"}) + "\n" for d in rows_of(finished)]
    (finished / "rows.jsonl").write_text("".join(lines))
    assert {r.crop_mode for r in RunStore(finished).rows()} == {"full"}
    report = invoke("report", finished, "--format", "md")
    assert report.exit_code == 0 and "crop mode `full`" in (finished / "results.md").read_text()
    again = run(data, finished, ckpt, "--crop-mode", "squash", sizes=("56",))
    assert again.exit_code == 0, again.output
    stored = [d["crop_mode"] for d in rows_of(finished)]
    assert stored.count("full") == 2 and stored.count("squash") == 1  # old rows migrated, the new cell timm's squash
    info = json.loads((finished / "run.json").read_text())
    assert (info["schema_version"], info["migrated_from"]) == (3, 2)


# -- also found ------------------------------------------------------------------------------------------------------


def test_all_nan_weights_are_an_error(data, toy_checkpoints, tmp_path):
    model = toy_checkpoints["cpvt_toy"][0]
    nan = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    path = tmp_path / "nan.pth"
    torch.save(nan, path)
    result = run(data, tmp_path / "out", path)
    assert result.exit_code == 2
    assert "cpvt_toy @ 56px: the logits of every image (6) hold NaN or infinity" in one_line(result)
    assert not (tmp_path / "out" / "rows.jsonl").exists()


def test_some_nonfinite_logits_are_counted_and_flagged(data, toy_checkpoints, tmp_path, monkeypatch):
    from cpvt_eval import engine

    real = engine.ChunkedForward.logits

    def logits(self, x):
        self.module.head.bias.data[0] = float("inf") if self.nonfinite == 0 else 0.0  # the first batch only
        return real(self, x)

    monkeypatch.setattr(engine.ChunkedForward, "logits", logits)
    result = run(data, tmp_path / "out", toy_checkpoints["cpvt_toy"][1], "--batch-size", "3")
    assert result.exit_code == 0, result.output
    (row,) = rows_of(tmp_path / "out")
    assert (row["n_nonfinite"], row["n_images"]) == (3, 6)
    assert "cpvt_toy @ 56px: 3 of 6 image(s) gave NaN or infinite logits" in result.stderr


def test_read_only_run_directory(finished, data, ckpt, monkeypatch):
    import cpvt_eval.results.store as store_module

    def read_only(path, payload):
        raise OSError(errno.EROFS, "Read-only file system", os.fspath(path))

    real_open = os.open

    def open_(path, flags, *a):
        if os.fspath(path).endswith(".lock"):
            raise OSError(errno.EROFS, "Read-only file system", os.fspath(path))
        return real_open(path, flags, *a)

    monkeypatch.setattr(store_module, "atomic_write_bytes", read_only)
    monkeypatch.setattr(os, "open", open_)
    result = invoke("report", finished, "--format", "md")
    assert result.exit_code == EXIT_ENVIRONMENT
    assert f"cannot write the reports into {finished} (Read-only file system); write them elsewhere" in one_line(result)
    again = run(data, finished, ckpt, sizes=("56", "64"))
    assert again.exit_code == 0, again.output
    assert "read-only; every cell is finished, nothing was written" in again.stderr
    more = run(data, finished, ckpt, sizes=("56", "72"))
    assert more.exit_code == EXIT_ENVIRONMENT and f"run directory {finished} is not writable" in one_line(more)


@pytest.mark.skipif(IS_ROOT, reason="root writes into a read-only folder anyway; the simulated test above covers it")
def test_read_only_run_directory_for_real(finished):
    finished.chmod(0o555)
    try:
        result = invoke("report", finished, "--format", "md")
        assert result.exit_code == EXIT_ENVIRONMENT and str(finished) in one_line(result)
    finally:
        finished.chmod(0o755)


def test_read_only_mount_for_real(finished, data, ckpt, tmp_path):
    with tmpfs("8m") as mount:
        run_dir = mount / "run"
        shutil.copytree(finished, run_dir)
        assert subprocess.run(["mount", "-o", "remount,ro", str(mount)], capture_output=True).returncode == 0
        result = invoke("report", run_dir, "--format", "md")
        assert result.exit_code == EXIT_ENVIRONMENT
        assert f"cannot write the reports into {run_dir} (Read-only file system)" in one_line(result)
        assert invoke("report", run_dir, "--format", "md", "--out", tmp_path / "elsewhere").exit_code == 0
        again = run(data, run_dir, ckpt, sizes=("56", "64"))
        assert again.exit_code == 0 and "read-only; every cell is finished" in again.stderr
        more = run(data, run_dir, ckpt, sizes=("56", "72"))
        assert more.exit_code == EXIT_ENVIRONMENT and "is not writable" in one_line(more)


def test_report_out_that_is_a_file(finished, tmp_path):
    target = tmp_path / "exists.md"
    target.write_text("x")
    result = invoke("report", finished, "--out", target)
    assert result.exit_code == 2 and f"--out {target} exists and is not a directory" in one_line(result)


def test_manifest_paths_are_normalised_before_the_duplicate_check(data, ckpt, tmp_path):
    manifest = data / "val.csv"
    manifest.write_text("path,label\nn01440764/img_0_0.JPEG,0\n./n01440764/img_0_0.JPEG,0\n")
    result = run(data, tmp_path / "out", ckpt)
    assert result.exit_code == 2
    assert f"{manifest}:3: n01440764/img_0_0.JPEG is listed twice" in one_line(result)


def test_skipped_tsv_round_trips_any_name(data, ckpt, tmp_path):
    names = ["new\nline.JPEG", "tab\there.JPEG", 'quote"d.JPEG']
    for name in names:
        (data / "n01440764" / name).write_bytes(b"")
    result = run(data, tmp_path / "out", ckpt, "--on-bad-image", "skip")
    assert result.exit_code == 0, result.output
    with open(tmp_path / "out" / "skipped.tsv", newline="") as f:
        listed = [rel for rel, _why in csv.reader(f, dialect="excel-tab")]
    assert sorted(listed) == sorted(f"n01440764/{n}" for n in names)
    with open(tmp_path / "out" / "results.csv", newline="") as f:
        (row,) = csv.DictReader(f)
    assert sorted(row["skipped_files"].split(";")) == sorted(listed)


def test_manifest_reads_back_any_name(data, ckpt, tmp_path):
    from cpvt_eval.data import open_dataset

    names = ["comma,name.JPEG", 'quote"d.JPEG', "new\nline.JPEG", "tab\there.JPEG"]
    for name in names:
        make_image(3).save(data / "n01440764" / name, format="JPEG")
    with open(data / "val.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        writer.writerows([f"n01440764/{name}", "n01440764"] for name in names)
    image_set = open_dataset(data)
    assert sorted(s.relpath for s in image_set.samples) == sorted(f"n01440764/{n}" for n in names)
    result = run(data, tmp_path / "out", ckpt)
    assert result.exit_code == 0, result.output
    assert rows_of(tmp_path / "out")[0]["n_images"] == 4


def test_provenance_of_a_killed_run_is_closed_by_the_next(tmp_path):
    store = RunStore(tmp_path / "run")
    store.record_provenance({"run_id": "a", "status": "running"})
    with store.locked():
        pass
    (record,) = store.provenance()
    assert record["status"] == "killed" and "SIGKILL" in record["note"]


def test_check_data_lists_every_problem_in_one_pass(unreadable, looped, data):
    (data / "n01440764" / "empty.JPEG").write_bytes(b"")
    result = invoke("check-data", data)
    assert result.exit_code == 1 and "Traceback" not in result.output
    for expected in (
        "n01443537: cannot list folder",
        "n01440764/a.JPEG: symlink loop",
        "n01440764/again: symlink loop",
        "n01440764/empty.JPEG: empty file",
    ):
        assert expected in result.stdout  # the findings are check-data's result: on stdout


# -- interrupts and bugs ---------------------------------------------------------------------------------------------


def test_ctrl_c_during_imports_is_one_line_and_130():
    code = (
        "import builtins, sys\n"
        "real = builtins.__import__\n"
        "def imp(name, *a, **k):\n"
        "    if name in ('typer', 'torch'):\n"
        "        raise KeyboardInterrupt\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = imp\n"
        "from cpvt_eval.__main__ import entry\n"
        "entry()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 130
    assert proc.stderr.strip() == "error: interrupted"


def test_ctrl_c_outside_a_command_guard_is_130(finished, monkeypatch):
    from cpvt_eval import report

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "comparison_markdown", interrupted)
    result = invoke("compare", finished, finished)
    assert result.exit_code == 130 and "interrupted" in one_line(result)


def test_ctrl_c_while_parsing_the_command_line_is_130(monkeypatch):
    from typer.core import TyperGroup

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(TyperGroup, "make_context", interrupted)
    result = invoke("models")
    assert result.exit_code == 130 and one_line(result) == "error: interrupted"


def test_a_bug_is_one_line_exit_4_and_debug_shows_it(finished, monkeypatch):
    from cpvt_eval import report

    def bug(*a, **k):
        raise TypeError("unsupported operand")

    monkeypatch.setattr(report, "comparison_markdown", bug)
    result = invoke("compare", finished, finished)
    assert result.exit_code == EXIT_INTERNAL
    assert "internal error: TypeError: unsupported operand" in one_line(result) and "--debug" in result.stderr
    debug = invoke("--debug", "compare", finished, finished)
    assert isinstance(debug.exception, TypeError)  # the traceback, for a bug report
    monkeypatch.setenv("CPVT_EVAL_DEBUG", "1")
    assert isinstance(invoke("compare", finished, finished).exception, TypeError)


def test_cpvt_eval_still_imports_light():
    assert "torch" not in cpvt_eval.__dict__


def test_full_disk_during_the_shift_probe(data, ckpt, tmp_path, monkeypatch):
    import cpvt_eval.results.store as store_module

    out = tmp_path / "shift"
    real = store_module.atomic_write_bytes

    def full(path, payload):
        if "predictions" in os.fspath(path) and "64px" in os.fspath(path):
            raise OSError(errno.ENOSPC, "No space left on device", os.fspath(path))
        return real(path, payload)

    args = ["shift", "-m", "cpvt_toy", "-s", "56", "64", "--data", data, "-c", ckpt, "--out", out, "--epochs", "1"]
    monkeypatch.setattr(store_module, "atomic_write_bytes", full)
    result = invoke(*args, "--model-arg", "num_classes=1000", "-j", "0")
    assert result.exit_code == EXIT_ENVIRONMENT
    assert "kept 1 of 2 finished cell(s)" in one_line(result)
    monkeypatch.undo()
    again = invoke(*args, "--model-arg", "num_classes=1000", "-j", "0")
    assert again.exit_code == 0, again.output
    assert "skipping 1 finished cell(s)" in again.stderr
