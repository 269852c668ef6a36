"""Boundary uncertainty: experts disagree by a few pixels on an RTS outline, so the loss ignores a band there (or learns soft targets).

Option A, ignore band: pixels within ``width`` px of an RTS/background boundary are excluded from the
loss. Option B, soft labels: targets fall off smoothly across the boundary as a logistic function
of the signed distance to it. Both act on the (augmented) label, so geometry stays consistent.
"""

from __future__ import annotations

import cv2
import numpy as np

from rts.io import IGNORE


def _disk(width: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * width + 1, 2 * width + 1))


def boundary_band(label: np.ndarray, width: int) -> np.ndarray:
    """Bool mask of pixels within ``width`` px (Euclidean disk) of an RTS boundary, both sides."""
    if width <= 0:
        return np.zeros(label.shape, bool)
    rts = (label == 1).astype(np.uint8)
    if not rts.any():
        return np.zeros(label.shape, bool)
    kernel = _disk(width)
    dilated = cv2.dilate(rts, kernel, borderType=cv2.BORDER_REPLICATE)
    eroded = cv2.erode(rts, kernel, borderType=cv2.BORDER_REPLICATE)
    return (dilated != eroded)


def valid_mask(label: np.ndarray, boundary_ignore_width: int) -> np.ndarray:
    """Pixels that count for the loss: not label 255 and not in the boundary band."""
    return (label != IGNORE) & ~boundary_band(label, boundary_ignore_width)


def soft_targets(label: np.ndarray, sigma: float) -> np.ndarray:
    """Float targets in (0, 1): logistic of the signed distance (px) to the RTS boundary."""
    rts = (label == 1).astype(np.uint8)
    if not rts.any():
        return np.zeros(label.shape, np.float32)
    if rts.all():
        return np.ones(label.shape, np.float32)
    inside = cv2.distanceTransform(rts, cv2.DIST_L2, 5)
    outside = cv2.distanceTransform(1 - rts, cv2.DIST_L2, 5)
    signed = np.where(rts == 1, inside - 0.5, -(outside - 0.5))
    return (1.0 / (1.0 + np.exp(-signed / sigma))).astype(np.float32)
