"""Tiny, hand-controlled datasets in the real on-disk format, for unit tests.

Each tile is ``size`` x ``size`` pixels on a 3 m grid in EPSG:3413. Positive tiles carry one square
RTS (label 1) whose RGB is bright and whose NDVI is low; negatives are plain vegetation. Tiles of a
region are laid out on a row so that neighbours share edges.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import yaml
from rasterio.transform import from_origin

from rts.io import EXTRA_DIR, LABEL_DIR, RGB_DIR, write_geotiff

REGION_ORIGINS = {  # plausible EPSG:3413 origins, far apart
    "alpha": (-1915000.0, -489000.0),
    "bravo": (-2200000.0, 300000.0),
    "charlie": (1000000.0, 1500000.0),
    "delta": (500000.0, -2000000.0),
}


def tile_arrays(size: int, positive: bool, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rgb = rng.integers(40, 90, size=(3, size, size), dtype=np.uint8)
    extra = np.stack(
        [
            rng.uniform(0.5, 0.8, (size, size)),  # ndvi
            rng.uniform(0.2, 0.4, (size, size)),  # nir
            rng.normal(0.0, 1.0, (size, size)),  # re
            rng.uniform(100, 200, (size, size)),  # sr
        ]
    ).astype(np.float32)
    label = np.zeros((1, size, size), np.uint8)
    if positive:
        a, b = size // 4, size // 4 + size // 3
        label[0, a:b, a:b] = 1
        rgb[:, a:b, a:b] = 200
        extra[0, a:b, a:b] = 0.05
    return rgb, extra, label


def make_dataset(
    root: Path,
    *,
    size: int = 32,
    regions: dict[str, tuple[int, int]] | None = None,
    splits: dict[str, list[str]] | None = None,
    seed: int = 0,
) -> Path:
    """Write a valid dataset. ``regions`` maps region name -> (n_positive, n_negative)."""
    regions = regions or {"alpha": (4, 6), "bravo": (2, 4), "charlie": (2, 4)}
    splits = splits or {"train": ["alpha"], "val": ["bravo"], "test": ["charlie"]}
    rng = np.random.default_rng(seed)
    rows = []
    for region, (n_pos, n_neg) in regions.items():
        x0, y0 = REGION_ORIGINS[region]
        for i in range(n_pos + n_neg):
            positive = i < n_pos
            tile_id = f"{region}_{i:03d}"
            transform = from_origin(x0 + i * size * 3.0, y0, 3.0, 3.0)
            rgb, extra, label = tile_arrays(size, positive, rng)
            write_geotiff(root / RGB_DIR / f"{tile_id}.tif", rgb, transform)
            write_geotiff(root / EXTRA_DIR / f"{tile_id}.tif", extra, transform)
            write_geotiff(root / LABEL_DIR / f"{tile_id}.tif", label, transform)
            rows.append(
                {
                    "tile_id": tile_id,
                    "centroid_lat": f"{70 + i * 0.01:.6f}",
                    "centroid_lon": f"{-120 + i * 0.01:.6f}",
                    "TrainClass": "Positive" if positive else "Negative",
                    "RegionName": region,
                    "UIDs": f"uid-{tile_id}" if positive else "",
                }
            )
    with open(root / "metadata.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (root / "splits.yaml").write_text(yaml.safe_dump(splits))
    (root / "version.json").write_text(json.dumps({"dataset_version": "2.0"}))
    return root
