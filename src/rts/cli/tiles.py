"""`rts tiles`: build a training dataset from scenes and RTS polygons."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from rts.authoring.tiles import TileOptions, build_tiles
from rts.authoring.tiles_sources import parse_extra

log = logging.getLogger(__name__)


def int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated band numbers like 3,2,1, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``rts tiles``."""
    d = TileOptions()
    p = parser.add_argument
    p("--scene", action="append", required=True, type=Path, help="RGB scene (GeoTIFF/VRT, any CRS); repeatable")
    p("--polygons", required=True, type=Path, help="RTS polygons (GeoJSON/GeoPackage/Shapefile, ARTS schema)")
    p("-o", "--out", required=True, type=Path, help="output dataset folder (re-runs resume)")
    p("--rgb-bands", "--bands", type=int_list, default=d.rgb_bands, help="1-based R,G,B bands of the scene, e.g. 3,2,1 for Sentinel-2 B4,B3,B2 in a B2.. stack")
    p("--rgb-scale", default=d.rgb_scale, help="auto | none | percentile | NUMBER (value*255/NUMBER, e.g. 3000 for S2 reflectance x10000); auto = none for uint8, percentile otherwise")
    p("--resampling", choices=["bilinear", "cubic"], default=d.resampling, help="RGB resampling onto the 3 m grid")
    p("--extra", action="append", default=[], type=str, metavar="CHANNEL=PATH[:BANDS]", help="ndvi=s2.tif:RED,NIR | nir=s2.tif:NIR | re=dem.tif | sr=dem.tif; repeatable")
    p("--reflectance-scale", type=float, default=d.reflectance_scale, help="nir = band value / this (10000 for Sentinel-2 L1C/L2A)")
    p("--re-window", type=float, default=d.re_window_m, help="relative elevation: local-mean window in metres")
    p("--sun-azimuth", type=float, default=d.sun_azimuth, help="shaded relief: sun azimuth, degrees clockwise from north")
    p("--sun-elevation", type=float, default=d.sun_elevation, help="shaded relief: sun elevation, degrees")
    p("--tile-size", type=int, default=d.tile_size)
    p("--pixel-size", type=float, default=d.pixel_size)
    p("--partial-min-fraction", type=float, default=d.partial_min_fraction, help="a polygon with less of its area inside a tile is ignore (255) there")
    p("--min-coverage", type=float, default=d.min_coverage, help="fraction of a tile that must have imagery")
    p("--negatives", type=Path, help="points/polygons of negative locations (no random negatives then)")
    p("--negative-distance", type=float, default=d.negative_distance, help="random negatives: min distance in metres from any RTS")
    p("--n-negatives", type=int, default=None, help="random negatives to draw (default: as many as positive tiles)")
    p("--seed", type=int, default=d.seed)
    p("--regions", type=Path, help="region polygons; a tile's region is the one containing its centre")
    p("--region-field", default="RegionName", help="region name attribute of --regions")
    p("--region-name", default=None, help="region for tiles with no RegionName (e.g. a single-site build)")
    p("--polygon-region-field", default=d.region_field, help="region attribute of --polygons")
    p("--uid-field", default=d.uid_field, help="RTS id attribute of --polygons")
    p("--polygons-crs", default=None, help="CRS to assume when the polygon file has none")
    p("--drop-invalid", action="store_true", help="drop invalid polygons instead of repairing them (both are reported)")
    p("--splits", type=Path, help="YAML {train: [regions], val: [...], test: [...]}")


def run(args: argparse.Namespace) -> int:
    """Run ``rts tiles``; prints the report's counts."""
    # GDAL warns once per open about harmless TIFF tags of Earth Engine exports; keep errors only.
    for name in ("rasterio._env", "rasterio._err"):
        logging.getLogger(name).setLevel(logging.ERROR)
    opts = TileOptions(
        tile_size=args.tile_size,
        pixel_size=args.pixel_size,
        rgb_bands=args.rgb_bands,
        rgb_scale=args.rgb_scale,
        resampling=args.resampling,
        partial_min_fraction=args.partial_min_fraction,
        min_coverage=args.min_coverage,
        negative_distance=args.negative_distance,
        n_negatives=args.n_negatives,
        seed=args.seed,
        reflectance_scale=args.reflectance_scale,
        re_window_m=args.re_window,
        sun_azimuth=args.sun_azimuth,
        sun_elevation=args.sun_elevation,
        uid_field=args.uid_field,
        region_field=args.polygon_region_field,
        default_region=args.region_name,
        fix_invalid=not args.drop_invalid,
    )
    report = build_tiles(
        args.scene,
        args.polygons,
        args.out,
        options=opts,
        extras=[parse_extra(e) for e in args.extra],
        negatives=args.negatives,
        regions=args.regions,
        region_field=args.region_field,
        splits=args.splits,
        polygons_crs=args.polygons_crs,
    )
    print(json.dumps({"counts": report["counts"], "invalid_polygons": len(report["invalid_polygons"]), "skipped_files": report["skipped_files"]}, indent=2))
    return 0
