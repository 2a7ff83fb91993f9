"""Finding a model's spec: registered names and aliases, then any model timm knows. Specs are registered next to
their entry points (``cpvt.py``, ``catalog.py``); importing this module registers them all.

Models outside the registry still work when timm knows them (``resolve`` builds a spec on the fly); a name
neither knows is an error that suggests close names.
"""

from __future__ import annotations

import difflib
from dataclasses import replace

import timm

from ..errors import ModelError
from . import catalog as _catalog  # noqa: F401  (registers the specs of timm's models)
from . import cpvt as _cpvt  # noqa: F401  (registers the CPVT entry points with timm and their specs)
from . import cvt as _cvt  # noqa: F401  (registers the CvT entry points with timm and their specs)
from .spec import ALIASES, REGISTRY, DataConfig, ModelSpec, register

__all__ = ["DataConfig", "ModelSpec", "list_specs", "register", "resolve"]


def list_specs(include_demo: bool = True) -> list[ModelSpec]:
    specs = list(REGISTRY.values())
    return specs if include_demo else [s for s in specs if s.family != "demo"]


def resolve(name: str) -> ModelSpec:
    """The spec for a name or alias; a timm model outside the registry gets a generic spec."""
    key = name.strip()
    base, _, tag = key.partition(".")
    canonical = ALIASES.get(base, base)
    if canonical in REGISTRY:
        spec = REGISTRY[canonical]
        if tag:
            # a timm pretrained tag chooses the default weights (``deit_tiny_patch16_224.fb_in1k``)
            return replace(spec, default_weights=f"{canonical}.{tag}", tag=tag)
        return spec
    if timm.is_model(base):
        return _timm_spec(base, key if tag else None)
    known = sorted({*REGISTRY, *ALIASES})
    close = difflib.get_close_matches(base, known, n=3, cutoff=0.5)
    if not close:
        close = difflib.get_close_matches(base, timm.list_models(), n=3, cutoff=0.7)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see `cpvt-eval models`"
    raise ModelError(f"unknown model {name!r}{hint}")


def _timm_spec(name: str, tagged: str | None) -> ModelSpec:
    cfg = timm.models.get_pretrained_cfg(tagged or name)
    size = 224
    if cfg is not None and getattr(cfg, "input_size", None):
        size = int(cfg.input_size[-1])
    weights = tagged or (name if timm.models.is_model_pretrained(name) else None)
    tag = tagged.partition(".")[2] if tagged else ""
    return ModelSpec(
        name=name, family="timm", pe="auto", native_size=size, patch_size=0, default_weights=weights, tag=tag
    )
