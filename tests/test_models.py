"""Model families against their reference maths: CPVT variants, sin-cos and learned APE, distilled DeiT, Twins,
timm models by name, the registry and the `models` command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

import cpvt_eval
from cpvt_eval.cli import app
from cpvt_eval.errors import ModelError
from cpvt_eval.models import PEOptions, adapt_to_size, resample_abs_pos_embed, resolve

runner = CliRunner()
FAST = ["--no-throughput", "--workers", "0", "--batch-size", "6"]


def _params(name, **kwargs):
    with torch.device("meta"):
        return sum(p.numel() for p in cpvt_eval.create_model(name, **kwargs).parameters())


def _model(name, seed=0, **kwargs):
    torch.manual_seed(seed)
    return cpvt_eval.create_model(name, **kwargs).eval()


# --- CPVT variants -------------------------------------------------------------------------------------------


def test_parameter_counts_of_the_paper():
    assert _params("cpvt_s") == 21_978_856
    assert _params("cpvt_b") == 86_424_040
    assert _params("cpvt_ti_gap") == 5_681_320
    assert _params("cpvt_ti_plus") == 5_689_192
    assert _params("cpvt_ti_plus") - _params("cpvt_ti") == 4 * (192 * 9 + 192)  # four more PEGs


@pytest.mark.parametrize(
    "name, positions, gap",
    [
        ("cpvt_ti_plus", (0, 1, 2, 3, 4), False),
        ("cpvt_s_plus", (0, 1, 2, 3, 4), False),
        ("cpvt_b_plus", (0, 1, 2, 3, 4), False),
        ("cpvt_ti_gap_plus", (0, 1, 2, 3, 4), True),
        ("cpvt_s_gap_plus", (0, 1, 2, 3, 4), True),
        ("cpvt_b_gap_plus", (0, 1, 2, 3, 4), True),
        ("cpvt_b_gap", (0,), True),
    ],
)
def test_plus_and_gap_variants(name, positions, gap):
    with torch.device("meta"):
        model = cpvt_eval.create_model(name)
    assert model.peg_positions == positions and len(model.pos_block) == len(positions)
    assert (model.cls_token is None) is gap
    assert resolve(name).family == "cpvt"


def test_user_peg_positions_and_kernel():
    model = _model("cpvt_toy", peg_positions="0,3", peg_kernel=5)
    assert model.peg_positions == (0, 3)
    assert [tuple(p.pos.weight.shape) for p in model.pos_block] == [(64, 1, 5, 5)] * 2
    x = torch.randn(1, 3, 96, 96)
    adapt_to_size(model, 96)
    with torch.no_grad():
        assert model(x).shape == (1, 10)
    with pytest.raises(ModelError, match=r"PEG positions \[4\] are outside the 4 blocks"):
        cpvt_eval.create_model("cpvt_toy", peg_positions="0,4")
    with pytest.raises(ModelError, match="positive odd number"):
        cpvt_eval.create_model("cpvt_toy", peg_kernel=4)
    with pytest.raises(ModelError, match="comma-separated block indices"):
        cpvt_eval.create_model("cpvt_toy", peg_positions="a,b")


# --- fixed 2-D sin-cos APE ----------------------------------------------------------------------------------------


def _mocov3_sincos(dim, h, w, temperature=10000.0):
    """MoCo v3's build_2d_sincos_position_embedding, in numpy (rows first)."""
    grid_w, grid_h = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    pos_dim = dim // 4
    omega = 1.0 / temperature ** (np.arange(pos_dim, dtype=np.float64) / pos_dim)
    out_h = np.einsum("m,d->md", grid_h.flatten(), omega)
    out_w = np.einsum("m,d->md", grid_w.flatten(), omega)
    return np.concatenate([np.sin(out_h), np.cos(out_h), np.sin(out_w), np.cos(out_w)], axis=1)[None]


def _mae_sincos(dim, h, w):
    """MAE's get_2d_sincos_pos_embed (numpy meshgrid with w first; first half encodes the column)."""

    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid = np.stack(np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64)), axis=0)
    return np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1)[None]


def test_sincos_is_the_closed_form_at_14_and_regenerated_exactly_at_24():
    model = _model("deit_tiny_sincos")
    table = model.pos_embed.detach()
    assert torch.equal(table[:, :1], torch.zeros(1, 1, 192))  # the cls token has no position
    np.testing.assert_allclose(table[:, 1:].numpy(), _mocov3_sincos(192, 14, 14), rtol=0, atol=1e-6)
    assert adapt_to_size(model, 384) == "sincos-regenerate"
    np.testing.assert_allclose(model.pos_embed[:, 1:].detach().numpy(), _mocov3_sincos(192, 24, 24), atol=1e-6)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 384, 384)).shape == (1, 1000)
    assert adapt_to_size(model, 224) == "sincos-regenerate"
    assert torch.equal(model.pos_embed.detach(), table)


def test_sincos_resample_option_interpolates_the_loaded_table():
    model = _model("deit_toy_sincos")
    native = model.pos_embed.detach().clone()
    assert adapt_to_size(model, 96, PEOptions(sincos="resample")) == "sincos-bicubic"
    expected = resample_abs_pos_embed(native, (24, 24), (14, 14), 1)
    torch.testing.assert_close(model.pos_embed.detach(), expected, rtol=0, atol=0)
    assert not torch.allclose(model.pos_embed[:, 1:].detach(), torch.from_numpy(_mocov3_sincos(64, 24, 24)).float())


def test_sincos_in_the_mae_layout_is_regenerated_in_its_own_layout():
    model = _model("deit_toy_sincos")
    mae14 = torch.from_numpy(_mae_sincos(64, 14, 14)).float()
    with torch.no_grad():
        model.pos_embed[:, 1:] = mae14
    assert adapt_to_size(model, 96) == "sincos-regenerate-cr"
    np.testing.assert_allclose(model.pos_embed[:, 1:].detach().numpy(), _mae_sincos(64, 24, 24), atol=1e-6)


def test_a_table_that_is_not_sincos_is_not_regenerated():
    model = _model("deit_toy_sincos")
    with torch.no_grad():
        model.pos_embed.add_(0.1)
    with pytest.raises(ModelError, match="not the 2-D sin-cos formula.*--sincos resample"):
        adapt_to_size(model, 96)


# --- learned APE resampling options -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["bicubic", "bilinear", "nearest", "area"])
@pytest.mark.parametrize("antialias", [False, True])
def test_ape_interpolation_options_and_policy_names(mode, antialias):
    model = _model("deit_toy")
    native = model.pos_embed.detach().clone()
    policy = adapt_to_size(model, 128, PEOptions(ape_interpolation=mode, antialias=antialias))
    grid = native[:, 1:].reshape(1, 14, 14, 64).permute(0, 3, 1, 2)
    kw = {"align_corners": False, "antialias": antialias} if mode in ("bicubic", "bilinear") else {}
    ref = F.interpolate(grid, size=(32, 32), mode=mode, **kw).permute(0, 2, 3, 1).reshape(1, -1, 64)
    torch.testing.assert_close(model.pos_embed[:, 1:].detach(), ref, rtol=0, atol=0)
    assert torch.equal(model.pos_embed[:, :1].detach(), native[:, :1])
    suffix = "-aa" if antialias and mode in ("bicubic", "bilinear") else ""
    assert policy == f"ape-{mode}{suffix}"


def test_antialiased_downsampling_matches_timm():
    from timm.layers import resample_abs_pos_embed as timm_resample

    torch.manual_seed(0)
    pe = torch.randn(1, 1 + 24 * 24, 32)
    ours = resample_abs_pos_embed(pe, (14, 14), (24, 24), 1, "bicubic", antialias=True)
    torch.testing.assert_close(ours, timm_resample(pe, (14, 14), (24, 24), 1, "bicubic", antialias=True))


def test_bad_pe_options_are_errors():
    with pytest.raises(ModelError, match="unknown APE interpolation 'cubic'"):
        PEOptions(ape_interpolation="cubic")
    with pytest.raises(ModelError, match="--sincos must be"):
        PEOptions(sincos="exact")


# --- distilled DeiT -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [224, 384])
def test_distilled_deit_returns_the_mean_of_both_heads_like_timm(size):
    model = _model("deit_ti_distilled", embed_dim=64, depth=2, num_heads=2, num_classes=10)
    assert model.num_prefix_tokens == 2
    native = model.pos_embed.detach().clone()
    assert adapt_to_size(model, size) == "ape-bicubic"
    assert torch.equal(model.pos_embed[:, :2].detach(), native[:, :2])  # cls and dist positions kept
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        feats = model.forward_features(x)
        expected = (model.head(feats[:, 0]) + model.head_dist(feats[:, 1])) / 2
        torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-6)
        assert not torch.allclose(model.head(feats[:, 0]), expected)


def test_distilled_specs():
    spec = resolve("deit_s_distilled")
    assert spec.name == "deit_small_distilled_patch16_224" and spec.pe == "ape-learned"
    assert spec.default_weights == "deit_small_distilled_patch16_224.fb_in1k"


# --- Twins --------------------------------------------------------------------------------------------------

_TINY_TWINS = dict(embed_dims=[16, 32, 48, 64], num_heads=[1, 2, 2, 4], depths=[1, 1, 1, 1], num_classes=10)


@pytest.mark.parametrize("name", ["twins_pcpvt_small", "twins_svt_small"])
def test_twins_run_at_every_size(name):
    spec = resolve(name)
    assert spec.family == "twins" and spec.default_weights == f"{name}.in1k"
    model = _model(name, **_TINY_TWINS)
    assert len(model.pos_block) == 4  # one PEG per stage
    for size in (224, 384, 448, 512):
        assert adapt_to_size(model, size) == "peg-native"
        with torch.no_grad():
            assert model(torch.randn(1, 3, size, size)).shape == (1, 10)
    with pytest.raises(ModelError, match="size 400 is not a multiple of the patch size 32"):
        adapt_to_size(model, 400)


def test_twins_full_size_parameter_count_matches_timm():
    assert _params("twins_svt_small") == 24_060_776


# --- timm models by name ------------------------------------------------------------------------------------------


def test_timm_vit_by_name_is_resampled():
    spec = resolve("vit_tiny_patch16_224")
    assert spec.family == "timm" and spec.default_weights
    model = _model("vit_tiny_patch16_224", depth=1, num_classes=10)
    assert adapt_to_size(model, 384) == "ape-bicubic"
    with torch.no_grad():
        assert model(torch.randn(1, 3, 384, 384)).shape == (1, 10)


def test_timm_model_that_cannot_run_at_a_size_fails_clearly():
    model = _model("swin_tiny_patch4_window7_224", depths=(1, 1, 1, 1), embed_dim=24, num_heads=(1, 1, 1, 1))
    assert adapt_to_size(model, 224) == "native"
    with pytest.raises(ModelError, match="swin_tiny_patch4_window7_224 cannot run at 384px"):
        adapt_to_size(model, 384)


def test_timm_convnet_runs_as_it_is():
    model = _model("resnet18", num_classes=10)
    assert adapt_to_size(model, 320) == "native"


# --- registry ---------------------------------------------------------------------------------------------------


def test_resolve_aliases_tags_and_unknown_names():
    assert resolve("deit_ti").name == "deit_tiny_patch16_224"
    assert resolve("deit_ti.fb_dist_in1k").default_weights == "deit_tiny_patch16_224.fb_dist_in1k"
    assert resolve("twins_svt_base").pe == "peg-stages"
    with pytest.raises(ModelError, match="did you mean cpvt_ti_plus"):
        resolve("cpvt_ti_plu")


def test_published_numbers_come_from_the_shipped_table():
    assert resolve("cpvt_ti_plus").published[224] == (73.4, "primary")
    assert resolve("cpvt_ti").published[512] == (70.3, "secondary-x2")
    assert resolve("twins_svt_small").published == {}


# --- the models command ---------------------------------------------------------------------------------------


def _vit_flops(tokens, patches, dim, depth, patch, classes, pegs=0):
    """Closed form (multiply-add = 2): patch conv, per block qkv/proj/MLP and the two attention products, head."""
    block = 24 * tokens * dim**2 + 4 * tokens**2 * dim
    return 2 * patches * dim * 3 * patch**2 + depth * block + 2 * dim * classes + pegs * 2 * patches * dim * 9


def test_models_json_has_flops_with_attention_params_and_published_numbers():
    result = runner.invoke(app, ["models", "cpvt_ti_plus", "deit_ti", "deit_toy", "cpvt_toy", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    plus = rows["cpvt_ti_plus"]
    assert plus["params"] == 5_689_192 and plus["pe"] == "peg-0to4" and plus["native_size"] == 224
    assert (plus["published_top1"], plus["published_confidence"]) == (73.4, "primary")
    assert plus["published_by_size"]["384"] == {"top1": 74.2, "confidence": "secondary-x3"}
    assert plus["default_weights"] is None
    assert rows["deit_tiny_patch16_224"]["default_weights"] == "deit_tiny_patch16_224.fb_in1k"
    assert rows["deit_tiny_patch16_224"]["gflops"] == round(_vit_flops(197, 196, 192, 12, 16, 1000) / 1e9, 3)
    assert rows["cpvt_ti_plus"]["gflops"] == round(_vit_flops(197, 196, 192, 12, 16, 1000, pegs=5) / 1e9, 3)
    assert rows["deit_toy"]["gflops_img_size"] == 56
    assert math.isclose(rows["deit_toy"]["gflops"], round(_vit_flops(197, 196, 64, 4, 4, 10) / 1e9, 3))


def test_models_lists_every_registered_model_with_real_costs():
    """No stub: every registered model is built and its FLOPs traced (CaiT's class attention, EVA02's RoPE, Swin's
    windows, BEiT, CvT, Twins, the toys), as a new user's `cpvt-eval models` does."""
    from cpvt_eval.models import list_specs

    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    specs = list_specs()
    # every registered model, the toys among them, listed after the others (marked "toy": true)
    assert [r["name"] for r in rows] == [s.name for s in specs if s.family != "demo"] + [
        s.name for s in specs if s.family == "demo"
    ]
    assert {r["name"] for r in rows if r["toy"]} >= {"deit_toy", "cpvt_toy", "deit_toy_nope", "cpvt_toy_gap"}
    # GFLOPs are counted at each model's native size, and every row says which (EVA02 336, FlexiViT 240, toys 56)
    assert all(r["gflops_img_size"] == r["native_size"] for r in rows)
    sized = {r["name"]: r["gflops_img_size"] for r in rows}
    assert (sized["eva02_tiny_patch14_336"], sized["flexivit_small"], sized["cvt_13_384"]) == (336, 240, 384)
    assert (sized["deit_toy"], sized["deit_tiny_patch16_224"]) == (56, 224)
    missing = [(r["name"], r["gflops_note"]) for r in rows if r["gflops"] is None]
    assert not missing
    package = [r for r in rows if not r["name"].startswith("shift_test_")]  # other tests register such models
    assert all(r["gflops"] > 0 for r in package), [r["name"] for r in package if r["gflops"] <= 0]
    assert all(r["params"] > 0 and r["gflops_note"] == "" for r in rows)
    by_name = {r["name"]: r for r in rows}
    assert by_name["cait_xxs24_224"]["gflops"] == pytest.approx(5.047, abs=0.01)  # timm: 2.5 GMACs
    names = [r["name"] for r in rows]
    assert {"cpvt_b_gap_plus", "deit_base_distilled_patch16_224", "twins_pcpvt_large"} <= set(names)
    # --all, which once added the toys, stays accepted and changes nothing
    assert json.loads(runner.invoke(app, ["models", "--all", "--json"]).stdout) == rows


def test_a_model_whose_flops_cannot_be_counted_keeps_its_row(monkeypatch, tmp_path):
    import cpvt_eval.throughput as throughput

    monkeypatch.setenv("CPVT_EVAL_CACHE", str(tmp_path))
    real = throughput.count_flops

    def count(module, size, device=None):
        if type(module).__name__ == "Cait":
            raise AttributeError("'NoneType' object has no attribute 'next_functions'")
        return real(module, size, device)

    monkeypatch.setattr(throughput, "count_flops", count)
    result = runner.invoke(app, ["models", "cait_xxs24", "deit_toy", "--json"])
    assert result.exit_code == 0, result.output
    cait, toy = json.loads(result.stdout)
    assert cait["gflops"] is None and cait["params"] == 11_956_264
    note = "FLOPs not counted: AttributeError: 'NoneType' object has no attribute 'next_functions'"
    assert cait["gflops_note"] == note
    assert toy["gflops"] > 0 and toy["gflops_note"] == ""
    table = runner.invoke(app, ["models", "cait_xxs24"])
    assert table.exit_code == 0 and "–" in table.stdout and "FLOPs not counted" in table.stdout


def test_model_cost_is_cached_in_the_user_cache(monkeypatch, tmp_path):
    import cpvt_eval.cli.models as cli_models

    monkeypatch.setenv("CPVT_EVAL_CACHE", str(tmp_path))
    first = cli_models.model_cost(resolve("deit_toy"))
    assert len(list((tmp_path / "model-cost").glob("*.json"))) == 1
    import cpvt_eval.throughput as throughput

    monkeypatch.setattr(throughput, "count_flops", lambda *a, **k: pytest.fail("recomputed, not read from cache"))
    assert cli_models.model_cost(resolve("deit_toy")) == first


def test_models_table_and_unknown_name():
    result = runner.invoke(app, ["models", "twins_svt_small", "cpvt_ti_plus"])
    assert result.exit_code == 0, result.output
    assert "twins_svt_small" in result.stdout and "73.4" in result.stdout
    result = runner.invoke(app, ["models", "cpvt_tii"])
    assert result.exit_code == 2 and "did you mean" in result.stderr


# --- through the resolution job -------------------------------------------------------------------------------


def test_model_args_and_load_report_are_recorded_with_the_results(imagefolder, tmp_path):
    source = _model("cpvt_toy", seed=1, peg_positions="0,3", peg_kernel=5, num_classes=1000)
    sd = source.state_dict()
    sd = {k.replace(".pos.", ".proj.0.") if k.startswith("pos_block.") else k: v for k, v in sd.items()}
    path = tmp_path / "ckpt.pth"
    torch.save({"model_ema": sd}, path)
    out = tmp_path / "run"
    argv = ["resolution", "-m", "cpvt_toy", "-s", "56", "--data", str(imagefolder), "-c", str(path), "--ema"]
    argv += ["--model-arg", "peg_positions=0,3", "--model-arg", "peg_kernel=5", "--model-arg", "num_classes=1000"]
    result = runner.invoke(app, [*argv, "--out", str(out), "--verbose", *FAST])
    assert result.exit_code == 0, result.output
    assert "EMA weights" in result.stderr and "pos_block.1.proj.0.weight -> pos_block.1.pos.weight" in result.stderr
    row = json.loads((out / "rows.jsonl").read_text().splitlines()[0])
    assert row["model_args"] == "num_classes=1000,peg_kernel=5,peg_positions=0,3"
    report = json.loads((out / "load_reports.json").read_text())["cpvt_toy"]
    assert report["ema"] is True and report["nested_under"] == "model_ema" and len(report["renamed"]) == 4
    assert report["sha256"] == row["checkpoint_sha256"]
    assert json.loads((out / "provenance.json").read_text())["runs"][-1]["config"]["ema"] is True
    assert row["ema"] is True


def test_timm_model_that_cannot_run_at_a_size_stops_before_any_data_pass(imagefolder, tmp_path):
    # MLP-Mixer: its token-mixing MLP is sized by the patch count, and nothing resamples it (Swin, which this test
    # used before, now runs at 384: see test_families.py)
    path = tmp_path / "mixer.pth"
    torch.save(_model("mixer_s16_224", mlp_ratio=0.01).state_dict(), path)
    argv = ["resolution", "-m", "mixer_s16_224", "-s", "224", "384", "--data", str(imagefolder)]
    argv += ["-c", str(path), "--model-arg", "mlp_ratio=0.01", "--out", str(tmp_path / "run"), *FAST]
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "mixer_s16_224 cannot run at 384px" in lines[0]
    assert "mlp_tokens" in lines[0] and "would need" in lines[0]
    assert not (tmp_path / "run" / "rows.jsonl").exists()


# --- the data config of the weights evaluated ------------------------------------------------------------------


def test_a_tag_carries_its_own_data_config():
    """timm's resnet18d.ra4_e3600_r224_in1k normalises with 0.5, its architecture's default tag with ImageNet's."""
    tagged = resolve("resnet18d.ra4_e3600_r224_in1k")
    data = tagged.data_config(tagged.create())
    assert (data.mean, data.std, data.crop_pct) == ((0.5,) * 3, (0.5,) * 3, 0.9)
    assert data.source == "timm:resnet18d.ra4_e3600_r224_in1k"
    default = resolve("resnet18d")
    assert default.data_config(default.create()).mean == (0.485, 0.456, 0.406)
    from cpvt_eval.checkpoints import from_timm_tag

    assert from_timm_tag("resnet18d.ra4_e3600_r224_in1k")["mean"] == (0.5, 0.5, 0.5)


def test_a_tag_is_evaluated_with_its_own_transform_as_timm_does(imagefolder, tmp_path):
    """`--model TAG` with its weights as a file: every image is normalised, resized and cropped as timm's own
    pipeline does for that tag (`resolve_data_config` + `create_transform`), so the predictions are timm's."""
    import timm
    from PIL import Image

    from cpvt_eval.data import open_dataset

    tag = "resnet18d.ra4_e3600_r224_in1k"
    torch.manual_seed(3)
    model = timm.create_model(tag, pretrained=False).eval()
    ckpt = tmp_path / "r18d.pth"
    torch.save(model.state_dict(), ckpt)
    out = tmp_path / "run"
    args = ["resolution", "-m", tag, "-s", "224", "--data", imagefolder, "-c", ckpt, "--out", out]
    args += ["--crop-pct", "weights", "--interpolation", "weights", *FAST]
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    (row,) = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    half = "0.5,0.5,0.5"
    assert (row["mean"], row["std"], row["crop_pct"], row["interpolation"]) == (half, half, 0.9, "bicubic")
    assert row["data_config_source"] == f"timm:{tag}"
    cfg = timm.data.resolve_data_config(model=model)
    transform = timm.data.create_transform(**cfg)
    samples = open_dataset(imagefolder).samples
    x = torch.stack([transform(Image.open(imagefolder / s.relpath).convert("RGB")) for s in samples])
    with torch.no_grad():
        want = model(x).topk(5).indices
    from conftest import cell_predictions

    preds = cell_predictions(out, "resnet18d", 224)
    assert torch.equal(preds["top5"][preds["indices"].argsort()], want)


def test_a_checkpoints_own_metadata_sets_its_normalisation(tmp_path):
    from safetensors.torch import save_file

    from cpvt_eval.jobs.assemble import build_model

    model = _model("deit_toy", num_classes=10)
    path = tmp_path / "toy.safetensors"
    save_file(model.state_dict(), str(path), metadata={"mean": "0.5,0.4,0.3", "std": "[0.2, 0.2, 0.2]"})
    built = build_model("deit_toy", str(path), {"num_classes": 10})
    assert (built.mean, built.std) == ((0.5, 0.4, 0.3), (0.2, 0.2, 0.2))
    assert built.data.source == "toy.safetensors metadata"
    (tmp_path / "plain").mkdir()
    plain = tmp_path / "plain" / "model.safetensors"
    save_file(model.state_dict(), str(plain))
    (tmp_path / "plain" / "config.json").write_text(json.dumps({"pretrained_cfg": {"mean": [0.1, 0.2, 0.3]}}))
    built = build_model("deit_toy", str(plain), {"num_classes": 10})
    assert built.mean == (0.1, 0.2, 0.3) and built.std == (0.229, 0.224, 0.225)
    assert built.data.source == "config.json beside model.safetensors"
