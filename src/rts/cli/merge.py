"""`rts merge`: mosaic the outputs of several predict chunks, or of the shards of a job (`rts merge -o M OUT`)."""

from __future__ import annotations

import argparse
import logging

from rts.errors import ConfigError
from rts.inference.merge import merge_chunks

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--out", help="output folder of the merged outputs")
    # `rts merge OUT CHUNK...` (the output folder first, without -o) is the older form and still works
    parser.add_argument("chunks", nargs="+", metavar="CHUNK", help="output folders of `rts predict` chunks, or the --out of a sharded job (its shards are found)")
    parser.add_argument("--name", help="stem of the merged files (default: a job of one tile list keeps its stem, else merged)")
    parser.add_argument("--blocksize", type=int, default=512, help="COG block size")


def run(args: argparse.Namespace) -> int:
    out, chunks = args.out, list(args.chunks)
    if out is None:
        if len(chunks) < 2:
            raise ConfigError("rts merge: no output folder; give -o OUT before the chunk folders")
        out, chunks = chunks[0], chunks[1:]
    merged = merge_chunks(out, chunks, name=args.name, blocksize=args.blocksize)
    log.info("merged %d chunk(s): %d RTS (%d parts dissolved across chunk borders), %.0f m2; %s", len(merged["chunks"]),
             merged["rts_count"], merged["polygon_parts_dissolved"], merged["total_rts_area_m2"], merged["outputs"]["prob"])
    return 0
