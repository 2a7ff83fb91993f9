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
every result row records as ``pe_policy``. The sizes a model can take at all (multiples of its patch size or
total stride) are checked here too.

The tensor maths (resampling, the sin-cos formula, the PEG) is ``pos_embed``; what a module holds (its PE kind,
grid, patch size) is read by ``introspect``. Both sit below this module and ``timm_policies``, which import
neither each other nor this module back.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..config import PEOptions
from ..errors import ModelError
from .introspect import grid_of, patch_size_of, pe_kind_of, probe
from .pos_embed import ape_policy, resample_abs_pos_embed, sincos_2d_pos_embed, sincos_order_of
from .timm_policies import Rebuilt, grid_dependent


def nearest_valid_sizes(size: int, step: int) -> list[int]:
    """The multiples of ``step`` just below and just above ``size`` (only the one above when none is below)."""
    below = size // step * step
    return [s for s in (below, below + step) if s > 0 and s != size]


def size_error(size: int, step: int, model: str | None = None) -> ModelError:
    """A size that is not a multiple of the patch size (or a pyramid's total stride), with the nearest valid ones."""
    near = " or ".join(str(s) for s in nearest_valid_sizes(size, step))
    what = f"a positive multiple of {model}'s patch size" if model else "a multiple of the patch size"
    return ModelError(f"size {size} is not {what} {step}; nearest valid sizes: {near}")


def check_sizes(sizes: Iterable[int], patch: int, model: str) -> None:
    """Every size must be a positive multiple of the patch size (or total stride); the error names the nearest
    valid sizes (EVA02, patch 14: 384 -> 378 or 392)."""
    for s in sizes:
        if s <= 0 or (patch and s % patch):
            raise size_error(s, patch or 1, model)


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


def check_runs_at(model: nn.Module, sizes) -> None:
    """Before any data pass: a model of another family (a timm model by name) must run at every size asked for,
    so that a sweep does not stop at its last size after hours of work. Known families are not run here."""
    if not _runs_anywhere(model):
        for size in sizes:
            probe(model, size)


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
        probe(model, size)
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
    if create is None or _runs_anywhere(module) or not grid_dependent(module):
        return InPlace(module)
    return Rebuilt(module, create, name or type(module).__name__)
