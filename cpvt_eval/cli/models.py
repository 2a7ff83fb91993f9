"""``cpvt-eval models``: the reference table of registered models."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from .. import console
from ..errors import CpvtEvalError
from ..pe_families import FAMILIES, pe_family
from .app import app, guarded


def model_cost(spec) -> tuple[int, float | None, str]:
    """Parameters, GFLOPs (at the native size, attention included, multiply-add = 2) and why the GFLOPs are missing
    (empty when counted) of a spec.

    The model is built on the meta device, so nothing is allocated and no weights are read. Building and
    tracing every model takes tens of seconds on a small CPU, so the figures are cached per spec and versions
    in the user cache dir (never inside the package). A model whose FLOPs cannot be counted keeps its row, with
    the reason instead of a figure; nothing about one model stops the list.
    """
    import hashlib

    import timm
    import torch

    from ..results import atomic_write_text
    from ..runtime import cache_dir
    from ..throughput import count_flops
    from ..version import __version__

    ident = json.dumps(
        [
            spec.name,
            spec.native_size,
            sorted(map(str, spec.create_kwargs.items())),
            __version__,
            timm.__version__,
            torch.__version__,
        ],
    )
    path = cache_dir() / "model-cost" / (hashlib.sha256(ident.encode()).hexdigest()[:20] + ".json")
    try:
        cached = json.loads(path.read_text())
        gflops = cached["gflops"]
        return int(cached["params"]), None if gflops is None else float(gflops), str(cached.get("note", ""))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    with torch.device("meta"):
        module = spec.create().eval()
    params = sum(p.numel() for p in module.parameters())
    try:
        gflops, note = count_flops(module, spec.native_size, torch.device("meta")), ""
    except Exception as e:  # noqa: BLE001 (any failure of one model's trace is that model's note, not the command's)
        gflops, note = None, f"FLOPs not counted: {type(e).__name__}: {console.first_line(e)}"
    try:
        atomic_write_text(path, json.dumps({"name": spec.name, "params": params, "gflops": gflops, "note": note}))
    except OSError:
        pass  # a read-only home only costs the recomputation next time
    return params, gflops, note


def matches_family(spec, family: str) -> bool:
    """``--family``: the PE family (``ape``, ``peg``, ``rope``, ``relbias``, ``conv``, ``none``) or the model
    family (``swin``, ``deit3``, ``rope-vit``, ...), by prefix and case-insensitively."""
    want = family.strip().lower()
    return pe_family(spec.pe).startswith(want) or spec.family.lower().startswith(want)


def model_rows(names: list[str] | None = None, family: str | None = None) -> list[dict]:
    """One dict per model: names, PE, parameters and GFLOPs at the native size (``gflops_img_size``), published
    top-1, weights. Without ``names``, every registered model, the demo's toys last."""
    from ..models.registry import list_specs, resolve
    from ..published import published_for

    specs = [resolve(n) for n in names] if names else sorted(list_specs(), key=lambda s: s.family == "demo")
    if family:
        chosen = [s for s in specs if matches_family(s, family)]
        if not chosen:
            known = sorted({*FAMILIES, *(s.family for s in specs)} - {"other"})
            raise CpvtEvalError(f"no model of family {family!r}; families: {', '.join(known)}")
        specs = chosen
    rows = []
    for spec in specs:
        params, gflops, note = model_cost(spec)
        published = spec.published.get(spec.native_size)
        detail = published_for(spec.name)
        rows.append(
            {
                "name": spec.name,
                "aliases": list(spec.aliases),
                "family": spec.family,
                "toy": spec.family == "demo",  # a toy of the offline demo (patch 4 at 56 px, its world's 10 classes)
                "pe": spec.pe,
                "pe_family": pe_family(spec.pe),
                "params": params,
                "gflops": None if gflops is None else round(gflops, 3),
                "gflops_note": note,
                "gflops_img_size": spec.native_size,
                "native_size": spec.native_size,
                "patch_size": spec.patch_size,
                "published_top1": published[0] if published else None,
                "published_confidence": published[1] if published else None,
                # the crop ratio the paper evaluated at, where its protocol names one (RoPE-ViT: 1.0)
                "published_crop_pct": detail[spec.native_size].crop_pct if spec.native_size in detail else None,
                "published_by_size": {
                    str(k): {"top1": v[0], "confidence": v[1]}
                    | ({"crop_pct": detail[k].crop_pct} if detail[k].crop_pct is not None else {})
                    for k, v in spec.published.items()
                },
                "default_weights": spec.default_weights,
                "description": spec.description,
            }
        )
    return rows


@app.command("models")
def models_cmd(
    names: Annotated[
        list[str] | None, typer.Argument(help="Only these models (names, aliases or any timm model).")
    ] = None,
    all_models: Annotated[
        bool, typer.Option("--all", hidden=True, help="Accepted; the toys are always listed.")
    ] = False,
    family: Annotated[
        str | None,
        typer.Option(
            "--family",
            "--pe",
            help="Only this PE family (ape, peg, rope, relbias, conv, none) or model family (swin, deit3, ...).",
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Write the list as JSON on stdout.")] = False,
) -> None:
    """Registered models: PE kind, parameters, GFLOPs at each model's native size (attention included), native
    size, the paper's top-1 there (with its confidence grade) and the default weights.

    The offline demo's toys come last, marked "toy": deit_toy, cpvt_toy and deit_toy_nope load the weights
    shipped in the package by name (`cpvt-eval resolution -m deit_toy cpvt_toy -s 56 96 --data DIR`, DIR a folder
    of the demo world's class folders, as `cpvt-eval demo` writes); the other toys need a checkpoint.

    Any other timm model also works by name (`--model vit_small_patch16_224`), and timm pretrained tags choose
    weights (`--model deit_tiny_patch16_224.fb_in1k`).

    A paper figure measured at another crop ratio than the tool's default 0.875 says so ("crop 1.0").

    Example: cpvt-eval models --json; cpvt-eval models cpvt_ti_plus deit_ti; cpvt-eval models --family rope
    """
    with guarded():
        del all_models  # the toys were once listed only with --all; the flag stays accepted
        rows = model_rows(names or None, family=family)
        if json_out:
            print(json.dumps(rows, indent=2))
        else:
            console.out.print(console.models_table(rows))
