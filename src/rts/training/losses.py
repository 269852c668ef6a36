"""Losses for binary RTS segmentation under extreme class imbalance (RTS are ~0.1% of the Arctic's pixels).

Every loss takes raw logits and has the same call signature::

    loss(logits, target, valid) -> scalar

- ``logits``: (B, 1, H, W), any float dtype (computed in float32, so AMP is safe).
- ``target``: (B, 1, H, W) float in [0, 1]; soft labels (a Gaussian ramp across the outline) are allowed.
- ``valid``: (B, 1, H, W) bool, or a float per-pixel weight >= 0. Pixels with label 255 and the
  boundary-ignore band (the uncertain outline) have ``valid == 0``.

Invalid pixels are removed *before* any arithmetic (their logits and targets are replaced by 0
with ``torch.where``), so arbitrary values there (even NaN, or the raw label 255) change neither
the loss nor any gradient, and their logit gradient is exactly 0. Pixel losses are averaged over
the valid pixels (weighted mean ``sum(w * l) / sum(w)``); a batch without any valid pixel gives
a loss of exactly 0 that is still attached to the graph (``backward()`` works, no NaN).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from rts.config import BalancedCEConfig, FocalConfig, LossName, TverskyConfig

__all__ = [
    "BCELoss",
    "BalancedCELoss",
    "FocalLoss",
    "TverskyLoss",
    "balanced_positive_weight",
    "build_loss",
]


def _prepare(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check shapes and return float32 (logits, target, weight) with invalid pixels zeroed."""
    if logits.shape != target.shape or logits.shape != valid.shape:
        raise ValueError(
            f"loss inputs must share one shape (B, 1, H, W): logits {tuple(logits.shape)}, "
            f"target {tuple(target.shape)}, valid {tuple(valid.shape)}"
        )
    weight = valid.to(torch.float32)
    keep = weight > 0
    # torch.where (not multiplication) so NaN/255 on ignored pixels cannot leak into the loss or the gradient.
    logits = torch.where(keep, logits.float(), torch.zeros((), device=logits.device))
    target = torch.where(keep, target.float(), torch.zeros((), device=target.device))
    return logits, target, torch.where(keep, weight, torch.zeros((), device=weight.device))


def _valid_mean(pixel_loss: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    # No valid pixel: the numerator is exactly 0 (inputs were zeroed), so 0 / tiny = 0, still in the graph.
    return (pixel_loss * weight).sum() / weight.sum().clamp_min(1e-12)


class FocalLoss(nn.Module):
    """Binary focal loss ``FL = -alpha_t (1 - p_t)^gamma log(p_t)`` (Lin et al. 2017).

    ``alpha`` weights the positive (RTS) class: ``alpha_t = alpha`` for y = 1 and ``1 - alpha`` for
    y = 0. Soft targets use the BCE form: ``log(p_t) = -BCE(logit, y)``, ``p_t = exp(-BCE)`` and
    ``alpha_t = alpha * y + (1 - alpha) * (1 - y)``, which equals the definition above for hard
    labels and matches ``smp.losses.FocalLoss(mode="binary")``.

    Args:
        alpha: Weight of the positive class, in [0, 1].
        gamma: Focusing exponent >= 0 (0 gives alpha-weighted BCE).
    """

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0) -> None:
        super().__init__()
        self.alpha = alpha
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        logits, target, weight = _prepare(logits, target, valid)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        p_t = torch.exp(-bce)
        alpha_t = self.alpha * target + (1.0 - self.alpha) * (1.0 - target)
        return _valid_mean(alpha_t * (1.0 - p_t).pow(self.gamma) * bce, weight)


class TverskyLoss(nn.Module):
    """Tversky loss ``TL = 1 - (TP + s) / (TP + alpha * FN + beta * FP + s)``, per batch.

    ``alpha`` weights false negatives and ``beta`` false positives (the convention of the Tversky index; note
    that ``smp.losses.TverskyLoss`` uses the opposite one, its ``alpha`` is on FP). With
    ``beta > alpha`` the loss favours precision. Soft counts over the valid pixels of the whole
    batch (not per image, so that the many all-negative tiles still contribute their false
    positives): ``TP = sum(w p y)``, ``FN = sum(w (1 - p) y)``, ``FP = sum(w p (1 - y))`` with
    ``p = sigmoid(logit)``. ``smooth`` is the usual epsilon; with ``smooth > 0`` a batch without
    positive pixels still penalises predicted positives (``1 - s / (s + beta FP)``).

    Args:
        alpha: Weight of false negatives, in [0, 1].
        beta: Weight of false positives, in [0, 1].
        smooth: Additive smoothing >= 0 (``tversky.smooth``).
    """

    def __init__(self, alpha: float = 0.3, beta: float = 0.7, smooth: float = 1.0) -> None:
        super().__init__()
        self.alpha = alpha
        self.beta = beta
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        logits, target, weight = _prepare(logits, target, valid)
        # logsigmoid().exp() is the numerically stable sigmoid (no vanishing gradient at +-inf).
        prob = F.logsigmoid(logits).exp() * weight
        tp = (prob * target).sum()
        fp = (prob * (1.0 - target)).sum()
        fn = ((weight - prob) * target).sum()
        num = tp + self.smooth
        den = tp + self.alpha * fn + self.beta * fp + self.smooth
        # den == 0 only when nothing is valid and smooth == 0: define the loss as 0 there.
        score = torch.where(den > 0, num / den.clamp_min(1e-12), torch.ones_like(den))
        return 1.0 - score


def balanced_positive_weight(class_pixel_counts: tuple[int, int], weighting: Literal["linear", "sqrt", "log"]) -> float:
    """Weight of the RTS class for class-balanced CE (the background weight is 1).

    ``ratio = num_bg / num_rts``; ``linear``: ``ratio``, ``sqrt``: ``sqrt(ratio)``,
    ``log``: ``log(1 + ratio)`` (natural log; the ``1 +`` keeps the weight > 0 for any ratio).

    Args:
        class_pixel_counts: ``(num_bg_pixels, num_rts_pixels)`` over the training split, counting
            valid pixels only (label 0 and label 1).
        weighting: ``balanced_ce.weighting``.

    Raises:
        ValueError: if a count is negative or there are no RTS pixels.
    """
    num_bg, num_rts = class_pixel_counts
    if num_bg < 0 or num_rts <= 0:
        raise ValueError(f"class_pixel_counts must be (num_bg >= 0, num_rts > 0) training pixels, got {class_pixel_counts}")
    ratio = num_bg / num_rts
    match weighting:
        case "linear":
            return ratio
        case "sqrt":
            return math.sqrt(ratio)
        case "log":
            return math.log1p(ratio)
        case _:
            raise ValueError(f"balanced_ce.weighting: unknown {weighting!r}; valid: 'linear', 'sqrt', 'log'")


class BalancedCELoss(nn.Module):
    """Class-balanced BCE: ``-(w_rts y log p + (1 - y) log(1 - p))``, mean over valid pixels.

    The mean divides by the number of valid pixels (not by the sum of class weights), so the loss
    scale grows with ``w_rts``; the learning rate sees the weighting, as the weighted-BCE formula implies.

    Args:
        positive_weight: ``w_rts`` (see :func:`balanced_positive_weight`); ``w_bg`` is 1.
    """

    def __init__(self, positive_weight: float) -> None:
        super().__init__()
        self.positive_weight = float(positive_weight)
        # a buffer, so it moves with the loss module and is not copied to the device every step
        self.register_buffer("_pos_weight", torch.tensor(self.positive_weight), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        logits, target, weight = _prepare(logits, target, valid)
        pos_weight = self._pos_weight
        if pos_weight.device != logits.device:  # a loss built on the CPU and never moved: move it once
            self._pos_weight = pos_weight = pos_weight.to(logits.device)
        pixel = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight, reduction="none")
        return _valid_mean(pixel, weight)


class BCELoss(BalancedCELoss):
    """Plain BCE with logits over valid pixels (the naive baseline)."""

    def __init__(self) -> None:
        super().__init__(positive_weight=1.0)


def build_loss(
    name: LossName,
    *,
    focal: FocalConfig,
    tversky: TverskyConfig,
    balanced_ce: BalancedCEConfig,
    class_pixel_counts: tuple[int, int] | None = None,
) -> nn.Module:
    """Build the training loss named by ``params.loss``.

    Args:
        name: ``focal`` | ``tversky`` | ``balanced_ce`` | ``bce``.
        focal: The ``focal`` params section.
        tversky: The ``tversky`` params section.
        balanced_ce: The ``balanced_ce`` params section.
        class_pixel_counts: ``(num_bg, num_rts)`` valid training pixels; required by ``balanced_ce``.

    Returns:
        A module called as ``loss(logits, target, valid)`` returning a scalar.

    Raises:
        ValueError: unknown name, or ``balanced_ce`` without ``class_pixel_counts``.
    """
    match name:
        case "focal":
            return FocalLoss(alpha=focal.alpha, gamma=focal.gamma)
        case "tversky":
            return TverskyLoss(alpha=tversky.alpha, beta=tversky.beta, smooth=tversky.smooth)
        case "balanced_ce":
            if class_pixel_counts is None:
                raise ValueError(
                    "loss: 'balanced_ce' needs class_pixel_counts (num_bg, num_rts) of the training split; "
                    "the prepare stage writes them, pass them to build_loss"
                )
            return BalancedCELoss(balanced_positive_weight(class_pixel_counts, balanced_ce.weighting))
        case "bce":
            return BCELoss()
        case _:
            raise ValueError(f"loss: unknown {name!r}; valid: 'focal', 'tversky', 'balanced_ce', 'bce'")
