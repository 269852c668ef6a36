"""Loader throughput per worker core at 512 px with the full augmentation pipeline.

    OMP_NUM_THREADS=1 python benchmarks/bench_loader.py [--tiles 24] [--data DIR]

Measures, in one process (= one loader worker): decoding RGB + label LZW GeoTIFFs; reading the
decoded-tile cache; and a full training sample (read + augmentation + boundary band +
normalisation) from GeoTIFFs and from the cache.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def rate(fn, items, repeat: int = 2) -> float:
    fn(items[0])  # warm-up (imports, caches)
    t = time.perf_counter()
    n = 0
    for _ in range(repeat):
        for it in items:
            fn(it)
            n += 1
    return n / (time.perf_counter() - t)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiles", type=int, default=24)
    ap.add_argument("--data", type=Path, default=None, help="existing 512 px dataset (default: synthesise one)")
    args = ap.parse_args()
    import cv2
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    from rts.config import AugmentConfig
    from rts.data.augment import Augmenter
    from rts.data.dataset import TileDataset
    from rts.data.normalization import Normalizer, compute_stats
    from rts.data.splits import TileRecord, read_metadata
    from rts.data.store import TileStore
    from rts.authoring.synth import synthesize
    from rts.io import read_raster, tile_paths

    tmp = Path(tempfile.mkdtemp())
    data = args.data
    if data is None:
        data = tmp / "data"
        synthesize(data, n_pos=args.tiles // 2, n_neg=args.tiles - args.tiles // 2, tile_size=512, n_regions=3, seed=1)
    rows = read_metadata(data)[: args.tiles]
    ids = [r["tile_id"] for r in rows]
    recs = [TileRecord(r["tile_id"], r["TrainClass"] == "Positive", r["RegionName"]) for r in rows]
    plain, cached = TileStore(data), TileStore(data, tmp / "cache")
    for t in ids:
        cached.load(t)  # fill the cache, as `prepare` does
    stats = compute_stats(ids, tile_loader=lambda t: (plain.load(t).rgb, plain.load(t).extra), clip_percentiles=(1, 99),
                          sample_px_per_tile=2000, dataset_version="bench")
    norm = Normalizer(stats, [])
    aug = AugmentConfig(affine_p=0.5, elastic_p=0.3, color_p=0.5)
    out = {"tile_size": 512, "tiles": len(ids)}

    def raw_pair(t):
        p = tile_paths(data, t)
        read_raster(p["rgb"]), read_raster(p["label"])

    out["geotiff_rgb_label_tiles_per_s"] = rate(raw_pair, ids)
    out["cache_read_tiles_per_s"] = rate(lambda t: np.asarray(cached.load(t).rgb).sum(), ids)
    for name, store in (("geotiff", plain), ("cache", cached)):
        ds = TileDataset(store, recs, norm, augmenter=Augmenter(aug), boundary_ignore_width=3)
        keys = [(i, 1000 + i, None, 1.0) for i in range(len(recs))]
        out[f"full_pipeline_{name}_tiles_per_s"] = rate(lambda k: ds[k], keys)
    print(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in out.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
