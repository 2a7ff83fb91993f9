"""The data config a checkpoint carries about itself: the mean, std, interpolation and crop its weights expect.

Weights that were trained with other normalisation than ImageNet's (timm's ``*.ra4_*`` tags use 0.5, CLIP-derived
models their own) give wrong numbers under another model's constants, so the config travels with the weights. It
is read, in this order, from

* a timm pretrained tag (``timm:resnet18d.ra4_e3600_r224_in1k``): the tag's own ``pretrained_cfg``, not the
  architecture's default tag;
* the file itself: safetensors metadata (``mean``/``std``/``interpolation``/``crop_pct``, or a ``pretrained_cfg``
  JSON), or a ``pretrained_cfg``/``data_config`` dict at the top of a ``.pth`` file;
* the files beside it, as the hubs lay them out: timm's ``config.json`` (its ``pretrained_cfg``), or a
  transformers ``preprocessor_config.json`` (``image_mean``, ``image_std``, ``resample``, and the crop of its
  ``size``/``crop_size``/``crop_pct``: ``from_preprocessor``).

Every value found is returned with where it came from; nothing is guessed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# PIL's resampling codes as transformers' image processors store them.
_PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}
FIELDS = ("mean", "std", "interpolation", "crop_pct", "crop_mode")


def _triple(value) -> tuple[float, float, float] | None:
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip().startswith("[") else value.split(",")
        except json.JSONDecodeError:
            return None
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == 3 else None


def _clean(cfg: dict, source: str) -> dict | None:
    """The known fields of a config dict, typed; None when it holds neither a mean nor a std."""
    out: dict = {}
    mean, std = _triple(cfg.get("mean")), _triple(cfg.get("std"))
    if mean is not None:
        out["mean"] = mean
    if std is not None:
        out["std"] = std
    interp = cfg.get("interpolation")
    if isinstance(interp, str) and interp in ("bicubic", "bilinear", "nearest"):
        out["interpolation"] = interp
    if cfg.get("crop_mode") in ("center", "squash", "border", "full"):
        out["crop_mode"] = cfg["crop_mode"]
    try:
        crop = float(cfg["crop_pct"])
        if 0 < crop <= 1:
            out["crop_pct"] = crop
    except (KeyError, TypeError, ValueError):
        pass
    if "mean" not in out and "std" not in out:
        return None
    out["source"] = source
    return out


def pretrained_cfg(tag: str):
    """timm's ``PretrainedCfg`` of a pretrained tag (``resnet18d.ra4_e3600_r224_in1k``), or None when timm has none."""
    import timm

    try:
        return timm.models.get_pretrained_cfg(tag)
    except (RuntimeError, ValueError):
        return None


def from_timm_tag(tag: str) -> dict | None:
    """The data config of a timm pretrained tag (``resnet18d.ra4_e3600_r224_in1k``)."""
    cfg = pretrained_cfg(tag)
    if cfg is None:
        return None
    return _clean({name: getattr(cfg, name, None) for name in FIELDS}, f"timm:{tag}")


def _from_safetensors(path: Path) -> dict | None:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError):
        return None
    if "pretrained_cfg" in meta:
        try:
            nested = json.loads(meta["pretrained_cfg"])
        except json.JSONDecodeError:
            nested = None
        if isinstance(nested, dict) and (found := _clean(nested, f"{path.name} metadata")):
            return found
    return _clean(meta, f"{path.name} metadata")


def _from_sidecar(path: Path) -> dict | None:
    folder = path.parent
    timm_cfg = folder / "config.json"
    if timm_cfg.is_file():
        try:
            doc = json.loads(timm_cfg.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("pretrained_cfg"), dict):
            found = _clean(doc["pretrained_cfg"], f"{timm_cfg.name} beside {path.name}")
            if found:
                return found
    processor = folder / "preprocessor_config.json"
    if processor.is_file():
        try:
            doc = json.loads(processor.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if isinstance(doc, dict):
            return from_preprocessor(doc, f"{processor.name} beside {path.name}")
    return None


def _edge(value, *names) -> int | None:
    """A transformers size: an int, or a dict with ``height``/``width`` (equal) or ``shortest_edge``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, dict):
        found = [value.get(n) for n in names if isinstance(value.get(n), (int, float))]
        if found and all(v == found[0] for v in found):
            return int(found[0])
    return None


def from_preprocessor(doc: dict, source: str) -> dict | None:
    """The data config of a transformers ``preprocessor_config.json``: ``image_mean``, ``image_std``, ``resample``
    and the crop its processor applies, in this tool's terms:

    * ``size`` {height, width} and no centre crop (``ViTImageProcessor``, Swin's): the whole image to size x size,
      crop mode ``full``;
    * ``size`` {height, width}, then a centre crop (BEiT's): both sides resized, then cropped: ``squash`` with
      crop_pct = crop / size;
    * ``size`` {shortest_edge}, then a centre crop (DeiT's, DINOv2's): ``center`` with crop_pct = crop / size;
    * a ``crop_pct`` of its own (ConvNeXt's processor, CvT's): ``center`` at that ratio.
    """
    cfg: dict = {"mean": doc.get("image_mean"), "std": doc.get("image_std"), "crop_pct": doc.get("crop_pct")}
    if doc.get("do_normalize") is False:
        cfg["mean"], cfg["std"] = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if doc.get("resample") in _PIL_RESAMPLE:
        cfg["interpolation"] = _PIL_RESAMPLE[doc["resample"]]
    crop = _edge(doc.get("crop_size"), "height", "width") if doc.get("do_center_crop") else None
    square = _edge(doc.get("size"), "height", "width")
    shortest = _edge(doc.get("size"), "shortest_edge")
    if cfg["crop_pct"] is not None:
        cfg["crop_mode"] = "center"
    elif square and crop:
        cfg["crop_mode"], cfg["crop_pct"] = "squash", crop / square
    elif square:
        cfg["crop_mode"], cfg["crop_pct"] = "full", 1.0
    elif shortest and crop:
        cfg["crop_mode"], cfg["crop_pct"] = "center", crop / shortest
    return _clean(cfg, source)


def from_checkpoint(path: str | os.PathLike, obj=None) -> dict | None:
    """The data config stored in or beside the checkpoint file ``path`` (``obj``: the file as read, if at hand)."""
    path = Path(path)
    if isinstance(obj, dict):
        for key in ("pretrained_cfg", "data_config"):
            if isinstance(obj.get(key), dict) and (found := _clean(obj[key], f"{path.name} ({key})")):
                return found
    if path.suffix == ".safetensors" and (found := _from_safetensors(path)):
        return found
    return _from_sidecar(path)
