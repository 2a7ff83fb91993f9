"""CPVT (ViT with a position encoding generator) and the paper's DeiT baselines, registered with timm.

All models here are timm ``VisionTransformer`` subclasses built from timm's own ``Block``/``PatchEmbed``, so the
encoder maths is timm's. What CPVT adds is in ``forward_features``: after each block listed in
``peg_positions`` the patch tokens go through a PEG (``x + depthwise_conv(x)`` on the token grid).

Each entry point is registered with timm and its ``ModelSpec`` with the tool (``spec.entry_point``), so after
``import cpvt_eval.models`` every entry point below works with ``timm.create_model``.
"""

from __future__ import annotations

from functools import partial

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ..errors import ModelError
from .pos_embed import PEG, sincos_2d_pos_embed
from .spec import DataConfig, entry_point

# DeiT/CPVT evaluation: resize to size / 0.875, bicubic, centre crop, ImageNet mean/std.
PAPER_DATA = DataConfig(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, 0.875, "bicubic")


def _pretrained_cfg(img_size: int, num_classes: int = 1000) -> dict:
    return {
        "input_size": (3, img_size, img_size),
        "crop_pct": PAPER_DATA.crop_pct,
        "interpolation": PAPER_DATA.interpolation,
        "mean": PAPER_DATA.mean,
        "std": PAPER_DATA.std,
        "num_classes": num_classes,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
    }


class CPVT(VisionTransformer):
    """ViT without absolute PE; a PEG after each block in ``peg_positions`` (paper: after block 0).

    With ``class_token=False`` (the GAP variants) the final-normed tokens are averaged before the head.
    """

    def __init__(self, peg_positions=(0,), peg_kernel: int = 3, **kwargs):
        kwargs.setdefault("norm_layer", partial(nn.LayerNorm, eps=1e-6))
        kwargs["pos_embed"] = "none"
        kwargs["dynamic_img_size"] = True  # tokens come out as NHWC, so the PEG knows the grid at any size
        if not kwargs.get("class_token", True):
            kwargs["global_pool"] = "avg"
            kwargs["fc_norm"] = False  # final norm on every token, then the mean (CPVT-GAP)
        super().__init__(**kwargs)
        depth = len(self.blocks)
        positions = tuple(sorted({int(p) for p in peg_positions}))
        if not positions:
            raise ModelError("a CPVT model needs at least one PEG position")
        bad = [p for p in positions if not 0 <= p < depth]
        if bad:
            raise ModelError(f"PEG positions {bad} are outside the {depth} blocks of this model")
        self.peg_positions = positions
        self.peg_kernel = int(peg_kernel)
        self.pos_block = nn.ModuleList([PEG(self.embed_dim, peg_kernel) for _ in positions])
        self._peg_at = {p: i for i, p in enumerate(positions)}

    def forward_features(self, x: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
        x = self.patch_embed(x)
        grid = (x.shape[1], x.shape[2])
        x = self._pos_embed(x)
        x = self.patch_drop(x)
        x = self.norm_pre(x)
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            peg = self._peg_at.get(i)
            if peg is not None:
                x = self.pos_block[peg](x, grid, self.num_prefix_tokens)
        return self.norm(x)


def _parse_positions(value) -> tuple[int, ...]:
    if isinstance(value, str):
        try:
            return tuple(int(v) for v in value.replace(" ", "").split(",") if v)
        except ValueError:
            raise ModelError(f"peg_positions must be comma-separated block indices, got {value!r}") from None
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def _strip_factory_kwargs(kwargs: dict) -> dict:
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    return kwargs


def _create_cpvt(pretrained: bool, dims: tuple[int, int, int], positions, gap: bool, **kwargs) -> CPVT:
    if pretrained:
        raise ModelError("no CPVT weights were ever published; pass your own checkpoint with --checkpoint NAME=PATH")
    kwargs = _strip_factory_kwargs(kwargs)
    embed_dim, depth, heads = dims
    positions = _parse_positions(kwargs.pop("peg_positions", positions))
    img_size = kwargs.pop("img_size", 224)
    cfg = dict(
        img_size=img_size,
        patch_size=16,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=heads,
        mlp_ratio=4,
        qkv_bias=True,
        class_token=not gap,
    )
    cfg.update(kwargs)
    model = CPVT(peg_positions=positions, **cfg)
    model.pretrained_cfg = model.default_cfg = _pretrained_cfg(img_size, model.num_classes)
    return model


_TI, _S, _B = (192, 12, 3), (384, 12, 6), (768, 12, 12)
_PLUS = (0, 1, 2, 3, 4)


@entry_point("cpvt", "peg-0", description="CPVT-Ti: DeiT-Ti backbone, PEG after block 0", data=PAPER_DATA)
def cpvt_ti(pretrained=False, **kwargs) -> CPVT:
    """CPVT-Ti: DeiT-Ti backbone, no absolute PE, one PEG after block 0."""
    return _create_cpvt(pretrained, _TI, (0,), False, **kwargs)


@entry_point("cpvt", "peg-0", description="CPVT-S: DeiT-S backbone, PEG after block 0", data=PAPER_DATA)
def cpvt_s(pretrained=False, **kwargs) -> CPVT:
    """CPVT-S: DeiT-S backbone, one PEG after block 0."""
    return _create_cpvt(pretrained, _S, (0,), False, **kwargs)


@entry_point("cpvt", "peg-0", description="CPVT-B: DeiT-B backbone, PEG after block 0", data=PAPER_DATA)
def cpvt_b(pretrained=False, **kwargs) -> CPVT:
    """CPVT-B: DeiT-B backbone, one PEG after block 0."""
    return _create_cpvt(pretrained, _B, (0,), False, **kwargs)


@entry_point("cpvt", "peg-0-gap", description="CPVT-Ti-GAP: no cls token, mean of final-normed tokens", data=PAPER_DATA)
def cpvt_ti_gap(pretrained=False, **kwargs) -> CPVT:
    """CPVT-Ti-GAP: no cls token; final norm, mean over tokens, head."""
    return _create_cpvt(pretrained, _TI, (0,), True, **kwargs)


@entry_point("cpvt", "peg-0-gap", description="CPVT-S-GAP", data=PAPER_DATA)
def cpvt_s_gap(pretrained=False, **kwargs) -> CPVT:
    return _create_cpvt(pretrained, _S, (0,), True, **kwargs)


@entry_point("cpvt", "peg-0-gap", description="CPVT-B-GAP", data=PAPER_DATA)
def cpvt_b_gap(pretrained=False, **kwargs) -> CPVT:
    return _create_cpvt(pretrained, _B, (0,), True, **kwargs)


@entry_point("cpvt", "peg-0to4", description="CPVT-Ti‡: a PEG after each of blocks 0-4", data=PAPER_DATA)
def cpvt_ti_plus(pretrained=False, **kwargs) -> CPVT:
    """CPVT-Ti‡: one PEG after each of blocks 0-4."""
    return _create_cpvt(pretrained, _TI, _PLUS, False, **kwargs)


@entry_point("cpvt", "peg-0to4", description="CPVT-S‡", data=PAPER_DATA)
def cpvt_s_plus(pretrained=False, **kwargs) -> CPVT:
    return _create_cpvt(pretrained, _S, _PLUS, False, **kwargs)


@entry_point("cpvt", "peg-0to4", description="CPVT-B‡", data=PAPER_DATA)
def cpvt_b_plus(pretrained=False, **kwargs) -> CPVT:
    return _create_cpvt(pretrained, _B, _PLUS, False, **kwargs)


@entry_point("cpvt", "peg-0to4-gap", description="CPVT-Ti-GAP‡", data=PAPER_DATA)
def cpvt_ti_gap_plus(pretrained=False, **kwargs) -> CPVT:
    """CPVT-Ti-GAP‡: no cls token, a PEG after each of blocks 0-4 (the paper's best Ti model)."""
    return _create_cpvt(pretrained, _TI, _PLUS, True, **kwargs)


@entry_point("cpvt", "peg-0to4-gap", description="CPVT-S-GAP‡", data=PAPER_DATA)
def cpvt_s_gap_plus(pretrained=False, **kwargs) -> CPVT:
    return _create_cpvt(pretrained, _S, _PLUS, True, **kwargs)


@entry_point("cpvt", "peg-0to4-gap", description="CPVT-B-GAP‡", data=PAPER_DATA)
def cpvt_b_gap_plus(pretrained=False, **kwargs) -> CPVT:
    return _create_cpvt(pretrained, _B, _PLUS, True, **kwargs)


# --- DeiT baselines of the paper's ablations (same backbone, other position encodings) -----------------------


def _create_deit_variant(pretrained: bool, dims, pe: str, **kwargs) -> VisionTransformer:
    if pretrained:
        raise ModelError(f"no published weights for this {pe} DeiT variant; pass a checkpoint with --checkpoint")
    kwargs = _strip_factory_kwargs(kwargs)
    embed_dim, depth, heads = dims
    img_size = kwargs.pop("img_size", 224)
    patch_size = kwargs.pop("patch_size", 16)
    cfg = dict(
        img_size=img_size,
        patch_size=patch_size,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=heads,
        mlp_ratio=4,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
    )
    cfg.update(kwargs)
    if pe == "none":
        cfg["pos_embed"] = "none"
        cfg["dynamic_img_size"] = True
    model = VisionTransformer(**cfg)
    if pe == "ape-sincos":
        grid = model.patch_embed.grid_size
        table = sincos_2d_pos_embed(embed_dim, grid)
        prefix = torch.zeros(1, model.num_prefix_tokens, embed_dim)  # the cls token gets no position (MoCo v3)
        model.pos_embed = nn.Parameter(torch.cat([prefix, table], dim=1), requires_grad=False)
    model.pe_kind = pe
    model.pretrained_cfg = model.default_cfg = _pretrained_cfg(img_size, model.num_classes)
    return model


@entry_point("deit", "ape-sincos", description="DeiT-Ti with fixed 2-D sin-cos PE (ablation)", data=PAPER_DATA)
def deit_tiny_sincos(pretrained=False, **kwargs) -> VisionTransformer:
    """DeiT-Ti with a fixed 2-D sin-cos absolute PE (the paper's sin-cos baseline)."""
    return _create_deit_variant(pretrained, _TI, "ape-sincos", **kwargs)


@entry_point("deit", "none", description="DeiT-Ti without position encoding (ablation)", data=PAPER_DATA)
def deit_tiny_nope(pretrained=False, **kwargs) -> VisionTransformer:
    """DeiT-Ti without any position encoding (the paper's no-PE ablation)."""
    return _create_deit_variant(pretrained, _TI, "none", **kwargs)


# --- Toy models of the offline demo: patch 4 at 56 px gives the 14x14 grid of patch 16 at 224 ---------------

_TOY = (64, 4, 2)
_TOY_KW = dict(img_size=56, patch_size=4, num_classes=10)
_TOY_SPEC = dict(native_size=56, patch_size=4, data=PAPER_DATA)


def _toy(kwargs: dict) -> dict:
    return {**_TOY_KW, **kwargs}


@entry_point("demo", "peg-0", description="toy CPVT, PEG after block 0", **_TOY_SPEC)
def cpvt_toy(pretrained=False, **kwargs) -> CPVT:
    """Toy CPVT for the offline demo: 64 dims, 4 blocks, 2 heads, patch 4, 10 classes, PEG after block 0."""
    return _create_cpvt(pretrained, _TOY, (0,), False, **_toy(kwargs))


@entry_point("demo", "peg-0-gap", description="toy CPVT-GAP", **_TOY_SPEC)
def cpvt_toy_gap(pretrained=False, **kwargs) -> CPVT:
    """Toy CPVT-GAP for the offline demo."""
    return _create_cpvt(pretrained, _TOY, (0,), True, **_toy(kwargs))


@entry_point("demo", "ape-learned", description="toy DeiT, learned absolute PE", **_TOY_SPEC)
def deit_toy(pretrained=False, **kwargs) -> VisionTransformer:
    """Toy DeiT (learned absolute PE) for the offline demo."""
    return _create_deit_variant(pretrained, _TOY, "ape-learned", **_toy(kwargs))


@entry_point("demo", "ape-sincos", description="toy DeiT, fixed 2-D sin-cos PE", **_TOY_SPEC)
def deit_toy_sincos(pretrained=False, **kwargs) -> VisionTransformer:
    """Toy DeiT with a fixed 2-D sin-cos PE for the offline demo."""
    return _create_deit_variant(pretrained, _TOY, "ape-sincos", **_toy(kwargs))


@entry_point("demo", "none", description="toy DeiT, no position encoding", **_TOY_SPEC)
def deit_toy_nope(pretrained=False, **kwargs) -> VisionTransformer:
    """Toy DeiT without position encoding for the offline demo."""
    return _create_deit_variant(pretrained, _TOY, "none", **_toy(kwargs))
