"""The training augmentation pipeline (flips, rotations, affine, elastic, colour), applied jointly to image, EXTRA and mask.

Colour jitter touches the RGB channels only (NDVI, relative elevation and shaded relief are measurements, not colours) and runs on raw uint8 RGB before the
geometry: it is pointwise, so the order does not change its meaning. The geometric transforms draw
their parameters once per sample and apply them to uint8 RGB, to the float32 EXTRA channels (an
additional target of the same ``Compose``) and to the label with nearest-neighbour interpolation,
so the mask follows the image exactly. Warping RGB as uint8 rather than as part of one float32
stack is about 1.5x faster; the geometry, the EXTRA values and the label are the same as with the
stack, and RGB is rounded to whole values (within 1 of the stack's). Borders reflect (no invented
black border, and no fill value whose length must match the channel count).
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np

from rts.config import AugmentConfig


class Augmenter:
    """Callable ``(rgb uint8 (H,W,3), stack float32 (H,W,C), label uint8 (H,W), rng) -> (stack, label)``."""

    def __init__(self, cfg: AugmentConfig):
        self.cfg = cfg
        self.color = A.ColorJitter(
            brightness=cfg.brightness, contrast=cfg.contrast, saturation=cfg.saturation, hue=0.0, p=cfg.color_p
        )
        self.geometric = A.Compose(
            [
                A.RandomRotate90(p=cfg.rotate90_p),
                A.HorizontalFlip(p=cfg.hflip_p),
                A.VerticalFlip(p=cfg.vflip_p),
                A.Affine(
                    translate_percent=(-cfg.shift_limit, cfg.shift_limit),
                    scale=(1 - cfg.scale_limit, 1 + cfg.scale_limit),
                    rotate=(-cfg.rotate_limit, cfg.rotate_limit),
                    interpolation=cv2.INTER_LINEAR,
                    mask_interpolation=cv2.INTER_NEAREST,
                    border_mode=cv2.BORDER_REFLECT_101,
                    p=cfg.affine_p,
                ),
                # approximate=True smooths the displacement field with a fixed-size kernel: the same
                # elastic deformation family at a fraction of the cost (the loader must keep up with the GPU).
                A.ElasticTransform(
                    alpha=cfg.elastic_alpha,
                    sigma=cfg.elastic_sigma,
                    interpolation=cv2.INTER_LINEAR,
                    mask_interpolation=cv2.INTER_NEAREST,
                    approximate=True,
                    border_mode=cv2.BORDER_REFLECT_101,
                    p=cfg.elastic_p,
                ),
            ],
            additional_targets={"extra": "image"},
            seed=None,
        )

    def seed(self, seed: int) -> None:
        """Make the next draws reproducible (called per sample with a seed derived from epoch/index)."""
        self.color.set_random_seed(seed)
        self.geometric.set_random_seed(seed + 1)

    def __call__(self, rgb: np.ndarray, extra: np.ndarray | None, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rgb = self.color(image=np.ascontiguousarray(rgb))["image"]
        if extra is None or not extra.shape[-1]:
            out = self.geometric(image=rgb, mask=label)
            return out["image"].astype(np.float32), out["mask"]
        out = self.geometric(image=rgb, extra=np.ascontiguousarray(extra, dtype=np.float32), mask=label)
        h, w = out["mask"].shape
        return np.concatenate([out["image"].astype(np.float32), out["extra"].reshape(h, w, -1)], axis=-1), out["mask"]
