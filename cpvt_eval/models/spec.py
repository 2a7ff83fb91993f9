"""What the tool knows about a model before building it (``ModelSpec``), its data config, and the registry.

Specs are registered next to their entry points: the CPVT models in ``cpvt.py`` with ``entry_point``, the models
timm defines in ``catalog.py``. A name or alias registered twice raises.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from ..errors import ModelError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DataConfig:
    """The preprocessing a model's weights were trained and evaluated with (timm's ``PretrainedCfg`` data part).

    ``mean``/``std`` normalise every batch of that model. ``crop_pct`` and ``interpolation`` are the weights' own
    evaluation transform, shown by ``cpvt-eval models``; a run's protocol (``--crop-pct``, default 0.875 as in
    the DeiT/CPVT papers) decides the transform of a table, so that every model of it sees the same pixels.
    ``crop_mode`` is the weights' own crop mode (timm's ``crop_mode``; ``full`` for a transformers
    ``ViTImageProcessor``, which resizes the whole image to size x size), taken by ``--crop-mode weights``.
    """

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    crop_mode: str = "center"
    source: str = field(default="", compare=False)  # where the values were read (a timm tag, a file's metadata)

    @classmethod
    def from_pretrained_cfg(cls, cfg) -> DataConfig:
        """Read timm's pretrained config (a dict or a ``PretrainedCfg``); missing fields take the defaults."""
        get = cfg.get if isinstance(cfg, dict) else (lambda k, d=None: getattr(cfg, k, d))
        return cls(
            mean=tuple(float(v) for v in (get("mean") or IMAGENET_MEAN)),
            std=tuple(float(v) for v in (get("std") or IMAGENET_STD)),
            crop_pct=float(get("crop_pct") or 0.875),
            interpolation=str(get("interpolation") or "bicubic"),
            crop_mode=str(get("crop_mode") or "center"),
            source=str(get("source") or ""),
        )

    def updated(self, found: dict) -> DataConfig:
        """This config with the fields ``found`` holds (a checkpoint's own, see ``checkpoints.dataconfig``)."""
        names = ("mean", "std", "crop_pct", "interpolation", "crop_mode")
        known = {k: found[k] for k in names if found.get(k) is not None}
        if not known:
            return self
        return replace(self, **known, source=str(found.get("source", "")))

    @property
    def mean_text(self) -> str:
        """The mean as a row records it: ``0.485,0.456,0.406`` (every digit kept)."""
        return ",".join(repr(float(v)) for v in self.mean)

    @property
    def std_text(self) -> str:
        return ",".join(repr(float(v)) for v in self.std)


@dataclass(frozen=True)
class ModelSpec:
    """What the tool knows about a model before building it.

    Attributes:
        name: canonical name, also the timm entry point.
        family: ``cpvt``, ``deit``, ``twins``, ``demo``, ``timm``, ...
        pe: position encoding label, as in the published-results table (``ape-learned``, ``peg-0``, ...).
        native_size: the training resolution; the reference point of "change from native" columns.
        patch_size: what sizes must be multiples of: the patch size, or a pyramid's total stride (Twins: 32).
        aliases: short names that resolve to ``name``.
        default_weights: the weights loaded when no checkpoint is given: a timm pretrained tag, an ``hf-hub:`` repo
            (CvT), or the path of a file shipped with the package (the demo's toys); None: a checkpoint is needed.
        create_kwargs: keyword arguments for ``timm.create_model`` (fixed by the spec).
        description: one line for ``cpvt-eval models``.
        data: the weights' data config; None: read from the built module's ``pretrained_cfg``.
        labels: the class names of the default weights, index order (a transformers ``id2label``, the demo world's
            classes for the toys); empty: ImageNet-1k, or the names timm has for the tag.
        tag: the timm pretrained tag the name carried (``ra4_e3600_r224_in1k`` of
            ``resnet18d.ra4_e3600_r224_in1k``): the module is built under it, so that its ``pretrained_cfg`` (mean,
            std, crop, interpolation) is that tag's, not the architecture's default tag's.
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
    data: DataConfig | None = None
    tag: str = ""
    labels: tuple[str, ...] = ()

    @property
    def published(self) -> dict[int, tuple[float, str]]:
        """Published zero-shot top-1 by size, with the confidence grade: ``{224: (72.4, "secondary-x3")}``."""
        from ..published import published_for

        return {size: (p.top1, p.confidence) for size, p in published_for(self.name).items()}

    def create(self, **overrides):
        """Build the model with random weights (checkpoints are loaded by ``cpvt_eval.checkpoints``)."""
        import timm

        kwargs = {**self.create_kwargs, **overrides}
        name = f"{self.name}.{self.tag}" if self.tag else self.name
        try:
            return timm.create_model(name, pretrained=False, **kwargs)
        except ModelError:
            raise
        except (TypeError, ValueError, AssertionError) as e:
            raise ModelError(f"cannot build {self.name} with {kwargs}: {e}") from None

    def data_config(self, module=None, weights: dict | None = None) -> DataConfig:
        """The data config of the weights evaluated: the checkpoint's own (``weights``: a timm tag's
        ``pretrained_cfg``, a file's metadata) where it has one, else the spec's, else the one the module carries
        (timm's config of the architecture's default tag)."""
        if self.data is not None:
            base = replace(self.data, source=self.data.source or f"spec:{self.name}")
        else:
            cfg = dict(getattr(module, "pretrained_cfg", None) or {}) if module is not None else {}
            tag = cfg.get("tag")
            cfg["source"] = f"timm:{self.name}.{tag}" if tag else f"timm:{self.name}"
            base = DataConfig.from_pretrained_cfg(cfg)
        return base.updated(weights or {})


REGISTRY: dict[str, ModelSpec] = {}
ALIASES: dict[str, str] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add a spec; a name or alias that is already taken raises."""
    for key in (spec.name, *spec.aliases):
        if key in REGISTRY or key in ALIASES:
            raise ValueError(f"model name {key!r} is already registered")
    REGISTRY[spec.name] = spec
    for alias in spec.aliases:
        ALIASES[alias] = spec.name
    return spec


def entry_point(family: str, pe: str, **spec_fields) -> Callable:
    """Decorator for a model function of this package: registers it with timm and its spec with the tool.

    Example::

        @entry_point("cpvt", "peg-0", description="CPVT-Ti")
        def cpvt_ti(pretrained=False, **kwargs): ...
    """

    def wrap(fn: Callable) -> Callable:
        from timm.models import register_model

        register_model(fn)
        register(ModelSpec(fn.__name__, family, pe, **spec_fields))
        return fn

    return wrap
