"""Parity of the position-encoding maths with the reference formulas."""

import pytest
import timm
import torch
import torch.nn.functional as F

import cpvt_eval
from cpvt_eval.errors import ModelError
from cpvt_eval.models import PEG, adapt_to_size, resample_abs_pos_embed


def test_peg_is_residual_depthwise_conv_on_patch_grid_with_cls_untouched():
    torch.manual_seed(0)
    dim, h, w = 8, 5, 7
    peg = PEG(dim)
    x = torch.randn(2, 1 + h * w, dim)
    y = peg(x, (h, w), num_prefix_tokens=1)
    assert torch.equal(y[:, :1], x[:, :1])
    grid = x[:, 1:].transpose(1, 2).reshape(2, dim, h, w)
    ref = grid + F.conv2d(grid, peg.pos.weight, peg.pos.bias, padding=1, groups=dim)
    torch.testing.assert_close(y[:, 1:], ref.flatten(2).transpose(1, 2), rtol=0, atol=1e-6)
    assert peg.pos.weight.shape == (dim, 1, 3, 3)


def _cpvt_reference_forward(model, x):
    """CPVT by hand: patch embed, cls, blocks with the PEG after block 0, final norm, cls token, head."""
    b = x.shape[0]
    feat = model.patch_embed.proj(x)  # (B, D, H, W)
    h, w = feat.shape[-2:]
    tokens = feat.flatten(2).transpose(1, 2)
    if model.cls_token is not None:
        tokens = torch.cat([model.cls_token.expand(b, -1, -1), tokens], dim=1)
    n_prefix = model.num_prefix_tokens
    for i, blk in enumerate(model.blocks):
        tokens = blk(tokens)
        if i in model.peg_positions:
            conv = model.pos_block[model.peg_positions.index(i)].pos
            grid = tokens[:, n_prefix:].transpose(1, 2).reshape(b, -1, h, w)
            grid = grid + F.conv2d(grid, conv.weight, conv.bias, padding=conv.padding, groups=grid.shape[1])
            tokens = torch.cat([tokens[:, :n_prefix], grid.flatten(2).transpose(1, 2)], dim=1)
    tokens = model.norm(tokens)
    pooled = tokens[:, 0] if n_prefix else tokens.mean(dim=1)
    return model.head(pooled)


@pytest.mark.parametrize("name", ["cpvt_toy", "cpvt_toy_gap"])
@pytest.mark.parametrize("size", [56, 96])
def test_cpvt_forward_matches_hand_written_reference(name, size):
    torch.manual_seed(0)
    model = cpvt_eval.create_model(name).eval()
    adapt_to_size(model, size)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _cpvt_reference_forward(model, x), rtol=1e-5, atol=1e-5)


def test_gap_variant_has_no_cls_token_and_pools_final_normed_tokens():
    model = cpvt_eval.create_model("cpvt_ti_gap")
    assert model.cls_token is None and model.num_prefix_tokens == 0
    assert isinstance(model.fc_norm, torch.nn.Identity)


def test_ape_resampling_equals_bicubic_interpolate_with_cls_kept():
    torch.manual_seed(0)
    pe = torch.randn(1, 1 + 14 * 14, 16)
    out = resample_abs_pos_embed(pe, (24, 24), (14, 14), num_prefix_tokens=1)
    grid = pe[:, 1:].reshape(1, 14, 14, 16).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, size=(24, 24), mode="bicubic", align_corners=False, antialias=False)
    assert torch.equal(out[:, :1], pe[:, :1])
    torch.testing.assert_close(out[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, -1, 16), rtol=0, atol=0)


def test_deit_pos_embed_resampled_once_per_size_from_the_loaded_table():
    torch.manual_seed(0)
    model = timm.create_model("deit_toy").eval()
    native = model.pos_embed.detach().clone()
    assert adapt_to_size(model, 128) == "ape-bicubic"
    assert model.pos_embed.shape == (1, 1 + 32 * 32, 64)
    expected = resample_abs_pos_embed(native, (32, 32), (14, 14), 1)
    torch.testing.assert_close(model.pos_embed.detach(), expected, rtol=0, atol=0)
    adapt_to_size(model, 96)
    torch.testing.assert_close(
        model.pos_embed.detach(), resample_abs_pos_embed(native, (24, 24), (14, 14), 1), rtol=0, atol=0
    )
    adapt_to_size(model, 56)  # back at the native grid: exactly the table as loaded, nothing compounded
    assert torch.equal(model.pos_embed.detach(), native)
    adapt_to_size(model, 112)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 112, 112)).shape == (1, 10)


def test_size_not_multiple_of_patch_is_an_error():
    model = timm.create_model("cpvt_toy")
    with pytest.raises(ModelError, match="size 58 is not a multiple of the patch size 4"):
        adapt_to_size(model, 58)


def test_models_register_with_timm_and_have_paper_parameter_counts():
    def params(name):
        with torch.device("meta"):
            return sum(p.numel() for p in timm.create_model(name).parameters())

    assert params("deit_tiny_patch16_224") == 5_717_416
    # DeiT-Ti - 197x192 pos_embed + 192x9 + 192 PEG
    assert params("cpvt_ti") == 5_717_416 - 197 * 192 + 192 * 9 + 192 == 5_681_512
    assert "cpvt_ti" in timm.list_models("cpvt_*")
