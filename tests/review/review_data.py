"""The review tests' scene and model: a 192 x 192 px scene with ten red blobs and an EXTRA raster,
and a hand-made model whose probability grows with the red band, so candidates have known, graded
scores."""

from __future__ import annotations

import numpy as np
import torch

from packages import identity_stats

H = W = 192
# (row0, col0, row1, col1, red value): one candidate each; probability sigmoid((R - 100) / 10)
BLOBS = [(10, 10, 30, 30, 200), (10, 60, 28, 80, 140), (10, 120, 26, 140, 120), (60, 10, 80, 28, 112),
         (60, 60, 78, 78, 108), (60, 120, 76, 136, 104), (120, 10, 138, 30, 130), (120, 60, 136, 76, 116),
         (120, 120, 140, 140, 160), (160, 40, 176, 56, 106)]


class RedRamp(torch.nn.Module):
    """Logit ``(R - 100) / 10``: background (R 60) has probability 0.018, R 200 has 0.99995."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, :1] - 100.0) / 10.0


def ramp_predictor(extra: bool = True):
    """The RedRamp model behind identity normalisation, reading all four EXTRA bands (it ignores
    them) or none."""
    from rts.data.normalization import Normalizer, stats_hash
    from rts.inference.predictor import Predictor

    stats = identity_stats()
    channels = ["ndvi", "nir", "re", "sr"] if extra else []
    return Predictor(model=RedRamp().eval(), normalizer=Normalizer(stats, channels), tile_size=64, extra_channels=channels,
                     device=torch.device("cpu"), tta="none", scales=(1.0,), thresholds={},
                     meta={"dataset_version": "test", "git_commit": "test", "normalization_stats_sha256": stats_hash(stats)})


def scene_arrays() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    rgb = np.full((3, H, W), 60, np.uint8)
    rgb[1:] = rng.integers(70, 90, size=(2, H, W), dtype=np.uint8)
    for r0, c0, r1, c1, red in BLOBS:
        rgb[0, r0:r1, c0:c1] = red
    yy, xx = np.mgrid[0:H, 0:W]
    extra = np.stack([np.full((H, W), 0.6), np.full((H, W), 0.3), np.zeros((H, W)),
                      128 + 60 * np.sin(xx / 9.0) * np.cos(yy / 13.0)]).astype(np.float32)
    return rgb, extra
