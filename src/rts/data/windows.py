"""Windows of any size centred on a dataset tile, and the one resize every scale goes through.

Scale ``s`` reads a ``tile_size / s`` px window centred on the tile (512 / 1024 / 2048 px for
1.0 / 0.5 / 0.25) and resizes it to the model input. ``NeighbourWindows`` assembles such windows
from the neighbouring tiles of a dataset (tiles on a shared grid, found by their georeferenced
origin). Where neighbours are missing, the largest rectangle of present tiles around the centre is
kept and the rest of the window is reflect-padded. Multi-resolution training, evaluation and
inference read their windows and resize them through this module, so what the model sees in
training at a scale is what it sees when it is served at that scale.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import rasterio
import torch
import torch.nn.functional as F

from rts.data.normalization import raw_stack
from rts.data.store import TileStore
from rts.io import tile_paths

VALID_SCALES = (1.0, 0.5, 0.25)




def window_size(tile_size: int, scale: float) -> int:
    if scale not in VALID_SCALES:
        raise ValueError(f"scale {scale} not supported; valid scales: {VALID_SCALES}")
    return int(round(tile_size / scale))


def resize(x: torch.Tensor, size: int, *, mode: str = "bilinear") -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    if mode == "nearest":
        return F.interpolate(x, size=(size, size), mode="nearest")
    # antialias when shrinking, so a 2048 px window is averaged, not aliased, down to 512 px
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size)


def crop_centre(x: torch.Tensor, size: int) -> torch.Tensor:
    off = (x.shape[-1] - size) // 2
    return x[..., off : off + size, off : off + size]


class NeighbourWindows:
    """Raw (C, S, S) windows centred on dataset tiles, assembled from their grid neighbours."""

    def __init__(self, store: TileStore, tile_ids: Sequence[str], extra_index: Sequence[int]):
        self.store = store
        self.extra_index = list(extra_index)
        self.tile_ids = list(tile_ids)
        self._grid: dict[tuple[int, int], str] | None = None
        self._cell_of: dict[str, tuple[int, int]] = {}
        self._tile_size: int | None = None

    @property
    def tile_size(self) -> int | None:
        """Width in px of the dataset's tiles (from the index)."""
        self.index()
        return self._tile_size

    def index(self) -> tuple[dict[tuple[int, int], str], dict[str, tuple[int, int]]]:
        """(cell -> tile id, tile id -> cell) from every tile's transform, read on the first window
        that needs neighbours: opening each GeoTIFF costs seconds per thousand tiles, which
        single-scale evaluation never needs. Call it before handing the object to loader workers
        when most windows need neighbours (multi-resolution training), so they inherit it."""
        if self._grid is None:
            grid: dict[tuple[int, int], str] = {}
            for tid in self.tile_ids:
                with rasterio.open(tile_paths(self.store.root, tid)["rgb"]) as src:
                    t, w = src.transform, src.width
                size_m = w * t.a
                cell = (int(round(t.c / size_m)), int(round(t.f / size_m)))
                grid[cell] = tid
                self._cell_of[tid] = cell
                self._tile_size = self._tile_size or w
            self._grid = grid
        return self._grid, self._cell_of

    def _stack(self, tid: str, with_label: bool) -> np.ndarray:
        tile = self.store.load(tid)
        stack = raw_stack(tile.rgb, tile.extra, self.extra_index)
        if with_label:
            stack = np.concatenate([stack, np.asarray(tile.label, np.float32)[None]])
        return stack

    def window(self, tile_id: str, size: int, *, with_label: bool = False) -> np.ndarray:
        """(C, size, size) raw values centred on ``tile_id`` (label appended as the last band when
        ``with_label``: multi-resolution training reads image and label through the same code)."""
        centre = self._stack(tile_id, with_label)
        T = centre.shape[-1]
        if size == T:
            return centre
        margin = (size - T) // 2
        reach = -(-margin // T)  # neighbour tiles needed on each side
        grid, cell_of = self.index()
        cx, cy = cell_of[tile_id]
        # cells: x grows east (columns), y grows north, so row offset dr = -dy
        present = {(dr, dc) for dr in range(-reach, reach + 1) for dc in range(-reach, reach + 1)
                   if (cx + dc, cy - dr) in grid}
        r0 = r1 = c0 = c1 = 0  # grow the rectangle of present cells around the centre
        grown = True
        while grown:
            grown = False
            for side in ("top", "bottom", "left", "right"):
                nr0, nr1, nc0, nc1 = r0 - (side == "top"), r1 + (side == "bottom"), c0 - (side == "left"), c1 + (side == "right")
                if max(-nr0, nr1, -nc0, nc1) > reach:
                    continue
                if all((r, c) in present for r in range(nr0, nr1 + 1) for c in range(nc0, nc1 + 1)):
                    r0, r1, c0, c1, grown = nr0, nr1, nc0, nc1, True
        mosaic = np.empty((centre.shape[0], (r1 - r0 + 1) * T, (c1 - c0 + 1) * T), np.float32)
        for r in range(r0, r1 + 1):
            for c in range(c0, c1 + 1):
                tid = grid[(cx + c, cy - r)]
                mosaic[:, (r - r0) * T : (r - r0 + 1) * T, (c - c0) * T : (c - c0 + 1) * T] = centre if tid == tile_id else self._stack(tid, with_label)
        # window bounds in mosaic coordinates (the centre tile starts at (-r0*T, -c0*T))
        top, left = -r0 * T - margin, -c0 * T - margin
        y0, x0 = max(top, 0), max(left, 0)
        y1, x1 = min(top + size, mosaic.shape[1]), min(left + size, mosaic.shape[2])
        part = mosaic[:, y0:y1, x0:x1]
        pad = ((0, 0), (y0 - top, top + size - y1), (x0 - left, left + size - x1))
        return np.pad(part, pad, mode="reflect") if any(p for ax in pad for p in ax) else part
