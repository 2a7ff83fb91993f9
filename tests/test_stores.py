"""ImageNet as stored at scale: WebDataset shards, parquet and arrow files give the folder's images and numbers;
unlabelled folders; label subsets (ImageNet-A/-R); damaged stores are named, never silenced."""

from __future__ import annotations

import builtins
import dataclasses
import io
import json
import tarfile

import pytest
import torch
from typer.testing import CliRunner

from cpvt_eval.cli import app
from cpvt_eval.data import (
    EvalDataset,
    EvalTransform,
    apply_bad_image_policy,
    detect_test_set,
    expand_braces,
    imagenet_synsets,
    load_label_subset,
    make_loader,
    open_dataset,
    scan_images,
    stratified_subset,
)
from cpvt_eval.data.parquet_arrow import imagenet_lemmas
from cpvt_eval.data.store_reads import close_handles
from cpvt_eval.errors import DataError
from tests.conftest import make_image, make_imagefolder

runner = CliRunner()
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

CLASSES = (0, 1, 2, 999)


@pytest.fixture(autouse=True)
def _fresh_handles():
    yield
    close_handles()  # each test's shards are new files: no descriptor outlives its tmp_path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """12 JPEGs of 4 classes (ImageNet-sized aspect ratio, small) as an ImageFolder, and its ImageSet."""
    root = make_imagefolder(tmp_path_factory.mktemp("stores") / "val", CLASSES, per_class=3, size=(96, 72))
    return open_dataset(root)


def _samples(image_set):
    """(name, label, bytes) of a folder's samples in its order."""
    return [(s.name, s.label, (image_set.root / s.relpath).read_bytes()) for s in image_set.samples]


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def write_shards(out, items, n_shards=1, labels="cls+json", ext="jpg", prefix="val"):
    """WebDataset shards ``prefix-{i}.tar`` with tarfile: ``KEY.ext`` + ``KEY.cls`` and/or ``KEY.json``."""
    out.mkdir(parents=True, exist_ok=True)
    per = -(-len(items) // n_shards)
    paths = []
    for i in range(n_shards):
        path = out / f"{prefix}-{i:02d}.tar"
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
            for name, label, data in items[i * per : (i + 1) * per]:
                key = name.rsplit(".", 1)[0]
                _add(tf, f"{key}.{ext}", data)
                if "cls" in labels:
                    _add(tf, f"{key}.cls", str(label).encode())
                if "json" in labels:
                    _add(tf, f"{key}.json", json.dumps({"filename": name, "label": label, "other": 1}).encode())
        paths.append(path)
    return paths


def _hf_metadata(names):
    features = {"image": {"_type": "Image"}, "label": {"names": list(names), "_type": "ClassLabel"}}
    return {b"huggingface": json.dumps({"info": {"features": features}}).encode()}


def write_parquet(out, items, n_files=1, row_group_size=None, names=None, label=True, prefix="validation"):
    """``prefix-0000i-of-0000n.parquet`` as Hugging Face writes them: image struct (bytes, path) + label."""
    out.mkdir(parents=True, exist_ok=True)
    per = -(-len(items) // n_files)
    paths = []
    for i in range(n_files):
        part = items[i * per : (i + 1) * per]
        columns = {"image": [{"bytes": d, "path": n} for n, _, d in part]}
        if label:
            columns["label"] = pa.array([c for _, c, _ in part], pa.int64())
        table = pa.table(columns)
        if names is not None:
            table = table.replace_schema_metadata(_hf_metadata(names))
        path = out / f"{prefix}-{i:05d}-of-{n_files:05d}.parquet"
        pq.write_table(table, path, row_group_size=row_group_size)
        paths.append(path)
    return paths


def _pixels(image_set, size=40):
    """{name: (label, uint8 tensor)} through EvalDataset with one transform."""
    ds = EvalDataset(image_set, EvalTransform(size))
    out = {}
    for i in range(len(ds)):
        img, label, index = ds[i]
        assert index == i
        out[image_set.samples[i].name] = (label, img)
    return out


def _same_pixels(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert a[name][0] == b[name][0], name
        assert torch.equal(a[name][1], b[name][1]), name


# --- the same images, the same numbers --------------------------------------------------------------------------


def test_every_store_gives_the_folders_images(tmp_path, folder):
    items = _samples(folder)
    reference = _pixels(folder)
    write_shards(tmp_path / "wds1", items, 1)
    write_shards(tmp_path / "wds3", items, 3)
    write_parquet(tmp_path / "pq1", items, 1, names=imagenet_synsets())
    write_parquet(tmp_path / "pq3", items, 3, row_group_size=2, names=imagenet_lemmas())
    sets = {
        "wds1": open_dataset(tmp_path / "wds1" / "val-00.tar"),
        "wds3": open_dataset(str(tmp_path / "wds3" / "val-{00..02}.tar")),
        "pq1": open_dataset(tmp_path / "pq1"),
        "pq3": open_dataset(tmp_path / "pq3"),
    }
    for kind, image_set in sets.items():
        assert image_set.layout == kind[:-1].replace("pq", "parquet"), kind
        assert image_set.has_labels and len(image_set) == len(folder), kind
        assert image_set.label_map() == folder.label_map(), kind
        assert [s.name for s in image_set.samples] == [s.name for s in folder.samples], kind  # storage order
        assert not image_set.unreadable
        _same_pixels(_pixels(image_set), reference)
    # the fingerprint does not depend on how the samples are split into shards, files or row groups
    assert sets["wds1"].fingerprint == sets["wds3"].fingerprint == sets["pq1"].fingerprint == sets["pq3"].fingerprint
    assert sets["pq3"].label_source == "column:label (class names checked)"
    assert sets["pq1"].label_source == "column:label (class WordNet ids checked)"
    assert sets["wds1"].label_source == "cls"
    assert sets["wds3"].samples[0].relpath == "val-00.tar/" + items[0][0].rsplit(".", 1)[0] + ".jpg"
    # a changed label changes it
    changed = [(n, (c + 1) % 1000 if i == 0 else c, d) for i, (n, c, d) in enumerate(items)]
    write_shards(tmp_path / "wds_changed", changed, 3)
    assert open_dataset(tmp_path / "wds_changed").fingerprint != sets["wds3"].fingerprint


def test_arrow_save_to_disk_gives_the_folders_images(tmp_path, folder):
    datasets = pytest.importorskip("datasets")
    items = _samples(folder)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(imagenet_synsets()))}
    )
    ds = datasets.Dataset.from_dict(
        {"image": [{"bytes": d, "path": n} for n, _, d in items], "label": [c for _, c, _ in items]},
        features=features,
    )
    ds.save_to_disk(str(tmp_path / "sd"), num_shards=2)
    datasets.DatasetDict({"train": ds, "validation": ds}).save_to_disk(str(tmp_path / "dd"))
    image_set = open_dataset(tmp_path / "sd")
    assert image_set.layout == "arrow" and image_set.label_map() == folder.label_map()
    _same_pixels(_pixels(image_set), _pixels(folder))
    split = open_dataset(tmp_path / "dd")
    assert split.split == "validation" and split.fingerprint == image_set.fingerprint
    assert open_dataset(tmp_path / "dd", split="train").split == "train"
    with pytest.raises(DataError, match="no split 'test'"):
        open_dataset(tmp_path / "dd", split="test")
    ds.to_parquet(str(tmp_path / "hf.parquet"))  # datasets' own parquet: the same set
    assert open_dataset(tmp_path / "hf.parquet").fingerprint == image_set.fingerprint


def test_loader_workers_limit_classes_and_shards_of_a_store(tmp_path, folder):
    items = _samples(folder)
    write_shards(tmp_path / "wds", items, 3)
    write_parquet(tmp_path / "pq", items, 2, row_group_size=2, names=imagenet_synsets())
    classes = tmp_path / "classes.txt"
    classes.write_text(f"{imagenet_synsets()[1]}\n{imagenet_synsets()[999]}\n")
    expect = {s.name for s in open_dataset(folder.root, limit=5).samples}
    for data in (tmp_path / "wds", tmp_path / "pq"):
        image_set = open_dataset(data, limit=5)
        assert {s.name for s in image_set.samples} == expect and image_set.limit == 5
        assert {s.label for s in open_dataset(data, classes=classes).samples} == {1, 999}
        assert stratified_subset(image_set.samples, 2) == stratified_subset(image_set.samples, 2)
        # worker processes open the shards / row groups themselves
        full = open_dataset(data)
        loader = make_loader(EvalDataset(full, EvalTransform(32)), batch_size=4, workers=2)
        got = torch.cat([b[0] for b in loader])
        want = torch.stack([EvalDataset(folder, EvalTransform(32))[i][0] for i in range(len(folder))])
        by_name = {s.name: i for i, s in enumerate(folder.samples)}
        order = [by_name[s.name] for s in full.samples]
        assert torch.equal(got, want[order])
        # distributed shards: a slice of the samples reads the same images
        part = dataclasses.replace(full, samples=full.samples[3:7])
        assert torch.equal(EvalDataset(part, EvalTransform(32))[0][0], got[3])


# --- shard forms ------------------------------------------------------------------------------------------------


def test_expand_braces():
    assert expand_braces("a-{00..03}.tar") == ["a-00.tar", "a-01.tar", "a-02.tar", "a-03.tar"]
    assert expand_braces("a-{8..10}.tar") == ["a-8.tar", "a-9.tar", "a-10.tar"]
    assert expand_braces("{x,y}-{0..1}") == ["x-0", "x-1", "y-0", "y-1"]
    assert expand_braces("{a,{b,c}}") == ["a", "b", "c"]
    assert expand_braces("plain{}") == ["plain{}"]


def test_shard_patterns_folders_and_info_json(tmp_path, folder):
    items = _samples(folder)
    write_shards(tmp_path / "s", items, 4, prefix="imagenet1k-validation")
    write_shards(tmp_path / "s", items[:2], 1, prefix="imagenet1k-train")
    reference = open_dataset(str(tmp_path / "s" / "imagenet1k-validation-{00..03}.tar"))
    assert reference.layout == "wds" and len(reference) == len(folder)
    listed = open_dataset(str(tmp_path / "s" / "imagenet1k-validation-{00,01,02,03}.tar"))
    assert listed.fingerprint == reference.fingerprint
    halves = "::".join(str(tmp_path / "s" / f"imagenet1k-validation-{r}.tar") for r in ("{00..01}", "{02..03}"))
    assert open_dataset(halves).fingerprint == reference.fingerprint
    assert open_dataset(str(tmp_path / "s" / "imagenet1k-validation-*.tar")).fingerprint == reference.fingerprint
    # a folder of shards of two splits: validation by default, or the split asked for
    in_folder = open_dataset(tmp_path / "s")
    assert in_folder.split == "validation" and in_folder.fingerprint == reference.fingerprint
    assert len(open_dataset(tmp_path / "s", split="train")) == 2
    # timm's _info.json (its filenames, checked against its shard_lengths)
    info = {
        "name": "imagenet-1k",
        "splits": {
            "validation": {
                "name": "validation",
                "num_samples": 12,
                "filenames": [f"imagenet1k-validation-{i:02d}.tar" for i in range(4)],
                "shard_lengths": [3, 3, 3, 3],
            },
            "train": {"name": "train", "filenames": ["imagenet1k-train-00.tar"], "shard_lengths": [2]},
        },
    }
    (tmp_path / "s" / "_info.json").write_text(json.dumps(info))
    by_info = open_dataset(tmp_path / "s" / "_info.json")
    assert by_info.fingerprint == reference.fingerprint and by_info.split == "validation"
    assert open_dataset(tmp_path / "s").fingerprint == reference.fingerprint  # the folder reads its _info.json
    info["splits"]["validation"]["shard_lengths"] = [3, 3, 3, 4]
    (tmp_path / "s" / "_info.json").write_text(json.dumps(info))
    image_set = open_dataset(tmp_path / "s" / "_info.json")
    assert image_set.unreadable == [("imagenet1k-validation-03.tar", "holds 3 samples, the info file says 4")]
    with pytest.raises(DataError, match="imagenet1k-validation-03.tar: holds 3 samples"):
        apply_bad_image_policy(image_set, "stop")
    # errors name the file
    with pytest.raises(DataError, match=r"imagenet1k-validation-04.tar .*does not exist \(\+5 more\)"):
        open_dataset(str(tmp_path / "s" / "imagenet1k-validation-{00..09}.tar"))
    with pytest.raises(DataError, match="no file matches"):
        open_dataset(str(tmp_path / "s" / "nothing-*.tar"))
    with pytest.raises(DataError, match="no split 'test'"):
        open_dataset(tmp_path / "s" / "_info.json", split="test")


def test_shard_labels_and_names(tmp_path, folder):
    items = _samples(folder)
    write_shards(tmp_path / "cls", items, 2, labels="cls", ext="JPEG")
    cls_only = open_dataset(tmp_path / "cls")
    assert cls_only.label_map() == folder.label_map()  # KEY.JPEG: the member's name
    assert cls_only.label_source == "cls"
    # labels from the .json: its `label`, or the field --label-key names
    out = tmp_path / "json"
    out.mkdir()
    with tarfile.open(out / "a.tar", "w") as tf:
        for name, label, data in items:
            key = "sub/" + name.rsplit(".", 1)[0]
            _add(tf, f"{key}.webp.jpg", data)  # webdataset: the key ends at the first dot, `webp.jpg` is no image
            _add(tf, f"{key}.png", data)
            _add(tf, f"{key}.json", json.dumps({"label": label, "meta": {"wnid": imagenet_synsets()[label]}}).encode())
        _add(tf, "__meta__", b"{}")  # webdataset's metadata member: not a sample
    by_json = open_dataset(out / "a.tar")
    assert by_json.label_source == "json:label"
    assert {s.name: s.label for s in by_json.samples} == {
        n.rsplit(".", 1)[0] + ".png": c for n, c in folder.label_map().items()
    }
    assert by_json.label_map() == open_dataset(out / "a.tar", label_key="meta.wnid").label_map()
    with pytest.raises(DataError, match=r"a.tar/sub/img_0_0.json has no field 'cls_id'"):
        open_dataset(out / "a.tar", label_key="cls_id")
    # the webdataset package reads the same samples
    wds = pytest.importorskip("webdataset")
    keys = [s["__key__"] for s in wds.WebDataset(str(out / "a.tar"), shardshuffle=False)]
    assert [s.relpath.split("/", 1)[1].rsplit(".", 1)[0] for s in by_json.samples] == keys


def test_samples_without_label_or_image(tmp_path, folder):
    (name, label, data), *_ = _samples(folder)
    out = tmp_path / "s"
    out.mkdir()
    with tarfile.open(out / "nolabel.tar", "w") as tf:
        _add(tf, "k1.jpg", data)
        _add(tf, "k1.cls", b"3")
        _add(tf, "k2.jpg", data)
    with pytest.raises(DataError, match=r"sample .*nolabel.tar/k2.jpg has no label"):
        open_dataset(out / "nolabel.tar")
    unlabelled = open_dataset(out / "nolabel.tar", require_labels=False)
    assert [s.label for s in unlabelled.samples] == [3, -1] and not unlabelled.has_labels
    with tarfile.open(out / "noimage.tar", "w") as tf:
        _add(tf, "k1.jpg", data)
        _add(tf, "k1.cls", b"3")
        _add(tf, "k2.cls", b"4")
    for require in (True, False):
        with pytest.raises(DataError, match=r"sample .*noimage.tar/k2 has a label but no image"):
            open_dataset(out / "noimage.tar", require_labels=require)
    with tarfile.open(out / "badcls.tar", "w") as tf:
        _add(tf, "k1.jpg", data)
        _add(tf, "k1.cls", b"1000")
    with pytest.raises(DataError, match=r"badcls.tar/k1.cls: class index 1000 is outside"):
        open_dataset(out / "badcls.tar")


# --- damaged stores ---------------------------------------------------------------------------------------------


def test_damaged_shards_are_named_or_recorded(tmp_path, folder):
    items = _samples(folder)
    shards = write_shards(tmp_path / "s", items, 4)
    pattern = str(tmp_path / "s" / "val-{00..03}.tar")
    good = open_dataset(pattern)
    # shard 1 cut in the middle of a member, shard 2 not a tar at all
    raw = shards[1].read_bytes()
    shards[1].write_bytes(raw[: len(raw) // 2])
    shards[2].write_bytes(b"this is not a tar file " * 40)
    image_set = open_dataset(pattern)
    problems = dict(image_set.unreadable)
    assert set(problems) == {"val-01.tar", "val-02.tar"}
    assert "truncated" in problems["val-01.tar"] and "not a readable tar" in problems["val-02.tar"]
    with pytest.raises(DataError, match=r"cannot read .*val-01.tar: truncated .* \(\+1 more\)"):
        apply_bad_image_policy(open_dataset(pattern), "stop")
    apply_bad_image_policy(image_set, "skip")
    assert [rel for rel, _ in image_set.skipped] == ["val-01.tar", "val-02.tar"]
    kept = {s.name for s in image_set.samples}
    assert len(kept) < len(good) and kept <= {s.name for s in good.samples}
    assert {s.relpath.split("/")[0] for s in image_set.samples} <= {"val-00.tar", "val-01.tar", "val-03.tar"}
    assert image_set.fingerprint != good.fingerprint
    # a tar cut exactly at a member boundary still lacks its end-of-archive marker
    members = tarfile.open(shards[3]).getmembers()
    cut = members[3].offset  # the header of the second sample
    shards[3].write_bytes(shards[3].read_bytes()[:cut])
    problems = dict(open_dataset(str(shards[3])).unreadable)
    assert "no end-of-archive marker" in problems["val-03.tar"]


def test_a_member_that_is_not_an_image_is_a_bad_image(tmp_path, folder):
    items = _samples(folder)
    items[4] = (items[4][0], items[4][1], b"<html>not an image</html>")
    items[7] = (items[7][0], items[7][1], items[7][2][:300])  # truncated JPEG
    write_shards(tmp_path / "s", items, 3)
    pattern = str(tmp_path / "s" / "val-{00..02}.tar")
    bad4 = "val-01.tar/" + items[4][0].rsplit(".", 1)[0] + ".jpg"
    bad7 = "val-01.tar/" + items[7][0].rsplit(".", 1)[0] + ".jpg"
    with pytest.raises(DataError, match=rf"bad image .*{bad4}: not an image"):
        apply_bad_image_policy(open_dataset(pattern), "stop")
    image_set = open_dataset(pattern)
    apply_bad_image_policy(image_set, "skip")
    assert [rel for rel, _ in image_set.skipped] == [bad4, bad7]
    assert len(image_set) == len(items) - 2 and bad4 not in {s.relpath for s in image_set.samples}
    with pytest.raises(DataError, match=rf"cannot decode image .*{bad7}"):
        EvalDataset(open_dataset(pattern), EvalTransform(32))[7]


def test_damaged_and_unlabelled_parquet(tmp_path, folder):
    items = _samples(folder)
    write_parquet(tmp_path / "nolabel", items, label=False)
    with pytest.raises(DataError, match=r"validation-00000-of-00001.parquet has no label column 'label'"):
        open_dataset(tmp_path / "nolabel")
    unlabelled = open_dataset(tmp_path / "nolabel", require_labels=False)
    assert not unlabelled.has_labels and {s.label for s in unlabelled.samples} == {-1}
    # another label column, named
    table = pq.read_table(tmp_path / "nolabel")
    table = table.append_column("target", pa.array([c for _, c, _ in items], pa.int64()))
    pq.write_table(table, tmp_path / "target.parquet")
    assert open_dataset(tmp_path / "target.parquet", label_key="target").label_map() == folder.label_map()
    # class names in another order: the first index that differs is named
    names = list(imagenet_synsets())
    names[1], names[2] = names[2], names[1]
    write_parquet(tmp_path / "swapped", items, names=names)
    swapped = r"class 1 of the 'label' column is 'n01484850', but canonical ImageNet-1k class 1 is n01443537:"
    with pytest.raises(DataError, match=swapped):
        open_dataset(tmp_path / "swapped")
    lemmas = list(imagenet_lemmas())
    lemmas[999] = "toilet paper"
    write_parquet(tmp_path / "renamed", items, names=lemmas)
    renamed = r"class 999 of the 'label' column is 'toilet paper', .* n15075141 \('toilet tissue"
    with pytest.raises(DataError, match=renamed):
        open_dataset(tmp_path / "renamed")
    write_parquet(tmp_path / "ten", items, names=[f"c{i}" for i in range(10)])
    with pytest.raises(DataError, match=r"class 0 of the 'label' column is 'c0'"):
        open_dataset(tmp_path / "ten")
    # a file that cannot be read: named, or recorded under skip; a row that is not an image is a bad image
    items[2] = (items[2][0], items[2][1], b"\x00" * 64)
    paths = write_parquet(tmp_path / "damaged", items, 3, names=imagenet_synsets())
    paths[2].write_bytes(paths[2].read_bytes()[:100])
    image_set = open_dataset(tmp_path / "damaged")
    assert [rel for rel, _ in image_set.unreadable] == ["validation-00002-of-00003.parquet"]
    with pytest.raises(DataError, match=r"cannot read .*validation-00002-of-00003.parquet: not a readable parquet"):
        apply_bad_image_policy(open_dataset(tmp_path / "damaged"), "stop")
    apply_bad_image_policy(image_set, "skip")
    assert [rel for rel, _ in image_set.skipped] == [
        "validation-00002-of-00003.parquet",
        "validation-00000-of-00003.parquet[row 2]",
    ]
    assert len(image_set) == 7


def test_missing_extra_is_one_line(tmp_path, folder, monkeypatch):
    write_parquet(tmp_path / "pq", _samples(folder))
    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name.startswith("pyarrow"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(DataError, match=r"needs pyarrow, which is not installed: pip install 'cpvt-eval\[hf\]'"):
        open_dataset(tmp_path / "pq")
    # shards need nothing but the standard library
    write_shards(tmp_path / "wds", _samples(folder), 2)
    assert len(open_dataset(tmp_path / "wds")) == len(folder)


# --- unlabelled folders -------------------------------------------------------------------------------------------


def test_unlabelled_folders(tmp_path):
    flat = tmp_path / "flat"
    (flat / "sub" / "dir").mkdir(parents=True)
    make_image(1).save(flat / "photo1.jpg")
    make_image(2).save(flat / "sub" / "dir" / "x.png")
    nested = tmp_path / "nested"
    (nested / "cats").mkdir(parents=True)
    (nested / "dogs" / "big").mkdir(parents=True)
    make_image(3).save(nested / "cats" / "a.jpg")
    make_image(4).save(nested / "dogs" / "big" / "b.webp")
    # labels required: the errors of the labelled layouts, as before
    with pytest.raises(DataError, match="photo1.jpg has no label"):
        open_dataset(flat)
    with pytest.raises(DataError, match="cannot tell the layout"):
        open_dataset(nested)
    for root, rels in ((flat, ["photo1.jpg", "sub/dir/x.png"]), (nested, ["cats/a.jpg", "dogs/big/b.webp"])):
        image_set = open_dataset(root, require_labels=False)
        assert image_set.layout == "images" and not image_set.has_labels
        assert [s.relpath for s in image_set.samples] == rels and {s.label for s in image_set.samples} == {-1}
        assert open_dataset(root, layout="images").fingerprint == image_set.fingerprint
        img, label, _ = EvalDataset(image_set, EvalTransform(32))[0]
        assert img.shape == (3, 32, 32) and label == -1
        assert not any(c.problem for c in scan_images(image_set))
        assert open_dataset(root, limit=1, require_labels=False).samples == image_set.samples[:1]
    # a labelled layout is still read as such
    labelled = make_imagefolder(tmp_path / "labelled", (5,), per_class=1)
    assert open_dataset(labelled, require_labels=False).layout == "imagefolder"
    # path errors stay what they are
    with pytest.raises(DataError, match="not found"):
        open_dataset(tmp_path / "nowhere", require_labels=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is empty"):
        open_dataset(tmp_path / "empty", require_labels=False)
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "README.txt").write_text("hi")
    with pytest.raises(DataError, match="no images found"):
        open_dataset(tmp_path / "text", require_labels=False)
    with pytest.raises(DataError, match="has no labels"):
        open_dataset(flat, layout="images", classes=tmp_path / "text" / "README.txt")


# --- label subsets and test sets ----------------------------------------------------------------------------------


def test_label_subsets(tmp_path):
    a, r = load_label_subset("imagenet-a"), load_label_subset("imagenet-r")
    assert len(a) == len(r) == 200 and a.name == "imagenet-a" and a.source == "timm:imagenet_a_indices.txt"
    assert a.indices == tuple(sorted(a.indices)) and a.indices[:3] == (6, 11, 13) and a.wnids[0] == "n01498041"
    assert load_label_subset("ImageNet_R").indices == r.indices
    custom = tmp_path / "mine.txt"
    custom.write_text("# my classes\n7\n\nn01440764  # tench\n999\n")
    subset = load_label_subset(custom)
    assert subset.indices == (7, 0, 999) and subset.name == "mine" and subset.source == str(custom)
    for text, message in (
        ("1\n1000\n", r"mine.txt:2: class index 1000 is outside 0..999"),
        ("1\nn99999999\n", r"mine.txt:2: n99999999 is not an ImageNet-1k class"),
        ("1\ntench\n", r"mine.txt:2: 'tench' is neither a class index"),
        ("5\nn01440764\n0\n", r"mine.txt:3: class 0 \(n01440764\) is already listed on line 2"),
        ("# nothing\n\n", r"label subset .*mine.txt names no class"),
    ):
        custom.write_text(text)
        with pytest.raises(DataError, match=message):
            load_label_subset(custom)
    with pytest.raises(DataError, match=r"unknown label subset 'imagenet-b': not a file, and not one of imagenet-a"):
        load_label_subset("imagenet-b")


def test_detect_test_set(tmp_path, folder):
    assert detect_test_set(folder) is None
    a = load_label_subset("imagenet-a")
    root = make_imagefolder(tmp_path / "a", a.indices, per_class=1, size=(16, 12))
    assert detect_test_set(open_dataset(root)) == "imagenet-a"
    assert detect_test_set(open_dataset(root, limit=50)) is None  # 50 of the 200 classes: unsure
    v2 = tmp_path / "v2"
    for c in (0, 7):
        (v2 / str(c)).mkdir(parents=True)
        make_image(c, (16, 12)).save(v2 / str(c) / "x.jpeg")
    assert detect_test_set(open_dataset(v2)) == "imagenet-v2"
    flat = tmp_path / "flat"
    flat.mkdir()
    make_image(1, (16, 12)).save(flat / "ILSVRC2012_val_00000001.JPEG")
    assert detect_test_set(open_dataset(flat)) == "imagenet-val"
    assert detect_test_set(open_dataset(flat, layout="images")) is None


# --- check-data on stores -----------------------------------------------------------------------------------------


def test_check_data_on_shards(tmp_path, folder):
    items = _samples(folder)
    write_shards(tmp_path / "s", items, 3)
    pattern = str(tmp_path / "s" / "val-{00..02}.tar")
    runner = CliRunner()
    result = runner.invoke(app, ["check-data", pattern, "-j", "0"])
    assert result.exit_code == 0, result.output
    assert "wds layout, 12 images in 4 classes" in result.output and "every image decodes" in result.output
    result = runner.invoke(app, ["check-data", pattern, "-j", "0", "--json"])
    report = json.loads(result.stdout)
    assert report["layout"] == "wds" and report["root"] == pattern
    assert report["fingerprint"] == open_dataset(pattern).fingerprint

    items[5] = (items[5][0], items[5][1], b"GIF89a but not really")
    write_shards(tmp_path / "s", items, 3)
    result = runner.invoke(app, ["check-data", pattern, "-j", "0", "--json"])
    assert result.exit_code == 1, result.output
    (problem,) = json.loads(result.stdout)["problems"]
    assert problem["path"] == "val-01.tar/" + items[5][0].rsplit(".", 1)[0] + ".jpg"
    assert "not an image" in problem["problem"]
    result = runner.invoke(app, ["check-data", str(tmp_path / "s" / "val-{00..05}.tar")])
    assert result.exit_code == 2 and "val-03.tar" in result.output and "does not exist" in result.output


def test_the_same_images_give_the_same_numbers_through_the_command(tmp_path, folder, toy_checkpoints):
    """Folder, 3 shards (brace pattern) and parquet (row groups of 2): identical n_images, top-1, top-5 and
    per-image predictions from `cpvt-eval resolution`; each row records its store; both stores share a fingerprint."""
    from tests.conftest import cell_predictions

    items = _samples(folder)
    write_shards(tmp_path / "wds", items, 3)
    write_parquet(tmp_path / "pq", items, 1, row_group_size=2, names=imagenet_synsets())
    stores = {
        "imagefolder": str(folder.root),
        "wds": str(tmp_path / "wds" / "val-{00..02}.tar"),
        "parquet": str(tmp_path / "pq"),
    }
    ckpt = ["-c", str(toy_checkpoints["deit_toy"][1]), "--model-arg", "num_classes=1000", "--no-throughput"]
    got = {}
    for layout, data in stores.items():
        out = tmp_path / f"run_{layout}"
        args = ["resolution", "-m", "deit_toy", "-s", "56", "--data", data, "--out", str(out), "--json", *ckpt]
        result = runner.invoke(app, [*args, "--workers", "0"])
        assert result.exit_code == 0, (layout, result.output)
        (row,) = json.loads(result.stdout)
        assert row["layout"] == layout
        got[layout] = (row, cell_predictions(out, "deit_toy", 56))
    ref_row, ref_pred = got["imagefolder"]
    for layout, (row, pred) in got.items():
        for key in ("n_images", "correct1", "correct5", "top1", "top5"):
            assert row[key] == ref_row[key], (layout, key)
        for key in ("indices", "labels", "top5"):
            assert torch.equal(pred[key], ref_pred[key]), (layout, key)
    # a store's fingerprint does not depend on how it is split (names are the samples' keys, not folder paths)
    assert got["wds"][0]["dataset_fingerprint"] == got["parquet"][0]["dataset_fingerprint"]
