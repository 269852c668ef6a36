"""Rejected candidates as hard-negative tiles of a training dataset (``data-format.md``).

Each rejected candidate becomes one ``Negative`` tile centred on it, the size of the dataset's
tiles, cut from the imagery the prediction read (RGB and EXTRA warped onto the probability grid,
EPSG:3413, 3 m). Its label is 0, except 255 (ignore) over every other candidate in the window that
was not rejected (confirmed, unsure or not reviewed): a negative tile must hold no RTS, and these
may be some. Tiles are named ``hn-<candidate id>``; one that exists already is left as it is, so a
second import of the same verdicts adds nothing.

The RGB, EXTRA and label files are written first, then the ``metadata.csv`` rows, then
``splits.yaml`` (a region in no split is added to ``train``) and last ``version.json``, whose
``dataset_version`` gains a ``+hn<N>`` suffix and whose ``hard_negatives`` list records each import:
the dataset's content changes, so ``dvc add`` records a new version and the prepare stage re-runs.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from pathlib import Path

import numpy as np
import yaml

from rts.errors import DataError
from rts.io import CRS, IGNORE, METADATA_COLUMNS, NEGATIVE, RGB_DIR, tile_paths, write_geotiff, write_text_atomic
from rts.review import candidates as C

log = logging.getLogger(__name__)


def dataset_tile_size(root: Path) -> int:
    """The tile size of the dataset (from its first RGB tile)."""
    import rasterio

    tiles = sorted((root / RGB_DIR).glob("*.tif"))
    if not tiles:
        raise DataError(f"{root / RGB_DIR}: no tiles; --dataset must be a dataset folder in the project's format (rts check)")
    with rasterio.open(tiles[0]) as src:
        return int(src.width)


def _bump(version: str) -> str:
    m = re.fullmatch(r"(.*)\+hn(\d+)", version)
    return f"{m.group(1)}+hn{int(m.group(2)) + 1}" if m else f"{version}+hn1"


def add_hard_negatives(root: str | Path, rejected: list[dict], all_candidates: list[dict], sources: dict[str, dict], *,
                       review_id: str) -> dict:
    """Write the hard-negative tiles of ``rejected`` candidates into dataset ``root``.

    Args:
        root: dataset folder (``rts check`` format); it must exist.
        rejected: candidates a reviewer marked "not RTS".
        all_candidates: every candidate of the review (others in a window are ignored, not negative).
        sources: ``candidates.json``'s ``sources`` (the imagery files per prediction region).
        review_id: recorded in ``version.json``.

    Returns:
        ``{"added": [tile ids], "skipped": [existing tile ids], "dataset_version": ...}``.
    """
    from rasterio.transform import xy
    from rasterio.warp import transform as warp_transform
    from rasterio.windows import Window, transform as win_transform

    root = Path(root)
    version_path, meta_path, splits_path = root / "version.json", root / "metadata.csv", root / "splits.yaml"
    for p in (version_path, meta_path, splits_path):
        if not p.is_file():
            raise DataError(f"{p}: missing; --dataset must be a dataset folder in the project's format (rts check)")
    size = dataset_tile_size(root)
    existing = {row["tile_id"] for row in csv.DictReader(io.StringIO(meta_path.read_text(encoding="utf-8")))}
    added, skipped, rows = [], [], []
    for name in sorted({c["source"] for c in rejected}):
        s = sources[name]
        if not s.get("extra"):
            raise DataError(f"{s['rgb']}: predicted without --extra, so a hard-negative tile of region {name} would have no "
                            "EXTRA bands, which the dataset format requires; re-run rts predict with --extra, or import "
                            "without --dataset")
        src = C.Source(name, s["rgb"], s["extra"], s["prob"], s["polygons"], tuple(s["rgb_bands"]))
        others = [c for c in all_candidates if c["source"] == name]
        rejected_ids = {c["id"] for c in rejected}
        with C.open_imagery(src) as im:
            for c in sorted((c for c in rejected if c["source"] == name), key=lambda c: c["id"]):
                tile_id = f"hn-{c['id']}"
                if tile_id in existing:
                    skipped.append(tile_id)
                    continue
                row0, col0 = im.window_at(c["x"], c["y"], size)
                win = im.read(row0, col0, size)
                t = win_transform(Window(col0, row0, size, size), im.transform)
                keep_out = [o["geometry"] for o in others if o["id"] not in rejected_ids]
                label = np.where(C.polygon_mask(keep_out, t, size), np.uint8(IGNORE), np.uint8(0))
                paths = tile_paths(root, tile_id)
                write_geotiff(paths["rgb"], win["rgb"], t)
                write_geotiff(paths["extra"], np.nan_to_num(win["extra"], nan=0.0).astype(np.float32), t)
                write_geotiff(paths["label"], label[None], t)
                cx, cy = xy(t, size / 2, size / 2, offset="ul")
                (lon,), (lat,) = warp_transform(CRS, "EPSG:4326", [cx], [cy])
                rows.append({"tile_id": tile_id, "centroid_lat": f"{lat:.6f}", "centroid_lon": f"{lon:.6f}",
                             "TrainClass": NEGATIVE, "RegionName": c["region"], "UIDs": ""})
                added.append(tile_id)
    version = json.loads(version_path.read_text())
    if rows:
        text = meta_path.read_text(encoding="utf-8")
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(METADATA_COLUMNS), lineterminator="\n")
        writer.writerows(rows)
        write_text_atomic(meta_path, text + ("" if text.endswith("\n") or not text else "\n") + buf.getvalue())
        splits = yaml.safe_load(splits_path.read_text()) or {}
        listed = {r for regions in splits.values() for r in (regions or [])}
        new_regions = sorted({r["RegionName"] for r in rows} - listed)
        if new_regions:
            splits["train"] = [*(splits.get("train") or []), *new_regions]
            write_text_atomic(splits_path, yaml.safe_dump(splits, sort_keys=False))
            log.info("splits.yaml: region(s) %s added to train", ", ".join(new_regions))
        for region in sorted({r["RegionName"] for r in rows} & listed):
            split = next(k for k, v in splits.items() if region in (v or []))
            if split != "train":
                log.warning("hard negatives of region %s go to the %s split (a region stays in one split)", region, split)
        version["dataset_version"] = _bump(str(version.get("dataset_version", "")))
        version.setdefault("hard_negatives", []).append({"review_id": review_id, "n_tiles": len(rows), "tile_ids": added})
        write_text_atomic(version_path, json.dumps(version, indent=2) + "\n")
    return {"added": added, "skipped": skipped, "dataset_version": version.get("dataset_version")}
