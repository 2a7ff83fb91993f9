"""Reports rendered from a stored run: golden Markdown/CSV/LaTeX/JSON, intervals, paired tests, plots, CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cpvt_eval import report
from cpvt_eval.cli import app
from cpvt_eval.probes import make
from cpvt_eval.probes.resolution import ResolutionRow
from cpvt_eval.report import pipeline
from cpvt_eval.results import RunStore, format_ci, mcnemar_exact, wilson_interval

GOLDEN = Path(__file__).parent / "golden"
PLOT_TOP1 = "top1_vs_resolution.png"
N = 400
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_thread")


# (model, pe, size, percent correct in the deterministic pattern below, images/s, GFLOPs)
CELLS = [
    ("cpvt_ti", "peg-0", 224, 72, 2510.5, 1.26),
    ("cpvt_ti", "peg-0", 384, 74, 812.25, 3.81),
    ("deit_tiny_patch16_224", "ape-learned", 224, 73, 2620.0, 1.26),
    ("deit_tiny_patch16_224", "ape-learned", 384, 69, None, None),
]


def correct_mask(model: str, pct: int) -> np.ndarray:
    # A fixed pattern per model (no RNG, so the golden files do not depend on a generator's version).
    shift = 0 if model.startswith("cpvt") else 37
    i = np.arange(N)
    return ((i * 13 + shift) % 100) < pct


def synthetic_run(root: Path, with_throughput: bool = True) -> RunStore:
    """A run directory as `resolution` writes it: rows, per-image predictions, provenance."""
    store = RunStore(root)
    labels = (np.arange(N) * 7 % 1000).astype(np.int32)
    for model, pe, size, pct, ips, gflops in CELLS:
        ok = correct_mask(model, pct)
        top5 = np.stack([(labels + k) % 1000 for k in range(1, 6)], axis=1).astype(np.int16)
        top5[ok, 0] = labels[ok]
        second = (~ok) & (np.arange(N) % 3 == 0)  # some misses have the label second
        top5[second, 1] = labels[second]
        c1, c5 = int(ok.sum()), int((ok | second).sum())
        rel = store.save_predictions(
            f"{size:016d}"[-16:], model, size, {"indices": np.arange(N, dtype=np.int32), "labels": labels, "top5": top5}
        )
        store.append(
            ResolutionRow(
                model=model,
                pe=pe,
                checkpoint=f"/ckpt/{model}.pth",
                checkpoint_sha256=("a" if model.startswith("cpvt") else "b") * 64,
                img_size=size,
                grid=f"{size // 16}x{size // 16}",
                resize_size=int(size / 0.875),
                crop_pct=0.875,
                interpolation="bicubic",
                pe_policy="peg-native" if pe.startswith("peg") else "ape-bicubic",
                dtype="fp32",
                device="cuda:0",
                n_images=N,
                n_skipped=0,
                correct1=c1,
                correct5=c5,
                top1=round(100 * c1 / N, 4),
                top5=round(100 * c5 / N, 4),
                top1_ci95=format_ci(c1, N),
                images_per_sec=ips if with_throughput else None,
                throughput_batch=256 if with_throughput and ips else None,
                gflops_per_image=gflops if with_throughput else None,
                params=5_700_000,
                dataset="/data/imagenet/val",
                dataset_fingerprint="0123456789abcdef",
                partial=True,
                limit=N,
                model_args="",
                versions="cpvt_eval=0.1.0 torch=2.4.0 timm=1.0.9 python=3.11.7",
                started_at="2026-01-02T03:04:05+00:00",
                duration_s=12.5,
                pe_options="ape=bicubic,antialias=false,sincos=regenerate",
                native_size=224,
                predictions=rel,
                mean="0.485,0.456,0.406",
                std="0.229,0.224,0.225",
                data_config_source=f"spec:{model}",
            )
        )
    store.record_provenance(
        {
            "run_id": "fixed",
            "command": "cpvt-eval resolution -m cpvt_ti deit_ti -s 224 384 --limit 400",
            "device_name": "NVIDIA H100 80GB HBM3",
            "threads": 16,
            "git_sha": "0" * 40,
            "seed": 0,
            "started_at": "2026-01-02T03:04:05+00:00",
            "finished_at": "2026-01-02T03:09:05+00:00",
            "status": "completed",
        }
    )
    return store


@pytest.fixture
def run(tmp_path) -> RunStore:
    return synthetic_run(tmp_path / "run")


@pytest.mark.parametrize("name", ["results.md", "results.csv", "results.tex", "results.json"])
def test_rendering_matches_golden_files(run, name):
    report.render(run, ("md", "csv", "tex", "json"), pairs=True)
    got = (run.root / name).read_text()
    if name == "results.json":
        assert json.loads(got)["schema"] == "cpvt-eval/report-1"
    golden = GOLDEN / name
    if os.environ.get("CPVT_EVAL_UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(got)
    assert got == golden.read_text(), f"{name} differs from {golden}; rerun with CPVT_EVAL_UPDATE_GOLDEN=1 if intended"


def test_report_numbers_follow_the_formulas(run):
    """The golden files could be regenerated wrongly; these numbers are checked against the formulas."""
    rows = {(r.model, r.img_size): r for r in run.rows()}
    probe = make("resolution")
    records = {(r["model"], r["img_size"]): r for r in pipeline.records(probe, run.rows())}
    cpvt384 = records[("cpvt_ti", 384)]
    lo, hi = wilson_interval(rows[("cpvt_ti", 384)].correct1, N)
    assert (cpvt384["top1_ci95_low"], cpvt384["top1_ci95_high"]) == (round(lo, 4), round(hi, 4))
    assert cpvt384["delta_native"] == pytest.approx(rows[("cpvt_ti", 384)].top1 - rows[("cpvt_ti", 224)].top1)
    assert cpvt384["published_top1"] == 73.2 and cpvt384["published_confidence"] == "secondary"
    assert cpvt384["delta_published"] == pytest.approx(cpvt384["top1"] - 73.2)
    assert records[("cpvt_ti", 224)]["delta_native"] == 0.0

    pairs = {p["img_size"]: p for p in pipeline.pair_records(probe, run, run.rows())}
    a, b = correct_mask("cpvt_ti", 74), correct_mask("deit_tiny_patch16_224", 69)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    assert (pairs[384]["only_a_correct"], pairs[384]["only_b_correct"]) == (only_a, only_b)
    assert pairs[384]["p_value"] == round(mcnemar_exact(only_a, only_b), 6)
    assert pairs[384]["delta"] == pytest.approx(100 * (a.sum() - b.sum()) / N)

    md = pipeline.markdown(probe, run.rows())
    assert f"{lo:.2f}–{hi:.2f}" in md
    tex = pipeline.latex(probe, run.rows())
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert r"deit\_tiny\_patch16\_224" in tex


def _assert_png(path: Path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] > 100 and img.size[1] > 100


def test_plots_are_valid_pngs_linked_from_markdown(run):
    written = report.render(run, ("png", "md"))
    names = {p.name for p in written}
    assert {PLOT_TOP1, report.PLOT_THROUGHPUT, "results.md"} <= names
    _assert_png(run.root / PLOT_TOP1)
    _assert_png(run.root / report.PLOT_THROUGHPUT)
    md = (run.root / "results.md").read_text()
    assert f"]({PLOT_TOP1})" in md and f"]({report.PLOT_THROUGHPUT})" in md


def test_no_throughput_plot_without_timed_cells(tmp_path):
    store = synthetic_run(tmp_path / "run", with_throughput=False)
    report.render(store, ("png", "md"))
    assert (store.root / PLOT_TOP1).is_file()
    assert not (store.root / report.PLOT_THROUGHPUT).exists()
    md = (store.root / "results.md").read_text()
    assert report.PLOT_THROUGHPUT not in md and "## Throughput" not in md


def test_same_model_under_two_protocols_gets_two_labels(run):
    row = run.rows()[0]
    from dataclasses import replace

    run.append(replace(row, crop_pct=1.0, correct1=1, top1=0.25))
    labels = sorted(set(report.row_labels(run.rows()).values()))
    assert labels == ["cpvt_ti [crop=0.875]", "cpvt_ti [crop=1.0]", "deit_tiny_patch16_224"]


# ------------------------------------------------------------------------------------------------------- CLI


def test_cli_report_writes_the_chosen_formats(run, tmp_path):
    out = tmp_path / "paper"
    result = CliRunner().invoke(app, ["report", str(run.root), "--format", "tex,png", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(["results.tex", PLOT_TOP1, report.PLOT_THROUGHPUT])


def test_cli_report_json_mode(run):
    result = CliRunner().invoke(app, ["report", str(run.root), "--format", "md", "--pairs", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert result.stderr == ""
    assert len(doc["top1"]) == 4 and len(doc["pairs"]) == 2
    assert doc["files"] == [str(run.root / "results.md")]


@pytest.mark.parametrize(
    "args,message",
    [
        (["report", "{missing}"], "run directory not found"),
        (["report", "{run}", "--format", "md,docx"], "unknown report format 'docx'"),
        (["report", "{run}", "--pairs"], "predictions file not found"),
    ],
)
def test_cli_report_bad_input_is_one_line_and_exit_2(run, tmp_path, args, message):
    for p in (run.root / "predictions").iterdir():
        p.unlink()
    args = [a.format(missing=tmp_path / "missing", run=run.root) for a in args]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_report_rerenders_a_real_run_without_recomputing(tmp_path, imagefolder, toy_checkpoints):
    out = tmp_path / "run"
    args = ["resolution", "-m", "cpvt_toy", "deit_toy", "-s", "56", "64", "--data", str(imagefolder)]
    args += ["-c", f"cpvt_toy={toy_checkpoints['cpvt_toy'][1]}", "-c", f"deit_toy={toy_checkpoints['deit_toy'][1]}"]
    args += ["--model-arg", "num_classes=1000", "--out", str(out), "--no-throughput", "-j", "0"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    for name in ("results.md", "results.csv", "results.tex", "results.json", PLOT_TOP1):
        assert (out / name).is_file(), name
    before = {n: (out / n).read_text() for n in ("results.csv", "results.tex", "results.md")}
    rows_before = (out / "rows.jsonl").read_bytes()
    result = CliRunner().invoke(app, ["report", str(out), "--format", "md,csv,tex", "--pairs"])
    assert result.exit_code == 0, result.output
    assert (out / "rows.jsonl").read_bytes() == rows_before
    assert (out / "results.csv").read_text() == before["results.csv"]
    assert (out / "results.tex").read_text() == before["results.tex"]
    assert "## Paired differences" in (out / "results.md").read_text()


def test_csv_carries_the_published_number_and_the_difference():
    import io

    import pandas as pd
    from test_results import make_row

    from cpvt_eval.published import published_top1

    rows = [
        make_row(model="deit_tiny_patch16_224", img_size=384, correct1=700, n_images=1000, top1=70.0),
        make_row(model="cpvt_toy", img_size=56, correct1=1, n_images=10, top1=10.0),
    ]
    df = pd.read_csv(io.StringIO(pipeline.to_csv(make("resolution"), rows)))
    assert published_top1("deit_tiny_patch16_224", 384) == (71.2, "secondary-x3")
    deit = df[df["model"] == "deit_tiny_patch16_224"].iloc[0]
    assert deit["published_top1"] == 71.2 and deit["published_confidence"] == "secondary-x3"
    assert deit["top1_vs_published"] == pytest.approx(-1.2)
    assert pd.isna(df[df["model"] == "cpvt_toy"].iloc[0]["published_top1"])
