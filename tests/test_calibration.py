"""The calibration probe (`cpvt-eval calibration`): ECE, NLL, Brier, confidence and the fitted temperature against a
computation by hand, the temperature's fit, label subsets, the reports, resume, and a pass shared with accuracy."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from conftest import make_imagefolder, toy_run_config
from PIL import Image
from torchvision import transforms
from typer.testing import CliRunner

import cpvt_eval
from cpvt_eval.cli import app
from cpvt_eval.jobs.run import run_probe, run_probes
from cpvt_eval.models.posenc import adapt_to_size
from cpvt_eval.probes import split
from cpvt_eval.probes.calibration import fit_temperature
from cpvt_eval.results import RunStore

pytestmark = pytest.mark.usefixtures("one_thread")

runner = CliRunner()
CLASSES = (0, 1, 2, 999)
SIZES = (56, 72)
VOLATILE = {"started_at", "duration_s", "aggregate_images_per_sec"}


@pytest.fixture
def world(tmp_path):
    """24 images of 4 classes and a toy DeiT whose head favours those classes: some images right, most not, so that
    every figure is away from its bounds and the NLL has a minimum in the temperature."""
    data = make_imagefolder(tmp_path / "val", CLASSES, per_class=6)
    torch.manual_seed(3)
    model = cpvt_eval.create_model("deit_toy", num_classes=1000).eval()
    with torch.no_grad():
        model.head.weight[list(CLASSES)] *= 60  # confidences from 0.2% to 96%: every part of the bins
    path = tmp_path / "deit_toy.pth"
    torch.save({"model": model.state_dict()}, path)
    return data, path


def config(data, path, out, sizes=SIZES, **kw):
    return toy_run_config(data, {"deit_toy": (None, path)}, out, models=("deit_toy",), sizes=sizes, **kw)


def logits_by_hand(path, data, size) -> tuple[np.ndarray, np.ndarray]:
    """Float64 logits of every image at ``size`` and their labels, computed apart from the tool's pass: torchvision's
    Resize + CenterCrop + ToTensor + Normalize, one image at a time, the model adapted to the size."""
    from cpvt_eval.data import imagenet_synsets

    model = cpvt_eval.create_model("deit_toy", num_classes=1000).eval()
    model.load_state_dict(torch.load(path, weights_only=True)["model"])
    adapt_to_size(model, size)
    tf = transforms.Compose(
        [
            transforms.Resize(int(size / 0.875), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    synsets = imagenet_synsets()
    rows, labels = [], []
    with torch.no_grad():
        for folder in sorted(p for p in data.iterdir()):
            for file in sorted(folder.iterdir()):
                rows.append(model(tf(Image.open(file).convert("RGB"))[None])[0].double().numpy())
                labels.append(synsets.index(folder.name))
    return np.stack(rows), np.array(labels)


def by_hand(logits: np.ndarray, labels: np.ndarray, bins: int = 15) -> dict:
    """The figures from their definitions, in float64 and plain loops."""
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    n = len(labels)
    conf, pred = p.max(axis=1), p.argmax(axis=1)
    hit = pred == labels
    ece = 0.0
    for m in range(bins):
        lo, hi = m / bins, (m + 1) / bins
        members = [i for i in range(n) if lo < conf[i] <= hi]
        if members:
            ece += len(members) / n * abs(hit[members].mean() - conf[members].mean())
    onehot = np.zeros_like(p)
    onehot[np.arange(n), labels] = 1.0
    return {
        "ece": 100 * ece,
        "nll": float(np.mean([-math.log(p[i, labels[i]]) for i in range(n)])),
        "brier": float(np.mean(((p - onehot) ** 2).sum(axis=1))),
        "confidence": 100 * float(conf.mean()),
        "temperature": golden_temperature(logits, labels),
        "top1": 100 * float(hit.mean()),
    }


def nll_at(logits: np.ndarray, labels: np.ndarray, t: float) -> float:
    z = logits / t
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels].mean())


def golden_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The NLL's minimiser over log T in [-7, 7] by golden-section search (another method than the probe's)."""
    a, b = -7.0, 7.0
    g = (math.sqrt(5) - 1) / 2
    for _ in range(120):
        c, d = b - g * (b - a), a + g * (b - a)
        if nll_at(logits, labels, math.exp(c)) < nll_at(logits, labels, math.exp(d)):
            b = d
        else:
            a = c
    return math.exp((a + b) / 2)


def calibration_rows(out) -> dict:
    return {(r.model, r.img_size): r for r in split(RunStore(out).rows())["calibration"]}


def test_figures_equal_a_computation_by_hand_at_two_sizes(world, tmp_path):
    data, path = world
    run_probe(config(data, path, tmp_path / "run"), "calibration")
    rows = calibration_rows(tmp_path / "run")
    for size in SIZES:
        logits, labels = logits_by_hand(path, data, size)
        want, row = by_hand(logits, labels), rows[("deit_toy", size)]
        assert 0 < want["top1"] < 100 and row.top1 == pytest.approx(want["top1"], abs=1e-4)
        assert row.ece == pytest.approx(want["ece"], abs=1e-3), size
        assert row.nll == pytest.approx(want["nll"], rel=1e-5)
        assert row.brier == pytest.approx(want["brier"], rel=1e-5)
        assert row.confidence == pytest.approx(want["confidence"], abs=1e-4)
        assert row.temperature == pytest.approx(want["temperature"], rel=1e-3)
        lo, hi = (float(x) for x in row.ece_ci95.split("-"))
        assert 0 <= lo <= hi <= 100 and row.bins == 15 and row.probe == "calibration:bins=15"
    # the per-image records are stored: the ECE is recomputed from them exactly
    store = RunStore(tmp_path / "run")
    row = rows[("deit_toy", SIZES[0])]
    a = store.load_predictions(row, ("confidence", "hit", "nll", "brier"))
    logits, labels = logits_by_hand(path, data, SIZES[0])
    np.testing.assert_allclose(a["nll"], [-math.log(q) for q in _probs_of_labels(logits, labels)], rtol=1e-5)
    assert a["hit"].astype(bool).tolist() == (logits.argmax(axis=1) == labels).tolist()


def _probs_of_labels(logits, labels):
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    return p[np.arange(len(labels)), labels]


def test_temperature_fit_matches_another_method_and_says_when_there_is_no_minimum():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 10)) * 3
    labels = rng.integers(0, 10, 200)
    labels[:120] = logits[:120].argmax(axis=1)  # mostly right, so that sharper helps up to a point
    fitted = fit_temperature(torch.from_numpy(logits).float(), torch.from_numpy(labels))
    assert fitted == pytest.approx(golden_temperature(logits.astype(np.float32).astype(np.float64), labels), rel=1e-4)
    # every image right by a margin: the NLL falls all the way to T -> 0
    right = logits.argmax(axis=1)
    assert fit_temperature(torch.from_numpy(logits).float(), torch.from_numpy(right)) is None
    # labels below the mean logit: the flattest softmax is best, T -> infinity
    worst = logits.argmin(axis=1)
    assert fit_temperature(torch.from_numpy(logits).float(), torch.from_numpy(worst)) is None


def test_under_a_label_subset_the_softmax_is_over_its_classes(world, tmp_path):
    data, path = world
    subset = [*CLASSES, *range(100, 110)]
    (tmp_path / "subset.txt").write_text("\n".join(map(str, subset)) + "\n")
    run_probe(
        config(data, path, tmp_path / "run", sizes=(56,), label_subset=str(tmp_path / "subset.txt")), "calibration"
    )
    (row,) = calibration_rows(tmp_path / "run").values()
    logits, labels = logits_by_hand(path, data, 56)
    position = np.array([subset.index(int(y)) for y in labels])
    want = by_hand(logits[:, subset], position)
    assert row.label_subset and row.nll == pytest.approx(want["nll"], rel=1e-5)
    assert row.ece == pytest.approx(want["ece"], abs=1e-3)
    assert row.temperature == pytest.approx(want["temperature"], rel=1e-3)


def argv(data, path, out, *extra) -> list[str]:
    args = ["calibration", "-m", "deit_toy", "-c", str(path), "--model-arg", "num_classes=1000", "-s", "56", "72"]
    return [*args, "--data", str(data), "--out", str(out), "-j", "0", "-b", "8", *extra]


def test_cli_reports_resume_and_rerender(world, tmp_path):
    data, path = world
    out = tmp_path / "run"
    result = runner.invoke(app, argv(data, path, out))
    assert result.exit_code == 0, result.output
    assert "ECE %" in result.stdout  # the table is the result: on stdout
    for name in ("calibration.md", "calibration.csv", "calibration.tex", "calibration.json", "ece_vs_resolution.png"):
        assert (out / name).is_file(), name
    for size in (56, 72):
        assert (out / f"reliability_{size}px.png").read_bytes().startswith(b"\x89PNG")
    md = (out / "calibration.md").read_text()
    assert "![Reliability diagram at 72px](reliability_72px.png)" in md and "| ECE | 95% CI |" in md
    assert not (out / "results.md").exists()
    table = list(csv.DictReader(open(out / "calibration.csv")))
    assert [r["img_size"] for r in table] == ["56", "72"] and all(r["temperature"] for r in table)
    assert r"\label{tab:calibration-ece}" in (out / "calibration.tex").read_text()

    # the rerun skips the finished cells; --json prints the rows alone
    again = runner.invoke(app, argv(data, path, out, "--json"))
    assert again.exit_code == 0, again.output
    rows = json.loads(again.stdout)
    assert [(r["img_size"], r["bins"]) for r in rows] == [(56, 15), (72, 15)]
    before = (out / "rows.jsonl").read_bytes()
    for size in (56, 72):
        (out / f"reliability_{size}px.png").unlink()
    rep = runner.invoke(app, ["report", str(out), "--format", "png,md"])
    assert rep.exit_code == 0, rep.output
    assert (out / "rows.jsonl").read_bytes() == before and (out / "reliability_56px.png").is_file()

    # the bins are part of the cell's identity: another count is another cell
    ten = runner.invoke(app, argv(data, path, out, "--bins", "10", "--json"))
    assert ten.exit_code == 0, ten.output
    assert sorted({r.bins for r in split(RunStore(out).rows())["calibration"]}) == [10, 15]
    bad = runner.invoke(app, argv(data, path, out, "--bins", "0"))
    assert bad.exit_code == 2 and "--bins" in bad.output and len(bad.output.strip().splitlines()) == 1


def test_with_accuracy_each_size_is_one_pass_and_the_rows_are_those_of_separate_runs(world, tmp_path, monkeypatch):
    data, path = world
    run_probe(config(data, path, tmp_path / "alone-r", timing=False), "resolution")
    run_probe(config(data, path, tmp_path / "alone-c"), "calibration")
    from cpvt_eval.jobs import run as job

    passes = []
    real = job.run_pass

    def counting(work, image_set, size, *args, **kwargs):
        passes.append((size, sorted(w.probe.name for w in work)))
        return real(work, image_set, size, *args, **kwargs)

    monkeypatch.setattr(job, "run_pass", counting)
    run_probes(config(data, path, tmp_path / "both", timing=False), ["resolution", "calibration"])
    assert passes == [(size, ["calibration", "resolution"]) for size in SIZES]

    def stable(out, probe):
        return {
            (r.model, r.img_size): {k: v for k, v in r.to_dict().items() if k not in VOLATILE}
            for r in split(RunStore(out).rows())[probe]
        }

    assert stable(tmp_path / "both", "resolution") == stable(tmp_path / "alone-r", "resolution")
    assert stable(tmp_path / "both", "calibration") == stable(tmp_path / "alone-c", "calibration")


def test_also_on_the_resolution_command(world, tmp_path):
    data, path = world
    args = ["resolution", "-m", "deit_toy", "-c", str(path), "--model-arg", "num_classes=1000", "-s", "56"]
    args += ["--data", str(data), "--out", str(tmp_path / "run"), "-j", "0", "--no-throughput"]
    result = runner.invoke(app, [*args, "--also", "calibration", "--json"])
    assert result.exit_code == 0, result.output
    assert sorted(r["probe"] for r in json.loads(result.stdout)) == ["", "calibration:bins=15"]
    bad = runner.invoke(app, [*args, "--also", "calibrate"])
    assert bad.exit_code == 2 and "unknown probe 'calibrate'" in bad.output
