"""CvT (Wu et al., "CvT: Introducing Convolutions to Vision Transformers", ICCV 2021), registered with timm.

CvT has no position embedding: position comes from convolutions alone. Each of its three stages starts with a
convolutional token embedding (a strided conv over the previous stage's map, then LayerNorm), and every attention
block derives its queries, keys and values from the token grid through a depthwise 3x3 conv + BatchNorm (stride 1
for the queries, 2 for keys and values) before the usual linear projections. Nothing depends on the grid size, so
at a new input size nothing is resampled (policy ``conv-native``); sizes must be multiples of the total stride 16
so that every stage's grid is whole.

Facts of the released models this module follows (the checkpoints depend on them):

* the attention scale is the stage's *whole* dim ``** -0.5``, not the per-head dim;
* the cls token exists only in the last stage; it joins q, k and v without passing through the conv projections;
* the MLP activation is QuickGELU ``x * sigmoid(1.702 x)`` (the weights were trained with it); ``act="gelu"``
  gives the erf GELU that the Hugging Face port runs;
* LayerNorm eps 1e-5; the head reads the final-normed cls token.

The module's parameter names are those of Microsoft's release files (``stage{i}.patch_embed.proj.weight``,
``stage{i}.blocks.{j}.attn.conv_proj_q.bn.running_mean``, ``norm.*``, ``head.*``), so those files load as they are;
the Hugging Face layout is renamed to it in ``cpvt_eval.checkpoints.cvt_layouts``. Evaluation only: no dropout or
stochastic depth.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from .cpvt import strip_factory_kwargs, timm_pretrained_cfg
from .spec import DataConfig, entry_point

# The official evaluation at 224: resize the shorter side to size / 0.875, centre crop, ImageNet mean/std. At 384
# the official evaluation squashes the whole image to 384x384 (``--crop-mode full``, crop_pct unused).
CVT_DATA = DataConfig(crop_pct=0.875, interpolation="bicubic")
CVT_DATA_384 = DataConfig(crop_pct=1.0, interpolation="bicubic")

ACTIVATIONS = ("quick_gelu", "gelu")


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``: the GELU approximation CvT's released weights were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def _activation(name: str) -> nn.Module:
    if name == "quick_gelu":
        return QuickGELU()
    if name == "gelu":
        return nn.GELU()
    raise ModelError(f"unknown CvT activation act={name!r}; choose one of {', '.join(ACTIVATIONS)}")


@dataclass(frozen=True)
class StageCfg:
    """One stage: token-embedding conv (kernel, stride, padding), width, heads, blocks, cls token."""

    kernel: int
    stride: int
    padding: int
    dim: int
    heads: int
    depth: int
    cls_token: bool = False


class ConvEmbed(nn.Module):
    """Convolutional token embedding: a strided conv, then LayerNorm over channels of every position."""

    def __init__(self, in_chans: int, dim: int, kernel: int, stride: int, padding: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=kernel, stride=stride, padding=padding)
        self.norm = nn.LayerNorm(dim, eps=1e-5)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.proj(x)
        grid = (x.shape[2], x.shape[3])
        return self.norm(x.flatten(2).transpose(1, 2)), grid


class ConvProjection(nn.Module):
    """Depthwise 3x3 conv (no bias) + BatchNorm on the token grid; returns tokens ``(B, H'*W', C)``."""

    def __init__(self, dim: int, stride: int, kernel: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, kernel, stride=stride, padding=kernel // 2, groups=dim, bias=False)
        self.bn = nn.BatchNorm2d(dim)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(feat)).flatten(2).transpose(1, 2)


class ConvAttention(nn.Module):
    """Multi-head attention over conv-projected queries (stride 1) and keys/values (stride 2)."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True, stride_kv: int = 2, stride_q: int = 1):
        super().__init__()
        if dim % heads:
            raise ModelError(f"CvT stage width {dim} is not divisible by its {heads} heads")
        self.heads = heads
        # The released models scale by the whole width, not the per-head width; the weights depend on it.
        self.scale = dim**-0.5
        self.conv_proj_q = ConvProjection(dim, stride_q)
        self.conv_proj_k = ConvProjection(dim, stride_kv)
        self.conv_proj_v = ConvProjection(dim, stride_kv)
        self.proj_q = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj_k = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj_v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.view(b, n, self.heads, c // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, grid: tuple[int, int], num_prefix: int) -> torch.Tensor:
        prefix, tokens = x[:, :num_prefix], x[:, num_prefix:]
        b, n, c = tokens.shape
        feat = tokens.transpose(1, 2).reshape(b, c, grid[0], grid[1])
        q, k, v = self.conv_proj_q(feat), self.conv_proj_k(feat), self.conv_proj_v(feat)
        if num_prefix:
            # the cls token takes part in attention but not in the convolutions (it has no place on the grid)
            q, k, v = (torch.cat([prefix, t], dim=1) for t in (q, k, v))
        q, k, v = self._heads(self.proj_q(q)), self._heads(self.proj_k(k)), self._heads(self.proj_v(v))
        # SDPA rather than spelled-out matmuls: fused kernels where available, and the FLOP counter sees the
        # products through the math backend (throughput.count_flops).
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(b, -1, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = _activation(act)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block with convolutional attention."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, qkv_bias: bool, act: str):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = ConvAttention(dim, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act)

    def forward(self, x: torch.Tensor, grid: tuple[int, int], num_prefix: int) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), grid, num_prefix)
        return x + self.mlp(self.norm2(x))


class Stage(nn.Module):
    """Token embedding, optional cls token, blocks. Takes and returns a ``(B, C, H, W)`` map (plus the cls token)."""

    def __init__(self, in_chans: int, cfg: StageCfg, mlp_ratio: float, qkv_bias: bool, act: str):
        super().__init__()
        self.patch_embed = ConvEmbed(in_chans, cfg.dim, cfg.kernel, cfg.stride, cfg.padding)
        if cfg.cls_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        else:
            self.cls_token = None
        self.blocks = nn.ModuleList([Block(cfg.dim, cfg.heads, mlp_ratio, qkv_bias, act) for _ in range(cfg.depth)])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x, grid = self.patch_embed(x)
        num_prefix = 0
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
            num_prefix = 1
        for blk in self.blocks:
            x = blk(x, grid, num_prefix)
        cls, tokens = x[:, :num_prefix], x[:, num_prefix:]
        feat = tokens.transpose(1, 2).reshape(x.shape[0], -1, grid[0], grid[1])
        return feat, (cls if num_prefix else None)


class CvT(nn.Module):
    """Convolutional vision transformer: three stages ``stage0..stage2``, final norm, linear head on the cls token."""

    pe_kind = "conv"  # read by introspect: no position embedding, nothing to resample at a new size

    def __init__(
        self,
        stages: tuple[StageCfg, ...],
        num_classes: int = 1000,
        in_chans: int = 3,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        act: str = "quick_gelu",
        img_size: int = 224,
    ):
        super().__init__()
        if not stages[-1].cls_token:
            raise ModelError("this CvT implementation reads the cls token of the last stage")
        _activation(act)  # an unknown name fails before anything is built
        self.act = act
        self.num_classes = int(num_classes)
        self.num_stages = len(stages)
        self.img_size = int(img_size)
        chans = in_chans
        for i, cfg in enumerate(stages):
            setattr(self, f"stage{i}", Stage(chans, cfg, mlp_ratio, qkv_bias, act))
            chans = cfg.dim
        self.num_features = self.embed_dim = chans
        self.norm = nn.LayerNorm(chans, eps=1e-5)
        self.head = nn.Linear(chans, num_classes) if num_classes > 0 else nn.Identity()
        # what every input size must be a multiple of so that every stage's grid is whole (4 * 2 * 2 = 16)
        self.total_stride = 1
        for cfg in stages:
            self.total_stride *= cfg.stride
        self.grid_size = (img_size // self.total_stride, img_size // self.total_stride)
        self.apply(_init_weights)

    @property
    def recorded_args(self) -> dict:
        """Constructor choices that change the outputs, recorded in every result row even at their defaults."""
        return {"act": self.act}

    def stages(self) -> list[Stage]:
        return [getattr(self, f"stage{i}") for i in range(self.num_stages)]

    def set_input_size(self, img_size: int) -> None:
        """Nothing to resample; only the grid the rows report (the last stage's) follows the size."""
        self.img_size = int(img_size)
        self.grid_size = (img_size // self.total_stride, img_size // self.total_stride)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The final-normed cls token ``(B, C)``."""
        cls = None
        for stage in self.stages():
            x, cls = stage(x)
        return self.norm(cls[:, 0])

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.head(x)

    def get_classifier(self) -> nn.Module:
        return self.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def _stages(dims, heads, depths) -> tuple[StageCfg, ...]:
    embeds = ((7, 4, 2), (3, 2, 1), (3, 2, 1))
    return tuple(
        StageCfg(*embed, dim, h, d, cls_token=(i == len(dims) - 1))
        for i, (embed, dim, h, d) in enumerate(zip(embeds, dims, heads, depths, strict=True))
    )


CVT_13 = _stages((64, 192, 384), (1, 3, 6), (1, 2, 10))
CVT_21 = _stages((64, 192, 384), (1, 3, 6), (1, 4, 16))
CVT_W24 = _stages((192, 768, 1024), (3, 12, 16), (2, 2, 20))
CVT_TINY = _stages((16, 32, 48), (1, 2, 3), (1, 2, 3))  # for tests and smoke runs: same structure, narrow, shallow


@dataclass(frozen=True)
class _Variant:
    """One entry point's stages and spec fields; the data config follows the native size (see ``CVT_DATA``)."""

    stages: tuple[StageCfg, ...]
    description: str
    native_size: int = 224
    default_weights: str | None = None
    family: str = "cvt"

    @property
    def data(self) -> DataConfig:
        return CVT_DATA_384 if self.native_size == 384 else CVT_DATA


_VARIANTS = {
    "cvt_13": _Variant(
        CVT_13, "CvT-13: conv token embedding + conv projections, no PE", default_weights="hf-hub:microsoft/cvt-13"
    ),
    "cvt_21": _Variant(
        CVT_21, "CvT-21: conv token embedding + conv projections, no PE", default_weights="hf-hub:microsoft/cvt-21"
    ),
    "cvt_13_384": _Variant(CVT_13, "CvT-13 fine-tuned at 384 (ImageNet-1k)", 384, "hf-hub:microsoft/cvt-13-384"),
    "cvt_21_384": _Variant(CVT_21, "CvT-21 fine-tuned at 384 (ImageNet-1k)", 384, "hf-hub:microsoft/cvt-21-384"),
    "cvt_w24": _Variant(
        CVT_W24, "CvT-W24: ImageNet-22k pre-training, fine-tuned at 384", 384, "hf-hub:microsoft/cvt-w24-384-22k"
    ),
    "cvt_toy": _Variant(CVT_TINY, "toy CvT (tests, smoke runs)", 64, family="demo"),
}


def _register(fn: Callable) -> Callable:
    """``entry_point`` for the model function ``fn``, with the spec of its row in ``_VARIANTS``."""
    variant = _VARIANTS[fn.__name__]
    return entry_point(
        variant.family,
        "conv",
        description=variant.description,
        data=variant.data,
        native_size=variant.native_size,
        default_weights=variant.default_weights,
        patch_size=16,
    )(fn)


def _create_cvt(name: str, pretrained: bool, **kwargs) -> CvT:
    """The model of row ``name`` of ``_VARIANTS``; ``kwargs`` (from ``timm.create_model``) override its defaults."""
    if pretrained:
        raise ModelError("CvT weights load through the tool's checkpoint loader (hf-hub: or a release file)")
    variant = _VARIANTS[name]
    kwargs = strip_factory_kwargs(kwargs)
    img_size = int(kwargs.pop("img_size", variant.native_size))
    try:
        model = CvT(variant.stages, img_size=img_size, **kwargs)
    except TypeError as e:
        raise ModelError(f"cannot build CvT with {kwargs}: {e}") from None
    model.pretrained_cfg = model.default_cfg = timm_pretrained_cfg(
        img_size, model.num_classes, variant.data, first_conv="stage0.patch_embed.proj"
    )
    return model


@_register
def cvt_13(pretrained=False, **kwargs) -> CvT:
    """CvT-13 (20.0M parameters), ImageNet-1k at 224."""
    return _create_cvt("cvt_13", pretrained, **kwargs)


@_register
def cvt_21(pretrained=False, **kwargs) -> CvT:
    """CvT-21 (31.6M parameters), ImageNet-1k at 224."""
    return _create_cvt("cvt_21", pretrained, **kwargs)


@_register
def cvt_13_384(pretrained=False, **kwargs) -> CvT:
    """CvT-13 fine-tuned at 384 on ImageNet-1k (same architecture as ``cvt_13``)."""
    return _create_cvt("cvt_13_384", pretrained, **kwargs)


@_register
def cvt_21_384(pretrained=False, **kwargs) -> CvT:
    """CvT-21 fine-tuned at 384 on ImageNet-1k (same architecture as ``cvt_21``)."""
    return _create_cvt("cvt_21_384", pretrained, **kwargs)


@_register
def cvt_w24(pretrained=False, **kwargs) -> CvT:
    """CvT-W24 (277M parameters): its only released weights are ImageNet-22k pre-trained, fine-tuned at 384."""
    return _create_cvt("cvt_w24", pretrained, **kwargs)


@_register
def cvt_toy(pretrained=False, **kwargs) -> CvT:
    """A tiny CvT: stages 16/32/48 wide with 1/2/3 blocks, 10 classes unless ``num_classes`` says otherwise."""
    kwargs.setdefault("num_classes", 10)
    return _create_cvt("cvt_toy", pretrained, **kwargs)
