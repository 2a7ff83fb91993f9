"""The main job end to end through the CLI: outputs, parity with the in-memory model, labels, bad input."""

import csv
import json

import pytest
import torch
from conftest import cell_predictions
from PIL import Image
from torchvision import transforms
from typer.testing import CliRunner

import cpvt_eval
from cpvt_eval.cli import app, expand_multi_value
from cpvt_eval.data import imagenet_synsets, open_dataset, resize_size

runner = CliRunner()
FAST = ["--no-throughput", "--workers", "0", "--batch-size", "5"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def reference_top5(model, root, relpaths, size, crop_pct=0.875):
    """timm/DeiT eval transform on PIL, then the model: the path a reference script takes."""
    tf = transforms.Compose(
        [
            transforms.Resize(int(size / crop_pct), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    x = torch.stack([tf(Image.open(root / p).convert("RGB")) for p in relpaths])
    with torch.no_grad():
        return model(x).topk(5, dim=1).indices


def test_resolution_writes_tables_and_matches_in_memory_model(imagefolder, toy_checkpoints, tmp_path):
    out = tmp_path / "run"
    result = invoke(
        "resolution",
        "--model",
        "cpvt_toy",
        "deit_toy",
        "--sizes",
        "56",
        "96",
        "--data",
        imagefolder,
        "--checkpoint",
        f"cpvt_toy={toy_checkpoints['cpvt_toy'][1]}",
        "--checkpoint",
        f"deit_toy={toy_checkpoints['deit_toy'][1]}",
        "--model-arg",
        "num_classes=1000",
        "--out",
        out,
        "--throughput-batch",
        "2",
        "--throughput-repeats",
        "1",
        "--workers",
        "0",
        "--batch-size",
        "5",
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [(r["model"], r["img_size"]) for r in rows] == [
        ("cpvt_toy", "56"),
        ("cpvt_toy", "96"),
        ("deit_toy", "56"),
        ("deit_toy", "96"),
    ]
    for col in ("top1", "top5", "n_images", "images_per_sec", "crop_pct", "resize_size", "pe_policy", "checkpoint"):
        assert all(r[col] != "" for r in rows), col
    assert {r["pe_policy"] for r in rows} == {"peg-native", "ape-bicubic"}
    assert [r["resize_size"] for r in rows] == ["64", "109", "64", "109"]
    md = (out / "results.md").read_text()
    assert "| cpvt_toy | peg-0 |" in md and "56px" in md and "images/s" in md

    image_set = open_dataset(imagefolder)
    relpaths = [s.relpath for s in image_set.samples]
    for name in ("cpvt_toy", "deit_toy"):
        model, _ = toy_checkpoints[name]
        for size in (56, 96):
            stored = cell_predictions(out, name, size)
            cpvt_eval.models.adapt_to_size(model, size)
            ref = reference_top5(model, imagefolder, relpaths, size)
            assert torch.equal(stored["top5"].long(), ref), (name, size)
            row = next(r for r in rows if r["model"] == name and r["img_size"] == str(size))
            labels = torch.tensor([s.label for s in image_set.samples])
            assert int(row["correct1"]) == int((ref[:, 0] == labels).sum())
            assert int(row["correct5"]) == int((ref == labels[:, None]).any(1).sum())
            assert float(row["top1"]) == pytest.approx(100 * int(row["correct1"]) / len(relpaths))


def test_labels_follow_canonical_index_when_only_some_folders_exist(imagefolder):
    image_set = open_dataset(imagefolder)
    assert sorted({s.label for s in image_set.samples}) == [0, 1, 2, 999]
    synsets = imagenet_synsets()
    assert len(synsets) == 1000 and synsets[0] == "n01440764" and synsets[999] == "n15075141"
    for s in image_set.samples:
        assert s.relpath.split("/")[0] == synsets[s.label]


def test_limit_is_deterministic_and_stratified(imagefolder):
    a = open_dataset(imagefolder, limit=4)
    b = open_dataset(imagefolder, limit=4)
    assert [s.relpath for s in a.samples] == [s.relpath for s in b.samples]
    assert sorted(s.label for s in a.samples) == [0, 1, 2, 999]
    assert a.fingerprint != open_dataset(imagefolder).fingerprint


def test_eval_transform_matches_reference_pipeline(imagefolder):
    assert [resize_size(s, 0.875) for s in (224, 384, 448, 512)] == [256, 438, 512, 585]
    from cpvt_eval.data import EvalTransform, normalize_batch

    img = Image.open(next(imagefolder.rglob("*.JPEG"))).convert("RGB")
    ref = transforms.Compose(
        [
            transforms.Resize(109, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(96),
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )(img)
    ours = EvalTransform(96)(img)
    assert ours.dtype == torch.uint8
    got = normalize_batch(ours[None], (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))[0]
    assert torch.equal(got, ref)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--sizes", "224", "384", "512"], ["--sizes", "224", "--sizes", "384", "--sizes", "512"]),
        (["--sizes", "224,384", "--limit", "3"], ["--sizes", "224,384", "--limit", "3"]),
        (["-m", "a", "b", "-s", "1"], ["-m", "a", "-m", "b", "-s", "1"]),
    ],
)
def test_multi_value_options_expand(argv, expected):
    assert expand_multi_value(argv) == expected


@pytest.mark.slow  # five full runs of the CLI
def test_sizes_in_every_form_give_the_same_rows(imagefolder, toy_checkpoints, tmp_path):
    ckpt = toy_checkpoints["cpvt_toy"][1]
    forms = [["--sizes", "56", "96"], ["--sizes", "56,96"], ["--sizes", "56", "--sizes", "96"]]
    for i, form in enumerate(forms):
        out = tmp_path / f"r{i}"
        result = invoke(
            "resolution",
            "--model",
            "cpvt_toy",
            *form,
            "--data",
            imagefolder,
            "--checkpoint",
            ckpt,
            "--model-arg",
            "num_classes=1000",
            "--out",
            out,
            "--json",
            *FAST,
        )
        assert result.exit_code == 0, result.output
        rows = json.loads(result.stdout)
        assert [r["img_size"] for r in rows] == [56, 96]


def test_data_from_environment_variable(imagefolder, toy_checkpoints, tmp_path, monkeypatch):
    monkeypatch.setenv("CPVT_EVAL_DATA", str(imagefolder))
    result = invoke(
        "resolution",
        "-m",
        "cpvt_toy",
        "-s",
        "56",
        "-c",
        toy_checkpoints["cpvt_toy"][1],
        "--model-arg",
        "num_classes=1000",
        "--out",
        tmp_path / "r",
        *FAST,
    )
    assert result.exit_code == 0, result.output


def _error_line(result):
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture
def bad_inputs(tmp_path, imagefolder, toy_checkpoints):
    empty = tmp_path / "empty"
    empty.mkdir()
    odd = tmp_path / "odd"
    (odd / "cats").mkdir(parents=True)
    oddwnid = tmp_path / "oddwnid"
    (oddwnid / "n99999999").mkdir(parents=True)
    (oddwnid / "n99999999" / "a.JPEG").write_bytes(next((imagefolder / "n01440764").glob("*.JPEG")).read_bytes())
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    wrong = tmp_path / "wrong.pth"
    sd = toy_checkpoints["cpvt_toy"][0].state_dict()
    sd.pop("pos_block.0.pos.bias")
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, wrong)
    return {
        "empty": empty,
        "odd": odd,
        "oddwnid": oddwnid,
        "junk": junk,
        "wrong": wrong,
        "data": imagefolder,
        "ckpt": toy_checkpoints["cpvt_toy"][1],
    }


@pytest.mark.parametrize(
    "case, args, message",
    [
        (
            "missing data",
            ["-m", "cpvt_toy", "-s", "56", "--data", "{tmp}/nowhere", "-c", "{ckpt}"],
            "data directory not found",
        ),
        ("empty data", ["-m", "cpvt_toy", "-s", "56", "--data", "{empty}", "-c", "{ckpt}"], "is empty"),
        (
            "unknown class",
            ["-m", "cpvt_toy", "-s", "56", "--data", "{odd}", "-c", "{ckpt}"],
            "folder cats is neither a WordNet id nor a class index",
        ),
        ("unknown wnid", ["-m", "cpvt_toy", "-s", "56", "--data", "{oddwnid}", "-c", "{ckpt}"], "n99999999"),
        (
            "unreadable checkpoint",
            ["-m", "cpvt_toy", "-s", "56", "--data", "{data}", "-c", "{junk}"],
            "cannot read checkpoint",
        ),
        (
            "missing checkpoint",
            ["-m", "cpvt_toy", "-s", "56", "--data", "{data}", "-c", "{tmp}/none.pth"],
            "checkpoint not found",
        ),
        (
            "key mismatch",
            ["-m", "cpvt_toy", "-s", "56", "--data", "{data}", "-c", "{wrong}"],
            "missing 1 key(s): pos_block.0.pos.bias; unexpected 1 key(s): extra.weight",
        ),
        ("unknown model", ["-m", "cpvt_tii", "-s", "56", "--data", "{data}"], "did you mean cpvt_ti"),
        (
            "bad size",
            ["-m", "cpvt_toy", "-s", "58", "--data", "{data}", "-c", "{ckpt}"],
            "size 58 is not a positive multiple of cpvt_toy's patch size 4",
        ),
        (
            "size not a number",
            ["-m", "cpvt_toy", "-s", "big", "--data", "{data}", "-c", "{ckpt}"],
            "size 'big' is not a whole number",
        ),
        (
            "cpvt without checkpoint",
            ["-m", "cpvt_ti", "-s", "224", "--data", "{data}"],
            "cpvt_ti has no published weights",
        ),
        ("deit offline", ["-m", "deit_ti", "-s", "224", "--data", "{data}"], "--checkpoint"),
        ("no data", ["-m", "cpvt_toy", "-s", "56"], "no dataset"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(case, args, message, bad_inputs, tmp_path, monkeypatch):
    monkeypatch.delenv("CPVT_EVAL_DATA", raising=False)
    fields = {k: str(v) for k, v in bad_inputs.items()} | {"tmp": str(tmp_path)}
    argv = [
        "resolution",
        *[a.format(**fields) for a in args],
        "--model-arg",
        "num_classes=1000",
        "--out",
        str(tmp_path / "out"),
        *FAST,
    ]
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, (case, result.output)
    assert message in _error_line(result), case


def test_models_command_lists_name_pe_and_params():
    result = runner.invoke(app, ["models", "cpvt_ti", "deit_ti", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["cpvt_ti"]["params"] == 5_681_512 and rows["cpvt_ti"]["pe"] == "peg-0"
    assert rows["deit_tiny_patch16_224"]["aliases"] == ["deit_ti"]
    assert rows["deit_tiny_patch16_224"]["pe"] == "ape-learned"
