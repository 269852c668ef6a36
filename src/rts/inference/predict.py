"""``rts predict``: RTS probability, mask and polygons over scenes or a tile list (docs/inference.md).

One *region* (a scene, or a tile list's bounding box over a mosaic) is processed at a time:

1. passes (``tile_size`` px, ``stride`` px apart) are read by DataLoader workers (``TileWindows``)
   while the model runs, batched on the device;
2. each pass's fused probability (TTA mean within a scale, max across scales, calibrated) is merged
   by pixel-wise maximum into a float32 ``np.memmap`` in ``OUT/.work/<name>/``, with a uint8 memmap
   holding ``1 + index`` of the winning scale (0 = no pass wrote the pixel yet / nodata);
3. finished passes are appended to ``manifest.jsonl`` only after the memmaps are flushed, so a
   killed run resumes from the manifest; the merge is idempotent (re-running a pass whose writes
   were partly flushed gives the same bytes);
4. when every pass is done, the COGs and GeoPackage are written block by block and renamed into
   place, and the memmaps are deleted (``--keep-work`` keeps them). Over several inputs, this
   finalize step runs on a background thread (``--finalize-workers``) while the next region's
   passes run, so the device does not wait for the writes of the previous scene.

The run log (``OUT/run_log.json``) is written at the end of every run.
"""

from __future__ import annotations

import fcntl
import functools
import json
import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from types import SimpleNamespace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rts.data.windows import crop_centre
from rts.errors import ConfigError, OutputError
from rts.inference.job import Preempted, ShardStatus, open_job, shard_run_log
from rts.inference.shard import ShardSpec, Unit, tile_row_units
from rts.inference.outputs import (
    MASK_NODATA,
    PROB_NODATA,
    dissolve,
    finalize,
    polygonize_block,
    windows,
    write_cog,
    write_gpkg,
)
from rts.inference.predictor import (
    CALIBRATION_FILE,
    MODEL_FILE,
    Predictor,
    load_predictor,
)
from rts.inference.scene import (
    TILE_ERROR,
    TILE_NODATA,
    TILE_OK,
    RGB_BANDS,
    Region,
    TileWindows,
    check_rgb_files,
    collate,
    fuse_scales,
    region_for_scene,
    region_for_tiles,
)
from rts.io import file_sha256, write_json_atomic
from rts.logs import bar
from rts.metrics import gt_components, match_objects, pred_components
from rts.susceptibility import TILE_SUSCEPTIBILITY, SusceptibilityFilter, polygon_stats

log = logging.getLogger(__name__)

WORK_DIR = ".work"
DONE_FILE = "done.json"  # in a region's work folder: its settings, threshold and run-log entry once outputs are written
RUN_LOG = "run_log.json"
KILL_ENV = "RTS_PREDICT_KILL_AFTER_TILES"  # test hook: SIGKILL itself after this many passes (before their manifest line)
DELAY_ENV = "RTS_PREDICT_BATCH_DELAY_S"  # test hook: sleep this long after recording each batch (a slow device)


def output_paths(out_dir: str | os.PathLike, name: str) -> dict[str, Path]:
    """The three outputs of region ``name``."""
    out = Path(out_dir)
    return {"prob": out / f"{name}.prob.tif", "mask": out / f"{name}.mask.tif", "polygons": out / f"{name}.gpkg"}


def check_threshold_range(threshold: float) -> float:
    """``--threshold``: a probability in [0, 1], else a :class:`ConfigError`."""
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"--threshold {threshold}: must be a probability in [0, 1]")
    return float(threshold)


def calibrated_threshold(model: str | os.PathLike, ratio: int = 500, level: str = "object") -> float:
    """The calibrated threshold of a model package for ``ratio`` and ``level``, read from its
    ``threshold_calibration.json`` alone, so that ``rts predict`` can refuse a package without one
    before it spends time loading the model.

    Raises:
        ConfigError: the package has no calibration file, no entry for ``ratio``, or calibration
            did not reach its target precision there; the message names the file and what to pass.
    """
    model = Path(model)
    if not model.is_dir():
        raise ConfigError(f"{model}: a bare model file has no calibrated threshold; pass --threshold P (a probability "
                          f"in [0, 1]), or give the package folder that holds {CALIBRATION_FILE}")
    path = model / CALIBRATION_FILE
    if not path.is_file():
        raise ConfigError(f"{path}: not found, so {model} has no calibrated threshold (an uncalibrated package, as the "
                          "train stage writes); pass --threshold P (a probability in [0, 1]), or calibrate it "
                          "(`dvc repro calibrate` writes the calibrated package models/rts-model)")
    try:
        thresholds = json.loads(path.read_text()).get("thresholds") or {}
    except (OSError, ValueError, AttributeError) as e:
        raise ConfigError(f"{path}: unreadable ({e}); re-run calibrate, or pass --threshold P") from None
    entry = (thresholds.get(str(ratio)) or {}).get(level)
    if entry is None:
        have = ", ".join(sorted(thresholds, key=lambda r: int(r) if r.isdigit() else 0)) or "none"
        raise ConfigError(f"{path}: no {level} threshold for --ratio {ratio} (calibrated ratios: {have}); "
                          "pass one of those as --ratio, or --threshold P")
    if entry.get("threshold") is None:
        best, at = entry.get("best_precision"), entry.get("best_precision_threshold")
        target = entry.get("target_precision")
        lower = (f", or re-run calibrate with a target it reaches: dvc exp run -S calibrate.target_precision={int(best * 100) / 100:g}"
                 if best else "")
        seen = f" (best precision {best:.3f}, at threshold {at:.3g})" if best is not None and at is not None else ""
        raise ConfigError(f"{path}: no 1:{ratio} {level} threshold: calibration did not reach calibrate.target_precision="
                          f"{target} on val-realistic{seen}; pass --threshold P (a probability in [0, 1]){lower}")
    return float(entry["threshold"])


def resolve_threshold(predictor: Predictor, threshold: float | None, ratio: int = 500, level: str = "object") -> tuple[float, str]:
    """The operating threshold and where it came from: ``threshold`` if given, else the calibrated one.

    Raises:
        ConfigError: ``threshold`` is not a probability, or there is none and the package has no
            calibrated threshold for ``ratio`` (``rts predict`` checks this before it loads the model:
            :func:`calibrated_threshold`).
    """
    if threshold is not None:
        return check_threshold_range(threshold), "--threshold"
    try:
        return predictor.threshold(ratio, level), f"calibrated 1:{ratio} {level}"
    except (KeyError, ValueError) as e:
        raise ConfigError(f"no threshold: {e.args[0]}; pass --threshold P (a probability in [0, 1])") from None


# ------------------------------------------------------------------------------ state on disk


class RegionLock:
    """An exclusive lock on a region's work folder for one run, from its first pass to its
    finished marker: two runs into one output folder would otherwise interleave their outputs (a
    mask at one threshold beside polygons and a run log at another, both runs exiting 0)."""

    def __init__(self, work: Path) -> None:
        work.mkdir(parents=True, exist_ok=True)
        self._file = open(work / ".lock", "w")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise OutputError(f"{work}: another rts predict is writing this region; wait for it to finish, "
                            "or predict into another --out folder") from None

    def release(self) -> None:
        if not self._file.closed:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()


class RegionState:
    """Accumulator memmaps and the manifest of finished passes of one region."""

    def __init__(self, work: Path, region: Region, settings: dict, threshold: float | None = None, *, rethreshold: bool = False):
        """``threshold``: the one this run writes its outputs at. An unfinished region begun at
        another one is refused like any other setting; ``rethreshold`` (a finished region whose
        accumulators ``--keep-work`` kept) takes the new one for all its outputs."""
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        settings_file = work / "settings.json"
        if settings_file.exists():
            saved = json.loads(settings_file.read_text())
            begun_at = saved.pop("threshold", None)  # None: a work folder of before the threshold was recorded
            if saved != settings:
                diff = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
                raise OutputError(f"{work}: unfinished outputs made with different settings ({', '.join(diff)}); "
                                 f"use a new output folder or delete {work} to start over")
            if threshold is not None and begun_at is not None and begun_at != threshold and not rethreshold:
                raise OutputError(f"{work}: unfinished outputs begun at threshold {begun_at:g}, not {threshold:g}; resume with "
                                  f"--threshold {begun_at:g} (with --keep-work a finished region can be re-thresholded), "
                                  f"or use a new output folder")
            if threshold is not None and begun_at != threshold:
                write_json_atomic(settings_file, {**settings, "threshold": threshold})
        else:
            write_json_atomic(settings_file, settings if threshold is None else {**settings, "threshold": threshold})
        shape = (region.height, region.width)
        missing = [name for name in ("prob.f32", "scale.u8") if not (work / name).exists()]
        self.manifest_path = work / "manifest.jsonl"
        self.done: dict[str, dict] = self._read_manifest()
        if self.done and missing:
            # never stand in empty accumulators for passes the manifest calls done: the outputs
            # written from them would be all nodata
            raise OutputError(f"{work}: {len(self.done)} finished passes but no {' or '.join(missing)}; the outputs of an earlier "
                            f"run may be complete (see {work / DONE_FILE}); delete {work} to predict this region again")
        self.prob = self._memmap(work / "prob.f32", np.float32, shape)
        self.scale = self._memmap(work / "scale.u8", np.uint8, shape)

    @staticmethod
    def _memmap(path: Path, dtype, shape) -> np.memmap:
        # a new file is zeros: 0 in the scale map means "no pass has written this pixel"
        allocate(path, int(np.dtype(dtype).itemsize * shape[0] * shape[1]))
        return np.memmap(path, dtype=dtype, mode="r+", shape=shape)

    def _read_manifest(self) -> dict[str, dict]:
        done: dict[str, dict] = {}
        if not self.manifest_path.exists():
            return done
        good = 0
        with open(self.manifest_path, "rb") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    break  # a line cut by a kill: everything after it is redone
                if not line.endswith(b"\n"):
                    break
                done[rec["tile"]] = rec
                good += len(line)
        with open(self.manifest_path, "r+b") as f:
            f.truncate(good)
        return done

    def record(self, entries: list[dict]) -> None:
        """Flush the accumulators, then append the passes as finished (in that order: see module doc)."""
        self.prob.flush()
        self.scale.flush()
        with open(self.manifest_path, "a") as f:
            f.write("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))
            f.flush()
            os.fsync(f.fileno())
        for e in entries:
            self.done[e["tile"]] = e

    def close(self, delete: bool) -> None:
        for m in (self.prob, self.scale):
            m.flush()
            mm = getattr(m, "_mmap", None)
            if mm is not None:
                mm.close()
        if delete:
            for name in ("prob.f32", "scale.u8"):
                (self.work / name).unlink(missing_ok=True)


def allocate(path: Path, size: int) -> None:
    """Give the accumulator file ``path`` all its ``size`` bytes on disk now (zeros where new).

    A sparse memmap that cannot grow when a pass writes into it kills the process with SIGBUS (exit
    135, no message); reserving the blocks first turns a full disk into one line naming the file.
    Where the filesystem cannot preallocate (some FUSE mounts), its free space is checked instead.

    Raises:
        OutputError: not enough space: names the file, the size and the free space.
    """
    import errno
    import shutil

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        have = os.fstat(fd).st_size
        try:
            os.posix_fallocate(fd, 0, size)
            return
        except OSError as e:
            if e.errno != errno.ENOSPC and e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            free = shutil.disk_usage(path.parent).free
            if e.errno == errno.ENOSPC or free < size - min(have, size):
                os.ftruncate(fd, have)  # leave a resumed run's file as it was
                raise OutputError(f"{path}: no space for the {_human(size)} accumulator ({_human(free)} free on {path.parent}); "
                                  "free space or predict into an --out on a larger disk (the run resumes)") from None
            os.ftruncate(fd, max(have, size))  # cannot preallocate here, but the space is there
    finally:
        os.close(fd)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit in ("B", "KiB") or n >= 100 else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def merge_pass(prob_acc: np.ndarray, scale_acc: np.ndarray, region: Region, row: int, col: int,
               prob: np.ndarray, scale_idx: np.ndarray, valid: np.ndarray) -> None:
    """Pixel-wise maximum of one pass (source origin ``row, col``) into the region accumulators.

    Ties take the newer pass's scale: re-running a pass is then a no-op on the bytes, which is what
    makes resume exact.
    """
    T = prob.shape[-1]
    r, c = row - region.row_off, col - region.col_off
    r0, c0, r1, c1 = max(r, 0), max(c, 0), min(r + T, region.height), min(c + T, region.width)
    if r1 <= r0 or c1 <= c0:
        return
    p = prob[r0 - r : r1 - r, c0 - c : c1 - c]
    s = scale_idx[r0 - r : r1 - r, c0 - c : c1 - c]
    v = valid[r0 - r : r1 - r, c0 - c : c1 - c].astype(bool)
    a, sc = prob_acc[r0:r1, c0:c1], scale_acc[r0:r1, c0:c1]
    upd = v & ((sc == 0) | (p >= a))
    a[upd] = p[upd]
    sc[upd] = s[upd].astype(np.uint8) + 1


# ------------------------------------------------------------------------------ passes


def _reader_init(_worker_id: int) -> None:
    """Pass readers ignore SIGTERM: an engine's stop signal goes to every process of the task, and
    the main process stops at the next batch boundary (:class:`rts.inference.job.Preempted`) only
    if its readers are still there to finish the current batch."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def reader_context():
    """The start method of the pass readers: forkserver, never fork.

    While a scene's passes are read, the previous scene's outputs are written on a background
    thread (``--finalize-workers``) that is inside GDAL. A worker forked then inherits GDAL's locks
    held by that thread and can wait on them forever. Forkserver workers start from a clean
    single-threaded server that has imported the readers once, so each start stays cheap.
    """
    import multiprocessing

    multiprocessing.set_forkserver_preload(["rts.inference.scene"])
    return multiprocessing.get_context("forkserver")


@torch.no_grad()
def launch_batch(predictor: Predictor, windows_raw: torch.Tensor) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    """Queue the passes of raw largest-scale windows and their copy to the host; returns a function
    that waits for them and gives (probability (B, T, T) float32, scale index (B, T, T) uint8).

    On a GPU nothing here waits: the copies go to pinned memory behind an event, so the caller can
    merge and record the previous batch while the device works on this one.
    """
    big = windows_raw.to(predictor.device, non_blocking=True)
    per_scale = [predictor.logits({s: crop_centre(big, size)}) for s, size in predictor.window_sizes().items()]
    prob, idx = fuse_scales(per_scale)
    prob, idx = prob.float(), idx.to(torch.uint8)
    if predictor.device.type != "cuda":
        out = (prob.cpu().numpy(), idx.cpu().numpy())
        return lambda: out
    host = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in (prob, idx)]
    for h, t in zip(host, (prob, idx)):
        h.copy_(t, non_blocking=True)
    done = torch.cuda.Event()
    done.record()

    def wait() -> tuple[np.ndarray, np.ndarray]:
        done.synchronize()
        return host[0].numpy(), host[1].numpy()

    return wait


def predict_batch(predictor: Predictor, windows_raw: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(probability (B, T, T) float32, scale index (B, T, T)) of raw largest-scale windows."""
    return launch_batch(predictor, windows_raw)()


def _run_passes(predictor: Predictor, region: Region, state: RegionState, *, batch_size: int, num_workers: int,
                errors: list[dict], susceptibility: SusceptibilityFilter, stop: threading.Event | None = None) -> dict[str, int]:
    todo = [t for t in region.tiles if t.tile_id not in state.done]
    counts = {"run": 0, "error": 0}
    skip = susceptibility.masked_passes(region, todo, predictor.tile_size)  # their output would be all zeros
    if skip:
        state.record([{"tile": t.tile_id, "status": TILE_SUSCEPTIBILITY, "max_prob": None} for t in skip])
        todo = [t for t in todo if t.tile_id not in state.done]
    if not todo:
        return counts
    window = max(predictor.window_sizes().values())
    dataset = TileWindows(region, todo, tile_size=predictor.tile_size, window=window)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate,
        pin_memory=predictor.device.type == "cuda", prefetch_factor=2 if num_workers else None,
        multiprocessing_context=reader_context() if num_workers else None, worker_init_fn=_reader_init if num_workers else None,
    )
    kill_after = int(os.environ.get(KILL_ENV, "0") or 0)
    delay = float(os.environ.get(DELAY_ENV, "0") or 0)

    def finish(batch: dict, result: Callable[[], tuple[np.ndarray, np.ndarray]] | None) -> None:
        entries: list[dict] = []
        tile_max: dict[int, float] = {}
        if result is not None:
            prob, idx = result()
            valid = batch["valid"].numpy()
            for j, i in enumerate(batch["ok_index"]):
                t = todo[i]
                merge_pass(state.prob, state.scale, region, t.row, t.col, prob[j], idx[j], valid[j])
                v = valid[j].astype(bool)
                tile_max[i] = float(prob[j][v].max()) if v.any() else 0.0
        for i, status, msg in zip(batch["index"], batch["status"], batch["message"]):
            if status == TILE_ERROR:
                counts["error"] += 1
                errors.append({"region": region.name, "tile": todo[i].tile_id, "error": msg})
                log.error("%s", msg)
                continue  # not recorded as finished: a re-run retries it
            entries.append({"tile": todo[i].tile_id, "status": status, "max_prob": tile_max.get(i)})
        counts["run"] += len(batch["index"])
        shown.update(len(batch["index"]))
        if kill_after and counts["run"] >= kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        state.record(entries)
        log.debug("%s: %d/%d passes", region.name, len(state.done), len(region.tiles))
        if delay:
            time.sleep(delay)

    shown = bar(len(todo), desc=f"passes {region.name}", unit="pass")
    try:
        pending = None  # one batch in flight: its passes run on the device while the previous one is merged
        for batch in loader:
            launched = (batch, launch_batch(predictor, batch["windows"]) if batch["windows"] is not None else None)
            if pending is not None:
                finish(*pending)
            pending = launched
            if stop is not None and stop.is_set():
                break  # SIGTERM: the batch in flight is finished and recorded below, then the shard stops
        if pending is not None:
            finish(*pending)
        if stop is not None and stop.is_set() and len(state.done) < len(region.tiles):
            raise Preempted(f"{region.name}: stopped by SIGTERM after {len(state.done)}/{len(region.tiles)} passes (flushed); "
                            "run the same command again to resume")
    finally:
        shown.close()
        dataset.close()
    return counts


# ------------------------------------------------------------------------------ outputs


def _box_cover(region: Region, r: int, c: int, h: int, w: int) -> np.ndarray | None:
    """Tile-list mode: True where a block pixel lies inside a listed box (None: a scene, all inside)."""
    if region.boxes is None:
        return None
    cover = np.zeros((h, w), bool)
    b = np.array([x[1:] for x in region.boxes], np.int64) - [region.row_off, region.col_off, region.row_off, region.col_off]
    hit = (b[:, 0] < r + h) & (b[:, 2] > r) & (b[:, 1] < c + w) & (b[:, 3] > c)
    for r0, c0, r1, c1 in b[hit]:
        cover[max(r0 - r, 0) : min(r1 - r, h), max(c0 - c, 0) : min(c1 - c, w)] = True
    return cover


def _read_outputs(region: Region, state: RegionState, r: int, c: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    prob = np.array(state.prob[r : r + h, c : c + w])
    scale = np.array(state.scale[r : r + h, c : c + w])
    covered = scale > 0
    box = _box_cover(region, r, c, h, w)
    if box is not None:
        covered &= box
    return prob, scale, covered


def write_outputs(region: Region, state: RegionState, out_dir: Path, *, threshold: float, scales: tuple[float, ...],
                  tile_size: int, blocksize: int = 512, susceptibility: SusceptibilityFilter | None = None) -> dict[str, Any]:
    """Write the probability COG, mask COG and polygons of a finished region; return summary counts.

    With an enabled ``susceptibility`` filter, every output is of ``prob * keep`` and the summary
    has the filter's counts.
    """
    susceptibility = SusceptibilityFilter.of(susceptibility)
    from affine import Affine

    paths = output_paths(out_dir, region.name)
    filtered_read = _filtered_reader(susceptibility)

    def prob_block(r, c, h, w):
        prob, _, covered = filtered_read(region, state, r, c, h, w)
        return np.where(covered, prob, np.float32(PROB_NODATA)).astype(np.float32)

    def mask_block(r, c, h, w):
        prob, _, covered = filtered_read(region, state, r, c, h, w)
        return np.where(covered, (prob >= threshold).astype(np.uint8), np.uint8(MASK_NODATA))

    common = dict(height=region.height, width=region.width, transform=region.transform, blocksize=blocksize, work_dir=state.work)
    write_cog(paths["prob"], prob_block, dtype="float32", nodata=PROB_NODATA, resampling="AVERAGE", **common)
    write_cog(paths["mask"], mask_block, dtype="uint8", nodata=MASK_NODATA, resampling="NEAREST", **common)

    scale_values = np.array([0.0, *scales], np.float64)  # scale map holds 1 + index
    records: list[dict] = []
    unfiltered: list[dict] = []  # susceptibility: unfiltered objects polygonized with prob = keep (polygon_stats)
    for r, c, h, w in windows(region.height, region.width, 2048):
        prob, scale, covered = _read_outputs(region, state, r, c, h, w)
        keep = susceptibility.block_keep(region, r, c, h, w)
        if keep is not None:  # what the filter removes is counted on the unfiltered objects
            raw_mask = covered & (prob >= threshold)
            if raw_mask.any():
                unfiltered += polygonize_block(keep.astype(np.float32), raw_mask, np.zeros((h, w)), region.transform @ Affine.translation(c, r))
            prob = np.where(keep, prob, np.float32(0))
        mask = covered & (prob >= threshold)
        if mask.any():
            records += polygonize_block(prob, mask, scale_values[scale], region.transform @ Affine.translation(c, r))
    if region.boxes is not None:
        inv = region.transform
        footprints = []
        for tid, r0, c0, r1, c1 in region.boxes:
            (x0, y0), (x1, y1) = inv @ (c0 - region.col_off, r0 - region.row_off), inv @ (c1 - region.col_off, r1 - region.row_off)
            footprints.append((tid, (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))))
    else:
        ok = {k for k, v in state.done.items() if v["status"] == TILE_OK}
        footprints = [(t.tile_id, region.tile_bounds(t, tile_size)) for t in region.tiles if t.tile_id in ok]
    columns = finalize(dissolve(records), footprints)
    write_gpkg(paths["polygons"], columns)
    summary = {"rts_count": int(len(columns["rts_id"])), "total_rts_area_m2": float(columns["area_m2"].sum()),
               "outputs": {k: str(v) for k, v in paths.items()}}
    if susceptibility.enabled:
        summary["susceptibility"] = polygon_stats(dissolve(unfiltered), abs(region.transform.a)).as_dict()
    return summary


def _filtered_reader(susceptibility: SusceptibilityFilter):
    """``_read_outputs`` with the susceptibility filter applied (``prob * keep``)."""
    def read(region, state, r, c, h, w):
        prob, scale, covered = _read_outputs(region, state, r, c, h, w)
        return susceptibility.filter_block(region, r, c, h, w, prob), scale, covered

    return read


def object_scores(region: Region, state: RegionState, labels: str, *, threshold: float, min_object_px: int, iou: float,
                  susceptibility: SusceptibilityFilter | None = None) -> dict:
    """Object recall/precision of the region's mask against a label raster on the same grid."""
    susceptibility = SusceptibilityFilter.of(susceptibility)
    import rasterio

    with rasterio.open(labels) as src:
        if (src.height, src.width) != (region.height, region.width) or not src.transform.almost_equals(region.transform):
            raise ValueError(f"{labels}: label grid {src.width}x{src.height} differs from the scene grid "
                             f"{region.width}x{region.height}; labels must be on the (EPSG:3413, 3 m) scene grid")
        label = src.read(1)
    prob, _, covered = _filtered_reader(susceptibility)(region, state, 0, 0, region.height, region.width)
    prob = np.where(covered, prob, 0.0)
    pred = pred_components(prob, label, threshold, min_object_px=min_object_px)
    gt = gt_components(label, min_object_px=min_object_px)
    tp, fp, fn, _ = match_objects(pred, gt, iou)
    return {"labels": str(labels), "iou": iou, "min_object_px": min_object_px, "tp": tp, "fp": fp, "fn": fn,
            "object_recall": tp / (tp + fn) if tp + fn else None, "object_precision": tp / (tp + fp) if tp + fp else None}


# ------------------------------------------------------------------------------ public API


def _open_region(region: Region, work: Path, settings: dict, threshold: float) -> RegionState | dict:
    """The region's state to run (resumed where it stopped), or its finished entry when its outputs
    are complete with these settings and threshold."""
    done_file = work / DONE_FILE
    if done_file.exists():
        done = json.loads(done_file.read_text())
        if done["settings"] == settings and done["threshold"] == threshold and all(Path(p).exists() for p in done["summary"]["outputs"].values()):
            log.info("%s: already complete, skipped", region.name)
            return {**done["summary"], "tiles_run": 0, "resumed": True}
        if not (work / "prob.f32").exists():
            raise OutputError(f"{work}: finished with other settings or threshold and the accumulators were deleted; "
                            f"use a new output folder (or --keep-work to re-threshold later)")
        done_file.unlink()
        return RegionState(work, region, settings, threshold, rethreshold=True)  # its kept accumulators, thresholded anew
    return RegionState(work, region, settings, threshold)


def predict_region(predictor: Predictor, region: Region, out_dir: str | os.PathLike, *, threshold: float,
                   stride: int, batch_size: int = 8, num_workers: int = 2, blocksize: int = 512,
                   keep_work: bool = False, min_object_px: int = 0, iou: float = 0.3, errors: list[dict] | None = None,
                   susceptibility=None, finisher: Executor | None = None, stop: threading.Event | None = None) -> dict | Future:
    """Predict every pass of ``region`` (resuming from its manifest), then write its outputs.

    ``susceptibility`` (a :class:`rts.susceptibility.SusceptibilityFilter`; a bare layer or None is
    taken as one) skips fully masked passes and filters every output (docs/susceptibility.md).

    ``finisher``: an executor that writes the outputs (COGs, polygons, object scores, ``done.json``)
    after the passes, so that the caller can start the next region's passes meanwhile. The passes
    still run here, and a ``Future`` of the entry is returned. The finishing job
    reads only the region's own files (the accumulators, labels) and its own handle on the
    susceptibility layer, so it shares nothing with the next region's passes.

    Returns:
        The region's entry of the run log (counts, outputs, object scores when labels are set), or
        its ``Future`` when ``finisher`` writes the outputs (a region already complete, or with
        unreadable passes, has nothing to write: its entry is returned as is).
    """
    susceptibility = SusceptibilityFilter.of(susceptibility)
    out_dir = Path(out_dir)
    errors = [] if errors is None else errors
    work = out_dir / WORK_DIR / region.name
    settings = {"model": predictor.meta.get("normalization_stats_sha256"), "git_commit": predictor.meta.get("git_commit"),
                "scales": list(predictor.scales), "tta": predictor.tta, "tile_size": predictor.tile_size, "stride": stride,
                "temperature": predictor.temperature, "source": region.rgb, "extra": region.extra,
                "grid": [region.row_off, region.col_off, region.height, region.width, list(region.transform)[:6]],
                "tiles": len(region.tiles)}
    if susceptibility.enabled:
        settings["susceptibility"] = susceptibility.describe()
    if tuple(region.rgb_bands) != RGB_BANDS:  # only then: work folders of earlier runs keep their settings
        settings["rgb_bands"] = list(region.rgb_bands)
    entry: dict[str, Any] = {"name": region.name, "source": region.rgb, "extra": region.extra, "reprojected": region.warp is not None,
                             "tiles_total": len(region.tiles)}
    lock = RegionLock(work)
    try:
        state = _open_region(region, work, settings, threshold)
    except BaseException:
        lock.release()
        raise
    if isinstance(state, dict):  # already complete
        lock.release()
        return state
    try:
        resumed = len(state.done)
        if resumed:
            log.info("%s: resuming, %d/%d passes already done", region.name, resumed, len(region.tiles))
        n_err_before = len(errors)
        t0 = time.perf_counter()
        counts = _run_passes(predictor, region, state, batch_size=batch_size, num_workers=num_workers, errors=errors,
                             susceptibility=susceptibility, stop=stop)
        statuses = [v["status"] for v in state.done.values()]
        entry.update(
            tiles_processed=statuses.count(TILE_OK), tiles_skipped_nodata=statuses.count(TILE_NODATA),
            tiles_error=len(errors) - n_err_before, tiles_resumed=resumed, tiles_run=counts["run"],
            tiles_with_detections=sum(1 for v in state.done.values() if v["status"] == TILE_OK and v["max_prob"] >= threshold),
        )
        if susceptibility.enabled:
            entry["tiles_skipped_susceptibility"] = statuses.count(TILE_SUSCEPTIBILITY)
        if len(state.done) < len(region.tiles):
            entry["complete"] = False  # some passes failed to read: outputs are written on a later, successful run
            state.close(delete=False)
            lock.release()
            return entry
        entry["timing"] = {"passes_s": round(time.perf_counter() - t0, 3)}
    except BaseException:
        state.close(delete=False)
        lock.release()
        raise
    if isinstance(finisher, ProcessPoolExecutor):
        # a write worker process maps the accumulators itself; this process keeps the region's lock until it is done
        state.close(delete=False)
        future = finisher.submit(_finish_in_worker, SimpleNamespace(scales=tuple(predictor.scales), tile_size=predictor.tile_size),
                                 region, out_dir, entry, settings=settings, threshold=threshold, blocksize=blocksize,
                                 keep_work=keep_work, min_object_px=min_object_px, iou=iou, susceptibility=susceptibility)
        future.add_done_callback(lambda _: lock.release())
        return future
    finish = functools.partial(_finish_region, predictor, region, state, out_dir, entry, settings=settings, threshold=threshold,
                               blocksize=blocksize, keep_work=keep_work, min_object_px=min_object_px, iou=iou, lock=lock)
    if finisher is None:
        return finish(susceptibility=susceptibility)
    own = susceptibility.own_copy()  # GDAL handles are not shared across threads

    def finish_with_own_layer() -> dict:
        try:
            return finish(susceptibility=own)
        finally:
            own.close()

    return finisher.submit(finish_with_own_layer)


def _finish_region(predictor: Predictor, region: Region, state: RegionState, out_dir: Path, entry: dict, *, settings: dict,
                   threshold: float, blocksize: int, keep_work: bool, min_object_px: int, iou: float, susceptibility,
                   lock: RegionLock) -> dict:
    """Write a region's outputs once all its passes are done; record ``done.json``; drop the accumulators."""
    try:
        t1 = time.perf_counter()
        entry.update(write_outputs(region, state, out_dir, threshold=threshold, scales=predictor.scales,
                                   tile_size=predictor.tile_size, blocksize=blocksize, susceptibility=susceptibility))
        if susceptibility.enabled:
            entry["susceptibility"].update(tiles=entry["tiles_processed"], tiles_skipped=entry["tiles_skipped_susceptibility"])
        entry["timing"]["finalize_s"] = round(time.perf_counter() - t1, 3)
        if region.labels:
            entry["objects"] = object_scores(region, state, region.labels, threshold=threshold, min_object_px=min_object_px, iou=iou,
                                             susceptibility=susceptibility)
        # the accumulators go only once the finished marker is durable: a marker that fails to
        # write (a full disk) leaves them for the re-run, which writes the same outputs again
        write_json_atomic(state.work / DONE_FILE, {"settings": settings, "threshold": threshold, "summary": {**entry, "complete": True}})
        entry["complete"] = True
    finally:
        state.close(delete=entry.get("complete", False) and not keep_work)
        lock.release()
    return entry


class _NoLock:
    def release(self) -> None:
        pass


def _ignore_sigterm() -> None:
    """Write workers ignore SIGTERM (sent to every process of an engine's task): the main process
    lets started writes finish before it stops (:class:`rts.inference.job.Preempted`)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def write_pool(workers: int) -> ProcessPoolExecutor:
    """Worker processes writing finished regions' outputs (``--write-processes``): forkserver, as
    the readers (:func:`reader_context`), so no GDAL lock of a writing thread is inherited."""
    return ProcessPoolExecutor(workers, mp_context=reader_context(), initializer=_ignore_sigterm)


def _finish_in_worker(predictor: SimpleNamespace, region: Region, out_dir: Path, entry: dict, **kwargs: Any) -> dict:
    """:func:`_finish_region` in a write worker process: the accumulators are mapped from disk."""
    work = Path(out_dir) / WORK_DIR / region.name
    state = RegionState.__new__(RegionState)
    state.work, state.manifest_path = work, work / "manifest.jsonl"
    state.done = state._read_manifest()
    shape = (region.height, region.width)
    state.prob = np.memmap(work / "prob.f32", dtype=np.float32, mode="r+", shape=shape)
    state.scale = np.memmap(work / "scale.u8", dtype=np.uint8, mode="r+", shape=shape)
    susceptibility = SusceptibilityFilter.of(kwargs.pop("susceptibility"))
    try:
        return _finish_region(predictor, region, state, Path(out_dir), entry, susceptibility=susceptibility, lock=_NoLock(), **kwargs)
    finally:
        susceptibility.close()


def predict_scene(predictor: Predictor, scene: str | os.PathLike, out_dir: str | os.PathLike, *, threshold: float,
                  extra: str | os.PathLike | None = None, labels: str | os.PathLike | None = None, stride: int | None = None,
                  rgb_bands: tuple[int, int, int] = RGB_BANDS, **kwargs: Any) -> dict:
    """Predict one RGB scene (GeoTIFF/VRT, any CRS: reprojected to EPSG:3413 at 3 m) into ``out_dir``.

    Args:
        predictor: From ``load_predictor``.
        scene: RGB uint8 3-band raster.
        out_dir: Output folder; ``<stem>.prob.tif``, ``<stem>.mask.tif``, ``<stem>.gpkg`` are written.
        threshold: Probability threshold of the mask and polygons.
        extra: 4-band EXTRA raster on the scene's grid; required when the model uses EXTRA channels.
        labels: Optional label raster (scene grid) for object recall in the log.
        stride: Pass spacing in pixels (default ``tile_size // 2``).
        rgb_bands: 1-based bands of ``scene`` read as R, G, B (``--bands``; e.g. 3, 2, 1 for BGRN).
        **kwargs: ``predict_region`` options (batch_size, num_workers, blocksize, keep_work, ...).
    """
    stride = stride or predictor.tile_size // 2
    _check_extra(predictor, extra, scene)
    region = region_for_scene(scene, tile_size=predictor.tile_size, stride=stride, extra=extra,
                              extra_bands=predictor.normalizer.extra_index, labels=labels, rgb_bands=rgb_bands)
    return predict_region(predictor, region, out_dir, threshold=threshold, stride=stride, **kwargs)


def predict_tiles(predictor: Predictor, tile_list: str | os.PathLike, mosaic: str | os.PathLike, out_dir: str | os.PathLike, *,
                  threshold: float, extra: str | os.PathLike | None = None, stride: int | None = None,
                  rgb_bands: tuple[int, int, int] = RGB_BANDS, rows: list[int] | None = None, name: str | None = None,
                  **kwargs: Any) -> dict:
    """Predict the tiles of a CSV list (``tile_id, minx, miny, maxx, maxy``, EPSG:3413) over a mosaic.

    Outputs cover the bounding box of the listed tiles (pixels outside every tile are nodata) and
    are named after the CSV's stem (or ``name``). See ``region_for_tiles`` for the pass grid;
    ``rows``: only these tiles of the list (a shard's part).
    """
    stride = stride or predictor.tile_size // 2
    _check_extra(predictor, extra, mosaic)
    region = region_for_tiles(tile_list, mosaic, tile_size=predictor.tile_size, stride=stride, extra=extra,
                              extra_bands=predictor.normalizer.extra_index, rgb_bands=rgb_bands, rows=rows, name=name)
    return predict_region(predictor, region, out_dir, threshold=threshold, stride=stride, **kwargs)


def _calibrated_with_filter(model) -> bool:
    path = Path(model) / CALIBRATION_FILE
    return path.exists() and bool(json.loads(path.read_text()).get("susceptibility"))


def _check_extra(predictor: Predictor, extra, scene) -> None:
    if predictor.extra_channels and extra is None:
        raise ValueError(f"{scene}: the model uses EXTRA channels {predictor.extra_channels}; pass --extra FILE "
                         "(4 bands ndvi, nir, re, sr on the scene's grid)")


def run_predict(model: str | os.PathLike, out_dir: str | os.PathLike, *, scenes: list[str] = (), extras: list[str] = (),
                labels: list[str] = (), tiles: str | None = None, mosaic: str | None = None, scales: list[float] | None = None,
                tta: str | None = None, threshold: float | None = None, ratio: int = 500, device: str = "cpu", amp: bool = False,
                susceptibility: str | None = None, min_likelihood: float = 0.5, finalize_workers: int = 1,
                rgb_bands: tuple[int, int, int] = RGB_BANDS, shard: ShardSpec | None = None, write_processes: bool = False,
                **kwargs: Any) -> dict:
    """Everything ``rts predict`` does: load the package, predict each input, write the run log.

    A scene that cannot be opened or read is named in the log's ``errors`` and the run goes on.
    ``susceptibility``: path of an RTS likelihood raster; passes where it is below ``min_likelihood``
    are skipped and objects there dropped (docs/susceptibility.md).
    ``finalize_workers``: threads writing finished regions' outputs while the next region's passes
    run (0: write each region before starting the next). At most this many regions wait for their
    writes at a time (their accumulators stay on disk until then). Outputs are identical either way.
    ``write_processes``: the ``finalize_workers`` are processes, not threads (COGs, overviews,
    polygons and object scores then run beside the prediction loop without sharing its GIL).
    ``rgb_bands``: the 1-based bands of every scene (or the mosaic) read as R, G, B (``--bands``).
    ``shard``: run only this shard's share of the inputs (``--shard``; :mod:`rts.inference.shard`),
    recorded in the job manifest ``OUT/.job/`` (:mod:`rts.inference.job`); the run log is then
    ``OUT/.job/shard-NNNN.run_log.json``.

    SIGTERM (an engine's preemption) finishes and records the batch in flight, lets started output
    writes complete, writes the run log and raises :class:`rts.inference.job.Preempted` (exit 75):
    the same command resumes.

    Every input, the threshold and the susceptibility layer are checked before the model loads, so
    a wrong argument fails in a second with one line (:class:`rts.errors.RtsError`).
    """
    if finalize_workers < 0:
        raise ConfigError(f"--finalize-workers {finalize_workers}: must be >= 0")
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    if bool(tiles) != bool(mosaic):
        raise ConfigError("--tiles and --mosaic go together (a tile list is predicted over a mosaic)")
    if not scenes and not tiles:
        raise ConfigError("nothing to predict: give scene files or --tiles CSV --mosaic FILE")
    if extras and len(extras) != (len(scenes) if scenes else 1):
        raise ConfigError(f"--extra: {len(extras)} file(s) for {len(scenes) if scenes else 1} input(s); give one per scene, in order")
    if labels and len(labels) != len(scenes):
        raise ConfigError(f"--labels: {len(labels)} file(s) for {len(scenes)} scene(s); give one per scene, in order")
    named: dict[str, str] = {}
    for src in [*scenes, *([tiles] if tiles else [])]:  # outputs and work folders are named after the file stem
        stem = Path(src).stem
        if stem in named:
            raise ConfigError(f"{src} and {named[stem]} share the name {stem!r}, and outputs are named after it; "
                             "rename one or predict them into separate output folders")
        named[stem] = str(src)
    rgb_bands = tuple(rgb_bands)
    # before the model: a wrong scene, band mapping or missing threshold fails in a second, not after the load
    check_rgb_files([*scenes, *([mosaic] if mosaic else [])], rgb_bands)
    model_file = Path(model) / MODEL_FILE if Path(model).is_dir() else Path(model)
    if threshold is not None:
        check_threshold_range(threshold)
    elif model_file.exists():  # a missing package is named by load_predictor, at once
        calibrated_threshold(model, ratio)
    layer = SusceptibilityFilter.open(susceptibility, min_likelihood)  # before the model: a bad layer path fails fast
    if shard is not None and shard.local_rank is not None and device == "cuda":
        device = f"cuda:{shard.local_rank}"  # torchrun: one GPU per rank of the node
    predictor = load_predictor(model, device=device, tta=tta, scales=tuple(scales) if scales else None, amp=amp, benchmark=True)
    thr, thr_source = resolve_threshold(predictor, threshold, ratio)
    errors: list[dict] = []
    regions = []
    stride = kwargs.get("stride") or predictor.tile_size // 2
    jobs = [("scene", s, extras[i] if extras else None, labels[i] if labels else None, {}) for i, s in enumerate(scenes)]
    if tiles:
        jobs.append(("tiles", tiles, extras[0] if extras else None, None, {}))
    status = None
    if shard is not None:
        description = {"model_sha256": file_sha256(model_file), "scales": list(predictor.scales), "tta": predictor.tta,
                       "temperature": predictor.temperature, "threshold": thr, "tile_size": predictor.tile_size, "stride": stride,
                       "scenes": [str(x) for x in scenes], "extras": [str(x) for x in extras], "labels": [str(x) for x in labels],
                       "tiles": str(tiles) if tiles else None, "mosaic": str(mosaic) if mosaic else None, "rgb_bands": list(rgb_bands),
                       "susceptibility": layer.describe() if layer.enabled else None}
        job, mine = open_job(out_dir, shard, description, lambda: job_units(
            scenes, tiles, mosaic, tile_size=predictor.tile_size, stride=stride, rgb_bands=rgb_bands))
        shard = ShardSpec(shard.index, job["count"], shard.engine, shard.local_rank)
        jobs = []
        for r in mine:
            if r["kind"] == "scene":
                i = r["input"]
                jobs.append(("scene", scenes[i], extras[i] if extras else None, labels[i] if labels else None, {}))
            else:
                jobs.append(("tiles", r["source"], extras[0] if extras else None, None, {"rows": r["tiles"], "name": r["region"]}))
        log.info("shard %d/%d (%s) of job %s: %d region(s), %d passes", shard.index, shard.count, shard.engine, job["job_id"],
                 len(mine), sum(r["passes"] for r in mine))
        status = ShardStatus(out_dir, job, shard, mine)
    names = {id(j): (j[4].get("name") or Path(j[1]).stem) for j in jobs}
    stop = threading.Event()
    previous_handler = None
    if threading.current_thread() is threading.main_thread():
        def on_sigterm(signum, frame):  # noqa: ARG001 - signal handler signature
            if not stop.is_set():
                log.warning("SIGTERM: finishing the current batch, then stopping (resumable; exit %d)", Preempted.exit_code)
            stop.set()

        previous_handler = signal.signal(signal.SIGTERM, on_sigterm)

    def failed(src: str, e: Exception, name: str) -> None:
        if isinstance(e, OutputError):  # the output folder itself is unusable: no other input would fare better
            raise e
        log.error("%s: %s: %s", src, type(e).__name__, e)
        errors.append({"region": name, "file": str(src), "error": f"{type(e).__name__}: {e}"})
        if status is not None:
            status.region(name, "failed", f"{type(e).__name__}: {e}")

    def collect(src: str, result: dict | Future, name: str) -> None:
        try:
            entry = result.result() if isinstance(result, Future) else result
        except Exception as e:  # noqa: BLE001 - a failed write is named in the log like a failed read
            failed(src, e, name)
            return
        regions.append(entry)
        if status is not None:
            bad = [e["error"] for e in errors if e.get("region") == name]
            status.region(name, "finished" if entry.get("complete", True) and not bad else "failed",
                          f"{len(bad)} error(s), first: {bad[0]}" if bad else None)

    if not finalize_workers:
        finisher = None
    elif write_processes:
        finisher = write_pool(finalize_workers)
    else:
        finisher = ThreadPoolExecutor(finalize_workers, thread_name_prefix="rts-finalize")
    pending: deque[tuple[str, dict | Future, str]] = deque()
    preempted: Preempted | None = None
    outcome = "failed"
    try:
        for job_entry in jobs:
            kind, src, extra, lab, part = job_entry
            name = names[id(job_entry)]
            if stop.is_set():
                preempted = Preempted(f"stopped by SIGTERM before {name}; run the same command again to resume")
                break
            if status is not None:
                status.region(name, "running")
            try:
                if kind == "scene":
                    result = predict_scene(predictor, src, out_dir, threshold=thr, extra=extra, labels=lab, errors=errors,
                                           susceptibility=layer, finisher=finisher, rgb_bands=rgb_bands, stop=stop, **kwargs)
                else:
                    result = predict_tiles(predictor, src, mosaic, out_dir, threshold=thr, extra=extra, errors=errors,
                                           susceptibility=layer, finisher=finisher, rgb_bands=rgb_bands, stop=stop, **part,
                                           **kwargs)
            except Preempted as e:
                preempted = e
                break
            except Exception as e:  # noqa: BLE001 - one bad input must not stop a long run; it is named in the log
                failed(src, e, name)
                continue
            pending.append((src, result, name))
            while len(pending) > finalize_workers:  # bounded: the oldest region's writes finish first
                collect(*pending.popleft())
        while pending:
            collect(*pending.popleft())
        outcome = "preempted" if preempted is not None else ("failed" if errors else "finished")
    finally:
        if finisher is not None:
            finisher.shutdown(wait=True)  # an interrupted run still lets started writes complete (atomic renames)
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
        if status is not None:
            status.close(outcome, errors=errors, exit_code=Preempted.exit_code if preempted else (1 if errors else 0))
    keys = ("tiles_processed", "tiles_skipped_nodata", "tiles_error", "tiles_with_detections", "rts_count", "total_rts_area_m2")
    run_log = {
        "model": {"path": str(model), "checkpoint_sha256": file_sha256(model_file), **predictor.meta},
        "normalization_stats_sha256": predictor.meta.get("normalization_stats_sha256"),
        "scales": list(predictor.scales), "tta": predictor.tta, "temperature": predictor.temperature,
        "threshold": thr, "threshold_source": thr_source, "tile_size": predictor.tile_size,
        "stride": kwargs.get("stride") or predictor.tile_size // 2, "device": str(predictor.device),
        "device_name": torch.cuda.get_device_name(predictor.device) if predictor.device.type == "cuda" else "cpu",
        "amp": amp, "options": {**{k: v for k, v in kwargs.items() if k != "stride"}, "finalize_workers": finalize_workers,
                                **({"write_processes": True} if write_processes else {})},
        "rgb_bands": list(rgb_bands),
        **{k: sum(r.get(k, 0) for r in regions) for k in keys},
        "regions": regions, "errors": errors, "wall_time_s": round(time.perf_counter() - t0, 3),
    }
    if shard is not None:
        run_log["job"] = {"job_id": job["job_id"], "shard": shard.index, "count": shard.count, "engine": shard.engine}
    if preempted is not None:
        run_log["preempted"] = str(preempted)
    run_log["tiles_error"] = len([e for e in errors if "tile" in e])
    if layer.enabled:  # the filter's totals over the regions
        totals = {k: sum(r.get("susceptibility", {}).get(k, 0) for r in regions)
                  for k in ("tiles_skipped", "objects_before", "objects_removed", "objects_clipped", "pixels_removed", "area_removed_m2")}
        run_log["susceptibility"] = {**layer.describe(), **totals}
        layer.close()
    elif _calibrated_with_filter(model):
        log.warning("%s: thresholds were calibrated with a susceptibility filter; pass --susceptibility to apply it", model)
    write_json_atomic(shard_run_log(out_dir, shard.index) if shard is not None else out_dir / RUN_LOG, run_log)
    if preempted is not None:
        raise preempted
    return run_log


def job_units(scenes: list[str], tiles: str | None, mosaic: str | None, *, tile_size: int, stride: int,
              rgb_bands: tuple[int, int, int] = RGB_BANDS) -> list[Unit]:
    """The shardable units of an input list: each scene (weighted by its passes, ordered by its
    north-west corner on the output grid) and each row of the tile list (:func:`tile_row_units`).

    A scene that cannot be opened weighs nothing and goes last; its shard names it in its errors.
    """
    from rts.inference.scene import grid_positions, rgb_grid, tile_boxes

    units = []
    for i, src in enumerate(scenes):
        try:
            _, h, w, t = rgb_grid(src, rgb_bands)
        except Exception:  # noqa: BLE001 - reported by the shard that runs it, like any unreadable scene
            units.append(Unit("scene", str(src), (2, 0.0, 0.0, str(src)), 0, (i,)))
            continue
        n = len(grid_positions(h, tile_size, stride)) * len(grid_positions(w, tile_size, stride))
        units.append(Unit("scene", str(src), (0, -round(t.f, 3), round(t.c, 3), str(src)), n, (i,)))
    if tiles:
        boxes = tile_boxes(tiles, mosaic, rgb_bands=rgb_bands)[0]
        units += tile_row_units(tiles, boxes, tile_size=tile_size, stride=stride)
    return units
