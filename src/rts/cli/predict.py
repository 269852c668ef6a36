"""`rts predict`: predict RTS over scenes or a tile list with a model package.

``rts predict status OUT`` reports the shards of a sharded job (``--shard``) instead.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import torch

from rts.config import EvaluateConfig
from rts.errors import ConfigError
from rts.data.windows import VALID_SCALES
from rts.inference.job import shard_run_log
from rts.inference.predict import RUN_LOG, run_predict
from rts.inference.scene import parse_bands
from rts.inference.shard import parse_shard

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenes", nargs="*", help="RGB scenes (GeoTIFF/VRT, uint8, 3 bands R, G, B; see --bands); "
                        "or `status OUT`: the state of a sharded job's shards, exit 1 while work remains")
    parser.add_argument("--model", default="models/rts-model", help="model package folder")
    parser.add_argument("-o", "--out", help="output folder (required), shared by every shard of a job")
    parser.add_argument("--shard", metavar="I/N|auto",
                        help="run shard I of N of the inputs (spatially contiguous, balanced by passes); auto: the engine's "
                             "task index (SLURM array, GCP Batch, Kubernetes Indexed Job, torchrun; docs/inference.md)")
    parser.add_argument("--shard-count", type=int, metavar="N",
                        help="shard count for --shard auto where the engine gives none (Kubernetes: .spec.completions) "
                             "or gives another (a resubmission of some tasks)")
    parser.add_argument("--stale-after", type=float, default=300.0,
                        help="status: seconds without a heartbeat after which a running shard on another host counts as lost")
    parser.add_argument("--status-format", choices=("text", "json"), default="text", help="status: how to print it")
    parser.add_argument("--bands", "--rgb-bands", metavar="R,G,B",
                        help="1-based bands of red, green, blue in the scenes or mosaic, e.g. 3,2,1 for a PlanetScope "
                             "4-band BGRN scene (the bands must be uint8; default: 1,2,3 of a 3-band RGB file)")
    parser.add_argument("--tiles", help="CSV tile list (tile_id, minx, miny, maxx, maxy in EPSG:3413); needs --mosaic")
    parser.add_argument("--mosaic", help="RGB mosaic (VRT/GeoTIFF) the tile list is read from")
    parser.add_argument("--extra", action="append", default=[], help="4-band EXTRA raster on the scene grid (one per scene, in order)")
    parser.add_argument("--labels", action="append", default=[], help="label raster per scene: object recall in the run log")
    parser.add_argument("--scales", type=float, nargs="+", choices=VALID_SCALES, help="default: the package's")
    parser.add_argument("--tta", choices=("none", "minimal", "standard", "full"), help="default: the package's")
    parser.add_argument("--batch-size", type=int, default=8, help="passes per forward")
    parser.add_argument("--threshold", type=float, help="probability threshold (default: calibrated, see --ratio)")
    parser.add_argument("--ratio", type=int, default=500, help="prevalence ratio 1:R of the calibrated object threshold")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    parser.add_argument("--amp", action="store_true", help="bf16/fp16 autocast on CUDA")
    parser.add_argument("--stride", type=int, help="pass spacing in px (default tile_size / 2)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="DataLoader reader processes (default: min(4, CPU count); 0: read in the main process)")
    parser.add_argument("--blocksize", type=int, default=512, help="COG block size")
    parser.add_argument("--finalize-workers", type=int, default=1,
                        help="threads writing a finished scene's COGs and polygons while the next scene's passes run "
                             "(default 1; 0: write before starting the next)")
    parser.add_argument("--write-processes", action="store_true",
                        help="the --finalize-workers are processes, not threads: output writes do not share the GIL with the passes")
    parser.add_argument("--keep-work", action="store_true", help="keep the accumulators in OUT/.work after success")
    parser.add_argument("--min-object-px", type=int, default=EvaluateConfig.min_object_px,
                        help="smallest object in pixels for the --labels metric, as evaluate.min_object_px")
    parser.add_argument("--iou", type=float, default=0.3, help="IoU of a match for the --labels metric")
    parser.add_argument("--susceptibility", help="RTS likelihood raster (any CRS/resolution): skip passes and drop objects below --min-likelihood")
    parser.add_argument("--min-likelihood", type=float, default=0.5, help="susceptibility threshold")


def status(args: argparse.Namespace) -> int:
    import json

    from rts.inference.job import format_status, job_status

    if len(args.scenes) != 2:
        raise ConfigError("rts predict status OUT: give exactly one output folder (the --out of the job)")
    report = job_status(args.scenes[1], stale_after_s=args.stale_after)
    print(json.dumps(report, indent=1) if args.status_format == "json" else format_status(report), flush=True)
    return 0 if report["complete"] else 1


def run(args: argparse.Namespace) -> int:
    if args.scenes and args.scenes[0] == "status" and not Path("status").exists():
        return status(args)
    if args.out is None:
        raise ConfigError("rts predict: no output folder; pass -o/--out OUT")
    shard = parse_shard(args.shard, count=args.shard_count)
    if args.min_object_px < 1:
        raise ConfigError(f"--min-object-px {args.min_object_px}: must be >= 1 (objects smaller than this many pixels are "
                          f"ignored; evaluate.min_object_px is {EvaluateConfig.min_object_px})")
    rgb_bands = parse_bands(args.bands)
    run_log = run_predict(
        args.model, args.out, scenes=args.scenes, extras=args.extra, labels=args.labels, tiles=args.tiles, mosaic=args.mosaic,
        scales=args.scales, tta=args.tta, threshold=args.threshold, ratio=args.ratio, device=args.device, amp=args.amp,
        stride=args.stride, batch_size=args.batch_size, num_workers=args.workers, blocksize=args.blocksize,
        keep_work=args.keep_work, min_object_px=args.min_object_px, iou=args.iou,
        susceptibility=args.susceptibility, min_likelihood=args.min_likelihood, finalize_workers=args.finalize_workers,
        rgb_bands=rgb_bands, shard=shard, write_processes=args.write_processes,
    )
    log.info("%d passes, %d skipped (nodata), %d RTS (%.0f m2), %d error(s); log: %s", run_log["tiles_processed"],
             run_log["tiles_skipped_nodata"], run_log["rts_count"], run_log["total_rts_area_m2"], len(run_log["errors"]),
             shard_run_log(Path(args.out), shard.index) if shard else Path(args.out) / RUN_LOG)
    return 1 if run_log["errors"] else 0
