"""Two-stage fallback: confine detections to RTS-susceptible terrain.

A *susceptibility layer* is a one-band GeoTIFF (or VRT) of RTS likelihood in [0, 1], at any
resolution and in any CRS. It is resampled (bilinear) onto each tile's or block's 3 m grid.

Semantics (the same in evaluation, calibration and ``rts predict``; ``docs/susceptibility.md``):

* **Pixel mask.** ``keep = not (likelihood < min_likelihood)``; the filtered probability is
  ``prob * keep``. A pixel whose likelihood is unknown (outside the layer's extent, or the layer's
  nodata) is *kept*: the filter only removes what the layer says is unlikely. Being a pixel mask,
  the filter is exact at every threshold, so the metric library's threshold sweeps and the
  calibrated thresholds describe exactly what the deployed system outputs.
* **Objects removed.** Statistics are counted at the operating threshold on the *unfiltered*
  probability: its objects are the 8-connected components of ``prob >= threshold`` with at least
  ``min_object_px`` pixels. An object is *removed* when all its pixels are masked, *clipped* when
  some but not all are. ``area_removed_m2`` = masked pixels of those objects x pixel area (9 m^2).
* **Tiles skipped** (predict only): a pass whose whole window is masked is not run; its output
  would be all zeros anyway, so skipping changes no kept pixel. Its pixels stay nodata in the
  outputs unless another pass covers them.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from rts.io import (
    CRS,
    LABEL_DIR,
    PIXEL_SIZE_M,
    tile_paths,
    write_geotiff,
    write_text_atomic,
)
from rts.errors import ConfigError, DataError
from rts.metrics.keys import object_key, ratio_key

EIGHT = np.ones((3, 3), bool)


class SusceptibilityLayer:
    """An RTS likelihood raster, opened once, sampled onto tile grids.

    Args:
        path: One-band raster of likelihood in [0, 1] (GeoTIFF, VRT...), with a CRS.
        min_likelihood: Pixels whose likelihood is below this are masked.

    Raises:
        DataError: ``path`` does not exist, or the raster has no CRS or more than one band.
        ConfigError: ``min_likelihood`` is not in [0, 1].
    """

    def __init__(self, path: str | os.PathLike, min_likelihood: float):
        import rasterio

        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f"{self.path}: susceptibility layer not found; fix susceptibility.path (or --susceptibility), or set it to null")
        if not 0.0 <= float(min_likelihood) <= 1.0:
            raise ConfigError(f"susceptibility.min_likelihood: must be in [0, 1], got {min_likelihood}")
        self.min_likelihood = float(min_likelihood)
        self._src = rasterio.open(self.path)
        if self._src.crs is None:
            self._src.close()
            raise DataError(f"{self.path}: susceptibility layer has no CRS; expected a georeferenced raster (EPSG:3413 or any CRS)")
        if self._src.count != 1:
            self._src.close()
            raise DataError(f"{self.path}: susceptibility layer has {self._src.count} bands; expected 1 band of likelihood in [0, 1]")

    def __enter__(self) -> "SusceptibilityLayer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._src.close()

    def __getstate__(self) -> dict:
        # DataLoader workers and pickling: reopen the file on the other side
        return {"path": str(self.path), "min_likelihood": self.min_likelihood}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["min_likelihood"])

    def describe(self) -> dict[str, Any]:
        """What run logs and metrics record about the filter."""
        return {"path": str(self.path), "min_likelihood": self.min_likelihood}

    def likelihood(self, transform: Any, shape: tuple[int, int], crs: Any = CRS) -> np.ndarray:
        """Likelihood resampled (bilinear) onto a grid; NaN where unknown (outside the layer, nodata).

        Args:
            transform: Affine transform of the target grid.
            shape: (height, width) of the target grid.
            crs: CRS of the target grid.

        Raises:
            DataError: the layer holds values outside [0, 1] in this window.
        """
        from rasterio.warp import Resampling, reproject

        out = np.full(tuple(shape), np.nan, np.float32)
        src_nodata = self._src.nodata
        if src_nodata is None and np.dtype(self._src.dtypes[0]).kind == "f":
            src_nodata = np.nan  # NaN in a float layer means "unknown", declared or not
        reproject(
            source=self._src_band(), destination=out, src_transform=self._src.transform, src_crs=self._src.crs,
            src_nodata=src_nodata, dst_transform=transform, dst_crs=crs, dst_nodata=np.nan,
            resampling=Resampling.bilinear,
        )
        finite = out[np.isfinite(out)]
        if finite.size and (finite.min() < -1e-6 or finite.max() > 1 + 1e-6):
            raise DataError(f"{self.path}: likelihood values in [{finite.min():g}, {finite.max():g}]; expected [0, 1]")
        return out

    def _src_band(self):
        import rasterio

        return rasterio.band(self._src, 1)

    def mask(self, transform: Any, shape: tuple[int, int], crs: Any = CRS) -> np.ndarray:
        """(H, W) bool: True where detections are kept (likelihood >= min, or unknown)."""
        return keep_mask(self.likelihood(transform, shape, crs), self.min_likelihood)

    def tile_mask(self, root: str | os.PathLike, tile_id: str) -> np.ndarray:
        """The keep mask on a dataset tile's grid (read from its RGB GeoTIFF)."""
        transform, shape, crs = tile_grid(root, tile_id)
        return self.mask(transform, shape, crs)


def tile_grid(root: str | os.PathLike, tile_id: str) -> tuple[Any, tuple[int, int], Any]:
    """(transform, (height, width), crs) of a dataset tile, from its RGB file."""
    import rasterio

    with rasterio.open(tile_paths(root, tile_id)["rgb"]) as src:
        return src.transform, (src.height, src.width), src.crs


def open_layer(path: str | os.PathLike | None, min_likelihood: float) -> SusceptibilityLayer | None:
    """The layer of a ``susceptibility`` params section, or None when ``path`` is null (filter off)."""
    return None if path in (None, "") else SusceptibilityLayer(path, min_likelihood)


class SusceptibilityFilter:
    """The two-stage filter as the one object evaluation, calibration and ``rts predict`` apply.

    Built once: from the ``susceptibility`` params (:meth:`from_params`) in the stages, from
    ``--susceptibility`` / ``--min-likelihood`` in ``rts predict`` (:meth:`open`). Off (no layer) it
    keeps every pixel, skips no pass and removes nothing, so the callers apply it unconditionally;
    :attr:`enabled` says only whether there is a filter to report on.
    """

    def __init__(self, layer: SusceptibilityLayer | None = None) -> None:
        self.layer = layer

    @classmethod
    def open(cls, path: str | os.PathLike | None, min_likelihood: float) -> "SusceptibilityFilter":
        return cls(open_layer(path, min_likelihood))

    @classmethod
    def from_params(cls, cfg: Any) -> "SusceptibilityFilter":
        """From a ``susceptibility`` params section (``path`` null: off)."""
        return cls.open(cfg.path, cfg.min_likelihood)

    @classmethod
    def of(cls, value: "SusceptibilityFilter | SusceptibilityLayer | None") -> "SusceptibilityFilter":
        """``value`` as a filter: a filter as it is, a bare layer wrapped, None off."""
        return value if isinstance(value, SusceptibilityFilter) else cls(value)

    @property
    def enabled(self) -> bool:
        return self.layer is not None

    def describe(self) -> dict[str, Any] | None:
        return None if self.layer is None else self.layer.describe()

    def own_copy(self) -> "SusceptibilityFilter":
        """The same filter on its own file handle (for a thread that runs beside this one)."""
        return SusceptibilityFilter(None if self.layer is None else SusceptibilityLayer(self.layer.path, self.layer.min_likelihood))

    def close(self) -> None:
        if self.layer is not None:
            self.layer.close()

    def filter_tile(self, root: str | os.PathLike, tile_id: str, prob: np.ndarray, *, threshold: float,
                    min_object_px: int) -> tuple[np.ndarray, FilterStats]:
        """``prob * keep`` on a dataset tile, and what the filter removed at ``threshold``."""
        if self.layer is None:
            return prob, FilterStats()
        likelihood = self.layer.likelihood(*tile_grid(root, tile_id))
        return filter_probabilities(prob, likelihood, self.layer.min_likelihood, threshold, min_object_px=min_object_px)

    def keep_tile(self, root: str | os.PathLike, tile_id: str, prob: np.ndarray) -> np.ndarray:
        """``prob * keep`` on a dataset tile (the probabilities calibration chooses thresholds on)."""
        return prob if self.layer is None else np.where(self.layer.tile_mask(root, tile_id), prob, 0.0)

    def block_keep(self, region: Any, r: int, c: int, h: int, w: int) -> np.ndarray | None:
        """Keep mask of a block of a predict region's output grid (None: off, all kept)."""
        return None if self.layer is None else block_keep(self.layer, region, r, c, h, w)

    def filter_block(self, region: Any, r: int, c: int, h: int, w: int, prob: np.ndarray) -> np.ndarray:
        """``prob * keep`` of a block of a predict region's output grid."""
        keep = self.block_keep(region, r, c, h, w)
        return prob if keep is None else np.where(keep, prob, np.float32(0))

    def masked_passes(self, region: Any, tiles: list, tile_size: int) -> list:
        """The passes whose whole output window is masked: running them would change no kept pixel."""
        return [] if self.layer is None else [t for t in tiles if pass_masked(self.layer, region, t, tile_size)]


def keep_mask(likelihood: np.ndarray, min_likelihood: float) -> np.ndarray:
    """True where ``likelihood >= min_likelihood`` or unknown (NaN)."""
    # `not (l < min)` keeps NaN: unknown terrain is never filtered out
    return ~(np.asarray(likelihood) < np.float32(min_likelihood))


@dataclass
class FilterStats:
    """Counts of what the filter removed (add them up over tiles with ``+=``).

    Attributes:
        objects_before: objects (components >= min_object_px) at the threshold without the filter.
        objects_removed: of those, objects whose pixels are all masked.
        objects_clipped: objects with some, not all, pixels masked.
        pixels_removed: masked pixels of the objects.
        tiles: tiles (or passes) counted.
        tiles_skipped: passes not run because their window was fully masked (predict).
    """

    objects_before: int = 0
    objects_removed: int = 0
    objects_clipped: int = 0
    pixels_removed: int = 0
    tiles: int = 0
    tiles_skipped: int = 0
    pixel_size_m: float = PIXEL_SIZE_M

    def __iadd__(self, other: "FilterStats") -> "FilterStats":
        for k in ("objects_before", "objects_removed", "objects_clipped", "pixels_removed", "tiles", "tiles_skipped"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        return self

    @property
    def area_removed_m2(self) -> float:
        return float(self.pixels_removed * self.pixel_size_m**2)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("pixel_size_m")
        d["area_removed_m2"] = self.area_removed_m2
        return d


def object_stats(prob: np.ndarray, keep: np.ndarray, threshold: float, *, min_object_px: int = 1,
                 pixel_size_m: float = PIXEL_SIZE_M) -> FilterStats:
    """What the mask ``keep`` removes from the objects of ``prob >= threshold`` (module docstring)."""
    prob = np.asarray(prob)
    if prob.shape != keep.shape:
        raise ValueError(f"probability {prob.shape} and susceptibility mask {keep.shape} must have the same shape")
    lab, n = ndi.label(prob >= threshold, structure=EIGHT)
    stats = FilterStats(tiles=1, pixel_size_m=pixel_size_m)
    if n == 0:
        return stats
    flat = lab.ravel()
    size = np.bincount(flat, minlength=n + 1)[1:]
    kept = np.bincount(flat, weights=keep.ravel(), minlength=n + 1)[1:].astype(np.int64)
    big = size >= min_object_px
    stats.objects_before = int(big.sum())
    stats.objects_removed = int((big & (kept == 0)).sum())
    stats.objects_clipped = int((big & (kept > 0) & (kept < size)).sum())
    stats.pixels_removed = int((size - kept)[big].sum())
    return stats


def filter_probabilities(prob: np.ndarray, likelihood: np.ndarray, min_likelihood: float, threshold: float, *,
                         min_object_px: int = 1, pixel_size_m: float = PIXEL_SIZE_M) -> tuple[np.ndarray, FilterStats]:
    """Zero the probability where the likelihood is below ``min_likelihood``; count what went.

    Args:
        prob: (H, W) probabilities.
        likelihood: (H, W) likelihood on the same grid; NaN = unknown (kept).
        min_likelihood: masking threshold on the likelihood.
        threshold: operating probability threshold of the object statistics.
        min_object_px: smaller components are not counted as objects (as in the metrics).
        pixel_size_m: for ``area_removed_m2``.

    Returns:
        (``prob * keep`` in the dtype of ``prob``, the statistics at ``threshold``).
    """
    prob = np.asarray(prob)
    keep = keep_mask(likelihood, min_likelihood)
    stats = object_stats(prob, keep, threshold, min_object_px=min_object_px, pixel_size_m=pixel_size_m)
    return np.where(keep, prob, 0).astype(prob.dtype, copy=False), stats


def comparison(without: dict, with_filter: dict, stats_by_class: dict[str, FilterStats], ratios: list[int], primary_iou: float,
               layer: "SusceptibilityLayer | SusceptibilityFilter", threshold: float) -> dict[str, Any]:
    """The ``susceptibility`` entry of metrics/evaluate.json: removals and P/R with and without.

    ``without``/``with_filter`` are the flat per-ratio summaries (``evaluation.flat_summary``).
    """
    total = FilterStats()
    for s in stats_by_class.values():
        total += s
    keys = {"object_precision": object_key(primary_iou, "precision"), "object_recall": object_key(primary_iou, "recall"),
            "pixel_precision": "precision", "pixel_recall": "recall", "pr_auc": "pr_auc"}
    per_ratio = {}
    for r in ratios:
        a, b = without[ratio_key(r)], with_filter[ratio_key(r)]
        per_ratio[ratio_key(r)] = {f"{name}_{which}": src.get(key) for name, key in keys.items()
                               for which, src in (("without", a), ("with", b))}
    return {
        **layer.describe(), "split": "val_realistic", "threshold": threshold, "primary_iou": primary_iou,
        "removed": total.as_dict(), "removed_positive_tiles": stats_by_class["positive"].as_dict(),
        "removed_negative_tiles": stats_by_class["negative"].as_dict(), **per_ratio,
    }


# ------------------------------------------------------------------------------ rts predict helpers

TILE_SUSCEPTIBILITY = "susceptibility"  # manifest status of a pass skipped by the filter


def block_keep(layer: SusceptibilityLayer, region: Any, r: int, c: int, h: int, w: int) -> np.ndarray:
    """Keep mask of the block (``r``, ``c``, ``h``, ``w``) of a predict region's output grid."""
    from affine import Affine

    return layer.mask(region.transform @ Affine.translation(c, r), (h, w))


def pass_masked(layer: SusceptibilityLayer, region: Any, tile: Any, tile_size: int) -> bool:
    """True when every output pixel of the pass at ``tile`` is masked (the pass can be skipped)."""
    r0, c0 = max(tile.row - region.row_off, 0), max(tile.col - region.col_off, 0)
    r1 = min(tile.row - region.row_off + tile_size, region.height)
    c1 = min(tile.col - region.col_off + tile_size, region.width)
    if r1 <= r0 or c1 <= c0:
        return False  # writes nothing to the outputs either way: leave it to the normal path
    return not block_keep(layer, region, r0, c0, r1 - r0, c1 - c0).any()


def polygon_stats(records: list[dict], pixel_size_m: float = PIXEL_SIZE_M) -> FilterStats:
    """Statistics of dissolved polygon records made with the *keep mask* as their probability.

    ``rts predict`` polygonizes the unfiltered mask with ``prob = keep`` so that, after the
    dissolve, ``sum_prob`` is each polygon's count of kept pixels (exact across blocks).
    """
    stats = FilterStats(pixel_size_m=pixel_size_m)
    for rec in records:
        n, kept = round(rec["n_px"]), round(rec["sum_prob"])
        stats.objects_before += 1
        stats.objects_removed += kept == 0
        stats.objects_clipped += 0 < kept < n
        stats.pixels_removed += n - kept
    return stats


# ------------------------------------------------------------------------------ synthetic layer (rts synth --susceptibility)

LAYER_DIR = "susceptibility"
LAYER_VRT = "susceptibility.vrt"


def write_synthetic_layer(dataset_dir: str | os.PathLike, *, seed: int = 0, pixel_m: float = 48.0,
                          miss_fraction: float = 0.12) -> Path:
    """Write a susceptibility layer matching a synthetic dataset: one coarse GeoTIFF per region.

    ``<dataset>/susceptibility/<region>.tif`` (float32, ``pixel_m`` pixels, EPSG:3413, covering the
    region's tiles plus one tile of margin) and ``<dataset>/susceptibility.vrt`` mosaicking them
    (NaN outside every region = unknown). Likelihood = a smooth terrain prior (seeded random field,
    whose peaks are the false alarms) + blurred RTS presence from the labels; ``miss_fraction`` of
    the positive tiles (chosen by the seed) are *misses*: capped at 0.3 over their footprint.

    Returns:
        The VRT path.
    """
    import csv

    import rasterio
    from affine import Affine
    from rasterio.warp import Resampling, reproject

    root = Path(dataset_dir)
    with open(root / "metadata.csv", newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: r["tile_id"])
    rng = np.random.default_rng(seed + 7919)  # own stream: never disturbs the dataset's
    positives = [r["tile_id"] for r in rows if r["TrainClass"] == "Positive"]
    missed = set(rng.choice(positives, size=int(round(miss_fraction * len(positives))), replace=False).tolist()) if positives else set()
    by_region: dict[str, list[str]] = {}
    for r in rows:
        by_region.setdefault(r["RegionName"], []).append(r["tile_id"])
    written = []
    for region in sorted(by_region):
        grids = {}
        for tid in by_region[region]:
            with rasterio.open(root / LABEL_DIR / f"{tid}.tif") as src:
                grids[tid] = (src.transform, src.height, src.width, src.bounds)
        span = max(g[3].right - g[3].left for g in grids.values())
        left = min(g[3].left for g in grids.values()) - span
        top = max(g[3].top for g in grids.values()) + span
        width = int(np.ceil((max(g[3].right for g in grids.values()) + span - left) / pixel_m))
        height = int(np.ceil((top - min(g[3].bottom for g in grids.values()) + span) / pixel_m))
        transform = Affine(pixel_m, 0, left, 0, -pixel_m, top)
        presence = np.zeros((height, width), np.float32)
        cap = np.ones((height, width), np.float32)
        for tid, (t, h, w, _) in grids.items():
            with rasterio.open(root / LABEL_DIR / f"{tid}.tif") as src:
                rts = (src.read(1) == 1).astype(np.float32)
            coarse = np.full((height, width), np.nan, np.float32)
            reproject(rts, coarse, src_transform=t, src_crs=CRS, dst_transform=transform, dst_crs=CRS,
                      src_nodata=np.nan, dst_nodata=np.nan, resampling=Resampling.average)
            inside = np.isfinite(coarse)
            if tid in missed:
                cap[inside] = 0.3
            else:
                presence = np.where(inside, np.maximum(presence, np.nan_to_num(coarse)), presence)
        prior = ndi.gaussian_filter(rng.standard_normal((height, width)), sigma=4, mode="nearest")
        prior = (prior - prior.mean()) / (prior.std() + 1e-9)
        terrain = 1 / (1 + np.exp(-(1.5 * prior - 1.5)))  # mostly low, a few high ridges: the false alarms
        near_rts = np.clip(ndi.gaussian_filter(presence, sigma=1.5) * 6, 0, 1)
        lik = np.minimum(np.clip(0.1 + 0.7 * terrain + 0.85 * near_rts, 0, 1), cap).astype(np.float32)
        path = root / LAYER_DIR / f"{region}.tif"
        write_geotiff(path, lik, transform, nodata=float("nan"))
        written.append((path, transform, height, width))
    write_text_atomic(root / LAYER_VRT, _mosaic_vrt(root, written, pixel_m))
    return root / LAYER_VRT


def _mosaic_vrt(root: Path, parts: list[tuple[Path, Any, int, int]], pixel_m: float) -> str:
    """GDAL VRT XML mosaicking same-resolution, grid-aligned-enough parts (relative paths)."""
    from rasterio.crs import CRS as RioCRS

    left = min(t.c for _, t, _, _ in parts)
    top = max(t.f for _, t, _, _ in parts)
    right = max(t.c + w * pixel_m for _, t, _, w in parts)
    bottom = min(t.f - h * pixel_m for _, t, h, _ in parts)
    width, height = int(np.ceil((right - left) / pixel_m)), int(np.ceil((top - bottom) / pixel_m))
    sources = []
    for path, t, h, w in parts:
        xoff, yoff = (t.c - left) / pixel_m, (top - t.f) / pixel_m
        sources.append(
            f'    <ComplexSource>\n      <SourceFilename relativeToVRT="1">{path.relative_to(root).as_posix()}</SourceFilename>\n'
            f'      <SourceBand>1</SourceBand>\n      <SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}" />\n'
            f'      <DstRect xOff="{xoff:.6f}" yOff="{yoff:.6f}" xSize="{w}" ySize="{h}" />\n      <NODATA>nan</NODATA>\n'
            f'    </ComplexSource>\n')
    wkt = RioCRS.from_string(CRS).to_wkt().replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return (f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">\n  <SRS>{wkt}</SRS>\n'
            f'  <GeoTransform>{left!r}, {pixel_m!r}, 0.0, {top!r}, 0.0, {-pixel_m!r}</GeoTransform>\n'
            f'  <VRTRasterBand dataType="Float32" band="1">\n    <NoDataValue>nan</NoDataValue>\n'
            + "".join(sources) + "  </VRTRasterBand>\n</VRTDataset>\n")
