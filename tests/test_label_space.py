"""Datasets with the model's own classes: label spaces from ``id2label``, timm's label names and ``--class-map``;
class folders, manifests and parquet ``ClassLabel`` names mapped by name; the errors; the refusals outside
ImageNet-1k; and the CLI end to end on a transformers ``save_pretrained`` folder."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from conftest import make_image
from hf_toys import make, save
from typer.testing import CliRunner

from cpvt_eval.cli import app
from cpvt_eval.data import LabelSpace, from_names, imagenet_synsets, open_dataset, read_class_map
from cpvt_eval.errors import DataError
from cpvt_eval.jobs.label_spaces import model_label_space
from cpvt_eval.models.registry import resolve

NAMES = ["cat", "dog", "bird", "fish", "frog"]
runner = CliRunner()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 5-class ViT saved with its class names, the same weights without names, and the same 15 images as named
    class folders, a manifest and a parquet store whose ClassLabel lists the classes in another order."""
    root = tmp_path_factory.mktemp("world")
    named = save(make("vit", num_labels=5, id2label=NAMES, seed=3), root / "tiny-vit", "5x", "vit")
    unnamed = save(make("vit", num_labels=5, seed=3), root / "tiny-vit-unnamed", "4x", "vit")
    folders = root / "classfolder"
    rows = []
    for c, name in enumerate(NAMES):
        (folders / name).mkdir(parents=True)
        for j in range(3):
            rel = f"{name}/img_{c}_{j}.jpg"
            make_image(100 * c + j, (48, 40)).save(folders / rel, quality=92)
            rows.append((rel, name if j % 2 else str(c)))  # names and indices both label a manifest
    manifest = root / "manifest"
    manifest.mkdir()
    for rel, _ in rows:
        (manifest / rel).parent.mkdir(parents=True, exist_ok=True)
        (manifest / rel).write_bytes((folders / rel).read_bytes())
    with open(manifest / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "label"), *rows])
    class_map = root / "classes.txt"
    class_map.write_text("\n".join(NAMES) + "\n")
    return {
        "named": named,
        "unnamed": unnamed,
        "folders": folders,
        "manifest": manifest,
        "class_map": class_map,
        "parquet": _parquet(root / "store.parquet", folders, rows),
        "root": root,
    }


def _parquet(path: Path, folders: Path, rows) -> Path:
    """A Hugging Face style parquet file: the ``image`` struct and a ``label`` ClassLabel whose names are in reverse
    order (mapped by name, never by position)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    order = list(reversed(NAMES))
    images = [{"bytes": (folders / rel).read_bytes(), "path": rel.split("/")[-1]} for rel, _ in rows]
    labels = [order.index(rel.split("/")[0]) for rel, _ in rows]
    features = {"image": {"_type": "Image"}, "label": {"_type": "ClassLabel", "names": order}}
    table = pa.table({"image": images, "label": labels})
    table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    pq.write_table(table, path)
    return path


def _run(*args: str, out: Path) -> tuple[int, str, list[dict]]:
    speed = ["--no-throughput"] if args[0] == "resolution" else []
    result = runner.invoke(app, [*args, *speed, "--out", str(out), "--json"])
    rows = json.loads(result.stdout) if result.exit_code == 0 else []
    return result.exit_code, result.stderr if result.exit_code else "", rows


def _predictions(out: Path, row: dict) -> dict[str, tuple]:
    from safetensors.numpy import load_file

    arrays = load_file(str(out / row["predictions"]))
    return {
        int(i): (int(label), tuple(top))
        for i, label, top in zip(arrays["indices"], arrays["labels"], arrays["top5"], strict=True)
    }


def test_class_map_files(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("tench, Tinca tinca\nzebra\n\n")
    assert read_class_map(plain).names == ("tench, Tinca tinca", "zebra")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("zebra,1\ntench,0\n")
    space = read_class_map(pairs)
    assert space.names == ("tench", "zebra") and re.fullmatch(r"custom-2:[0-9a-f]{8}", space.id)
    for text, message in (
        ("a\n\nb\n", ":2 is blank"),
        ("a\na\n", "listed twice"),
        ("a,0\nb,2\n", "no class has index 1"),
    ):
        plain.write_text(text)
        with pytest.raises(DataError, match=message):
            read_class_map(plain)


def test_imagenet_names_are_the_imagenet_label_space():
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    assert from_names(info.label_descriptions(), "id2label").id == "imagenet-1k"  # transformers' id2label names
    assert from_names(imagenet_synsets(), "wnids").imagenet
    assert not from_names(list(reversed(imagenet_synsets())), "reversed").imagenet


def test_timm_label_names_for_its_tags():
    space = model_label_space(resolve("vit_base_patch16_224.augreg_in21k"))
    assert space.id.startswith("custom-21843:") and space.names[0].startswith("n")
    assert model_label_space(resolve("deit_ti")).imagenet
    assert model_label_space(resolve("vit_base_patch16_224.augreg_in21k"), checkpoint="mine.pth").imagenet


def test_folders_class_map_parquet_and_manifest_give_the_same_numbers(world, tmp_path):
    runs = {
        "folders": ("-m", str(world["named"]), "--data", str(world["folders"])),
        "class-map": (
            "-m",
            str(world["unnamed"]),
            "--class-map",
            str(world["class_map"]),
            "--data",
            str(world["folders"]),
        ),
        "parquet": ("-m", str(world["named"]), "--data", str(world["parquet"])),
        "manifest": ("-m", str(world["named"]), "--data", str(world["manifest"])),
    }
    got = {}
    for name, args in runs.items():
        code, err, rows = _run("resolution", *args, "-s", "32", "48", out=tmp_path / name)
        assert code == 0, (name, err)
        got[name] = rows
    reference = got["manifest"]
    for name, rows in got.items():
        for row, ref in zip(rows, reference, strict=True):
            fields = ("img_size", "n_images", "correct1", "correct5", "top1", "top5", "label_space")
            assert {f: row[f] for f in fields} == {f: ref[f] for f in fields}, name
    assert reference[0]["label_space"] == LabelSpace(tuple(NAMES)).id
    assert got["class-map"][0]["label_space"] == reference[0]["label_space"]
    # per image: the same labels and top-5, by file name (both sets list the same relative paths, sorted)
    files = sorted(p.relative_to(world["folders"]).as_posix() for p in world["folders"].rglob("*.jpg"))
    per_image = {
        name: {files[i]: v for i, v in _predictions(tmp_path / name, got[name][0]).items()}
        for name in ("folders", "manifest", "class-map")
    }
    assert per_image["folders"] == per_image["manifest"] == per_image["class-map"]


def test_a_folder_that_names_no_class_is_refused_before_any_weights(world, tmp_path):
    data = tmp_path / "val"
    for name in ("cat", "bicycle", "dgo"):
        (data / name).mkdir(parents=True)
        make_image(1).save(data / name / "a.jpg")
    broken = tmp_path / "broken-vit"
    broken.mkdir()
    (broken / "config.json").write_text((world["named"] / "config.json").read_text())
    (broken / "model.safetensors").write_bytes(b"not weights")  # never read: the data fails first
    code, err, _ = _run("resolution", "-m", str(broken), "-s", "32", "--data", str(data), out=tmp_path / "r")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "folder" in err and "bicycle" in err and "names no class" in err
    (data / "bicycle").rename(data / "dog")
    code, err, _ = _run("resolution", "-m", str(broken), "-s", "32", "--data", str(data), out=tmp_path / "r")
    assert code == 2 and "dgo" in err and "closest: 'dog'" in err


def test_two_label_spaces_in_one_run_are_refused(world, tmp_path):
    other = save(make("vit", num_labels=3, id2label=["x", "y", "z"]), tmp_path / "other", "5x", "vit")
    code, err, _ = _run(
        "resolution",
        "-m",
        str(world["named"]),
        "-m",
        str(other),
        "-s",
        "32",
        "--data",
        str(world["folders"]),
        out=tmp_path / "r",
    )
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "other's label space custom-3:" in err and "separate runs" in err


def test_imagenet_only_options_are_refused_in_another_label_space(world, tmp_path):
    for option in (["--real-labels"], ["--label-subset", "imagenet-a"], ["--classes", "imagenet-a"]):
        code, err, _ = _run(
            "resolution",
            "-m",
            str(world["named"]),
            "-s",
            "32",
            "--data",
            str(world["folders"]),
            *option,
            out=tmp_path / "r",
        )
        assert code == 2 and len(err.strip().splitlines()) == 1 and "label space" in err, option


def test_published_figures_apply_to_imagenet_rows_only():
    from cpvt_eval.probes import make
    from cpvt_eval.probes.resolution import ResolutionRow
    from cpvt_eval.report.pipeline import records

    row = ResolutionRow(
        model="deit_tiny_patch16_224",
        pe="ape-learned",
        checkpoint="",
        checkpoint_sha256="",
        img_size=224,
        grid="14x14",
        resize_size=256,
        crop_pct=0.875,
        interpolation="bicubic",
        pe_policy="",
        dtype="fp32",
        device="cpu",
        n_images=10,
        n_skipped=0,
        correct1=5,
        correct5=9,
        top1=50.0,
        top5=90.0,
        top1_ci95="",
        params=1,
        dataset="",
        dataset_fingerprint="x",
        partial=True,
        limit=None,
        model_args="",
        versions="",
        started_at="",
        duration_s=0.0,
    )
    probe = make("resolution")
    assert records(probe, [row])[0]["published_top1"] is not None
    row.label_space = "custom-10:ab12cd34"
    assert records(probe, [row])[0]["published_top1"] is None


def test_open_dataset_maps_class_folders_by_name(world):
    space = LabelSpace(tuple(reversed(NAMES)), "test")
    image_set = open_dataset(world["folders"], space=space)
    assert {s.relpath.split("/")[0]: s.label for s in image_set.samples} == {n: 4 - i for i, n in enumerate(NAMES)}
    assert image_set.label_space == space.id and image_set.classes == space.names


def test_the_worked_example_end_to_end(world, tmp_path):
    """``resolution``, ``shift`` and ``agreement`` on a transformers folder with named class folders: exit 0, the
    rows record the label space and where the weights came from; ``--crop-mode weights`` is the processor's."""
    model, data = str(world["named"]), str(world["folders"])
    code, err, rows = _run("resolution", "-m", model, "-s", "32:48:16", "--data", data, out=tmp_path / "run")
    assert code == 0, err
    assert [r["img_size"] for r in rows] == [32, 48]
    assert rows[0]["checkpoint"] == f"{model}/model.safetensors" and rows[0]["label_space"].startswith("custom-5:")
    assert "label space `custom-5:" in (tmp_path / "run" / "results.md").read_text()
    for command in ("shift", "agreement"):
        code, err, rows = _run(command, "-m", model, "-s", "32", "48", "--data", data, out=tmp_path / "run")
        assert code == 0, (command, err)
        assert rows and all(r["label_space"].startswith("custom-5:") for r in rows)
    code, err, rows = _run(
        "resolution",
        "-m",
        model,
        "-s",
        "32",
        "--data",
        data,
        "--crop-mode",
        "weights",
        "--interpolation",
        "weights",
        out=tmp_path / "weights",
    )
    assert code == 0, err
    assert (rows[0]["crop_mode"], rows[0]["interpolation"], rows[0]["resize_size"]) == ("full", "bilinear", 32)
