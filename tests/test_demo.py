"""The offline demo: deterministic procedural data, shipped toy checkpoints, the demo command end to end."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import cpvt_eval
from cpvt_eval.checkpoints import load_checkpoint
from cpvt_eval.cli import app
from cpvt_eval.data import open_dataset
from cpvt_eval.demo import dataset as ds
from cpvt_eval.demo.run import DEFAULT_MODELS, DEMO_MODELS, FINDING, PAPER_SIZE, checkpoint_path, paper_table
from cpvt_eval.errors import DataError
from cpvt_eval.models.registry import resolve
from cpvt_eval.results import ResultRow


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.jpg"))}


def test_classes_are_ten_distinct_names():
    assert len(ds.CLASSES) >= 10
    assert len(set(ds.CLASSES)) == len(ds.CLASSES)


def test_the_two_classes_of_a_pair_have_the_same_parts():
    # class 2k is "a left of b", class 2k + 1 "b left of a": only position tells them apart
    for k, (a, b) in enumerate(ds.PAIRS):
        assert ds.CLASSES[2 * k] == f"{a}-left-of-{b}" and ds.CLASSES[2 * k + 1] == f"{b}-left-of-{a}"
    hues = [h for pair in ds.PAIRS for h in pair]
    assert all(hues.count(h) == 2 for h in ds.HUES)  # no single colour names a class


def test_render_is_deterministic_and_seeded():
    a = ds.render_jpeg(3, seed=0, index=7)
    assert a == ds.render_jpeg(3, seed=0, index=7)
    assert a != ds.render_jpeg(3, seed=1, index=7)
    assert a != ds.render_jpeg(3, seed=0, index=8)
    assert a != ds.render_jpeg(3, seed=0, index=7, split="train")
    img = ds.render(3, seed=0, index=7)
    # the "original" resolution: shorter side 2.3x the native 56 px
    assert min(img.size) == ds.ORIGINAL_SHORT_SIDE == 128


def test_materialize_same_seed_same_bytes(tmp_path):
    first, created = ds.materialize(per_class=2, seed=5, root=tmp_path / "a")
    second, _ = ds.materialize(per_class=2, seed=5, root=tmp_path / "b")
    assert created
    digest = _tree_digest(first)
    assert len(digest) == 2 * len(ds.CLASSES)
    assert digest == _tree_digest(second)
    other, _ = ds.materialize(per_class=2, seed=6, root=tmp_path / "c")
    assert _tree_digest(other) != digest


def test_materialize_reuses_a_complete_copy_and_lives_in_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("CPVT_EVAL_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert ds.cache_dir() == tmp_path / "xdg" / "cpvt-eval"
    path, created = ds.materialize(per_class=1, seed=0)
    assert created and path.parent == tmp_path / "xdg" / "cpvt-eval"
    again, created_again = ds.materialize(per_class=1, seed=0)
    assert again == path and not created_again
    package_dir = Path(cpvt_eval.__file__).parent
    assert package_dir not in path.parents


def test_materialize_rebuilds_an_incomplete_copy(tmp_path):
    target = ds.dataset_dir(1, 0, tmp_path)
    (target / "junk").mkdir(parents=True)  # an interrupted earlier run: no COMPLETE marker
    path, created = ds.materialize(per_class=1, seed=0, root=tmp_path)
    assert created and not (path / "junk").exists()
    assert len(_tree_digest(path)) == len(ds.CLASSES)


def test_open_dataset_with_own_classes(tmp_path):
    path, _ = ds.materialize(per_class=1, seed=0, root=tmp_path)
    image_set = open_dataset(path, class_names=ds.CLASSES)
    assert sorted({s.label for s in image_set.samples}) == list(range(len(ds.CLASSES)))
    for s in image_set.samples:
        assert s.relpath.split("/")[0] == ds.CLASSES[s.label]
    with pytest.raises(DataError, match="neither a WordNet id"):
        open_dataset(path)  # the demo's folders are not WordNet ids
    (path / "stray").mkdir()
    with pytest.raises(DataError, match="not one of the dataset's classes"):
        open_dataset(path, class_names=ds.CLASSES)


@pytest.mark.parametrize("name", DEMO_MODELS)
def test_shipped_checkpoint_loads_strictly(name):
    path = checkpoint_path(name)
    assert path.stat().st_size <= 5 * 1024 * 1024
    spec = resolve(name)
    assert (spec.native_size, spec.patch_size) == (56, 4)
    model = spec.create()
    report = load_checkpoint(model, path)  # strict: any missing/unexpected/mis-shaped key raises
    assert not report.resampled and not report.renamed and not report.dropped
    assert model.num_classes == len(ds.CLASSES)
    assert model.patch_embed.grid_size == (14, 14)


def test_demo_command_end_to_end(tmp_path):
    out = tmp_path / "run"
    args = ["demo", "--out", str(out), "--per-class", "3", "--sizes", "56", "112", "--no-throughput"]
    args += ["--workers", "0", "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    everything = json.loads(result.stdout)  # every registered probe's rows, each naming its probe
    from cpvt_eval.probes import PROBES
    from cpvt_eval.results import probe_name

    assert {probe_name(r["probe"]) for r in everything} == set(PROBES)
    rows = [r for r in everything if r["probe"] == ""]  # accuracy by size
    assert {(r["model"], r["img_size"]) for r in rows} == {(m, s) for m in DEFAULT_MODELS for s in (56, 112)}
    by = {(r["model"], r["img_size"]): r for r in rows}
    assert by[("deit_toy", 56)]["grid"] == "14x14" and by[("deit_toy", 112)]["grid"] == "28x28"
    assert by[("deit_toy", 112)]["pe_policy"].startswith("ape")
    assert by[("cpvt_toy", 112)]["pe_policy"] == "peg-native"
    assert by[("deit_toy", 112)]["resize_size"] == 128  # the standard eval transform: floor(112 / 0.875)
    for r in rows:
        assert r["n_images"] == 3 * len(ds.CLASSES)
        assert r["checkpoint"].endswith(f"{r['model']}.safetensors")
    for name in ("results.csv", "results.md", "rows.jsonl", "provenance.json", "paper.md"):
        assert (out / name).is_file(), name
    paper = (out / "paper.md").read_text()
    assert "DeiT-Ti (paper, ImageNet)" in paper and "112 px (448)" in paper
    assert paper.rstrip().endswith(FINDING)  # the table never stands without what it does not show
    # the paper's second claim beside the first: consistency under translation at the native size
    from cpvt_eval.probes import split
    from cpvt_eval.results import RunStore

    shift = split(RunStore(out).rows())["shift"]
    assert {(r.model, r.img_size) for r in shift} == {(m, 56) for m in DEFAULT_MODELS}
    assert all(0 <= r.consistency <= 100 for r in shift)
    assert "consistency" in (out / "shift.md").read_text().lower()
    # and how each toy's decisions move with the size: agreement with its own native-size predictions
    agreement = {(r.model, r.img_size): r for r in split(RunStore(out).rows())["agreement"]}
    assert set(agreement) == {(m, s) for m in DEFAULT_MODELS for s in (56, 112)}
    assert all(agreement[(m, 56)].agreement_top1 == 100.0 for m in DEFAULT_MODELS)
    assert all(agreement[k].top1 == by[k]["top1"] for k in agreement)  # labelled: top-1 beside, the same figure
    assert (out / "agreement.md").is_file()
    plain = CliRunner().invoke(app, [a for a in args if a != "--json"])
    # `cpvt-eval demo > demo.txt` keeps every table: they are the command's result, on stdout; messages on stderr
    assert plain.exit_code == 0 and "consistency" in plain.stdout
    assert "agreement % with the native size" in plain.stdout and "demo vs paper" in plain.stdout
    assert "do not reproduce the paper's resolution effect" in " ".join(plain.stdout.split())
    assert "deit_toy" not in plain.stderr and "results:" in plain.stderr


def test_shipped_models_beat_chance_at_native_size(tmp_path):
    """The checkpoints learned the world they ship with, on held-out images: the no-PE toy gets the colour pair
    (far above the 10% of chance, at most ~50%: the side is a coin toss for it), the others the side as well."""
    from cpvt_eval.demo.run import DemoConfig, run_demo

    cfg = DemoConfig(out=tmp_path / "run", sizes=(56,), per_class=4, cache_dir=tmp_path / "cache", workers=0)
    cfg = DemoConfig(**{**cfg.__dict__, "throughput": False, "device": "cpu"})
    rows = run_demo(cfg).outcome.rows
    for r in rows:
        assert r.top1 >= (30.0 if r.pe == "none" else 80.0), (r.model, r.top1)


@pytest.mark.parametrize(("name", "ablation"), [("deit_toy", "ape-mean"), ("cpvt_toy", "peg-zero")])
def test_shipped_models_use_their_position_encoding(name, ablation):
    """A retraining that loses the mechanism fails here: on a small fixed val sample at the native size, replacing
    the toy DeiT's APE by its mean (or zeroing the toy CPVT's PEG) must cost at least 10 points."""
    from cpvt_eval.demo.mechanism import ablate, top1, val_sample

    images, labels = val_sample(per_class=10)
    model = resolve(name).create()
    load_checkpoint(model, checkpoint_path(name))
    intact = top1(model, images, labels)
    ablated = top1(ablate(model, ablation), images, labels)
    assert intact - ablated >= 10.0, (name, intact, ablated)


def test_demo_rejects_a_model_without_a_shipped_checkpoint(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--model", "deit_ti", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "not a demo model" in result.output
    assert "Traceback" not in result.output


def _row(model: str, pe: str, size: int, top1: float) -> ResultRow:
    return ResultRow(
        model=model, pe=pe, checkpoint="", checkpoint_sha256="", img_size=size, grid="", resize_size=0,
        crop_pct=0.875, interpolation="bicubic", pe_policy="", dtype="fp32", device="cpu", n_images=100,
        n_skipped=0, correct1=int(top1), correct5=100, top1=top1, top5=100.0, top1_ci95="",
        params=0, dataset="", dataset_fingerprint="", partial=True,
        limit=None, model_args="", versions="", started_at="", duration_s=0.0,
    )  # fmt: skip


def test_paper_table_maps_sizes_to_the_same_grid():
    assert PAPER_SIZE == {56: 224, 96: 384, 112: 448, 128: 512}
    rows = [_row("deit_toy", "ape-learned", 56, 80.0), _row("deit_toy", "ape-learned", 96, 70.0)]
    table = paper_table(rows)
    lines = table.splitlines()
    assert lines[0] == "| model | PE | 56 px (224) | 96 px (384) |"
    assert lines[2] == "| deit_toy (demo) | ape-learned | 80.0 | 70.0 (-10.0) |"
    # DeiT-Ti: 72.2 at 224 and 71.2 at 384 in the shipped published results
    assert lines[3] == "| DeiT-Ti (paper, ImageNet) | ape-learned | 72.2 | 71.2 (-1.0) |"


def test_paper_table_marks_figures_that_rest_on_a_single_reading():
    from cpvt_eval.published import published_top1, single_reading

    # CPVT-Ti at 384 is graded "secondary" (one note); at 448 "secondary-x2" (two notes that agree)
    assert single_reading(published_top1("cpvt_ti", 384)[1]) and not single_reading(published_top1("cpvt_ti", 448)[1])
    rows = [_row("cpvt_toy", "peg-0", s, 90.0) for s in (56, 96, 112)]
    paper = paper_table(rows).splitlines()[3]
    assert paper == "| CPVT-Ti (paper, ImageNet) | peg-0 | 72.4 | 73.2 (+0.8) ? | 71.8 (-0.6) |"


def test_demo_all_includes_the_ablations(tmp_path):
    args = ["demo", "--all", "--out", str(tmp_path / "run"), "--per-class", "1", "--sizes", "96", "--no-throughput"]
    args += ["--workers", "0", "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = [r for r in json.loads(result.stdout) if r["probe"] == ""]
    assert [r["model"] for r in rows] == list(DEMO_MODELS)
    pe = {r["model"]: r["pe"] for r in rows}
    assert pe["deit_toy"] == "ape-learned" and pe["deit_toy_nope"] == "none"
    assert all(r["grid"] == "24x24" for r in rows)
