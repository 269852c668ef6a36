"""Score each expert of the RTS labelling intercomparison against the experts' majority with `rts score`.

Rasterises every expert's polygons of one site (``<site>/labels/<site>_digitized_labelerNN.shp``)
onto one EPSG:3413 grid over the site's AOI (3 m, pixel-centre rule) and votes: a pixel is RTS in
the majority when more than half of the experts include it. Writes

- ``OUT/majority/<site>.tif``: uint8 label {0, 1}, the majority;
- ``OUT/experts/<site>_labelerNN/<site>.tif``: float32 0/1 "probability" (one expert's mask), in
  its own folder so that ``rts score OUT/experts/<site>_labelerNN OUT/majority`` pairs it with the
  majority by file name;

then runs that ``rts score`` command once per expert (``--out OUT/scores/<site>_labelerNN.json``)
and prints a Markdown table from those JSON files: pixel IoU, and object precision/recall at IoU
0.3 (the ``unweighted`` entry: one positive tile, no negatives to weight), objects under
``--min-object-px`` ignored on both sides. ``OUT/agreement.json`` collects the rows.

Usage:
    .venv/bin/python scripts/expert_agreement.py ../shared/data/rts_digitization_experiment/Peel OUT
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from affine import Affine
from rasterio.features import rasterize

from rts.authoring.tiles_sources import read_geometries
from rts.io import write_geotiff, write_json_atomic
from rts.metrics.objects import gt_components, pred_components


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


def rts_score(pred_dir: Path, label_dir: Path, out_json: Path, min_object_px: int) -> dict:
    """Run the ``rts score`` command line on one folder pair and return its JSON."""
    cmd = [sys.executable, "-m", "rts", "score", str(pred_dir), str(label_dir), "--out", str(out_json), "--min-object-px", str(min_object_px)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr}")
    return json.loads(out_json.read_text())


def table_row(result: dict, iou: float) -> dict[str, float | None]:
    """Pixel IoU and object precision/recall at ``iou`` from an ``rts score`` result."""
    u = result["unweighted"]
    return {"pixel_iou": u["iou_rts"], "object_precision": u[f"obj_iou{iou:g}_precision"], "object_recall": u[f"obj_iou{iou:g}_recall"]}


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
    write_geotiff(args.out / "majority" / f"{args.site.name}.tif", majority[None], transform)
    rows = {}
    for name, mask in masks.items():
        write_geotiff(args.out / "experts" / name / f"{args.site.name}.tif", mask.astype(np.float32)[None], transform)
        result = rts_score(args.out / "experts" / name, args.out / "majority", args.out / "scores" / f"{name}.json", args.min_object_px)
        objects = pred_components(mask.astype(np.float32), majority, 0.5, min_object_px=args.min_object_px).n
        rows[name] = {"rts_px": int(mask.sum()), "n_objects": objects, **table_row(result, args.iou)}
    gt_n = gt_components(majority, min_object_px=args.min_object_px).n
    summary = {"site": args.site.name, "experts": len(masks), "grid": {"shape": shape, "transform": list(transform)[:6]},
               "majority_rts_px": int(majority.sum()), "majority_objects": gt_n, "scores": rows}
    write_json_atomic(args.out / "agreement.json", summary)

    print(f"{args.site.name}: {len(masks)} experts, majority (> {len(masks) // 2} votes) {int(majority.sum())} px = "
          f"{majority.mean():.2%} of the AOI, {gt_n} objects >= {args.min_object_px} px")
    print(f"| expert | RTS px | objects | pixel IoU | object P@{args.iou} | object R@{args.iou} |")
    print("|---|---:|---:|---:|---:|---:|")
    f2 = lambda v: "n/a" if v is None or np.isnan(v) else f"{v:.2f}"  # noqa: E731
    for name, r in rows.items():
        print(f"| {name} | {r['rts_px']} | {r['n_objects']} | {f2(r['pixel_iou'])} | {f2(r['object_precision'])} | {f2(r['object_recall'])} |")
    mean = {k: np.nanmean([np.nan if r[k] is None else r[k] for r in rows.values()]) for k in ("pixel_iou", "object_precision", "object_recall")}
    print(f"| mean | | | {f2(mean['pixel_iou'])} | {f2(mean['object_precision'])} | {f2(mean['object_recall'])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
