"""`rts estimate`: project GPU hours and cost for training and pan-Arctic inference."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from rts.config import load_params
from rts.errors import ConfigError
from rts.estimate import (
    DEFAULT_AREA_KM2,
    DEFAULT_BUDGET,
    DEFAULT_EXPECTED_EPOCH_FRACTION,
    DEFAULT_INFER_TRAIN_SPEED_RATIO,
    DEFAULT_INFERENCE_ALLOCATION,
    DEFAULT_N_NEG,
    DEFAULT_N_POS,
    DEFAULT_PRICE_PER_GPU_HOUR,
    DEFAULT_RATIO_RUNS,
    DEFAULT_RUNS,
    DEFAULT_SCALING_EFFICIENCY,
    DEFAULT_SEEDS,
    DEFAULT_TRAINING_ALLOCATION,
    DEFAULT_VAL_TILES,
    TTA_VIEWS,
    Throughput,
    estimate,
    format_table,
    inference_job,
    rates_from_run_log,
    read_profile,
)
from rts.io import write_json_atomic

log = logging.getLogger(__name__)


def parse_runs(items: list[str]) -> dict[str, int]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit():
            raise ConfigError(f"--runs {item!r}: expected PHASE=N with N >= 0; phases: {', '.join(DEFAULT_RUNS)}")
        out[key.strip()] = int(value)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    speed = parser.add_mutually_exclusive_group(required=True)
    speed.add_argument("--train-images-per-s", type=float, help="training images per second on one GPU")
    speed.add_argument("--profile", type=Path, help="`rts profile` JSON (its chosen batch's images/s)")
    parser.add_argument("--infer-tiles-per-s", type=float, default=None,
                        help=f"forwards (tile x scale x view) per second on one GPU (default {DEFAULT_INFER_TRAIN_SPEED_RATIO:g} x training images/s)")
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--nodes", type=int, default=1, help="training nodes (world size = nodes x gpus per node)")
    parser.add_argument("--gpu-name", default="H100", help="label of the table header")
    parser.add_argument("--price-per-gpu-hour", type=float, default=DEFAULT_PRICE_PER_GPU_HOUR,
                        help=f"USD (default {DEFAULT_PRICE_PER_GPU_HOUR:g}: the budget's $100 per 8xH100 node-hour)")
    parser.add_argument("--scaling-efficiency", type=float, default=DEFAULT_SCALING_EFFICIENCY, help="multi-GPU training efficiency")
    parser.add_argument("--n-pos", type=int, default=DEFAULT_N_POS, help="positive training tiles")
    parser.add_argument("--n-neg", type=int, default=DEFAULT_N_NEG, help="negative training tiles")
    parser.add_argument("--val-tiles", type=int, default=DEFAULT_VAL_TILES, help="tiles forwarded per validation")
    parser.add_argument("--expected-epoch-fraction", type=float, default=DEFAULT_EXPECTED_EPOCH_FRACTION,
                        help="share of train.max_epochs an early-stopped run trains")
    parser.add_argument("--runs", nargs="*", default=[], metavar="PHASE=N",
                        help=f"runs per phase, defaults {' '.join(f'{k}={v}' for k, v in DEFAULT_RUNS.items())}")
    parser.add_argument("--ratio-runs", nargs="*", default=list(DEFAULT_RATIO_RUNS), help="ratio-ablation runs: ratios or 'curriculum'")
    parser.add_argument("--seeds", type=int, default=DEFAULT_SEEDS, help="final-model seeds")
    parser.add_argument("--area-km2", type=float, default=DEFAULT_AREA_KM2, help="inference area (default: northern permafrost region)")
    parser.add_argument("--stride", type=int, default=None, help="inference stride in px (default tile_size / 2)")
    parser.add_argument("--scales", type=float, nargs="+", default=None, help="inference scales (default evaluate.scales)")
    parser.add_argument("--tta", choices=list(TTA_VIEWS), default=None, help="inference TTA (default evaluate.tta)")
    job = parser.add_argument_group("sharded inference job (rts predict --shard): wall time and cost from measured rates")
    job.add_argument("--shards", type=int, help="shards of the job, one GPU each")
    job.add_argument("--passes-per-s", type=float, help="passes/s of one shard at the job's scales x TTA (rts predict run log)")
    job.add_argument("--write-mpx-per-s", type=float, help="output Mpx/s of one write worker (rts predict run log)")
    job.add_argument("--write-workers", type=int, default=1, help="write workers per shard (--finalize-workers)")
    job.add_argument("--predict-log", type=Path, help="rts predict run_log.json to take both rates from")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET)
    parser.add_argument("--training-allocation", type=float, default=DEFAULT_TRAINING_ALLOCATION)
    parser.add_argument("--inference-allocation", type=float, default=DEFAULT_INFERENCE_ALLOCATION)
    parser.add_argument("-o", "--out", type=Path, default=None, metavar="JSON", help="write the projection JSON here")
    parser.add_argument("--json", type=Path, dest="out", help=argparse.SUPPRESS)  # the older spelling of --out


def run(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    train_speed = args.train_images_per_s
    if args.profile is not None:
        prof = read_profile(args.profile)
        train_speed = prof["train_images_per_s"]
        if prof["device"] is not None and not str(prof["device"]).startswith("cuda"):
            log.warning("%s was measured on %s, not a GPU: the projection is not a GPU estimate", args.profile, prof["device"])
        if prof["tile_size"] != params.data.tile_size:
            log.warning("%s: profiled tile size %s != data.tile_size %d", args.profile, prof["tile_size"], params.data.tile_size)
        if prof["batch_size"] != params.train.batch_size:
            log.warning("%s: profiled batch %d != train.batch_size %d; set train.batch_size: %d in params.yaml",
                        args.profile, prof["batch_size"], params.train.batch_size, prof["batch_size"])
    infer = args.infer_tiles_per_s if args.infer_tiles_per_s is not None else DEFAULT_INFER_TRAIN_SPEED_RATIO * train_speed
    result = estimate(
        params, throughput=Throughput(train_speed, infer, args.scaling_efficiency),
        price_per_gpu_hour=args.price_per_gpu_hour, gpus_per_node=args.gpus_per_node, nodes=args.nodes,
        n_pos=args.n_pos, n_neg=args.n_neg, val_tiles=args.val_tiles, expected_epoch_fraction=args.expected_epoch_fraction,
        runs=parse_runs(args.runs), ratio_runs=tuple(args.ratio_runs), seeds=args.seeds, area_km2=args.area_km2,
        stride=args.stride, scales=tuple(args.scales) if args.scales else None, tta=args.tta, budget=args.budget,
        training_allocation=args.training_allocation, inference_allocation=args.inference_allocation, gpu_name=args.gpu_name,
    )
    if args.profile is not None:
        result["assumptions"]["profile"] = {"path": str(args.profile), **prof}
    if args.shards is not None:
        passes, writes = args.passes_per_s, args.write_mpx_per_s
        if args.predict_log is not None:
            measured = rates_from_run_log(args.predict_log)
            passes, writes = passes or measured[0], writes or measured[1]
        if passes is None or writes is None:
            raise ConfigError("--shards: give the measured rates, --passes-per-s and --write-mpx-per-s (or --predict-log RUN_LOG)")
        result["inference_job"] = inference_job(result["inference"], passes_per_s=passes, write_mpx_per_s=writes,
                                                write_workers=args.write_workers, shards=args.shards,
                                                price_per_gpu_hour=args.price_per_gpu_hour)
    print(format_table(result))
    if args.out is not None:
        write_json_atomic(args.out, result)
        log.info("wrote %s", args.out)
    return 0
