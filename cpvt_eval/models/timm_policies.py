"""Resolution policies of the models timm rebuilds at each size: RoPE, relative position bias, windows, CaiT/EVA02 APE.

These models hold state that depends on the input grid outside a plain ``pos_embed`` (rotary frequencies over the
token grid, relative position bias tables, window attention masks, a patch grid the forward checks). timm knows how
to meet a new size: it builds the model at that size (``timm.create_model(name, img_size=s)``) and its model
module's ``checkpoint_filter_fn`` resamples what the native weights hold for the old grid (relative position bias
tables). This module uses exactly that, and writes none of it again, with one exception: every learned absolute
PE is resampled the DeiT way (``pos_embed.resample_abs_pos_embed``: bicubic, no antialias by default; ``--antialias``
gives timm's antialiased resample), so that a table compares every family's APE alike.

A ``Rebuilt`` sizer keeps the native module (the weights as loaded) and builds one module per size from its state
dict, on the native module's device; the engine drops it after the pass. What a model does at a new size is named
by its ``pe_policy`` label, from its parts:

==================================  ===========================================================================
``rope-regenerated``                axial RoPE: frequencies over the new grid, computed by timm at build time
``rope-mixed-kept``                 RoPE-Mixed: learned frequencies kept, positions of the new grid
``relbias-resampled``               relative position bias over the whole grid (BEiT): tables resampled
``window-padded``                   windowed attention (Swin), timm's default: window kept, grid padded to it
``window-scaled+relbias-resampled`` ``--window scale``: window scaled with the grid, bias tables resampled
``ape-bicubic`` (``-aa``, ...)      learned APE resampled as ``--ape-interp``/``--antialias`` say
``timm-rebuilt``                    none of the above: timm builds it at the size and the weights load as they are
==================================  ===========================================================================

joined with ``+`` in that order (``rope-regenerated+ape-bicubic`` for EVA02 and RoPE+APE ViTs). The label is the
policy the model meets every size with; at the native size it changes nothing.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from math import gcd

import torch
from torch import nn

from ..config import PEOptions
from ..errors import ModelError
from .introspect import grid_of, has_learned_ape, is_windowed, probe, relbias_tables, rope_kind
from .pos_embed import ape_policy, resample_abs_pos_embed, resample_pos_map

WINDOW_CHOICES = ("keep", "scale")


def grid_dependent(module: nn.Module) -> bool:
    """Whether the module holds anything tied to its input grid that a rebuild at another size must redo."""
    from timm.layers import PatchEmbed

    return (
        rope_kind(module) is not None
        or bool(relbias_tables(module))
        or has_learned_ape(module)
        or any(isinstance(m, PatchEmbed) for m in module.modules())
    )


def policy_label(module: nn.Module, options: PEOptions = PEOptions()) -> str:
    """The ``pe_policy`` a rebuilt module is evaluated under (see the module docstring for the labels)."""
    parts = []
    rope = rope_kind(module)
    if rope == "axial":
        parts.append("rope-regenerated")
    elif rope == "mixed":
        parts.append("rope-mixed-kept")
    tables = relbias_tables(module)
    if is_windowed(module) and options.window == "scale":
        parts.append("window-scaled+relbias-resampled" if tables else "window-scaled")
    elif is_windowed(module):
        parts.append("window-padded")
    elif tables:
        parts.append("relbias-resampled")
    if has_learned_ape(module):
        parts.append(ape_policy(options))
    return "+".join(parts) or "timm-rebuilt"


def _filter_fn(module: nn.Module) -> Callable | None:
    """The ``checkpoint_filter_fn`` of the timm module that defines the model's class, if it has one."""
    try:
        source = importlib.import_module(type(module).__module__)
    except ImportError:
        return None
    fn = getattr(source, "checkpoint_filter_fn", None)
    return fn if callable(fn) else None


def _native_size(module: nn.Module) -> int | None:
    pe = getattr(module, "patch_embed", None)
    size = getattr(pe, "img_size", None)
    if size is None:
        return None
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def _short(e: BaseException) -> str:
    text = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
    return text[:300] or type(e).__name__


class Rebuilt:
    """A model timm builds anew at each size, loaded from the native module's weights through timm's filter.

    Args:
        native: the module as built and loaded at its native size (kept; every size starts from its weights).
        create: builds the same model with random weights; keyword arguments (``img_size``, ``window_size``) say
            the size.
        name: the model name, for messages.
    """

    def __init__(self, native: nn.Module, create: Callable[..., nn.Module], name: str):
        self.native = native
        self.create = create
        self.name = name
        self.native_size = _native_size(native)
        self.native_grid = grid_of(native)
        self.filter_fn = _filter_fn(native)

    def policy(self, options: PEOptions) -> str:
        return policy_label(self.native, options)

    def _size_kwargs(self, size: int, options: PEOptions) -> dict:
        kwargs: dict = {"img_size": size}
        if options.window == "scale" and is_windowed(self.native):
            kwargs["window_size"] = self._scaled_window(size)
        return kwargs

    def _scaled_window(self, size: int):
        """Each stage's window scaled with the grid (Swin-T at 384: 7 -> 12), as an int when all stages agree."""
        ref_windows = getattr(self.native, "_ref_window_sizes", None)
        if ref_windows is None or self.native_size is None:
            raise ModelError(f"{self.name}: --window scale is not supported for this model; use --window keep")
        windows = []
        for wh in ref_windows:
            if any(size * w % self.native_size for w in wh):
                step = max(self.native_size // gcd(self.native_size, w) for w in wh)
                raise ModelError(
                    f"{self.name}: with --window scale the {wh[0]}x{wh[1]} window does not scale to whole tokens at "
                    f"{size}px; use a multiple of {step} px, or --window keep"
                )
            windows.append(tuple(size * w // self.native_size for w in wh))
        if all(w == windows[0] for w in windows) and windows[0][0] == windows[0][1]:
            return windows[0][0]
        return tuple(windows)

    def module_at(self, size: int, options: PEOptions = PEOptions()) -> tuple[nn.Module, str]:
        """The module to evaluate at ``size`` px and its policy label: the native module at the native size, else
        timm's model built at ``size`` with the native weights loaded through its checkpoint filter."""
        policy = self.policy(options)
        if size == self.native_size:
            return self.native, policy
        param = next(self.native.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        kwargs = self._size_kwargs(size, options)
        try:
            with torch.device(device):
                module = self.create(**kwargs)
        except ModelError as e:
            raise ModelError(
                f"{self.name} cannot run at {size}px: timm cannot build it at that size ({e}); it would need a model "
                f"definition that takes img_size"
            ) from None
        module.load_state_dict(self.state_dict_for(module, size, options), strict=True)
        return module.eval(), policy

    def state_dict_for(self, module: nn.Module, size: int, options: PEOptions) -> dict:
        """The native weights for ``module`` (built at ``size``): timm's filter, then the APE resampled the DeiT
        way; a key that still does not fit is one error line that says what it is."""
        sd = self.native.state_dict()
        if self.filter_fn is not None:
            try:
                sd = self.filter_fn(sd, module)
            except (RuntimeError, ValueError, AssertionError, KeyError, IndexError, TypeError) as e:
                raise ModelError(
                    f"{self.name} cannot run at {size}px: timm's checkpoint filter fails ({_short(e)})"
                ) from None
        if has_learned_ape(self.native) and "pos_embed" in sd:
            sd = dict(sd)
            sd["pos_embed"] = self._resampled_ape(module, size, options)
        own = module.state_dict()
        missing = sorted(set(own) - set(sd))
        unexpected = sorted(set(sd) - set(own))
        mismatched = sorted(k for k in set(own) & set(sd) if tuple(own[k].shape) != tuple(sd[k].shape))
        if missing or unexpected or mismatched:
            shown = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in mismatched[:3]]
            shown += [f"{k} missing" for k in missing[:3]] + [f"{k} unexpected" for k in unexpected[:3]]
            raise ModelError(
                f"{self.name} cannot run at {size}px: its native weights do not fit the model timm builds at that "
                f"size ({'; '.join(shown)}); it would need these weights resampled to the new grid, which neither "
                f"timm's checkpoint filter nor this tool does for this model"
            )
        return sd

    def _resampled_ape(self, module: nn.Module, size: int, options: PEOptions) -> torch.Tensor:
        native = self.native.pos_embed.detach()
        target = module.pos_embed.shape
        if native.dim() == 4 and len(target) == 4 and native.shape[:2] == target[:2]:
            # a (1, D, H, W) map (PiT): no prefix tokens, the map itself is the grid
            return resample_pos_map(native, tuple(target[-2:]), options.ape_interpolation, options.antialias)
        old, new = self.native_grid, grid_of(module)
        if old is None or new is None:
            raise ModelError(f"{self.name} cannot run at {size}px: its position embedding has no patch grid")
        # The prefix tokens (cls, registers) with a slot in the table: whatever is not the grid (CaiT has none).
        prefix = native.shape[1] - old[0] * old[1]
        if prefix < 0 or module.pos_embed.shape[1] != prefix + new[0] * new[1]:
            raise ModelError(
                f"{self.name} cannot run at {size}px: its position embedding ({native.shape[1]} tokens) does not "
                f"match its {old[0]}x{old[1]} patch grid"
            )
        return resample_abs_pos_embed(native, new, old, prefix, options.ape_interpolation, options.antialias)

    def check(self, sizes, options: PEOptions = PEOptions()) -> None:
        """Before any data pass: build and load the model at every size and run one blank image through it, so a
        size it cannot take fails now, in one line, not after hours of work at the other sizes."""
        for size in sizes:
            if size == self.native_size:
                continue
            module, _ = self.module_at(size, options)
            probe(module, size, self.name)
            del module
