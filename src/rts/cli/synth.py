"""`rts synth`: write the synthetic RTS dataset in the on-disk format."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from rts.authoring.synth import (
    DEFAULT_N_NEG,
    DEFAULT_N_POS,
    DEFAULT_N_REGIONS,
    DEFAULT_TILE_SIZE,
    PRESETS,
    REGIONS,
    synthesize,
    write_preview,
)
from rts.errors import ConfigError

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--out", type=Path, help="output dataset folder (created)")
    parser.add_argument("out_folder", type=Path, nargs="?", help=argparse.SUPPRESS)  # `rts synth OUT`, the older form
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None, help="demo: the `make demo` dataset (128 px); tiny: for tests (64 px)")
    parser.add_argument("--n-pos", type=int, default=None, help=f"total positive tiles (default {DEFAULT_N_POS} or the preset's)")
    parser.add_argument("--n-neg", type=int, default=None, help=f"total negative tiles (default {DEFAULT_N_NEG} or the preset's)")
    parser.add_argument("--tile-size", type=int, default=None, help=f"tile width in pixels (default {DEFAULT_TILE_SIZE} or the preset's)")
    parser.add_argument("--n-regions", type=int, default=None, help=f"number of regions, 3-{len(REGIONS)} (default {DEFAULT_N_REGIONS} or the preset's)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same options -> identical bytes)")
    parser.add_argument("--shapes", type=Path, default=None, help="ARTS GeoJSON (EPSG:3413): draw RTS outlines from these real polygons")
    parser.add_argument("--preview", type=Path, default=None, help="also write a contact sheet PNG here")
    parser.add_argument("--overwrite", action="store_true", help="replace the dataset files of a non-empty folder that is not a synth output")
    parser.add_argument("--susceptibility", action="store_true", help="also write susceptibility/<region>.tif and susceptibility.vrt (off: demo bytes unchanged)")


def run(args: argparse.Namespace) -> int:
    if args.out is None and args.out_folder is None:
        raise ConfigError("rts synth: no output folder; give -o OUT (e.g. rts synth -o data --preset demo)")
    if args.out is not None and args.out_folder is not None and args.out != args.out_folder:
        raise ConfigError(f"rts synth: two output folders, -o {args.out} and {args.out_folder}; give one")
    args.out = args.out or args.out_folder
    summary = synthesize(
        args.out,
        preset=args.preset,
        n_pos=args.n_pos,
        n_neg=args.n_neg,
        tile_size=args.tile_size,
        n_regions=args.n_regions,
        seed=args.seed,
        shapes=args.shapes,
        overwrite=args.overwrite,
        susceptibility=args.susceptibility,
    )
    log.info("summary: %s", json.dumps(summary, sort_keys=True))
    if args.preview is not None:
        write_preview(args.out, args.preview)
        log.info("preview: %s", args.preview)
    return 0
