"""Input side of ``rts tiles``: polygon files, RGB scenes and auxiliary rasters, warped onto tiles.

Everything here returns data on the dataset grid: EPSG:3413, square pixels, a tile window given
by its affine transform. Scenes and auxiliary rasters are reprojected on the fly through
``rasterio.vrt.WarpedVRT`` into exactly that window, so no intermediate mosaic is ever written.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import shapely
import shapely.validation
from affine import Affine

from rts.errors import DataError
from rts.io import CRS, EXTRA_CHANNELS

log = logging.getLogger(__name__)

Resampling = Literal["bilinear", "cubic"]


class InputError(DataError):
    """An input file is missing, unreadable or inconsistent; the message names the file."""


# ------------------------------------------------------------------------------------ polygons


@dataclass
class PolygonSet:
    """Polygons of one vector file, reprojected to EPSG:3413, with the attributes tiles need."""

    geoms: list[shapely.Geometry]
    uids: list[str]
    regions: list[str | None]
    train_class: list[str | None]
    invalid: list[dict[str, str]] = field(default_factory=list)
    empty: int = 0


def _to_3413(geoms: list[shapely.Geometry], src_crs: str) -> list[shapely.Geometry]:
    """Reproject shapely geometries with GDAL (pyproj is not a dependency)."""
    if _same_crs(src_crs, CRS):
        return geoms
    from rasterio.warp import transform_geom

    out = transform_geom(src_crs, CRS, [shapely.geometry.mapping(g) for g in geoms])
    return [shapely.geometry.shape(g) for g in out]


def _same_crs(a: Any, b: Any) -> bool:
    from rasterio.crs import CRS as RioCRS

    return RioCRS.from_user_input(a) == RioCRS.from_user_input(b)


def read_polygons(
    path: Path,
    *,
    uid_field: str = "UID",
    region_field: str = "RegionName",
    class_field: str = "TrainClass",
    crs: str | None = None,
    fix_invalid: bool = True,
) -> PolygonSet:
    """Read a GeoJSON/GeoPackage/Shapefile of RTS polygons into EPSG:3413.

    Features with an empty geometry are dropped and counted. Invalid geometries are reported with
    ``shapely.validation.explain_validity`` and repaired with ``make_valid`` (or dropped when
    ``fix_invalid`` is false), so one bad digitisation never stops a build.

    Args:
        path: vector file readable by GDAL/OGR.
        uid_field: attribute holding the RTS id; when absent the id is ``<file stem>:<feature index>``.
        region_field: attribute holding the region name (may be absent).
        class_field: attribute holding ``Positive``/``Negative`` (absent means all Positive).
        crs: CRS to assume when the file has none; a CRS-less file without it is an error.
        fix_invalid: repair invalid geometries instead of dropping them.

    Raises:
        InputError: the file cannot be read, or has no CRS and ``crs`` is not given.
    """
    import pyogrio.raw

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: polygon file not found")
    try:
        meta, _fids, wkb, fields = pyogrio.raw.read(path)
    except Exception as e:  # pyogrio raises several error types; all mean "unreadable"
        raise InputError(f"{path}: cannot read polygons ({e})") from e
    src_crs = meta.get("crs") or crs
    if not src_crs:
        raise InputError(f"{path}: file has no CRS; pass the CRS explicitly (--polygons-crs EPSG:xxxx)")
    names = list(meta["fields"])

    def column(name: str) -> list[Any] | None:
        return list(fields[names.index(name)]) if name in names else None

    uid_col, reg_col, cls_col = column(uid_field), column(region_field), column(class_field)
    geoms_all = shapely.from_wkb(wkb)
    out = PolygonSet([], [], [], [])
    for i, g in enumerate(geoms_all):
        if g is None or g.is_empty:
            out.empty += 1
            continue
        uid = str(uid_col[i]) if uid_col is not None and uid_col[i] is not None else f"{path.stem}:{i}"
        if not g.is_valid:
            reason = shapely.validation.explain_validity(g)
            out.invalid.append({"UID": uid, "reason": reason, "action": "repaired (make_valid)" if fix_invalid else "dropped"})
            if not fix_invalid:
                continue
            # make_valid may return a collection with stray lines; keep the areal part only.
            g = shapely.make_valid(g)
            g = shapely.union_all([p for p in shapely.get_parts(g) if p.geom_type in ("Polygon", "MultiPolygon")])
        out.geoms.append(g)
        out.uids.append(uid)
        out.regions.append(None if reg_col is None or reg_col[i] is None else str(reg_col[i]))
        out.train_class.append(None if cls_col is None or cls_col[i] is None else str(cls_col[i]))
    out.geoms = _to_3413(out.geoms, src_crs)
    return out


def read_geometries(path: Path, crs: str | None = None, field_name: str | None = None) -> tuple[list[shapely.Geometry], list[str | None]]:
    """Geometries of any vector file in EPSG:3413, with one attribute (e.g. a region name)."""
    import pyogrio.raw

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    meta, _fids, wkb, fields = pyogrio.raw.read(path)
    src_crs = meta.get("crs") or crs
    if not src_crs:
        raise InputError(f"{path}: file has no CRS")
    names = list(meta["fields"])
    if field_name is not None and field_name not in names:
        raise InputError(f"{path}: no attribute {field_name!r}; attributes: {', '.join(names)}")
    values = list(fields[names.index(field_name)]) if field_name else [None] * len(wkb)
    keep = [(g, v) for g, v in zip(shapely.from_wkb(wkb), values) if g is not None and not g.is_empty]
    geoms = [shapely.make_valid(g) if not g.is_valid else g for g, _ in keep]
    return _to_3413(geoms, src_crs), [None if v is None else str(v) for _, v in keep]


# -------------------------------------------------------------------------------------- scenes


def parse_rgb_scale(text: str) -> str | float:
    """``auto`` | ``none`` | ``percentile`` | a number (value * 255 / number, clipped)."""
    if text in ("auto", "none", "percentile"):
        return text
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"--rgb-scale: expected auto, none, percentile or a number, got {text!r}") from None
    if value <= 0:
        raise InputError(f"--rgb-scale: the scale must be > 0, got {value}")
    return value


@dataclass
class Scene:
    """An RGB basemap scene: path, bands and its footprint on the dataset grid."""

    path: Path
    bands: list[int]
    footprint: shapely.Geometry
    scale: str | float
    stretch: np.ndarray | None = None  # (3, 2) low/high per band for the percentile stretch


def footprint_3413(path: Path) -> shapely.Geometry:
    """The raster's bounds as a polygon in EPSG:3413 (edges densified, so it is not a bbox)."""
    import rasterio

    with rasterio.open(path) as src:
        if src.crs is None:
            raise InputError(f"{path}: raster has no CRS")
        b = src.bounds
        crs = src.crs
    box = shapely.segmentize(shapely.box(*b), max(b.right - b.left, b.top - b.bottom) / 32)
    return _to_3413([box], crs)[0]


def open_scene(path: Path, bands: list[int], scale: str | float) -> Scene:
    """Check a scene and prepare its scaling to uint8.

    Raises:
        InputError: the file is unreadable, has no CRS, or lacks a requested band.
    """
    import rasterio

    path = Path(path)
    try:
        with rasterio.open(path) as src:
            if src.crs is None:
                raise InputError(f"{path}: raster has no CRS")
            if max(bands) > src.count or min(bands) < 1:
                raise InputError(f"{path}: has {src.count} bands; --rgb-bands {bands} is out of range (1-based)")
            dtype = src.dtypes[bands[0] - 1]
            if scale == "auto":
                scale = "none" if dtype == "uint8" else "percentile"
            stretch = None
            if scale == "percentile":
                # Per scene, not per tile: every tile of one scene gets the same mapping.
                f = max(1, max(src.width, src.height) // 1024)
                arr = src.read(bands, out_shape=(len(bands), max(1, src.height // f), max(1, src.width // f)), masked=True)
                stretch = np.array([np.percentile(b.compressed(), (2, 98)) if b.count() else (0, 1) for b in arr], np.float64)
    except rasterio.errors.RasterioIOError as e:
        raise InputError(f"{path}: cannot read raster ({e})") from e
    return Scene(path, bands, footprint_3413(path), scale, stretch)


def warp(path: Path, bands: list[int], transform: Affine, size: int, resampling: str = "bilinear") -> tuple[np.ndarray, np.ndarray]:
    """Reproject bands of ``path`` into one window of the EPSG:3413 grid.

    Returns:
        (values float64 (bands, size, size), valid bool (size, size)); ``valid`` is false outside
        the raster and on its nodata.
    """
    import rasterio
    from rasterio.enums import Resampling as R
    from rasterio.vrt import WarpedVRT

    with rasterio.open(path) as src, WarpedVRT(
        src, crs=CRS, transform=transform, width=size, height=size, resampling=R[resampling], src_nodata=src.nodata
    ) as vrt:
        data = vrt.read(bands, masked=True)
    # A pixel is valid only when every band has data there (masked arrays per band).
    valid = ~np.ma.getmaskarray(data).any(axis=0)
    values = np.asarray(data.filled(0), dtype=np.float64)
    valid &= np.isfinite(values).all(axis=0)
    return np.where(np.isfinite(values), values, 0.0), valid


def scene_rgb(scene: Scene, transform: Affine, size: int, resampling: Resampling) -> tuple[np.ndarray, np.ndarray]:
    """uint8 RGB (3, size, size) of one tile and its valid mask; invalid pixels are 0."""
    values, valid = warp(scene.path, scene.bands, transform, size, resampling)
    if scene.scale == "none":
        rgb = values
    elif scene.scale == "percentile":
        lo, hi = scene.stretch[:, 0, None, None], scene.stretch[:, 1, None, None]
        rgb = (values - lo) * 255.0 / np.maximum(hi - lo, 1e-12)
    else:
        rgb = values * 255.0 / float(scene.scale)
    rgb = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    rgb[:, ~valid] = 0
    return rgb, valid


# ------------------------------------------------------------------------------- EXTRA channels


@dataclass
class ExtraSource:
    """Where one EXTRA channel comes from. Bands are 1-based."""

    channel: str
    path: Path
    bands: list[int]


_DEFAULT_BANDS = {"ndvi": 2, "nir": 1, "re": 1, "sr": 1}


def parse_extra(spec: str) -> ExtraSource:
    """Parse ``CHANNEL=PATH[:BANDS]``.

    ``ndvi=s2.tif:3,7`` (red band, NIR band), ``nir=s2.tif:7``, ``re=dem.tif``, ``sr=dem.tif:1``.

    Raises:
        InputError: unknown channel or wrong number of bands.
    """
    if "=" not in spec:
        raise InputError(f"--extra {spec!r}: expected CHANNEL=PATH[:BANDS], e.g. ndvi=s2.tif:3,7")
    channel, rest = spec.split("=", 1)
    if channel not in EXTRA_CHANNELS:
        raise InputError(f"--extra {spec!r}: unknown channel {channel!r}; valid channels: {', '.join(EXTRA_CHANNELS)}")
    m = re.fullmatch(r"(.+):(\d+(?:,\d+)*)", rest)
    path, bands = (m.group(1), [int(b) for b in m.group(2).split(",")]) if m else (rest, [1] if channel != "ndvi" else [])
    if len(bands) != _DEFAULT_BANDS[channel]:
        need = "RED,NIR" if channel == "ndvi" else "one band"
        raise InputError(f"--extra {spec!r}: channel {channel} needs {need} (1-based band numbers)")
    return ExtraSource(channel, Path(path), bands)


def hillshade(dem: np.ndarray, pixel_size: float, azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    """Shaded relief in [0, 255] of a north-up DEM; flat ground is ``255 * sin(elevation)``.

    The sun vector (azimuth clockwise from north) is dotted with the unit surface normal; faces
    turned away from the sun are 0.
    """
    dz_drow, dz_dcol = np.gradient(dem, pixel_size)
    dzdx, dzdy = dz_dcol, -dz_drow  # rows run south, y runs north
    az, el = np.deg2rad(azimuth_deg), np.deg2rad(elevation_deg)
    sun = np.array([np.sin(az) * np.cos(el), np.cos(az) * np.cos(el), np.sin(el)])
    norm = np.sqrt(dzdx**2 + dzdy**2 + 1.0)
    shade = (-dzdx * sun[0] - dzdy * sun[1] + sun[2]) / norm
    return 255.0 * np.clip(shade, 0.0, 1.0)


def relative_elevation(dem: np.ndarray, valid: np.ndarray, window_px: int) -> np.ndarray:
    """DEM minus its local mean over a ``window_px`` square (use an odd size), ignoring invalid pixels."""
    from scipy.ndimage import uniform_filter

    w = valid.astype(np.float64)
    num = uniform_filter(dem * w, size=window_px, mode="nearest")
    den = uniform_filter(w, size=window_px, mode="nearest")
    mean = np.divide(num, den, out=np.zeros_like(num), where=den > 1e-9)
    return dem - mean


def extra_channel(
    src: ExtraSource,
    transform: Affine,
    size: int,
    *,
    pixel_size: float,
    reflectance_scale: float,
    re_window_m: float,
    sun_azimuth: float,
    sun_elevation: float,
) -> np.ndarray:
    """One EXTRA channel (size, size) float32 on the tile grid; no-data pixels are 0.

    NDVI and NIR come from bands resampled bilinear onto the tile grid (NDVI is computed after
    resampling). RE and SR need neighbours, so the DEM is warped into a padded window and the
    padding is cropped afterwards; tile edges then match their neighbours.
    """
    match src.channel:
        case "ndvi" | "nir":
            values, valid = warp(src.path, src.bands, transform, size)
            if src.channel == "nir":
                out = values[0] / reflectance_scale
            else:
                red, nir = values
                den = nir + red
                out = np.divide(nir - red, den, out=np.zeros_like(den), where=np.abs(den) > 1e-12)
        case "re" | "sr":
            pad = int(np.ceil(re_window_m / pixel_size / 2)) + 1 if src.channel == "re" else 2
            padded = transform @ Affine.translation(-pad, -pad)
            values, valid_p = warp(src.path, src.bands, padded, size + 2 * pad)
            dem = values[0]
            if src.channel == "re":
                # An odd window is centred on its pixel; an even one would shift the mean half a pixel.
                full = relative_elevation(dem, valid_p, 2 * int(round(re_window_m / pixel_size / 2)) + 1)
            else:
                full = hillshade(dem, pixel_size, sun_azimuth, sun_elevation)
            out, valid = full[pad:-pad, pad:-pad], valid_p[pad:-pad, pad:-pad]
        case _:  # pragma: no cover - parse_extra rejects other names
            raise AssertionError(src.channel)
    out = np.where(valid & np.isfinite(out), out, 0.0)
    return out.astype(np.float32)
