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

A folder holding a sharded job (``OUT/.job/``, ``rts predict --shard``) is merged as its shards:
the job must be complete (every shard finished without errors) and unmixed (every shard and every
output of the folder belongs to the job), else one line says which shards to resubmit or what does
not belong. A merge writes its files atomically and records them in ``OUT/.work/<name>/merge.json``,
so an interrupted merge re-run writes only what is missing.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
from affine import Affine

from rts.errors import DataError
from rts.inference.job import FINISHED, JOB_DIR, PREEMPTED, array_spec, job_status, read_job, shard_run_log
from rts.inference.outputs import MASK_NODATA, PROB_NODATA, dissolve, finalize, read_gpkg, write_cog, write_gpkg
from rts.inference.predict import RUN_LOG, output_paths
from rts.io import write_json_atomic

log = logging.getLogger(__name__)

_SAME = ("normalization_stats_sha256", "scales", "tta", "threshold", "tile_size", "stride")


def job_logs(folder: Path) -> tuple[dict, list[dict]]:
    """The manifest and shard run logs of a complete, unmixed job in ``folder``.

    Raises:
        DataError: shards not finished (the line lists them and the ``--array`` to resubmit),
            shards of another job, a plain run's log, or outputs that are no region of the job.
    """
    job = read_job(folder)
    status = job_status(folder)
    if status["mixed"]:
        raise DataError(f"{folder}: shard(s) {','.join(map(str, status['mixed']))} belong to another job than {folder / JOB_DIR / 'job.json'}; "
                        "a folder holds one job: predict the other job into a new --out")
    if not status["complete"]:
        left = [s for s in status["shards"] if s["state"] != FINISHED]
        how = "; ".join(f"{s['index']}: {s['state']}" + (f" ({s['error']})" if s.get("error") else "") for s in left[:5])
        waiting = [s["index"] for s in left if s["state"] not in (FINISHED, PREEMPTED) and s["index"] not in status["resubmit"]]
        again = f"resubmit --array={array_spec(status['resubmit'])}" if status["resubmit"] else ""
        wait = f"wait for running shard(s) {','.join(map(str, waiting))}" if waiting else ""
        raise DataError(f"{folder}: job incomplete, {len(left)} of {status['count']} shard(s) not finished ({how}); "
                        f"{' and '.join(x for x in (again, wait) if x)}, then merge again (`rts predict status {folder}`)")
    if (folder / RUN_LOG).exists():
        raise DataError(f"{folder / RUN_LOG}: an unsharded run's log in the folder of job {job['job_id']}; the folder mixes a plain "
                        "run with a job: merge the job from a folder of its own")
    names = {r["region"] for regions in job["shards"] for r in regions}
    stray = sorted(p.name for p in folder.glob("*.prob.tif") if p.name.removesuffix(".prob.tif") not in names)
    if stray:
        raise DataError(f"{folder / stray[0]}: not a region of job {job['job_id']} ({len(stray)} such output(s)); the folder mixes "
                        "outputs of other runs with the job: move them out, then merge again")
    logs = []
    for k in range(job["count"]):
        f = shard_run_log(folder, k)
        if not f.exists():
            raise DataError(f"{f}: missing, though shard {k} is marked finished; run the shard again (--shard {k}/{job['count']})")
        logs.append(json.loads(f.read_text()))
    return job, logs


def _chunk_logs(chunk_dirs: list[Path]) -> list[dict]:
    logs, owners = [], []
    for d in chunk_dirs:
        if read_job(d) is not None:
            shard_logs = job_logs(d)[1]
            logs += shard_logs
            owners += [d] * len(shard_logs)
            continue
        f = d / RUN_LOG
        if not f.exists():
            raise ValueError(f"{d}: no {RUN_LOG}; is this the output folder of an `rts predict` chunk?")
        logs.append(json.loads(f.read_text()))
        owners.append(d)
    for key in _SAME:
        values = {json.dumps(lg.get(key)) for lg in logs}
        if len(values) > 1:
            detail = ", ".join(f"{d}: {lg.get(key)}" for d, lg in zip(owners, logs))
            raise ValueError(f"chunks disagree on {key} ({detail}); merge only chunks of one predict configuration")
    return logs


def default_name(chunk_dirs: list[Path]) -> str:
    """The merged stem: a job of one tile list keeps the list's stem; anything else is ``merged``."""
    stems = set()
    for d in chunk_dirs:
        job = read_job(d)
        if job is None:
            return "merged"
        for regions in job["shards"]:
            for r in regions:
                stems.add(Path(r["source"]).stem if r["kind"] == "tiles" else None)
    return stems.pop() if len(stems) == 1 and None not in stems else "merged"


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


def merge_chunks(out_dir: str | os.PathLike, chunk_dirs: list[str | os.PathLike], *, name: str | None = None,
                 blocksize: int = 512) -> dict:
    """Mosaic chunk outputs into ``out_dir/<name>.{prob.tif,mask.tif,gpkg}`` and write a merged run log.

    A chunk folder may be the ``--out`` of a sharded job: its shards are found by themselves
    (:func:`job_logs`). ``name`` defaults to the tile list's stem for a job of one tile list, else
    ``merged``.

    Raises:
        ValueError: a chunk folder without outputs or run log, chunks with different settings, or
            rasters that do not share one pixel grid (each message names the folder or file);
            :class:`rts.errors.DataError` for an incomplete or mixed job.
    """
    import rasterio

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    chunk_dirs = [Path(d) for d in chunk_dirs]
    if not chunk_dirs:
        raise ValueError("no chunk folders to merge")
    logs = _chunk_logs(chunk_dirs)
    name = name or default_name(chunk_dirs)
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
    paths = output_paths(out_dir, name)
    work = out_dir / ".work" / name
    # resumable: the inputs' signature and the outputs already written under it
    signature = [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in [*probs, *polys]]
    progress_file = work / "merge.json"
    progress = json.loads(progress_file.read_text()) if progress_file.exists() else {}
    if progress.get("signature") != signature:
        progress = {"signature": signature, "done": []}
    done = {k for k in progress["done"] if paths[k].exists()}

    def mark(key: str) -> None:
        progress["done"] = sorted(done | {key})
        done.add(key)
        write_json_atomic(progress_file, progress)

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

        common = dict(height=height, width=width, transform=transform, blocksize=blocksize, work_dir=work)
        if "prob" not in done:
            write_cog(paths["prob"], prob_block, dtype="float32", nodata=PROB_NODATA, resampling="AVERAGE", **common)
            mark("prob")
        if "mask" not in done:
            write_cog(paths["mask"], mask_block, dtype="uint8", nodata=MASK_NODATA, resampling="NEAREST", **common)
            mark("mask")
    finally:
        for h in handles:
            h[0].close()
    records = [rec for g in polys for rec in read_gpkg(g)]
    columns = finalize(dissolve(records))
    if "polygons" not in done:
        write_gpkg(paths["polygons"], columns)
        mark("polygons")
    keys = ("tiles_processed", "tiles_skipped_nodata", "tiles_error", "tiles_with_detections")
    merged = {
        **{k: logs[0].get(k) for k in ("model", *_SAME, "threshold_source")},
        "chunks": [str(d) for d in chunk_dirs],
        "jobs": [read_job(d)["job_id"] for d in chunk_dirs if read_job(d) is not None],
        **{k: sum(int(lg.get(k) or 0) for lg in logs) for k in keys},
        "rts_count": int(len(columns["rts_id"])), "polygon_parts_dissolved": len(records) - int(len(columns["rts_id"])),
        "total_rts_area_m2": float(columns["area_m2"].sum()),
        "errors": [e for lg in logs for e in lg.get("errors", [])],
        "outputs": {k: str(v) for k, v in paths.items()},
        "wall_time_s": round(time.perf_counter() - t0, 3),
    }
    write_json_atomic(out_dir / RUN_LOG, merged)
    return merged
