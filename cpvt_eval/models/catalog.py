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
