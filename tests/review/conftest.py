"""A real prediction folder for the review tests: `rts predict`'s library entry point (run log,
COGs, GeoPackage) over a 192 x 192 px scene with an EXTRA raster, by a hand-made model whose
probability grows with the red band, so candidates have known, graded scores."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from packages import ORIGIN, identity_stats, write_package, write_scene

H = W = 192
# (row0, col0, row1, col1, red value): one candidate each; probability sigmoid((R - 100) / 10)
BLOBS = [(10, 10, 30, 30, 200), (10, 60, 28, 80, 140), (10, 120, 26, 140, 120), (60, 10, 80, 28, 112),
         (60, 60, 78, 78, 108), (60, 120, 76, 136, 104), (120, 10, 138, 30, 130), (120, 60, 136, 76, 116),
         (120, 120, 140, 140, 160), (160, 40, 176, 56, 106)]


class RedRamp(torch.nn.Module):
    """Logit ``(R - 100) / 10``: background (R 60) has probability 0.018, R 200 has 0.99995."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, :1] - 100.0) / 10.0


def ramp_predictor():
    """The RedRamp model behind identity normalisation, reading all four EXTRA bands (it ignores them)."""
    from rts.data.normalization import Normalizer, stats_hash
    from rts.inference.predictor import Predictor

    stats = identity_stats()
    channels = ["ndvi", "nir", "re", "sr"]
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


@pytest.fixture(scope="session")
def prediction(tmp_path_factory):
    """(prediction folder, scene path, extra path) of one `run_predict` run at threshold 0.5."""
    from rts.inference import predict as P

    root = tmp_path_factory.mktemp("review_pred")
    rgb, extra = scene_arrays()
    scene = write_scene(root / "scenes" / "banks.tif", rgb)
    extra_path = root / "scenes" / "banks_extra.tif"
    with rasterio.open(extra_path, "w", driver="GTiff", width=W, height=H, count=4, dtype="float32", crs="EPSG:3413",
                       transform=from_origin(*ORIGIN, 3.0, 3.0)) as dst:
        dst.write(extra)
    package = write_package(root / "package")
    with pytest.MonkeyPatch.context() as mp:  # the package's random U-Net replaced by the known model
        mp.setattr(P, "load_predictor", lambda *a, **k: ramp_predictor())
        P.run_predict(package, root / "pred", scenes=[str(scene)], extras=[str(extra_path)], threshold=0.5,
                      num_workers=0, finalize_workers=0, min_object_px=20)
    return root / "pred", scene, extra_path
