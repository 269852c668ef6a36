"""The candidates of a prediction folder and their image chips.

A candidate is one polygon of ``rts predict``'s GeoPackage (``<name>.gpkg``), scored by its mean
calibrated probability (``mean_prob``, the object score of the metrics). The imagery comes back from
the files the run log (``run_log.json``) names: the RGB scene or mosaic and the EXTRA raster, read
through a warped view onto the probability raster's grid (EPSG:3413, 3 m), so a reprojected scene
gives the chip the model saw.

A chip shows side by side: RGB, EXTRA shaded relief (or NDVI where the relief band is flat or
missing; no panel without an EXTRA raster), and the probability, each with the polygon outline.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rts.errors import DataError
from rts.io import CRS

RUN_LOG = "run_log.json"  # as rts.inference.predict writes it
CHIP_MIN_PX = 64
CHIP_MAX_PX = 256
PANEL_PX = 160
OUTLINE = (255, 230, 0)


@dataclass(frozen=True)
class Source:
    """The files of one predicted region."""

    name: str
    rgb: str
    extra: str | None
    prob: str
    polygons: str
    rgb_bands: tuple[int, int, int]


def read_run_log(pred_dir: Path) -> dict:
    path = Path(pred_dir) / RUN_LOG
    if not path.is_file():
        raise DataError(f"{path}: not found; PRED_DIR must be the output folder of `rts predict` (it writes {RUN_LOG})")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise DataError(f"{path}: not valid JSON ({e}); re-run rts predict into a new folder") from None


def sources(pred_dir: Path) -> list[Source]:
    """The regions of a prediction folder whose outputs were written."""
    log = read_run_log(pred_dir)
    bands = tuple(log.get("rgb_bands") or (1, 2, 3))
    out = []
    for r in log.get("regions", []):
        outputs = r.get("outputs") or {}
        if not outputs.get("polygons"):
            continue  # an incomplete region has no outputs yet
        def resolve(p: str | None) -> str | None:
            if p is None:
                return None
            q = Path(p)
            return str(q if q.is_absolute() or q.exists() else Path(pred_dir) / q.name)
        src = Source(r["name"], str(Path(r["source"]).resolve()), str(Path(r["extra"]).resolve()) if r.get("extra") else None,
                     str(Path(resolve(outputs["prob"])).resolve()), str(Path(resolve(outputs["polygons"])).resolve()), bands)
        for kind, p in (("probability raster", src.prob), ("polygons", src.polygons), ("RGB source", src.rgb)):
            if not Path(p).is_file():
                raise DataError(f"{p}: the {kind} of region {r['name']} in {Path(pred_dir) / RUN_LOG} is missing; "
                                "restore it or re-run rts predict")
        out.append(src)
    if not out:
        raise DataError(f"{Path(pred_dir) / RUN_LOG}: no region with written outputs; run rts predict to completion first")
    return out


def read_candidates(src: Source) -> list[dict]:
    """The polygons of one region as candidate dicts (id, region, score, geometry as GeoJSON, ...)."""
    import pyogrio.raw
    import shapely

    meta, _, geometry, data = pyogrio.raw.read(src.polygons)
    cols = dict(zip(meta["fields"], data))
    out = []
    for i, wkb in enumerate(geometry):
        g = shapely.from_wkb(wkb)
        c = g.centroid
        out.append({
            "id": f"{src.name}-{int(cols['rts_id'][i]):05d}", "region": src.name, "source": src.name,
            "rts_id": int(cols["rts_id"][i]), "score": float(cols["mean_prob"][i]), "max_prob": float(cols["max_prob"][i]),
            "area_m2": float(cols["area_m2"][i]), "centroid_lat": float(cols["centroid_lat"][i]),
            "centroid_lon": float(cols["centroid_lon"][i]), "x": float(c.x), "y": float(c.y),
            "geometry": shapely.geometry.mapping(g),
        })
    return out


class Imagery:
    """Windows of RGB, EXTRA and probability of one region on the probability raster's grid."""

    def __init__(self, src: Source):
        import rasterio
        from rasterio.vrt import WarpedVRT

        self.src = src
        self._stack = ExitStack()
        self.prob = self._stack.enter_context(rasterio.open(src.prob))
        grid = dict(crs=CRS, transform=self.prob.transform, width=self.prob.width, height=self.prob.height)
        rgb = self._stack.enter_context(rasterio.open(src.rgb))
        self.rgb = self._stack.enter_context(WarpedVRT(rgb, resampling=rasterio.enums.Resampling.bilinear, **grid))
        self.extra = None
        if src.extra and Path(src.extra).is_file():
            ex = self._stack.enter_context(rasterio.open(src.extra))
            self.extra = self._stack.enter_context(WarpedVRT(ex, resampling=rasterio.enums.Resampling.bilinear, **grid))

    def close(self) -> None:
        self._stack.close()

    @property
    def transform(self):
        return self.prob.transform

    def window_at(self, x: float, y: float, size: int) -> tuple[int, int]:
        """(row0, col0) of the ``size`` px window centred on map point (x, y)."""
        col, row = ~self.transform @ (x, y)
        return int(math.floor(row)) - size // 2, int(math.floor(col)) - size // 2

    def read(self, row0: int, col0: int, size: int) -> dict[str, np.ndarray | None]:
        """RGB (3, s, s) uint8, EXTRA (4, s, s) float32 or None, probability (s, s); outside the
        raster (and at nodata) RGB and EXTRA are 0 and the probability is 0."""
        rgb = _read_padded(self.rgb, list(self.src.rgb_bands), row0, col0, size, 0).astype(np.uint8)
        prob = _read_padded(self.prob, [1], row0, col0, size, -1)[0].astype(np.float32)
        extra = None
        if self.extra is not None:
            extra = _read_padded(self.extra, list(range(1, self.extra.count + 1)), row0, col0, size, 0).astype(np.float32)
        return {"rgb": rgb, "extra": extra, "prob": np.where(prob < 0, 0, prob)}


def _read_padded(ds, bands: list[int], row0: int, col0: int, size: int, fill: float) -> np.ndarray:
    """A ``size`` px window of ``ds`` that may reach past its edges (warped views refuse boundless reads)."""
    from rasterio.windows import Window

    out = np.full((len(bands), size, size), fill, dtype=np.float64)
    r0, c0 = max(row0, 0), max(col0, 0)
    r1, c1 = min(row0 + size, ds.height), min(col0 + size, ds.width)
    if r1 > r0 and c1 > c0:
        out[:, r0 - row0 : r1 - row0, c0 - col0 : c1 - col0] = ds.read(bands, window=Window(c0, r0, c1 - c0, r1 - r0))
    return out


@contextmanager
def open_imagery(src: Source) -> Iterator[Imagery]:
    im = Imagery(src)
    try:
        yield im
    finally:
        im.close()


def chip_size(geometry: dict) -> int:
    """Pixels of a square chip that shows the polygon with a margin (between the min and max size)."""
    import shapely.geometry

    minx, miny, maxx, maxy = shapely.geometry.shape(geometry).bounds
    extent = max(maxx - minx, maxy - miny) / 3.0  # 3 m pixels
    return int(min(CHIP_MAX_PX, max(CHIP_MIN_PX, 2 * math.ceil(extent * 0.8))))


def polygon_mask(geometries: list[dict], transform, size: int) -> np.ndarray:
    """(size, size) bool: pixels inside any of ``geometries`` on a window's grid."""
    from rasterio.features import rasterize

    if not geometries:
        return np.zeros((size, size), bool)
    return rasterize([(g, 1) for g in geometries], out_shape=(size, size), transform=transform, fill=0, dtype="uint8").astype(bool)


def outline(mask: np.ndarray) -> np.ndarray:
    """The boundary pixels of ``mask`` (inside pixels with a 4-neighbour outside)."""
    from scipy import ndimage as ndi

    return mask & ~ndi.binary_erosion(mask, structure=[[0, 1, 0], [1, 1, 1], [0, 1, 0]], border_value=0)


def stretch(band: np.ndarray) -> np.ndarray:
    """A float band to uint8 by its 2-98% range (a flat band is mid-grey)."""
    finite = band[np.isfinite(band)]
    if finite.size == 0:
        return np.full(band.shape, 128, np.uint8)
    lo, hi = np.percentile(finite, [2, 98])
    if hi - lo < 1e-9:
        return np.full(band.shape, 128, np.uint8)
    return (np.clip((np.nan_to_num(band, nan=lo) - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def extra_panel(extra: np.ndarray | None) -> tuple[np.ndarray | None, str | None]:
    """(H, W, 3) uint8 of the shaded relief, or of NDVI where the relief is flat; the band's name."""
    if extra is None:
        return None, None
    sr, ndvi = extra[3], extra[0]
    if np.isfinite(sr).any() and np.nanstd(sr) > 1e-6:
        g = stretch(sr)
        return np.stack([g, g, g], -1), "shaded relief"
    if np.isfinite(ndvi).any() and np.nanstd(ndvi) > 1e-6:
        import matplotlib

        v = np.clip((np.nan_to_num(ndvi) + 0.2) / 1.2, 0, 1)  # NDVI -0.2 .. 1
        return (matplotlib.colormaps["RdYlGn"](v)[..., :3] * 255).astype(np.uint8), "NDVI"
    return None, None


def prob_panel(prob: np.ndarray) -> np.ndarray:
    import matplotlib

    return (matplotlib.colormaps["magma"](np.clip(prob, 0, 1))[..., :3] * 255).astype(np.uint8)


def draw(panel: np.ndarray, edge: np.ndarray, colour=OUTLINE) -> np.ndarray:
    out = panel.copy()
    out[edge] = colour
    return out


def chip_panels(window: dict, edge: np.ndarray) -> tuple[list[np.ndarray], list[str]]:
    """The chip's panels (RGB, EXTRA when available, probability), each with the outline drawn."""
    panels = [draw(np.moveaxis(window["rgb"], 0, -1), edge)]
    names = ["RGB"]
    ex, name = extra_panel(window["extra"])
    if ex is not None:
        panels.append(draw(ex, edge))
        names.append(name)
    panels.append(draw(prob_panel(window["prob"]), edge, (0, 255, 255)))
    names.append("probability")
    return panels, names


def save_png(path: Path, panels: list[np.ndarray], panel_px: int = PANEL_PX) -> None:
    """Panels side by side (nearest-neighbour resized to ``panel_px``), 4 px apart, as one PNG."""
    from PIL import Image

    from rts.io import atomic_path

    gap = 4
    canvas = Image.new("RGB", (len(panels) * panel_px + (len(panels) - 1) * gap, panel_px), (32, 32, 32))
    for i, p in enumerate(panels):
        canvas.paste(Image.fromarray(p).resize((panel_px, panel_px), Image.NEAREST), (i * (panel_px + gap), 0))
    with atomic_path(path, suffix=".png") as tmp:
        canvas.save(tmp, format="PNG")
