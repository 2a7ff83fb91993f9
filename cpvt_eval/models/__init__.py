"""Model registry, CPVT models (registered with timm) and the resolution policy of each PE family."""

from ..config import PEOptions
from .cpvt import CPVT
from .pos_embed import PEG, resample_abs_pos_embed, sincos_2d_pos_embed
from .posenc import adapt_to_size
from .registry import ModelSpec, list_specs, register, resolve

__all__ = [
    "CPVT",
    "PEG",
    "PEOptions",
    "ModelSpec",
    "adapt_to_size",
    "list_specs",
    "register",
    "resample_abs_pos_embed",
    "resolve",
    "sincos_2d_pos_embed",
]
