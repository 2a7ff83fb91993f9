"""The translation probe (`cpvt-eval shift`): views, offsets, consistency, resume, stored pairs, McNemar, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import toy_run_config
from torch import nn
from typer.testing import CliRunner

from cpvt_eval.cli import app
from cpvt_eval.config import RunConfig
from cpvt_eval.errors import CpvtEvalError, ResultsError
from cpvt_eval.jobs.run import run_probe
from cpvt_eval.models.spec import DataConfig, entry_point
from cpvt_eval.probes import split
from cpvt_eval.probes.shift import Shift, ShiftProtocol, pair_offsets, shifted_views
from cpvt_eval.report import pipeline as probe_report
from cpvt_eval.results import RunStore, mcnemar_exact

pytestmark = pytest.mark.usefixtures("one_thread")

runner = CliRunner()
VOLATILE = {"started_at", "duration_s", "aggregate_images_per_sec"}


class MeanColour(nn.Module):
    """Sees only the mean colour of its input: a model that no shift of the same pixels can change."""

    def __init__(self, num_classes: int = 1000, **_):
        super().__init__()
        self.num_classes = num_classes
        self.head = nn.Linear(3, num_classes)

    def forward(self, x):
        return self.head(x.mean(dim=(2, 3)))


@entry_point("test", "none", native_size=56, patch_size=1, data=DataConfig(), description="mean colour (tests)")
def shift_test_mean_colour(pretrained=False, **kwargs):
    return MeanColour(**kwargs)


toy_config = toy_run_config


def run_shift(cfg, hooks=None, protocol=None):
    return run_probe(cfg, Shift(protocol), hooks)


def shift_rows(out) -> list:
    return split(RunStore(out).rows())["shift"]


def stable(row) -> dict:
    return {k: v for k, v in row.to_dict().items() if k not in VOLATILE}


# -- views and offsets ----------------------------------------------------------------------------------------------


def test_views_are_crops_of_the_canvas_or_the_rolled_centre_crop():
    canvas = torch.randint(0, 256, (5, 3, 40, 40), dtype=torch.uint8)
    off = pair_offsets(3, 1, range(5), 9)
    a, b = shifted_views(canvas, off, 32, "random")
    for i, (ya, xa, yb, xb) in enumerate(off.tolist()):
        assert torch.equal(a[i], canvas[i, :, ya : ya + 32, xa : xa + 32])
        assert torch.equal(b[i], canvas[i, :, yb : yb + 32, xb : xb + 32])
    off = pair_offsets(3, 1, range(5), 32)
    a, b = shifted_views(canvas, off, 32, "circular")
    centre = canvas[:, :, 4:36, 4:36]
    for i, (ya, xa, yb, xb) in enumerate(off.tolist()):
        assert torch.equal(a[i], torch.roll(centre[i], (ya, xa), (1, 2)))
        assert torch.equal(b[i], torch.roll(centre[i], (yb, xb), (1, 2)))


def test_offsets_depend_on_seed_epoch_and_image_only():
    whole = pair_offsets(0, 2, range(100), 32)
    assert whole.shape == (100, 4) and int(whole.min()) >= 0 and int(whole.max()) <= 31
    assert torch.equal(pair_offsets(0, 2, range(40, 60), 32), whole[40:60])  # any batch boundaries
    assert not torch.equal(pair_offsets(1, 2, range(100), 32), whole)
    assert not torch.equal(pair_offsets(0, 3, range(100), 32), whole)
    assert len(set(whole.flatten().tolist())) == 32  # every offset of [0, 32) is drawn
    assert int(pair_offsets(0, 0, range(50), 0).abs().sum()) == 0
    assert int(pair_offsets(0, 0, range(50), 1).abs().sum()) == 0


def test_protocol_defaults_and_bounds():
    p = ShiftProtocol()
    assert (p.canvas_size(224), p.max_shift_at(224)) == (256, 32)
    assert (p.canvas_size(384), p.max_shift_at(384)) == (439, 55)
    assert Shift(p).identity() == "shift:random,max=auto,epochs=5,seed=0"  # the keys of every earlier version
    assert ShiftProtocol(max_shift=33).max_shift_at(224) == 33  # offsets 0..32 still fit in the 256 canvas
    with pytest.raises(CpvtEvalError, match="does not fit at 224px"):
        ShiftProtocol(max_shift=34).max_shift_at(224)
    assert ShiftProtocol(mode="circular", max_shift=100).max_shift_at(224) == 100
    for bad in ({"mode": "x"}, {"max_shift": -1}, {"epochs": 0}):
        with pytest.raises(CpvtEvalError):
            ShiftProtocol(**bad)


# -- the job --------------------------------------------------------------------------------------------------------


def test_max_shift_zero_gives_exactly_100(imagefolder, toy_checkpoints, tmp_path):
    cfg = toy_config(imagefolder, toy_checkpoints, tmp_path / "run", sizes=(56, 64))
    outcome = run_shift(cfg, protocol=ShiftProtocol(max_shift=0, epochs=2))
    assert len(outcome.rows) == 4
    for row in outcome.rows:
        assert row.consistency == 100.0
        assert row.n_agree == row.n_pairs == 24
        assert row.top1_a == row.top1_b


def test_global_statistic_model_is_consistent_under_circular_shifts(imagefolder, tmp_path):
    torch.manual_seed(0)
    model = MeanColour()
    nn.init.normal_(model.head.weight, std=10.0)  # class regions fine enough that a mean colour change shows
    ckpt = tmp_path / "mean.pth"
    torch.save(model.state_dict(), ckpt)
    cfg = RunConfig(
        models=("shift_test_mean_colour",),
        sizes=(56, 64),
        data=imagefolder,
        out=tmp_path / "run",
        checkpoints={"shift_test_mean_colour": str(ckpt)},
        workers=0,
        batch_size=4,
    )
    outcome = run_shift(cfg, protocol=ShiftProtocol(mode="circular", max_shift=24, epochs=3))
    for row in outcome.rows:
        assert row.shift_mode == "circular" and row.max_shift == 24
        # the same pixels in another order: the mean, and so the class, can only move by a rounding error
        assert row.consistency >= 99.0, row.extra
        assert row.pe_policy == "native"


def test_fixed_seed_repeats_and_batch_size_does_not_matter(imagefolder, toy_checkpoints, tmp_path):
    protocol = ShiftProtocol(epochs=2, seed=7)
    runs = {}
    for name, batch in (("a", 5), ("b", 5), ("c", 3)):
        cfg = toy_config(imagefolder, toy_checkpoints, tmp_path / name, models=("deit_toy",), batch_size=batch)
        runs[name] = run_shift(cfg, protocol=protocol).rows[0]
    first = runs["a"]
    for other in (runs["b"], runs["c"]):
        assert other.consistency == first.consistency
        assert (other.correct1, other.correct5) == (first.correct1, first.correct5)
    stores = {name: RunStore(tmp_path / name) for name in runs}
    arrays = {name: stores[name].load_predictions(runs[name], ("offsets",), 24) for name in runs}
    for name in ("b", "c"):
        for key in ("indices", "epochs", "offsets", "top5_a", "top5_b"):
            assert np.array_equal(arrays[name][key], arrays["a"][key]), key
    other_seed = run_shift(
        toy_config(imagefolder, toy_checkpoints, tmp_path / "d", models=("deit_toy",)), protocol=ShiftProtocol(epochs=2)
    ).rows[0]
    assert other_seed.probe != first.probe
    d = RunStore(tmp_path / "d").load_predictions(other_seed, ("offsets",), 24)
    assert not np.array_equal(d["offsets"], arrays["a"]["offsets"])


def test_resumed_run_gives_the_uninterrupted_rows(imagefolder, toy_checkpoints, tmp_path, monkeypatch):
    protocol = ShiftProtocol(epochs=2)
    full = run_shift(toy_config(imagefolder, toy_checkpoints, tmp_path / "full", sizes=(56, 64)), protocol=protocol)

    append = RunStore.append
    stored = []

    def interrupt_after_two(self, row):
        append(self, row)
        stored.append(row)
        if len(stored) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(RunStore, "append", interrupt_after_two)
    cfg = toy_config(imagefolder, toy_checkpoints, tmp_path / "resumed", sizes=(56, 64))
    with pytest.raises(KeyboardInterrupt):
        run_shift(cfg, protocol=protocol)
    monkeypatch.setattr(RunStore, "append", append)
    assert len(shift_rows(tmp_path / "resumed")) == 2
    notes = []
    from cpvt_eval.config import Hooks

    second = run_shift(cfg, Hooks(notify=notes.append), protocol)
    assert len(second.rows) == 2 and "skipping 2 finished cell(s)" in notes[0]
    resumed = {(r.model, r.img_size): stable(r) for r in shift_rows(tmp_path / "resumed")}
    assert resumed == {(r.model, r.img_size): stable(r) for r in full.rows}
    statuses = [r["status"] for r in RunStore(tmp_path / "resumed").provenance()]
    assert statuses == ["interrupted", "completed"]


def test_consistency_from_stored_pairs_equals_the_row(imagefolder, toy_checkpoints, tmp_path):
    cfg = toy_config(imagefolder, toy_checkpoints, tmp_path / "run", sizes=(56, 64))
    run_shift(cfg, protocol=ShiftProtocol(epochs=3))
    store = RunStore(tmp_path / "run")
    rows = shift_rows(tmp_path / "run")
    assert len(rows) == 4
    for row in rows:
        n = row.n_pairs
        assert n == 3 * 12 and row.n_images == 2 * n
        a = store.load_predictions(row, ("indices", "epochs", "labels", "offsets", "top5_a", "top5_b"), n)
        pred_a, pred_b = a["top5_a"][:, 0], a["top5_b"][:, 0]
        assert row.consistency == round(100 * float(np.mean(pred_a == pred_b)), 4)
        assert row.n_agree == int(np.sum(pred_a == pred_b))
        assert row.top1_a == round(100 * float(np.mean(pred_a == a["labels"])), 4)
        assert row.top1_b == round(100 * float(np.mean(pred_b == a["labels"])), 4)
        assert row.correct1 == int(np.sum(pred_a == a["labels"]) + np.sum(pred_b == a["labels"]))
        assert sorted(np.bincount(a["epochs"]).tolist()) == [12, 12, 12]
        assert int(a["offsets"].max()) < row.max_shift
        lo, hi = (float(v) for v in row.consistency_ci95.split("-"))
        assert lo <= row.consistency <= hi


def test_mcnemar_between_models_on_the_same_pairs(imagefolder, toy_checkpoints, tmp_path):
    cfg = toy_config(imagefolder, toy_checkpoints, tmp_path / "run")
    run_shift(cfg, protocol=ShiftProtocol(epochs=3))
    store = RunStore(tmp_path / "run")
    rows = shift_rows(tmp_path / "run")
    (pair,) = probe_report.pair_records(Shift(), store, rows)
    by_model = {r.model: r for r in rows}
    agree = {}
    for model, row in by_model.items():
        a = store.load_predictions(row, ("top5_a", "top5_b"), row.n_pairs)
        agree[model] = a["top5_a"][:, 0] == a["top5_b"][:, 0]
    only_a = int(np.sum(agree["cpvt_toy"] & ~agree["deit_toy"]))
    only_b = int(np.sum(~agree["cpvt_toy"] & agree["deit_toy"]))
    assert (pair["a"], pair["b"], pair["n_pairs"]) == ("cpvt_toy", "deit_toy", 36)
    assert (pair["only_a_agrees"], pair["only_b_agrees"]) == (only_a, only_b)
    assert pair["p_value"] == round(mcnemar_exact(only_a, only_b), 6)
    assert pair["delta"] == round(by_model["cpvt_toy"].consistency - by_model["deit_toy"].consistency, 4)
    md = (tmp_path / "run" / "shift.md").read_text()
    assert "exact McNemar" in md and "| 56px | cpvt_toy | deit_toy |" in md
    header = "| size | A | B | consistency A | consistency B | Δ (A−B) | only A agrees | only B agrees | p |"
    assert header in md.splitlines()
    doc = json.loads((tmp_path / "run" / "shift.json").read_text())
    assert doc["pairs"] == [pair]

    # pairs of other views cannot be paired
    from safetensors.numpy import load_file, save_file

    path = tmp_path / "run" / by_model["deit_toy"].predictions
    arrays = load_file(str(path))
    arrays["offsets"] = (arrays["offsets"] + 1).astype(np.int16)
    save_file(arrays, str(path))
    with pytest.raises(ResultsError, match="not the same views"):
        probe_report.pair_records(Shift(), store, rows)


def test_mcnemar_counts_on_constructed_agreement():
    # b = 9 pairs only A keeps, c = 1 only B keeps: the exact two-sided p of 1 in 10 at 1/2
    assert mcnemar_exact(9, 1) == pytest.approx(2 * 11 / 1024)


# -- reports and CLI ------------------------------------------------------------------------------------------------


def shift_argv(imagefolder, toy_checkpoints, out, *extra):
    return [
        "shift",
        "--model",
        "cpvt_toy",
        "deit_toy",
        "--sizes",
        "56",
        "64",
        "--data",
        str(imagefolder),
        "--checkpoint",
        f"cpvt_toy={toy_checkpoints['cpvt_toy'][1]}",
        "--checkpoint",
        f"deit_toy={toy_checkpoints['deit_toy'][1]}",
        "--model-arg",
        "num_classes=1000",
        "--out",
        str(out),
        "--workers",
        "0",
        "--batch-size",
        "5",
        "--epochs",
        "2",
        *extra,
    ]


def test_cli_end_to_end(imagefolder, toy_checkpoints, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, shift_argv(imagefolder, toy_checkpoints, out))
    assert result.exit_code == 0, result.output
    for name in ("shift.md", "shift.csv", "shift.tex", "shift.json", "consistency_vs_resolution.png", "rows.jsonl"):
        assert (out / name).is_file(), name
    assert not (out / "results.md").exists()  # no resolution cells in this run
    import csv

    rows = list(csv.DictReader(open(out / "shift.csv")))
    assert [(r["model"], r["img_size"]) for r in rows] == [
        ("cpvt_toy", "56"),
        ("cpvt_toy", "64"),
        ("deit_toy", "56"),
        ("deit_toy", "64"),
    ]
    for col in ("consistency", "consistency_ci95", "n_pairs", "top1_a", "top1_b", "shift_mode", "max_shift"):
        assert all(r[col] != "" for r in rows), col
    assert [r["max_shift"] for r in rows] == ["8", "9", "8", "9"]
    assert [r["canvas_size"] for r in rows] == ["64", "73", "64", "73"]
    assert {r["probe"] for r in rows} == {"shift:random,max=auto,epochs=2,seed=0"}
    assert "Consistency under translation" in (out / "shift.md").read_text()
    assert r"\label{tab:shift-consistency}" in (out / "shift.tex").read_text()
    assert (out / "consistency_vs_resolution.png").read_bytes().startswith(b"\x89PNG")

    # --json: the rows alone on stdout; the rerun skips every finished cell
    again = runner.invoke(app, shift_argv(imagefolder, toy_checkpoints, out, "--json"))
    assert again.exit_code == 0, again.output
    doc = json.loads(again.stdout)
    assert sorted((r["model"], r["img_size"]) for r in doc) == [(r["model"], int(r["img_size"])) for r in rows]
    assert all(0 <= r["consistency"] <= 100 and r["n_pairs"] == 24 for r in doc)

    # `report` re-renders from the stored rows, the shift part included in its JSON
    rep = runner.invoke(app, ["report", str(out), "--json"])
    assert rep.exit_code == 0, rep.output
    report_doc = json.loads(rep.stdout)
    assert report_doc["rows"] == [] and len(report_doc["shift"]["consistency"]) == 4
    assert len(report_doc["shift"]["pairs"]) == 2


def test_resolution_and_shift_rows_in_one_run_keep_their_own_reports(imagefolder, toy_checkpoints, tmp_path):
    out = tmp_path / "run"
    res_argv = [
        "resolution",
        "-m",
        "deit_toy",
        "-s",
        "56",
        "--data",
        str(imagefolder),
        "-c",
        str(toy_checkpoints["deit_toy"][1]),
        "--model-arg",
        "num_classes=1000",
        "--out",
        str(out),
        "--no-throughput",
        "--workers",
        "0",
    ]
    res = runner.invoke(app, res_argv)
    assert res.exit_code == 0, res.output
    before = (out / "results.csv").read_text()
    run_shift(toy_config(imagefolder, toy_checkpoints, out, models=("deit_toy",)), protocol=ShiftProtocol(epochs=1))
    assert (out / "results.csv").read_text() == before  # the resolution table has only the resolution row
    assert len(list(open(out / "shift.csv"))) == 2
    records = probe_report.records(Shift(), shift_rows(out))
    assert [r["label"] for r in records] == ["deit_toy"]
    again = runner.invoke(app, [*res_argv, "--json"])  # finished: prints the resolution row only
    assert again.exit_code == 0, again.output
    assert [(r["model"], r["probe"]) for r in json.loads(again.stdout)] == [("deit_toy", "")]


def test_published_figure_shown_for_zhangs_protocol():
    from cpvt_eval.probes.shift import published_consistency
    from cpvt_eval.results import ResultRow

    row = ResultRow.from_dict(
        {
            **{f: None for f in ("pe", "grid", "pe_policy", "dtype", "device", "dataset", "dataset_fingerprint")},
            "model": "resnet50",
            "checkpoint": "timm:resnet50.tv_in1k",
            "checkpoint_sha256": "x",
            "img_size": 224,
            "resize_size": 256,
            "crop_pct": 0.875,
            "interpolation": "bicubic",
            "n_images": 0,
            "n_skipped": 0,
            "correct1": 0,
            "correct5": 0,
            "top1": 0.0,
            "top5": 0.0,
            "top1_ci95": "",
            "images_per_sec": None,
            "throughput_batch": None,
            "gflops_per_image": None,
            "params": 0,
            "partial": False,
            "limit": None,
            "model_args": "",
            "versions": "",
            "started_at": "",
            "duration_s": 0.0,
            "probe": "shift:random,max=auto,epochs=5,seed=0",
            # as rows of an earlier version stored them: the probe's columns in ``extra``, read back into columns
            "extra": {"shift_mode": "random", "max_shift": 32},
        }
    )
    assert published_consistency(row)["consistency"] == 89.20
    row.max_shift = 16
    assert published_consistency(row) is None


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-shift", "-1"], "--max-shift must be 0 or more"),
        (["--mode", "x"], "--mode must be one of random, circular"),
        (["--epochs", "0"], "--epochs must be 1 or more"),
        (["--max-shift", "40"], "does not fit at 56px"),
    ],
)
def test_bad_flags_are_one_line_and_exit_2(imagefolder, toy_checkpoints, tmp_path, flags, message):
    result = runner.invoke(app, shift_argv(imagefolder, toy_checkpoints, tmp_path / "run", *flags))
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert message in lines[0] and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()  # nothing written before the flags are checked


def test_a_family_rebuilt_at_each_size_runs_the_probe(imagefolder, tmp_path):
    # Swin is built by timm at each size (window kept, grid padded); the probe uses the same per-size module as
    # `resolution`, records its policy, and with no shift both views are the same image.
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    swin = timm.create_model(
        "swin_tiny_patch4_window7_224", embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), num_classes=1000
    )
    ckpt = tmp_path / "swin.safetensors"
    save_file({k: v.contiguous() for k, v in swin.state_dict().items()}, str(ckpt))
    cfg = RunConfig(
        models=("swin_tiny_patch4_window7_224",),
        sizes=(224, 256),
        data=imagefolder,
        out=tmp_path / "run",
        checkpoints={"swin_tiny_patch4_window7_224": str(ckpt)},
        model_args={"swin_tiny_patch4_window7_224": dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))},
        workers=0,
        batch_size=8,
        report_formats=("md", "csv"),
    )
    outcome = run_shift(cfg, protocol=ShiftProtocol(epochs=1, max_shift=0))
    rows = {r.img_size: r for r in outcome.rows}
    assert rows[256].pe_policy == "window-padded" and rows[224].pe_policy != ""
    assert all(r.consistency == 100.0 for r in rows.values())
