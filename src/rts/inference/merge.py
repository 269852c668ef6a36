"""``rts merge OUT CHUNK_DIR...``: mosaic the outputs of several ``rts predict`` chunks.

Each chunk folder holds the outputs of one ``rts predict --tiles CHUNK.csv --mosaic M`` run
(``*.prob.tif``, ``*.gpkg``, ``run_log.json``). The merge:

* checks that every chunk used the same model (normalisation hash), scales, TTA and threshold;
* mosaics the probability COGs onto their common grid (same CRS, pixel size and pixel alignment,
  which chunks of one tile list over one mosaic always share) by pixel-wise maximum, block by
  block, and re-derives the mask from it with the chunks' threshold;
* concatenates the polygons and dissolves those that share an edge (RTS cut by chunk borders):
  pixel-weighted ``mean_prob``, maximum ``max_prob`` with its ``detection_scale``, united
  ``tile_ids``, geometry measures recomputed.

Because chunks of one tile list run identical passes along their shared borders, the merged
probability equals that of a single run over the whole list.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
from affine import Affine

from rts.inference.outputs import MASK_NODATA, PROB_NODATA, dissolve, finalize, read_gpkg, write_cog, write_gpkg
from rts.inference.predict import RUN_LOG, output_paths
from rts.io import write_json_atomic

log = logging.getLogger(__name__)

_SAME = ("normalization_stats_sha256", "scales", "tta", "threshold", "tile_size", "stride")


def _chunk_logs(chunk_dirs: list[Path]) -> list[dict]:
    logs = []
    for d in chunk_dirs:
        f = d / RUN_LOG
        if not f.exists():
            raise ValueError(f"{d}: no {RUN_LOG}; is this the output folder of an `rts predict` chunk?")
        logs.append(json.loads(f.read_text()))
    for key in _SAME:
        values = {json.dumps(lg.get(key)) for lg in logs}
        if len(values) > 1:
            detail = ", ".join(f"{d}: {lg.get(key)}" for d, lg in zip(chunk_dirs, logs))
            raise ValueError(f"chunks disagree on {key} ({detail}); merge only chunks of one predict configuration")
    return logs


def _grid(probs: list[Path]) -> tuple[Affine, int, int, list[tuple[Path, int, int, int, int]]]:
    """Union grid of the probability rasters and each one's (path, row, col, height, width) in it."""
    import rasterio

    metas = []
    for p in probs:
        with rasterio.open(p) as src:
            metas.append((p, src.crs, src.transform, src.height, src.width))
    ref_crs, ref = metas[0][1], metas[0][2]
    for p, crs, t, _, _ in metas:
        if crs != ref_crs or (t.a, t.b, t.d, t.e) != (ref.a, ref.b, ref.d, ref.e):
            raise ValueError(f"{p}: CRS or pixel size differs from {metas[0][0]}; chunks must share one grid")
        off_c, off_r = (t.c - ref.c) / ref.a, (t.f - ref.f) / ref.e
        if abs(off_c - round(off_c)) > 1e-6 or abs(off_r - round(off_r)) > 1e-6:
            raise ValueError(f"{p}: pixels are not aligned with {metas[0][0]} (offset {off_c:.3f}, {off_r:.3f} px)")
    offs = [(p, round((t.f - ref.f) / ref.e), round((t.c - ref.c) / ref.a), h, w) for p, _, t, h, w in metas]
    top, left = min(o[1] for o in offs), min(o[2] for o in offs)
    bottom, right = max(o[1] + o[3] for o in offs), max(o[2] + o[4] for o in offs)
    placed = [(p, r - top, c - left, h, w) for p, r, c, h, w in offs]
    return ref @ Affine.translation(left, top), bottom - top, right - left, placed


def merge_chunks(out_dir: str | os.PathLike, chunk_dirs: list[str | os.PathLike], *, name: str = "merged", blocksize: int = 512) -> dict:
    """Mosaic chunk outputs into ``out_dir/<name>.{prob.tif,mask.tif,gpkg}`` and write a merged run log.

    Raises:
        ValueError: a chunk folder without outputs or run log, chunks with different settings, or
            rasters that do not share one pixel grid (each message names the folder or file).
    """
    import rasterio

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    chunk_dirs = [Path(d) for d in chunk_dirs]
    if not chunk_dirs:
        raise ValueError("no chunk folders to merge")
    logs = _chunk_logs(chunk_dirs)
    threshold = float(logs[0]["threshold"])
    probs, polys = [], []
    for d in chunk_dirs:
        found = sorted(d.glob("*.prob.tif"))
        if not found:
            raise ValueError(f"{d}: no *.prob.tif; the chunk did not finish (re-run its `rts predict`, it resumes)")
        for p in found:
            gpkg = p.with_name(p.name.removesuffix(".prob.tif") + ".gpkg")
            if not gpkg.exists():
                raise ValueError(f"{gpkg}: missing polygons beside {p.name}")
            probs.append(p)
            polys.append(gpkg)
    transform, height, width, placed = _grid(probs)
    handles = [(rasterio.open(p), r, c, h, w) for p, r, c, h, w in placed]
    try:
        def prob_block(r0, c0, h, w):
            out = np.full((h, w), PROB_NODATA, np.float32)
            for src, r, c, sh, sw in handles:
                a0, b0, a1, b1 = max(r0, r), max(c0, c), min(r0 + h, r + sh), min(c0 + w, c + sw)
                if a1 <= a0 or b1 <= b0:
                    continue
                v = src.read(1, window=((a0 - r, a1 - r), (b0 - c, b1 - c)))
                # nodata is -1, below every probability: a plain maximum keeps data over nodata
                np.maximum(out[a0 - r0 : a1 - r0, b0 - c0 : b1 - c0], v, out=out[a0 - r0 : a1 - r0, b0 - c0 : b1 - c0])
            return out

        def mask_block(r0, c0, h, w):
            p = prob_block(r0, c0, h, w)
            return np.where(p == PROB_NODATA, np.uint8(MASK_NODATA), (p >= threshold).astype(np.uint8))

        paths = output_paths(out_dir, name)
        work = out_dir / ".work" / name
        common = dict(height=height, width=width, transform=transform, blocksize=blocksize, work_dir=work)
        write_cog(paths["prob"], prob_block, dtype="float32", nodata=PROB_NODATA, resampling="AVERAGE", **common)
        write_cog(paths["mask"], mask_block, dtype="uint8", nodata=MASK_NODATA, resampling="NEAREST", **common)
    finally:
        for h in handles:
            h[0].close()
    records = [rec for g in polys for rec in read_gpkg(g)]
    columns = finalize(dissolve(records))
    write_gpkg(paths["polygons"], columns)
    keys = ("tiles_processed", "tiles_skipped_nodata", "tiles_error", "tiles_with_detections")
    merged = {
        **{k: logs[0].get(k) for k in ("model", *_SAME, "threshold_source")},
        "chunks": [str(d) for d in chunk_dirs],
        **{k: sum(int(lg.get(k) or 0) for lg in logs) for k in keys},
        "rts_count": int(len(columns["rts_id"])), "polygon_parts_dissolved": len(records) - int(len(columns["rts_id"])),
        "total_rts_area_m2": float(columns["area_m2"].sum()),
        "errors": [e for lg in logs for e in lg.get("errors", [])],
        "outputs": {k: str(v) for k, v in paths.items()},
        "wall_time_s": round(time.perf_counter() - t0, 3),
    }
    write_json_atomic(out_dir / RUN_LOG, merged)
    return merged
