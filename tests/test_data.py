"""The data layer: layouts with identical label maps, label files, subsets, fingerprint, bad files, ReaL."""

from __future__ import annotations

import io
import json
import random
import shutil

import numpy as np
import pytest
import torch
from conftest import cell_predictions
from PIL import Image, ImageFile
from typer.testing import CliRunner

from cpvt_eval.cli import app, fill_optional_values
from cpvt_eval.config import RunConfig
from cpvt_eval.data import (
    EvalDataset,
    EvalTransform,
    ImageSet,
    Sample,
    apply_bad_image_policy,
    check_image,
    detect_layout,
    imagenet_synsets,
    imagenet_val_wnids,
    load_real_labels,
    load_rgb,
    open_dataset,
    real_hits,
    real_score,
    stratified_subset,
    synset_to_index,
)
from cpvt_eval.errors import DataError
from cpvt_eval.jobs.run import evaluate as run_resolution
from tests.conftest import make_image

# Two validation images of classes 0, 2, 10 and 999 (their numbers looked up in the shipped list). Classes 2 and
# 10 tell numeric from lexicographic folder order in the integer-folder layout.
CLASSES = (0, 2, 10, 999)


def _val_numbers(per_class: int = 2) -> dict[int, list[int]]:
    index = synset_to_index()
    out: dict[int, list[int]] = {c: [] for c in CLASSES}
    for n, wnid in enumerate(imagenet_val_wnids(), 1):
        c = index[wnid]
        if c in out and len(out[c]) < per_class:
            out[c].append(n)
    return out


def val_name(n: int) -> str:
    return f"ILSVRC2012_val_{n:08d}.JPEG"


@pytest.fixture(scope="module")
def val_images(tmp_path_factory):
    """{file name: (class index, JPEG bytes)} for the chosen validation numbers."""
    out = {}
    for c, numbers in _val_numbers().items():
        for n in numbers:
            buf = io.BytesIO()
            make_image(n, (72, 64)).save(buf, format="JPEG", quality=90)
            out[val_name(n)] = (c, buf.getvalue())
    return out


def write_layout(root, kind: str, images: dict):
    """The same image bytes in one of the layouts; returns (data path, labels path or None)."""
    synsets = imagenet_synsets()
    root.mkdir(parents=True)
    labels = None
    for name, (c, data) in images.items():
        if kind == "imagefolder":
            path = root / synsets[c] / name
        elif kind == "imagenetv2":
            path = root / str(c) / name
        elif kind == "manifest":
            path = root / "images" / name
        else:  # flat, flat_kaggle, flat_devkit
            path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    if kind == "manifest":
        # Labels as WordNet ids and as indices, mixed: both must give the same canonical index.
        rows = [f"images/{n},{synsets[c] if i % 2 else c}" for i, (n, (c, _)) in enumerate(sorted(images.items()))]
        (root / "manifest.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    if kind == "flat_kaggle":
        rows = [f"{n[:-5]},{synsets[c]} 1 2 30 40 {synsets[c]} 5 6 7 8" for n, (c, _) in images.items()]
        (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    if kind == "flat_devkit":
        labels = root.parent / f"{root.name}_ILSVRC2012_validation_ground_truth.txt"
        labels.write_text(devkit_text())
    return root, labels


def devkit_ids() -> dict[str, int]:
    """A devkit-like class order that is not the sorted one: ids count down from the last WordNet id."""
    return {wnid: 1000 - i for i, wnid in enumerate(imagenet_synsets())}


def devkit_text() -> str:
    ids = devkit_ids()
    return "".join(f"{ids[w]}\n" for w in imagenet_val_wnids())


LAYOUT_KINDS = ("imagefolder", "flat", "flat_kaggle", "flat_devkit", "imagenetv2", "manifest")


@pytest.fixture(scope="module")
def layouts(tmp_path_factory, val_images):
    base = tmp_path_factory.mktemp("layouts")
    return {kind: write_layout(base / kind, kind, val_images) for kind in LAYOUT_KINDS}


# --- layouts and labels ----------------------------------------------------------------------------------------


def test_canonical_index_ends():
    synsets = imagenet_synsets()
    assert len(synsets) == 1000 and len(imagenet_val_wnids()) == 50_000
    assert synsets[0] == "n01440764" and synsets[999] == "n15075141"


def test_every_layout_gives_the_same_label_map(layouts, val_images):
    expected = {name: c for name, (c, _) in val_images.items()}
    detected = {"flat_kaggle": "flat", "flat_devkit": "flat"}
    for kind, (root, labels) in layouts.items():
        image_set = open_dataset(root, labels=labels)
        assert image_set.layout == detected.get(kind, kind), kind
        assert image_set.label_map() == expected, kind
    # the ends of the canonical index, by name
    by_class = {c: [n for n, (cc, _) in val_images.items() if cc == c] for c in CLASSES}
    first = open_dataset(layouts["imagenetv2"][0]).label_map()
    assert all(first[n] == 0 for n in by_class[0]) and all(first[n] == 999 for n in by_class[999])
    assert all(first[n] == 10 for n in by_class[10])  # folder "10", not the second folder in "0","10","2","999"


def test_label_sources_are_recorded(layouts):
    kaggle_root, _ = layouts["flat_kaggle"]
    assert open_dataset(kaggle_root).label_source.endswith("LOC_val_solution.csv")  # found next to the images
    devkit_root, devkit = layouts["flat_devkit"]
    assert open_dataset(devkit_root, labels=devkit).label_source == str(devkit)
    assert open_dataset(layouts["flat"][0]).label_source == ""


def test_forced_layouts(layouts):
    root, _ = layouts["imagefolder"]
    assert open_dataset(root, layout="imagefolder").layout == "imagefolder"
    with pytest.raises(DataError, match="flat layout expects"):
        open_dataset(root, layout="flat")
    with pytest.raises(DataError, match="is not a class index"):
        open_dataset(root, layout="imagenetv2")
    with pytest.raises(DataError, match="unknown layout"):
        open_dataset(root, layout="zip")
    with pytest.raises(DataError, match="no manifest CSV"):
        open_dataset(root, layout="manifest")
    # the manifest itself as --data, and as --labels next to --data
    mroot, _ = layouts["manifest"]
    assert open_dataset(mroot / "manifest.csv").layout == "manifest"
    assert len(open_dataset(mroot, labels=mroot / "manifest.csv")) == 8


def test_devkit_ground_truth_is_checked_against_the_shipped_list(tmp_path, layouts):
    root, _ = layouts["flat"]
    bad = tmp_path / "gt.txt"
    lines = devkit_text().splitlines()
    lines[4] = str(int(lines[4]) % 1000 + 1)  # image 5 now claims the class id of another WordNet id
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"gt.txt:5: ILSVRC2012_val_00000005 has class id"):
        open_dataset(root, labels=bad)
    short = tmp_path / "short.txt"
    short.write_text("\n".join(lines[:100]) + "\n")
    with pytest.raises(DataError, match="has 100 lines, expected 50000"):
        open_dataset(root, labels=short)
    # the sorted-wnid index written 1-based (a common mistake) is also a bijection and passes; an id outside
    # 1..1000 does not
    zero = tmp_path / "zero.txt"
    zero.write_text("\n".join(["0"] + lines[1:]) + "\n")
    with pytest.raises(DataError, match="is not an ILSVRC2012 class id"):
        open_dataset(root, labels=zero)


def test_label_file_mismatches(tmp_path, val_images):
    root, _ = write_layout(tmp_path / "k", "flat_kaggle", val_images)
    csv = root / "LOC_val_solution.csv"
    rows = csv.read_text().splitlines()
    csv.write_text("\n".join(rows[:-1]) + "\n")  # one present image no longer listed
    with pytest.raises(DataError, match="is not listed in"):
        open_dataset(root)
    csv.write_text("\n".join(rows + ["ILSVRC2012_val_00049999,n01440764 1 2 3 4"]) + "\n")
    with pytest.raises(DataError, match=r"lists 1 image\(s\) that are not in"):
        open_dataset(root)
    csv.write_text("\n".join(rows + ["ILSVRC2012_val_00049999,n99999999 1 2 3 4"]) + "\n")
    with pytest.raises(DataError, match="n99999999 is not an ImageNet-1k class"):
        open_dataset(root)

    mroot, _ = write_layout(tmp_path / "m", "manifest", val_images)
    manifest = mroot / "manifest.csv"
    manifest.write_text(manifest.read_text() + "images/missing.JPEG,3\n")
    with pytest.raises(DataError, match="missing.JPEG, which does not exist"):
        open_dataset(mroot)
    manifest.write_text("path,label\nimages/" + next(iter(val_images)) + ",1000\n")
    with pytest.raises(DataError, match="class index 1000 is outside"):
        open_dataset(mroot)

    flat, _ = write_layout(tmp_path / "f", "flat", val_images)
    (flat / "holiday.jpg").write_bytes(next(iter(val_images.values()))[1])
    with pytest.raises(DataError, match="holiday.jpg has no label"):
        open_dataset(flat)

    folders = tmp_path / "folders"
    (folders / "n01440764").mkdir(parents=True)
    (folders / "n99999999").mkdir()
    with pytest.raises(DataError, match="n99999999 is not an ImageNet-1k class"):
        open_dataset(folders)


def test_path_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        open_dataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is empty"):
        open_dataset(tmp_path / "empty")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "README.txt").write_text("hello")
    with pytest.raises(DataError, match="no images found"):
        open_dataset(tmp_path / "text")
    (tmp_path / "folders" / "n01440764").mkdir(parents=True)
    assert detect_layout(tmp_path / "folders") == "imagefolder"
    with pytest.raises(DataError, match="no images found under"):
        open_dataset(tmp_path / "folders")
    with pytest.raises(DataError, match="--labels .*nope.csv does not exist"):
        open_dataset(tmp_path / "text", layout="flat", labels=tmp_path / "nope.csv")


def test_cli_data_errors_are_one_line_exit_2(tmp_path, toy_checkpoints):
    runner = CliRunner()
    (tmp_path / "empty").mkdir()
    _, ckpt = toy_checkpoints["cpvt_toy"]
    for data in (tmp_path / "nowhere", tmp_path / "empty"):
        args = [
            "resolution",
            "-m",
            "cpvt_toy",
            "--model-arg",
            "num_classes=1000",
            "-c",
            str(ckpt),
            "--data",
            str(data),
            "--sizes",
            "56",
        ]
        result = runner.invoke(app, [*args, "--out", str(tmp_path / "run"), "--no-throughput"])
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output and str(data) in result.output
        assert len(result.output.strip().splitlines()) == 1


# --- subsets and fingerprint ------------------------------------------------------------------------------------


def test_limit_is_stratified_and_layout_independent(layouts):
    picks = {}
    for kind, (root, labels) in layouts.items():
        image_set = open_dataset(root, limit=4, labels=labels)
        assert sorted(s.label for s in image_set.samples) == sorted(CLASSES)  # one per class
        picks[kind] = sorted(s.name for s in image_set.samples)
        assert image_set.limit == 4
    assert len({tuple(p) for p in picks.values()}) == 1
    root, _ = layouts["imagefolder"]
    again = [s.name for s in open_dataset(root, limit=5).samples]
    assert [s.name for s in open_dataset(root, limit=5).samples] == again


def test_stratified_subset_balances_uneven_classes():
    samples = [Sample(f"a/{i}.JPEG", 0) for i in range(10)] + [Sample(f"b/{i}.JPEG", 1) for i in range(2)]
    chosen = stratified_subset(samples, 6)
    assert [s.label for s in chosen].count(1) == 2 and len(chosen) == 6
    with pytest.raises(DataError, match="--limit must be positive"):
        stratified_subset(samples, 0)


def test_classes_file(tmp_path, layouts):
    root, _ = layouts["imagefolder"]
    synsets = imagenet_synsets()
    wanted = tmp_path / "classes.txt"
    wanted.write_text(f"# two classes\n{synsets[999]}\n\n{synsets[2]}\n")
    image_set = open_dataset(root, classes=wanted)
    assert sorted({s.label for s in image_set.samples}) == [2, 999] and len(image_set) == 4
    assert image_set.class_filter == str(wanted)
    wanted.write_text(f"{synsets[5]}\n")
    with pytest.raises(DataError, match=f"names {synsets[5]}, which has no image"):
        open_dataset(root, classes=wanted)
    wanted.write_text("n99999999\n")
    with pytest.raises(DataError, match="not an ImageNet-1k class"):
        open_dataset(root, classes=wanted)


def test_fingerprint_is_stable_and_sensitive(tmp_path, layouts):
    root, _ = layouts["imagefolder"]
    first = open_dataset(root).fingerprint
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    assert open_dataset(copy).fingerprint == first  # same relative paths and sizes, another place
    assert len(first) == 16 and all(c in "0123456789abcdef" for c in first)
    assert open_dataset(root, limit=4).fingerprint != first
    victim = next(copy.glob("n01440764/*.JPEG"))
    victim.write_bytes(victim.read_bytes() + b"\0")
    assert open_dataset(copy).fingerprint != first
    victim.write_bytes(victim.read_bytes()[:-1])
    assert open_dataset(copy).fingerprint == first
    victim.rename(victim.with_name("ILSVRC2012_val_00000001.JPEG"))
    assert open_dataset(copy).fingerprint != first


def test_full_set_is_recognized():
    synsets = imagenet_synsets()
    samples = [Sample(f"{synsets[c]}/{c}_{j}.JPEG", c) for c in range(1000) for j in range(50)]
    full = ImageSet(root=None, samples=samples, layout="imagefolder", classes=synsets)
    assert full.is_full_imagenet_val
    assert not ImageSet(None, samples[:-1], "imagefolder", synsets).is_full_imagenet_val
    uneven = samples[:-1] + [Sample("x.JPEG", 0)]
    assert not ImageSet(None, uneven, "imagefolder", synsets).is_full_imagenet_val


# --- odd and bad files ------------------------------------------------------------------------------------------


def _rgb_array(seed=0, size=(48, 40)):
    return np.asarray(make_image(seed, size))


def odd_files(folder):
    """Valid but odd files, as they occur in the ImageNet validation set and its copies."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(_rgb_array())
    rgb.convert("CMYK").save(folder / "cmyk.JPEG", quality=95)
    rgb.convert("L").save(folder / "gray.JPEG", quality=95)
    rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(folder / "palette.png")
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.arange(48, dtype=np.uint8) * 5, (40, 1))))
    rgba.save(folder / "rgba.png")
    Image.fromarray((np.arange(48 * 40, dtype=np.uint16).reshape(40, 48) * 27).astype(np.uint16)).save(
        folder / "deep16.png"
    )
    buf = io.BytesIO()
    rgb.save(buf, format="PNG")
    (folder / "png_inside.JPEG").write_bytes(buf.getvalue())
    return {
        "cmyk.JPEG": "mode CMYK",
        "gray.JPEG": "mode L",
        "palette.png": "mode P",
        "rgba.png": "mode RGBA",
        "deep16.png": "mode I;16",
        "png_inside.JPEG": "PNG data behind a .jpeg name",
    }


def bad_files(folder):
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(buf, "JPEG")
    (folder / "truncated.JPEG").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (folder / "empty.JPEG").write_bytes(b"")
    (folder / "notes.JPEG").write_text("this is not an image\n")
    return {"truncated.JPEG": "truncated or corrupt", "empty.JPEG": "empty file", "notes.JPEG": "not an image"}


def test_odd_files_decode_like_the_reference(tmp_path):
    expected_notes = odd_files(tmp_path)
    for name, note in expected_notes.items():
        img = load_rgb(tmp_path / name)
        with open(tmp_path / name, "rb") as f:
            reference = Image.open(f).convert("RGB")
        assert img.mode == "RGB" and img.size == (48, 40)
        assert np.array_equal(np.asarray(img), np.asarray(reference)), name
        check = check_image(tmp_path, name)
        assert check.problem is None and note in (check.note or ""), (name, check)
    # RGBA is not composited onto a background: the colour channels are the reference's (alpha dropped)
    assert np.array_equal(np.asarray(load_rgb(tmp_path / "rgba.png")), _rgb_array())


def test_bad_files_are_errors_never_substitutes(tmp_path):
    expected = bad_files(tmp_path)
    for name, problem in expected.items():
        assert problem in check_image(tmp_path, name).problem
        with pytest.raises(DataError, match=name):
            load_rgb(tmp_path / name)
    # identification alone cannot see truncation; a full decode can
    assert check_image(tmp_path, "truncated.JPEG", full=False).problem is None
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_draft_only_when_asked(tmp_path):
    big = Image.fromarray(np.asarray(make_image(3, (400, 320))))
    big.save(tmp_path / "big.JPEG", quality=90)
    full = load_rgb(tmp_path / "big.JPEG")
    assert full.size == (400, 320)
    drafted = load_rgb(tmp_path / "big.JPEG", draft_size=64)
    assert drafted.size == (100, 80)  # 1/4 DCT scale: both sides still >= 64
    image_set = ImageSet(tmp_path, [Sample("big.JPEG", 0)], "flat", imagenet_synsets())
    plain = EvalDataset(image_set, EvalTransform(56))[0][0]
    image_set.decode_draft = True
    assert not torch.equal(EvalDataset(image_set, EvalTransform(56))[0][0], plain)


def _bad_imagefolder(tmp_path):
    root = tmp_path / "val"
    synsets = imagenet_synsets()
    good = root / synsets[0]
    good.mkdir(parents=True)
    for j in range(3):
        make_image(j).save(good / f"good_{j}.JPEG")
    odd_files(root / synsets[1])
    expected = bad_files(root / synsets[999])
    return root, {f"{synsets[999]}/{n}": p for n, p in expected.items()}


def test_stop_policy_names_the_file_before_any_cell(tmp_path, toy_checkpoints):
    root, _ = _bad_imagefolder(tmp_path)
    image_set = open_dataset(root)
    with pytest.raises(DataError, match=r"bad image .*(empty|notes)\.JPEG"):
        apply_bad_image_policy(image_set, "stop")
    # a truncated file alone passes identification and stops the first data pass: still no row written
    for name in ("empty.JPEG", "notes.JPEG"):
        (root / imagenet_synsets()[999] / name).unlink()
    _, ckpt = toy_checkpoints["cpvt_toy"]
    args = _toy_resolution_args(ckpt, root)
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "run"), "--no-throughput"])
    assert result.exit_code == 2, result.output
    assert "truncated.JPEG" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run" / "rows.jsonl").exists()


def test_skip_policy_records_every_skipped_file(tmp_path, toy_checkpoints):
    root, expected = _bad_imagefolder(tmp_path)
    _, ckpt = toy_checkpoints["cpvt_toy"]
    cfg = RunConfig(
        models=("cpvt_toy",),
        sizes=(56,),
        data=root,
        out=tmp_path / "run",
        checkpoints={"cpvt_toy": str(ckpt)},
        model_args={"cpvt_toy": {"num_classes": 1000}},
        batch_size=4,
        workers=0,
        timing=False,
        on_bad_image="skip",
        decode_draft=True,
    )
    (row,) = run_resolution(cfg).rows
    assert row.n_skipped == 3 and row.n_images == 9
    assert sorted(row.skipped_files.split(";")) == sorted(expected)
    assert row.partial and row.decode_draft and row.layout == "imagefolder"
    report = (tmp_path / "run" / "results.md").read_text()
    assert "3 bad image(s) skipped" in report and "truncated.JPEG" in report and "draft()" in report
    listed = dict(line.split("\t") for line in (tmp_path / "run" / "skipped.tsv").read_text().splitlines())
    assert listed.keys() == expected.keys()
    assert all(expected[rel] in why for rel, why in listed.items())


def test_check_data_lists_every_problem(tmp_path):
    root, expected = _bad_imagefolder(tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["check-data", str(root), "-j", "0"])
    assert result.exit_code == 1, result.output
    for rel in expected:
        assert rel in result.output
    assert "imagefolder layout, 12 images in 3 classes" in result.output and "partial" in result.output

    result = runner.invoke(app, ["check-data", str(root), "-j", "0", "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert {p["path"]: p["problem"] for p in report["problems"]}.keys() == expected.keys()
    for p in report["problems"]:
        assert expected[p["path"]] in p["problem"]
    assert len(report["notes"]) == 6 and report["fingerprint"] == open_dataset(root).fingerprint

    for rel in expected:
        (root / rel).unlink()
    result = runner.invoke(app, ["check-data", str(root), "-j", "0"])
    assert result.exit_code == 0, result.output
    assert "every image decodes" in result.output
    result = runner.invoke(app, ["check-data", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "not found" in result.output


# --- ImageNet-ReaL ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real():
    return load_real_labels()  # the copy timm ships


def test_real_labels_match_timm_on_the_full_list(real):
    from timm.data import RealLabelsImagenet

    names = [val_name(n) for n in range(1, 50_001)]
    reference = RealLabelsImagenet(names, topk=(1,))
    preds = torch.randint(0, 1000, (50_000,), generator=torch.Generator().manual_seed(0))
    for i, labels in enumerate(real.labels):  # about half ReaL-correct, so the figure is far from 0
        if labels and i % 2:
            preds[i] = min(labels)
    for start in range(0, 50_000, 1000):  # timm's evaluator takes logits batch by batch
        batch = preds[start : start + 1000]
        logits = torch.zeros(len(batch), 1000)
        logits[torch.arange(len(batch)), batch] = 1.0
        reference.add_result(logits)
    image_set = ImageSet(None, [Sample(n, 0) for n in names], "flat", imagenet_synsets())
    score = real_score(real_hits(real.for_image_set(image_set), torch.arange(50_000), preds))
    assert score.n + score.excluded == 50_000 and score.excluded == sum(1 for x in real.labels if not x)
    assert score.top1 == pytest.approx(reference.get_accuracy(1), abs=1e-9)


def test_real_matching_on_a_shuffled_subset(real):
    from timm.data import RealLabelsImagenet

    reference = RealLabelsImagenet([val_name(n) for n in range(1, 50_001)]).real_labels  # name -> list
    rng = random.Random(0)
    numbers = rng.sample(range(1, 50_001), 300) + [1]  # image 1 has no ReaL label
    rng.shuffle(numbers)
    samples = [Sample(f"{imagenet_val_wnids()[n - 1]}/{val_name(n)}", 0) for n in numbers]
    samples.append(Sample("n01440764/holiday.JPEG", 0))  # not a validation file name: excluded too
    image_set = ImageSet(None, samples, "imagefolder", imagenet_synsets())
    preds = torch.tensor([rng.choice(reference.get(s.name) or [0]) if i % 3 else 5 for i, s in enumerate(samples)])
    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(1))  # predictions in any order
    score = real_score(real_hits(real.for_image_set(image_set), order, preds[order]))
    expected_n = sum(1 for s in samples if reference.get(s.name))
    expected_correct = sum(
        1 for s, p in zip(samples, preds.tolist(), strict=True) if p in (reference.get(s.name) or [])
    )
    assert (score.n, score.correct1, score.excluded) == (expected_n, expected_correct, len(samples) - expected_n)
    assert score.excluded >= 2


def test_real_labels_need_validation_file_names(real, tmp_path):
    image_set = ImageSet(tmp_path, [Sample("n01440764/a.jpg", 0), Sample("n01440764/b.jpg", 0)], "imagefolder", ())
    with pytest.raises(DataError, match="none of the 2 images"):
        real.for_image_set(image_set)


def test_real_labels_file_errors(tmp_path):
    bad = tmp_path / "real.json"
    bad.write_text("[[1], [2]]")
    with pytest.raises(DataError, match="expected a JSON list of 50000"):
        load_real_labels(bad)
    bad.write_text("{")
    with pytest.raises(DataError, match="is not JSON"):
        load_real_labels(bad)
    with pytest.raises(DataError, match="not found"):
        load_real_labels(tmp_path / "nope.json")


def test_optional_value_for_real_labels():
    assert fill_optional_values(["--real-labels", "--json"]) == ["--real-labels", "timm", "--json"]
    assert fill_optional_values(["--real-labels"]) == ["--real-labels", "timm"]
    assert fill_optional_values(["--real-labels", "r.json", "-v"]) == ["--real-labels", "r.json", "-v"]


# --- the same images in any layout give the same results -------------------------------------------------------


def test_same_results_in_every_layout(tmp_path, layouts, toy_checkpoints, real):
    _, ckpt = toy_checkpoints["cpvt_toy"]
    results = {}
    for kind in ("imagefolder", "flat_devkit", "imagenetv2", "manifest"):
        root, labels = layouts[kind]
        cfg = RunConfig(
            models=("cpvt_toy",),
            sizes=(56,),
            data=root,
            out=tmp_path / kind,
            checkpoints={"cpvt_toy": str(ckpt)},
            model_args={"cpvt_toy": {"num_classes": 1000}},
            batch_size=3,
            workers=0,
            timing=False,
            labels=labels,
        )
        outcome = run_resolution(cfg, real_labels="timm")
        (row,) = outcome.rows
        image_set = open_dataset(root, labels=labels)
        preds = cell_predictions(tmp_path / kind, "cpvt_toy", 56)
        by_name = {
            image_set.samples[i].name: tuple(p)
            for i, p in zip(preds["indices"].tolist(), preds["top5"].tolist(), strict=True)
        }
        results[kind] = (row.correct1, row.correct5, row.n_images, row.real_top1, row.real_n, by_name)
        assert row.partial and row.n_skipped == 0 and row.dataset_fingerprint == image_set.fingerprint
        # ReaL top-1 of the row, recomputed from the per-image predictions and timm's label list
        timm_real = {val_name(i + 1): x for i, x in enumerate(real.labels)}
        scored = [(name, p[0]) for name, p in by_name.items() if timm_real[name]]
        assert row.real_n == len(scored) and row.real_excluded == len(by_name) - len(scored)
        assert row.real_top1 == pytest.approx(100 * sum(p in timm_real[n] for n, p in scored) / len(scored), abs=1e-3)
    report = (tmp_path / "flat_devkit" / "results.md").read_text()
    assert "## ImageNet-ReaL top-1" in report and f"{results['flat_devkit'][3]:.2f}" in report
    assert "layout `flat`, labels from" in report
    assert len({v[:5] for v in results.values()}) == 1
    assert all(v[5] == results["imagefolder"][5] for v in results.values())


def test_cli_real_labels_and_layout_flags(tmp_path, layouts, toy_checkpoints):
    _, ckpt = toy_checkpoints["cpvt_toy"]
    root, _ = layouts["flat"]
    args = _toy_resolution_args(ckpt, root)
    args += ["--out", str(tmp_path / "run"), "--no-throughput", "--layout", "flat", "--limit", "4"]
    result = CliRunner().invoke(app, [*args, "--real-labels", "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["layout"] == "flat" and row["n_images"] == 4 and row["limit"] == 4
    assert row["real_n"] + row["real_excluded"] == 4 and row["real_top1"] is not None
    result = CliRunner().invoke(app, [*args, "--on-bad-image", "ignore"])
    assert result.exit_code == 2 and "--on-bad-image must be stop or skip" in result.output


def _toy_resolution_args(ckpt, root) -> list[str]:
    """``resolution`` of the toy CPVT (1000 classes) on ``root`` at 56 px, without data workers."""
    return [
        "resolution",
        "-m",
        "cpvt_toy",
        "--model-arg",
        "num_classes=1000",
        "-c",
        str(ckpt),
        "--data",
        str(root),
        "--sizes",
        "56",
        "-j",
        "0",
    ]
