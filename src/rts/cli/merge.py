"""`rts merge`: mosaic the outputs of several predict chunks."""

from __future__ import annotations

import argparse
import logging

from rts.inference.merge import merge_chunks

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="output folder of the merged outputs")
    parser.add_argument("chunks", nargs="+", help="output folders of `rts predict` chunks")
    parser.add_argument("--name", default="merged", help="stem of the merged files (default: merged)")
    parser.add_argument("--blocksize", type=int, default=512, help="COG block size (default 512)")


def run(args: argparse.Namespace) -> int:
    merged = merge_chunks(args.out, args.chunks, name=args.name, blocksize=args.blocksize)
    log.info("merged %d chunk(s): %d RTS (%d parts dissolved across chunk borders), %.0f m2; %s", len(merged["chunks"]),
             merged["rts_count"], merged["polygon_parts_dissolved"], merged["total_rts_area_m2"], merged["outputs"]["prob"])
    return 0
