"""FLOPs per image, attention products included.

Counted with ``torch.utils.flop_counter`` while attention runs through the math SDPA backend, because the counter
does not see the fused CPU attention kernel (it would miss the ``QK^T`` and ``AV`` products).
"""

from __future__ import annotations

import torch
from torch import nn


def count_flops(model: nn.Module, size: int, device: torch.device | None = None) -> float:
    """GFLOPs per image at ``size`` (a multiply-add counts 2), attention products included."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    if device is None:
        device = next(model.parameters()).device
    x = torch.zeros(1, 3, size, size, device=device)
    counter = FlopCounterMode(display=False)
    # Under no_grad with the parameters frozen, as timm's own FLOP counts run: the counter's module tracker hooks
    # autograd, and inference_mode tensors have no autograd history to hook (CaiT's class attention fails there).
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        # The math backend spells attention out as two batched matmuls the counter sees; the fused kernels it picks
        # by default on CPU are invisible to it.
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
            model(x)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return counter.get_total_flops() / 1e9
