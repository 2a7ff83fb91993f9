"""Hugging Face transformers key layouts -> the timm modules ``models.hf_families`` builds, from tables.

Two layouts per family, both read:

* the 4.x names most hub files carry, which transformers 5 also writes by default (``save_pretrained``'s
  ``save_original_format``): ``vit.encoder.layer.N.attention.attention.query.weight``, ``...attention.output.dense``,
  ``...intermediate.dense``, ``...output.dense``; Swin's ``...attention.self.query``; DINOv2's
  ``mlp.weights_in`` (SwiGLU); the ``relative_position_index`` buffers older 4.x files hold;
* the 5.x module names (``save_original_format=False``): ``vit.layers.N.attention.q_proj.weight``,
  ``...attention.o_proj``, ``...mlp.fc1``/``fc2``; ``beit.layers.N.relative_position_bias...``,
  ``beit.shared_position_bias``; Swin's ``...attention.relative_position_bias.relative_position_bias_table``;
  DINOv2's ``mlp.gate_proj``/``up_proj``/``down_proj``.

transformers keeps the query, key and value projections apart; timm fuses them (``attn.qkv``, BEiT's ``q_bias`` and
``v_bias`` beside a bias-free key). Transformers' Swin places the patch merging at the end of stage i, timm at the
start of stage i + 1. The conversion is strict: every key is used (a ``relative_position_index`` is checked against
the one the module computes, ``mask_token`` and ViT's unused pooler are dropped and reported), every shape is
checked, and a key no rule knows is an error that names it.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ..errors import CheckpointError

_L = r"(?:encoder\.layer|layers)\.(\d+)\."  # a block: 4.x ``encoder.layer.N.``, 5.x ``layers.N.``
_QKV = {"query": "q", "key": "k", "value": "v", "q_proj": "q", "k_proj": "k", "v_proj": "v"}
DROP, CHECK = "drop", "check"  # a key that is known and unused / a derived buffer compared with the module's


def _qkv(prefix: str):
    return lambda m: f"{prefix.format(*m.groups())}.attn.{_QKV[m['p']]}.{m['t']}"


def _vit_rules(p: str) -> list:
    """ViT, DeiT, BEiT and DINOv2 share the embedding and attention names (``p``: the model prefix)."""
    block = rf"^{p}\.{_L}"
    return [
        (rf"^{p}\.embeddings\.cls_token$", "cls_token"),
        (rf"^{p}\.embeddings\.distillation_token$", "dist_token"),
        (rf"^{p}\.embeddings\.position_embeddings$", "pos_embed"),
        (rf"^{p}\.embeddings\.patch_embeddings\.projection\.(weight|bias)$", r"patch_embed.proj.\1"),
        (rf"^{p}\.embeddings\.mask_token$", DROP),
        (
            block + r"attention\.(?:attention\.)?(?P<p>query|key|value|q_proj|k_proj|v_proj)\.(?P<t>weight|bias)$",
            _qkv("blocks.{0}"),
        ),
        (block + r"attention\.(?:output\.dense|o_proj)\.(weight|bias)$", r"blocks.\1.attn.proj.\2"),
        (block + r"(?:intermediate\.dense|mlp\.fc1)\.(weight|bias)$", r"blocks.\1.mlp.fc1.\2"),
        (block + r"(?:output\.dense|mlp\.fc2)\.(weight|bias)$", r"blocks.\1.mlp.fc2.\2"),
        (block + r"(?:layernorm_before|norm1)\.(weight|bias)$", r"blocks.\1.norm1.\2"),
        (block + r"(?:layernorm_after|norm2)\.(weight|bias)$", r"blocks.\1.norm2.\2"),
        (rf"^{p}\.layernorm\.(weight|bias)$", r"norm.\1"),
    ]


def _bias_rules(key: str, module: str) -> list:
    """A relative position bias under ``key``: its table to ``module``'s, its index buffer checked, not loaded."""
    return [
        (rf"{key}\.relative_position_bias_table$", rf"{module}.relative_position_bias_table"),
        (rf"{key}\.relative_position_index$", (CHECK, module)),
    ]


_RULES: dict[str, list] = {
    "vit": [
        *_vit_rules("vit"),
        (r"^vit\.pooler\.dense\.(weight|bias)$", DROP),  # ViTModel's pooler: the classifier reads the cls token
        (r"^classifier\.(weight|bias)$", r"head.\1"),
    ],
    "deit": [
        *_vit_rules("deit"),
        (r"^deit\.pooler\.dense\.(weight|bias)$", DROP),
        (r"^cls_classifier\.(weight|bias)$", r"head.\1"),
        (r"^distillation_classifier\.(weight|bias)$", r"head_dist.\1"),
        (r"^classifier\.(weight|bias)$", r"head.\1"),
    ],
    "beit": [
        *_vit_rules("beit"),
        (rf"^beit\.{_L}lambda_1$", r"blocks.\1.gamma_1"),
        (rf"^beit\.{_L}lambda_2$", r"blocks.\1.gamma_2"),
        # the bias tables kept, their index buffers checked against the window: one per block, or one shared
        *_bias_rules(rf"^beit\.{_L}(?:attention\.attention\.)?relative_position_bias", r"blocks.\1.attn"),
        *_bias_rules(r"^beit\.(?:encoder\.relative_position_bias|shared_position_bias)", "rel_pos_bias"),
        (r"^beit\.pooler\.layernorm\.(weight|bias)$", r"fc_norm.\1"),
        (r"^classifier\.(weight|bias)$", r"head.\1"),
    ],
    "dinov2": [
        *_vit_rules("dinov2"),
        (rf"^dinov2\.{_L}layer_scale1\.lambda1$", r"blocks.\1.ls1.gamma"),
        (rf"^dinov2\.{_L}layer_scale2\.lambda1$", r"blocks.\1.ls2.gamma"),
        (rf"^dinov2\.{_L}mlp\.weights_in\.(weight|bias)$", r"blocks.\1.mlp.fc1.\2"),
        (rf"^dinov2\.{_L}mlp\.(?:weights_out|down_proj)\.(weight|bias)$", r"blocks.\1.mlp.fc2.\2"),
        # 5.x splits the SwiGLU input projection in two: gate first, then the value (joined again below)
        (rf"^dinov2\.{_L}mlp\.gate_proj\.(weight|bias)$", r"blocks.\1.mlp.fc1_gate.\2"),
        (rf"^dinov2\.{_L}mlp\.up_proj\.(weight|bias)$", r"blocks.\1.mlp.fc1_up.\2"),
        (r"^classifier\.(weight|bias)$", r"head.\1"),
    ],
    "swin": [
        (r"^swin\.embeddings\.patch_embeddings\.projection\.(weight|bias)$", r"patch_embed.proj.\1"),
        (r"^swin\.embeddings\.norm\.(weight|bias)$", r"patch_embed.norm.\1"),
        (r"^swin\.embeddings\.mask_token$", DROP),
        (
            r"^swin\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.(?:self\.)?"
            r"(?P<p>query|key|value|q_proj|k_proj|v_proj)\.(?P<t>weight|bias)$",
            _qkv("layers.{0}.blocks.{1}"),
        ),
        (
            r"^swin\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.(?:self|relative_position_bias)\."
            r"relative_position_bias_table$",
            r"layers.\1.blocks.\2.attn.relative_position_bias_table",
        ),
        (
            r"^swin\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.(?:self|relative_position_bias)\."
            r"relative_position_index$",
            (CHECK, r"layers.\1.blocks.\2.attn"),
        ),
        (
            r"^swin\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.(?:output\.dense|o_proj)\.(weight|bias)$",
            r"layers.\1.blocks.\2.attn.proj.\3",
        ),
        (
            r"^swin\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.(?:intermediate\.dense|mlp\.fc1)\.(weight|bias)$",
            r"layers.\1.blocks.\2.mlp.fc1.\3",
        ),
        (
            r"^swin\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.(?:output\.dense|mlp\.fc2)\.(weight|bias)$",
            r"layers.\1.blocks.\2.mlp.fc2.\3",
        ),
        (
            r"^swin\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.layernorm_before\.(weight|bias)$",
            r"layers.\1.blocks.\2.norm1.\3",
        ),
        (
            r"^swin\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.layernorm_after\.(weight|bias)$",
            r"layers.\1.blocks.\2.norm2.\3",
        ),
        # transformers merges patches at the end of stage i, timm at the start of stage i + 1
        (
            r"^swin\.encoder\.layers\.(\d+)\.downsample\.(reduction|norm)\.(weight|bias)$",
            lambda m: f"layers.{int(m[1]) + 1}.downsample.{m[2]}.{m[3]}",
        ),
        (r"^swin\.layernorm\.(weight|bias)$", r"norm.\1"),
        (r"^classifier\.(weight|bias)$", r"head.fc.\1"),
    ],
}
_COMPILED = {family: [(re.compile(p), target) for p, target in rules] for family, rules in _RULES.items()}


def _target(family: str, key: str):
    for pattern, target in _COMPILED[family]:
        m = pattern.match(key)
        if m is None:
            continue
        if target == DROP:
            return DROP
        if isinstance(target, tuple):
            return CHECK, m.expand(target[1])
        return target(m) if callable(target) else m.expand(target)
    return None


def is_transformers_layout(keys) -> bool:
    """True when the keys look like a transformers image classifier of a family this module reads."""
    return any(k.startswith(f"{family}.") for k in keys for family in _RULES)


def _fuse(sd: dict, hf_of: dict, where: str) -> dict:
    """q/k/v -> timm's fused ``qkv`` (BEiT's bias-free key: ``q_bias`` and ``v_bias``); DINOv2 5.x's split SwiGLU
    input projection (gate, up) -> ``fc1``."""
    out = {k: v for k, v in sd.items() if not re.search(r"\.attn\.[qkv]\.|\.mlp\.fc1_(gate|up)\.", k)}
    prefixes = sorted({k.rsplit(".attn.", 1)[0] for k in sd if re.search(r"\.attn\.[qkv]\.", k)})
    for p in prefixes:
        parts = {t: [sd.get(f"{p}.attn.{x}.{t}") for x in "qkv"] for t in ("weight", "bias")}
        weights, biases = parts["weight"], parts["bias"]
        if any(w is None for w in weights):
            gone = [f"{p}.attn.{x}.weight" for x, w in zip("qkv", weights, strict=True) if w is None]
            raise CheckpointError(f"{where}: block {p} lacks the {', '.join(g.split('.')[-2] for g in gone)} weight")
        out[f"{p}.attn.qkv.weight"] = torch.cat(weights, dim=0)
        hf_of[f"{p}.attn.qkv.weight"] = ", ".join(hf_of.pop(f"{p}.attn.{x}.weight") for x in "qkv")
        present = [b is not None for b in biases]
        if all(present):
            out[f"{p}.attn.qkv.bias"] = torch.cat(biases, dim=0)
            hf_of[f"{p}.attn.qkv.bias"] = ", ".join(hf_of.pop(f"{p}.attn.{x}.bias") for x in "qkv")
        elif present == [True, False, True]:  # BEiT
            out[f"{p}.attn.q_bias"], out[f"{p}.attn.v_bias"] = biases[0], biases[2]
            hf_of[f"{p}.attn.q_bias"] = hf_of.pop(f"{p}.attn.q.bias")
            hf_of[f"{p}.attn.v_bias"] = hf_of.pop(f"{p}.attn.v.bias")
        elif any(present):
            raise CheckpointError(f"{where}: block {p} has a bias on some of query/key/value only")
    for gate in sorted(k for k in sd if ".mlp.fc1_gate." in k):
        up = gate.replace(".fc1_gate.", ".fc1_up.")
        if up not in sd:
            raise CheckpointError(f"{where}: {hf_of[gate]} has no up_proj beside it")
        fused = gate.replace(".fc1_gate.", ".fc1.")
        out[fused] = torch.cat([sd[gate], sd[up]], dim=0)
        hf_of[fused] = f"{hf_of.pop(gate)}, {hf_of.pop(up)}"
    return out


def convert(sd: dict, family: str, module: nn.Module, where: str, report=None) -> dict:
    """The transformers state dict ``sd`` of ``family`` renamed onto ``module``'s keys, strictly.

    Args:
        where: what to name in messages (the weights file).
        report: a ``LoadReport`` whose ``renamed``/``dropped``/``notes`` record what was done, or None.

    Raises CheckpointError naming the key at fault: unknown, missing, mis-shaped, or a position index that differs
    from the module's.
    """
    if family not in _COMPILED:
        raise CheckpointError(f"{where}: no key layout for model_type {family!r}")
    renamed: dict = {}
    hf_of: dict[str, str] = {}
    unknown, dropped, checked = [], [], []
    for key, value in sd.items():
        target = _target(family, key)
        if target is None:
            unknown.append(key)
        elif target == DROP:
            dropped.append(key)
        elif isinstance(target, tuple):
            _check_index(module, target[1], key, value, where)
            checked.append(key)
        else:
            if target in renamed:
                raise CheckpointError(f"{where}: {key} and {hf_of[target]} are the same weight ({target})")
            renamed[target], hf_of[target] = value, key
    if unknown:
        more = f" (+{len(unknown) - 3} more)" if len(unknown) > 3 else ""
        raise CheckpointError(
            f"{where}: key {', '.join(unknown[:3])}{more} is not part of a transformers {family} classifier this tool "
            "knows"
        )
    out = _fuse(renamed, hf_of, where)
    own = module.state_dict()
    missing = sorted(set(own) - set(out))
    if missing:
        raise CheckpointError(
            f"{where}: no weights for {', '.join(missing[:4])}"
            + (f" (+{len(missing) - 4} more)" if len(missing) > 4 else "")
            + f" of the {family} model its config.json describes"
        )
    for k in sorted(set(out) & set(own)):
        if tuple(out[k].shape) != tuple(own[k].shape):
            raise CheckpointError(
                f"{where}: {hf_of[k]} has shape {tuple(out[k].shape)}, the config.json's model needs "
                f"{tuple(own[k].shape)} ({k})"
            )
    extra = sorted(set(out) - set(own))
    if extra:
        raise CheckpointError(
            f"{where}: {', '.join(hf_of[k] for k in extra[:3])} has no place in the {family} model its config.json "
            "describes (a head or option the config does not declare)"
        )
    if report is not None:
        report.renamed.extend((hf_of[k], k) for k in sorted(out) if hf_of[k] != k)
        report.dropped.extend(dropped)
        if checked:
            report.notes.append(f"{len(checked)} relative_position_index buffer(s) checked against the module's")
        report.notes.append(f"transformers {family} layout: query/key/value fused into timm's qkv")
    return out


def _check_index(module: nn.Module, owner: str, key: str, value: torch.Tensor, where: str) -> None:
    """A stored ``relative_position_index`` is derived from the window; it must be the module's own."""
    try:
        own = module.get_submodule(owner).relative_position_index
    except AttributeError:
        raise CheckpointError(f"{where}: {key} has no relative position bias to belong to in this model") from None
    if tuple(own.shape) != tuple(value.shape) or not torch.equal(own.to(value.dtype).cpu(), value.cpu()):
        raise CheckpointError(f"{where}: {key} differs from the index the model's window implies")
