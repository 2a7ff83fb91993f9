"""Specs of the models timm defines (its entry points), as the tool presents them: family, PE kind, weights."""

from __future__ import annotations

from .spec import ModelSpec, register


def _add(name, family, pe, aliases=(), weights=None, native=224, patch=16, description="", **create_kwargs):
    register(ModelSpec(name, family, pe, native, patch, tuple(aliases), weights, create_kwargs, description))


for _size, _alias, _title in (("tiny", "ti", "Ti"), ("small", "s", "S"), ("base", "b", "B")):
    _add(
        f"deit_{_size}_patch16_224",
        "deit",
        "ape-learned",
        (f"deit_{_alias}",),
        f"deit_{_size}_patch16_224.fb_in1k",
        description=f"DeiT-{_title}, learned absolute PE",
    )
for _size, _alias, _title in (("tiny", "ti", "Ti"), ("small", "s", "S"), ("base", "b", "B")):
    # timm's distilled DeiT: cls and dist tokens (two prefix tokens, kept as they are when the PE is resampled);
    # in eval mode the output is the mean of the class and distillation heads, as in DeiT's code.
    _add(
        f"deit_{_size}_distilled_patch16_224",
        "deit",
        "ape-learned",
        (f"deit_{_alias}_distilled",),
        f"deit_{_size}_distilled_patch16_224.fb_in1k",
        description=f"DeiT-{_title} distilled: cls + dist tokens, mean of both heads",
    )
for _kind, _title in (("pcpvt", "PCPVT"), ("svt", "SVT")):
    for _size in ("small", "base", "large"):
        # Twins: a pyramid of four stages, a PEG (PosConv) after the first block of each; sizes multiple of 32
        _add(
            f"twins_{_kind}_{_size}",
            "twins",
            "peg-stages",
            weights=f"twins_{_kind}_{_size}.in1k",
            patch=32,
            description=f"Twins-{_title}-{_size[0].upper()}: PEG after the first block of each stage",
        )

# Other position-encoding families, each evaluated at a new size as timm builds it there (``timm_policies``).
_ROPE_SIZES = (("small", "s", "S"), ("base", "b", "B"), ("large", "l", "L"))
for _size, _alias, _title in _ROPE_SIZES:
    for _mixed in (False, True):
        for _ape in (False, True):
            _variant = ("_mixed" if _mixed else "") + ("_ape" if _ape else "")
            # RoPE-ViT (Heo et al., ECCV 2024), naver's weights; the paper's 224/384 table is at crop ratio 1.0
            _add(
                f"vit_{_size}_patch16_rope{_variant}_224",
                "rope-vit",
                ("rope-mixed" if _mixed else "rope-axial") + ("+ape" if _ape else ""),
                (f"rope{_variant}_vit_{_alias}",),
                f"vit_{_size}_patch16_rope{_variant}_224.naver_in1k",
                description=f"RoPE-ViT-{_title}: "
                + ("RoPE-Mixed (learned frequencies)" if _mixed else "axial RoPE")
                + (" + learned APE" if _ape else ""),
            )
for _size, _alias, _title in (("small", "s", "S"), ("base", "b", "B")):
    _add(
        f"deit3_{_size}_patch16_224",
        "deit3",
        "ape-learned",
        (f"deit3_{_alias}",),
        f"deit3_{_size}_patch16_224.fb_in1k",
        description=f"DeiT III ViT-{_title}: learned APE without a cls slot, LayerScale",
    )
_add(
    "swin_tiny_patch4_window7_224",
    "swin",
    "relbias-window",
    ("swin_t",),
    "swin_tiny_patch4_window7_224.ms_in1k",
    patch=32,
    description="Swin-T: relative position bias in 7x7 shifted windows; sizes multiple of 32",
)
_add(
    "beit_base_patch16_224",
    "beit",
    "relbias",
    ("beit_b",),
    "beit_base_patch16_224.in22k_ft_in22k_in1k",
    description="BEiT-B: relative position bias over the whole grid (ImageNet-22k pre-trained)",
)
_add(
    "cait_xxs24_224",
    "cait",
    "ape-learned",
    ("cait_xxs24",),
    "cait_xxs24_224.fb_dist_in1k",
    description="CaiT-XXS24: learned APE without a cls slot, class attention at the end",
)
_add(
    "eva02_tiny_patch14_336",
    "eva02",
    "rope-axial+ape",
    ("eva02_ti",),
    "eva02_tiny_patch14_336.mim_in22k_ft_in1k",
    native=336,
    patch=14,
    description="EVA02-Ti: axial RoPE + learned APE, patch 14 (sizes 224, 392, 448, 518, ...)",
)
_add(
    "flexivit_small",
    "flexivit",
    "ape-learned",
    ("flexivit_s",),
    "flexivit_small.1200ep_in1k",
    native=240,
    description="FlexiViT-S: learned APE, trained at 240 px",
)
