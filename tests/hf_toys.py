"""Tiny random transformers image classifiers, saved in both key layouts, for the tests (transformers is a test-only
dependency: the package never imports it).

The 5.x layout is what ``save_pretrained(save_original_format=False)`` writes with the installed transformers (the
module's own names). The 4.x layout is derived here, key by key, from transformers' 4.x modeling code
(``src/transformers/models/{vit,deit,beit,dinov2,swin}/modeling_*.py`` of the v4 releases: ``ViTLayer`` holds
``attention.attention.{query,key,value}``, ``attention.output.dense``, ``intermediate.dense``, ``output.dense``
under ``encoder.layer.N``; ``BeitLayer`` its ``attention.attention.relative_position_bias``; ``BeitModel`` the
shared ``encoder.relative_position_bias``; ``Dinov2Layer`` keeps ``encoder.layer.N`` with ``layer_scale1.lambda1``,
``mlp.fc1``/``fc2`` or SwiGLU's ``mlp.weights_in``/``weights_out``; ``SwinLayer`` ``attention.self.{query,key,value,
relative_position_bias_table}``), the same renames transformers 5 lists in its ``conversion_mapping.py``. Older 4.x
files also hold the ``relative_position_index`` buffers of BEiT and Swin; the 4.x layout here has them too.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore", module="transformers")
import transformers as T  # noqa: E402

SMALL = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2)

# family -> (config, transformers class)
FAMILIES = {
    "vit": lambda n: (T.ViTConfig(**SMALL, intermediate_size=64, num_labels=n), T.ViTForImageClassification),
    "deit": lambda n: (
        T.DeiTConfig(**SMALL, intermediate_size=64, num_labels=n),
        T.DeiTForImageClassificationWithTeacher,
    ),
    "deit-cls": lambda n: (T.DeiTConfig(**SMALL, intermediate_size=64, num_labels=n), T.DeiTForImageClassification),
    "beit": lambda n: (
        T.BeitConfig(**SMALL, intermediate_size=64, num_labels=n, use_relative_position_bias=True),
        T.BeitForImageClassification,
    ),
    "beit-shared": lambda n: (
        T.BeitConfig(
            **SMALL,
            intermediate_size=64,
            num_labels=n,
            use_shared_relative_position_bias=True,
            use_absolute_position_embeddings=True,
            use_mean_pooling=False,
        ),
        T.BeitForImageClassification,
    ),
    "swin": lambda n: (
        T.SwinConfig(
            image_size=32, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[1, 2], window_size=4, num_labels=n
        ),
        T.SwinForImageClassification,
    ),
    "dinov2": lambda n: (T.Dinov2Config(**SMALL, num_labels=n), T.Dinov2ForImageClassification),
    "dinov2-swiglu": lambda n: (
        T.Dinov2Config(**SMALL, num_labels=n, use_swiglu_ffn=True),
        T.Dinov2ForImageClassification,
    ),
}


def _vit_like(p: str) -> list[tuple[str, str]]:
    layer = rf"^{p}\.layers\.(\d+)\."
    old = rf"{p}.encoder.layer.\1."
    return [
        (layer + r"attention\.q_proj\.", old + "attention.attention.query."),
        (layer + r"attention\.k_proj\.", old + "attention.attention.key."),
        (layer + r"attention\.v_proj\.", old + "attention.attention.value."),
        (layer + r"attention\.o_proj\.", old + "attention.output.dense."),
        (layer + r"mlp\.fc1\.", old + "intermediate.dense."),
        (layer + r"mlp\.fc2\.", old + "output.dense."),
        (layer + r"relative_position_bias\.", old + "attention.attention.relative_position_bias."),
        (layer, old),
        (rf"^{p}\.shared_position_bias\.", f"{p}.encoder.relative_position_bias."),
    ]


_DINO = [
    (r"\.attention\.q_proj\.", ".attention.attention.query."),
    (r"\.attention\.k_proj\.", ".attention.attention.key."),
    (r"\.attention\.v_proj\.", ".attention.attention.value."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.mlp\.down_proj\.", ".mlp.weights_out."),
]
_SWIN = [
    (r"\.attention\.q_proj\.", ".attention.self.query."),
    (r"\.attention\.k_proj\.", ".attention.self.key."),
    (r"\.attention\.v_proj\.", ".attention.self.value."),
    (
        r"\.attention\.relative_position_bias\.relative_position_bias_table$",
        ".attention.self.relative_position_bias_table",
    ),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.mlp\.fc1\.", ".intermediate.dense."),
    (r"\.mlp\.fc2\.", ".output.dense."),
]
RENAME_4X = {
    "vit": _vit_like("vit"),
    "deit": _vit_like("deit"),
    "beit": _vit_like("beit"),
    "dinov2": _DINO,
    "swin": _SWIN,
}


def model_type(family: str) -> str:
    return family.split("-")[0]


def make(family: str, num_labels: int = 3, seed: int = 0, scale: float = 0.2, id2label=None):
    """A transformers classifier of ``family`` with random weights (every tensor perturbed, so that zero-initialised
    tables and layer scales matter), in eval mode."""
    config, cls = FAMILIES[family](num_labels)
    if id2label is not None:
        config.id2label = dict(enumerate(id2label))
        config.label2id = {v: k for k, v in config.id2label.items()}
    torch.manual_seed(seed)
    model = cls(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model


def to_4x(sd: dict, family: str) -> dict:
    """The 5.x state dict ``sd`` under the 4.x names (and with the older files' ``relative_position_index``)."""
    rules = [(re.compile(a), b) for a, b in RENAME_4X[model_type(family)]]
    out = {}
    for key, value in sd.items():
        if key.endswith(".mlp.gate_proj.weight") or key.endswith(".mlp.gate_proj.bias"):
            up = sd[key.replace("gate_proj", "up_proj")]
            key, value = key.replace("gate_proj", "weights_in"), torch.cat([value, up])
        elif ".mlp.up_proj." in key:
            continue
        for pattern, repl in rules:
            if pattern.search(key):
                key = pattern.sub(repl, key, count=1)
                break
        out[key] = value.contiguous()
    return out


def add_index_buffers(sd: dict, family: str, window: int) -> dict:
    """The ``relative_position_index`` buffers older 4.x BEiT and Swin files hold beside each bias table."""
    out = dict(sd)
    for key in sd:
        if key.endswith("relative_position_bias.relative_position_bias_table"):  # BEiT
            from transformers.models.beit.modeling_beit import BeitRelativePositionBias

            index = BeitRelativePositionBias.generate_relative_position_index((window, window))
            out[key.replace("relative_position_bias_table", "relative_position_index")] = index.clone()
        elif key.endswith("attention.self.relative_position_bias_table"):  # Swin: the window of its stage
            side = int(round((sd[key].shape[0] ** 0.5 + 1) / 2))
            out[key.replace("relative_position_bias_table", "relative_position_index")] = swin_index(side)
    return out


def swin_index(w: int) -> torch.Tensor:
    """Swin's pairwise relative position index in a w x w window (the 4.x ``SwinSelfAttention`` formula)."""
    coords = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += w - 1
    rel[:, :, 1] += w - 1
    rel[:, :, 0] *= 2 * w - 1
    return rel.sum(-1)


def save(model, folder: Path, layout: str, family: str, processor: dict | None = None) -> Path:
    """``model`` saved in ``folder`` in the ``4x`` or ``5x`` layout, with a ``preprocessor_config.json``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    if layout == "5x":
        model.save_pretrained(folder, save_original_format=False)
    else:
        model.config.architectures = [type(model).__name__]  # as save_pretrained records it
        model.config.save_pretrained(folder)
        sd = to_4x(model.state_dict(), family)
        window = model.config.image_size // model.config.patch_size if model_type(family) == "beit" else 0
        save_file(add_index_buffers(sd, family, window), str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "preprocessor_config.json").write_text(
        json.dumps(
            processor
            or {
                "image_processor_type": "ViTImageProcessor",
                "do_resize": True,
                "size": {"height": 32, "width": 32},
                "resample": 2,
                "image_mean": [0.5, 0.5, 0.5],
                "image_std": [0.5, 0.5, 0.5],
            }
        )
    )
    return folder


def logits(model, x: torch.Tensor, interpolate: bool = False) -> torch.Tensor:
    with torch.no_grad():
        if interpolate:
            return model(pixel_values=x, interpolate_pos_encoding=True).logits
        return model(pixel_values=x).logits
