"""The dataset of a run, as every probe opens it: the label space of the models, the layout or store read and mapped
onto it, the label subset applied, the test set named."""

from __future__ import annotations

from ..config import Hooks, RunConfig
from ..data import ImageSet, apply_label_subset, detect_test_set, load_label_subset, open_dataset
from ..errors import CpvtEvalError
from .label_spaces import run_label_space


def open_run_dataset(cfg: RunConfig, hooks: Hooks, require_labels: bool = True) -> ImageSet:
    """``cfg.data`` opened and checked (bad images are handled by the caller, which knows its workers).
    ``require_labels`` False lets a folder of images without labels open (the ``images`` layout, label -1).

    The models' label space comes first (``config.json``, a class map: no weights are read), so that class folders
    and ``ClassLabel`` names are mapped onto the models' classes, and refused, before any weights load."""
    space = run_label_space(cfg)
    if not space.imagenet and cfg.label_subset:
        raise CpvtEvalError(f"--label-subset applies to the ImageNet-1k label space; the models' is {space.describe()}")
    image_set = open_dataset(
        cfg.data,
        cfg.limit,
        cfg.layout,
        cfg.labels,
        cfg.classes,
        cfg.class_names,
        label_key=cfg.label_key,
        split=cfg.split,
        require_labels=require_labels,
        space=space,
    )
    image_set.decode_draft = cfg.decode_draft
    if cfg.label_subset:
        subset = load_label_subset(cfg.label_subset)
        apply_label_subset(image_set, subset)
        hooks.log(f"label subset {subset.name}: the argmax is taken over its {len(subset)} classes ({subset.source})")
    image_set.test_set = cfg.test_set or detect_test_set(image_set) or ""
    hooks.log(
        f"dataset {image_set.root}: {len(image_set)} images, fingerprint {image_set.fingerprint}, label space "
        f"{space.describe()}" + (f", test set {image_set.test_set}" if image_set.test_set else "")
    )
    return image_set
