"""Position-embedding maths, free of any model dispatch: the PEG module, resampling a learned table, the 2-D
sin-cos formula, and the label of a resampled APE.

Nothing here looks at which family a model is; ``posenc`` (the models meeting a new size in place) and
``timm_policies`` (the models timm rebuilds at each size) both build on these, and ``checkpoints`` uses them to
fit a table trained at another grid.
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
    grid = grid.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    grid = resample_pos_map(grid, new_grid, interpolation, antialias)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat([prefix, grid], dim=1)


def resample_pos_map(
    pos_map: torch.Tensor, new_grid: tuple[int, int], interpolation: str = "bicubic", antialias: bool = False
) -> torch.Tensor:
    """Resample a position embedding laid out as a ``(1, D, H, W)`` map (the grid part of a token table, or PiT's
    own layout) to ``new_grid``, in float32, the DeiT way by default; the result takes the input dtype back."""
    if interpolation not in APE_INTERPOLATIONS:
        raise ModelError(f"unknown APE interpolation {interpolation!r}; choose one of {', '.join(APE_INTERPOLATIONS)}")
    kwargs = {}
    if interpolation in ("bicubic", "bilinear"):
        kwargs = {"align_corners": False, "antialias": antialias}
    out = F.interpolate(pos_map.float(), size=tuple(new_grid), mode=interpolation, **kwargs)
    return out.to(pos_map.dtype)


def ape_policy(options: PEOptions, kind: str = "ape") -> str:
    """The policy label of a resampled APE: ``ape-bicubic``, ``ape-bicubic-aa`` (antialiased), ``ape-nearest``..."""
    policy = f"{kind}-{options.ape_interpolation}"
    if options.antialias and options.ape_interpolation in ("bicubic", "bilinear"):
        policy += "-aa"
    return policy


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
