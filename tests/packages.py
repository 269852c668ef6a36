"""Tiny model packages and scenes for inference tests (no training, no downloads).

``identity_stats`` makes normalisation the identity on RGB (clip 0..255, mean 0, std 1), so a
hand-made model sees raw values. ``write_package`` saves a real ``rts-model/1`` package of a
randomly initialised tiny U-Net that ``load_predictor`` (and the ``rts predict`` subprocess) loads.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin

from rts.config import DataConfig, ModelConfig
from rts.data.normalization import Normalizer, stats_hash
from rts.inference.predictor import CALIBRATION_FILE, Predictor

ORIGIN = (-1915000.0, -489000.0)  # EPSG:3413, in the Arctic


def identity_stats() -> dict:
    return {
        "dataset_version": "test",
        "computed_date": "2000-01-01T00:00:00+00:00",
        "n_tiles_used": 1,
        "clip_percentiles": [0.0, 100.0],
        "rgb": {"channels": ["R", "G", "B"], "mean": [0.0] * 3, "std": [1.0] * 3, "clip_low": [0.0] * 3, "clip_high": [255.0] * 3},
        "extra": {"channels": ["ndvi", "nir", "re", "sr"], "mean": [0.0] * 4, "std": [1.0] * 4,
                  "clip_low": [-1e9] * 4, "clip_high": [1e9] * 4},
    }


class Constant(torch.nn.Module):
    """Logit ``value`` everywhere."""

    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 1, *x.shape[-2:]), self.value)


class RedMask(torch.nn.Module):
    """Logit ``R - 127.5``: probability 1 where R = 255 and 0 where R = 0 (exact in float32)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1] - 127.5


def make_predictor(model: torch.nn.Module, *, tile_size: int = 64, scales=(1.0,), tta: str = "none",
                   thresholds: dict | None = None) -> Predictor:
    stats = identity_stats()
    return Predictor(model=model.eval(), normalizer=Normalizer(stats, []), tile_size=tile_size, extra_channels=[],
                     device=torch.device("cpu"), tta=tta, scales=tuple(scales), thresholds=thresholds or {},
                     meta={"dataset_version": "test", "git_commit": "test", "normalization_stats_sha256": stats_hash(stats)})


def write_package(folder: Path, *, tile_size: int = 64, extra_channels: list[str] | None = None, calibration: dict | None = None) -> Path:
    """A loadable package of a random tiny U-Net (resnet18, seed 0)."""
    from dataclasses import asdict

    from rts.models import build_model

    torch.manual_seed(0)
    model_cfg = ModelConfig(arch="unet", encoder="resnet18", encoder_weights=None)
    data_cfg = DataConfig(tile_size=tile_size, extra_channels=list(extra_channels or []))
    model = build_model(model_cfg, in_channels=data_cfg.in_channels, n_extra=len(data_cfg.extra_channels))
    stats = identity_stats()
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"format": "rts-model/1", "state_dict": model.state_dict(), "model_config": asdict(model_cfg),
                "data_config": asdict(data_cfg), "config": {}, "normalization_stats": stats,
                "normalization_stats_sha256": stats_hash(stats), "dataset_version": "test", "git_commit": "abc123"},
               folder / "model.pt")
    (folder / "normalization_stats.json").write_text(json.dumps(stats, indent=2))
    if calibration is not None:
        (folder / CALIBRATION_FILE).write_text(json.dumps(calibration))
    return folder


def write_scene(path: Path, rgb: np.ndarray, *, crs: str = "EPSG:3413", origin=ORIGIN, pixel: float = 3.0, nodata: float | None = None) -> Path:
    """A (3, H, W) uint8 RGB GeoTIFF on a ``pixel`` m grid."""
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = dict(driver="GTiff", width=rgb.shape[2], height=rgb.shape[1], count=rgb.shape[0], dtype=rgb.dtype.name, crs=crs,
                   transform=from_origin(*origin, pixel, pixel), tiled=True, blockxsize=32, blockysize=32, compress="lzw")
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(rgb)
    return path
