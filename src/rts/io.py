"""Raster and file I/O shared by every part of the project.

The dataset format is fixed: GeoTIFF, LZW, EPSG:3413, ~3 m
pixels; RGB uint8 (3 bands), EXTRA float32 (ndvi, nir, re, sr), labels uint8 {0, 1, 255}. All
writes go to a temporary file in the destination folder and are renamed into place, so a killed
process never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

CRS = "EPSG:3413"
PIXEL_SIZE_M = 3.0
EXTRA_CHANNELS: tuple[str, ...] = ("ndvi", "nir", "re", "sr")
RGB_DIR = "PLANET-RGB"
EXTRA_DIR = "EXTRA"
LABEL_DIR = "labels"
IGNORE = 255
POSITIVE = "Positive"
NEGATIVE = "Negative"
METADATA_COLUMNS = ("tile_id", "centroid_lat", "centroid_lon", "TrainClass", "RegionName", "UIDs")


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The temporary file lives in the same folder (same filesystem), so the rename is atomic.
    On any exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; give the final file the usual umask-based mode instead
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_geotiff(
    path: str | os.PathLike,
    array: np.ndarray,
    transform: Any,
    crs: str = CRS,
    nodata: float | int | None = None,
    compress: str = "lzw",
    **profile: Any,
) -> None:
    """Write a (bands, H, W) or (H, W) array as a tiled GeoTIFF, atomically.

    Output is deterministic for identical inputs (no timestamps are written), which the
    synthetic dataset's DVC hash depends on.
    """
    import rasterio

    arr = array[None] if array.ndim == 2 else array
    count, height, width = arr.shape
    prof = dict(
        driver="GTiff",
        height=height,
        width=width,
        count=count,
        dtype=arr.dtype.name,
        crs=crs,
        transform=transform,
        compress=compress,
    )
    if nodata is not None:
        prof["nodata"] = nodata
    if compress.lower() in ("lzw", "deflate") and np.issubdtype(arr.dtype, np.floating):
        prof["predictor"] = 3
    elif compress.lower() in ("lzw", "deflate"):
        prof["predictor"] = 2
    prof.update(profile)
    with atomic_path(path, suffix=".tif") as tmp:
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
            with rasterio.open(tmp, "w", **prof) as dst:
                dst.write(arr)


def tile_paths(root: str | os.PathLike, tile_id: str) -> dict[str, Path]:
    """The three files of one tile."""
    root = Path(root)
    return {
        "rgb": root / RGB_DIR / f"{tile_id}.tif",
        "extra": root / EXTRA_DIR / f"{tile_id}.tif",
        "label": root / LABEL_DIR / f"{tile_id}.tif",
    }


def read_raster(path: str | os.PathLike, window: Any = None, bands: list[int] | None = None) -> np.ndarray:
    """Read bands (1-based indices, all by default) as (bands, H, W)."""
    import rasterio

    with rasterio.open(path) as src:
        return src.read(bands, window=window)


def channel_indices(extra_channels: list[str] | tuple[str, ...]) -> list[int]:
    """0-based band indices in the EXTRA file for channel names; raises on an unknown name."""
    out = []
    for name in extra_channels:
        if name not in EXTRA_CHANNELS:
            raise ValueError(f"unknown EXTRA channel {name!r}; valid channels: {', '.join(EXTRA_CHANNELS)}")
        out.append(EXTRA_CHANNELS.index(name))
    return out


def utf8_problem(path: str | os.PathLike) -> str | None:
    """Where ``path`` stops being UTF-8 (``"not UTF-8 at line L, byte B (0xNN); save it as UTF-8 ..."``),
    or None when all of it decodes. Streams the file line by line."""
    offset = 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                at = offset + e.start
                return (f"not UTF-8 at line {number}, byte {at} (0x{raw[e.start]:02x}); save it as UTF-8 "
                        f"(e.g. `iconv -f latin1 -t utf-8 {Path(path).name} > fixed.csv`, or UTF-8 in the editor's Save As)")
            offset += len(raw)
    return None


def read_json_or_none(path: str | os.PathLike) -> Any:
    """Parsed JSON of ``path``, or None when the file does not exist."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
