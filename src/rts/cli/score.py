"""`rts score`: score a folder of probability GeoTIFFs against label GeoTIFFs."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from rts.config import EvaluateConfig
from rts.io import write_json_atomic
from rts.metrics.score import format_table, score_folders

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pred_dir", type=Path, help="folder of probability GeoTIFFs (float in [0, 1])")
    parser.add_argument("label_dir", type=Path, help="folder of label GeoTIFFs {0, 1, 255}, same file names")
    parser.add_argument("--ratios", type=int, nargs="+", default=[200, 500, 1000], help="prevalence ratios 1:R")
    parser.add_argument("--positive-from-labels", action="store_true", default=True,
                        help="a tile is positive when its label has a 1 pixel (the only mode; accepted for clarity)")
    parser.add_argument("-o", "--out", type=Path, default=None, metavar="JSON", help="write the metrics JSON here")
    parser.add_argument("--threshold", type=float, default=0.5, help="operating threshold")
    parser.add_argument("--min-object-px", type=int, default=EvaluateConfig.min_object_px,
                        help="smallest object in pixels, as evaluate.min_object_px")


def run(args: argparse.Namespace) -> int:
    result = score_folders(args.pred_dir, args.label_dir, ratios=tuple(args.ratios), threshold=args.threshold, min_object_px=args.min_object_px)
    print(format_table(result))
    if args.out is not None:
        write_json_atomic(args.out, result)
        log.info("wrote %s", args.out)
    return 0
