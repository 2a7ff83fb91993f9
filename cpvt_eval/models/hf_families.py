"""Hugging Face transformers image classifiers as timm modules: a ``config.json`` (``model_type`` and the sizes) ->
the timm model of the same computation, so that every PE policy, size check, FLOP count and probe applies to them
as to any timm model. The weights are renamed onto it by ``checkpoints.transformers_layouts``; nothing here
imports transformers.

=============  ======================================  =========================================================
``model_type``  transformers class                      module built here
=============  ======================================  =========================================================
``vit``         ``ViTForImageClassification``            timm ``VisionTransformer`` (cls token, ``token`` pool)
``deit``        ``DeiTForImageClassificationWithTeacher``  timm ``VisionTransformerDistilled`` (mean of both heads)
``deit``        ``DeiTForImageClassification``           ``hf_heads.DistilledClsOnly`` (cls head only)
``beit``        ``BeitForImageClassification``           timm ``Beit`` (relative position bias, layer scale,
                                                        mean pooling + ``fc_norm``, as the config says)
``swin``        ``SwinForImageClassification``           timm ``SwinTransformer``
``dinov2``      ``Dinov2ForImageClassification``         ``hf_heads.ClsMeanViT`` (layer scale, [cls ; mean patch])
=============  ======================================  =========================================================

The config's details are honoured, never the timm defaults: ``layer_norm_eps`` (1e-12 in transformers' ViT/DeiT/
BEiT, 1e-6 in timm's ViT; Swin's patch-embedding and patch-merging norms keep torch's 1e-5, as transformers builds
them), ``hidden_act``, ``qkv_bias``, ``mlp_ratio``/``intermediate_size``, DINOv2's SwiGLU FFN. A config this tool
cannot honour (an absolute PE in Swin, a model type outside the table) is refused in one line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

from torch import nn

from ..errors import ModelError
from .spec import ModelSpec

SUPPORTED = ("vit", "deit", "beit", "swin", "dinov2")
# transformers' hidden_act -> timm's activation name (timm.layers.get_act_layer); the tanh GELUs are one formula
ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "quick_gelu": "quick_gelu",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
# transformers' class per model type: the classifier with its head(s); the base models have none
CLASSIFIERS = {
    "vit": ("ViTForImageClassification",),
    "deit": ("DeiTForImageClassificationWithTeacher", "DeiTForImageClassification"),
    "beit": ("BeitForImageClassification",),
    "swin": ("SwinForImageClassification",),
    "dinov2": ("Dinov2ForImageClassification",),
}
_TORCH_LN_EPS = 1e-5


def unsupported(model_type: str, where: str) -> ModelError:
    return ModelError(
        f"{where}: model_type {model_type!r} is not supported; the transformers families this tool reads are "
        f"{', '.join(SUPPORTED)} (and cvt, under its registered names cvt_13, cvt_21, ...)"
    )


def _side(value, what: str, where: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ModelError(f"{where}: {what} {value} is not square; this tool evaluates square sizes")
        value = value[0]
    return int(value)


def label_names(config: dict, where: str) -> tuple[str, ...]:
    """The class names of ``id2label`` in index order (``LABEL_i`` when the config names none)."""
    id2label = config.get("id2label")
    if not isinstance(id2label, dict) or not id2label:
        n = int(config.get("num_labels") or 2)
        return tuple(f"LABEL_{i}" for i in range(n))
    try:
        by_index = {int(k): str(v) for k, v in id2label.items()}
    except (TypeError, ValueError):
        raise ModelError(f"{where}: id2label keys must be class indices 0, 1, ...") from None
    if sorted(by_index) != list(range(len(by_index))):
        raise ModelError(f"{where}: id2label must name the classes 0 ... {len(by_index) - 1}, each once")
    return tuple(by_index[i] for i in range(len(by_index)))


def _act(config: dict, where: str) -> str:
    act = config.get("hidden_act", "gelu")
    if act not in ACTIVATIONS:
        raise ModelError(f"{where}: hidden_act {act!r} is not supported (known: {', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[act]


def _set_activation(module: nn.Module, act: str) -> None:
    """Every MLP's activation to ``act`` (timm's BEiT and Swin build GELU whatever they are given)."""
    from timm.layers import Mlp, get_act_layer

    for m in module.modules():
        if isinstance(m, Mlp):
            m.act = get_act_layer(act)()


def _ln(eps: float):
    return partial(nn.LayerNorm, eps=eps)


def _vit_kwargs(config: dict, where: str, img_size: int | None) -> dict:
    hidden = int(config.get("hidden_size", 768))
    return dict(
        img_size=img_size or _side(config.get("image_size", 224), "image_size", where),
        patch_size=int(config.get("patch_size", 16)),
        in_chans=int(config.get("num_channels", 3)),
        embed_dim=hidden,
        depth=int(config.get("num_hidden_layers", 12)),
        num_heads=int(config.get("num_attention_heads", 12)),
        qkv_bias=bool(config.get("qkv_bias", True)),
        num_classes=len(label_names(config, where)),
    )


def _mlp_ratio(config: dict, hidden: int, where: str) -> float:
    inter = int(config.get("intermediate_size", 4 * hidden))
    if inter % hidden:
        raise ModelError(f"{where}: intermediate_size {inter} is not a multiple of hidden_size {hidden}")
    return inter / hidden


def _vit_blocks(config: dict, where: str, img_size) -> dict:
    """The arguments of a timm ViT with transformers' blocks: sizes, MLP ratio, layer norm (its eps) and activation."""
    kw = _vit_kwargs(config, where, img_size)
    return dict(
        **kw,
        mlp_ratio=_mlp_ratio(config, kw["embed_dim"], where),
        norm_layer=_ln(float(config.get("layer_norm_eps", 1e-12))),
        act_layer=_act(config, where),
    )


def _build_vit(config: dict, architecture: str, where: str, img_size=None, **_) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(**_vit_blocks(config, where, img_size), global_pool="token")


def _build_deit(config: dict, architecture: str, where: str, img_size=None, **_) -> nn.Module:
    from timm.models.deit import VisionTransformerDistilled

    from .hf_heads import DistilledClsOnly

    cls = DistilledClsOnly if architecture == "DeiTForImageClassification" else VisionTransformerDistilled
    return cls(**_vit_blocks(config, where, img_size))


def _swiglu(hidden: int):
    """DINOv2's SwiGLU FFN (``use_swiglu_ffn``): fc1 gives gate and value (``silu(x1) * x2``), fc2 projects back.
    Its hidden width is transformers' ``(int(d * mlp_ratio * 2 / 3) + 7) // 8 * 8``, not the block's."""
    from timm.layers import GluMlp

    def make(in_features, hidden_features=None, act_layer=None, **kwargs):
        return GluMlp(in_features, hidden_features=2 * hidden, act_layer=nn.SiLU, gate_last=False, **kwargs)

    return make


def _build_dinov2(config: dict, architecture: str, where: str, img_size=None, **_) -> nn.Module:
    from .hf_heads import ClsMeanViT

    kw = _vit_kwargs(config, where, img_size)
    hidden = kw["embed_dim"]
    ratio = float(config.get("mlp_ratio", 4))
    extra = {}
    if config.get("use_swiglu_ffn", False):
        width = (int(int(hidden * ratio) * 2 / 3) + 7) // 8 * 8
        extra["mlp_layer"] = _swiglu(width)
    if int(config.get("num_register_tokens", 0) or 0):
        raise unsupported("dinov2_with_registers", where)
    return ClsMeanViT(
        **kw,
        mlp_ratio=ratio,
        norm_layer=_ln(float(config.get("layer_norm_eps", 1e-6))),
        act_layer=_act(config, where),
        # a LayerScale in every block; 1.0 is a placeholder, the weights hold the learned scales
        init_values=1.0,
        **extra,
    )


def _build_beit(config: dict, architecture: str, where: str, img_size=None, **_) -> nn.Module:
    from timm.models.beit import Beit

    kw = _vit_kwargs(config, where, img_size)
    kw.pop("qkv_bias")  # BEiT: bias on the query and the value, none on the key (timm's q_bias / v_bias)
    hidden = kw["embed_dim"]
    scale = float(config.get("layer_scale_init_value", 0.1))
    mean_pooling = bool(config.get("use_mean_pooling", True))
    module = Beit(
        **kw,
        qkv_bias=True,
        mlp_ratio=_mlp_ratio(config, hidden, where),
        norm_layer=_ln(float(config.get("layer_norm_eps", 1e-12))),
        init_values=scale if scale > 0 else None,
        use_abs_pos_emb=bool(config.get("use_absolute_position_embeddings", False)),
        use_rel_pos_bias=bool(config.get("use_relative_position_bias", False)),
        use_shared_rel_pos_bias=bool(config.get("use_shared_relative_position_bias", False)),
        use_fc_norm=mean_pooling,
        global_pool="avg" if mean_pooling else "token",
    )
    _set_activation(module, _act(config, where))
    return module


def _build_swin(config: dict, architecture: str, where: str, img_size=None, window_size=None, **_) -> nn.Module:
    from timm.models.swin_transformer import PatchMerging, SwinTransformer

    if config.get("use_absolute_embeddings", False):
        raise ModelError(f"{where}: a Swin with use_absolute_embeddings is not supported (timm's Swin has no APE)")
    depths = tuple(int(d) for d in config.get("depths", (2, 2, 6, 2)))
    module = SwinTransformer(
        img_size=img_size or _side(config.get("image_size", 224), "image_size", where),
        patch_size=int(config.get("patch_size", 4)),
        in_chans=int(config.get("num_channels", 3)),
        num_classes=len(label_names(config, where)),
        embed_dim=int(config.get("embed_dim", 96)),
        depths=depths,
        num_heads=tuple(int(h) for h in config.get("num_heads", (3, 6, 12, 24))),
        window_size=window_size or int(config.get("window_size", 7)),
        mlp_ratio=float(config.get("mlp_ratio", 4.0)),
        qkv_bias=bool(config.get("qkv_bias", True)),
        drop_path_rate=0.0,
        norm_layer=_ln(float(config.get("layer_norm_eps", 1e-5))),
    )
    # transformers builds the patch-embedding and patch-merging norms with torch's default eps, whatever the config
    for m in (module.patch_embed, *(s for s in module.modules() if isinstance(s, PatchMerging))):
        norm = getattr(m, "norm", None)
        if isinstance(norm, nn.LayerNorm):
            norm.eps = _TORCH_LN_EPS
    _set_activation(module, _act(config, where))
    return module


_BUILDERS = {
    "vit": _build_vit,
    "deit": _build_deit,
    "beit": _build_beit,
    "swin": _build_swin,
    "dinov2": _build_dinov2,
}


def classifier_of(config: dict, where: str) -> str:
    """The transformers class the config was saved from, among the classifiers of its model type."""
    model_type = config.get("model_type")
    known = CLASSIFIERS[model_type]
    archs = [a for a in config.get("architectures") or () if isinstance(a, str)]
    if not archs:
        return known[0]
    if archs[0] not in known:
        raise ModelError(
            f"{where}: {archs[0]} has no classification head this tool reads (expected {' or '.join(known)})"
        )
    return archs[0]


def build_module(config: dict, where: str, img_size: int | None = None, window_size=None) -> nn.Module:
    """The timm module of ``config`` (``config.json`` as a dict), with random weights; ``img_size`` and
    ``window_size`` override the config's (a rebuild at another size)."""
    model_type = config.get("model_type")
    if model_type not in _BUILDERS:
        raise unsupported(str(model_type), where)
    try:
        module = _BUILDERS[model_type](config, classifier_of(config, where), where, img_size, window_size=window_size)
    except ModelError:
        raise
    except (TypeError, ValueError, AssertionError, KeyError) as e:
        raise ModelError(f"{where}: cannot build the {model_type} model its config describes ({e})") from None
    return module.eval()


@dataclass(frozen=True)
class TransformersSpec(ModelSpec):
    """The spec of a transformers checkpoint (a ``save_pretrained`` folder or a hub repo): its ``config.json``
    builds the module, its ``id2label`` names the classes, its ``preprocessor_config.json`` is the data config.

    Attributes:
        config: ``config.json`` as read.
        origin: where it was read: the folder, or ``hf-hub:org/name``.
        labels: the class names, index order (``id2label``).
    """

    config: dict = field(default_factory=dict, hash=False, compare=False)
    origin: str = ""

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type"))

    @property
    def architecture(self) -> str:
        return classifier_of(self.config, self.origin)

    @property
    def published(self) -> dict:
        return {}  # the published figures are those of named architectures, never of someone's fine-tuned weights

    def create(self, **overrides) -> nn.Module:
        unknown = sorted(set(overrides) - {"img_size", "window_size"})
        if unknown:
            raise ModelError(
                f"{self.name}: --model-arg {unknown[0]} does not apply to a transformers checkpoint (its config.json "
                f"defines the model)"
            )
        return build_module(self.config, self.origin, **overrides)


def transformers_spec(config: dict, name: str, origin: str, data=None) -> TransformersSpec:
    """The spec of a transformers ``config.json``; an unsupported model type or head is refused here, before any
    weights are read."""
    model_type = config.get("model_type")
    if model_type not in _BUILDERS:
        raise unsupported(str(model_type), origin)
    classifier_of(config, origin)
    patch = int(config.get("patch_size", 16 if model_type != "swin" else 4))
    return TransformersSpec(
        name=name,
        family="transformers",
        pe="auto",
        native_size=_side(config.get("image_size", 224), "image_size", origin),
        patch_size=patch,
        default_weights=origin,
        description=f"transformers {classifier_of(config, origin)} from {origin}",
        data=data,
        config=config,
        origin=origin,
        labels=label_names(config, origin),
    )
