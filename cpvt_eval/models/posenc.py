"""Position encodings and the resolution policy of each PE family.

Everything that changes when a model meets a new input size lives here:

* learned absolute PE (ViT/DeiT): the patch-grid part of ``pos_embed`` is resampled to the new grid, the
  prefix tokens (cls, dist) are kept as they are; DeiT's fine-tune code uses bicubic, ``align_corners=False``
  and no antialias, which is the default;
* fixed 2-D sin-cos PE: regenerated exactly for the new grid (or resampled, on request);
* conditional PE (the PEG): a depthwise convolution that runs on any grid, nothing to do;
* position from convolutions alone (CvT: conv token embeddings and conv projections): nothing to do;
* no PE: nothing to do;
* RoPE, relative position bias, windowed attention, and the APE of models timm must rebuild at each size (CaiT,
  EVA02): ``timm_policies``, which builds timm's model at the size and loads the native weights through timm's
  checkpoint filter.

``size_adapter`` chooses how a model meets each size: ``InPlace`` (``adapt_to_size``, the model itself) or
``timm_policies.Rebuilt`` (a module per size). Either returns the module to run and the name of its policy, which
every result row records as ``pe_policy``.
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


def nearest_valid_sizes(size: int, step: int) -> list[int]:
    """The multiples of ``step`` just below and just above ``size`` (only the one above when none is below)."""
    below = size // step * step
    return [s for s in (below, below + step) if s > 0 and s != size]


def size_error(size: int, step: int, model: str | None = None) -> ModelError:
    """A size that is not a multiple of the patch size (or a pyramid's total stride), with the nearest valid ones."""
    near = " or ".join(str(s) for s in nearest_valid_sizes(size, step))
    what = f"a positive multiple of {model}'s patch size" if model else "a multiple of the patch size"
    return ModelError(f"size {size} is not {what} {step}; nearest valid sizes: {near}")


def grid_of(model: nn.Module) -> tuple[int, int] | None:
    pe = getattr(model, "patch_embed", None)
    if pe is None and getattr(model, "pe_kind", None) == "conv":
        pe = model  # CvT: the last stage's grid
    gs = getattr(pe, "grid_size", None)
    return (int(gs[0]), int(gs[1])) if gs is not None else None


def pe_kind_of(model: nn.Module) -> str:
    """``peg``, ``ape-sincos``, ``ape-learned``, ``rope-axial``/``rope-mixed`` (``+ape``), ``relbias``,
    ``relbias-window`` or ``none``, from the module itself."""
    from .timm_policies import pe_kind

    kind = pe_kind(model)
    if kind is not None:
        return kind
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


def _probe(model: nn.Module, size: int, name: str | None = None) -> None:
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
        raise size_error(size, patch)
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
            policy = ape_policy(options, "sincos" if kind == "ape-sincos" else "ape")
        model.pos_embed = nn.Parameter(new.to(model.pos_embed.device), requires_grad=False)
        _set_patch_grid(model, size, grid)
        return policy
    _set_patch_grid(model, size, grid)
    if kind == "peg":
        return "peg-native"
    return "none"


class InPlace:
    """How a model of the in-place families meets each size: the module itself, adapted by ``adapt_to_size``.

    ViT/DeiT (APE resampled), CPVT and Twins (PEG, nothing to do), and models that run at any size as they are
    (``native``, probed once per size).
    """

    def __init__(self, module: nn.Module):
        self.native = module

    def module_at(self, size: int, options: PEOptions = PEOptions()) -> tuple[nn.Module, str]:
        return self.native, adapt_to_size(self.native, size, options)

    def check(self, sizes, options: PEOptions = PEOptions()) -> None:
        check_runs_at(self.native, sizes)


def size_adapter(module: nn.Module, create=None, name: str = ""):
    """How ``module`` meets each size: ``InPlace`` for ViT/DeiT/CPVT/Twins (exact, tested) and for models with
    nothing tied to the grid; ``timm_policies.Rebuilt`` (timm builds it at each size, ``create(img_size=...)``)
    for the others: RoPE, relative position bias, windows, CaiT/EVA02 APE, anything else timm can build at a size.
    Without ``create`` the module is always adapted in place."""
    from .timm_policies import Rebuilt, grid_dependent

    if create is None or _runs_anywhere(module) or not grid_dependent(module):
        return InPlace(module)
    return Rebuilt(module, create, name or type(module).__name__)
