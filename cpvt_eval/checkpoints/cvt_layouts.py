"""CvT checkpoint layouts, called from ``surgery.rename_keys``.

The CvT module's own key names are those of Microsoft's release files (``CvT-13-224x224-IN-1k.pth`` and the
others: bare state_dicts with ``stage{i}.patch_embed.proj.*``, ``stage{i}.blocks.{j}.attn.conv_proj_q.conv.weight``,
``...conv_proj_q.bn.running_mean``, ``...attn.proj_q.*``, ``stage2.cls_token``, ``norm.*``, ``head.*``), so those
load without renaming. The Hugging Face transformers layout (``CvtForImageClassification``: ``cvt.encoder.stages.
{i}.layers.{j}.attention.attention.convolution_projection_query...``, ``layernorm.*``, ``classifier.*``) is renamed
here, key by key; a key matching no rule is left as it is, so the strict load names it.
"""

from __future__ import annotations

import re

_ST = r"^cvt\.encoder\.stages\.(\d+)\."
_LAYER = _ST + r"layers\.(\d+)\."
_QKV = {"query": "q", "key": "k", "value": "v"}

# (pattern, replacement); the first match wins. \1 is the stage, \2 the block.
_HF_RULES = (
    (
        re.compile(_ST + r"embedding\.convolution_embeddings\.projection\.(weight|bias)$"),
        r"stage\1.patch_embed.proj.\2",
    ),
    (
        re.compile(_ST + r"embedding\.convolution_embeddings\.normalization\.(weight|bias)$"),
        r"stage\1.patch_embed.norm.\2",
    ),
    (re.compile(_ST + r"cls_token$"), r"stage\1.cls_token"),
    (re.compile(_LAYER + r"layernorm_before\.(weight|bias)$"), r"stage\1.blocks.\2.norm1.\3"),
    (re.compile(_LAYER + r"layernorm_after\.(weight|bias)$"), r"stage\1.blocks.\2.norm2.\3"),
    (
        re.compile(
            _LAYER + r"attention\.attention\.convolution_projection_(query|key|value)\.convolution_projection\."
            r"convolution\.weight$"
        ),
        lambda m: f"stage{m[1]}.blocks.{m[2]}.attn.conv_proj_{_QKV[m[3]]}.conv.weight",
    ),
    (
        re.compile(
            _LAYER + r"attention\.attention\.convolution_projection_(query|key|value)\.convolution_projection\."
            r"normalization\.(\w+)$"
        ),
        lambda m: f"stage{m[1]}.blocks.{m[2]}.attn.conv_proj_{_QKV[m[3]]}.bn.{m[4]}",
    ),
    (
        re.compile(_LAYER + r"attention\.attention\.projection_(query|key|value)\.(weight|bias)$"),
        lambda m: f"stage{m[1]}.blocks.{m[2]}.attn.proj_{_QKV[m[3]]}.{m[4]}",
    ),
    (re.compile(_LAYER + r"attention\.output\.dense\.(weight|bias)$"), r"stage\1.blocks.\2.attn.proj.\3"),
    (re.compile(_LAYER + r"intermediate\.dense\.(weight|bias)$"), r"stage\1.blocks.\2.mlp.fc1.\3"),
    (re.compile(_LAYER + r"output\.dense\.(weight|bias)$"), r"stage\1.blocks.\2.mlp.fc2.\3"),
    (re.compile(r"^layernorm\.(weight|bias)$"), r"norm.\1"),
    (re.compile(r"^classifier\.(weight|bias)$"), r"head.\1"),
)


def is_hf_cvt(keys) -> bool:
    """True when the keys are in the Hugging Face ``CvtForImageClassification`` layout."""
    return any(k.startswith("cvt.encoder.stages.") for k in keys)


def hf_to_release(key: str) -> str:
    """The Microsoft-release name of a Hugging Face CvT key (the key itself when no rule matches)."""
    for pattern, repl in _HF_RULES:
        if pattern.match(key):
            return pattern.sub(repl, key)
    return key


def hf_activation_note(act: str | None) -> str:
    """What a report says about a Hugging Face CvT checkpoint: the port's activation differs from the weights'."""
    return (
        f"Hugging Face CvT layout: its port runs the erf GELU, the weights were trained with QuickGELU; this model "
        f"runs act={act} (--model-arg act=gelu reproduces the port's outputs)"
    )
