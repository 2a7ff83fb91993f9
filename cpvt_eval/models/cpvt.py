"""CPVT (ViT with a position encoding generator) and the paper's DeiT baselines, registered with timm.

All models here are timm ``VisionTransformer`` subclasses built from timm's own ``Block``/``PatchEmbed``, so the
encoder maths is timm's. What CPVT adds is in ``forward_features``: after each block listed in
``peg_positions`` the patch tokens go through a PEG (``x + depthwise_conv(x)`` on the token grid).

Each entry point is registered with timm and its ``ModelSpec`` with the tool (``spec.entry_point``), so after
``import cpvt_eval.models`` every entry point below works with ``timm.create_model``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ..errors import ModelError
from .pos_embed import PEG, sincos_2d_pos_embed
from .spec import DataConfig, entry_point
from .toys import CLASSES, shipped_weights

# DeiT/CPVT evaluation: resize to size / 0.875, bicubic, centre crop, ImageNet mean/std.
PAPER_DATA = DataConfig(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, 0.875, "bicubic")


def timm_pretrained_cfg(
    img_size: int, num_classes: int, data: DataConfig = PAPER_DATA, first_conv: str = "patch_embed.proj"
) -> dict:
    """timm's ``pretrained_cfg`` of a model built in this package: input size, ``data``'s transform, stem, head."""
    return {
        "input_size": (3, img_size, img_size),
        "crop_pct": data.crop_pct,
        "interpolation": data.interpolation,
        "mean": data.mean,
        "std": data.std,
        "num_classes": num_classes,
        "first_conv": first_conv,
        "classifier": "head",
    }


def strip_factory_kwargs(kwargs: dict) -> dict:
    """``kwargs`` without the ones ``timm.create_model`` adds for its own pretrained loading (unused here)."""
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    return kwargs


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


def _deit_args(dims: tuple[int, int, int], kwargs: dict, **fixed) -> dict:
    """timm ``VisionTransformer`` arguments of a DeiT backbone ``(embed_dim, depth, heads)`` at 224 with patch 16,
    then ``fixed``, then ``kwargs`` over them all."""
    embed_dim, depth, heads = dims
    cfg = dict(
        img_size=224, patch_size=16, embed_dim=embed_dim, depth=depth, num_heads=heads, mlp_ratio=4, qkv_bias=True
    )
    cfg.update(fixed)
    cfg.update(kwargs)
    return cfg


def _create_cpvt(pretrained: bool, dims: tuple[int, int, int], positions, gap: bool, **kwargs) -> CPVT:
    if pretrained:
        raise ModelError("no CPVT weights were ever published; pass your own checkpoint with --checkpoint NAME=PATH")
    kwargs = strip_factory_kwargs(kwargs)
    positions = _parse_positions(kwargs.pop("peg_positions", positions))
    cfg = _deit_args(dims, kwargs, class_token=not gap)
    model = CPVT(peg_positions=positions, **cfg)
    model.pretrained_cfg = model.default_cfg = timm_pretrained_cfg(cfg["img_size"], model.num_classes)
    return model


def _create_deit_variant(pretrained: bool, dims, pe: str, **kwargs) -> VisionTransformer:
    if pretrained:
        raise ModelError(f"no published weights for this {pe} DeiT variant; pass a checkpoint with --checkpoint")
    cfg = _deit_args(dims, strip_factory_kwargs(kwargs), norm_layer=partial(nn.LayerNorm, eps=1e-6))
    if pe == "none":
        cfg["pos_embed"] = "none"
        cfg["dynamic_img_size"] = True
    model = VisionTransformer(**cfg)
    if pe == "ape-sincos":
        embed_dim = dims[0]
        table = sincos_2d_pos_embed(embed_dim, model.patch_embed.grid_size)
        prefix = torch.zeros(1, model.num_prefix_tokens, embed_dim)  # the cls token gets no position (MoCo v3)
        model.pos_embed = nn.Parameter(torch.cat([prefix, table], dim=1), requires_grad=False)
    model.pe_kind = pe
    model.pretrained_cfg = model.default_cfg = timm_pretrained_cfg(cfg["img_size"], model.num_classes)
    return model


# --- The entry points: one row each in ``_VARIANTS``, read by ``_register`` (the spec) and ``_create`` (the model)

_TI, _S, _B = (192, 12, 3), (384, 12, 6), (768, 12, 12)  # DeiT backbones: embed_dim, depth, heads
_TOY = (64, 4, 2)
_PEG0, _PLUS = (0,), (0, 1, 2, 3, 4)

# Toy models of the offline demo (family ``demo``): patch 4 at 56 px gives the 14x14 grid of patch 16 at 224
_TOY_KW = dict(img_size=56, patch_size=4, num_classes=10)
_TOY_SPEC = dict(native_size=56, patch_size=4, data=PAPER_DATA)


@dataclass(frozen=True)
class _Variant:
    """One entry point's model and the spec fields that are not derived from it.

    ``pegs`` lists the blocks a PEG follows (a CPVT model, ``gap``: no cls token, mean of the final-normed
    tokens); empty, the model is a DeiT whose position encoding is ``deit_pe``.
    """

    family: str
    description: str
    dims: tuple[int, int, int]
    pegs: tuple[int, ...] = ()
    gap: bool = False
    deit_pe: str = ""

    @property
    def pe(self) -> str:
        """The PE label of the published-results table: ``peg-0``, ``peg-0to4-gap``, ..., or the DeiT's."""
        if not self.pegs:
            return self.deit_pe
        first, last = self.pegs[0], self.pegs[-1]
        label = f"peg-{first}" if first == last else f"peg-{first}to{last}"
        return f"{label}-gap" if self.gap else label


_VARIANTS = {
    "cpvt_ti": _Variant("cpvt", "CPVT-Ti: DeiT-Ti backbone, PEG after block 0", _TI, _PEG0),
    "cpvt_s": _Variant("cpvt", "CPVT-S: DeiT-S backbone, PEG after block 0", _S, _PEG0),
    "cpvt_b": _Variant("cpvt", "CPVT-B: DeiT-B backbone, PEG after block 0", _B, _PEG0),
    "cpvt_ti_gap": _Variant("cpvt", "CPVT-Ti-GAP: no cls token, mean of final-normed tokens", _TI, _PEG0, gap=True),
    "cpvt_s_gap": _Variant("cpvt", "CPVT-S-GAP", _S, _PEG0, gap=True),
    "cpvt_b_gap": _Variant("cpvt", "CPVT-B-GAP", _B, _PEG0, gap=True),
    "cpvt_ti_plus": _Variant("cpvt", "CPVT-Ti‡: a PEG after each of blocks 0-4", _TI, _PLUS),
    "cpvt_s_plus": _Variant("cpvt", "CPVT-S‡", _S, _PLUS),
    "cpvt_b_plus": _Variant("cpvt", "CPVT-B‡", _B, _PLUS),
    "cpvt_ti_gap_plus": _Variant("cpvt", "CPVT-Ti-GAP‡", _TI, _PLUS, gap=True),
    "cpvt_s_gap_plus": _Variant("cpvt", "CPVT-S-GAP‡", _S, _PLUS, gap=True),
    "cpvt_b_gap_plus": _Variant("cpvt", "CPVT-B-GAP‡", _B, _PLUS, gap=True),
    # DeiT baselines of the paper's ablations (same backbone, other position encodings)
    "deit_tiny_sincos": _Variant("deit", "DeiT-Ti with fixed 2-D sin-cos PE (ablation)", _TI, deit_pe="ape-sincos"),
    "deit_tiny_nope": _Variant("deit", "DeiT-Ti without position encoding (ablation)", _TI, deit_pe="none"),
    "cpvt_toy": _Variant("demo", "toy CPVT, PEG after block 0", _TOY, _PEG0),
    "cpvt_toy_gap": _Variant("demo", "toy CPVT-GAP", _TOY, _PEG0, gap=True),
    "deit_toy": _Variant("demo", "toy DeiT, learned absolute PE", _TOY, deit_pe="ape-learned"),
    "deit_toy_sincos": _Variant("demo", "toy DeiT, fixed 2-D sin-cos PE", _TOY, deit_pe="ape-sincos"),
    "deit_toy_nope": _Variant("demo", "toy DeiT, no position encoding", _TOY, deit_pe="none"),
}


def _register(fn: Callable) -> Callable:
    """``entry_point`` for the model function ``fn``, with the spec of its row in ``_VARIANTS``."""
    variant = _VARIANTS[fn.__name__]
    spec = dict(data=PAPER_DATA)
    if variant.family == "demo":
        # a toy with weights shipped in the package loads them by name, and their classes are the demo world's
        shipped = shipped_weights(fn.__name__)
        spec = {**_TOY_SPEC, **(dict(default_weights=str(shipped), labels=CLASSES) if shipped else {})}
    return entry_point(variant.family, variant.pe, description=variant.description, **spec)(fn)


def _create(name: str, pretrained: bool, **kwargs) -> VisionTransformer:
    """The model of row ``name`` of ``_VARIANTS``; ``kwargs`` (from ``timm.create_model``) override its defaults."""
    variant = _VARIANTS[name]
    if variant.family == "demo":
        kwargs = {**_TOY_KW, **kwargs}
    if variant.pegs:
        return _create_cpvt(pretrained, variant.dims, variant.pegs, variant.gap, **kwargs)
    return _create_deit_variant(pretrained, variant.dims, variant.deit_pe, **kwargs)


@_register
def cpvt_ti(pretrained=False, **kwargs) -> CPVT:
    """CPVT-Ti: DeiT-Ti backbone, no absolute PE, one PEG after block 0."""
    return _create("cpvt_ti", pretrained, **kwargs)


@_register
def cpvt_s(pretrained=False, **kwargs) -> CPVT:
    """CPVT-S: DeiT-S backbone, one PEG after block 0."""
    return _create("cpvt_s", pretrained, **kwargs)


@_register
def cpvt_b(pretrained=False, **kwargs) -> CPVT:
    """CPVT-B: DeiT-B backbone, one PEG after block 0."""
    return _create("cpvt_b", pretrained, **kwargs)


@_register
def cpvt_ti_gap(pretrained=False, **kwargs) -> CPVT:
    """CPVT-Ti-GAP: no cls token; final norm, mean over tokens, head."""
    return _create("cpvt_ti_gap", pretrained, **kwargs)


@_register
def cpvt_s_gap(pretrained=False, **kwargs) -> CPVT:
    return _create("cpvt_s_gap", pretrained, **kwargs)


@_register
def cpvt_b_gap(pretrained=False, **kwargs) -> CPVT:
    return _create("cpvt_b_gap", pretrained, **kwargs)


@_register
def cpvt_ti_plus(pretrained=False, **kwargs) -> CPVT:
    """CPVT-Ti‡: one PEG after each of blocks 0-4."""
    return _create("cpvt_ti_plus", pretrained, **kwargs)


@_register
def cpvt_s_plus(pretrained=False, **kwargs) -> CPVT:
    return _create("cpvt_s_plus", pretrained, **kwargs)


@_register
def cpvt_b_plus(pretrained=False, **kwargs) -> CPVT:
    return _create("cpvt_b_plus", pretrained, **kwargs)


@_register
def cpvt_ti_gap_plus(pretrained=False, **kwargs) -> CPVT:
    """CPVT-Ti-GAP‡: no cls token, a PEG after each of blocks 0-4 (the paper's best Ti model)."""
    return _create("cpvt_ti_gap_plus", pretrained, **kwargs)


@_register
def cpvt_s_gap_plus(pretrained=False, **kwargs) -> CPVT:
    return _create("cpvt_s_gap_plus", pretrained, **kwargs)


@_register
def cpvt_b_gap_plus(pretrained=False, **kwargs) -> CPVT:
    return _create("cpvt_b_gap_plus", pretrained, **kwargs)


@_register
def deit_tiny_sincos(pretrained=False, **kwargs) -> VisionTransformer:
    """DeiT-Ti with a fixed 2-D sin-cos absolute PE (the paper's sin-cos baseline)."""
    return _create("deit_tiny_sincos", pretrained, **kwargs)


@_register
def deit_tiny_nope(pretrained=False, **kwargs) -> VisionTransformer:
    """DeiT-Ti without any position encoding (the paper's no-PE ablation)."""
    return _create("deit_tiny_nope", pretrained, **kwargs)


@_register
def cpvt_toy(pretrained=False, **kwargs) -> CPVT:
    """Toy CPVT for the offline demo: 64 dims, 4 blocks, 2 heads, patch 4, 10 classes, PEG after block 0."""
    return _create("cpvt_toy", pretrained, **kwargs)


@_register
def cpvt_toy_gap(pretrained=False, **kwargs) -> CPVT:
    """Toy CPVT-GAP for the offline demo."""
    return _create("cpvt_toy_gap", pretrained, **kwargs)


@_register
def deit_toy(pretrained=False, **kwargs) -> VisionTransformer:
    """Toy DeiT (learned absolute PE) for the offline demo."""
    return _create("deit_toy", pretrained, **kwargs)


@_register
def deit_toy_sincos(pretrained=False, **kwargs) -> VisionTransformer:
    """Toy DeiT with a fixed 2-D sin-cos PE for the offline demo."""
    return _create("deit_toy_sincos", pretrained, **kwargs)


@_register
def deit_toy_nope(pretrained=False, **kwargs) -> VisionTransformer:
    """Toy DeiT without position encoding for the offline demo."""
    return _create("deit_toy_nope", pretrained, **kwargs)
