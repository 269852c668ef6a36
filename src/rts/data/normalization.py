"""Per-dataset normalisation statistics: the clip bounds, means and standard deviations every
model is trained and served with.

Per channel (R, G, B, then every EXTRA channel in band order): clip to percentile bounds computed
over the training tiles, then mean and std of the clipped values. The bounds come from a bounded
random sample of pixels (exact when the sample holds every pixel, as in the tests); the moments come
from one streaming pass that merges per-tile moments with Chan/Welford's parallel update, so memory
does not grow with the number of tiles. The saved file is hashed; the hash travels with every
model and inference refuses a statistics file whose hash differs.

The statistics are a pure function of the data and the ``prepare`` params: prepare writes the same
bytes on every run, so re-running it never makes a trained model stale. The model's copy carries a
``computed_date`` (the time training packaged it), which the hash leaves out.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from rts.data.store import prefetch
from rts.errors import DataError
from rts.io import EXTRA_CHANNELS, write_json_atomic

RGB_NAMES = ("R", "G", "B")


class RunningMoments:
    """Streaming mean/variance per channel (Chan et al. parallel Welford update, float64)."""

    def __init__(self, n_channels: int):
        self.count = np.zeros(n_channels, np.float64)
        self.mean = np.zeros(n_channels, np.float64)
        self.m2 = np.zeros(n_channels, np.float64)

    def update(self, values: np.ndarray) -> None:
        """``values``: (C, N) for one tile."""
        values = values.astype(np.float64, copy=False)
        n_b = values.shape[1]
        if n_b == 0:
            return
        mean_b = values.mean(axis=1)
        m2_b = ((values - mean_b[:, None]) ** 2).sum(axis=1)
        n_a = self.count
        n = n_a + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * n_b / n
        self.m2 = self.m2 + m2_b + delta**2 * n_a * n_b / n
        self.count = n

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / np.maximum(self.count, 1))


class PixelReservoir:
    """A bounded uniform sample of pixel values per channel, for percentile bounds."""

    def __init__(self, n_channels: int, capacity: int, seed: int):
        self.capacity = capacity
        self.rng = np.random.default_rng(seed)
        self.samples = np.empty((n_channels, capacity), np.float64)
        self.size = 0
        self.seen = 0

    def add(self, values: np.ndarray, per_tile: int) -> None:
        """Add up to ``per_tile`` random pixels of one tile's (C, N) values (algorithm R, vectorised)."""
        n = values.shape[1]
        if n > per_tile:
            values = values[:, np.sort(self.rng.choice(n, size=per_tile, replace=False))]
        m = values.shape[1]
        room = min(self.capacity - self.size, m)
        if room > 0:
            self.samples[:, self.size : self.size + room] = values[:, :room]
            self.size += room
        rest = values[:, room:]
        if rest.shape[1]:
            seen = self.seen + room + 1 + np.arange(rest.shape[1])
            slot = (self.rng.random(rest.shape[1]) * seen).astype(np.int64)
            keep = slot < self.capacity
            self.samples[:, slot[keep]] = rest[:, keep]
        self.seen += m

    def percentiles(self, low: float, high: float) -> tuple[np.ndarray, np.ndarray]:
        data = self.samples[:, : self.size]
        return np.percentile(data, low, axis=1), np.percentile(data, high, axis=1)


def compute_stats(
    tiles: Iterable[tuple[np.ndarray, np.ndarray]],
    *,
    clip_percentiles: tuple[float, float],
    sample_px_per_tile: int,
    reservoir_capacity: int = 4_000_000,
    seed: int = 0,
    dataset_version: str,
    tile_loader=None,
    workers: int = 1,
) -> dict:
    """Statistics over ``tiles``: an iterable of (rgb (3,H,W) uint8, extra (4,H,W) float32).

    The iterable is traversed twice (percentile sample, then moments), so pass a re-iterable
    (e.g. a list of ids with ``tile_loader``) rather than a generator. ``workers`` threads load
    tiles ahead; the statistics are consumed in order, so they do not depend on it.
    """
    tiles = list(tiles) if tile_loader is None else tiles
    n_channels = 3 + len(EXTRA_CHANNELS)
    get = tile_loader or (lambda t: t)

    def stacked(item) -> np.ndarray:
        rgb, extra = get(item)
        return np.concatenate([rgb.reshape(3, -1).astype(np.float64), extra.reshape(extra.shape[0], -1).astype(np.float64)])

    reservoir = PixelReservoir(n_channels, reservoir_capacity, seed)
    n_tiles = 0
    for values in prefetch(stacked, tiles, workers=workers):
        reservoir.add(values, sample_px_per_tile)
        n_tiles += 1
    if n_tiles == 0:
        raise DataError("no training tiles: cannot compute normalisation statistics")
    low, high = reservoir.percentiles(*clip_percentiles)
    moments = RunningMoments(n_channels)
    for values in prefetch(stacked, tiles, workers=workers):
        moments.update(np.clip(values, low[:, None], high[:, None]))
    std = np.maximum(moments.std, 1e-6)  # a constant channel must not divide by zero
    return {
        "dataset_version": dataset_version,
        "n_tiles_used": n_tiles,
        "clip_percentiles": list(clip_percentiles),
        "rgb": {
            "channels": list(RGB_NAMES),
            "mean": moments.mean[:3].tolist(),
            "std": std[:3].tolist(),
            "clip_low": low[:3].tolist(),
            "clip_high": high[:3].tolist(),
        },
        "extra": {
            "channels": list(EXTRA_CHANNELS),
            "mean": moments.mean[3:].tolist(),
            "std": std[3:].tolist(),
            "clip_low": low[3:].tolist(),
            "clip_high": high[3:].tolist(),
        },
        "percentile_sample": {"px_per_tile": sample_px_per_tile, "pixels": int(reservoir.size), "exact": reservoir.size == reservoir.seen},
    }


# Provenance, not content: the model's copy is dated when training packages it, and the hash (which
# every model records and inference checks) must not change with that date.
PROVENANCE_KEYS = ("computed_date",)


def stats_hash(stats: dict) -> str:
    """Hash of the statistics' content (canonical JSON, less :data:`PROVENANCE_KEYS`), independent
    of file formatting."""
    content = {k: v for k, v in stats.items() if k not in PROVENANCE_KEYS}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def dated(stats: dict) -> dict:
    """``stats`` with ``computed_date`` set to now (UTC, ISO 8601): the copy that travels with a model."""
    return {**stats, "computed_date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()}


def save_stats(path: Path, stats: dict) -> str:
    write_json_atomic(path, stats)
    return stats_hash(stats)


def load_stats(path: Path, expected_hash: str | None = None) -> dict:
    """Load statistics; refuse them when ``expected_hash`` is given and differs."""
    stats = json.loads(Path(path).read_text())
    if expected_hash is not None:
        actual = stats_hash(stats)
        # packages trained before the date left the hash recorded it with the date: still theirs
        legacy = hashlib.sha256(json.dumps(stats, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        if expected_hash not in (actual, legacy):
            raise DataError(
                f"{path}: normalisation statistics hash {actual[:12]}... does not match the model's "
                f"{expected_hash[:12]}...; the model was trained with different statistics"
            )
    return stats


def raw_stack(rgb: np.ndarray, extra: np.ndarray, extra_index: list[int]) -> np.ndarray:
    """(3+k, H, W) float32 model input before normalisation: RGB then the selected EXTRA bands."""
    parts = [np.asarray(rgb, np.float32)]
    if extra_index:
        parts.append(np.asarray(extra)[extra_index].astype(np.float32))
    return np.concatenate(parts, axis=0)


class Normalizer:
    """Clip to the saved bounds and z-score, for RGB and the selected EXTRA channels.

    The one preprocessing function that training, evaluation and inference share.
    """

    def __init__(self, stats: dict, extra_channels: list[str] | tuple[str, ...]):
        idx = [list(stats["extra"]["channels"]).index(c) for c in extra_channels]
        self.extra_index = idx
        self.low = np.array(stats["rgb"]["clip_low"] + [stats["extra"]["clip_low"][i] for i in idx], np.float32)
        self.high = np.array(stats["rgb"]["clip_high"] + [stats["extra"]["clip_high"][i] for i in idx], np.float32)
        self.mean = np.array(stats["rgb"]["mean"] + [stats["extra"]["mean"][i] for i in idx], np.float32)
        self.std = np.array(stats["rgb"]["std"] + [stats["extra"]["std"][i] for i in idx], np.float32)
        # RGB is uint8: its 256 normalised values per channel, computed by ``__call__`` itself
        values = np.broadcast_to(np.arange(256, dtype=np.float32), (len(self.low), 1, 256))
        self._rgb_lut = self(values)[:3, 0]

    def planes(self, rgb: np.ndarray, extra: np.ndarray | None, *, channels_last: bool) -> np.ndarray:
        """``__call__`` of the float32 (C, H, W) stack of uint8 RGB and float EXTRA, bit for bit, without the stack.

        ``rgb``: (H, W, 3) with ``channels_last``, else (3, H, W), uint8; ``extra``: the selected
        EXTRA channels in the same layout, (H, W, k) or (k, H, W), or None. RGB goes
        through a 256-entry table per channel; EXTRA is clipped and z-scored in place in the output.
        """
        h, w = rgb.shape[:2] if channels_last else rgb.shape[1:]
        k = 0 if extra is None else (extra.shape[-1] if channels_last else extra.shape[0])
        out = np.empty((3 + k, h, w), np.float32)
        rgb_planes = cv2.split(np.ascontiguousarray(rgb)) if channels_last else rgb
        for ch in range(3):
            cv2.LUT(np.ascontiguousarray(rgb_planes[ch]), self._rgb_lut[ch], dst=out[ch])
        if k:
            ext = out[3:]
            np.copyto(ext, np.moveaxis(extra, -1, 0) if channels_last else extra, casting="same_kind")
            c = (slice(None), None, None)
            np.clip(ext, self.low[3:][c], self.high[3:][c], out=ext)
            ext -= self.mean[3:][c]
            ext /= self.std[3:][c]
        return out

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Normalise a (C, H, W) or (H, W, C)-agnostic channels-first float array."""
        c = (slice(None), None, None)
        out = np.clip(image, self.low[c], self.high[c])
        return ((out - self.mean[c]) / self.std[c]).astype(np.float32)
