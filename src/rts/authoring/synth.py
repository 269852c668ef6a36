"""``rts synth``: the synthetic RTS dataset, written in exactly the real on-disk format.

Each region (a plausible Arctic place with its own style: vegetation colour, illumination, sun,
haze, texture) is built as blocks of ``B x B`` neighbouring tiles on the region's fixed tile
grid (EPSG:3413, 3 m). A block is rendered as one canvas (see :mod:`rts.authoring.synth_render`), then
cut into tiles; each tile is labelled with the partial-target rule and classified:

* positive: at least one pixel of label 1 (RTS with both headwall and floor inside the tile);
* negative: no RTS pixel at all (hard negatives stay plain ``Negative``);
* skipped: RTS pixels but none labelled 1 (only a floor or only a headwall inside).

Tiles are taken in block order until the region's positive and negative quotas are met.
Regions are assigned whole to train / val / test (spatial blocking).

Output is byte-for-byte deterministic for the same options: one random stream per region and
per block (``np.random.default_rng([seed, region, ...])``), no timestamps, sorted rows.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import shutil
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from affine import Affine
from rasterio.warp import transform as warp_transform

from rts.authoring import synth_render as render
from rts.authoring.synth_render import HARD_NEGATIVE_KINDS, label_tile, partial_label
from rts.errors import ConfigError, DataError
from rts.io import (
    CRS,
    EXTRA_DIR,
    LABEL_DIR,
    METADATA_COLUMNS,
    NEGATIVE,
    PIXEL_SIZE_M,
    POSITIVE,
    RGB_DIR,
    file_sha256,
    tile_paths,
    write_geotiff,
    write_text_atomic,
)

log = logging.getLogger(__name__)

__all__ = ["synthesize", "write_preview", "partial_label", "label_tile", "PRESETS", "REGIONS", "block_period"]

DATASET_VERSION = "2.0"
GENERATOR = "rts synth"
GENERATOR_REVISION = 1  # bump when the rendering changes, so DVC hashes are expected to change
SPLITS = ("train", "val", "test")
IN_PROGRESS = ".rts-synth-in-progress"
# A positive tile whose label-1 pixels are fewer than this fraction is a sliver, not a useful
# positive (and would break the "RTS covers roughly 5-70% of a positive tile" rule): skipped.
MIN_POSITIVE_FRACTION = 0.01
# Tiles carrying at least this fraction of a hard negative count as "hard negative tiles".
HARD_TILE_FRACTION = 0.002
MAX_BLOCKS_PER_REGION = 400
_UID_NAMESPACE = uuid.UUID("5b0c1f5e-8a8e-4c55-9a55-7a3e2f1d0c11")


@dataclass(frozen=True)
class Region:
    name: str  # RegionName in metadata.csv and splits.yaml
    slug: str  # tile id prefix
    lat: float
    lon: float


# Plausible Arctic RTS places (centre of the synthetic tile grid).
REGIONS: tuple[Region, ...] = (
    Region("Banks Island, Canada", "banks-island", 72.90, -122.00),
    Region("Peel Plateau, Canada", "peel-plateau", 67.30, -135.40),
    Region("Yamal Peninsula, Russia", "yamal", 70.20, 68.40),
    Region("Northern Taymyr Peninsula, Russia", "taymyr", 74.60, 100.50),
    Region("Ellesmere Island, Canada", "ellesmere", 79.90, -85.00),
    Region("Tuktoyaktuk Coastlands, Canada", "tuktoyaktuk", 69.30, -132.50),
    Region("Noatak Valley, Alaska", "noatak", 67.90, -161.00),
    Region("Gydan Peninsula, Russia", "gydan", 70.90, 77.50),
    Region("Kolyma Lowland, Russia", "kolyma", 69.30, 158.00),
    Region("Herschel Island, Canada", "herschel", 69.58, -139.08),
    Region("Brooks Range Foothills, Alaska", "brooks-foothills", 68.60, -149.50),
    Region("Lena Delta, Russia", "lena-delta", 72.50, 126.50),
)


@dataclass(frozen=True)
class Preset:
    tile_size: int
    n_regions: int
    counts: dict[str, tuple[int, int]]  # split -> (positives, negatives)


PRESETS: dict[str, Preset] = {
    # `make demo`: 2-core CPU, whole pipeline in under 20 minutes; 5 training regions, 1 val, 1 test.
    # The training pool is 1:30 by tile (~0.8% RTS pixels): random batches then hold ~0.5 positive
    # tiles, the regime where imbalance handling matters (1:10 was mild enough that
    # plain BCE with random batches kept up; BENCHMARKS.md), and it leaves room for a 1:20+ curriculum.
    "demo": Preset(128, 7, {"train": (150, 4500), "val": (40, 200), "test": (40, 200)}),
    # Unit tests: a couple of seconds.
    "tiny": Preset(64, 4, {"train": (6, 10), "val": (6, 10), "test": (6, 10)}),
}
DEFAULT_N_POS, DEFAULT_N_NEG, DEFAULT_TILE_SIZE, DEFAULT_N_REGIONS = 120, 360, 512, 6
# How a total count is shared among splits when counts are given (positives ~ the real 70/15/15,
# negatives weighted toward val/test, where realistic-prevalence evaluation needs them).
POS_SHARE = {"train": 0.7, "val": 0.15, "test": 0.15}
NEG_SHARE = {"train": 0.5, "val": 0.25, "test": 0.25}


# ----------------------------------------------------------------------------- options


def _split_counts(total: int, share: dict[str, float]) -> dict[str, int]:
    """Integer counts per split summing to ``total``, each >= 1 when total >= 3."""
    out = {s: int(math.floor(total * share[s])) for s in SPLITS}
    if total >= 3:
        for s in SPLITS:
            out[s] = max(out[s], 1)
    out["train"] += total - sum(out.values())
    return out


def resolve_options(
    preset: str | None, n_pos: int | None, n_neg: int | None, tile_size: int | None, n_regions: int | None
) -> tuple[int, int, dict[str, tuple[int, int]]]:
    """(tile_size, n_regions, {split: (positives, negatives)}) from a preset and overrides."""
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    p = PRESETS.get(preset) if preset else None
    tile = tile_size if tile_size is not None else (p.tile_size if p else DEFAULT_TILE_SIZE)
    regions = n_regions if n_regions is not None else (p.n_regions if p else DEFAULT_N_REGIONS)
    if tile < 32 or tile % 32:
        raise ConfigError(f"tile_size must be a multiple of 32 >= 32, got {tile}")
    if not 3 <= regions <= len(REGIONS):
        raise ConfigError(f"n_regions must be between 3 (train, val, test) and {len(REGIONS)}, got {regions}")
    if p and n_pos is None and n_neg is None:
        counts = dict(p.counts)
    else:
        tot_pos = n_pos if n_pos is not None else (sum(c[0] for c in p.counts.values()) if p else DEFAULT_N_POS)
        tot_neg = n_neg if n_neg is not None else (sum(c[1] for c in p.counts.values()) if p else DEFAULT_N_NEG)
        if tot_pos < 3 or tot_neg < 3:
            raise ConfigError(f"n_pos and n_neg must be >= 3 (one per split), got {tot_pos} and {tot_neg}")
        pos, neg = _split_counts(tot_pos, POS_SHARE), _split_counts(tot_neg, NEG_SHARE)
        counts = {s: (pos[s], neg[s]) for s in SPLITS}
    return tile, regions, counts


def assign_regions(seed: int, n_regions: int) -> dict[str, list[int]]:
    """Indices into :data:`REGIONS` per split; val and test get >= 1 region each."""
    order = [int(i) for i in np.random.default_rng([seed, 7919]).permutation(len(REGIONS))[:n_regions]]
    n_hold = max(1, round(0.15 * n_regions))
    return {"train": order[: n_regions - 2 * n_hold], "val": order[n_regions - 2 * n_hold : n_regions - n_hold], "test": order[n_regions - n_hold :]}


def _share(total: int, n: int) -> list[int]:
    return [total // n + (1 if i < total % n else 0) for i in range(n)]


# ----------------------------------------------------------------------------- shapes


def load_outlines(path: Path) -> list[np.ndarray]:
    """Real RTS outlines from an ARTS GeoJSON (EPSG:3413), normalised to unit equivalent radius.

    Each feature's largest polygon ring is centred on its centroid and scaled so that
    ``sqrt(area / pi) == 1``; coordinates stay (east, north).

    Raises:
        DataError: the file is missing, not GeoJSON, not in EPSG:3413, or has no polygon.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: shapes file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a GeoJSON file ({e})") from None
    crs = str(((data.get("crs") or {}).get("properties") or {}).get("name", ""))
    if "3413" not in crs:
        raise DataError(f"{path}: shapes must be in EPSG:3413 (a GeoJSON 'crs' member naming EPSG::3413), got {crs or 'none (RFC 7946 lon/lat)'}")
    outlines = []
    for feat in data.get("features") or []:
        geom = feat.get("geometry") or {}
        polys = {"Polygon": [geom.get("coordinates")], "MultiPolygon": geom.get("coordinates")}.get(geom.get("type"), [])
        best, best_area = None, 0.0
        for poly in polys or []:
            if not poly or len(poly[0]) < 4:
                continue
            ring = np.asarray(poly[0], dtype=np.float64)[:, :2]
            x, y = ring[:, 0], ring[:, 1]
            cross = x[:-1] * y[1:] - x[1:] * y[:-1]
            area = 0.5 * cross.sum()
            if abs(area) > best_area:
                cx = ((x[:-1] + x[1:]) * cross).sum() / (6 * area)
                cy = ((y[:-1] + y[1:]) * cross).sum() / (6 * area)
                best, best_area = ring - [cx, cy], abs(area)
        if best is not None and best_area > 0:
            outlines.append(best / math.sqrt(best_area / math.pi))
    if not outlines:
        raise DataError(f"{path}: no Polygon or MultiPolygon features found")
    return outlines


# ----------------------------------------------------------------------------- generation


@dataclass
class _Tile:
    tile_id: str
    region: Region
    split: str
    positive: bool
    transform: Any
    label_fraction: float
    uids: list[str]
    ignore_px: int
    rts_area_px: dict[str, int]  # whole-RTS area (all tiles) of each UID labelled 1 here
    hard_fractions: dict[str, float]  # pixel fraction of each hard-negative kind carried

    @property
    def hard_kinds(self) -> list[str]:
        return list(self.hard_fractions)


def _tiles_per_block(tile_size: int) -> int:
    return 4 if tile_size <= 128 else 3


def block_period(tile_size: int) -> int:
    """Grid period, in tiles, of a region's blocks: a block of neighbouring tiles plus a one-tile gap.

    Tiles ``(row, col)`` with the same ``(row // period, col // period)`` come from one rendered block.
    """
    return _tiles_per_block(tile_size) + 1


def _region_origin(region: Region, tile_size: int) -> tuple[float, float]:
    """Top-left corner of tile (0, 0): the region centre snapped to the tile grid."""
    xs, ys = warp_transform("EPSG:4326", CRS, [region.lon], [region.lat])
    step = tile_size * PIXEL_SIZE_M
    return math.floor(xs[0] / step) * step, math.ceil(ys[0] / step) * step


def _region_tiles(
    out_dir: Path, table_index: int, split: str, n_pos: int, n_neg: int, tile_size: int, seed: int, outlines: list[np.ndarray] | None
) -> tuple[list[_Tile], dict[str, Any]]:
    """Render blocks of one region until its quotas are met, writing each kept tile's three files.

    Returns the tiles (without pixels) and the region's statistics.
    """
    region = REGIONS[table_index]
    style = render.make_style(np.random.default_rng([seed, table_index, 0]))
    b = _tiles_per_block(tile_size)
    x0, y0 = _region_origin(region, tile_size)
    tiles: list[_Tile] = []
    need_pos, need_neg, skipped, k = n_pos, n_neg, 0, 0
    blocks_per_row = 10
    min_pos_px = max(1, int(MIN_POSITIVE_FRACTION * tile_size * tile_size))
    min_hard_px = max(8, int(HARD_TILE_FRACTION * tile_size * tile_size))
    while need_pos > 0 or need_neg > 0:
        if k >= MAX_BLOCKS_PER_REGION:
            raise RuntimeError(f"{region.name}: quotas not met after {k} blocks (positives missing: {need_pos}, negatives: {need_neg})")
        rng = np.random.default_rng([seed, table_index, 1, k])
        block = render.render_block(rng, style, tile_size, b, positive=need_pos > 0, outlines=outlines)
        # Blocks sit on the region grid with a one-tile gap, so no content is cut at a seam.
        row0, col0 = (k // blocks_per_row) * block_period(tile_size), (k % blocks_per_row) * block_period(tile_size)
        uids = [str(uuid.uuid5(_UID_NAMESPACE, f"{seed}/{region.slug}/{tile_size}/{k}/{i}")) for i in range(block.n_rts + 1)]
        areas = np.bincount(block.instance.ravel(), minlength=block.n_rts + 1)
        for ty in range(b):
            for tx in range(b):
                win = (slice(ty * tile_size, (ty + 1) * tile_size), slice(tx * tile_size, (tx + 1) * tile_size))
                inst = block.instance[win]
                label = label_tile(inst, block.part[win])
                n_one = int((label == 1).sum())
                if n_one == 0 and inst.any():
                    skipped += 1  # only floor or only headwall of some RTS inside
                    continue
                positive = n_one > 0
                if positive and n_one < min_pos_px:
                    skipped += 1  # a sliver of RTS: not a useful positive
                    continue
                if (need_pos if positive else need_neg) <= 0:
                    continue  # this class's quota is already met
                hard_counts = np.bincount(block.hard[win].ravel(), minlength=len(HARD_NEGATIVE_KINDS) + 1)
                row, col = row0 + ty, col0 + tx
                tile_id = f"{region.slug}_{row:03d}_{col:03d}"
                transform = Affine(PIXEL_SIZE_M, 0.0, x0 + col * tile_size * PIXEL_SIZE_M, 0.0, -PIXEL_SIZE_M, y0 - row * tile_size * PIXEL_SIZE_M)
                paths = tile_paths(out_dir, tile_id)
                write_geotiff(paths["rgb"], np.ascontiguousarray(block.rgb[(slice(None),) + win]), transform)
                write_geotiff(paths["extra"], np.ascontiguousarray(block.extra[(slice(None),) + win]), transform)
                write_geotiff(paths["label"], label, transform)
                tiles.append(
                    _Tile(
                        tile_id=tile_id,
                        region=region,
                        split=split,
                        positive=positive,
                        transform=transform,
                        label_fraction=n_one / label.size,
                        uids=sorted({uids[i] for i in np.unique(inst[label == 1])}),
                        rts_area_px={uids[i]: int(areas[i]) for i in np.unique(inst[label == 1])},
                        ignore_px=int((label == 255).sum()),
                        hard_fractions={
                            HARD_NEGATIVE_KINDS[i - 1]: float(hard_counts[i]) / label.size for i in range(1, len(hard_counts)) if hard_counts[i] >= min_hard_px
                        },
                    )
                )
                if positive:
                    need_pos -= 1
                else:
                    need_neg -= 1
        k += 1
    stats = {"blocks": k, "skipped_tiles": skipped, "style": style.to_json()}
    return tiles, stats


def _region_job(args: tuple) -> tuple[list[_Tile], dict[str, Any]]:
    return _region_tiles(*args)


def _centroids(tiles: list[_Tile], tile_size: int) -> dict[str, tuple[float, float]]:
    half = tile_size * PIXEL_SIZE_M / 2
    xs = [t.transform.c + half for t in tiles]
    ys = [t.transform.f - half for t in tiles]
    lons, lats = warp_transform(CRS, "EPSG:4326", xs, ys) if tiles else ([], [])
    return {t.tile_id: (lat, lon) for t, lat, lon in zip(tiles, lats, lons)}


def _prepare_out(out_dir: Path, overwrite: bool) -> None:
    """Create ``out_dir``; clear a previous synth output; refuse anything else unless ``overwrite``."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir}: exists and is not a folder")
    entries = list(out_dir.iterdir()) if out_dir.exists() else []
    if entries:
        previous = (out_dir / IN_PROGRESS).exists()
        try:
            previous = previous or json.loads((out_dir / "version.json").read_text()).get("generator") == GENERATOR
        except (OSError, ValueError, AttributeError):
            pass
        if not previous and not overwrite:
            raise DataError(
                f"{out_dir}: folder is not empty and is not a previous 'rts synth' output; "
                "choose an empty folder or pass --overwrite (overwrite=True) to replace its dataset files"
            )
        # Only the dataset's own entries are removed (stale tiles of other options must go).
        for name in (RGB_DIR, EXTRA_DIR, LABEL_DIR):
            if (out_dir / name).is_dir():
                shutil.rmtree(out_dir / name)
        for name in ("metadata.csv", "splits.yaml", "version.json"):
            (out_dir / name).unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / IN_PROGRESS).write_text("rts synth is writing this folder\n")


def synthesize(
    out_dir: Path,
    *,
    preset: str | None = None,
    n_pos: int | None = None,
    n_neg: int | None = None,
    tile_size: int | None = None,
    n_regions: int | None = None,
    seed: int = 0,
    shapes: Path | None = None,
    overwrite: bool = False,
    susceptibility: bool = False,
    workers: int | None = None,
) -> dict:
    """Write the synthetic dataset into ``out_dir`` in the dataset layout ``rts check`` validates.

    Args:
        out_dir: output folder; created. A non-empty folder must be a previous synth output
            (its dataset files are replaced) unless ``overwrite``.
        preset: ``"demo"`` or ``"tiny"`` (see :data:`PRESETS`); None = the default 512 px dataset.
        n_pos: total positive tiles (overrides the preset; shared 70/15/15 among splits).
        n_neg: total negative tiles (overrides the preset; shared 50/25/25).
        tile_size: tile width in pixels (multiple of 32).
        n_regions: number of regions (3-12); val and test get >= 1 each.
        seed: random seed; the same options give byte-identical files.
        shapes: an ARTS GeoJSON (EPSG:3413) whose real outlines replace the generated RTS shapes.
        overwrite: replace the dataset files of a non-empty folder that is not a synth output.
        susceptibility: also write a matching susceptibility layer (``susceptibility/<region>.tif``
            and ``susceptibility.vrt``, docs/susceptibility.md). Off by default: the pinned demo
            dataset's bytes do not include it.
        workers: processes rendering regions in parallel (default: the CPU count); the output
            is identical for any value.

    Returns:
        The summary also stored in ``version.json``: tiles per split and class, RTS pixel fraction
        of positive tiles, hard-negative share of negative tiles, multi-tile RTS, skipped tiles.
    """
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    tile, n_reg, counts = resolve_options(preset, n_pos, n_neg, tile_size, n_regions)
    outlines = load_outlines(shapes) if shapes is not None else None
    _prepare_out(out_dir, overwrite)
    assignment = assign_regions(seed, n_reg)
    all_tiles: list[_Tile] = []
    region_stats: dict[str, Any] = {}
    jobs = [
        (idx, split, p, n)
        for split in SPLITS
        for idx, p, n in zip(assignment[split], _share(counts[split][0], len(assignment[split])), _share(counts[split][1], len(assignment[split])))
    ]
    # Regions are independent (one random stream each, own files), so they render in parallel;
    # results are collected in job order, so the output does not depend on the worker count.
    n_workers = max(1, min(workers if workers is not None else (os.cpu_count() or 1), len(jobs)))
    with ProcessPoolExecutor(n_workers) if n_workers > 1 else nullcontext() as pool:
        mapper = pool.map if pool is not None else map
        results = list(mapper(_region_job, [(out_dir, idx, split, p, n, tile, seed, outlines) for idx, split, p, n in jobs]))
    for (idx, split, p, n), (tiles, stats) in zip(jobs, results):
        region_stats[REGIONS[idx].name] = {"split": split, "positives": p, "negatives": n, **stats}
        log.info("%s (%s): %d positive + %d negative tiles from %d blocks", REGIONS[idx].name, split, p, n, stats["blocks"])
        all_tiles.extend(tiles)
    all_tiles.sort(key=lambda t: t.tile_id)
    _write_metadata(out_dir / "metadata.csv", all_tiles, _centroids(all_tiles, tile))
    splits_doc = {s: sorted(REGIONS[i].name for i in assignment[s]) for s in SPLITS}
    write_text_atomic(out_dir / "splits.yaml", yaml.safe_dump(splits_doc, sort_keys=False, default_flow_style=False, allow_unicode=True))
    summary = _summary(all_tiles, tile)
    options = {
        "preset": preset,
        "counts": {s: {"positives": c[0], "negatives": c[1]} for s, c in counts.items()},
        "tile_size": tile,
        "n_regions": n_reg,
        "seed": seed,
        # The file name and hash, not the path, so the output does not depend on where it lives.
        "shapes": {"file": Path(shapes).name, "sha256": file_sha256(shapes)} if shapes is not None else None,
    }
    version = {
        "dataset_version": DATASET_VERSION,
        "generator": GENERATOR,
        "generator_revision": GENERATOR_REVISION,
        "options": options,
        "summary": summary,
        "regions": region_stats,
        "catalog": _catalog(all_tiles),
    }
    write_text_atomic(out_dir / "version.json", json.dumps(version, indent=2, sort_keys=True) + "\n")
    if susceptibility:  # --- optional layer, written from the finished tiles (never changes them)
        from rts.susceptibility import write_synthetic_layer

        log.info("susceptibility layer: %s", write_synthetic_layer(out_dir, seed=seed))
    (out_dir / IN_PROGRESS).unlink()
    log.info("wrote %d tiles to %s in %.1f s", len(all_tiles), out_dir, time.perf_counter() - t_start)
    return summary


def _write_metadata(path: Path, tiles: list[_Tile], centroids: dict[str, tuple[float, float]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(METADATA_COLUMNS)
    for t in tiles:  # already sorted by tile id
        lat, lon = centroids[t.tile_id]
        w.writerow([t.tile_id, f"{lat:.6f}", f"{lon:.6f}", POSITIVE if t.positive else NEGATIVE, t.region.name, ",".join(t.uids)])
    write_text_atomic(path, buf.getvalue())


def _summary(tiles: list[_Tile], tile_size: int) -> dict[str, Any]:
    per_split: dict[str, dict[str, int]] = {s: {"positive": 0, "negative": 0} for s in SPLITS}
    for t in tiles:
        per_split[t.split]["positive" if t.positive else "negative"] += 1
    pos = [t for t in tiles if t.positive]
    neg = [t for t in tiles if not t.positive]
    frac = np.array([t.label_fraction for t in pos]) if pos else np.zeros(1)
    uid_tiles: dict[str, int] = {}
    for t in pos:
        for u in t.uids:
            uid_tiles[u] = uid_tiles.get(u, 0) + 1
    hard = [t for t in neg if t.hard_kinds]
    kinds = {k: sum(k in t.hard_kinds for t in neg) for k in HARD_NEGATIVE_KINDS}
    return {
        "tile_size": tile_size,
        "tiles": per_split,
        "n_tiles": len(tiles),
        "n_rts": len(uid_tiles),
        "n_multi_tile_rts": sum(1 for n in uid_tiles.values() if n > 1),
        "positive_tiles_with_ignore": sum(1 for t in pos if t.ignore_px),
        "rts_label_fraction": {
            "mean": round(float(frac.mean()), 4),
            "min": round(float(frac.min()), 4),
            "median": round(float(np.median(frac)), 4),
            "max": round(float(frac.max()), 4),
        },
        "hard_negative_tile_fraction": round(len(hard) / max(len(neg), 1), 4),
        "hard_negative_tiles_by_kind": kinds,
    }


def _catalog(tiles: list[_Tile]) -> dict[str, Any]:
    """Tile ids that show each phenomenon (for previews and targeted evaluation).

    Hard-negative lists are ordered best example first: most pixels of that kind, fewest of others.
    """

    def purity(t: _Tile, kind: str) -> float:
        return t.hard_fractions[kind] - sum(f for k, f in t.hard_fractions.items() if k != kind)

    uid_tiles: dict[str, list[str]] = {}
    area: dict[str, int] = {}
    for t in tiles:
        for u in t.uids:
            uid_tiles.setdefault(u, []).append(t.tile_id)
        area.update(t.rts_area_px)
    multi = {u: ids for u, ids in uid_tiles.items() if len(ids) > 1}
    return {
        "hard_negatives": {
            k: [t.tile_id for t in sorted((t for t in tiles if not t.positive and k in t.hard_fractions), key=lambda t: (-round(purity(t, k), 6), t.tile_id))]
            for k in HARD_NEGATIVE_KINDS
        },
        "edge_ignore_tiles": [t.tile_id for t in tiles if t.positive and t.ignore_px],
        # The 20 largest RTS that are labelled 1 in more than one tile, largest first.
        "multi_tile_rts": dict(sorted(multi.items(), key=lambda kv: (-area[kv[0]], kv[0]))[:20]),
    }


def write_preview(dataset_dir: Path, png: Path) -> None:
    """Contact sheet of a synth dataset (see :func:`rts.authoring.synth_preview.write_preview`)."""
    from rts.authoring.synth_preview import write_preview as _write

    _write(Path(dataset_dir), Path(png))
