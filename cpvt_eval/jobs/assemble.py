"""From a model name to a model ready to evaluate (``engine.EvalModel``): resolve the spec, build it, load its
weights strictly, and check it against the sizes of a run.

This is where the layers below meet (``models``, ``checkpoints``, ``limits``, the engine's ``EvalModel``), so
that ``models`` and ``checkpoints`` need import nothing above them. The preprocessing (mean, std) comes from the
spec's data config, which travels with the weights, and the labels a row records about the model (its PE kind,
the PE options that change its outputs, its arguments) are derived here once.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ..checkpoints import check_local, find_transformers, load_checkpoint, load_transformers
from ..config import PEOptions, RunConfig, say_nothing
from ..engine import EvalModel
from ..errors import CpvtEvalError, ModelError
from ..limits import check_fits
from ..models.introspect import patch_size_of, pe_kind_of
from ..models.posenc import check_sizes, size_adapter
from ..models.registry import ModelSpec
from ..results import pe_options_label
from .label_spaces import check_model_classes, run_label_space
from .model_names import is_transformers, resolve_model

Log = Callable[[str], None]


def no_weights_message(spec: ModelSpec, name: str) -> str:
    return f"{spec.name} has no published weights: pass a checkpoint with --checkpoint {name}=PATH"


def build_model(
    name: str,
    checkpoint: str | None = None,
    model_args: dict | None = None,
    device: torch.device | str = "cpu",
    ema: bool | None = None,
    log: Log = say_nothing,
    sizes: tuple[int, ...] = (),
) -> EvalModel:
    """Resolve ``name``, build it, check ``sizes`` against its patch size (before any weights are fetched), load its
    weights strictly and put it on ``device`` in eval mode."""
    spec = resolve_model(name)
    args = dict(model_args or {})
    module = spec.create(**args)
    check_sizes(sizes, patch_size_of(module), spec.name)
    if is_transformers(spec):
        if checkpoint or ema:
            what = "--checkpoint" if checkpoint else "--ema"
            raise ModelError(f"{spec.name}: {what} does not apply; the weights are those of {spec.origin}")
        load = load_transformers(module, find_transformers(spec.origin))
    elif checkpoint:
        load = load_checkpoint(module, checkpoint, ema=ema)
    elif spec.default_weights:
        # a timm pretrained tag, a hub repo for models timm does not have (CvT: hf-hub:microsoft/cvt-13), or a file
        # shipped with the package (the demo's toys)
        default = spec.default_weights
        direct = default.startswith("hf-hub:") or Path(default).is_absolute()
        load = load_checkpoint(module, default if direct else f"timm:{default}", ema=ema)
    else:
        raise ModelError(no_weights_message(spec, name))
    log(f"{spec.name}: loaded {load.summary()}")
    module.eval().to(device)
    data = spec.data_config(module, load.data_config)
    return EvalModel(
        name=spec.name,
        spec=spec,
        module=module,
        mean=data.mean,
        std=data.std,
        data=data,
        checkpoint=load.source,
        checkpoint_sha256=load.sha256,
        load_report=load.to_dict(),
        # choices a model records even at their defaults (CvT's activation), so every row says what ran
        model_args={**args, **getattr(module, "recorded_args", {})},
        # timm builds the same model (same arguments) at another size when its family needs it
        sizer=size_adapter(module, lambda **size_args: spec.create(**{**args, **size_args}).eval(), spec.name),
    )


def check_models(cfg: RunConfig) -> list[ModelSpec]:
    """What can be checked of a run's models from their specs alone, before any model is built or any weights are
    fetched: the names (none twice), the checkpoints (each names a model of the run; a local one is a file), and
    every size against each model's patch size or stride (a timm model known by name only: once it is built, still
    before its weights are fetched). Returns the specs, in the order of ``cfg.models``."""
    if not cfg.models:
        raise CpvtEvalError("no model given: use --model NAME (see `cpvt-eval models`)")
    specs: list[ModelSpec] = [resolve_model(n) for n in cfg.models]
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise CpvtEvalError(f"model {dupes[0]} is given twice")
    given = {resolve_model(key).name for key in cfg.checkpoints}
    unknown = sorted(given - set(names))
    if unknown:
        raise CpvtEvalError(f"--checkpoint names {unknown[0]}, which is not among the --model values")
    for name, spec in zip(cfg.models, specs, strict=True):
        if not (spec.default_weights or spec.name in given or is_transformers(spec)):
            raise ModelError(no_weights_message(spec, name))
        if spec.patch_size:
            check_sizes(cfg.sizes, spec.patch_size, spec.name)
    for source in cfg.checkpoints.values():
        check_local(source)
    return specs


def prepare_models(cfg: RunConfig, device: torch.device, log: Log = say_nothing) -> list[EvalModel]:
    """Every model of a run, built and loaded, each checked against every size before any data pass."""
    specs = check_models(cfg)
    canonical_ckpt = {resolve_model(key).name: path for key, path in cfg.checkpoints.items()}
    canonical_args = {resolve_model(k).name: v for k, v in cfg.model_args.items()}
    space = run_label_space(cfg)  # known before any weights load: the dataset was mapped onto it already
    models = []
    for name, spec in zip(cfg.models, specs, strict=True):
        ckpt, args = canonical_ckpt.get(spec.name), canonical_args.get(spec.name)
        m = build_model(name, ckpt, args, device, cfg.ema, log, sizes=cfg.sizes)
        check_model_classes(spec.name, m.num_classes, space)
        check_fits(
            spec.name, m.module, cfg.sizes, m.crop_pct_for(cfg.crop_pct), device, cfg.dtype, patch_size_of(m.module)
        )
        m.sizer.check(cfg.sizes, cfg.pe)
        models.append(m)
    return models


def pe_label(m: EvalModel) -> str:
    """The PE kind a row records: the spec's label (``peg-0``, ``ape-learned``...), or for a timm model by name
    (``pe="auto"``) the kind ``introspect.pe_kind_of`` reads off the module, the one place a kind is decided."""
    return m.spec.pe if m.spec.pe != "auto" else pe_kind_of(m.module)


def model_args_label(m: EvalModel) -> str:
    """``k=v`` pairs as ``--model-arg`` takes them (a tuple as ``a,b,...``), sorted by key."""

    def text(v) -> str:
        return ",".join(map(str, v)) if isinstance(v, (tuple, list)) else str(v)

    return ",".join(f"{k}={text(v)}" for k, v in sorted(m.model_args.items()))


def pe_options_of(m: EvalModel, pe: PEOptions) -> str:
    """The PE options that can change this model's outputs, as recorded in its rows and keys.

    A learned APE (alone or next to RoPE) depends on how it is resampled, a sin-cos APE on regenerate vs resample,
    windowed attention on ``--window``; a PEG or a model without PE depends on none of them, so changing
    ``--ape-interp`` keeps their finished cells.
    """
    kind = pe_kind_of(m.module)
    if kind == "ape-sincos" and pe.sincos == "regenerate":
        return "sincos=regenerate"
    if kind.startswith("ape") or kind.endswith("+ape"):
        return pe_options_label(pe.ape_interpolation, pe.antialias, pe.sincos if kind == "ape-sincos" else None)
    if kind == "relbias-window" and pe.window != "keep":
        return f"window={pe.window}"
    return ""
