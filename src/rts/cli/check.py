"""`rts check`: run every data check of the dataset format; exit 1 on any problem."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from rts.data.checks import format_report, run_checks
from rts.errors import ConfigError
from rts.io import write_json_atomic

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", type=Path, metavar="DATA", help="dataset folder")
    parser.add_argument("-o", "--out", type=Path, metavar="JSON", help="also write the problems and warnings as JSON here")
    parser.add_argument("--json", type=Path, dest="out", help=argparse.SUPPRESS)  # the older spelling of --out
    parser.add_argument("--workers", type=int, default=1, help="threads reading tiles")
    parser.add_argument("--progress", action="store_true", help="show a progress bar over tiles")


def run(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise ConfigError(f"--workers: must be >= 1, got {args.workers}")
    result = run_checks(args.data, progress=args.progress, workers=args.workers)
    print(format_report(result.problems, warnings=result.warnings, n_tiles=result.n_tiles))
    if args.out is not None:
        write_json_atomic(
            args.out,
            {
                "dataset": str(args.data),
                "ok": result.ok,
                "n_tiles": result.n_tiles,
                "problems": [{"path": p.path, "reason": p.reason} for p in result.problems],
                "warnings": [{"path": w.path, "reason": w.reason} for w in result.warnings],
            },
        )
    return 0 if result.ok else 1
