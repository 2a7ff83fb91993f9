"""The test sets papers report: label-subset masks (ImageNet-A/-R), the clean 200-class control, test-set names."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from torchvision import transforms
from typer.testing import CliRunner

from cpvt_eval.cli import app
from cpvt_eval.data import imagenet_synsets, load_label_subset, open_dataset
from cpvt_eval.engine import EvalSettings
from cpvt_eval.jobs.assemble import build_model
from cpvt_eval.results import RunStore
from tests.conftest import cell_predictions, make_imagefolder, sweep_cells, top5

runner = CliRunner()
SIZE = 56


def _logits(module, image_set):
    """Every image's 1000 logits, computed the reference way (timm's eval transform, one forward per image)."""
    tf = transforms.Compose(
        [
            transforms.Resize(int(SIZE / 0.875), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(SIZE),
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    xs = []
    for s in image_set.samples:
        with Image.open(image_set.root / s.relpath) as im:
            xs.append(tf(im.convert("RGB")))
    with torch.inference_mode():
        return module(torch.stack(xs))


def test_the_argmax_is_taken_over_the_subset_only(tmp_path, toy_checkpoints):
    """A subset that holds every label but none of the model's unmasked top-1 classes: the masked predictions are
    the argmax over the subset's logits, never a class outside it, and differ from the unmasked ones."""
    root = make_imagefolder(tmp_path / "val", (0, 1, 2, 999), per_class=3)
    image_set = open_dataset(root)
    model = build_model("deit_toy", str(toy_checkpoints["deit_toy"][1]), {"num_classes": 1000})
    (adapted,) = sweep_cells([model], image_set, [SIZE], EvalSettings(device=torch.device("cpu")))
    unmasked_top1 = set(top5(adapted)[:, 0].tolist())
    labels = {0, 1, 2, 999}
    assert not unmasked_top1 & labels  # random weights: the unmasked argmax misses every label
    subset = sorted(labels | set(range(100, 120)) - unmasked_top1)
    assert not unmasked_top1 & set(subset)
    (tmp_path / "subset.txt").write_text("# my classes\n" + "\n".join(map(str, subset)) + "\n")

    (masked,) = sweep_cells([model], image_set, [SIZE], EvalSettings(device=torch.device("cpu"), classes=tuple(subset)))
    logits = _logits(model.module, image_set)[:, subset]
    expected = torch.tensor(subset)[logits.topk(5, dim=1).indices]
    assert torch.equal(top5(masked), expected)
    assert set(top5(masked).flatten().tolist()) <= set(subset)
    assert masked.counts[1] > 0 and adapted.counts[0] == 0  # with 24 classes left, labels reach the top 5

    # the command line: the subset is recorded and is part of the cell's identity (masked and unmasked coexist)
    ckpt = ["-c", str(toy_checkpoints["deit_toy"][1]), "--model-arg", "num_classes=1000", "--no-throughput"]
    base = ["resolution", "-m", "deit_toy", "-s", str(SIZE), "--data", str(root), "--out", str(tmp_path / "run")]
    assert runner.invoke(app, [*base, *ckpt]).exit_code == 0
    result = runner.invoke(app, [*base, *ckpt, "--label-subset", str(tmp_path / "subset.txt"), "--json"])
    assert result.exit_code == 0, result.output
    (row,) = [r for r in json.loads(result.stdout) if r["label_subset"]]
    assert row["label_subset"].startswith("subset:") and row["correct1"] == masked.counts[0]
    assert row["correct5"] == masked.counts[1]
    rows = [json.loads(line) for line in (tmp_path / "run" / "rows.jsonl").read_text().splitlines()]
    assert sorted(r["label_subset"] for r in rows) == ["", row["label_subset"]]
    store = RunStore(tmp_path / "run")
    for r in store.rows():
        top1 = set(store.load_predictions(r)["top5"][:, 0].tolist())
        assert top1 == (set(top5(masked)[:, 0].tolist()) if r.label_subset else unmasked_top1)


def test_timms_subsets_and_their_clean_control(tmp_path, toy_checkpoints):
    """ImageNet-A's 200 classes from timm's index file; a folder with other classes too is refused with the
    remedy, and --classes imagenet-a with the same mask is the clean 200-way control."""
    a = load_label_subset("imagenet-a")
    r = load_label_subset("imagenet-r")
    assert len(a) == len(r) == 200 and a.ident == "imagenet-a" and a.source == "timm:imagenet_a_indices.txt"
    synsets = imagenet_synsets()
    outside = next(i for i in range(1000) if i not in a.indices)
    root = tmp_path / "val"
    for i in (*a.indices, outside):
        (root / synsets[i]).mkdir(parents=True)
        Image.new("RGB", (40, 30), (i % 256, 7, 99)).save(root / synsets[i] / "x.JPEG")
    ckpt = ["-c", str(toy_checkpoints["cpvt_toy"][1]), "--model-arg", "num_classes=1000", "--no-throughput"]
    base = ["resolution", "-m", "cpvt_toy", "-s", str(SIZE), "--data", str(root), *ckpt, "--json"]

    refused = runner.invoke(app, [*base, "--out", str(tmp_path / "a"), "--label-subset", "imagenet-a"])
    assert refused.exit_code == 2
    (line,) = refused.stderr.strip().splitlines()
    assert "outside the label subset imagenet-a" in line and "--classes imagenet-a" in line

    clean = runner.invoke(
        app, [*base, "--out", str(tmp_path / "c"), "--classes", "imagenet-a", "--label-subset", "imagenet-a"]
    )
    assert clean.exit_code == 0, clean.output
    (row,) = json.loads(clean.stdout)
    assert row["n_images"] == 200 and row["label_subset"] == "imagenet-a"
    assert row["test_set"] == ""  # 200 classes picked by --classes from other images: not ImageNet-A itself
    preds = cell_predictions(tmp_path / "c", "cpvt_toy", SIZE)["top5"]
    assert set(preds.flatten().tolist()) <= set(a.indices)


def test_a_subset_the_model_cannot_score_and_bad_subset_files(tmp_path, toy_checkpoints):
    root = make_imagefolder(tmp_path / "val", (0, 1), per_class=1)
    base = ["resolution", "-m", "deit_toy", "-s", str(SIZE), "--data", str(root), "--no-throughput"]
    ten = ["-c", str(toy_checkpoints["deit_toy"][1]), "--model-arg", "num_classes=1000"]
    cases = {
        "nofile.txt": "unknown label subset",
        "empty.txt": "names no class",
        "bad.txt": "neither a class index",
        "big.txt": "outside 0..999",
    }
    (tmp_path / "empty.txt").write_text("# nothing\n")
    (tmp_path / "bad.txt").write_text("0\nbanana\n")
    (tmp_path / "big.txt").write_text("0\n1000\n")
    for name, needle in cases.items():
        result = runner.invoke(
            app, [*base, *ten, "--out", str(tmp_path / name), "--label-subset", str(tmp_path / name)]
        )
        assert result.exit_code == 2, (name, result.output)
        (line,) = result.stderr.strip().splitlines()
        assert needle in line, (name, line)


@pytest.mark.parametrize("given", [None, "imagenet-sketch"])
def test_the_test_set_is_named_in_each_row(tmp_path, toy_checkpoints, given):
    root = make_imagefolder(tmp_path / "v2", (0, 1), per_class=1)
    synsets = imagenet_synsets()
    for i in (0, 1):  # the ImageNetV2 layout: integer class folders
        (root / synsets[i]).rename(root / str(i))
    args = ["resolution", "-m", "deit_toy", "-s", str(SIZE), "--data", str(root), "--no-throughput", "--json"]
    args += ["-c", str(toy_checkpoints["deit_toy"][1]), "--model-arg", "num_classes=1000", "--out", str(tmp_path / "r")]
    result = runner.invoke(app, args + (["--test-set", given] if given else []))
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["test_set"] == (given or "imagenet-v2") and row["layout"] == "imagenetv2"
