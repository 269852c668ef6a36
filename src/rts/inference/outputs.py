"""Prediction outputs written block-wise: COGs, RTS polygons (GeoPackage), and their dissolve.

Shared by ``rts predict`` and ``rts merge``. Nothing here holds a whole region in memory except
what a caller passes per block; every file is written to a temporary name and renamed into place.

Polygons are the 4-connected regions of the binary mask (``rasterio.features.shapes``), made per
block of pixels and dissolved where they share an edge across a block (or chunk) border, so the
result does not depend on the block size. Attributes:

* ``area_m2``, ``perimeter_m``: of the (dissolved) polygon in EPSG:3413.
* ``centroid_lat``, ``centroid_lon``: the polygon centroid in WGS84.
* ``mean_prob``: mean probability over the polygon's pixels; ``max_prob``: their maximum.
* ``detection_scale``: the scale (1.0 / 0.5 / 0.25) whose logit was the maximum at the pixel
  holding ``max_prob`` (first such pixel in raster order; after a dissolve, the part with the
  highest ``max_prob``).
* ``tile_ids``: comma-separated ids of the processed tiles (scene passes, or the tile list's
  boxes) whose footprint overlaps the polygon with positive area.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from affine import Affine

from rts.io import CRS, PIXEL_SIZE_M, atomic_path

PROB_NODATA = -1.0
MASK_NODATA = 255
FIELDS = ("rts_id", "area_m2", "perimeter_m", "centroid_lat", "centroid_lon", "mean_prob", "max_prob", "detection_scale", "tile_ids")
# GeoPackage stores a last-change timestamp; a fixed one keeps resumed and uninterrupted runs byte-identical
GPKG_DATE = "2000-01-01T00:00:00.000Z"


def windows(height: int, width: int, block: int) -> Iterator[tuple[int, int, int, int]]:
    """(row0, col0, rows, cols) blocks covering a raster, in raster order."""
    for r in range(0, height, block):
        for c in range(0, width, block):
            yield r, c, min(block, height - r), min(block, width - c)


def overview_count(height: int, width: int, blocksize: int) -> int:
    """Overview levels until the smallest fits one block; at least one, so a COG always has overviews."""
    n, size = 0, max(height, width)
    while size > blocksize:
        size = math.ceil(size / 2)
        n += 1
    return max(n, 1)


def write_cog(path: str | os.PathLike, read_block: Callable[[int, int, int, int], np.ndarray], *, height: int, width: int,
              transform: Affine, dtype: str, nodata: float, resampling: str, blocksize: int = 512,
              work_dir: str | os.PathLike | None = None) -> None:
    """Write a one-band COG (deflate, ``blocksize`` tiles, overviews) from blocks, atomically.

    ``read_block(row0, col0, rows, cols)`` returns the (rows, cols) values of one block. The blocks
    go to an intermediate tiled GeoTIFF, which GDAL's COG driver copies with overviews.
    """
    import rasterio
    import rasterio.shutil

    path = Path(path)
    work = Path(work_dir or path.parent)
    work.mkdir(parents=True, exist_ok=True)
    profile = dict(driver="GTiff", height=height, width=width, count=1, dtype=dtype, crs=CRS, transform=transform,
                   nodata=nodata, tiled=True, blockxsize=blocksize, blockysize=blocksize, compress="deflate", zlevel=1,
                   BIGTIFF="IF_SAFER")
    with atomic_path(work / f"{path.stem}.stage.tif") as stage:
        with rasterio.open(stage, "w", **profile) as dst:
            for r, c, h, w in windows(height, width, blocksize * 4):
                dst.write(np.asarray(read_block(r, c, h, w), dtype=dtype)[None], window=((r, r + h), (c, c + w)))
        with atomic_path(path, suffix=".tif") as tmp:
            rasterio.shutil.copy(stage, tmp, driver="COG", COMPRESS="DEFLATE", PREDICTOR="YES", BLOCKSIZE=blocksize,
                                 OVERVIEWS="IGNORE_EXISTING", OVERVIEW_COUNT=overview_count(height, width, blocksize),
                                 OVERVIEW_RESAMPLING=resampling, RESAMPLING="NEAREST", BIGTIFF="IF_SAFER")


# ------------------------------------------------------------------------------ polygons


def polygonize_block(prob: np.ndarray, mask: np.ndarray, scale_value: np.ndarray, transform: Affine) -> list[dict]:
    """Polygon records of the 4-connected regions of ``mask`` in one block.

    Records hold ``geometry`` (shapely), ``n_px``, ``sum_prob``, ``max_prob``, ``scale``; the
    caller dissolves records across block borders (``dissolve``).
    """
    from rasterio.features import shapes
    from scipy import ndimage as ndi
    from shapely.geometry import shape

    labels, n = ndi.label(mask, structure=[[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    if n == 0:
        return []
    ids = np.arange(1, n + 1)
    n_px = ndi.sum_labels(np.ones_like(prob, np.float64), labels, ids)
    sums = ndi.sum_labels(prob.astype(np.float64), labels, ids)
    maxs = ndi.maximum(prob, labels, ids)
    where = ndi.maximum_position(prob, labels, ids)  # first maximal pixel in raster order
    geoms: dict[int, object] = {}
    for geom, value in shapes(labels.astype(np.int32), mask=mask, connectivity=4, transform=transform):
        geoms[int(value)] = shape(geom)
    return [{"geometry": geoms[i + 1], "n_px": float(n_px[i]), "sum_prob": float(sums[i]), "max_prob": float(maxs[i]),
             "scale": float(scale_value[where[i]]), "tile_ids": set()} for i in range(n)]


def dissolve(records: list[dict]) -> list[dict]:
    """Union records whose polygons share an edge or overlap (those cut by a block or chunk border).

    Pixel counts and probability sums add; ``max_prob`` is the maximum and ``scale`` comes from the
    part holding it; tile ids are united.
    """
    import shapely

    if len(records) < 2:
        return records
    geoms = np.array([r["geometry"] for r in records], dtype=object)
    a, b = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    keep = a < b
    a, b = a[keep], b[keep]
    parent = list(range(len(records)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    if a.size:
        inter = shapely.intersection(geoms[a], geoms[b])
        # corner contacts (points) stay separate: polygons are 4-connected regions
        joined = (shapely.length(inter) > 0) | (shapely.area(inter) > 0)
        for i, j in zip(a[joined].tolist(), b[joined].tolist()):
            ri, rj = find(i), find(j)
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
    groups: dict[int, list[int]] = {}
    for i in range(len(records)):
        groups.setdefault(find(i), []).append(i)
    out = []
    for members in groups.values():
        if len(members) == 1:
            out.append(records[members[0]])
            continue
        parts = [records[i] for i in members]
        best = max(parts, key=lambda r: r["max_prob"])  # first on ties (max keeps the first)
        merged = shapely.union_all([p["geometry"] for p in parts])
        out.append({"geometry": merged, "n_px": sum(p["n_px"] for p in parts), "sum_prob": sum(p["sum_prob"] for p in parts),
                    "max_prob": best["max_prob"], "scale": best["scale"], "tile_ids": set().union(*(p["tile_ids"] for p in parts))})
    return out


def finalize(records: list[dict], tile_boxes: list[tuple[str, tuple[float, float, float, float]]] | None = None) -> dict:
    """Columns of the GeoPackage layer from dissolved records, in a deterministic order.

    Features are ordered by their bounds (north to south, then west to east) and numbered from 1.
    ``tile_boxes`` (id, (minx, miny, maxx, maxy)) adds the ids of tiles overlapping each polygon.
    """
    import shapely
    from rasterio.warp import transform as warp_transform

    polys = []
    for r in records:  # a union of edge-sharing parts is one polygon; split anything else
        g = r["geometry"]
        parts = list(g.geoms) if g.geom_type == "MultiPolygon" else [g]
        for p in parts:
            share = p.area / g.area if g.area else 1.0
            polys.append({**r, "geometry": shapely.normalize(p), "n_px": r["n_px"] * share, "sum_prob": r["sum_prob"] * share})
    polys.sort(key=lambda r: (-round(r["geometry"].bounds[3], 6), round(r["geometry"].bounds[0], 6),
                              round(r["geometry"].bounds[1], 6), round(r["geometry"].bounds[2], 6)))
    geoms = np.array([r["geometry"] for r in polys], dtype=object)
    if tile_boxes and len(polys):
        boxes = shapely.box(*np.array([b for _, b in tile_boxes], dtype=np.float64).T)
        p_idx, t_idx = shapely.STRtree(boxes).query(geoms, predicate="intersects")
        if p_idx.size:
            overlap = shapely.area(shapely.intersection(geoms[p_idx], boxes[t_idx])) > 0
            for p, t in zip(p_idx[overlap].tolist(), t_idx[overlap].tolist()):
                polys[p]["tile_ids"].add(tile_boxes[t][0])
    cx = np.array([g.centroid.x for g in geoms], np.float64)
    cy = np.array([g.centroid.y for g in geoms], np.float64)
    lon, lat = warp_transform(CRS, "EPSG:4326", cx.tolist(), cy.tolist()) if len(polys) else ([], [])
    return {
        "geometry": geoms,
        "rts_id": np.arange(1, len(polys) + 1, dtype=np.int64),
        "area_m2": np.array([g.area for g in geoms], np.float64),
        "perimeter_m": np.array([g.length for g in geoms], np.float64),
        "centroid_lat": np.asarray(lat, np.float64),
        "centroid_lon": np.asarray(lon, np.float64),
        "mean_prob": np.array([r["sum_prob"] / max(r["n_px"], 1e-12) for r in polys], np.float64),
        "max_prob": np.array([r["max_prob"] for r in polys], np.float64),
        "detection_scale": np.array([r["scale"] for r in polys], np.float64),
        "tile_ids": np.array([",".join(sorted(r["tile_ids"])) for r in polys], dtype=object),
    }


def write_gpkg(path: str | os.PathLike, columns: dict) -> None:
    """Write the polygon columns of ``finalize`` as a GeoPackage layer ``rts`` (EPSG:3413), atomically."""
    import pyogrio
    import pyogrio.raw
    import shapely

    pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": GPKG_DATE})
    geometry = np.array(shapely.to_wkb(columns["geometry"]), dtype=object) if len(columns["geometry"]) else np.array([], dtype=object)
    names = [f for f in FIELDS]
    data = [columns[f] for f in names]
    with atomic_path(path, suffix=".gpkg") as tmp:
        tmp.unlink()  # the GPKG driver creates the file itself
        pyogrio.raw.write(str(tmp), geometry=geometry, field_data=data, fields=names, crs=CRS, driver="GPKG",
                          geometry_type="Polygon", layer="rts", encoding="UTF-8")


def read_gpkg(path: str | os.PathLike) -> list[dict]:
    """Polygon records (as ``dissolve`` takes them) from a GeoPackage written by ``write_gpkg``.

    ``n_px`` is recovered as ``area_m2 / pixel area`` (9 m^2) and ``sum_prob`` as ``mean_prob * n_px``.
    """
    import pyogrio.raw
    import shapely

    meta, _, geometry, data = pyogrio.raw.read(str(path))
    cols = dict(zip(meta["fields"], data))
    missing = [f for f in FIELDS if f not in cols]
    if missing:
        raise ValueError(f"{path}: not an rts polygon layer (missing fields {missing})")
    out = []
    for i, wkb in enumerate(geometry):
        n_px = float(cols["area_m2"][i]) / PIXEL_SIZE_M**2
        tiles = str(cols["tile_ids"][i] or "")
        out.append({"geometry": shapely.from_wkb(wkb), "n_px": n_px, "sum_prob": float(cols["mean_prob"][i]) * n_px,
                    "max_prob": float(cols["max_prob"][i]), "scale": float(cols["detection_scale"][i]),
                    "tile_ids": set(t for t in tiles.split(",") if t)})
    return out
