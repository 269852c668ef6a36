"""Score each expert of the RTS labelling intercomparison against the experts' majority.

Rasterises every expert's polygons of one site (``<site>/labels/<site>_digitized_labelerNN.shp``)
onto one EPSG:3413 grid over the site's AOI (3 m, pixel-centre rule) and votes: a pixel is RTS in
the majority when more than half of the experts include it. Writes, per expert NN:

- ``OUT/experts/<site>_labelerNN.tif``: float32 0/1 "probability" (the expert's mask);
- ``OUT/majority/<site>_labelerNN.tif``: uint8 label {0, 1}, the majority (same for every NN, so
  a scorer that pairs files by name, ``rts score OUT/experts OUT/majority``, scores each expert).

It also prints a Markdown table computed here with the project's metric definitions
(``rts.metrics.objects``): pixel IoU, and object precision/recall at IoU 0.3 with objects under
``--min-object-px`` ignored on both sides.

Usage:
    .venv/bin/python scripts/expert_agreement.py ../shared/data/rts_digitization_experiment/Peel OUT
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from affine import Affine
from rasterio.features import rasterize

from rts.data.tiles_sources import read_geometries
from rts.io import write_geotiff, write_json_atomic
from rts.metrics.objects import gt_components, match_objects, pred_components


def site_grid(site: Path, pixel_size: float) -> tuple[Affine, tuple[int, int]]:
    """3413 grid, snapped to multiples of ``pixel_size``, covering the site's AOI."""
    (aoi,), _ = read_geometries(next(site.glob("*_AOI_2500.geojson")))
    x0, y0, x1, y1 = aoi.bounds
    x0, y1 = np.floor(x0 / pixel_size) * pixel_size, np.ceil(y1 / pixel_size) * pixel_size
    width, height = int(np.ceil((x1 - x0) / pixel_size)), int(np.ceil((y1 - y0) / pixel_size))
    return Affine(pixel_size, 0, x0, 0, -pixel_size, y1), (height, width)


def expert_masks(site: Path, transform: Affine, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """{``<site>_labelerNN``: uint8 0/1 mask} for every expert shapefile of the site."""
    out = {}
    for shp in sorted((site / "labels").glob("*_digitized_labeler*.shp")):
        geoms, _ = read_geometries(shp)
        name = shp.stem.replace("_digitized", "")
        polys = [g for g in geoms if g.area > 0]
        out[name] = (
            rasterize([(g, 1) for g in polys], out_shape=shape, transform=transform, all_touched=False, dtype="uint8")
            if polys
            else np.zeros(shape, np.uint8)
        )
    if not out:
        raise SystemExit(f"{site / 'labels'}: no *_digitized_labelerNN.shp files")
    return out


def score(mask: np.ndarray, majority: np.ndarray, min_object_px: int, iou: float) -> dict[str, float]:
    """Pixel IoU and object precision/recall of one expert mask against the majority."""
    inter = int((mask & majority).sum())
    union = int((mask | majority).sum())
    pred = pred_components(mask.astype(np.float32), majority, 0.5, min_object_px=min_object_px)
    gt = gt_components(majority, min_object_px=min_object_px)
    tp, fp, fn, _ = match_objects(pred, gt, iou)
    return {
        "pixel_iou": inter / union if union else 1.0,
        "object_precision": tp / (tp + fp) if tp + fp else float("nan"),
        "object_recall": tp / (tp + fn) if tp + fn else float("nan"),
        "n_objects": pred.n,
        "rts_px": int(mask.sum()),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("site", type=Path, help="site folder of the intercomparison (Peel, Bykovsky)")
    p.add_argument("out", type=Path, help="output folder (experts/, majority/, agreement.json)")
    p.add_argument("--pixel-size", type=float, default=3.0)
    p.add_argument("--min-object-px", type=int, default=200, help="objects smaller than this are ignored (evaluate.min_object_px)")
    p.add_argument("--iou", type=float, default=0.3, help="object match IoU")
    args = p.parse_args(argv)

    transform, shape = site_grid(args.site, args.pixel_size)
    masks = expert_masks(args.site, transform, shape)
    votes = np.sum(list(masks.values()), axis=0)
    majority = (2 * votes > len(masks)).astype(np.uint8)  # strictly more than half
    rows = {}
    for name, mask in masks.items():
        write_geotiff(args.out / "experts" / f"{name}.tif", mask.astype(np.float32)[None], transform)
        write_geotiff(args.out / "majority" / f"{name}.tif", majority[None], transform)
        rows[name] = score(mask, majority, args.min_object_px, args.iou)
    gt_n = gt_components(majority, min_object_px=args.min_object_px).n
    summary = {"site": args.site.name, "experts": len(masks), "grid": {"shape": shape, "transform": list(transform)[:6]},
               "majority_rts_px": int(majority.sum()), "majority_objects": gt_n, "scores": rows}
    write_json_atomic(args.out / "agreement.json", summary)

    print(f"{args.site.name}: {len(masks)} experts, majority (> {len(masks) // 2} votes) {int(majority.sum())} px = "
          f"{majority.mean():.2%} of the AOI, {gt_n} objects >= {args.min_object_px} px")
    print(f"| expert | RTS px | objects | pixel IoU | object P@{args.iou} | object R@{args.iou} |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['rts_px']} | {r['n_objects']} | {r['pixel_iou']:.2f} | {r['object_precision']:.2f} | {r['object_recall']:.2f} |")
    mean = {k: np.nanmean([r[k] for r in rows.values()]) for k in ("pixel_iou", "object_precision", "object_recall")}
    print(f"| mean | | | {mean['pixel_iou']:.2f} | {mean['object_precision']:.2f} | {mean['object_recall']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
