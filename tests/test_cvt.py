"""CvT: parity with transformers' independent implementation in both checkpoint layouts, strict loading, sizes,
parameter counts, FLOPs, the crop modes (timm's, and full), and a run through the CLI."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import timm
import torch
from conftest import cell_predictions, make_image
from PIL import Image
from safetensors.torch import save_file
from torchvision import transforms
from typer.testing import CliRunner

import cpvt_eval
from cpvt_eval.checkpoints import LoadReport, load_checkpoint, load_strict
from cpvt_eval.cli import app
from cpvt_eval.data import EvalTransform
from cpvt_eval.errors import CheckpointError, DataError, ModelError
from cpvt_eval.models.introspect import grid_of, patch_size_of
from cpvt_eval.models.posenc import adapt_to_size, check_sizes
from cpvt_eval.results import CellId

transformers = pytest.importorskip("transformers")
from transformers import CvtConfig, CvtForImageClassification  # noqa: E402
from transformers.models.cvt.modeling_cvt import CvtIntermediate  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

# cvt_toy's architecture in transformers' terms (HF needs a stage's depth > its index; 1/2/3 blocks fit)
TOY_HF = dict(embed_dim=[16, 32, 48], num_heads=[1, 2, 3], depth=[1, 2, 3])
CVT_13_HF = dict()  # CvtConfig's defaults are CvT-13
CVT_21_HF = dict(depth=[1, 4, 16])
CVT_W24_HF = dict(embed_dim=[192, 768, 1024], num_heads=[3, 12, 16], depth=[2, 2, 20])

# logits are O(1) with these random weights; float32 reorderings (SDPA vs einsum) stay below 1e-6 on the toy
TOY_ATOL = 2e-5
REAL_ATOL = 1e-4


class TestQuickGELU(torch.nn.Module):
    __test__ = False

    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


def hf_model(num_labels: int, seed: int = 0, quick_gelu: bool = False, **cfg) -> CvtForImageClassification:
    """A transformers CvT with random weights and random BatchNorm statistics (so that the buffers matter)."""
    torch.manual_seed(seed)
    model = CvtForImageClassification(CvtConfig(num_labels=num_labels, **cfg)).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            noise = torch.randn(t.shape, generator=g) * 0.1
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif "norm" in name and name.endswith("weight"):  # LayerNorm and BatchNorm scales near 1
                t.copy_(1.0 + noise)
            else:
                t.copy_(noise)
    if quick_gelu:
        for m in model.modules():
            if isinstance(m, CvtIntermediate):
                m.activation = TestQuickGELU()
    return model


def hf_to_microsoft(key: str) -> str:
    """The release-file name of a transformers key, written here apart from the package's own rules."""
    k = key.replace("cvt.encoder.stages.", "stage")
    k = k.replace(".embedding.convolution_embeddings.projection.", ".patch_embed.proj.")
    k = k.replace(".embedding.convolution_embeddings.normalization.", ".patch_embed.norm.")
    k = k.replace(".layers.", ".blocks.")
    k = k.replace(".layernorm_before.", ".norm1.").replace(".layernorm_after.", ".norm2.")
    for long, short in (("query", "q"), ("key", "k"), ("value", "v")):
        conv = f".attention.attention.convolution_projection_{long}.convolution_projection."
        k = k.replace(conv + "convolution.", f".attn.conv_proj_{short}.conv.")
        k = k.replace(conv + "normalization.", f".attn.conv_proj_{short}.bn.")
        k = k.replace(f".attention.attention.projection_{long}.", f".attn.proj_{short}.")
    k = k.replace(".attention.output.dense.", ".attn.proj.")
    k = k.replace(".intermediate.dense.", ".mlp.fc1.").replace(".output.dense.", ".mlp.fc2.")
    if k.startswith("layernorm."):
        k = "norm." + k[len("layernorm.") :]
    if k.startswith("classifier."):
        k = "head." + k[len("classifier.") :]
    return k


def save_layouts(hf: CvtForImageClassification, tmp_path) -> dict:
    """The same weights as an HF safetensors file, an HF .bin and a Microsoft release .pth (without the
    BatchNorm step counters, as some release files are)."""
    sd = {k: v.clone() for k, v in hf.state_dict().items()}
    paths = {
        "hf-safetensors": tmp_path / "model.safetensors",
        "hf-bin": tmp_path / "pytorch_model.bin",
        "microsoft": tmp_path / "CvT-toy-IN-1k.pth",
    }
    save_file(sd, str(paths["hf-safetensors"]))
    torch.save(sd, paths["hf-bin"])
    ms = {hf_to_microsoft(k): v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    assert not any(k.startswith(("cvt.", "layernorm", "classifier")) for k in ms)
    torch.save(ms, paths["microsoft"])
    return paths


@pytest.fixture(scope="module")
def toy_hf():
    return hf_model(10, seed=3, **TOY_HF)


@pytest.mark.parametrize("layout", ["hf-safetensors", "hf-bin", "microsoft"])
def test_every_layout_loads_strictly_and_matches_transformers_with_gelu(toy_hf, tmp_path, layout):
    path = save_layouts(toy_hf, tmp_path)[layout]
    ours = timm.create_model("cvt_toy", act="gelu").eval()
    report = load_checkpoint(ours, path)
    if layout.startswith("hf"):
        assert ("classifier.weight", "head.weight") in report.renamed
        assert any("erf GELU" in n for n in report.notes)
    else:
        assert report.renamed == []  # the module's own names are the release layout
        assert any("num_batches_tracked" in r for r in report.regenerated)
    torch.manual_seed(0)
    for size in (224, 384):
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            want = toy_hf(x).logits
            got = ours(x)
        assert got.shape == (2, 10)
        assert torch.allclose(got, want, atol=TOY_ATOL, rtol=0), (size, (got - want).abs().max())


def test_default_quick_gelu_matches_transformers_with_its_activation_swapped(tmp_path):
    hf_gelu = hf_model(10, seed=5, **TOY_HF)
    hf_quick = hf_model(10, seed=5, quick_gelu=True, **TOY_HF)
    path = save_layouts(hf_gelu, tmp_path)["hf-safetensors"]
    ours = timm.create_model("cvt_toy").eval()
    assert ours.act == "quick_gelu"
    load_checkpoint(ours, path)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        got, quick, gelu = ours(x), hf_quick(x).logits, hf_gelu(x).logits
    assert torch.allclose(got, quick, atol=TOY_ATOL, rtol=0)
    assert not torch.allclose(got, gelu, atol=1e-3)  # the activation does change the outputs


@pytest.mark.slow
@pytest.mark.parametrize("act", ["gelu", "quick_gelu"])
def test_real_cvt_13_matches_transformers_at_224_and_384(act):
    hf = hf_model(1000, seed=7, quick_gelu=act == "quick_gelu", **CVT_13_HF)
    ours = timm.create_model("cvt_13", act=act).eval()
    report = load_strict(ours, dict(hf.state_dict()), LoadReport("hf"))
    assert len(report.renamed) == len(hf.state_dict())
    for size in (224, 384):
        x = torch.randn(1, 3, size, size)  # batch 1: the official code's squeeze breaks it
        with torch.no_grad():
            want, got = hf(x).logits, ours(x)
        assert got.shape == (1, 1000)
        assert torch.allclose(got, want, atol=REAL_ATOL, rtol=0), (size, (got - want).abs().max())


def test_missing_batchnorm_statistics_are_an_error_with_the_keys(toy_hf):
    sd = {hf_to_microsoft(k): v for k, v in toy_hf.state_dict().items()}
    del sd["stage1.blocks.0.attn.conv_proj_k.bn.running_var"]
    del sd["stage2.blocks.2.attn.conv_proj_q.bn.running_mean"]
    with pytest.raises(CheckpointError) as e:
        load_strict(timm.create_model("cvt_toy"), sd, LoadReport("ms.pth"))
    msg = str(e.value)
    assert "missing BatchNorm running statistics 2 key(s)" in msg
    assert "stage1.blocks.0.attn.conv_proj_k.bn.running_var" in msg
    assert "stage2.blocks.2.attn.conv_proj_q.bn.running_mean" in msg


def test_unknown_or_missing_keys_fail_in_both_layouts(toy_hf):
    hf_sd = dict(toy_hf.state_dict())
    hf_sd["cvt.encoder.stages.0.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="unexpected 1 key.*cvt.encoder.stages.0.extra.weight"):
        load_strict(timm.create_model("cvt_toy"), hf_sd, LoadReport("hf"))
    ms = {hf_to_microsoft(k): v for k, v in toy_hf.state_dict().items()}
    del ms["stage2.cls_token"]
    with pytest.raises(CheckpointError, match="missing 1 key.*stage2.cls_token"):
        load_strict(timm.create_model("cvt_toy"), ms, LoadReport("ms"))


def test_batch_of_one_gives_the_same_logits_as_in_a_batch():
    torch.manual_seed(0)
    model = timm.create_model("cvt_toy").eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        full = model(x)
        one = model(x[1:2])
    assert one.shape == (1, 10)
    assert torch.allclose(one, full[1:2], atol=1e-6)


def _count(name: str, **kwargs) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in timm.create_model(name, **kwargs).parameters())


def _hf_count(cfg: dict) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in CvtForImageClassification(CvtConfig(num_labels=1000, **cfg)).parameters())


@pytest.mark.parametrize(
    "name, expected, hf_cfg",
    [
        ("cvt_13", 19_997_480, CVT_13_HF),
        ("cvt_21", 31_622_696, CVT_21_HF),
        ("cvt_w24", 277_196_392, CVT_W24_HF),
        ("cvt_13_384", 19_997_480, CVT_13_HF),
        ("cvt_21_384", 31_622_696, CVT_21_HF),
    ],
)
def test_parameter_counts(name, expected, hf_cfg):
    assert _count(name) == expected
    assert _hf_count(hf_cfg) == expected  # the independent implementation agrees


def test_specs_sizes_and_policy():
    from cpvt_eval.models.registry import resolve

    for name, native in (("cvt_13", 224), ("cvt_21", 224), ("cvt_13_384", 384), ("cvt_21_384", 384), ("cvt_w24", 384)):
        spec = resolve(name)
        assert (spec.family, spec.pe, spec.native_size, spec.patch_size) == ("cvt", "conv", native, 16)
        assert spec.default_weights.startswith("hf-hub:microsoft/cvt-")
    assert resolve("cvt_13").published == {224: (81.6, "primary")}  # the 384 fine-tuned figure is not zero-shot
    assert resolve("cvt_13_384").published == {384: (83.0, "primary")}  # its native-size figure
    model = timm.create_model("cvt_toy").eval()
    assert patch_size_of(model) == 16
    assert adapt_to_size(model, 384) == "conv-native"
    assert grid_of(model) == (24, 24)
    assert adapt_to_size(model, 96) == "conv-native"
    assert grid_of(model) == (6, 6)
    with pytest.raises(ModelError, match=r"nearest valid sizes: 192 or 208"):
        adapt_to_size(model, 200)
    with pytest.raises(ModelError, match=r"cvt_13's patch size 16; nearest valid sizes: 192 or 208"):
        check_sizes([224, 200], 16, "cvt_13")
    with pytest.raises(ModelError, match="act='swish'"):
        timm.create_model("cvt_toy", act="swish")


def test_published_finetuned_figures_never_count_as_zero_shot():
    from cpvt_eval.published import published_for, published_top1

    assert published_top1("cvt_13", 384) is None
    assert published_top1("cvt_21", 384) is None
    assert published_for("cvt_13", zero_shot_only=False)[384].protocol == "finetune384"
    assert published_top1("cvt_21", 224) == (82.5, "primary")


def _expected_gflops(stages, size: int, classes: int) -> float:
    """Multiply-adds x 2 of a CvT, written from the architecture: convs, linears and both attention products."""
    flops, in_ch, grid = 0, 3, size
    for i, (k, s, p, dim, depth) in enumerate(stages):
        grid = (grid + 2 * p - k) // s + 1
        flops += 2 * grid * grid * dim * in_ch * k * k
        cls = 1 if i == len(stages) - 1 else 0
        n_q = grid * grid + cls
        kv = math.ceil(grid / 2)
        n_kv = kv * kv + cls
        per_block = 2 * 9 * dim * (grid * grid + 2 * kv * kv)  # depthwise convs of q (stride 1), k and v (stride 2)
        per_block += 2 * dim * dim * (2 * n_q + 2 * n_kv)  # proj_q, proj_k, proj_v, proj
        per_block += 2 * 2 * n_q * n_kv * dim  # q k^T and attn v
        per_block += 2 * 2 * n_q * dim * 4 * dim  # MLP
        flops += depth * per_block
        in_ch = dim
    return (flops + 2 * in_ch * classes) / 1e9


def test_flops_count_attention_and_conv_projections():
    from cpvt_eval.throughput import count_flops

    toy = ((7, 4, 2, 16, 1), (3, 2, 1, 32, 2), (3, 2, 1, 48, 3))
    model = timm.create_model("cvt_toy").eval()
    for size in (64, 96):
        assert count_flops(model, size) == pytest.approx(_expected_gflops(toy, size, 10), rel=1e-9)


def test_full_crop_mode_resizes_the_whole_image():
    img = make_image(1, size=(80, 60))
    full = EvalTransform(64, crop_mode="full")
    out = full(img)
    assert out.shape == (3, 64, 64) and out.dtype == torch.uint8
    assert full.resize_size == 64
    want = transforms.functional.pil_to_tensor(img.resize((64, 64), Image.BICUBIC))
    assert (out.int() - want.int()).abs().max() <= 1  # PIL's bicubic, as torchvision calls it
    center = EvalTransform(64)(img)
    assert not torch.equal(out, center)
    # the same pixels as timm's squash at crop ratio 1
    assert torch.equal(out, EvalTransform(64, 1.0, crop_mode="squash")(img))
    with pytest.raises(DataError, match="unknown crop mode 'stretch'"):
        EvalTransform(64, crop_mode="stretch")


@pytest.mark.parametrize("mode", ["center", "squash", "border"])
def test_crop_modes_are_timms(mode):
    """Each crop mode named as timm names it gives timm's pixels (its eval transform, before normalisation)."""
    from timm.data import create_transform

    mean = (0.5, 0.4, 0.3)
    fill = tuple(round(255 * v) for v in mean)
    for w, h in ((500, 375), (375, 500), (97, 61), (64, 64)):
        img = Image.fromarray(np.random.default_rng(w * h).integers(0, 255, (h, w, 3), dtype=np.uint8))
        for size, pct in ((224, 0.875), (96, 1.0), (64, 0.9)):
            for interp in ("bicubic", "bilinear"):
                ref = create_transform(
                    size, crop_pct=pct, interpolation=interp, crop_mode=mode, mean=mean, normalize=False
                )(img)
                ours = EvalTransform(size, pct, interp, mode, fill)(img)
                assert torch.equal(ref, ours), (w, h, size, pct, interp)


def test_crop_mode_is_part_of_the_cell_identity():
    base = dict(
        model="cvt_13",
        img_size=384,
        checkpoint_sha256="a" * 64,
        dataset_fingerprint="f",
        limit=None,
        crop_pct=0.875,
        interpolation="bicubic",
        pe_options="",
        dtype="fp32",
        model_args="act=quick_gelu",
    )
    center, full = CellId(**base), CellId(**base, crop_mode="full")
    assert center.crop_mode == "center"
    assert center.key() != full.key() != CellId(**base, crop_mode="squash").key()
    # the default stays out of the hash, so keys written before the field existed stay the same
    import dataclasses
    import hashlib
    import json

    payload = {f.name: getattr(center, f.name) for f in dataclasses.fields(center) if f.name in base}
    assert center.key() == hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def test_resolution_run_through_the_cli(imagefolder, tmp_path):
    torch.manual_seed(11)
    model = cpvt_eval.create_model("cvt_toy", num_classes=1000).eval()
    ckpt = tmp_path / "cvt_toy.pth"
    torch.save(model.state_dict(), ckpt)
    out = tmp_path / "run"
    args = [
        "resolution", "-m", "cvt_toy", "-s", "64", "96", "--data", str(imagefolder), "-c", str(ckpt),
        "--model-arg", "num_classes=1000", "--crop-mode", "full", "--out", str(out),
        "--throughput-batch", "1", "--throughput-repeats", "1", "--workers", "0", "--batch-size", "5",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["img_size"] for r in rows] == ["64", "96"]
    for r, grid in zip(rows, ("4x4", "6x6"), strict=True):
        assert (r["pe"], r["pe_policy"], r["crop_mode"], r["grid"]) == ("conv", "conv-native", "full", grid)
        assert r["resize_size"] == r["img_size"]
        assert "act=quick_gelu" in r["model_args"] and "num_classes=1000" in r["model_args"]
        assert float(r["gflops_per_image"]) > 0
    assert "crop mode `full`" in (out / "results.md").read_text()
    # the stored predictions are those of the in-memory model on whole images resized to size x size
    for size in (64, 96):
        preds = cell_predictions(out, "cvt_toy", size)
        tf = transforms.Compose(
            [
                transforms.Resize((size, size), interpolation=transforms.InterpolationMode.BICUBIC),
                transforms.ToTensor(),
                transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
            ]
        )
        from cpvt_eval.data import open_dataset

        samples = open_dataset(imagefolder).samples
        x = torch.stack([tf(Image.open(imagefolder / samples[i].relpath).convert("RGB")) for i in preds["indices"]])
        with torch.no_grad():
            want = model(x).topk(5, dim=1).indices
        assert torch.equal(preds["top5"], want)
    # a size that gives no whole grid stops before any work, naming the nearest valid sizes
    bad = CliRunner().invoke(app, [*args[:4], "200", *args[6:]])
    assert bad.exit_code == 2
    assert "nearest valid sizes: 192 or 208" in bad.output


def test_default_weights_come_from_the_hub_and_fail_fast_offline(monkeypatch):
    from cpvt_eval.jobs.assemble import build_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="cannot get microsoft/cvt-13: offline"):
        build_model("cvt_13")
