"""Synthetic probability maps with labels for the metric benchmark and tests (no model needed)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def synthetic_tile(rng: np.random.Generator, size: int = 512, positive: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One (prob float32, label uint8) pair that looks like a segmentation model's output.

    Positive tiles hold 1-4 blob-shaped RTS (label 1) with a 3-pixel ignore rim; the probability
    map is a smooth low background (0-0.15) plus noisy, partly displaced bumps on the objects and
    a few false-positive bumps elsewhere.
    """
    yy, xx = np.mgrid[0:size, 0:size]
    label = np.zeros((size, size), np.uint8)
    logit = ndi.gaussian_filter(rng.normal(0, 1, (size, size)), 8) * 20 - 4.0
    n_obj = int(rng.integers(1, 5)) if positive else 0
    for _ in range(n_obj):
        cy, cx = rng.integers(40, size - 40, 2)
        ry, rx = rng.integers(10, 60, 2)
        blob = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        label[blob] = 1
        dy, dx = rng.integers(-8, 9, 2)
        logit += 9 * np.exp(-(((yy - cy - dy) / ry) ** 2 + ((xx - cx - dx) / rx) ** 2))
    for _ in range(int(rng.integers(0, 3))):
        cy, cx = rng.integers(0, size, 2)
        r = rng.integers(5, 30)
        logit += rng.uniform(3, 7) * np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / r**2))
    if n_obj:
        rim = ndi.binary_dilation(label == 1, iterations=3) & ~ndi.binary_erosion(label == 1, iterations=3)
        label[rim] = 255
    logit += rng.normal(0, 0.5, (size, size))
    prob = (1 / (1 + np.exp(-logit))).astype(np.float32)
    return prob, label
