"""The agreement probe: each model's decisions at each size against its own at its native size, labels optional.

The reference figures are computed here from two forward passes of our own (PIL decode, the eval transform, the
model adapted to each size, softmax in float64), never through the probe's code.
"""

from __future__ import annotations

import copy
import csv
import json
from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch
from conftest import make_image, toy_run_config
from PIL import Image
from typer.testing import CliRunner

from cpvt_eval.cli import app
from cpvt_eval.config import Hooks, RunConfig
from cpvt_eval.data import EvalTransform, normalize_batch
from cpvt_eval.jobs.run import run_probe
from cpvt_eval.models.posenc import adapt_to_size
from cpvt_eval.probes import PROBES, column, split
from cpvt_eval.probes.agreement import Agreement, AgreementCounter, AgreementRow
from cpvt_eval.report import pipeline as probe_report
from cpvt_eval.results import RunStore, mcnemar_exact, register_row_type, wilson_interval
from cpvt_eval.results import schema as schema_module

pytestmark = pytest.mark.usefixtures("one_thread")

runner = CliRunner()
MODELS = ("cpvt_toy", "deit_toy")
VOLATILE = {"started_at", "duration_s", "aggregate_images_per_sec"}


def run_agreement(cfg, hooks=None):
    return run_probe(cfg, Agreement(), hooks)


@pytest.fixture
def photos(tmp_path):
    """A researcher's own photos: nested and flat, mixed formats and sizes, no class folders, no label file."""
    root = tmp_path / "photos"
    (root / "site-a" / "day2").mkdir(parents=True)
    (root / "site-b").mkdir()
    for i in range(9):
        folder = (root / "site-a", root / "site-a" / "day2", root / "site-b")[i % 3]
        size = ((90, 70), (64, 96), (120, 80))[i % 3]
        make_image(700 + i, size).save(folder / f"IMG_{i:04d}.{('jpg', 'png', 'jpeg')[i % 3]}")
    make_image(800, (75, 75)).save(root / "loose.png")
    return root


def config(data, toy_checkpoints, out, sizes=(56, 64), models=MODELS, **kw) -> RunConfig:
    return toy_run_config(data, toy_checkpoints, out, models, sizes, **{"batch_size": 4, **kw})


def agreement_rows(out) -> list:
    return split(RunStore(out).rows())["agreement"]


def by_cell(rows) -> dict:
    return {(r.model, r.img_size): r for r in rows}


def softmax_by_hand(module, paths, size) -> np.ndarray:
    """Float64 softmax of ``module`` at ``size`` for each image: PIL decode, the eval transform (crop 0.875,
    bicubic), ImageNet normalisation, one image at a time."""
    transform = EvalTransform(size, 0.875, "bicubic")
    out = []
    with torch.no_grad():
        for p in paths:
            x = transform(Image.open(p).convert("RGB"))[None]
            x = normalize_batch(x, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
            out.append(torch.softmax(module(x).double(), dim=1)[0].numpy())
    return np.stack(out)


def test_agreement_equals_two_independent_forward_passes(photos, toy_checkpoints, tmp_path):
    out = tmp_path / "run"
    outcome = run_agreement(config(photos, toy_checkpoints, out, sizes=(64,), models=("deit_toy",)))
    store = outcome.store
    cells = by_cell(agreement_rows(out))
    assert set(cells) == {("deit_toy", 56), ("deit_toy", 64)}  # the native size is always a cell
    row = cells[("deit_toy", 64)]
    arrays = store.load_predictions(row, ("indices", "agree", "kl", "overlap"))
    image_set_paths = [photos / rel for rel in _relpaths(store, row, photos)]

    native_module = toy_checkpoints["deit_toy"][0].eval()
    other = copy.deepcopy(native_module)
    adapt_to_size(other, 64)
    p = softmax_by_hand(native_module, image_set_paths, 56)
    q = softmax_by_hand(other, image_set_paths, 64)
    agree = p.argmax(1) == q.argmax(1)
    kl = np.sum(np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0), axis=1)
    top_p, top_q = np.argsort(-p, axis=1)[:, :5], np.argsort(-q, axis=1)[:, :5]
    overlap = np.array([len(set(a) & set(b)) for a, b in zip(top_p, top_q, strict=True)])

    order = np.argsort(arrays["indices"])
    assert arrays["agree"][order].astype(bool).tolist() == agree.tolist()
    np.testing.assert_allclose(arrays["kl"][order], kl, rtol=1e-4, atol=1e-6)
    assert arrays["overlap"][order].tolist() == overlap.tolist()
    assert row.n_images == len(image_set_paths) == 10
    assert row.n_agree == int(agree.sum())
    assert row.agreement_top1 == round(100 * agree.mean(), 4)
    lo, hi = wilson_interval(int(agree.sum()), len(agree))
    assert row.agreement_ci95 == f"{lo:.2f}-{hi:.2f}"
    assert row.top5_overlap == pytest.approx(100 * overlap.mean() / 5, abs=1e-4)
    assert row.kl_native == pytest.approx(kl.mean(), rel=1e-4, abs=1e-6)
    # the means' 95% intervals, normal approximation (a KL or a top-5 share is no proportion of trials)
    half = 1.959963984540054 * (100 * overlap / 5).std(ddof=1) / np.sqrt(len(overlap))
    assert row.top5_overlap_ci95 == f"{100 * overlap.mean() / 5 - half:.2f}-{100 * overlap.mean() / 5 + half:.2f}"
    lo, hi = (float(v) for v in row.kl_native_ci95.split("-"))
    half = 1.959963984540054 * kl.std(ddof=1) / np.sqrt(len(kl))
    assert lo == pytest.approx(max(0.0, kl.mean() - half), abs=2e-4) and hi == pytest.approx(kl.mean() + half, abs=2e-4)
    assert row.reference_size == 56
    # unlabelled images: no accuracy is claimed
    assert (row.top1, row.top5, row.layout) == (None, None, "images")


def _relpaths(store, row, root) -> list[str]:
    """The relative paths of the run's images in dataset order (the order the probe indexes them by)."""
    from cpvt_eval.data import open_dataset

    image_set = open_dataset(root, require_labels=False)
    return [s.relpath for s in image_set.samples]


def test_agreement_is_100_at_the_native_size(photos, toy_checkpoints, tmp_path):
    run_agreement(config(photos, toy_checkpoints, tmp_path / "run", sizes=(56, 64)))
    for model in MODELS:
        native = by_cell(agreement_rows(tmp_path / "run"))[(model, 56)]
        assert (native.agreement_top1, native.top5_overlap, native.kl_native) == (100.0, 100.0, 0.0)
        assert native.n_agree == native.n_images == 10


def test_labelled_images_report_top1_beside_agreement(imagefolder, toy_checkpoints, tmp_path):
    run_agreement(config(imagefolder, toy_checkpoints, tmp_path / "run", sizes=(64,)))
    rows = agreement_rows(tmp_path / "run")
    res = run_probe(config(imagefolder, toy_checkpoints, tmp_path / "res", sizes=(56, 64)), PROBES["resolution"]())
    accuracy = {(r.model, r.img_size): r.top1 for r in res.rows}
    for r in rows:
        assert r.top1 == accuracy[(r.model, r.img_size)] and r.label_source == ""
    md = (tmp_path / "run" / "agreement.md").read_text()
    assert "| top-1 |" in md


def test_the_native_reference_is_computed_once_and_read_back_on_resume(photos, toy_checkpoints, tmp_path, monkeypatch):
    full = run_agreement(config(photos, toy_checkpoints, tmp_path / "full", sizes=(56, 64, 72)))

    append = RunStore.append
    stored = []

    def interrupt_after_native(self, row):
        append(self, row)
        stored.append(row)
        if len(stored) == 2:  # both native cells, nothing else
            raise KeyboardInterrupt

    monkeypatch.setattr(RunStore, "append", interrupt_after_native)
    cfg = config(photos, toy_checkpoints, tmp_path / "resumed", sizes=(56, 64, 72))
    with pytest.raises(KeyboardInterrupt):
        run_agreement(cfg)
    monkeypatch.setattr(RunStore, "append", append)
    assert sorted((r.model, r.img_size) for r in agreement_rows(tmp_path / "resumed")) == [
        ("cpvt_toy", 56),
        ("deit_toy", 56),
    ]

    passes = []
    from cpvt_eval.jobs import run as job

    real_pass = job.run_pass

    def counting(work, image_set, size, *args, **kwargs):
        passes.append((size, [w.model.name for w in work]))
        return real_pass(work, image_set, size, *args, **kwargs)

    monkeypatch.setattr(job, "run_pass", counting)
    notes = []
    second = run_agreement(cfg, Hooks(notify=notes.append))
    # the native size is not computed again: its softmax is read back from the stored cell
    assert passes == [(64, list(MODELS)), (72, list(MODELS))]
    assert len(second.rows) == 4 and "skipping 2 finished cell(s)" in notes[0]

    def stable(rows):
        return {(r.model, r.img_size): {k: v for k, v in r.to_dict().items() if k not in VOLATILE} for r in rows}

    assert stable(agreement_rows(tmp_path / "resumed")) == stable(full.rows)
    for r in agreement_rows(tmp_path / "resumed"):
        mine = RunStore(tmp_path / "resumed").load_predictions(r, ("indices", "agree", "kl", "overlap"))
        (ref,) = [f for f in full.rows if (f.model, f.img_size) == (r.model, r.img_size)]
        theirs = RunStore(tmp_path / "full").load_predictions(ref, ("indices", "agree", "kl", "overlap"))
        for name in ("indices", "agree", "kl", "overlap"):
            np.testing.assert_array_equal(mine[name], theirs[name])


def test_mcnemar_between_models_on_agreeing_with_native(photos, toy_checkpoints, tmp_path):
    run_agreement(config(photos, toy_checkpoints, tmp_path / "run", sizes=(64,)))
    store = RunStore(tmp_path / "run")
    rows = agreement_rows(tmp_path / "run")
    pairs = probe_report.pair_records(Agreement(), store, rows)
    pair = next(p for p in pairs if p["img_size"] == 64)
    agree = {}
    for r in rows:
        if r.img_size == 64:
            a = store.load_predictions(r, ("indices", "agree"))
            agree[r.model] = a["agree"][np.argsort(a["indices"])].astype(bool)
    only_a = int(np.sum(agree["cpvt_toy"] & ~agree["deit_toy"]))
    only_b = int(np.sum(~agree["cpvt_toy"] & agree["deit_toy"]))
    assert (pair["a"], pair["b"], pair["n_images"]) == ("cpvt_toy", "deit_toy", 10)
    assert (pair["only_a_agrees"], pair["only_b_agrees"]) == (only_a, only_b)
    assert pair["p_value"] == round(mcnemar_exact(only_a, only_b), 6)
    md = (tmp_path / "run" / "agreement.md").read_text()
    assert 'exact McNemar test on "agrees with native"' in md
    assert json.loads((tmp_path / "run" / "agreement.json").read_text())["pairs"] == pairs


# -- a column declared once reaches every format ---------------------------------------------------------------------


@dataclass
class FlipRow(AgreementRow):
    flips: int | None = column("flips", "d")  # the one declaration of the new column


class FlipCounter(AgreementCounter):
    def columns(self):
        out = super().columns()
        return {**out, "flips": len(self.records["agree"]) - out["n_agree"]}


class Flips(Agreement):
    """The agreement probe with one more column: the images whose top-1 left the native one."""

    name = "flips"
    row_type = FlipRow
    report = replace(Agreement.report, stem="flips", plot=replace(Agreement.report.plot, file="flips.png"))

    def accumulator(self, *args, **kwargs):
        acc = super().accumulator(*args, **kwargs)
        acc.__class__ = FlipCounter
        return acc


def test_a_probe_column_declared_once_reaches_csv_markdown_and_json(photos, toy_checkpoints, tmp_path, monkeypatch):
    monkeypatch.setitem(PROBES, "flips", Flips)
    monkeypatch.setitem(schema_module._ROW_TYPES, "flips", FlipRow)
    out = tmp_path / "run"
    run_probe(config(photos, toy_checkpoints, out, sizes=(64,), models=("deit_toy",)), Flips())
    (row,) = [r for r in RunStore(out).rows() if r.img_size == 64]
    assert isinstance(row, FlipRow) and row.flips == row.n_images - row.n_agree
    table = list(csv.DictReader(open(out / "flips.csv")))
    assert [int(r["flips"]) for r in table if r["img_size"] == "64"] == [row.flips]
    headers = [line for line in (out / "flips.md").read_text().splitlines() if line.startswith("| model | size |")]
    assert len(headers) == 1 and " flips " in headers[0].split("|")
    doc = json.loads((out / "flips.json").read_text())
    assert [r["flips"] for r in doc["rows"] if r["img_size"] == 64] == [row.flips]
    assert register_row_type("flips", FlipRow) is FlipRow  # registering the same type again is harmless
    with pytest.raises(ValueError, match="already has a row type"):
        register_row_type("flips", AgreementRow)


def test_rows_of_a_probe_this_version_does_not_know_stay_out_of_every_table(photos, toy_checkpoints, tmp_path):
    out = tmp_path / "run"
    run_agreement(config(photos, toy_checkpoints, out, sizes=(64,), models=("deit_toy",)))
    before = (out / "agreement.csv").read_text()
    d = json.loads((out / "rows.jsonl").read_text().splitlines()[-1])
    later = {**d, "probe": "later:x", "img_size": 72, "a_later_column": 1.5}  # written by a later version
    with open(out / "rows.jsonl", "a") as f:
        f.write(json.dumps(later) + "\n")
    assert split(RunStore(out).rows())["later"][0].extra["a_later_column"] == 1.5
    result = runner.invoke(app, ["report", str(out), "--format", "md,csv,json"])
    assert result.exit_code == 0, result.output
    assert (out / "agreement.csv").read_text() == before
    assert not (out / "results.csv").exists()  # not taken for a cell of accuracy by size


# -- the command ------------------------------------------------------------------------------------------------------


def argv(data, toy_checkpoints, out, *extra) -> list[str]:
    args = ["agreement", "-s", "56", "64", "--data", str(data), "--out", str(out), "--workers", "0"]
    for m in MODELS:
        args += ["-m", m, "-c", f"{m}={toy_checkpoints[m][1]}"]
    return [*args, "--model-arg", "num_classes=1000", *extra]


def test_cli_on_unlabelled_photos(photos, toy_checkpoints, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, argv(photos, toy_checkpoints, out))
    assert result.exit_code == 0, result.output
    for name in ("agreement.md", "agreement.csv", "agreement.tex", "agreement.json", "agreement_vs_resolution.png"):
        assert (out / name).is_file(), name
    assert not (out / "results.md").exists()
    table = list(csv.DictReader(open(out / "agreement.csv")))
    assert [(r["model"], r["img_size"]) for r in table] == [(m, s) for m in MODELS for s in ("56", "64")]
    assert all(r["top1"] == "" and r["agreement_top1"] != "" for r in table)
    assert r"\label{tab:agreement-native}" in (out / "agreement.tex").read_text()
    again = runner.invoke(app, argv(photos, toy_checkpoints, out, "--json"))
    assert again.exit_code == 0, again.output
    doc = json.loads(again.stdout)
    assert len(doc) == 4 and all(0 <= r["agreement_top1"] <= 100 for r in doc)
    rep = runner.invoke(app, ["report", str(out), "--json"])
    assert rep.exit_code == 0, rep.output
    assert len(json.loads(rep.stdout)["agreement"]["agreement_top1"]) == 4
    # CI's gate on top-1 has nothing to gate on label-free cells: matched, shown without a top-1, never failed
    cmp = runner.invoke(app, ["compare", str(out), str(out), "--max-drop", "0"])
    assert cmp.exit_code == 0, cmp.output
    assert "| cpvt_toy | 64px | – | – | – |" in cmp.output


def test_cli_bad_size_is_one_line(photos, toy_checkpoints, tmp_path):
    result = runner.invoke(app, ["agreement", "-m", "deit_toy", "-s", "57", "--data", str(photos)])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_cli_needs_data(toy_checkpoints):
    result = runner.invoke(app, ["agreement", "-m", "deit_toy"])
    assert result.exit_code == 2 and "no dataset" in result.output
