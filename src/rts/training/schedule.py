"""Learning-rate schedule: linear warm-up from ``warmup_start_lr``, then cosine to ``min_lr``.

Evaluated per optimizer step on a fractional epoch, so warm-up is smooth even with few epochs.
The encoder's parameter group gets 0 while frozen and ``unfreeze_lr_multiplier`` x the base
schedule afterwards, so the pretrained encoder is not wrecked by the decoder's early gradients.
"""

from __future__ import annotations

import math


def base_lr(epoch: float, *, lr: float, min_lr: float, warmup_epochs: int, warmup_start_lr: float, max_epochs: int) -> float:
    if warmup_epochs > 0 and epoch < warmup_epochs:
        return warmup_start_lr + (lr - warmup_start_lr) * (epoch / warmup_epochs)
    span = max(max_epochs - warmup_epochs, 1e-9)
    progress = min(max((epoch - warmup_epochs) / span, 0.0), 1.0)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def group_lrs(epoch: float, *, optim, max_epochs: int) -> dict[str, float]:
    """LR of the ``encoder`` and ``decoder`` groups at a fractional epoch (``optim``: OptimConfig)."""
    b = base_lr(epoch, lr=optim.lr, min_lr=optim.min_lr, warmup_epochs=optim.warmup_epochs,
                warmup_start_lr=optim.warmup_start_lr, max_epochs=max_epochs)
    frozen = epoch < optim.freeze_backbone_epochs
    return {"encoder": 0.0 if frozen else b * optim.unfreeze_lr_multiplier, "decoder": b}
