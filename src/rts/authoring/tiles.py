"""``rts tiles``: build the training dataset, in the format ``rts check`` validates, from basemap scenes and RTS polygons.

The grid is fixed: EPSG:3413, ``pixel_size`` metres, tile cells whose corners are multiples of
``tile_size * pixel_size`` from (0, 0). Tiles from different scenes and different runs therefore
line up, and a tile is named by its cell: ``x<col>_y<row>`` (``x`` counts east, ``y`` north).

Work is streamed tile by tile. Each finished tile appends one JSON line to
``tiles_manifest.jsonl`` (flushed and fsynced); a re-run skips tiles whose three files exist and
whose record is in the manifest. ``metadata.csv``, ``splits.yaml``, ``version.json``,
``splits_summary.json`` and ``tiles_report.json`` are assembled from the manifest at the end.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
import yaml
from affine import Affine

from rts.authoring.tiles_sources import (
    ExtraSource,
    InputError,
    PolygonSet,
    Resampling,
    Scene,
    extra_channel,
    open_scene,
    parse_rgb_scale,
    read_geometries,
    read_polygons,
    scene_rgb,
)
from rts.errors import ConfigError
from rts.io import (
    CRS,
    EXTRA_CHANNELS,
    IGNORE,
    METADATA_COLUMNS,
    NEGATIVE,
    POSITIVE,
    file_sha256,
    tile_paths,
    write_geotiff,
    write_json_atomic,
    write_text_atomic,
)
from rts.logs import bar, progress

log = logging.getLogger(__name__)

DATASET_VERSION = "2.0"
MANIFEST = "tiles_manifest.jsonl"
SPLIT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}

__all__ = ["TileOptions", "build_tiles", "cell_transform", "tile_id", "assign_splits", "InputError"]


@dataclass
class TileOptions:
    """Options of one build; they are hashed into the manifest so a re-run cannot mix options."""

    tile_size: int = 512
    pixel_size: float = 3.0
    rgb_bands: list[int] = field(default_factory=lambda: [1, 2, 3])
    rgb_scale: str = "auto"
    resampling: Resampling = "bilinear"
    partial_min_fraction: float = 0.5
    min_coverage: float = 0.9
    negative_distance: float = 500.0
    n_negatives: int | None = None
    seed: int = 42
    reflectance_scale: float = 10000.0
    re_window_m: float = 300.0
    sun_azimuth: float = 315.0
    sun_elevation: float = 45.0
    uid_field: str = "UID"
    region_field: str = "RegionName"
    default_region: str | None = None
    fix_invalid: bool = True

    def __post_init__(self) -> None:
        problems = []
        if self.tile_size < 32 or self.tile_size % 32:
            problems.append(f"tile_size must be a multiple of 32 >= 32, got {self.tile_size}")
        if self.pixel_size <= 0:
            problems.append(f"pixel_size must be > 0, got {self.pixel_size}")
        if len(self.rgb_bands) != 3:
            problems.append(f"rgb_bands must name 3 bands (R,G,B), got {self.rgb_bands}")
        if not 0 < self.partial_min_fraction <= 1:
            problems.append(f"partial_min_fraction must be in (0, 1], got {self.partial_min_fraction}")
        if not 0 < self.min_coverage <= 1:
            problems.append(f"min_coverage must be in (0, 1], got {self.min_coverage}")
        if self.negative_distance < 0:
            problems.append(f"negative_distance must be >= 0, got {self.negative_distance}")
        if self.n_negatives is not None and self.n_negatives < 0:
            problems.append(f"n_negatives must be >= 0, got {self.n_negatives}")
        if self.resampling not in ("bilinear", "cubic"):
            problems.append(f"resampling must be bilinear or cubic, got {self.resampling!r}")
        parse_rgb_scale(self.rgb_scale)
        if problems:
            raise ConfigError("; ".join(problems))

    @property
    def cell_m(self) -> float:
        return self.tile_size * self.pixel_size


# --------------------------------------------------------------------------------------- grid


def tile_id(ix: int, iy: int) -> str:
    """Name of grid cell (ix, iy): ``x<ix>_y<iy>``."""
    return f"x{ix}_y{iy}"


def cell_transform(ix: int, iy: int, opts: TileOptions) -> Affine:
    """North-up transform of cell (ix, iy); its upper-left corner is (ix, iy + 1) * cell size."""
    return Affine(opts.pixel_size, 0.0, ix * opts.cell_m, 0.0, -opts.pixel_size, (iy + 1) * opts.cell_m)


def cell_box(ix: int, iy: int, opts: TileOptions) -> shapely.Polygon:
    s = opts.cell_m
    return shapely.box(ix * s, iy * s, (ix + 1) * s, (iy + 1) * s)


def cells_of(geom: shapely.Geometry, opts: TileOptions) -> list[tuple[int, int]]:
    """Grid cells whose area intersects ``geom`` (touching an edge only does not count)."""
    s = opts.cell_m
    x0, y0, x1, y1 = geom.bounds
    out = []
    for ix in range(math.floor(x0 / s), math.floor(x1 / s) + 1):
        for iy in range(math.floor(y0 / s), math.floor(y1 / s) + 1):
            if shapely.intersection(geom, cell_box(ix, iy, opts)).area > 0 or (geom.area == 0 and geom.intersects(cell_box(ix, iy, opts))):
                out.append((ix, iy))
    return out


def centroid_latlon(ix: int, iy: int, opts: TileOptions) -> tuple[float, float]:
    from rasterio.warp import transform

    s = opts.cell_m
    lon, lat = transform(CRS, "EPSG:4326", [(ix + 0.5) * s], [(iy + 0.5) * s])
    return round(lat[0], 6), round(lon[0], 6)


# ------------------------------------------------------------------------------------ labels


def label_tile(
    geoms: list[shapely.Geometry], cell: shapely.Polygon, transform: Affine, size: int, partial_min_fraction: float
) -> tuple[np.ndarray, list[int], int]:
    """Rasterise RTS polygons into one tile (pixel-centre rule, ``all_touched=False``).

    The partial-target rule: a polygon with less than ``partial_min_fraction`` of its area inside
    the tile (of the tile's area, for a polygon larger than the tile) is taken to have its headwall
    outside, so its pixels become 255. Complete polygons are
    burnt after partial ones, so where they overlap the RTS label wins.

    Returns:
        (label uint8 (size, size), indices of the polygons labelled 1, number of partial polygons).
    """
    from rasterio.features import rasterize

    partial, complete = [], []
    for i, g in enumerate(geoms):
        # An RTS larger than the tile can never have half its area inside; measure it against
        # the tile instead, so a tile lying inside a huge slump still counts as labelled.
        ref = min(g.area, cell.area)
        frac = shapely.intersection(g, cell).area / ref if ref > 0 else 0.0
        (complete if frac >= partial_min_fraction else partial).append(i)
    shapes = [(geoms[i], IGNORE) for i in partial] + [(geoms[i], 1) for i in complete]
    if not shapes:
        return np.zeros((size, size), np.uint8), [], 0
    label = rasterize(shapes, out_shape=(size, size), transform=transform, fill=0, all_touched=False, dtype="uint8")
    return label, complete, len(partial)


# ------------------------------------------------------------------------------------ splits


def assign_splits(positives_per_region: dict[str, int], fractions: dict[str, float] = SPLIT_FRACTIONS) -> dict[str, list[str]]:
    """Whole regions to splits so each split's share of positive tiles approaches ``fractions``.

    Greedy: regions in decreasing positive count (ties by name) go to the split with the largest
    remaining deficit (ties in the order train, val, test). With three or more regions no split is
    left empty: the smallest train region moves to an empty split.
    """
    total = sum(positives_per_region.values())
    got = {s: 0 for s in fractions}
    out: dict[str, list[str]] = {s: [] for s in fractions}
    for region, n in sorted(positives_per_region.items(), key=lambda kv: (-kv[1], kv[0])):
        split = max(fractions, key=lambda s: (fractions[s] * total - got[s], -list(fractions).index(s)))
        out[split].append(region)
        got[split] += n
    if len(positives_per_region) >= 3:
        for split in fractions:
            if not out[split]:
                donor = max(out, key=lambda s: len(out[s]))
                smallest = min(out[donor], key=lambda r: (positives_per_region[r], r))
                out[donor].remove(smallest)
                out[split].append(smallest)
    return {s: sorted(r) for s, r in out.items()}


# ----------------------------------------------------------------------------------- builder


def _options_hash(opts: TileOptions, inputs: dict[str, Any]) -> str:
    blob = json.dumps({"options": asdict(opts), "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _read_manifest(path: Path, opts_hash: str) -> dict[str, dict[str, Any]]:
    if not path.exists():
        return {}
    records: dict[str, dict[str, Any]] = {}
    lines = path.read_text().splitlines()
    for n, line in enumerate(lines):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines) - 1:  # a run killed mid-write leaves at most one torn last line
                continue
            raise InputError(f"{path}: line {n + 1} is not JSON; delete the output folder and rebuild") from None
        if "options_hash" in rec:
            if rec["options_hash"] != opts_hash:
                raise InputError(
                    f"{path}: the output folder was built with other inputs/options ({rec['options_hash']} != {opts_hash}); "
                    "use a new --out folder or delete this one"
                )
            continue
        records[rec["tile_id"]] = rec
    return records


class _Manifest:
    """Append-only JSONL of finished tiles; every line is flushed and fsynced before moving on."""

    def __init__(self, path: Path, opts_hash: str, fresh: bool) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(path, "a", encoding="utf-8")
        if fresh:
            self.write({"options_hash": opts_hash})

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record, sort_keys=True) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def _input_record(path: Path, hash_it: bool) -> dict[str, Any]:
    path = Path(path)
    rec: dict[str, Any] = {"path": str(path), "bytes": path.stat().st_size if path.exists() else None}
    if hash_it and path.exists():
        rec["sha256"] = file_sha256(path)
    return rec


@dataclass
class _Build:
    """What the tile writers of one build share: options, inputs, the output folder and progress so far."""

    opts: TileOptions
    out: Path
    polygons: Path
    poly: PolygonSet
    pos_idx: list[int]
    pos_tree: shapely.STRtree
    scenes: list[Scene]
    by_channel: dict[str, ExtraSource]
    region_geoms: list[shapely.Geometry]
    region_names: list[str | None]
    counts: dict[str, Any]
    done: dict[str, dict[str, Any]]
    manifest: _Manifest


# ------------------------------------------------------------------------------------ inputs


def _read_rts(
    polygons: Path, negatives: Path | None, opts: TileOptions, polygons_crs: str | None, report: dict[str, Any]
) -> tuple[PolygonSet, list[int], list[shapely.Geometry]]:
    """Read the RTS polygons and negative locations; returns (polygons, indices of the RTS, negative geometries)."""
    counts = report["counts"]
    poly = read_polygons(
        polygons, uid_field=opts.uid_field, region_field=opts.region_field, crs=polygons_crs, fix_invalid=opts.fix_invalid
    )
    report["invalid_polygons"] = poly.invalid
    counts["polygons_read"] = len(poly.geoms)
    counts["polygons_empty_geometry"] = poly.empty
    pos_idx = [i for i, c in enumerate(poly.train_class) if c != NEGATIVE]
    neg_geoms = [poly.geoms[i] for i, c in enumerate(poly.train_class) if c == NEGATIVE]
    if negatives is not None:
        extra_neg, _ = read_geometries(negatives)
        neg_geoms += extra_neg
    return poly, pos_idx, neg_geoms


def _open_scenes(scenes: list[Path], opts: TileOptions, report: dict[str, Any]) -> list[Scene]:
    """Open the RGB scenes, listing unusable ones in the report; raises when no scene is usable."""
    scale = parse_rgb_scale(opts.rgb_scale)
    opened: list[Scene] = []
    for path in scenes:
        try:
            opened.append(open_scene(Path(path), opts.rgb_bands, scale))
        except InputError as e:
            log.warning("skipping scene: %s", e)
            report["skipped_files"].append({"path": str(path), "reason": str(e).split(": ", 1)[-1]})
    if not opened:
        raise InputError(f"no usable scene among {[str(s) for s in scenes]}: {report['skipped_files']}")
    return opened


def _usable_extras(extras: list[ExtraSource], report: dict[str, Any]) -> dict[str, ExtraSource]:
    """EXTRA-channel sources by channel, leaving out (and reporting) rasters without a CRS or the asked bands."""
    import rasterio
    from rasterio.errors import RasterioIOError

    usable_extras = []
    for src in extras:
        try:
            with rasterio.open(src.path) as ds:
                if ds.crs is None:
                    raise InputError(f"{src.path}: raster has no CRS")
                if max(src.bands) > ds.count:
                    raise InputError(f"{src.path}: has {ds.count} bands; --extra {src.channel} asks for {src.bands}")
            usable_extras.append(src)
        except (InputError, RasterioIOError) as e:
            log.warning("skipping EXTRA source: %s", e)
            report["skipped_files"].append({"path": str(src.path), "channel": src.channel, "reason": str(e).split(": ", 1)[-1]})
    return {s.channel: s for s in usable_extras}


def _inputs_record(
    scenes: list[Scene],
    polygons: Path,
    by_channel: dict[str, ExtraSource],
    negatives: Path | None,
    regions: Path | None,
    splits: Path | None,
) -> dict[str, Any]:
    """The build's input files (paths, sizes, hashes of the vector and splits files), hashed with the options."""
    return {
        "scenes": [_input_record(s.path, hash_it=False) for s in scenes],
        "polygons": _input_record(polygons, hash_it=True),
        "extras": {c: {**_input_record(s.path, hash_it=False), "bands": s.bands} for c, s in by_channel.items()},
        "negatives": _input_record(negatives, hash_it=True) if negatives else None,
        "regions": _input_record(regions, hash_it=True) if regions else None,
        "splits": _input_record(splits, hash_it=True) if splits else None,
    }


# ------------------------------------------------------------------------------------- tiles


def _region_of(job: _Build, cell: shapely.Polygon, candidates: list[int]) -> str:
    """Region of a tile: the region polygon holding its centre, else that of its main (or nearest) RTS, else the default."""
    if job.region_geoms:
        c = cell.centroid
        for g, name in zip(job.region_geoms, job.region_names):
            if name is not None and g.covers(c):
                return name
    if candidates:
        best = max(candidates, key=lambda i: (shapely.intersection(job.poly.geoms[i], cell).area, -i))
        if job.poly.regions[best]:
            return job.poly.regions[best]
    elif job.pos_idx:  # a negative: region of the nearest RTS
        nearest = job.pos_idx[int(job.pos_tree.nearest(cell.centroid))]
        if job.poly.regions[nearest]:
            return job.poly.regions[nearest]
    if job.opts.default_region:
        return job.opts.default_region
    raise InputError(
        f"{job.polygons}: no region for tile at {cell.centroid.wkt}; the file has no {job.opts.region_field!r} value there. "
        "Pass --region-name NAME or --regions FILE --region-field NAME"
    )


def _scene_for(job: _Build, cell: shapely.Polygon) -> Scene | None:
    """First scene whose footprint covers at least ``min_coverage`` of a tile cell, or None."""
    for sc in job.scenes:
        if shapely.intersection(sc.footprint, cell).area >= job.opts.min_coverage * cell.area:
            return sc
    return None


def _extra_tile(job: _Build, transform: Affine) -> np.ndarray:
    """EXTRA channels of one tile, float32 (channels, size, size); a channel without a source stays 0."""
    opts = job.opts
    size = opts.tile_size
    extra = np.zeros((len(EXTRA_CHANNELS), size, size), np.float32)
    for k, channel in enumerate(EXTRA_CHANNELS):
        if channel in job.by_channel:
            extra[k] = extra_channel(
                job.by_channel[channel],
                transform,
                size,
                pixel_size=opts.pixel_size,
                reflectance_scale=opts.reflectance_scale,
                re_window_m=opts.re_window_m,
                sun_azimuth=opts.sun_azimuth,
                sun_elevation=opts.sun_elevation,
            )
    return extra


def _write_tile(job: _Build, ix: int, iy: int, scene: Scene, cands: list[int]) -> dict[str, Any] | str:
    """Write one tile; returns its record or the reason it was skipped."""
    opts = job.opts
    tid = tile_id(ix, iy)
    transform = cell_transform(ix, iy, opts)
    size = opts.tile_size
    cell = cell_box(ix, iy, opts)
    rgb, valid = scene_rgb(scene, transform, size, opts.resampling)
    if valid.mean() < opts.min_coverage:
        return "low_coverage"
    label, complete, n_partial = label_tile([job.poly.geoms[i] for i in cands], cell, transform, size, opts.partial_min_fraction)
    label[~valid] = IGNORE  # no imagery, no verdict
    job.counts["partial_polygon_tile_pairs_ignored"] += n_partial
    positive = bool((label == 1).any())
    if cands and not positive:
        return "all_ignore"
    extra = _extra_tile(job, transform)
    paths = tile_paths(job.out, tid)
    # Label last: a tile counts as present only once all three exist.
    write_geotiff(paths["rgb"], rgb, transform)
    write_geotiff(paths["extra"], extra, transform)
    write_geotiff(paths["label"], label[None], transform)
    lat, lon = centroid_latlon(ix, iy, opts)
    uids = list(dict.fromkeys(job.poly.uids[cands[j]] for j in complete))
    return {
        "tile_id": tid,
        "centroid_lat": lat,
        "centroid_lon": lon,
        "TrainClass": POSITIVE if positive else NEGATIVE,
        "RegionName": _region_of(job, cell, cands),
        "UIDs": ",".join(uids) if positive else "",
        "scene": str(scene.path),
        "partial_polygons": n_partial,
        "rts_px": int((label == 1).sum()),
        "ignore_px": int((label == IGNORE).sum()),
    }


def _process_tile(job: _Build, ix: int, iy: int, scene: Scene, cands: list[int], kind: str) -> str:
    """Write or resume one tile; returns ``written``, ``resumed`` or the reason it was skipped."""
    tid = tile_id(ix, iy)
    if tid in job.done and all(p.exists() for p in tile_paths(job.out, tid).values()):
        status = "resumed"
    else:
        result = _write_tile(job, ix, iy, scene, cands)
        if isinstance(result, str):
            status = f"skipped_{result}"
        else:
            job.manifest.write(result)
            job.done[tid] = result
            status = "written"
    job.counts[f"{kind}_{status}"] = job.counts.get(f"{kind}_{status}", 0) + 1
    return status


# --------------------------------------------------------------------------------- positives


def _positive_cells(job: _Build) -> dict[tuple[int, int], list[int]]:
    """Every grid cell an RTS polygon reaches into, with the indices of the polygons reaching it."""
    pos_cells: dict[tuple[int, int], list[int]] = {}
    for i in job.pos_idx:
        for c in cells_of(job.poly.geoms[i], job.opts):
            pos_cells.setdefault(c, []).append(i)
    return pos_cells


def _build_positives(job: _Build, pos_cells: dict[tuple[int, int], list[int]]) -> list[str]:
    """Write the positive tile of every covered RTS cell; returns the UIDs of the RTS that landed in no tile."""
    counts = job.counts
    covered_polys: set[int] = set()
    counts["partial_polygon_tile_pairs_ignored"] = 0  # counted for written and skipped tiles
    for (ix, iy), cands in progress(sorted(pos_cells.items()), desc="positive tiles", unit="cell"):
        scene = _scene_for(job, cell_box(ix, iy, job.opts))
        if scene is None:
            counts["positive_cells_not_covered"] = counts.get("positive_cells_not_covered", 0) + 1
            continue
        status = _process_tile(job, ix, iy, scene, cands, "positive")
        if status in ("written", "resumed"):
            covered_polys.update(cands)
        if status == "resumed":
            counts["partial_polygon_tile_pairs_ignored"] += job.done[tile_id(ix, iy)]["partial_polygons"]
    return [job.poly.uids[i] for i in job.pos_idx if i not in covered_polys]


# --------------------------------------------------------------------------------- negatives


def _negative_cells(job: _Build, neg_geoms: list[shapely.Geometry]) -> list[tuple[int, int]]:
    """Cells to try as negatives: those of the given locations in grid order, else all scene cells in seeded random order."""
    if neg_geoms:
        return sorted({c for g in neg_geoms for c in cells_of(g, job.opts)})
    candidates = sorted({c for sc in job.scenes for c in cells_of(sc.footprint, job.opts)})
    rng = np.random.default_rng(job.opts.seed)
    return [candidates[k] for k in rng.permutation(len(candidates))]


def _build_negatives(job: _Build, neg_geoms: list[shapely.Geometry], pos_cells: dict[tuple[int, int], list[int]]) -> None:
    """Write negative tiles at the given locations, or at random cells away from every RTS up to the target count."""
    counts = job.counts
    n_pos = sum(1 for r in job.done.values() if r["TrainClass"] == POSITIVE)
    target = job.opts.n_negatives if job.opts.n_negatives is not None else n_pos
    candidates = _negative_cells(job, neg_geoms)
    n_neg = 0
    # random negatives stop at the target count; given locations are all tried
    shown = bar(len(candidates) if neg_geoms else target, desc="negative tiles", unit="cell" if neg_geoms else "tile")
    for ix, iy in candidates:
        if not neg_geoms and n_neg >= target:
            break
        if neg_geoms:
            shown.update()
        cell = cell_box(ix, iy, job.opts)
        if tile_id(ix, iy) in job.done and job.done[tile_id(ix, iy)]["TrainClass"] == POSITIVE or (ix, iy) in pos_cells:
            counts["negative_skipped_has_rts"] = counts.get("negative_skipped_has_rts", 0) + 1
            continue
        if len(job.pos_idx) and len(job.pos_tree.query(cell, predicate="dwithin", distance=job.opts.negative_distance)):
            counts["negative_skipped_near_rts"] = counts.get("negative_skipped_near_rts", 0) + 1
            continue
        scene = _scene_for(job, cell)
        if scene is None:
            counts["negative_skipped_not_covered"] = counts.get("negative_skipped_not_covered", 0) + 1
            continue
        written = _process_tile(job, ix, iy, scene, [], "negative") in ("written", "resumed")
        n_neg += written
        if written and not neg_geoms:
            shown.update()
    shown.close()
    counts["negative_target"] = None if neg_geoms else target


# ------------------------------------------------------------------------- dataset-level files


def _write_metadata(out: Path, records: list[dict[str, Any]]) -> None:
    """Write ``metadata.csv``, one row per tile record."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(METADATA_COLUMNS), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(records)
    write_text_atomic(out / "metadata.csv", buf.getvalue())


def _tiles_per_region(records: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Positive and negative tile counts of each region, in order of first appearance."""
    per_region: dict[str, dict[str, int]] = {}
    for r in records:
        d = per_region.setdefault(r["RegionName"], {"positive": 0, "negative": 0})
        d["positive" if r["TrainClass"] == POSITIVE else "negative"] += 1
    return per_region


def _read_splits(splits: Path, per_region: dict[str, dict[str, int]]) -> dict[str, list[str]]:
    """Regions of each split from a splits YAML, which must name known splits and give every region exactly one."""
    mapping = yaml.safe_load(Path(splits).read_text()) or {}
    unknown_keys = set(mapping) - set(SPLIT_FRACTIONS)
    if unknown_keys:
        raise InputError(f"{splits}: unknown split(s) {sorted(unknown_keys)}; valid: {list(SPLIT_FRACTIONS)}")
    mapping = {s: [str(r) for r in mapping.get(s) or []] for s in SPLIT_FRACTIONS}
    seen = [r for s in mapping.values() for r in s]
    twice = sorted({r for r in seen if seen.count(r) > 1})
    missing = sorted(set(per_region) - set(seen))
    if twice or missing:
        raise InputError(f"{splits}: regions in two splits {twice}; dataset regions without a split {missing}")
    return mapping


def _splits_summary(method: str, mapping: dict[str, list[str]], per_region: dict[str, dict[str, int]]) -> dict[str, Any]:
    """Content of ``splits_summary.json``: how regions were split, each split's regions and tiles, tiles per region."""
    return {
        "method": method,
        "splits": {
            s: {
                "regions": regions_,
                "positive_tiles": sum(per_region.get(r, {}).get("positive", 0) for r in regions_),
                "negative_tiles": sum(per_region.get(r, {}).get("negative", 0) for r in regions_),
            }
            for s, regions_ in mapping.items()
        },
        "regions": per_region,
    }


def _write_splits(out: Path, splits: Path | None, per_region: dict[str, dict[str, int]]) -> None:
    """Write ``splits.yaml`` and ``splits_summary.json``: regions per split, from the splits file or balanced greedily."""
    if splits:
        mapping = _read_splits(splits, per_region)
        method = f"from {splits}"
    else:
        mapping = assign_splits({k: v["positive"] for k, v in per_region.items()})
        method = "balanced by region (greedy on positive tiles, target 80/10/10)"
    write_text_atomic(out / "splits.yaml", yaml.safe_dump(mapping, sort_keys=False))
    write_json_atomic(out / "splits_summary.json", _splits_summary(method, mapping, per_region))


def _rgb_scaling_note(scene: Scene) -> str:
    """How a scene's values were scaled to uint8 RGB, in words for ``version.json``."""
    if scene.scale == "none":
        return "none (uint8 values as stored)"
    if scene.scale == "percentile":
        return f"percentile 2-98 per band per scene: {np.round(scene.stretch, 3).tolist()}"
    return f"value * 255 / {scene.scale}, clipped to 0-255"


def _version_record(
    opts: TileOptions,
    scenes: list[Scene],
    inputs: dict[str, Any],
    opts_hash: str,
    missing_extra: list[str],
    counts: dict[str, Any],
) -> dict[str, Any]:
    """Content of ``version.json``: the dataset's grid, channels, RGB scaling, inputs, options and tile counts."""
    return {
        "dataset_version": DATASET_VERSION,
        "created_by": "rts tiles",
        "crs": CRS,
        "pixel_size_m": opts.pixel_size,
        "tile_size": opts.tile_size,
        "grid_origin": [0.0, 0.0],
        "extra_channels": list(EXTRA_CHANNELS),
        "missing_extra_channels": missing_extra,
        "rgb_scaling": {str(s.path): _rgb_scaling_note(s) for s in scenes},
        "inputs": inputs,
        "options": asdict(opts),
        "options_hash": opts_hash,
        "counts": {"positive_tiles": counts["positive_tiles"], "negative_tiles": counts["negative_tiles"]},
    }


# -------------------------------------------------------------------------------- build_tiles


def build_tiles(
    scenes: list[Path],
    polygons: Path,
    out: Path,
    *,
    options: TileOptions | None = None,
    extras: list[ExtraSource] | None = None,
    negatives: Path | None = None,
    regions: Path | None = None,
    region_field: str = "RegionName",
    splits: Path | None = None,
    polygons_crs: str | None = None,
) -> dict[str, Any]:
    """Build a dataset folder in the dataset format from scenes and RTS polygons.

    Args:
        scenes: RGB basemap rasters (any CRS); the first scene covering a cell supplies it.
        polygons: RTS polygons (ARTS schema: UID, RegionName, TrainClass); ``Negative`` features
            become negative tiles.
        out: dataset folder (created; re-runs resume into it).
        options: grid, scaling, labelling and sampling options.
        extras: sources of EXTRA channels; channels without a source are 0 and listed in
            ``version.json`` as ``missing_extra_channels``.
        negatives: optional points/polygons of negative locations; when given, no random
            negatives are drawn.
        regions: optional region polygons; a tile's region is the one containing its centre.
        region_field: attribute of ``regions`` holding the region name.
        splits: optional YAML ``{train: [...], val: [...], test: [...]}`` of region names;
            without it regions are assigned by :func:`assign_splits`.
        polygons_crs: CRS to assume when the polygon file has none.

    Returns:
        The report also written to ``tiles_report.json``.

    Raises:
        InputError: unusable polygon file, no usable scene, bad ``--extra``, or a region that has
            no split in ``splits``.
    """
    opts = options or TileOptions()
    extras = list(extras or [])
    out = Path(out)
    report: dict[str, Any] = {"skipped_files": [], "invalid_polygons": [], "polygons_not_covered": [], "counts": {}}
    counts = report["counts"]

    # ---- inputs
    poly, pos_idx, neg_geoms = _read_rts(polygons, negatives, opts, polygons_crs, report)
    opened = _open_scenes(scenes, opts, report)
    by_channel = _usable_extras(extras, report)
    missing_extra = [c for c in EXTRA_CHANNELS if c not in by_channel]
    region_geoms, region_names = (read_geometries(regions, field_name=region_field) if regions else ([], []))
    inputs = _inputs_record(opened, polygons, by_channel, negatives, regions, splits)
    opts_hash = _options_hash(opts, inputs)
    manifest_path = out / MANIFEST
    done = _read_manifest(manifest_path, opts_hash)
    manifest = _Manifest(manifest_path, opts_hash, fresh=not manifest_path.exists())
    job = _Build(
        opts=opts, out=out, polygons=polygons, poly=poly, pos_idx=pos_idx,
        pos_tree=shapely.STRtree([poly.geoms[i] for i in pos_idx]), scenes=opened, by_channel=by_channel,
        region_geoms=region_geoms, region_names=region_names, counts=counts, done=done, manifest=manifest,
    )

    # ---- tiles: positives first, as negatives keep clear of them and by default match their number
    try:
        pos_cells = _positive_cells(job)
        report["polygons_not_covered"] = _build_positives(job, pos_cells)
        counts["polygons_not_covered"] = len(report["polygons_not_covered"])
        _build_negatives(job, neg_geoms, pos_cells)
    finally:
        manifest.close()

    # ---- dataset-level files from the manifest
    records = sorted(done.values(), key=lambda r: r["tile_id"])
    counts["positive_tiles"] = sum(r["TrainClass"] == POSITIVE for r in records)
    counts["negative_tiles"] = sum(r["TrainClass"] == NEGATIVE for r in records)
    _write_metadata(out, records)
    _write_splits(out, splits, _tiles_per_region(records))
    write_json_atomic(out / "version.json", _version_record(opts, opened, inputs, opts_hash, missing_extra, counts))
    report["missing_extra_channels"] = missing_extra
    write_json_atomic(out / "tiles_report.json", report)
    log.info("tiles: %s", json.dumps(counts))
    return report
