"""Every position-encoding family at a new size: RoPE (axial, mixed, + APE), relative bias (BEiT), windows (Swin),
APE variants (DeiT III, CaiT, FlexiViT, EVA02). The tool's predictions equal those of timm's own model built at
that size with the native weights loaded through the model module's checkpoint filter.

Tiny random-weight variants of each family and generated images; the reference path below uses timm and
torchvision only.
"""

from __future__ import annotations

import importlib
import json

import pytest
import timm
import torch
from conftest import cell_predictions, sweep_cells, top5
from timm.layers import resample_abs_pos_embed as timm_resample_abs_pos_embed
from torchvision import transforms
from typer.testing import CliRunner

from cpvt_eval.cli import app
from cpvt_eval.config import PEOptions
from cpvt_eval.data import open_dataset
from cpvt_eval.engine import EvalSettings
from cpvt_eval.errors import ModelError
from cpvt_eval.jobs.assemble import build_model, pe_label, pe_options_of
from cpvt_eval.models.posenc import InPlace
from cpvt_eval.models.timm_policies import Rebuilt

runner = CliRunner()
TINY_VIT = dict(embed_dim=32, depth=1, num_heads=2, num_classes=10)
TINY_SWIN = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), num_classes=10)

# family -> (timm model, tiny kwargs, second size, pe kind, pe_policy as pinned, the path the tool takes)
FAMILIES = {
    "rope-axial": ("vit_small_patch16_rope_224", TINY_VIT, 384, "rope-axial", "rope-regenerated", Rebuilt),
    "rope-mixed": ("vit_small_patch16_rope_mixed_224", TINY_VIT, 384, "rope-mixed", "rope-mixed-kept", Rebuilt),
    "rope-axial+ape": (
        "vit_small_patch16_rope_ape_224",
        TINY_VIT,
        384,
        "rope-axial+ape",
        "rope-regenerated+ape-bicubic",
        Rebuilt,
    ),
    "rope-mixed+ape": (
        "vit_small_patch16_rope_mixed_ape_224",
        TINY_VIT,
        384,
        "rope-mixed+ape",
        "rope-mixed-kept+ape-bicubic",
        Rebuilt,
    ),
    # native 256, one register token, average pooling: 224 is a new size too
    "rope-reg-gap": ("vit_base_patch16_rope_reg1_gap_256", TINY_VIT, 384, "rope-axial", "rope-regenerated", Rebuilt),
    "eva02": ("eva02_tiny_patch14_224", TINY_VIT, 392, "rope-axial+ape", "rope-regenerated+ape-bicubic", Rebuilt),
    "beit": ("beit_base_patch16_224", TINY_VIT, 384, "relbias", "relbias-resampled", Rebuilt),
    "swin": ("swin_tiny_patch4_window7_224", TINY_SWIN, 384, "relbias-window", "window-padded", Rebuilt),
    "cait": (
        "cait_xxs24_224",
        dict(TINY_VIT, depth_token_only=1),
        384,
        "ape-learned",
        "ape-bicubic",
        Rebuilt,
    ),
    "deit3": ("deit3_small_patch16_224", TINY_VIT, 384, "ape-learned", "ape-bicubic", InPlace),
    "flexivit": ("flexivit_small", TINY_VIT, 384, "ape-learned", "ape-bicubic", InPlace),
}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from conftest import make_imagefolder

    root = make_imagefolder(tmp_path_factory.mktemp("families") / "val")
    return open_dataset(root)


def _native(name: str, kwargs: dict, path, seed: int = 0) -> torch.nn.Module:
    """A tiny random-weight model saved as a checkpoint; every weight nudged so that zero-initialised bias tables
    and layer scales matter."""
    torch.manual_seed(seed)
    model = timm.create_model(name, **kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    torch.save(model.state_dict(), path)
    return model


def timm_at_size(native: torch.nn.Module, name: str, kwargs: dict, size: int, antialias: bool = False, **size_args):
    """timm's model built at ``size``, the native weights loaded through its module's checkpoint filter; the learned
    APE resampled by timm's own function, without antialias unless asked (the DeiT way, the tool's default)."""
    model = timm.create_model(name, img_size=size, **kwargs, **size_args).eval()
    filter_fn = importlib.import_module(type(native).__module__).checkpoint_filter_fn
    sd = filter_fn(native.state_dict(), model)
    if isinstance(getattr(native, "pos_embed", None), torch.nn.Parameter):
        old, new = native.patch_embed.grid_size, model.patch_embed.grid_size
        prefix = native.pos_embed.shape[1] - old[0] * old[1]
        if not antialias or sd["pos_embed"].shape != model.pos_embed.shape:  # CaiT's filter leaves it alone
            sd["pos_embed"] = timm_resample_abs_pos_embed(
                native.pos_embed.detach(), new, old, num_prefix_tokens=prefix, antialias=antialias
            )
    model.load_state_dict(sd, strict=True)
    return model


def reference_top5(model: torch.nn.Module, image_set, size: int) -> torch.Tensor:
    """Top-5 of every image with torchvision's eval transform (shorter side to floor(size / 0.875), centre crop)."""
    from PIL import Image

    cfg = model.pretrained_cfg
    tf = transforms.Compose(
        [
            transforms.Resize(int(size / 0.875), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(cfg["mean"], cfg["std"]),
        ]
    )
    batch = torch.stack([tf(Image.open(image_set.root / s.relpath).convert("RGB")) for s in image_set.samples])
    with torch.no_grad():
        return model(batch).topk(5, dim=1).indices


def tool_cells(name, path, kwargs, image_set, sizes, pe=PEOptions()):
    m = build_model(name, str(path), kwargs)
    settings = EvalSettings(device=torch.device("cpu"), batch_size=len(image_set), workers=0, pe=pe)
    return m, {cell.size: cell for cell in sweep_cells([m], image_set, sizes, settings)}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_predictions_equal_timm_built_at_each_size(family, images, tmp_path, one_thread):
    name, kwargs, second, kind, policy, path_kind = FAMILIES[family]
    native = _native(name, kwargs, tmp_path / "native.pth")
    m, cells = tool_cells(name, tmp_path / "native.pth", kwargs, images, (224, second))
    assert isinstance(m.sizer, path_kind)
    assert pe_label(m) == kind
    for size in (224, second):
        cell = cells[size]
        assert cell.info.pe_policy == policy  # pinned: the label every row of this family records
        reference = timm_at_size(native, name, kwargs, size)
        expected = reference_top5(reference, images, size)
        assert torch.equal(top5(cell), expected), f"{family} at {size}px"
        # and the logits themselves, bit for bit (top-5 of ten classes could hide a small difference)
        module, _ = m.sizer.module_at(size)
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
        with torch.no_grad():
            assert torch.equal(module(x), reference(x)), f"{family} at {size}px"
        grid = size // (14 if "patch14" in name else 4 if "swin" in name else 16)
        assert cell.info.grid == f"{grid}x{grid}"


@pytest.mark.parametrize("family", ["rope-mixed+ape", "cait", "deit3"])
def test_antialias_gives_timms_own_resample(family, images, tmp_path, one_thread):
    """``--antialias``: the APE as timm's checkpoint filter resamples it (antialiased bicubic)."""
    name, kwargs, second, _, policy, _ = FAMILIES[family]
    native = _native(name, kwargs, tmp_path / "native.pth", seed=1)
    _, cells = tool_cells(name, tmp_path / "native.pth", kwargs, images, (second,), PEOptions(antialias=True))
    assert cells[second].info.pe_policy == policy + "-aa"
    expected = reference_top5(timm_at_size(native, name, kwargs, second, antialias=True), images, second)
    assert torch.equal(top5(cells[second]), expected)


def test_antialias_changes_the_ape_so_the_default_is_not_timms(tmp_path):
    """Both resamples are really different (so the tests above can tell them apart)."""
    name, kwargs, *_ = FAMILIES["rope-axial+ape"]
    native = _native(name, kwargs, tmp_path / "native.pth")
    plain = timm_at_size(native, name, kwargs, 384).pos_embed
    aa = timm_at_size(native, name, kwargs, 384, antialias=True).pos_embed
    assert not torch.allclose(plain, aa)


def test_swin_window_scaled_with_resampled_bias_tables(images, tmp_path, one_thread):
    name, kwargs, *_ = FAMILIES["swin"]
    native = _native(name, kwargs, tmp_path / "native.pth")
    m, cells = tool_cells(name, tmp_path / "native.pth", kwargs, images, (224, 384), PEOptions(window="scale"))
    assert cells[384].info.pe_policy == cells[224].info.pe_policy == "window-scaled+relbias-resampled"
    reference = timm_at_size(native, name, kwargs, 384, window_size=12)  # 7 * 384 / 224
    assert reference.layers[0].blocks[0].attn.relative_position_bias_table.shape[0] == 23 * 23
    assert torch.equal(top5(cells[384]), reference_top5(reference, images, 384))
    assert pe_options_of(m, PEOptions(window="scale")) == "window=scale"
    assert pe_options_of(m, PEOptions()) == ""


def test_window_scale_at_a_size_the_window_does_not_divide_is_one_line(tmp_path):
    name, kwargs, *_ = FAMILIES["swin"]
    _native(name, kwargs, tmp_path / "native.pth")
    m = build_model(name, str(tmp_path / "native.pth"), kwargs)
    with pytest.raises(ModelError, match=r"window does not scale to whole tokens at 400px; use a multiple of 32"):
        m.sizer.module_at(400, PEOptions(window="scale"))


def test_per_size_module_is_built_from_the_native_weights_and_dropped(images, tmp_path, one_thread):
    name, kwargs, *_ = FAMILIES["beit"]
    _native(name, kwargs, tmp_path / "native.pth")
    m = build_model(name, str(tmp_path / "native.pth"), kwargs)
    before = {k: v.clone() for k, v in m.module.state_dict().items()}
    module, _ = m.sizer.module_at(224)
    assert module is m.module  # at the native size: the module as loaded
    at_384, _ = m.sizer.module_at(384)
    assert at_384 is not m.module and at_384.patch_embed.img_size == (384, 384)
    settings = EvalSettings(device=torch.device("cpu"), batch_size=6, workers=0)
    sweep_cells([m], images, (384, 224), settings)
    after = m.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the native module never changes
    assert m.module.patch_embed.img_size == (224, 224)


def test_pe_options_record_what_changes_each_familys_outputs(tmp_path):
    for family, expected in (("rope-axial", ""), ("rope-mixed+ape", "ape=bicubic,antialias=false"), ("beit", "")):
        name, kwargs, *_ = FAMILIES[family]
        _native(name, kwargs, tmp_path / f"{family}.pth")
        m = build_model(name, str(tmp_path / f"{family}.pth"), kwargs)
        assert pe_options_of(m, PEOptions()) == expected


# --- through the CLI ----------------------------------------------------------------------------------------------


def _run(args):
    result = runner.invoke(app, [str(a) for a in args])
    return result


def _error_line(result):
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def test_cli_rope_run_matches_timm_and_reports_the_papers_crop_ratio(imagefolder, tmp_path, one_thread):
    """A RoPE-Mixed ViT (tiny, its weights as a checkpoint file) through ``cpvt-eval resolution``: rows, policy,
    predictions as timm's model at each size; the paper's figures are marked as measured at crop ratio 1.0."""
    name = "vit_small_patch16_rope_mixed_224"
    kwargs = dict(TINY_VIT, num_classes=1000)
    native = _native(name, kwargs, tmp_path / "rope.pth")
    args = ["resolution", "-m", "rope_mixed_vit_s", "-s", "224", "384", "--data", imagefolder]
    args += ["-c", tmp_path / "rope.pth", *(f"--model-arg={k}={v}" for k, v in kwargs.items())]
    args += ["--out", tmp_path / "run", "--workers", "0", "--batch-size", "12", "--throughput-repeats", "1"]
    result = _run(args)
    assert result.exit_code == 0, result.output
    rows = [json.loads(ln) for ln in (tmp_path / "run" / "rows.jsonl").read_text().splitlines()]
    assert [(r["img_size"], r["pe"], r["pe_policy"], r["grid"]) for r in rows] == [
        (224, "rope-mixed", "rope-mixed-kept", "14x14"),
        (384, "rope-mixed", "rope-mixed-kept", "24x24"),
    ]
    assert all(r["images_per_sec"] for r in rows)  # timed on the module of that size
    image_set = open_dataset(imagefolder)
    for size in (224, 384):
        stored = cell_predictions(tmp_path / "run", name, size)
        expected = reference_top5(timm_at_size(native, name, kwargs, size), image_set, size)
        order = stored["indices"].argsort()
        assert torch.equal(stored["top5"][order], expected)
    md = (tmp_path / "run" / "results.md").read_text()
    assert "| RoPE | vit_small_patch16_rope_mixed_224 | rope-mixed |" in md
    assert "80.9 (crop 1.0)" in md and "81.8 (crop 1.0)" in md
    assert "measured at that crop ratio; this table's images were cropped at 0.875" in md
    csv_text = (tmp_path / "run" / "results.csv").read_text().splitlines()
    header = csv_text[0].split(",")
    assert header[-1] == "published_crop_pct" and csv_text[1].endswith(",1.0000")


def test_cli_size_not_a_multiple_of_14_names_the_nearest_valid_sizes(imagefolder, tmp_path):
    name, kwargs, *_ = FAMILIES["eva02"]
    _native(name, kwargs, tmp_path / "eva.pth")
    args = ["resolution", "-m", name, "-s", "224", "384", "--data", imagefolder, "-c", tmp_path / "eva.pth"]
    args += [f"--model-arg={k}={v}" for k, v in kwargs.items()] + ["--out", tmp_path / "run", "--no-throughput"]
    result = _run(args)
    assert result.exit_code == 2
    line = _error_line(result)
    assert "size 384 is not a positive multiple of eva02_tiny_patch14_224's patch size 14" in line
    assert line.endswith("nearest valid sizes: 378 or 392")
    assert not (tmp_path / "run" / "rows.jsonl").exists()


def test_cli_swin_total_stride_and_window_option(imagefolder, tmp_path):
    name = FAMILIES["swin"][0]
    _native(name, dict(embed_dim=24, num_classes=10), tmp_path / "swin.pth")
    base = ["resolution", "-m", "swin_t", "--data", imagefolder, "-c", tmp_path / "swin.pth", "--no-throughput"]
    base += ["--model-arg=embed_dim=24", "--model-arg=num_classes=10", "--out", tmp_path / "run"]
    result = _run([*base, "-s", "400"])
    assert result.exit_code == 2 and _error_line(result).endswith("nearest valid sizes: 384 or 416")
    result = _run([*base, "-s", "384", "--window", "wide"])
    assert result.exit_code == 2 and "--window must be 'keep' or 'scale'" in _error_line(result)


def test_models_family_filter_and_published_crop_ratio(monkeypatch):
    import cpvt_eval.cli.models as cli_models

    monkeypatch.setattr(cli_models, "model_cost", lambda spec: (1, 0.5, ""))
    result = runner.invoke(app, ["models", "--family", "rope", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert all(r["pe_family"] == "rope" for r in rows.values())
    sizes, variants = ("small", "base", "large"), ("", "_mixed", "_ape", "_mixed_ape")
    expected = {f"vit_{s}_patch16_rope{v}_224" for s in sizes for v in variants}
    assert expected | {"eva02_tiny_patch14_336"} == set(rows)
    mixed = rows["vit_small_patch16_rope_mixed_224"]
    assert mixed["default_weights"] == "vit_small_patch16_rope_mixed_224.naver_in1k"
    assert (mixed["published_top1"], mixed["published_confidence"], mixed["published_crop_pct"]) == (
        80.9,
        "primary",
        1.0,
    )
    assert mixed["published_by_size"]["384"] == {"top1": 81.8, "confidence": "primary", "crop_pct": 1.0}
    result = runner.invoke(app, ["models", "--pe", "relbias", "--json"])
    names = [r["name"] for r in json.loads(result.stdout)]
    assert names == ["swin_tiny_patch4_window7_224", "beit_base_patch16_224"]
    result = runner.invoke(app, ["models", "--family", "swin"])
    assert result.exit_code == 0 and "81.2" in result.stdout
    result = runner.invoke(app, ["models", "--family", "rope", "rope_mixed_vit_s"])
    assert result.exit_code == 0 and "crop" in result.stdout  # the table may fold "crop 1.0" on a narrow terminal
    from cpvt_eval import console

    assert console._paper_cell(80.9, "primary", 1.0) == "80.9\nprimary\ncrop 1.0"
    assert console._paper_cell(72.2, "primary", None) == "72.2\nprimary"
    result = runner.invoke(app, ["models", "--family", "hyperbolic"])
    assert result.exit_code == 2 and "families: ape" in _error_line(result)


def test_curated_specs_cover_every_family():
    from cpvt_eval.models import resolve

    assert resolve("deit3_s").published[224] == (81.4, "primary")
    assert resolve("swin_t").published[224] == (81.2, "primary") and resolve("swin_t").patch_size == 32
    assert resolve("eva02_ti").patch_size == 14 and resolve("eva02_ti").native_size == 336
    assert resolve("flexivit_s").native_size == 240
    assert {resolve(n).pe for n in ("beit_b", "cait_xxs24", "rope_ape_vit_b")} == {
        "relbias",
        "ape-learned",
        "rope-axial+ape",
    }
    for spec in map(resolve, ("deit3_s", "swin_t", "beit_b", "cait_xxs24", "eva02_ti", "flexivit_s")):
        assert timm.is_model(spec.name) and timm.models.get_pretrained_cfg(spec.default_weights) is not None


def test_any_model_timm_builds_at_a_size_pit_map_ape(tmp_path):
    """PiT keeps its APE as a (1, D, H, W) map that timm's filter does not resample: built by timm at the size,
    its map resampled the DeiT way, the rest loaded as it is."""
    name, kwargs = "pit_ti_224", dict(num_classes=10)
    native = _native(name, kwargs, tmp_path / "pit.pth")
    m = build_model(name, str(tmp_path / "pit.pth"), kwargs)
    module, policy = m.sizer.module_at(384)
    assert (pe_label(m), policy) == ("ape-learned", "ape-bicubic")
    reference = timm.create_model(name, img_size=384, **kwargs).eval()
    sd = dict(native.state_dict())
    sd["pos_embed"] = torch.nn.functional.interpolate(
        native.pos_embed.detach(), size=reference.pos_embed.shape[-2:], mode="bicubic", align_corners=False
    )
    reference.load_state_dict(sd)
    x = torch.randn(2, 3, 384, 384, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(module(x), reference(x))


def test_cli_model_arg_tuple_reaches_the_constructor(imagefolder, tmp_path):
    """``--model-arg depths=1,1,1,1`` builds the 4-stage Swin with one block per stage, whose checkpoint then loads
    strictly; the row records the argument as it was typed."""
    name = FAMILIES["swin"][0]
    kwargs = dict(embed_dim=24, num_classes=10, depths=(1, 1, 1, 1))
    _native(name, kwargs, tmp_path / "swin.pth")
    args = ["resolution", "-m", "swin_t", "--data", imagefolder, "-c", tmp_path / "swin.pth", "--no-throughput"]
    args += ["--model-arg=embed_dim=24", "--model-arg=num_classes=10", "--model-arg=depths=1,1,1,1"]
    result = _run([*args, "-s", "224", "--out", tmp_path / "run", "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["model_args"] == "depths=1,1,1,1,embed_dim=24,num_classes=10"
    result = _run([*args[:-1], "--model-arg=depths=1,,1", "-s", "224", "--out", tmp_path / "bad"])
    assert result.exit_code == 2
    assert _error_line(result).endswith("--model-arg depths=1,,1: empty item in the list '1,,1'")
