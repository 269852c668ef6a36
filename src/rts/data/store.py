"""Reading tiles of a dataset folder, with an optional decoded-tile cache.

Decoding an RGB + label LZW GeoTIFF pair costs ~10 ms at 512 px, which alone caps a loader worker
near 100 tiles/s before any augmentation. The cache stores each tile decoded as ``.npy`` (exact
values: uint8 RGB + label, float32 EXTRA) and memory-maps it on later reads. A cache entry's name
carries a fingerprint of its source files (size and mtime), so a changed tile is re-decoded, never
served stale. An entry is written as temporary files renamed into place; a write that fails (a full
disk) removes the whole entry and raises one :class:`~rts.errors.OutputError` line naming the file.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from rts.errors import OutputError
from rts.io import atomic_path, read_raster, tile_paths

DEFAULT_CACHE_DIR = Path(".cache") / "tiles"

T = TypeVar("T")
R = TypeVar("R")


def io_workers() -> int:
    """Threads for reading tiles: GDAL decoding and numpy copies release the GIL."""
    return max(1, min(8, os.cpu_count() or 1))


def prefetch(fn: Callable[[T], R], items: Iterable[T], *, workers: int, depth: int | None = None) -> Iterator[R]:
    """``map(fn, items)`` in order, computed ahead on ``workers`` threads.

    At most ``depth`` (default ``2 * workers``) results wait unconsumed, so memory stays bounded
    however slow the consumer; an exception in ``fn`` is raised at its item's turn.
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    depth = depth or 2 * workers
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= depth:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()


@dataclass
class Tile:
    rgb: np.ndarray  # (3, H, W) uint8
    extra: np.ndarray  # (4, H, W) float32, band order ndvi, nir, re, sr
    label: np.ndarray  # (H, W) uint8 {0, 1, 255}


class TileStore:
    """Loads tiles of one dataset root by id, through the cache when ``cache_dir`` is set."""

    def __init__(self, root: str | os.PathLike, cache_dir: str | os.PathLike | None = None):
        self.root = Path(root)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None

    def _fingerprint(self, tile_id: str) -> str:
        h = hashlib.sha1()
        for kind, path in tile_paths(self.root, tile_id).items():
            st = os.stat(path)
            h.update(f"{kind}:{st.st_size}:{st.st_mtime_ns};".encode())
        return h.hexdigest()[:16]

    def _cache_paths(self, tile_id: str) -> tuple[Path, Path]:
        assert self.cache_dir is not None
        key = self._fingerprint(tile_id)
        return self.cache_dir / f"{tile_id}.{key}.rgbl.npy", self.cache_dir / f"{tile_id}.{key}.extra.npy"

    def read_files(self, tile_id: str) -> Tile:
        """Decode the tile's three GeoTIFFs."""
        paths = tile_paths(self.root, tile_id)
        return Tile(read_raster(paths["rgb"]), read_raster(paths["extra"]).astype(np.float32, copy=False), read_raster(paths["label"])[0])

    def load(self, tile_id: str) -> Tile:
        if self.cache_dir is None:
            return self.read_files(tile_id)
        rgbl_path, extra_path = self._cache_paths(tile_id)
        if rgbl_path.exists() and extra_path.exists():
            rgbl = np.load(rgbl_path, mmap_mode="r")
            extra = np.load(extra_path, mmap_mode="r")
            return Tile(rgbl[:3], extra, rgbl[3])
        tile = self.read_files(tile_id)
        self.write_cache(tile_id, tile)
        return tile

    def load_sample(self, tile_id: str, extra_index: list[int]) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """``(rgb (3, H, W) uint8, the selected EXTRA planes (k, H, W) float32 or None, label (H, W))``,
        each the caller's own (no view of a memory map or of the cache's files).

        The values of :meth:`load` for a training sample, read from the cache without memory
        maps: the RGB + label file whole and only the selected EXTRA planes (opening two memory
        maps and parsing their headers costs more than reading a 512 px tile). Anything but the
        plain header ``np.save`` writes goes through :meth:`load`.
        """
        if self.cache_dir is not None:
            rgbl_path, extra_path = self._cache_paths(tile_id)
            if rgbl_path.exists() and extra_path.exists():  # a whole entry, as load() requires
                rgbl = _read_npy(rgbl_path)
                extra = _read_npy(extra_path, extra_index) if extra_index else None
                if rgbl is not None and (extra is not None or not extra_index):
                    return rgbl[:3], extra, rgbl[3]
        tile = self.load(tile_id)
        return np.array(tile.rgb), (np.asarray(tile.extra)[extra_index] if extra_index else None), np.array(tile.label)

    def put_decoded(self, tile_id: str, bands: dict[str, np.ndarray]) -> None:
        """Fill the cache from bands already decoded elsewhere (``rts check`` reads every tile):
        ``{"rgb": (3, H, W), "extra": (4, H, W), "label": (1, H, W)}`` as read from the files.
        No-op without a cache or when the entry exists."""
        if self.cache_dir is None or all(p.exists() for p in self._cache_paths(tile_id)):
            return
        self.write_cache(tile_id, Tile(bands["rgb"], bands["extra"].astype(np.float32, copy=False), bands["label"][0]))

    def write_cache(self, tile_id: str, tile: Tile) -> None:
        """Write the tile's cache entry (two ``.npy`` files), each to a temporary file renamed into place.

        Raises:
            OutputError: a file cannot be written (a full disk); the entry's files are removed, so
                no half of an entry stays, and the message names the file, the free space and the fix.
        """
        rgbl_path, extra_path = self._cache_paths(tile_id)
        path = rgbl_path
        try:
            with atomic_path(rgbl_path, suffix=".npy") as tmp:
                np.save(tmp, np.concatenate([tile.rgb, tile.label[None]], axis=0))
            path = extra_path
            with atomic_path(extra_path, suffix=".npy") as tmp:
                np.save(tmp, np.ascontiguousarray(tile.extra, dtype=np.float32))
        except OSError as e:
            rgbl_path.unlink(missing_ok=True)
            raise unwritable(path, e, "run again", alternative="set data.cache: false to read the tiles without a cache") from e


_NPY_HEADER = re.compile(rb"\{'descr': '([<>|=]?[a-z]\d+)', 'fortran_order': False, 'shape': \(([\d, ]*)\), \} *\n")


def _read_npy(path: Path, planes: list[int] | None = None) -> np.ndarray | None:
    """A C-order ``.npy`` file of version 1 as ``np.save`` writes it, read whole or (``planes``)
    only those indices of its first axis; None when the file is missing, has another header or is
    short (the caller then reads it with ``np.load``, which says what is wrong)."""
    try:
        with open(path, "rb", buffering=0) as f:
            head = f.read(10)
            if len(head) < 10 or head[:6] != b"\x93NUMPY" or head[6] != 1:
                return None
            n_header = int.from_bytes(head[8:10], "little")
            m = _NPY_HEADER.fullmatch(f.read(n_header))
            if m is None:
                return None
            dtype = np.dtype(m.group(1).decode())
            shape = tuple(int(x) for x in m.group(2).split(b",") if x.strip())
            if dtype.hasobject or not shape:
                return None
            if planes is None:
                out = np.empty(shape, dtype)
                return out if f.readinto(memoryview(out).cast("B")) == out.nbytes else None
            out = np.empty((len(planes), *shape[1:]), dtype)
            plane_bytes = out[0].nbytes if len(planes) else 0
            for i, c in enumerate(planes):
                if not 0 <= c < shape[0]:
                    return None
                f.seek(10 + n_header + c * plane_bytes)
                if f.readinto(memoryview(out[i]).cast("B")) != plane_bytes:
                    return None
            return out
    except FileNotFoundError:
        return None


def unwritable(path: str | os.PathLike, error: OSError, rerun: str, *, alternative: str = "", kept: str = "") -> OutputError:
    """The one-line :class:`OutputError` for a file that cannot be written: the file, the OS's reason,
    the free space where it goes (for a full disk) and the fix, e.g. ``path: cannot be written (No
    space left on device); free space on the filesystem of /data (3 MiB free) and run again``."""
    where = Path(path).resolve().parent
    while not where.exists():
        where = where.parent
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = f"free space on the filesystem of {where} ({shutil.disk_usage(where).free / 2**20:.0f} MiB free)"
    else:
        fix = f"make {where} writable"
    fix += f" and {rerun}" if not alternative else f", or {alternative}, and {rerun}"
    return OutputError(f"{path}: cannot be written ({error.strerror or error}); {fix}{kept}")
