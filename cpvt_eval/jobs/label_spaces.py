"""The label space of a run: which classes the models' outputs are, known before any weights load.

In this order: ``--class-map FILE`` (for every model of the run); the dataset's own class names (the offline demo);
else each model's own names: a transformers checkpoint's ``id2label`` (its ``config.json``), the classes of the
weights a toy ships with (the demo world's, ``models.toys``), or timm's label names
for the pretrained tag whose weights are evaluated (its ``label_names``, or the ImageNet subset timm infers from its
class count: ImageNet-21k/-22k/-12k WordNet ids); a model without names of its own is ImageNet-1k, as before. The
models of one run share one label space, or the run is refused naming the model that differs.
"""

from __future__ import annotations

from ..checkpoints.dataconfig import pretrained_cfg
from ..config import RunConfig
from ..data import LabelSpace, from_names, imagenet_1k, read_class_map
from ..errors import CpvtEvalError, ModelError
from ..models.registry import ModelSpec
from .model_names import is_transformers, resolve_model

DEFAULT_SOURCE = "the default: the model names no classes of its own"


def _timm_names(spec: ModelSpec, model_args: dict) -> LabelSpace | None:
    """timm's label names for the pretrained tag whose weights are evaluated, when timm has them."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    tag = spec.default_weights
    if not tag or tag.startswith("hf-hub:") or spec.family == "demo":
        return None
    cfg = pretrained_cfg(tag)
    if cfg is None:
        return None
    n = getattr(cfg, "num_classes", None)
    if "num_classes" in model_args and model_args["num_classes"] != n:
        return None  # another head than the tag's: its names do not apply
    names = getattr(cfg, "label_names", None)
    if names:
        return from_names(names, f"timm {tag} label_names")
    subset = infer_imagenet_subset(cfg)
    if subset is None or subset == "imagenet-1k":
        return None
    offset = int(getattr(cfg, "label_offset", 0) or 0)
    names = [f"<background {i}>" for i in range(offset)] + list(ImageNetInfo(subset).label_names())
    return from_names(names, f"timm {tag}: {subset} WordNet ids")


def model_label_space(spec: ModelSpec, model_args: dict | None = None, checkpoint: str | None = None) -> LabelSpace:
    """The label space of one model: its own names, else ImageNet-1k. The names of the default weights (the
    spec's, or timm's for the tag) apply when those weights are evaluated: not with a checkpoint of one's own, nor
    with another head."""
    if is_transformers(spec):
        return from_names(spec.labels, f"id2label of {spec.origin}/config.json")
    args = dict(model_args or {})
    if spec.labels and not checkpoint and args.get("num_classes", len(spec.labels)) == len(spec.labels):
        return from_names(spec.labels, f"the classes of {spec.name}'s default weights")
    found = None if checkpoint else _timm_names(spec, args)
    return found or imagenet_1k(DEFAULT_SOURCE)


def run_label_space(cfg: RunConfig) -> LabelSpace:
    """The one label space of the models of ``cfg`` (see the module docstring)."""
    if cfg.class_map is not None:
        return read_class_map(cfg.class_map)
    if cfg.class_names is not None:
        return from_names(cfg.class_names, "the dataset's class names")
    first: tuple[str, LabelSpace] | None = None
    for name in cfg.models:
        spec = resolve_model(name)
        space = model_label_space(spec, _for(cfg.model_args, name, spec), _for(cfg.checkpoints, name, spec))
        if first is None:
            first = (spec.name, space)
        elif space.id != first[1].id:
            raise CpvtEvalError(
                f"{spec.name}'s label space {space.describe()} differs from {first[0]}'s {first[1].describe()}: "
                "evaluate models with different classes in separate runs (or give both --class-map FILE)"
            )
    return first[1] if first is not None else imagenet_1k(DEFAULT_SOURCE)


def _for(by_name: dict, name: str, spec: ModelSpec):
    """The value of ``--checkpoint``/``--model-arg`` given for this model (under any of its names)."""
    for key, value in by_name.items():
        if key in (name, spec.name):
            return value
        try:
            if resolve_model(key).name == spec.name:
                return value
        except (ModelError, CpvtEvalError):
            continue
    return None


def check_model_classes(name: str, num_classes: int, space: LabelSpace) -> None:
    """A model's head must have one output per class of a named label space (ImageNet-1k stays unchecked, as
    before: toy models and subsets of classes)."""
    if not space.imagenet and num_classes != len(space):
        raise ModelError(f"{name} has {num_classes} classes, and the label space {space.describe()} names {len(space)}")
