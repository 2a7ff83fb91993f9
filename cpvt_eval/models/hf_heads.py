"""The two classifier heads of Hugging Face transformers models that timm's classes do not have, as thin subclasses
of timm's ``VisionTransformer``, so that every resolution policy, size check and FLOP count of a timm ViT applies.

* ``Dinov2ForImageClassification`` reads ``[cls token ; mean of the patch tokens]`` (twice the width) after the
  final norm: ``ClsMeanViT``;
* ``DeiTForImageClassification`` (the plain one, not ``...WithTeacher``) keeps the distillation token in the
  sequence but reads only the cls token: ``DistilledClsOnly``. ``...WithTeacher`` is timm's own
  ``VisionTransformerDistilled``, whose eval output is the mean of its two heads, as transformers computes it.
"""

from __future__ import annotations

import torch
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer
from torch import nn


class ClsMeanViT(VisionTransformer):
    """A ViT whose linear head reads the final-normed cls token concatenated with the mean patch token (DINOv2's
    classifier in transformers)."""

    def __init__(self, *args, num_classes: int = 1000, **kwargs):
        super().__init__(*args, num_classes=num_classes, **kwargs)
        self.head_hidden_size = 2 * self.embed_dim
        self.head = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.cat([x[:, 0], x[:, self.num_prefix_tokens :].mean(dim=1)], dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)


class DistilledClsOnly(VisionTransformerDistilled):
    """A distilled DeiT (cls and dist tokens) with one head, on the cls token."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.head_dist = None  # the plain classifier has no distillation head (and no key for one)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x[:, 0])
        return x if pre_logits else self.head(x)
