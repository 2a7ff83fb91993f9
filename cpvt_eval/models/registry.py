"""One frozen spec per model: family, PE kind, native size, default weights. Aliases resolve to full names.

Models outside the registry still work when timm knows them (``resolve`` builds a spec on the fly); a name
neither knows is an error that suggests close names.
"""

from __future__ import annotations

import csv
import difflib
import io
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources

import timm
from torch import nn

from ..errors import ModelError
from . import cpvt as _cpvt  # noqa: F401  (registers the CPVT entry points with timm)


@dataclass(frozen=True)
class ModelSpec:
    """What the tool knows about a model before building it.

    Attributes:
        name: canonical name, also the timm entry point.
        family: ``cpvt``, ``deit``, ``twins``, ``demo`` or ``timm``.
        pe: position encoding label, as in the published-results table (``ape-learned``, ``peg-0``, ...).
        native_size: the training resolution; the reference point of "change from native" columns.
        patch_size: what sizes must be multiples of: the patch size, or a pyramid's total stride (Twins: 32).
        aliases: short names that resolve to ``name``.
        default_weights: timm pretrained tag loaded when no checkpoint is given, or None (a checkpoint is needed).
        create_kwargs: keyword arguments for ``timm.create_model`` (fixed by the spec).
        description: one line for ``cpvt-eval models``.
    """

    name: str
    family: str
    pe: str
    native_size: int = 224
    patch_size: int = 16
    aliases: tuple[str, ...] = ()
    default_weights: str | None = None
    create_kwargs: dict = field(default_factory=dict, hash=False, compare=False)
    description: str = ""

    @property
    def published(self) -> dict[int, tuple[float, str]]:
        """Published top-1 by size for this model, with the confidence grade: ``{224: (72.4, "secondary-x3")}``."""
        return published_top1(self.name)

    def create(self, **overrides) -> nn.Module:
        """Build the model with random weights (checkpoints are loaded by ``cpvt_eval.checkpoints``)."""
        kwargs = {**self.create_kwargs, **overrides}
        try:
            return timm.create_model(self.name, pretrained=False, **kwargs)
        except ModelError:
            raise
        except (TypeError, ValueError, AssertionError) as e:
            raise ModelError(f"cannot build {self.name} with {kwargs}: {e}") from None


@lru_cache(maxsize=1)
def published_results() -> tuple[dict, ...]:
    """Rows of the shipped ``published_results.csv`` (model, pe, protocol, img_size, top1, confidence, source)."""
    text = resources.files("cpvt_eval.resources").joinpath("published_results.csv").read_text(encoding="utf-8")
    rows = []
    for row in csv.DictReader(io.StringIO(text)):
        rows.append({**row, "img_size": int(row["img_size"]), "top1": float(row["top1"])})
    return tuple(rows)


def published_top1(name: str) -> dict[int, tuple[float, str]]:
    """``{size: (top1, confidence)}`` of a model in the published table (empty when the paper has no number)."""
    return {r["img_size"]: (r["top1"], r["confidence"]) for r in published_results() if r["model"] == name}


_REGISTRY: dict[str, ModelSpec] = {}
_ALIASES: dict[str, str] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add a spec; a name or alias that is already taken raises."""
    for key in (spec.name, *spec.aliases):
        if key in _REGISTRY or key in _ALIASES:
            raise ValueError(f"model name {key!r} is already registered")
    _REGISTRY[spec.name] = spec
    for alias in spec.aliases:
        _ALIASES[alias] = spec.name
    return spec


def list_specs(include_demo: bool = True) -> list[ModelSpec]:
    specs = list(_REGISTRY.values())
    return specs if include_demo else [s for s in specs if s.family != "demo"]


def resolve(name: str) -> ModelSpec:
    """The spec for a name or alias; a timm model outside the registry gets a generic spec."""
    key = name.strip()
    base, _, tag = key.partition(".")
    canonical = _ALIASES.get(base, base)
    if canonical in _REGISTRY:
        spec = _REGISTRY[canonical]
        if tag:
            # a timm pretrained tag chooses the default weights (``deit_tiny_patch16_224.fb_in1k``)
            return replace(spec, default_weights=f"{canonical}.{tag}")
        return spec
    if timm.is_model(base):
        return _timm_spec(base, key if tag else None)
    known = sorted({*_REGISTRY, *_ALIASES})
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
    return ModelSpec(name=name, family="timm", pe="auto", native_size=size, patch_size=0, default_weights=weights)


def _add(name, family, pe, aliases=(), weights=None, native=224, patch=16, description="", **create_kwargs):
    register(ModelSpec(name, family, pe, native, patch, tuple(aliases), weights, create_kwargs, description))


# The paper's models. CPVT never had published plain weights: a checkpoint is always needed.
_add("cpvt_ti", "cpvt", "peg-0", description="CPVT-Ti: DeiT-Ti backbone, PEG after block 0")
_add("cpvt_s", "cpvt", "peg-0", description="CPVT-S: DeiT-S backbone, PEG after block 0")
_add("cpvt_b", "cpvt", "peg-0", description="CPVT-B: DeiT-B backbone, PEG after block 0")
_add("cpvt_ti_gap", "cpvt", "peg-0-gap", description="CPVT-Ti-GAP: no cls token, mean of final-normed tokens")
_add("cpvt_s_gap", "cpvt", "peg-0-gap", description="CPVT-S-GAP")
_add("cpvt_b_gap", "cpvt", "peg-0-gap", description="CPVT-B-GAP")
_add("cpvt_ti_plus", "cpvt", "peg-0to4", description="CPVT-Ti‡: a PEG after each of blocks 0-4")
_add("cpvt_s_plus", "cpvt", "peg-0to4", description="CPVT-S‡")
_add("cpvt_b_plus", "cpvt", "peg-0to4", description="CPVT-B‡")
_add("cpvt_ti_gap_plus", "cpvt", "peg-0to4-gap", description="CPVT-Ti-GAP‡")
_add("cpvt_s_gap_plus", "cpvt", "peg-0to4-gap", description="CPVT-S-GAP‡")
_add("cpvt_b_gap_plus", "cpvt", "peg-0to4-gap", description="CPVT-B-GAP‡")
_add(
    "deit_tiny_patch16_224",
    "deit",
    "ape-learned",
    ("deit_ti",),
    "deit_tiny_patch16_224.fb_in1k",
    description="DeiT-Ti, learned absolute PE",
)
_add(
    "deit_small_patch16_224",
    "deit",
    "ape-learned",
    ("deit_s",),
    "deit_small_patch16_224.fb_in1k",
    description="DeiT-S, learned absolute PE",
)
_add(
    "deit_base_patch16_224",
    "deit",
    "ape-learned",
    ("deit_b",),
    "deit_base_patch16_224.fb_in1k",
    description="DeiT-B, learned absolute PE",
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
_add("deit_tiny_sincos", "deit", "ape-sincos", description="DeiT-Ti with fixed 2-D sin-cos PE (ablation)")
_add("deit_tiny_nope", "deit", "none", description="DeiT-Ti without position encoding (ablation)")

# The offline demo's toy models (patch 4 at 56 px: the 14x14 grid of patch 16 at 224).
_add("deit_toy", "demo", "ape-learned", native=56, patch=4, description="toy DeiT, learned absolute PE")
_add("cpvt_toy", "demo", "peg-0", native=56, patch=4, description="toy CPVT, PEG after block 0")
_add("cpvt_toy_gap", "demo", "peg-0-gap", native=56, patch=4, description="toy CPVT-GAP")
_add("deit_toy_sincos", "demo", "ape-sincos", native=56, patch=4, description="toy DeiT, fixed 2-D sin-cos PE")
_add("deit_toy_nope", "demo", "none", native=56, patch=4, description="toy DeiT, no position encoding")
