"""`rts review export|import`: review predicted RTS by eye and feed the verdicts back."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from rts.errors import ConfigError

log = logging.getLogger(__name__)


def _edges(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated probabilities expected, e.g. 0.5,0.7,0.9") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("what each action writes is -o/--out: rts review export PRED_DIR -o REVIEW_DIR [--sample -n 30]; "
                     "rts review import VERDICTS --review REVIEW_DIR --out OUT [--dataset DATA] (see rts review ACTION --help)")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    ex = sub.add_parser("export", help="chips and an offline review page from an rts predict folder",
                        formatter_class=parser.formatter_class)
    ex.add_argument("pred_dir", type=Path, metavar="PRED_DIR", help="output folder of rts predict (holds run_log.json)")
    ex.add_argument("-o", "--out", type=Path, required=True, metavar="REVIEW_DIR", help="review folder to write")
    how = ex.add_mutually_exclusive_group()
    how.add_argument("--top", action="store_true", help="review the -n highest-probability candidates (the default)")
    how.add_argument("--sample", action="store_true",
                     help="review up to -n random candidates per probability stratum: an unbiased precision estimate")
    ex.add_argument("-n", type=int, default=50, help="candidates to review (per stratum with --sample)")
    ex.add_argument("--strata", type=_edges, metavar="P1,P2,...",
                    help="lower probability bounds of the strata (default: 3 equal-width strata from the predict threshold to 1)")
    ex.add_argument("--seed", type=int, default=0, help="seed of --sample")
    ex.add_argument("--region-name", help="ARTS RegionName of the candidates (default: the predicted scene's name)")
    ex.add_argument("--creator-lab", help="ARTS CreatorLab of confirmed RTS (also accepted by import)")
    ex.add_argument("--base-map-date", help="ARTS BaseMapDate, YYYY-MM-DD of the imagery (also accepted by import)")
    ex.add_argument("--base-map-source", default="PlanetScope", help="ARTS BaseMapSource")
    im = sub.add_parser("import", help="precision estimate, ARTS GeoJSON and hard negatives from a verdicts file",
                        formatter_class=parser.formatter_class)
    im.add_argument("verdicts", type=Path, metavar="VERDICTS", help="the verdicts-<id>.json file the review page saved")
    im.add_argument("--review", type=Path, help="the review folder (default: the folder holding VERDICTS)")
    im.add_argument("-o", "--out", type=Path, help="where to write precision.json, summary.md, confirmed_rts.geojson "
                                                   "(default: REVIEW_DIR/import)")
    im.add_argument("--dataset", type=Path, help="add the rejected candidates to this dataset as hard-negative tiles")
    im.add_argument("--arts-fields", type=Path, help="validate the GeoJSON against this ARTS Metadata_Format_Summary.csv")
    im.add_argument("--creator-lab", help="ARTS CreatorLab (default: the export's)")
    im.add_argument("--base-map-date", help="ARTS BaseMapDate (default: the export's)")
    im.add_argument("--contribution-date", help="ARTS ContributionDate, YYYY-MM-DD (default: today)")
    for p in (ex, im):  # -v after the action too; SUPPRESS keeps a -v given before it
        p.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="as rts -v")


def run(args: argparse.Namespace) -> int:
    if args.action == "export":
        from rts.review.export import export

        content = export(args.pred_dir, args.out, mode="sample" if args.sample else "top", n=args.n, strata=args.strata,
                         seed=args.seed, creator_lab=args.creator_lab, base_map_date=args.base_map_date,
                         base_map_source=args.base_map_source, region_name=args.region_name)
        print(f"{len(content['order'])} of {len(content['candidates'])} candidates to review: open {args.out / 'review.html'}")
        return 0
    from rts.review.importer import import_verdicts

    if not args.verdicts.is_file():
        raise ConfigError(f"{args.verdicts}: not found; pass the verdicts-<id>.json file the review page saved")
    review = args.review or args.verdicts.parent
    if not (review / "candidates.json").is_file():
        raise ConfigError(f"{review}: holds no candidates.json; pass --review REVIEW_DIR (the folder rts review export wrote)")
    result = import_verdicts(args.verdicts, review, args.out or review / "import", dataset=args.dataset,
                             arts_fields=args.arts_fields, creator_lab=args.creator_lab, base_map_date=args.base_map_date,
                             contribution_date=args.contribution_date)
    o = result["report"]["overall"]
    p = "n/a" if o["precision"] is None else f"{o['precision']:.3f}"
    lo = "n/a" if o["low"] is None else f"{o['low']:.3f}"
    hi = "n/a" if o["high"] is None else f"{o['high']:.3f}"
    print(f"{len(result['verdicts'])} verdicts; precision {p} [{lo}, {hi}]; {result['confirmed']} confirmed RTS; "
          + (f"{len(result['negatives']['added'])} hard-negative tiles added, dataset version {result['negatives']['dataset_version']}; "
             if result["negatives"] else "")
          + f"written to {result['out']}")
    return 0
