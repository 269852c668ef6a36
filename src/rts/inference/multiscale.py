"""Multi-resolution inference: predict each scale's window and fuse the scales.

Each scale's window (``rts.data.windows``) is resized to the model input, predicted (with TTA
averaged within the scale), its logits resized back and the centre tile cropped. Scales fuse by
pixel-wise maximum. Fusion is done on logits: max and mean commute with a positive temperature, so
calibrating the fused logit equals calibrating each pass.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rts.data.windows import crop_centre, resize
from rts.inference.tta import tta_logits


def predict_multiscale(
    forward: Callable[[torch.Tensor], torch.Tensor],
    windows: dict[float, torch.Tensor],
    *,
    tile_size: int,
    tta: str = "none",
) -> torch.Tensor:
    """Fused logits (B, 1, T, T). ``windows[scale]`` is the normalised (B, C, T/scale, T/scale) input."""
    fused = None
    for scale, window in windows.items():
        size = window.shape[-1]
        logits = tta_logits(forward, resize(window, tile_size), tta)
        logits = crop_centre(resize(logits, size), tile_size)
        fused = logits if fused is None else torch.maximum(fused, logits)
    return fused
