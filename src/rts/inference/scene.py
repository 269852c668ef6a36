"""Scene geometry and windowed reading for ``rts predict``: the outputs share the scene's EPSG:3413 grid.

A *region* is the output grid of one predict job: a whole scene, or the bounding box of a chunk of
a tile list over a mosaic. Tiles of ``tile_size`` px are laid out with ``stride`` px steps; each
pass reads, for every scale ``s``, a ``tile_size / s`` window centred on the tile. Only the largest
window is read; smaller scales are centre crops of it, so a pixel is read once per pass.

Edges: window pixels past the source raster are filled by *reflection about the raster edge*
(``reflect_index``: ``-k -> k``, ``W-1+k -> W-1-k``, repeated for windows wider than the raster),
the same rule ``NeighbourWindows`` applies to missing neighbours in training. Nodata pixels inside
the raster are passed to the model as stored; their output is masked to nodata afterwards.

Reading happens in DataLoader worker processes (``TileWindows``): each worker opens its own
rasterio handles (a handle must not cross a fork), so decoding overlaps the model's forward pass.
A window that cannot be read (corrupt block, unreadable file) is returned as an error record, named
in the run log, and the run continues.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from affine import Affine

from rts.errors import ConfigError, DataError
from rts.io import CRS, PIXEL_SIZE_M

log = logging.getLogger(__name__)

TILE_OK, TILE_NODATA, TILE_ERROR = "ok", "nodata", "error"
RGB_BANDS = (1, 2, 3)  # 1-based bands of R, G, B in a scene: a 3-band RGB file as training reads it


@dataclass(frozen=True)
class Tile:
    """One inference pass: top-left pixel (row, col) in *source* pixel coordinates."""

    tile_id: str
    row: int
    col: int


@dataclass
class Region:
    """The output grid of one predict job and the passes that cover it.

    Attributes:
        name: Output file stem (scene stem, or the tile list's stem).
        rgb: Path of the RGB scene or mosaic (3 bands, uint8).
        extra: Path of the 4-band EXTRA raster on the same grid, or None.
        row_off, col_off: Region origin in source pixels (0 for a scene).
        height, width: Region size in pixels.
        transform: Region transform (EPSG:3413).
        source_shape: (height, width) of the source raster (for reflection at its edges).
        tiles: The passes, in processing order.
        warp: WarpedVRT arguments when the source is reprojected, else None.
        boxes: Tile-list mode: (tile_id, row0, col0, row1, col1) source-pixel boxes; output
            pixels outside every box are nodata. None for a scene.
        rgb_bands: 1-based bands of the source read as R, G, B (``--bands``; 1, 2, 3 for an RGB file).
    """

    name: str
    rgb: str
    extra: str | None
    row_off: int
    col_off: int
    height: int
    width: int
    transform: Affine
    source_shape: tuple[int, int]
    tiles: list[Tile]
    warp: dict | None = None
    boxes: list[tuple[str, int, int, int, int]] | None = None
    labels: str | None = None
    extra_bands: list[int] = field(default_factory=list)
    rgb_bands: tuple[int, int, int] = RGB_BANDS

    def tile_bounds(self, tile: Tile, tile_size: int) -> tuple[float, float, float, float]:
        """(minx, miny, maxx, maxy) in EPSG:3413 of a pass's centre tile."""
        t = self.transform
        c0, r0 = tile.col - self.col_off, tile.row - self.row_off
        x0, y0 = t @ (c0, r0)
        x1, y1 = t @ (c0 + tile_size, r0 + tile_size)
        return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def grid_positions(extent: int, tile_size: int, stride: int) -> list[int]:
    """Tile origins 0, stride, 2*stride, ... until a tile reaches the end of ``extent``."""
    if stride < 1 or stride > tile_size:
        raise ValueError(f"stride must be in [1, tile_size={tile_size}], got {stride}")
    n = 1 if extent <= tile_size else math.ceil((extent - tile_size) / stride) + 1
    return [k * stride for k in range(n)]


def reflect_index(idx: np.ndarray, n: int) -> np.ndarray:
    """Map possibly out-of-range pixel indices into ``[0, n)`` by mirror reflection (no edge repeat)."""
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    j = np.mod(idx, period)
    return np.where(j >= n, period - j, j)


def warp_arguments(src) -> dict | None:
    """WarpedVRT arguments that put ``src`` on EPSG:3413 at 3 m pixels, or None when it already is.

    The target grid is snapped to multiples of 3 m, so reprojected scenes share one pixel grid.
    """
    from rasterio.crs import CRS as RioCRS
    from rasterio.enums import Resampling
    from rasterio.warp import aligned_target, calculate_default_transform

    if src.crs is None:
        raise ValueError(f"{src.name}: no CRS; a scene must be georeferenced (expected {CRS})")
    res_ok = abs(abs(src.transform.a) - PIXEL_SIZE_M) < 0.01 * PIXEL_SIZE_M and abs(abs(src.transform.e) - PIXEL_SIZE_M) < 0.01 * PIXEL_SIZE_M
    if src.crs == RioCRS.from_string(CRS) and res_ok and src.transform.b == 0 and src.transform.d == 0:
        return None
    transform, width, height = calculate_default_transform(src.crs, CRS, src.width, src.height, *src.bounds, resolution=PIXEL_SIZE_M)
    transform, width, height = aligned_target(transform, width, height, PIXEL_SIZE_M)
    return {"crs": CRS, "transform": transform, "width": width, "height": height, "resampling": Resampling.bilinear}


@contextlib.contextmanager
def open_source(path: str, warp: dict | None):
    """Open a raster, reprojected through a WarpedVRT when ``warp`` is given."""
    import rasterio
    from rasterio.vrt import WarpedVRT

    with rasterio.open(path) as src:
        if warp is None:
            yield src
        else:
            # without source nodata, an alpha band marks the area outside the reprojected footprint
            with WarpedVRT(src, **warp, add_alpha=src.nodata is None) as vrt:
                yield vrt


class TileWindows(torch.utils.data.Dataset):
    """Raw (C, S, S) float32 windows (S = the largest scale's window) for a region's passes.

    Items are ``(index, window, valid, status, message)``: ``valid`` is the (T, T) uint8 mask of
    the centre tile (1 = a source pixel with data); ``status`` is ok / nodata (no valid pixel:
    skipped) / error (``message`` says which file and why).
    """

    def __init__(self, region: Region, tiles: list[Tile], *, tile_size: int, window: int):
        self.region = region
        self.tiles = tiles
        self.tile_size = tile_size
        self.window = window
        self._stack: contextlib.ExitStack | None = None
        self._rgb = self._extra = None

    def __len__(self) -> int:
        return len(self.tiles)

    def _open(self) -> None:
        # opened lazily in the process that reads (each DataLoader worker), never shared across a fork
        if self._stack is None:
            self._stack = contextlib.ExitStack()
            self._rgb = self._stack.enter_context(open_source(self.region.rgb, self.region.warp))
            if self.region.extra:
                self._extra = self._stack.enter_context(open_source(self.region.extra, self.region.warp))

    def close(self) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.update(_stack=None, _rgb=None, _extra=None)
        return state

    def _read(self, src, bands: list[int], rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        from rasterio.windows import Window

        r0, r1, c0, c1 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
        block = src.read(bands, window=Window(c0, r0, c1 - c0, r1 - r0), out_dtype=np.float32)
        return block[:, rows - r0][:, :, cols - c0]

    def __getitem__(self, i: int):
        tile = self.tiles[i]
        T, S = self.tile_size, self.window
        H, W = self.region.source_shape
        empty = torch.zeros(0)
        try:
            self._open()
            from rasterio.windows import Window

            # centre-tile validity: only source pixels count; the part past the raster edge is not output
            r0, c0 = max(tile.row, 0), max(tile.col, 0)
            r1, c1 = min(tile.row + T, H), min(tile.col + T, W)
            valid = np.zeros((T, T), np.uint8)
            if r1 > r0 and c1 > c0:
                win = Window(c0, r0, c1 - c0, r1 - r0)
                if self.region.rgb_bands == RGB_BANDS:
                    m = self._rgb.dataset_mask(window=win)
                else:  # only the bands read count: a 4-band scene's NIR nodata is not the RGB's
                    m = self._rgb.read_masks(list(self.region.rgb_bands), window=win).max(axis=0)
                valid[r0 - tile.row : r1 - tile.row, c0 - tile.col : c1 - tile.col] = m > 0
            if not valid.any():
                return i, empty, torch.from_numpy(valid), TILE_NODATA, ""
            m = (S - T) // 2
            rows = reflect_index(np.arange(tile.row - m, tile.row - m + S), H)
            cols = reflect_index(np.arange(tile.col - m, tile.col - m + S), W)
            parts = [self._read(self._rgb, list(self.region.rgb_bands), rows, cols)]
            if self._extra is not None:
                parts.append(self._read(self._extra, [b + 1 for b in self.region.extra_bands], rows, cols))
            window = np.concatenate(parts) if len(parts) > 1 else parts[0]
            return i, torch.from_numpy(np.ascontiguousarray(window)), torch.from_numpy(valid), TILE_OK, ""
        except Exception as e:  # noqa: BLE001 - reported per tile in the run log, never silently skipped
            return i, empty, torch.zeros(0, dtype=torch.uint8), TILE_ERROR, f"{self.region.rgb}: tile {tile.tile_id}: {type(e).__name__}: {e}"


def collate(items: list) -> dict:
    """Stack the readable windows of a batch; keep every item's status for the manifest."""
    ok = [it for it in items if it[3] == TILE_OK]
    return {
        "index": [it[0] for it in items],
        "status": [it[3] for it in items],
        "message": [it[4] for it in items],
        "ok_index": [it[0] for it in ok],
        "windows": torch.stack([it[1] for it in ok]) if ok else None,
        "valid": torch.stack([it[2] for it in ok]) if ok else None,
    }


def fuse_scales(per_scale_logits: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-wise max over scales of (B, 1, T, T) logits: (probability (B, T, T), scale index (B, T, T)).

    The index is the position in ``per_scale_logits`` of the winning scale (first on ties).
    """
    stacked = torch.cat(per_scale_logits, dim=1)
    fused, idx = stacked.max(dim=1)
    return torch.sigmoid(fused), idx


RGB_VRT_HINT = ("make a 3-band uint8 RGB VRT first, e.g. for a PlanetScope 4-band BGRN analytic scene: "
                "gdal_translate -of VRT -b 3 -b 2 -b 1 -ot Byte -scale 0 3000 0 255 SCENE.tif SCENE_rgb.vrt "
                "(use the scaling your training tiles were made with, `rts tiles --rgb-scale`)")


def parse_bands(text: str | None) -> tuple[int, int, int]:
    """``--bands R,G,B``: the 1-based bands of a scene read as red, green, blue (``3,2,1`` for a
    PlanetScope BGRN scene); None gives 1, 2, 3."""
    if text is None:
        return RGB_BANDS
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 3 or not all(p.isdigit() and int(p) >= 1 for p in parts):
        raise ConfigError(f"--bands {text!r}: expected the 1-based bands of red, green and blue, e.g. --bands 3,2,1 "
                          "for a PlanetScope BGRN scene")
    return int(parts[0]), int(parts[1]), int(parts[2])


def check_rgb(src, path: str | Path, bands: tuple[int, int, int] = RGB_BANDS) -> None:
    """Refuse a raster that does not give 3 uint8 bands of R, G, B, the training data's format.

    Anything else used to run without a word: a uint16 or 0-1 float scene was cast to float32 and
    normalised as if it were 0-255, and a 4-band BGRN scene was read as RGB (GDAL may even take
    band 4 as alpha and skip passes as nodata); every output was wrong and the run exited 0.
    ``bands`` (``--bands``) picks R, G, B out of a scene with more bands; they must be uint8 too,
    because data-format.md defines the model's input as raw uint8 values and no reflectance scaling.
    """
    bands = tuple(bands)
    if bands == RGB_BANDS:
        dtype = src.dtypes[0] if src.count else "none"
        if src.count != 3 or any(d != "uint8" for d in src.dtypes):
            picks = (" A 4-band PlanetScope BGRN scene of uint8 takes --bands 3,2,1 (1-based R,G,B);"
                     if src.count > 3 and all(d == "uint8" for d in src.dtypes) else "")
            raise DataError(f"{path}: {src.count} band(s) of {dtype}; rts predict reads 3-band uint8 RGB (R, G, B).{picks} "
                            f"To fix: {RGB_VRT_HINT}")
        return
    bad = [b for b in bands if b > src.count]
    if bad:
        raise ConfigError(f"--bands {','.join(map(str, bands))}: {path} has {src.count} band(s), no band {bad[0]}; "
                          f"give the 1-based bands of R,G,B among 1..{src.count}")
    dtypes = sorted({src.dtypes[b - 1] for b in bands})
    if dtypes != ["uint8"]:
        raise DataError(f"{path}: bands {','.join(map(str, bands))} are {'/'.join(dtypes)}; rts predict reads uint8 R, G, B "
                        f"as training did (raw 0-255 values; data-format.md gives no scaling of reflectance). To fix: {RGB_VRT_HINT}")


def check_rgb_files(paths: list[str | Path], bands: tuple[int, int, int] = RGB_BANDS) -> None:
    """:func:`check_rgb` on every file, before any model is loaded. A file that cannot be opened is
    left to the run, which logs it and goes on with the others (one broken download must not stop a
    pan-Arctic run); a readable file in the wrong format stops it here, before any GPU time."""
    import rasterio

    for path in paths:
        try:
            src = rasterio.open(path)
        except rasterio.errors.RasterioIOError:
            continue
        with src:
            check_rgb(src, path, bands)


def rgb_grid(path: str | Path, bands: tuple[int, int, int] = RGB_BANDS) -> tuple[Any, int, int, Any]:
    """(warp arguments, height, width, transform) of an RGB scene or mosaic on the output grid
    (EPSG:3413, 3 m), after :func:`check_rgb`."""
    import rasterio

    with rasterio.open(path) as src:
        check_rgb(src, path, bands)
        alpha = [i + 1 for i, c in enumerate(src.colorinterp) if c.name == "alpha" and i + 1 not in bands]
        if alpha and src.nodata is None and tuple(bands) != RGB_BANDS:
            log.warning("%s: band %d is marked alpha, so its 0 pixels are read as nodata; if it is not a mask (e.g. NIR of "
                        "BGRN), mark it: gdal_edit.py -colorinterp_%d undefined %s", path, alpha[0], alpha[0], path)
        warp = warp_arguments(src)
        with open_source(str(path), warp) as s:
            return warp, s.height, s.width, s.transform


def region_for_scene(path: str | Path, *, tile_size: int, stride: int, extra: str | Path | None = None,
                     extra_bands: list[int] | None = None, labels: str | Path | None = None,
                     rgb_bands: tuple[int, int, int] = RGB_BANDS) -> Region:
    """The region of a whole scene; raises ValueError naming the file when it cannot be used."""
    import rasterio

    path = Path(path)
    warp, height, width, transform = rgb_grid(path, rgb_bands)
    if extra is not None:
        with rasterio.open(extra) as ex:
            if ex.count != 4:
                raise ValueError(f"{extra}: {ex.count} band(s); EXTRA must have 4 bands (ndvi, nir, re, sr)")
            ex_warp = warp_arguments(ex)
            with open_source(str(extra), ex_warp) as e:
                if (e.height, e.width) != (height, width) or not e.transform.almost_equals(transform):
                    raise ValueError(f"{extra}: EXTRA grid {e.width}x{e.height} {tuple(e.transform)[:6]} differs from the "
                                     f"scene {path} ({width}x{height} {tuple(transform)[:6]}); they must share one grid")
    tiles = [Tile(f"{path.stem}_r{r}_c{c}", r, c) for r in grid_positions(height, tile_size, stride)
             for c in grid_positions(width, tile_size, stride)]
    return Region(name=path.stem, rgb=str(path), extra=str(extra) if extra else None, row_off=0, col_off=0,
                  height=height, width=width, transform=transform, source_shape=(height, width), tiles=tiles,
                  warp=warp, labels=str(labels) if labels else None, extra_bands=list(extra_bands or []),
                  rgb_bands=tuple(rgb_bands))


def read_tile_list(path: str | Path) -> list[tuple[str, float, float, float, float]]:
    """Rows ``(tile_id, minx, miny, maxx, maxy)`` (EPSG:3413) of a tile list CSV."""
    import csv

    path = Path(path)
    need = ("tile_id", "minx", "miny", "maxx", "maxy")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in need if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; a tile list has columns {', '.join(need)}")
        rows = []
        for n, row in enumerate(reader, start=2):
            try:
                minx, miny, maxx, maxy = (float(row[c]) for c in need[1:])
            except ValueError:
                raise ValueError(f"{path}, line {n}: non-numeric bounds {row}") from None
            if not (maxx > minx and maxy > miny):
                raise ValueError(f"{path}, line {n}: empty box {row}")
            rows.append((row["tile_id"], minx, miny, maxx, maxy))
    if not rows:
        raise ValueError(f"{path}: no tiles")
    return rows


def box_passes(r0: int, c0: int, r1: int, c1: int, *, tile_size: int, stride: int) -> set[tuple[int, int]]:
    """Grid cells ``(a, b)`` of the passes ``[a*stride, a*stride + tile_size)`` x ``[b*stride, ...)``
    that overlap the source-pixel box ``[r0, r1) x [c0, c1)``."""
    kr = range(max(0, (r0 - tile_size) // stride + 1), (r1 - 1) // stride + 1)
    kc = range(max(0, (c0 - tile_size) // stride + 1), (c1 - 1) // stride + 1)
    return {(a, b) for a in kr for b in kc}


def tile_boxes(tile_list: str | Path, mosaic: str | Path, *, rgb_bands: tuple[int, int, int] = RGB_BANDS):
    """(boxes, warp, H, W, transform): the listed tiles as ``(tile_id, row0, col0, row1, col1)``
    source-pixel boxes of the mosaic's output grid, in list order."""
    rows = read_tile_list(tile_list)
    warp, H, W, transform = rgb_grid(mosaic, rgb_bands)
    inv = ~transform
    boxes = []
    for tid, minx, miny, maxx, maxy in rows:
        (ca, ra), (cb, rb) = inv @ (minx, maxy), inv @ (maxx, miny)
        r0, r1 = sorted((int(round(ra)), int(round(rb))))
        c0, c1 = sorted((int(round(ca)), int(round(cb))))
        r0, c0, r1, c1 = max(r0, 0), max(c0, 0), min(r1, H), min(c1, W)
        if r1 <= r0 or c1 <= c0:
            raise ValueError(f"{tile_list}: tile {tid} ({minx}, {miny}, {maxx}, {maxy}) lies outside the mosaic {mosaic}")
        boxes.append((tid, r0, c0, r1, c1))
    return boxes, warp, H, W, transform


def region_for_tiles(tile_list: str | Path, mosaic: str | Path, *, tile_size: int, stride: int,
                     extra: str | Path | None = None, extra_bands: list[int] | None = None,
                     rgb_bands: tuple[int, int, int] = RGB_BANDS, rows: list[int] | None = None,
                     name: str | None = None) -> Region:
    """The region covering a tile list over a mosaic.

    Passes lie on the mosaic's global grid (origins at multiples of ``stride`` from the mosaic's
    top-left pixel), and every pass touching a listed box is run. Chunks of one tile list therefore
    run identical passes along their shared border, and ``rts merge`` (max) reproduces a single run.
    ``rows``: only these tiles of the list (0-based, a shard's share); ``name``: the output stem
    (default: the list's stem). Pass ids keep the list's stem either way.
    """
    import rasterio

    boxes, warp, H, W, transform = tile_boxes(tile_list, mosaic, rgb_bands=rgb_bands)
    if rows is not None:
        boxes = [boxes[i] for i in rows]
    cells = set()
    for _, r0, c0, r1, c1 in boxes:
        cells |= box_passes(r0, c0, r1, c1, tile_size=tile_size, stride=stride)
    stem = Path(tile_list).stem
    tiles = [Tile(f"{stem}_r{a * stride}_c{b * stride}", a * stride, b * stride) for a, b in sorted(cells)]
    top, left = min(b[1] for b in boxes), min(b[2] for b in boxes)
    bottom, right = max(b[3] for b in boxes), max(b[4] for b in boxes)
    if extra is not None:
        with rasterio.open(extra) as ex, open_source(str(extra), warp_arguments(ex)) as e:
            if (e.height, e.width) != (H, W) or not e.transform.almost_equals(transform):
                raise ValueError(f"{extra}: EXTRA grid differs from the mosaic {mosaic}; they must share one grid")
    return Region(name=name or stem, rgb=str(mosaic), extra=str(extra) if extra else None, row_off=top, col_off=left,
                  height=bottom - top, width=right - left, transform=transform @ Affine.translation(left, top),
                  source_shape=(H, W), tiles=tiles, warp=warp, boxes=boxes, extra_bands=list(extra_bands or []),
                  rgb_bands=tuple(rgb_bands))
