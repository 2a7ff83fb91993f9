"""Position encodings and the resolution policy of each PE family.

Everything that changes when a model meets a new input size lives here:

* learned absolute PE (ViT/DeiT): the patch-grid part of ``pos_embed`` is resampled to the new grid, the
  prefix tokens (cls, dist) are kept as they are; DeiT's fine-tune code uses bicubic, ``align_corners=False``
  and no antialias, which is the default;
* fixed 2-D sin-cos PE: regenerated exactly for the new grid (or resampled, on request);
* conditional PE (the PEG): a depthwise convolution that runs on any grid, nothing to do;
* position from convolutions alone (CvT: conv token embeddings and conv projections): nothing to do;
* no PE: nothing to do.

``adapt_to_size`` applies the policy and returns its name, which every result row records.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import APE_INTERPOLATIONS, PEOptions
from ..errors import ModelError


class PEG(nn.Module):
    """Position encoding generator (CPVT, Algorithm 1): ``x + depthwise_conv(x)`` on the patch-token grid.

    The prefix tokens (cls) pass around the convolution unchanged. Zero padding keeps the grid size, and the
    zero border is what lets the convolution infer absolute position.
    """

    def __init__(self, dim: int, kernel_size: int = 3):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ModelError(f"PEG kernel size must be a positive odd number, got {kernel_size}")
        self.pos = nn.Conv2d(dim, dim, kernel_size, stride=1, padding=kernel_size // 2, groups=dim, bias=True)

    def forward(self, x: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int) -> torch.Tensor:
        prefix, tokens = x[:, :num_prefix_tokens], x[:, num_prefix_tokens:]
        b, n, c = tokens.shape
        h, w = grid
        feat = tokens.transpose(1, 2).reshape(b, c, h, w)
        feat = self.pos(feat) + feat
        return torch.cat([prefix, feat.flatten(2).transpose(1, 2)], dim=1)


def resample_abs_pos_embed(
    pos_embed: torch.Tensor,
    new_grid: tuple[int, int],
    old_grid: tuple[int, int],
    num_prefix_tokens: int,
    interpolation: str = "bicubic",
    antialias: bool = False,
) -> torch.Tensor:
    """Resample the grid part of a learned ``(1, prefix + H*W, D)`` position embedding to ``new_grid``.

    Interpolation runs in float32 (``F.interpolate`` has no half bicubic on CPU) and the result takes the input
    dtype back. ``align_corners=False`` as in DeiT's fine-tune code; ``area`` and ``nearest`` take no
    ``align_corners``.
    """
    if interpolation not in APE_INTERPOLATIONS:
        raise ModelError(f"unknown APE interpolation {interpolation!r}; choose one of {', '.join(APE_INTERPOLATIONS)}")
    expected = num_prefix_tokens + old_grid[0] * old_grid[1]
    if pos_embed.shape[1] != expected:
        raise ModelError(
            f"pos_embed has {pos_embed.shape[1]} tokens, expected {expected} for a {old_grid[0]}x{old_grid[1]} grid "
            f"with {num_prefix_tokens} prefix tokens"
        )
    if tuple(new_grid) == tuple(old_grid):
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dim = pos_embed.shape[-1]
    grid = grid.float().reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    kwargs = {}
    if interpolation in ("bicubic", "bilinear"):
        kwargs = {"align_corners": False, "antialias": antialias}
    grid = F.interpolate(grid, size=tuple(new_grid), mode=interpolation, **kwargs)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)


SINCOS_ORDERS = ("rc", "cr")


def sincos_2d_pos_embed(
    dim: int, grid: tuple[int, int], temperature: float = 10000.0, order: str = "rc"
) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding ``(1, H*W, dim)``.

    Tokens run row-major over the ``(H, W)`` grid. With ``order="rc"`` (MoCo v3 layout) the channels are four
    quarters ``[sin(r * w_k), cos(r * w_k), sin(c * w_k), cos(c * w_k)]`` with ``r`` the row, ``c`` the column and
    ``w_k = 1 / temperature ** (k / (dim / 4))``; ``order="cr"`` (MAE layout) puts the column quarters first.
    Computed in float64 and returned as float32.
    """
    if dim % 4:
        raise ModelError(f"sin-cos position embedding needs a dim divisible by 4, got {dim}")
    if order not in SINCOS_ORDERS:
        raise ModelError(f"unknown sin-cos channel order {order!r}; choose one of {', '.join(SINCOS_ORDERS)}")
    h, w = grid
    rows, cols = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    pos_dim = dim // 4
    omega = 1.0 / temperature ** (torch.arange(pos_dim, dtype=torch.float64) / pos_dim)
    out_r = rows.flatten()[:, None] * omega[None, :]
    out_c = cols.flatten()[:, None] * omega[None, :]
    first, second = (out_r, out_c) if order == "rc" else (out_c, out_r)
    emb = torch.cat([first.sin(), first.cos(), second.sin(), second.cos()], dim=1)
    return emb.float().unsqueeze(0)


def sincos_order_of(table: torch.Tensor, grid: tuple[int, int], atol: float = 1e-3) -> str:
    """Which channel order a loaded sin-cos table ``(1, H*W, D)`` uses; an error when it is neither.

    Regenerating a table in another layout than the one the model was trained with would silently scramble
    positions, so a table that matches no known layout is refused (``--sincos resample`` still works).
    ``atol`` leaves room for tables stored in half precision.
    """
    best = None
    for order in SINCOS_ORDERS:
        ref = sincos_2d_pos_embed(table.shape[-1], grid, order=order)
        diff = float((table.detach().float().cpu() - ref).abs().max())
        if diff <= atol:
            return order
        best = diff if best is None else min(best, diff)
    raise ModelError(
        f"the model's sin-cos position table is not the 2-D sin-cos formula at {grid[0]}x{grid[1]} "
        f"(max difference {best:.3g}); it cannot be regenerated exactly, use --sincos resample"
    )


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
    return _side(ps)


def nearest_sizes(size: int, patch: int) -> str:
    """The valid sizes next to ``size`` (multiples of ``patch``), for error messages: ``"208 or 224"``."""
    below = (size // patch) * patch
    sizes = [s for s in (below, below + patch) if s > 0]
    return " or ".join(map(str, sizes))


def grid_of(model: nn.Module) -> tuple[int, int] | None:
    pe = getattr(model, "patch_embed", None)
    if pe is None and getattr(model, "pe_kind", None) == "conv":
        pe = model  # CvT: the last stage's grid
    gs = getattr(pe, "grid_size", None)
    return (int(gs[0]), int(gs[1])) if gs is not None else None


def pe_kind_of(model: nn.Module) -> str:
    """``peg``, ``ape-sincos``, ``ape-learned`` or ``none``, from the module itself."""
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


def _native_pos_embed(model: nn.Module) -> tuple[torch.Tensor, tuple[int, int]]:
    """The position embedding as loaded (at the native grid), kept aside so every size resamples from it."""
    if not hasattr(model, "_cpvt_native_pos_embed"):
        model._cpvt_native_pos_embed = model.pos_embed.detach().clone()
        model._cpvt_native_grid = grid_of(model)
    return model._cpvt_native_pos_embed, model._cpvt_native_grid


def _set_patch_grid(model: nn.Module, size: int, grid: tuple[int, int]) -> None:
    pe = model.patch_embed
    pe.img_size = (size, size)
    pe.grid_size = grid
    pe.num_patches = grid[0] * grid[1]
    # timm checks the input size against img_size when strict; the grid is set here instead.
    if hasattr(pe, "strict_img_size"):
        pe.strict_img_size = False


def _runs_anywhere(model: nn.Module) -> bool:
    """Model classes whose forward is known to take any size that is a multiple of ``patch_size_of``."""
    from timm.models.twins import Twins
    from timm.models.vision_transformer import VisionTransformer

    from .cvt import CvT

    return isinstance(model, (VisionTransformer, Twins, CvT))


def _probe(model: nn.Module, size: int) -> None:
    """Run one blank image at ``size`` so that a model which cannot take that size fails here, clearly."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    cfg = getattr(model, "pretrained_cfg", None) or {}
    chans = int(cfg.get("input_size", (3,))[0])
    name = cfg.get("architecture") or type(model).__name__
    try:
        with torch.inference_mode():
            model(torch.zeros(1, chans, size, size, device=device))
    except (RuntimeError, AssertionError, ValueError, IndexError, TypeError) as e:
        detail = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise ModelError(f"{name} cannot run at {size}px without changes this tool does not make: {detail}") from None


def check_runs_at(model: nn.Module, sizes) -> None:
    """Before any data pass: a model of another family (a timm model by name) must run at every size asked for,
    so that a sweep does not stop at its last size after hours of work. Known families are not run here."""
    if not _runs_anywhere(model):
        for size in sizes:
            _probe(model, size)


def adapt_to_size(model: nn.Module, size: int, options: PEOptions = PEOptions()) -> str:
    """Prepare ``model`` for ``size`` px inputs in place; return the PE policy name recorded in result rows.

    Resampling always starts from the embedding as loaded, so evaluating 384 then 512 never compounds. Models
    of other families (timm models by name) are tried once at ``size``, so one that cannot run there fails
    with a clear message before the data pass.
    """
    patch = patch_size_of(model)
    if patch and size % patch:
        raise ModelError(
            f"size {size} is not a multiple of the patch size {patch}, so the token grid would not be whole "
            f"(nearest: {nearest_sizes(size, patch)})"
        )
    kind = pe_kind_of(model)
    if not _runs_anywhere(model):
        # left as it is: its own forward either takes the size or the probe says why not
        _probe(model, size)
        return "peg-native" if kind == "peg" else "native"
    if kind == "conv":
        # CvT: position comes from the convolutions, which run on any grid; nothing is resampled
        model.set_input_size(size)
        return "conv-native"
    if not patch or getattr(model, "patch_embed", None) is None:
        return "peg-native" if kind == "peg" else "native"
    grid = (size // patch, size // patch)
    if kind in ("ape-learned", "ape-sincos"):
        native, native_grid = _native_pos_embed(model)
        num_prefix = 0 if getattr(model, "no_embed_class", False) else int(getattr(model, "num_prefix_tokens", 1))
        if kind == "ape-sincos" and options.sincos == "regenerate":
            order = sincos_order_of(native[:, num_prefix:], native_grid)
            new = sincos_2d_pos_embed(native.shape[-1], grid, order=order).to(native.dtype)
            new = torch.cat([native[:, :num_prefix], new], dim=1)
            policy = "sincos-regenerate" if order == "rc" else f"sincos-regenerate-{order}"
        else:
            new = resample_abs_pos_embed(
                native, grid, native_grid, num_prefix, options.ape_interpolation, options.antialias
            )
            policy = f"{'sincos' if kind == 'ape-sincos' else 'ape'}-{options.ape_interpolation}"
            if options.antialias and options.ape_interpolation in ("bicubic", "bilinear"):
                policy += "-aa"
        model.pos_embed = nn.Parameter(new.to(model.pos_embed.device), requires_grad=False)
        _set_patch_grid(model, size, grid)
        return policy
    _set_patch_grid(model, size, grid)
    if kind == "peg":
        return "peg-native"
    return "none"
