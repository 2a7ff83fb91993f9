"""What a built module holds that its resolution policy depends on, read off the module itself: its PE kind,
patch grid and patch size (or total stride), and whether it runs at a size at all (a one-image probe).

``pe_kind_of`` is the one place a module's PE kind is decided; a result row records the spec's PE label when the
spec has one and this kind otherwise (``jobs.assemble.pe_label``).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ModelError


def _side(value) -> int:
    return int(value[0] if isinstance(value, (tuple, list)) else value)


def patch_size_of(model: nn.Module) -> int:
    """What every input size must be a multiple of: the patch size of a ViT-style model, the total stride of the
    patch embeddings of a pyramid model (Twins: 4*2*2*2 = 32), or 0 when there is no patch embedding."""
    stride = getattr(model, "total_stride", None)  # a model that states it (CvT: 4*2*2 = 16)
    if isinstance(stride, int):
        return stride
    stages = getattr(model, "patch_embeds", None)
    if isinstance(stages, nn.ModuleList) and len(stages):
        total = 1
        for stage in stages:
            total *= _side(getattr(stage, "patch_size", 1))
        return total
    pe = getattr(model, "patch_embed", None)
    ps = getattr(pe, "patch_size", None)
    if ps is None:
        return 0
    # A pyramid after its patch embedding (Swin: patch 4, then three 2x merges) needs the total stride.
    reductions = [int(f.get("reduction", 0)) for f in getattr(model, "feature_info", None) or [] if isinstance(f, dict)]
    return max([_side(ps), *reductions])


def grid_of(model: nn.Module) -> tuple[int, int] | None:
    pe = getattr(model, "patch_embed", None)
    if pe is None and getattr(model, "pe_kind", None) == "conv":
        pe = model  # CvT: the last stage's grid
    gs = getattr(pe, "grid_size", None)
    return (int(gs[0]), int(gs[1])) if gs is not None else None


def relbias_tables(module: nn.Module) -> list[str]:
    """The names of the relative position bias tables (BEiT, Swin), empty without any."""
    return [n for n, _ in module.named_parameters() if n.endswith("relative_position_bias_table")]


def is_windowed(module: nn.Module) -> bool:
    """Windowed attention (Swin and its kin): a block that partitions the grid into windows."""
    return any(hasattr(m, "window_size") and hasattr(m, "shift_size") for m in module.modules())


def rope_kind(module: nn.Module) -> str | None:
    """``mixed`` (learned frequencies, RoPE-Mixed), ``axial`` (fixed frequencies), or None without RoPE."""
    rope = getattr(module, "rope", None)
    if not isinstance(rope, nn.Module):
        return None
    if getattr(module, "rope_mixed", False) or any(isinstance(p, nn.Parameter) for p in rope.parameters()):
        return "mixed"
    return "axial"


def has_learned_ape(module: nn.Module) -> bool:
    return isinstance(getattr(module, "pos_embed", None), nn.Parameter)


def pe_kind_of(model: nn.Module) -> str:
    """``peg``, ``ape-sincos``, ``ape-learned``, ``rope-axial``/``rope-mixed`` (``+ape``), ``relbias``,
    ``relbias-window``, ``conv`` or ``none``, from the module itself."""
    rope = rope_kind(model)
    if rope is not None:
        return f"rope-{rope}" + ("+ape" if has_learned_ape(model) else "")
    if is_windowed(model):
        return "relbias-window"  # Swin's tables, or Swin V2's continuous bias (an MLP of relative coordinates)
    if relbias_tables(model):
        return "relbias"
    if getattr(model, "pos_block", None) is not None or any(
        "pos_block" in n or "pos_blocks" in n for n, _ in model.named_modules()
    ):
        return "peg"
    pe = getattr(model, "pos_embed", None)
    if isinstance(pe, torch.Tensor):
        if getattr(model, "pe_kind", None) == "ape-sincos":
            return "ape-sincos"
        return "ape-learned"
    return getattr(model, "pe_kind", "none")


def probe(model: nn.Module, size: int, name: str | None = None) -> None:
    """Run one blank image at ``size`` so that a model which cannot take that size fails here, in one line that
    says why and what it would need."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    cfg = getattr(model, "pretrained_cfg", None) or {}
    chans = int(cfg.get("input_size", (3,))[0]) if isinstance(cfg, dict) else 3
    name = name or (cfg.get("architecture") if isinstance(cfg, dict) else None) or type(model).__name__
    try:
        with torch.inference_mode():
            model(torch.zeros(1, chans, size, size, device=device))
    except (RuntimeError, AssertionError, ValueError, IndexError, TypeError) as e:
        detail = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)[:300]
        raise ModelError(
            f"{name} cannot run at {size}px: {detail}; it would need a resolution policy for this model, which "
            f"this tool does not have"
        ) from None
