"""The run store: cell keys, atomic rows, torn lines, the lock, predictions, provenance, resume and --force."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_imagefolder
from typer.testing import CliRunner

import cpvt_eval
from cpvt_eval.cli import app
from cpvt_eval.config import Hooks, RunConfig
from cpvt_eval.errors import ResultsError
from cpvt_eval.jobs.run import evaluate as run_resolution
from cpvt_eval.models.posenc import PEOptions
from cpvt_eval.probes.resolution import ResolutionRow
from cpvt_eval.results import (
    KEY_FIELDS,
    CellId,
    ResultRow,
    RunStore,
    mcnemar_exact,
    row_key,
    wilson_interval,
)

FAST = ("md", "csv")  # the runner tests skip the plots; tests/test_report.py covers them


pytestmark = pytest.mark.usefixtures("one_thread")


def make_row(**over) -> ResultRow:
    base = dict(
        model="cpvt_toy",
        pe="peg-0",
        checkpoint="a.pth",
        checkpoint_sha256="ab" * 32,
        img_size=56,
        grid="14x14",
        resize_size=64,
        crop_pct=0.875,
        interpolation="bicubic",
        pe_policy="peg-native",
        dtype="fp32",
        device="cpu",
        n_images=10,
        n_skipped=0,
        correct1=3,
        correct5=6,
        top1=30.0,
        top5=60.0,
        top1_ci95="",
        params=1,
        dataset="val",
        dataset_fingerprint="f" * 16,
        partial=True,
        limit=None,
        model_args="",
        versions="v",
        started_at="2026-01-01T00:00:00+00:00",
        duration_s=1.0,
        pe_options="ape=bicubic,antialias=false,sincos=regenerate",
        native_size=56,
    )
    base.update(over)
    return ResolutionRow(**base)


# ------------------------------------------------------------------------------------------- reference formulas


def test_wilson_matches_published_values():
    # Newcombe (1998), Stat. Med. 17:857, example 81/263: Wilson interval 0.2553 to 0.3662.
    lo, hi = wilson_interval(81, 263)
    assert lo == pytest.approx(25.53, abs=0.005)
    assert hi == pytest.approx(36.62, abs=0.005)
    # 0 of n: the upper bound has the closed form z^2 / (n + z^2).
    z2 = 1.959963984540054**2
    assert wilson_interval(0, 10) == pytest.approx((0.0, 100 * z2 / (10 + z2)))


@pytest.mark.parametrize("b,c", [(10, 2), (2, 10), (0, 7), (5, 5), (31, 12), (480, 530), (0, 0)])
def test_mcnemar_exact_matches_binomial_sum(b, c):
    n = b + c
    expected = 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n)
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-9)
    assert mcnemar_exact(10, 2) == pytest.approx(158 / 4096)


# ------------------------------------------------------------------------------------------- keys and rows


@pytest.mark.parametrize("name", KEY_FIELDS)
def test_every_key_field_changes_the_key(name):
    row = make_row()
    changed = {
        "model": "deit_toy",
        "checkpoint_sha256": "cd" * 32,
        "img_size": 64,
        "crop_pct": 0.9,
        "interpolation": "bilinear",
        "pe_options": "ape=bilinear,antialias=false,sincos=regenerate",
        "dtype": "bf16",
        "model_args": "num_classes=1000",
        "dataset_fingerprint": "e" * 16,
        "limit": 8,
        "decode_draft": True,
        "ema": True,
        "probe": "shift=random,max=32",
        "crop_mode": "squash",
        "mean": "0.5,0.5,0.5",
        "std": "0.5,0.5,0.5",
        "label_subset": "imagenet-a",
    }[name]
    assert row_key(replace(row, **{name: changed})) != row_key(row)


def test_key_ignores_fields_outside_the_key():
    row = make_row()
    assert row_key(replace(row, started_at="later", duration_s=9.0, device="cuda:0", images_per_sec=5.0)) == row_key(
        row
    )
    assert row_key(row) == CellId.of(row).key()


def test_key_of_a_row_is_the_one_earlier_versions_stored():
    # Run directories written before the identity became a dataclass must resume: same payload, same hash.
    import hashlib

    row = make_row()
    later = (
        "decode_draft",
        "ema",
        "probe",
        "crop_mode",
        "mean",
        "std",
        "label_subset",
    )  # fields added with a default since
    payload = {k: getattr(row, k) for k in KEY_FIELDS if k not in later}
    payload["crop_pct"] = float(payload["crop_pct"])
    expected = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    assert row_key(row) == expected
    drafted = replace(row, decode_draft=True)
    payload["decode_draft"] = True
    assert row_key(drafted) == hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def test_rows_round_trip_and_later_row_replaces(tmp_path):
    store = RunStore(tmp_path / "run")
    a, b = make_row(), make_row(img_size=64)
    store.append(a)
    store.append(b)
    store.append(replace(a, correct1=4, top1=40.0))  # --force: same key again
    rows = store.rows()
    assert [(r.img_size, r.correct1) for r in rows] == [(56, 4), (64, 3)]
    assert store.finished_keys() == {row_key(a), row_key(b)}


def test_torn_last_line_is_never_read_and_is_cut_before_the_next_append(tmp_path):
    store = RunStore(tmp_path / "run")
    store.append(make_row())
    full = json.dumps(make_row(img_size=64).to_dict(), sort_keys=True)
    with open(store.rows_path, "a") as f:
        f.write(full[: len(full) // 2])  # a kill in the middle of a write
    assert [r.img_size for r in store.rows()] == [56]
    store.append(make_row(img_size=72))
    lines = store.rows_path.read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line) for line in lines)
    assert [r.img_size for r in store.rows()] == [56, 72]


def test_complete_but_valid_json_without_newline_is_not_read(tmp_path):
    store = RunStore(tmp_path / "run")
    store.rows_path.write_text(json.dumps(make_row().to_dict()))  # no newline: the write did not finish
    assert store.rows() == []


def test_garbage_line_in_the_middle_is_an_error_when_read_and_set_aside_on_resume(tmp_path):
    store = RunStore(tmp_path / "run")
    store.append(make_row())
    with open(store.rows_path, "a") as f:
        f.write("{not json\n")
    store.append(make_row(img_size=64))
    with pytest.raises(ResultsError, match=r"rows.jsonl:2: damaged row \(not JSON"):
        store.rows()
    assert [r.img_size for r in store.rows(strict=False)] == [56, 64]
    ((line, problem),) = store.set_aside_damaged()
    assert line == 2 and problem.startswith("not JSON")
    assert [r.img_size for r in store.rows()] == [56, 64]
    assert (store.root / store.DAMAGED).read_text() == "{not json\n"


def test_lock_refuses_a_second_writer(tmp_path):
    store = RunStore(tmp_path / "run")
    with store.locked():
        with pytest.raises(ResultsError, match="in use by another cpvt-eval run"):
            with RunStore(tmp_path / "run").locked():
                pass
    with store.locked():  # released
        pass


def test_existing_refuses_missing_and_non_run_directories(tmp_path):
    with pytest.raises(ResultsError, match="not found"):
        RunStore.existing(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ResultsError, match="not a run directory"):
        RunStore.existing(tmp_path / "empty")
    assert not (tmp_path / "nope").exists()


def test_predictions_round_trip_and_mismatch(tmp_path):
    store = RunStore(tmp_path / "run")
    arrays = {
        "indices": np.arange(10, dtype=np.int32),
        "labels": np.arange(10, dtype=np.int32),
        "top5": np.zeros((10, 5), dtype=np.int16),
    }
    rel = store.save_predictions("k" * 16, "cpvt_toy", 56, arrays)
    row = make_row(predictions=rel)
    back = store.load_predictions(row)
    assert all(np.array_equal(back[k], arrays[k]) for k in arrays)
    with pytest.raises(ResultsError, match="does not match"):
        store.load_predictions(replace(row, n_images=11))
    (store.root / rel).unlink()
    with pytest.raises(ResultsError, match="predictions file not found"):
        store.load_predictions(row)


# ------------------------------------------------------------------------------------------- resume through the runner


@pytest.fixture
def deit_ckpts(tmp_path):
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = cpvt_eval.create_model("deit_toy", num_classes=1000).eval()
        path = tmp_path / f"deit_toy_{seed}.pth"
        torch.save(model.state_dict(), path)
        paths.append(path)
    return paths


def base_cfg(data: Path, out: Path, ckpt: Path, **over) -> RunConfig:
    cfg = RunConfig(
        models=("deit_toy",),
        sizes=(56,),
        data=data,
        out=out,
        checkpoints={"deit_toy": str(ckpt)},
        model_args={"deit_toy": {"num_classes": 1000}},
        batch_size=8,
        workers=0,
        device="cpu",
        timing=False,
    )
    return replace(cfg, **over)


def test_rerun_skips_finished_cells_and_says_so(tmp_path, imagefolder, deit_ckpts):
    cfg = base_cfg(imagefolder, tmp_path / "run", deit_ckpts[0], sizes=(56, 64))
    first = run_resolution(replace(cfg, report_formats=FAST))
    assert len(first.rows) == 2
    said: list[str] = []
    second = run_resolution(replace(cfg, report_formats=FAST), Hooks(notify=said.append))
    assert second.rows == []
    assert any("skipping 2 finished cell(s)" in m for m in said)
    assert len(first.store.rows_path.read_text().splitlines()) == 2
    forced = run_resolution(replace(cfg, report_formats=FAST, force=True))
    assert len(forced.rows) == 2
    assert len(first.store.rows_path.read_text().splitlines()) == 4
    assert len(forced.store.rows()) == 2
    runs = forced.store.provenance()
    assert [r["status"] for r in runs] == ["completed"] * 3
    assert [r["cells_skipped"] for r in runs] == [0, 2, 0]


def test_a_cell_an_earlier_version_stored_under_another_key_is_superseded_once(tmp_path, imagefolder, deit_ckpts):
    """A row of an earlier schema whose key has changed (here: written before the weights' mean/std were part of the
    identity) is the same cell when the identity's stable fields agree: the rerun computes it under today's key and
    moves the old row to rows.superseded.jsonl, so that the reports list the cell once. A row of another cell
    (another size) is left where it is."""
    cfg = replace(base_cfg(imagefolder, tmp_path / "run", deit_ckpts[0], sizes=(56, 64)), report_formats=FAST)
    first = run_resolution(cfg)
    store = first.store
    lines = [json.loads(line) for line in store.rows_path.read_text().splitlines()]
    for d in lines:
        d["mean"] = d["std"] = ""  # as a version before the data config was recorded wrote them
    store.rows_path.write_text("".join(json.dumps(d) + "\n" for d in lines))
    info = json.loads((store.root / store.RUN).read_text())
    (store.root / store.RUN).write_text(json.dumps({**info, "schema_version": 2}))

    said: list[str] = []
    second = run_resolution(replace(cfg, sizes=(56,)), Hooks(notify=said.append))
    assert [(r.model, r.img_size) for r in second.rows] == [("deit_toy", 56)]
    assert any("1 cell(s) written by an earlier version (deit_toy@56px)" in m for m in said), said
    superseded = [json.loads(line) for line in (store.root / store.SUPERSEDED).read_text().splitlines()]
    assert [(d["img_size"], d["mean"]) for d in superseded] == [(56, "")]
    kept = sorted((r.img_size, r.mean) for r in store.rows())
    assert kept == [(56, "0.485,0.456,0.406"), (64, "")]


@pytest.mark.parametrize(
    "field", ["checkpoint", "size", "crop_pct", "interpolation", "pe", "dtype", "dataset", "limit", "model_args"]
)
def test_each_key_field_invalidates_a_stored_cell(tmp_path, deit_ckpts, field):
    data = make_imagefolder(tmp_path / "val", class_indices=(0, 1, 2), per_class=2)
    cfg = base_cfg(data, tmp_path / "run", deit_ckpts[0])
    run_resolution(replace(cfg, report_formats=FAST))
    if field == "dataset":
        make_imagefolder(tmp_path / "val", class_indices=(3,), per_class=1)  # one more image: a new fingerprint
        changed = cfg
    else:
        changed = replace(
            cfg,
            **{
                "checkpoint": {"checkpoints": {"deit_toy": str(deit_ckpts[1])}},
                "size": {"sizes": (64,)},
                "crop_pct": {"crop_pct": 0.9},
                "interpolation": {"interpolation": "bilinear"},
                "pe": {"pe": PEOptions(ape_interpolation="bilinear")},
                "dtype": {"dtype": "bf16"},
                "limit": {"limit": 3},
                "model_args": {"model_args": {"deit_toy": {"num_classes": 1000, "drop_rate": 0.1}}},
            }[field],
        )
    again = run_resolution(replace(changed, report_formats=FAST))
    assert len(again.rows) == 1, f"changing {field} must recompute the cell"
    assert len(again.store.rows()) == 2
    # and the new cell is then stored under its own key
    assert run_resolution(replace(changed, report_formats=FAST)).rows == []


def test_pe_options_only_key_the_models_they_affect(tmp_path, imagefolder, toy_checkpoints):
    ckpts = {name: str(path) for name, (_, path) in toy_checkpoints.items()}
    cfg = replace(
        base_cfg(imagefolder, tmp_path / "run", toy_checkpoints["deit_toy"][1]),
        models=("cpvt_toy", "deit_toy"),
        checkpoints=ckpts,
        model_args={"cpvt_toy": {"num_classes": 1000}, "deit_toy": {"num_classes": 1000}},
    )
    first = run_resolution(replace(cfg, report_formats=FAST))
    assert {r.model: r.pe_options for r in first.rows} == {"cpvt_toy": "", "deit_toy": "ape=bicubic,antialias=false"}
    again = run_resolution(replace(cfg, pe=PEOptions(ape_interpolation="bilinear"), report_formats=FAST))
    assert [(r.model, r.pe_policy) for r in again.rows] == [("deit_toy", "ape-bilinear")]  # the PEG cell is kept


def test_provenance_records_the_conditions(tmp_path, imagefolder, deit_ckpts):
    outcome = run_resolution(
        replace(
            base_cfg(imagefolder, tmp_path / "run", deit_ckpts[0]), argv=("cpvt-eval", "resolution", "-m", "deit_toy")
        )
    )
    (record,) = outcome.store.provenance()
    assert record["command"] == "cpvt-eval resolution -m deit_toy"
    assert {"cpvt_eval", "torch", "timm", "python"} <= set(record["versions"])
    assert record["versions"]["torch"] == torch.__version__
    assert record["device"] == "cpu" and record["device_name"]
    assert record["threads"] == torch.get_num_threads()
    assert record["seed"] == 0
    assert "git_sha" in record
    assert record["status"] == "completed" and record["finished_at"] >= record["started_at"]
    assert record["config"]["sizes"] == [56]
    row = outcome.store.rows()[0]
    arrays = outcome.store.load_predictions(row)
    assert arrays["top5"].shape == (row.n_images, 5) and arrays["top5"].dtype == np.int16
    assert int((arrays["top5"][:, 0] == arrays["labels"]).sum()) == row.correct1


def test_cli_reports_a_locked_run_directory(tmp_path, imagefolder, deit_ckpts):
    store = RunStore(tmp_path / "run")
    args = ["resolution", "-m", "deit_toy", "-s", "56", "--data", str(imagefolder), "-c", str(deit_ckpts[0])]
    args += ["--model-arg", "num_classes=1000", "--out", str(store.root), "--no-throughput", "-j", "0"]
    with store.locked():
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "in use by another cpvt-eval run" in result.stderr
    assert "Traceback" not in result.output


def test_cli_json_mode_writes_only_json_and_force_recomputes(tmp_path, imagefolder, deit_ckpts):
    args = ["resolution", "-m", "deit_toy", "-s", "56", "--data", str(imagefolder), "-c", str(deit_ckpts[0])]
    args += ["--model-arg", "num_classes=1000", "--out", str(tmp_path / "run"), "--no-throughput", "-j", "0"]
    runner = CliRunner()
    first = runner.invoke(app, args + ["--json"])
    assert first.exit_code == 0, first.output
    rows = json.loads(first.stdout)
    assert [r["img_size"] for r in rows] == [56]
    assert first.stderr == ""  # stderr is not a terminal here: machine-readable mode stays quiet
    second = runner.invoke(app, args)
    assert second.exit_code == 0
    assert "skipping 1 finished cell(s)" in second.stderr
    forced = runner.invoke(app, args + ["--force"])
    assert forced.exit_code == 0
    assert "skipping" not in forced.stderr
    assert len((tmp_path / "run" / "rows.jsonl").read_text().splitlines()) == 2


def test_sigterm_stops_like_ctrl_c_and_the_handler_is_restored():
    import os
    import signal

    from cpvt_eval import interrupts

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with interrupts.installed():
            os.kill(os.getpid(), signal.SIGTERM)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


@pytest.fixture
def foreground_ctrl_c():
    """Ctrl-C as a terminal's foreground command has it: a suite started as a background job inherits SIGINT ignored,
    and the tool leaves an ignored SIGINT ignored (as ``nohup`` asks)."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowed interrupt, on purpose
def test_an_interrupt_swallowed_somewhere_is_raised_again_and_deferred_commits_finish(foreground_ctrl_c):
    """An exception raised inside a __del__ is only printed, so a Ctrl-C that lands there would be lost: the
    handler records it first, and the next check raises it again; a deferred block finishes before it is raised."""
    import gc
    import os
    import signal

    from cpvt_eval import interrupts

    class Shutdown:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)  # arrives while the finaliser runs: Python ignores what it raises

    with interrupts.installed():
        Shutdown()
        gc.collect()
        assert interrupts.requested()
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()
    with interrupts.installed():
        assert not interrupts.requested()  # each command starts clean
        done = []
        with pytest.raises(KeyboardInterrupt):
            with interrupts.deferred():
                os.kill(os.getpid(), signal.SIGINT)
                done.append("row committed")
        assert done == ["row committed"]
