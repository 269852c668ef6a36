"""Data checks of the dataset format, run before any training: a bad tile costs GPU hours or biases the metrics silently.

``rts check DATA`` (and the prepare stage, through :func:`check_dataset`) runs every check over a
whole dataset folder and reports every problem found, each with the file it is in and the reason,
not just the first one. The pass streams: one tile's three rasters are open at a time and
metadata rows are read one by one; only small per-tile summaries (ids, classes, pixel sizes)
are kept, so memory does not grow with the size of the tiles' pixels times the number of tiles.

Problems make the dataset unusable for training (exit status 1); warnings are oddities that do
not (a split region without tiles, a stray non-``.tif`` file, a positive tile without UIDs).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import yaml
from rasterio.errors import RasterioError

from rts.io import (
    CRS,
    EXTRA_CHANNELS,
    EXTRA_DIR,
    IGNORE,
    LABEL_DIR,
    METADATA_COLUMNS,
    NEGATIVE,
    PIXEL_SIZE_M,
    POSITIVE,
    RGB_DIR,
    utf8_problem,
)

log = logging.getLogger(__name__)

METADATA_FILE = "metadata.csv"
SPLITS_FILE = "splits.yaml"
VERSION_FILE = "version.json"
SPLIT_NAMES = ("train", "val", "test")
PIXEL_SIZE_TOLERANCE_M = 0.5
LABEL_VALUES = (0, 1, IGNORE)
RTS = 1
# Two tiles whose pixel sizes agree to a millimetre share a grid resolution; coarser rounding
# would hide a real resampling difference, finer would flag float noise in the transforms.
_PIXEL_SIZE_DECIMALS = 3


@dataclass(frozen=True)
class _Kind:
    folder: str
    dtype: str
    count: int


# The order is the reference order of a tile's grid: EXTRA and labels are compared with RGB.
KINDS: dict[str, _Kind] = {
    "rgb": _Kind(RGB_DIR, "uint8", 3),
    "extra": _Kind(EXTRA_DIR, "float32", len(EXTRA_CHANNELS)),
    "label": _Kind(LABEL_DIR, "uint8", 1),
}

# on_tile(tile_id, {kind: decoded (bands, H, W) array}) for each tile that passed its checks
TileCallback = Callable[[str, dict[str, np.ndarray]], None]


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with the dataset.

    Attributes:
        path: The file, relative to the dataset root, in POSIX form (``labels/a_001.tif``).
        reason: What is wrong, with the offending value and what was expected.
    """

    path: str
    reason: str


@dataclass
class CheckResult:
    """Everything one pass of the checks found.

    Attributes:
        problems: Errors, sorted; any one makes the dataset unusable.
        warnings: Oddities that do not block training, sorted.
        n_tiles: Tile ids seen (metadata rows and raster files together).
    """

    problems: list[Problem]
    warnings: list[Problem]
    n_tiles: int

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class _Row:
    line: int
    train_class: str
    uids: str


@dataclass
class _TileResult:
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    # (relative path, rounded (x, y) pixel size) of every file that opened, for the cross-tile check
    pixel_sizes: list[tuple[str, tuple[float, float]]] = field(default_factory=list)
    # (relative path, (height, width)) of the tile's first file that opened, for the cross-tile size check
    tile_shapes: list[tuple[str, tuple[int, int]]] = field(default_factory=list)


def check_dataset(root: Path, *, progress: bool = False, workers: int = 1, on_tile: TileCallback | None = None) -> list[Problem]:
    """Run every data check on a dataset folder and return all problems found.

    Args:
        root: The dataset folder (``PLANET-RGB/``, ``EXTRA/``, ``labels/``, ``metadata.csv``,
            ``splits.yaml``, ``version.json``).
        progress: Show progress over tiles (a bar on a terminal, a log line every 30 s otherwise).
        workers: Threads reading tiles; GDAL releases the GIL while decoding, so a few threads
            help on a real dataset.
        on_tile: Called as ``on_tile(tile_id, {"rgb": ..., "extra": ..., "label": ...})`` with the
            decoded bands of every tile whose three files passed their checks (from the reading
            thread), so a caller can use the pixels without decoding them again.

    Returns:
        The problems, sorted by file then reason; empty when the dataset is valid. Warnings are
        not included (see :func:`run_checks`).
    """
    return run_checks(root, progress=progress, workers=workers, on_tile=on_tile).problems


def run_checks(root: Path, *, progress: bool = False, workers: int = 1, on_tile: TileCallback | None = None) -> CheckResult:
    """Like :func:`check_dataset`, but also return warnings and the number of tiles seen."""
    root = Path(root)
    if not root.is_dir():
        return CheckResult([Problem(str(root), "dataset folder does not exist")], [], 0)
    problems: list[Problem] = []
    warnings: list[Problem] = []

    splits = _check_splits(root, problems, warnings)
    _check_version(root, problems)
    rows, region_tiles = _check_metadata(root, problems, warnings)
    files = {kind: _list_folder(root, spec.folder, problems, warnings) for kind, spec in KINDS.items()}

    if rows is not None:
        _check_rows_against_files(rows, files, problems)
        if splits is not None:
            _check_regions(splits, region_tiles, problems, warnings)

    tile_ids = sorted(set(rows or ()).union(*files.values()))
    jobs = (
        (root, tile_id, {kind: tile_id in files[kind] for kind in KINDS}, (rows or {}).get(tile_id), on_tile)
        for tile_id in tile_ids
    )
    sizes: dict[tuple[float, float], list[str]] = defaultdict(list)
    shapes: dict[tuple[int, int], list[str]] = defaultdict(list)
    for result in _map(_check_tile_job, jobs, workers, total=len(tile_ids), progress=progress):
        problems.extend(result.problems)
        warnings.extend(result.warnings)
        for path, size in result.pixel_sizes:
            sizes[size].append(path)
        for path, shape in result.tile_shapes:
            shapes[shape].append(path)
    _check_pixel_size_consistency(sizes, problems)
    _check_tile_shape_consistency(shapes, problems)

    log.debug("checked %d tiles: %d problems, %d warnings", len(tile_ids), len(problems), len(warnings))
    return CheckResult(sorted(set(problems)), sorted(set(warnings)), len(tile_ids))


def format_report(problems: Iterable[Problem], *, warnings: Iterable[Problem] = (), n_tiles: int | None = None) -> str:
    """Render problems (and warnings) as ``path: reason`` lines followed by a summary line.

    Args:
        problems: Errors to list.
        warnings: Warnings to list after the errors, marked ``warning:``.
        n_tiles: Tiles checked, for the summary line.

    Returns:
        The report text, ending with ``OK: N tiles checked`` when there are no problems.
    """
    problems, warnings = sorted(problems), sorted(warnings)
    lines = [f"{p.path}: {p.reason}" for p in problems]
    lines += [f"{w.path}: warning: {w.reason}" for w in warnings]
    tiles = f"{n_tiles} tiles checked" if n_tiles is not None else "dataset checked"
    n_warn = f", {len(warnings)} warning{'s' * (len(warnings) != 1)}" if warnings else ""
    if problems:
        n_files = len({p.path for p in problems})
        lines.append(
            f"FAILED: {len(problems)} problem{'s' * (len(problems) != 1)} in {n_files} "
            f"file{'s' * (n_files != 1)} ({tiles}{n_warn})"
        )
    else:
        lines.append(f"OK: {tiles}{n_warn}")
    return "\n".join(lines)


# --- dataset-level files ------------------------------------------------------------------------


def _check_splits(root: Path, problems: list[Problem], warnings: list[Problem]) -> dict[str, list[str]] | None:
    """Validate splits.yaml; return {split: regions} or None when it cannot be used."""
    path = root / SPLITS_FILE
    if not path.is_file():
        problems.append(Problem(SPLITS_FILE, "missing (expected {train: [regions], val: [...], test: [...]})"))
        return None
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        problems.append(Problem(SPLITS_FILE, f"not valid YAML: {_one_line(e)}"))
        return None
    if not isinstance(data, dict):
        reason = f"expected a mapping with keys {', '.join(SPLIT_NAMES)}, got {type(data).__name__}"
        problems.append(Problem(SPLITS_FILE, reason))
        return None
    splits: dict[str, list[str]] = {}
    for name in SPLIT_NAMES:
        if name not in data:
            problems.append(Problem(SPLITS_FILE, f"missing key {name!r} (expected keys {', '.join(SPLIT_NAMES)})"))
            continue
        regions = data[name] if data[name] is not None else []  # `val:` with nothing after it
        if not isinstance(regions, list) or not all(isinstance(r, str) for r in regions):
            problems.append(Problem(SPLITS_FILE, f"{name!r} must be a list of region names, got {regions!r}"))
            continue
        for region, n in Counter(regions).items():
            if n > 1:
                warnings.append(Problem(SPLITS_FILE, f"region {region!r} is listed {n} times in {name!r}"))
        splits[name] = regions
    unknown = sorted(str(k) for k in data if k not in SPLIT_NAMES)
    if unknown:
        problems.append(Problem(SPLITS_FILE, f"unknown keys {unknown} (expected keys {', '.join(SPLIT_NAMES)})"))
    in_splits: dict[str, list[str]] = defaultdict(list)
    for name, regions in splits.items():
        for region in dict.fromkeys(regions):
            in_splits[region].append(name)
    for region, names in sorted(in_splits.items()):
        if len(names) > 1:
            problems.append(
                Problem(
                    SPLITS_FILE,
                    f"region {region!r} is in several splits ({', '.join(names)}); "
                    "a region must be in one split only (spatial blocking)",
                )
            )
    return splits


def _check_version(root: Path, problems: list[Problem]) -> None:
    path = root / VERSION_FILE
    if not path.is_file():
        problems.append(Problem(VERSION_FILE, 'missing (expected {"dataset_version": "2.0", ...})'))
        return
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        problems.append(Problem(VERSION_FILE, f"not valid JSON: {_one_line(e)}"))
        return
    version = data.get("dataset_version") if isinstance(data, dict) else None
    if not isinstance(version, str) or not version:
        problems.append(Problem(VERSION_FILE, f'no "dataset_version" string (got {version!r})'))


def _check_metadata(
    root: Path, problems: list[Problem], warnings: list[Problem]
) -> tuple[dict[str, _Row] | None, dict[str, list[int]]]:
    """Stream metadata.csv. Return ({tile_id: row summary} or None, {region: [row lines]})."""
    region_tiles: dict[str, list[int]] = defaultdict(list)
    path = root / METADATA_FILE
    if not path.is_file():
        problems.append(Problem(METADATA_FILE, f"missing (expected columns {', '.join(METADATA_COLUMNS)})"))
        return None, region_tiles
    rows: dict[str, _Row] = {}
    not_utf8 = utf8_problem(path)
    if not_utf8 is not None:
        problems.append(Problem(METADATA_FILE, not_utf8))
        return None, region_tiles
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
            if header is None:
                problems.append(Problem(METADATA_FILE, "empty file (no header row)"))
                return None, region_tiles
            columns = [c.strip() for c in header]
            missing = [c for c in METADATA_COLUMNS if c not in columns]
            unexpected = [c for c in columns if c not in METADATA_COLUMNS]
            duplicated = sorted(c for c, n in Counter(columns).items() if n > 1)
            # Readers look columns up by name, so their order is free; their set is not.
            if missing or unexpected or duplicated:
                detail = "; ".join(
                    part
                    for part in (
                        f"missing {missing}" if missing else "",
                        f"unexpected {unexpected}" if unexpected else "",
                        f"duplicated {duplicated}" if duplicated else "",
                    )
                    if part
                )
                problems.append(Problem(METADATA_FILE, f"columns must be exactly {', '.join(METADATA_COLUMNS)}: {detail}"))
            if "tile_id" not in columns or duplicated:
                return None, region_tiles  # rows cannot be matched to files
            index = {c: columns.index(c) for c in METADATA_COLUMNS if c in columns}
            for values in reader:
                line = reader.line_num
                if not any(v.strip() for v in values):
                    continue  # a blank line, e.g. at the end of a hand-edited file
                _check_row(values, line, len(columns), index, rows, region_tiles, problems, warnings)
        except (csv.Error, UnicodeDecodeError) as e:
            problems.append(Problem(METADATA_FILE, f"unreadable CSV near line {reader.line_num}: {_one_line(e)}"))
            return None, region_tiles
    if not rows:
        problems.append(Problem(METADATA_FILE, "no tile rows"))
    return rows, region_tiles


def _check_row(
    values: list[str],
    line: int,
    n_columns: int,
    index: dict[str, int],
    rows: dict[str, _Row],
    region_tiles: dict[str, list[int]],
    problems: list[Problem],
    warnings: list[Problem],
) -> None:
    where = f"row at line {line}"
    if len(values) != n_columns:
        problems.append(Problem(METADATA_FILE, f"{where} has {len(values)} fields, the header has {n_columns}"))
        return

    def get(column: str) -> str | None:
        return values[index[column]].strip() if column in index else None

    tile_id = get("tile_id") or ""
    if not tile_id:
        problems.append(Problem(METADATA_FILE, f"{where} has an empty tile_id"))
        return
    where = f"{where} (tile_id {tile_id!r})"
    if tile_id in rows:
        problems.append(Problem(METADATA_FILE, f"duplicate tile_id {tile_id!r} at lines {rows[tile_id].line} and {line}"))
        return
    train_class = get("TrainClass")
    if train_class is not None and train_class not in (POSITIVE, NEGATIVE):
        problems.append(Problem(METADATA_FILE, f"{where}: TrainClass {train_class!r} is not {POSITIVE!r} or {NEGATIVE!r}"))
    for column, limit in (("centroid_lat", 90.0), ("centroid_lon", 180.0)):
        text = get(column)
        if text is None:
            continue
        try:
            value = float(text)
        except ValueError:
            problems.append(Problem(METADATA_FILE, f"{where}: {column} {text!r} is not a number"))
            continue
        if not -limit <= value <= limit:  # also rejects NaN
            problems.append(Problem(METADATA_FILE, f"{where}: {column} {value} is outside [-{limit:g}, {limit:g}]"))
    region = get("RegionName")
    if region is not None:
        if region:
            region_tiles[region].append(line)
        else:
            problems.append(Problem(METADATA_FILE, f"{where} has an empty RegionName"))
    uids = get("UIDs") or ""
    if train_class == POSITIVE and not uids:
        warnings.append(Problem(METADATA_FILE, f"{where}: positive tile with empty UIDs"))
    elif train_class == NEGATIVE and uids:
        warnings.append(Problem(METADATA_FILE, f"{where}: negative tile lists UIDs {uids!r}"))
    rows[tile_id] = _Row(line, train_class or "", uids)


def _list_folder(root: Path, folder: str, problems: list[Problem], warnings: list[Problem]) -> set[str]:
    """Tile ids of the ``*.tif`` files in one raster folder (one directory scan, no stat per file)."""
    path = root / folder
    if not path.is_dir():
        problems.append(Problem(folder, "missing folder"))
        return set()
    ids = set()
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.name.endswith(".tif") and not entry.is_dir():
                ids.add(entry.name[: -len(".tif")])
            else:
                warnings.append(Problem(f"{folder}/{entry.name}", "unexpected entry (the folder holds only <tile_id>.tif files)"))
    return ids


def _check_rows_against_files(rows: dict[str, _Row], files: dict[str, set[str]], problems: list[Problem]) -> None:
    for kind, spec in KINDS.items():
        for tile_id in sorted(rows.keys() - files[kind]):
            problems.append(Problem(f"{spec.folder}/{tile_id}.tif", f"missing file for {METADATA_FILE} row at line {rows[tile_id].line}"))
        for tile_id in sorted(files[kind] - rows.keys()):
            problems.append(Problem(f"{spec.folder}/{tile_id}.tif", f"no {METADATA_FILE} row for tile_id {tile_id!r}"))


def _check_regions(
    splits: dict[str, list[str]], region_tiles: dict[str, list[int]], problems: list[Problem], warnings: list[Problem]
) -> None:
    listed = {region for regions in splits.values() for region in regions}
    for region, lines in sorted(region_tiles.items()):
        if region not in listed:
            problems.append(
                Problem(METADATA_FILE, f"region {region!r} ({len(lines)} tiles, first at line {lines[0]}) is in no split of {SPLITS_FILE}")
            )
    for name, regions in splits.items():
        for region in dict.fromkeys(regions):
            if region not in region_tiles:
                warnings.append(Problem(SPLITS_FILE, f"region {region!r} in split {name!r} has no tiles in {METADATA_FILE}"))


def _check_pixel_size_consistency(sizes: dict[tuple[float, float], list[str]], problems: list[Problem]) -> None:
    """Report every file whose pixel size differs from the dataset's most common one."""
    if len(sizes) <= 1:
        return
    # Ties go to the smaller size so that the report is deterministic.
    common = max(sorted(sizes), key=lambda s: len(sizes[s]))
    for size, paths in sizes.items():
        if size == common:
            continue
        for path in paths:
            problems.append(
                Problem(
                    path,
                    f"pixel size {_fmt_size(size)} m differs from the dataset's most common "
                    f"{_fmt_size(common)} m ({len(sizes[common])} files)",
                )
            )


def _check_tile_shape_consistency(shapes: dict[tuple[int, int], list[str]], problems: list[Problem]) -> None:
    """Report every file whose size in pixels differs from the dataset's most common one: a batch
    stacks tiles of one size, so a 96 px tile among 64 px ones would stop training mid-epoch."""
    if len(shapes) <= 1:
        return
    common = max(sorted(shapes), key=lambda s: len(shapes[s]))  # ties to the smaller: deterministic
    for shape, paths in shapes.items():
        if shape == common:
            continue
        for path in paths:
            problems.append(Problem(path, f"tile size {shape[0]}x{shape[1]} px differs from the dataset's most common "
                                          f"{common[0]}x{common[1]} px ({len(shapes[common])} tiles)"))


# --- one tile -----------------------------------------------------------------------------------


def _check_tile_job(job: tuple[Path, str, dict[str, bool], _Row | None, TileCallback | None]) -> _TileResult:
    # One GDAL environment per tile instead of one per open; and no directory listing on open:
    # GDAL otherwise scans the folder (25k files in the real dataset) for sidecar files that
    # this format never has.
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
        return _check_tile(*job)


def _check_tile(root: Path, tile_id: str, present: dict[str, bool], row: _Row | None,
                on_tile: TileCallback | None = None) -> _TileResult:
    """Open each of a tile's files once, read its pixels, and check it alone and against the others."""
    out = _TileResult()
    decoded: dict[str, np.ndarray] = {}
    grids: dict[str, tuple[str, tuple[int, int], Any]] = {}  # kind -> (path, (h, w), transform)
    rts_pixels: int | None = None
    for kind, spec in KINDS.items():
        if not present[kind]:
            continue
        rel = f"{spec.folder}/{tile_id}.tif"
        try:
            with rasterio.open(root / rel) as src:
                # A tile is at most a few MiB (512 x 512 x 4 float32 bands), so reading it whole is
                # bounded memory and one decode call; blocks would only add per-call overhead.
                pixels = src.read()
                header = _Header(src.driver, src.crs, tuple(src.dtypes), src.count, src.compression, src.transform)
        except (RasterioError, OSError) as e:  # rasterio's read errors are OSErrors too
            # Only this problem: the header of a truncated file is garbage too (lost geo tags
            # read as "no CRS"), and reporting those would hide the cause.
            out.problems.append(Problem(rel, f"unreadable GeoTIFF (corrupt or truncated): {_gdal_message(e, root)}"))
            continue
        _check_header(header, rel, spec, out)
        grids[kind] = (rel, pixels.shape[1:], header.transform)
        decoded[kind] = pixels
        if kind == "rgb":
            _check_rgb_values(pixels, rel, out)
        elif kind == "extra":
            _check_extra_values(pixels, rel, out)
        else:
            rts_pixels = _check_label_values(pixels, rel, out)

    ref = next(iter(grids.values()), None)
    if ref is not None:  # the tile's size is its first file's; the files' sizes against it are checked below
        out.tile_shapes.append((ref[0], tuple(int(n) for n in ref[1])))
    for kind, (rel, shape, transform) in grids.items():
        if ref is None or rel == ref[0]:
            continue
        if shape != ref[1]:
            out.problems.append(Problem(rel, f"shape {shape[0]}x{shape[1]} differs from {ref[0]} ({ref[1][0]}x{ref[1][1]})"))
        if not transform.almost_equals(ref[2], precision=1e-6):
            out.problems.append(Problem(rel, f"transform {_fmt_transform(transform)} differs from {ref[0]} {_fmt_transform(ref[2])}"))

    if row is not None and rts_pixels is not None:
        label_rel = grids["label"][0]
        if row.train_class == POSITIVE and rts_pixels == 0:
            reason = f"positive tile ({METADATA_FILE} line {row.line}) has no RTS pixels (label {RTS})"
            out.problems.append(Problem(label_rel, reason))
        elif row.train_class == NEGATIVE and rts_pixels > 0:
            reason = f"negative tile ({METADATA_FILE} line {row.line}) has {rts_pixels} RTS pixels (label {RTS})"
            out.problems.append(Problem(label_rel, reason))
    if on_tile is not None and not out.problems and decoded.keys() == KINDS.keys():
        on_tile(tile_id, decoded)
    return out


@dataclass(frozen=True)
class _Header:
    driver: str
    crs: Any
    dtypes: tuple[str, ...]
    count: int
    compression: Any
    transform: Any


def _check_header(src: _Header, rel: str, spec: _Kind, out: _TileResult) -> None:
    if src.driver != "GTiff":
        out.problems.append(Problem(rel, f"format {src.driver}, expected GeoTIFF"))
    if src.crs is None:
        out.problems.append(Problem(rel, f"no CRS, expected {CRS}"))
    elif src.crs.to_string() != CRS and src.crs.to_epsg() != int(CRS.split(":")[1]):
        out.problems.append(Problem(rel, f"CRS {src.crs.to_string()}, expected {CRS}"))
    dtypes = sorted(set(src.dtypes))
    if dtypes != [spec.dtype]:
        out.problems.append(Problem(rel, f"dtype {'/'.join(dtypes)}, expected {spec.dtype}"))
    if src.count != spec.count:
        out.problems.append(Problem(rel, f"{src.count} bands, expected {spec.count}"))
    compression = src.compression.name.upper() if src.compression is not None else "NONE"
    if compression != "LZW":
        out.problems.append(Problem(rel, f"compression {compression}, expected LZW"))
    t = src.transform
    if t.b != 0 or t.d != 0:
        out.problems.append(Problem(rel, f"rotated or sheared grid {_fmt_transform(t)}, expected north-up"))
    size = (round(abs(t.a), _PIXEL_SIZE_DECIMALS), round(abs(t.e), _PIXEL_SIZE_DECIMALS))
    if any(abs(s - PIXEL_SIZE_M) > PIXEL_SIZE_TOLERANCE_M for s in size):
        out.problems.append(
            Problem(rel, f"pixel size {_fmt_size(size)} m, expected {PIXEL_SIZE_M:g} m (+/- {PIXEL_SIZE_TOLERANCE_M:g})")
        )
    out.pixel_sizes.append((rel, size))


def _check_rgb_values(pixels: np.ndarray, rel: str, out: _TileResult) -> None:
    # uint8 RGB is within 0-255 by construction, so the range check of the format only bites on
    # a file of the wrong dtype (already reported), where it says how far off the values are.
    if pixels.dtype == np.uint8:
        return
    finite = pixels[np.isfinite(pixels)] if np.issubdtype(pixels.dtype, np.floating) else pixels
    if finite.size and (finite.min() < 0 or finite.max() > 255):
        out.problems.append(Problem(rel, f"RGB values {finite.min()}..{finite.max()} outside 0-255"))


def _check_extra_values(pixels: np.ndarray, rel: str, out: _TileResult) -> None:
    if not np.issubdtype(pixels.dtype, np.floating):
        return  # integers hold no NaN; the dtype problem is reported by the header check
    n_bands = pixels.shape[0]
    names = EXTRA_CHANNELS if n_bands == len(EXTRA_CHANNELS) else tuple(f"band {i + 1}" for i in range(n_bands))
    parts = []
    for name, band in zip(names, pixels):
        n_nan = int(np.isnan(band).sum())
        n_inf = int(np.isinf(band).sum())
        if n_nan or n_inf:
            parts.append(f"{name} {n_nan} NaN, {n_inf} infinite")
    if parts:
        out.problems.append(Problem(rel, f"non-finite EXTRA pixels: {'; '.join(parts)}"))


def _check_label_values(pixels: np.ndarray, rel: str, out: _TileResult) -> int:
    """Report label values outside {0, 1, 255}; return the number of RTS pixels."""
    if pixels.dtype == np.uint8:
        counts = np.bincount(pixels.ravel(), minlength=256)  # one pass, no sort
        values = np.flatnonzero(counts)
        counts = counts[values]
    else:
        values, counts = np.unique(pixels, return_counts=True)
    bad = [(v, int(n)) for v, n in zip(values.tolist(), counts) if v not in LABEL_VALUES]
    for value, n in bad:
        shown = int(value) if float(value).is_integer() else value
        out.problems.append(Problem(rel, f"label value {shown} ({n} px), expected only 0, 1, {IGNORE}"))
    return int(sum(n for v, n in zip(values.tolist(), counts) if v == RTS))


# --- helpers ------------------------------------------------------------------------------------


def _map(fn: Any, jobs: Iterable[Any], workers: int, *, total: int, progress: bool) -> Iterator[Any]:
    """``map`` over tiles in order, on ``workers`` threads, with an optional progress bar."""
    if workers > 1:
        pool = ThreadPoolExecutor(max_workers=workers)
        results: Iterable[Any] = pool.map(fn, jobs)
    else:
        pool, results = None, map(fn, jobs)
    try:
        if progress:
            from rts.logs import progress as show_progress

            results = show_progress(results, total=total, desc="data checks", unit="tile")
        yield from results
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _gdal_message(error: BaseException, root: Path) -> str:
    # rasterio raises a generic "Read failed. See previous exception" whose cause holds GDAL's
    # precise message ("TIFFReadEncodedStrip() failed"); show that, without the dataset root
    # that the problem's path already gives.
    cause = error.__cause__ if error.__cause__ is not None else error
    return _one_line(cause).replace(f"{root}{os.sep}", "")


def _one_line(error: object) -> str:
    return " ".join(str(error).split())


def _fmt_size(size: tuple[float, float]) -> str:
    return f"{size[0]:g}" if size[0] == size[1] else f"{size[0]:g} x {size[1]:g}"


def _fmt_transform(t: Any) -> str:
    return f"({t.a:g}, {t.b:g}, {t.c:.3f}, {t.d:g}, {t.e:g}, {t.f:.3f})"
