"""Loader throughput per worker core at 512 px with the full augmentation pipeline.

    OMP_NUM_THREADS=1 python benchmarks/bench_loader.py [--tiles 24] [--data DIR]

Measures, in one process (= one loader worker): decoding RGB + label LZW GeoTIFFs; reading the
decoded-tile cache; and a full training sample (read + augmentation + boundary band +
normalisation) from GeoTIFFs and from the cache, with RGB only and with RGB + the 4 EXTRA
channels. The anchor (issue 18, P1), in the same run on the same decoded arrays, timed
interleaved with ours sample by sample for the ratios: a plain
albumentations ``Compose`` of the training guide's list (rotate90, flips, shift-scale-rotate with
reflect border, elastic, colour jitter on RGB only) with the same probabilities and limits; with
EXTRA, the colour jitter runs on RGB and the geometric ``Compose`` on the float32 stack.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def rate(fn, items, repeat: int = 2) -> float:
    """Items per CPU second of this process (one thread: per core; robust to other jobs on the machine)."""
    fn(items[0])  # warm-up (imports, caches)
    t = time.process_time()
    n = 0
    for _ in range(repeat):
        for it in items:
            fn(it)
            n += 1
    return n / (time.process_time() - t)


def paired_rates(fa, items_a, fb, items_b, repeat: int = 3) -> tuple[float, float]:
    """Items per CPU second of ``fa`` and ``fb``, measured interleaved item by item: the machine's
    speed drifts over a run (shared VM), and alternating puts the same drift on both."""
    fa(items_a[0]), fb(items_b[0])  # warm-up
    ta = tb = 0.0
    n = 0
    for _ in range(repeat):
        for a, b in zip(items_a, items_b):
            t = time.process_time()
            fa(a)
            t2 = time.process_time()
            fb(b)
            ta, tb = ta + t2 - t, tb + time.process_time() - t2
            n += 1
    return n / ta, n / tb


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiles", type=int, default=24)
    ap.add_argument("--data", type=Path, default=None, help="existing 512 px dataset (default: synthesise one)")
    args = ap.parse_args()
    import albumentations as A
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
    from rts.io import EXTRA_CHANNELS, read_raster, tile_paths

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
    keys = [(i, 1000 + i, None, 1.0) for i in range(len(recs))]
    ds_files = TileDataset(plain, recs, norm, augmenter=Augmenter(aug), boundary_ignore_width=3)
    out["full_pipeline_geotiff_tiles_per_s"] = rate(lambda k: ds_files[k], keys)
    ds = TileDataset(cached, recs, norm, augmenter=Augmenter(aug), boundary_ignore_width=3)
    ds4 = TileDataset(cached, recs, Normalizer(stats, list(EXTRA_CHANNELS)), augmenter=Augmenter(aug), boundary_ignore_width=3)

    # the anchor, on the same decoded arrays (HWC, in memory)
    arrays = []
    for t in ids:
        tile = cached.load(t)
        arrays.append((np.ascontiguousarray(np.transpose(tile.rgb, (1, 2, 0))),
                       np.ascontiguousarray(np.transpose(np.asarray(tile.extra, np.float32), (1, 2, 0))), np.array(tile.label)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ShiftScaleRotate is the guide's name; albumentations 2 calls it deprecated
        color = A.ColorJitter(brightness=aug.brightness, contrast=aug.contrast, saturation=aug.saturation, hue=0.0, p=aug.color_p)
        geometric = [
            A.RandomRotate90(p=aug.rotate90_p),
            A.HorizontalFlip(p=aug.hflip_p),
            A.VerticalFlip(p=aug.vflip_p),
            A.ShiftScaleRotate(shift_limit=aug.shift_limit, scale_limit=aug.scale_limit, rotate_limit=aug.rotate_limit,
                               border_mode=cv2.BORDER_REFLECT_101, p=aug.affine_p),
            A.ElasticTransform(alpha=aug.elastic_alpha, sigma=aug.elastic_sigma, approximate=True,
                               border_mode=cv2.BORDER_REFLECT_101, p=aug.elastic_p),
        ]
        anchor_rgb = A.Compose([color, *geometric], seed=0)
        anchor_geo = A.Compose(geometric, seed=0)

    def anchor_rgb_sample(a):
        rgb, _, label = a
        anchor_rgb(image=rgb, mask=label)

    def anchor_extra_sample(a):
        rgb, extra, label = a
        rgb = color(image=rgb)["image"]
        anchor_geo(image=np.concatenate([rgb.astype(np.float32), extra], axis=-1), mask=label)

    # ours from the cache and the anchor, interleaved sample by sample
    out["full_pipeline_cache_tiles_per_s"], out["anchor_albumentations_rgb_tiles_per_s"] = paired_rates(
        lambda k: ds[k], keys, anchor_rgb_sample, arrays)
    out["full_pipeline_cache_rgb_4extra_tiles_per_s"], out["anchor_albumentations_rgb_4extra_tiles_per_s"] = paired_rates(
        lambda k: ds4[k], keys, anchor_extra_sample, arrays)
    out["ours_vs_anchor_rgb"] = out["full_pipeline_cache_tiles_per_s"] / out["anchor_albumentations_rgb_tiles_per_s"]
    out["ours_vs_anchor_rgb_4extra"] = (out["full_pipeline_cache_rgb_4extra_tiles_per_s"]
                                        / out["anchor_albumentations_rgb_4extra_tiles_per_s"])
    out["load_average"] = os.getloadavg()[0]
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in out.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
