"""Hugging Face transformers checkpoints as timm modules: logits equal transformers' own forward (both key layouts,
every family), at the native size and at larger ones where the policies agree; where they do not (BEiT's relative
position bias), the tool's choice is pinned. Strict conversion, sharded and ``.bin`` files, the hub cache offline,
the data config of ``preprocessor_config.json``, and the package never importing transformers."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hf_toys import FAMILIES, logits, make, model_type, save, to_4x
from safetensors.torch import load_file, save_file

from cpvt_eval.checkpoints import find_transformers, load_transformers
from cpvt_eval.config import PEOptions
from cpvt_eval.errors import CheckpointError, ModelError
from cpvt_eval.jobs.assemble import build_model
from cpvt_eval.jobs.model_names import resolve_model
from tests.conftest import fake_hub_cache

ATOL = 1e-4
SEEDS = {family: i for i, family in enumerate(FAMILIES)}
X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """family -> (transformers model, {layout: folder})"""
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for family in FAMILIES:
        model = make(family, seed=SEEDS[family])
        out[family] = (
            model,
            {layout: save(model, root / f"{family}-{layout}", layout, family) for layout in ("4x", "5x")},
        )
    return out


def test_the_4x_names_are_the_ones_transformers_writes_by_default(tmp_path):
    """The test's 4.x table, derived from the 4.x modeling code, against transformers 5's own ``save_pretrained``
    (its default ``save_original_format`` writes the original names)."""
    for family in FAMILIES:
        model = make(family)
        model.save_pretrained(tmp_path / family)
        written = set(load_file(str(tmp_path / family / "model.safetensors")))
        assert set(to_4x(model.state_dict(), family)) == written, family


@pytest.mark.parametrize("layout", ["4x", "5x"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_equal_transformers_at_the_native_size(saved, family, layout):
    hf, folders = saved[family]
    m = build_model(str(folders[layout]))
    with torch.no_grad():
        ours = m.module(X)
    theirs = logits(hf, X)
    assert ours.shape == theirs.shape == (3, 3)
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)
    assert m.checkpoint == f"{folders[layout]}/model.safetensors" and len(m.checkpoint_sha256) == 64
    assert m.spec.native_size == 32 and m.data.crop_mode == "full" and m.data.mean == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("size", [48, 64])
@pytest.mark.parametrize("family", ["vit", "deit", "deit-cls", "dinov2", "swin"])
def test_larger_sizes_equal_transformers(saved, family, size):
    """ViT/DeiT/DINOv2: the APE resampled bicubic to the new grid, no antialias, prefix tokens kept: transformers'
    ``interpolate_pos_encoding`` (DINOv2: what transformers 5 computes). Swin: the window kept and the grid padded,
    as both do. (transformers' Swin keeps the window and shift it clamped for the smallest input it has run, so
    its reference here is a model that has run nothing yet: the same weights, built again.)"""
    _, folders = saved[family]
    hf = make(family, seed=SEEDS[family])
    m = build_model(str(folders["5x"]))
    module, policy = m.sizer.module_at(size, PEOptions())
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    with torch.no_grad():
        ours = module(x)
    theirs = logits(hf, x, interpolate=family != "swin")
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)
    assert policy == ("window-padded" if family == "swin" else "ape-bicubic")


def test_dinov2_resampling_is_the_tools_policy(saved):
    """Pinned: DINOv2's position table at a new grid is the tool's default, bicubic to the grid size without
    antialias (older transformers used a scale factor of (n + 0.1) / N, as DINO's code); ``--antialias`` gives
    timm's antialiased resample, which transformers does not use."""
    hf, folders = saved["dinov2"]
    m = build_model(str(folders["5x"]))
    native = m.module.pos_embed.detach().clone()
    module, _ = m.sizer.module_at(64, PEOptions())
    grid = native[:, 1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(8, 8), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    torch.testing.assert_close(module.pos_embed[:, 1:], expected.reshape(1, 64, -1))
    torch.testing.assert_close(module.pos_embed[:, :1], native[:, :1])
    aa, _ = build_model(str(folders["5x"])).sizer.module_at(64, PEOptions(antialias=True))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (aa(x) - logits(hf, x, interpolate=True)).abs().max() > 1e-4


def test_beit_at_a_larger_size_follows_timm_not_transformers(saved):
    """Pinned: at a new size BEiT's relative position bias tables are resampled as timm's checkpoint filter does
    (UniLM's BEiT fine-tuning rule: a geometric grid, linear interpolation), the ``relbias-resampled`` policy;
    transformers interpolates the table bilinearly, so the two differ slightly off the native size."""
    import timm.models.beit as timm_beit

    hf, folders = saved["beit"]
    m = build_model(str(folders["4x"]))
    module, policy = m.sizer.module_at(48, PEOptions())
    reference = m.spec.create(img_size=48)
    reference.load_state_dict(timm_beit.checkpoint_filter_fn(m.module.state_dict(), reference))
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours, timms = module(x), reference.eval()(x)
    torch.testing.assert_close(ours, timms, atol=1e-6, rtol=0)
    assert policy == "relbias-resampled"
    assert (ours - logits(hf, x, interpolate=True)).abs().max() > 1e-4


def _config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def test_a_key_no_rule_knows_is_named(saved, tmp_path):
    hf, folders = saved["vit"]
    folder = save(hf, tmp_path / "vit", "5x", "vit")
    sd = load_file(str(folder / "model.safetensors"))
    sd["vit.layers.0.attention.rope.freqs"] = torch.zeros(2)
    save_file(sd, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"vit\.layers\.0\.attention\.rope\.freqs"):
        build_model(str(folder))


def test_missing_and_mis_shaped_weights_are_named(saved, tmp_path):
    hf, _ = saved["vit"]
    folder = save(hf, tmp_path / "vit", "4x", "vit")
    sd = load_file(str(folder / "model.safetensors"))
    del sd["vit.encoder.layer.1.attention.attention.key.weight"]
    save_file(sd, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match="lacks the k weight"):
        build_model(str(folder))
    sd = load_file(str(save(hf, tmp_path / "vit2", "4x", "vit") / "model.safetensors"))
    sd["classifier.weight"] = torch.zeros(5, 32)
    sd["classifier.bias"] = torch.zeros(5)
    save_file(sd, str(tmp_path / "vit2" / "model.safetensors"))
    with pytest.raises(
        CheckpointError, match=r"classifier\.bias has shape \(5,\), the config.json's model needs \(3,\)"
    ):
        build_model(str(tmp_path / "vit2"))


def test_a_stored_position_index_must_be_the_windows_own(saved, tmp_path):
    hf, _ = saved["swin"]
    folder = save(hf, tmp_path / "swin", "4x", "swin")
    sd = load_file(str(folder / "model.safetensors"))
    key = "swin.encoder.layers.0.blocks.1.attention.self.relative_position_index"
    sd[key] = sd[key].flip(0).contiguous()
    save_file(sd, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match="relative_position_index differs"):
        build_model(str(folder))


def test_config_details_are_honoured(saved):
    """layer_norm_eps 1e-12 (transformers' ViT), 1e-6 (DINOv2); Swin's patch norms keep torch's 1e-5."""
    vit = build_model(str(saved["vit"][1]["5x"])).module
    assert vit.blocks[0].norm1.eps == vit.norm.eps == 1e-12
    assert build_model(str(saved["dinov2"][1]["5x"])).module.norm.eps == 1e-6
    swin = build_model(str(saved["swin"][1]["5x"])).module
    assert swin.patch_embed.norm.eps == 1e-5 and swin.layers[1].downsample.norm.eps == 1e-5


def test_unsupported_model_types_and_heads_are_refused(tmp_path):
    folder = tmp_path / "convnext"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "convnext", "architectures": ["X"]}))
    with pytest.raises(ModelError, match=r"model_type 'convnext' is not supported.*vit, deit, beit, swin, dinov2"):
        resolve_model(str(folder))
    (folder / "config.json").write_text(json.dumps({"model_type": "vit", "architectures": ["ViTModel"]}))
    with pytest.raises(ModelError, match="ViTModel has no classification head"):
        resolve_model(str(folder))
    (folder / "config.json").write_text(json.dumps({"architecture": "vit_tiny_patch16_224", "num_classes": 10}))
    with pytest.raises(ModelError, match="not a transformers model"):
        resolve_model(str(folder))


def test_sharded_safetensors_and_pytorch_bin_load_the_same(saved, tmp_path):
    hf, folders = saved["deit"]
    expected = logits(hf, X)
    sharded = tmp_path / "sharded"
    hf.save_pretrained(sharded, max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    m = build_model(str(sharded))
    torch.testing.assert_close(m.module(X).detach(), expected, atol=ATOL, rtol=0)
    assert m.checkpoint.endswith("model.safetensors.index.json") and "shards" in m.load_report["notes"][0]
    binary = tmp_path / "bin"
    binary.mkdir()
    (binary / "config.json").write_text((folders["4x"] / "config.json").read_text())
    torch.save(load_file(str(folders["4x"] / "model.safetensors")), binary / "pytorch_model.bin")
    m = build_model(str(binary))
    torch.testing.assert_close(m.module(X).detach(), expected, atol=ATOL, rtol=0)
    assert m.checkpoint.endswith("pytorch_model.bin")


def test_hub_repos_work_from_the_cache_offline_and_fail_at_once_otherwise(saved, tmp_path, monkeypatch):
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf, folders = saved["vit"]
    files = {n: (folders["5x"] / n).read_bytes() for n in ("config.json", "model.safetensors")}
    fake_hub_cache(cache, "someone/tiny-vit", files)
    m = build_model("hf-hub:someone/tiny-vit")
    torch.testing.assert_close(m.module(X).detach(), logits(hf, X), atol=ATOL, rtol=0)
    assert m.name == "hf-hub:someone/tiny-vit" and m.checkpoint == "hf-hub:someone/tiny-vit/model.safetensors"
    assert m.data.source.startswith("the tool's defaults")  # no preprocessor_config.json in that repo
    started = time.monotonic()
    with pytest.raises(CheckpointError, match="offline and not in the hub cache"):
        resolve_model("hf-hub:someone/absent")
    assert time.monotonic() - started < 10
    fake_hub_cache(cache, "timm/vit-tiny", {"config.json": b'{"architecture": "vit_tiny_patch16_224"}'})
    with pytest.raises(ModelError, match="-m vit_tiny_patch16_224 -c hf-hub:timm/vit-tiny"):
        resolve_model("hf-hub:timm/vit-tiny")


@pytest.mark.parametrize(
    ("processor", "expected"),
    [
        ({"size": {"height": 224, "width": 224}, "resample": 2}, ("full", 1.0, "bilinear")),
        (
            {"size": {"shortest_edge": 256}, "do_center_crop": True, "crop_size": {"height": 224, "width": 224}},
            ("center", 0.875, "bicubic"),
        ),
        (
            {"size": {"height": 256, "width": 256}, "do_center_crop": True, "crop_size": 224, "resample": 3},
            ("squash", 0.875, "bicubic"),
        ),
        ({"size": {"shortest_edge": 224}, "crop_pct": 0.9, "resample": 3}, ("center", 0.9, "bicubic")),
    ],
)
def test_the_data_config_comes_from_preprocessor_config(saved, tmp_path, processor, expected):
    hf, _ = saved["vit"]
    folder = save(
        hf, tmp_path / "vit", "5x", "vit", processor={**processor, "image_mean": [0.1] * 3, "image_std": [0.2] * 3}
    )
    data = build_model(str(folder)).data
    assert (data.crop_mode, data.crop_pct, data.interpolation) == expected
    assert data.mean == (0.1,) * 3 and data.std == (0.2,) * 3 and "preprocessor_config.json" in data.source


def test_the_package_never_imports_transformers(saved):
    """The loader, the conversion and the job run with transformers made unimportable."""
    folder = saved["beit"][1]["4x"]
    code = (
        "import sys; sys.modules['transformers'] = None\n"
        "import torch\n"
        "from cpvt_eval.jobs.assemble import build_model\n"
        f"m = build_model({str(folder)!r})\n"
        "print(m.module(torch.zeros(1, 3, 32, 32)).shape)\n"
        "print(sorted(k for k in sys.modules if k.startswith('transformers')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": ""}
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["torch.Size([1, 3])", "['transformers']"]


def test_find_transformers_leaves_other_names_alone(tmp_path):
    assert find_transformers("deit_ti") is None
    assert find_transformers(str(tmp_path)) is None  # a folder without config.json
    with pytest.raises(ModelError, match="has no config.json"):
        resolve_model(str(tmp_path))


def test_load_report_lists_the_renames_and_drops(saved):
    _, folders = saved["dinov2"]
    m = build_model(str(folders["4x"]))
    report = m.load_report
    assert ("dinov2.encoder.layer.0.layer_scale1.lambda1", "blocks.0.ls1.gamma") in [
        tuple(r) for r in report["renamed"]
    ]
    assert report["dropped"] == ["dinov2.embeddings.mask_token"]
    assert model_type("dinov2-swiglu") == "dinov2"
    repo = find_transformers(str(folders["5x"]))
    module = m.spec.create()
    load_transformers(module, repo)  # the same folder loads into a fresh module
