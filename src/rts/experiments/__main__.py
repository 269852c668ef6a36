"""``python -m rts.experiments``: run DVC experiments N at a time on the visible GPUs.

    python -m rts.experiments run --phase losses [-S model.arch=unet ...] [-j 8] [--gpus 0,1,2,3]
    python -m rts.experiments run [-S train.max_epochs=100] --grid loss=focal,tversky optim.lr=1e-4,3e-4
    python -m rts.experiments search [--space experiments/search.yaml] [--trials 40]
    python -m rts.experiments folds --k 3 --seeds 42 43 44 [@experiments/studies/NAME/best_params.txt]
    python -m rts.experiments seeds @experiments/studies/NAME/best_params.txt

``@FILE`` reads more arguments from FILE (a ``-S key=value`` list, one or more per line: what
``search`` writes as ``best_params.txt``). Exit status: 0 when every experiment finished, 1 when
one failed (each failure is reported with its log), 2 for a bad argument, 128+N after signal N.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from rts.experiments.matrix import PHASES, expand_grid, phase_experiments, slug
from rts.experiments.runner import Experiment, Interrupted, Runner, results_json, summary


class Parser(argparse.ArgumentParser):
    def convert_arg_line_to_args(self, arg_line: str) -> list[str]:
        return shlex.split(arg_line, comments=True)


def gpu_list(text: str) -> list[str]:
    return [] if text.lower() in ("none", "cpu", "") else [d.strip() for d in text.split(",") if d.strip()]


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override for every experiment (repeat); the phase's or grid's own come after")
    p.add_argument("-j", "--jobs", type=int, help="experiments at a time (default: one per visible GPU; 2 without GPUs)")
    p.add_argument("--gpus", type=gpu_list, help="device ids to hand out, e.g. 0,1,2,3, or none (default: CUDA_VISIBLE_DEVICES or nvidia-smi)")
    p.add_argument("--repo", default=".", help="the DVC repository (default: the current one)")
    p.add_argument("--allow-dirty", action="store_true",
                   help="run the committed HEAD although tracked files have uncommitted changes (refused otherwise)")
    p.add_argument("--json", dest="json_out", type=Path, help="write the results (status, ref, log) to this JSON file")


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog="python -m rts.experiments", description=__doc__, fromfile_prefix_chars="@",
                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="a phase of the matrix or a -S grid", fromfile_prefix_chars="@")
    add_common(run)
    what = run.add_mutually_exclusive_group(required=True)
    what.add_argument("--phase", choices=[*PHASES, "all"], help="a phase of the guide's matrix (rts.experiments.matrix)")
    what.add_argument("--grid", nargs="+", metavar="KEY=A,B", help="a grid: one experiment per combination")
    run.add_argument("--prefix", default="grid", help="name prefix of --grid experiments")

    search = sub.add_parser("search", help="Bayesian search (Optuna TPE) over the search-space file")
    add_common(search)
    search.add_argument("--space", type=Path, default=Path("experiments/search.yaml"))
    search.add_argument("--trials", type=int, help="trials in all, including those of earlier runs (default: the file's)")
    search.add_argument("--out", type=Path, help="folder for best_params.txt, best.json and the plots "
                        "(default: experiments/studies/STUDY)")

    folds = sub.add_parser("folds", help="region-fold cross-validation: k folds x seeds")
    add_common(folds)
    folds.add_argument("--k", type=int, default=3, help="number of folds over the train + val regions")
    folds.add_argument("--seeds", type=int, nargs="+", default=[42])
    folds.add_argument("--prefix", default="cv", help="name prefix")
    folds.add_argument("--out", type=Path, default=Path("metrics/cv"), help="folder for cv.json and cv.md")

    seeds = sub.add_parser("seeds", help="the final configuration with three seeds; test metrics mean +/- std")
    add_common(seeds)
    seeds.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    seeds.add_argument("--prefix", default="final")
    seeds.add_argument("--aggregate-only", action="store_true", help="aggregate experiments run before; run nothing")
    return ap


SEEDS_HEADLINE = ["1:200.iou_rts", "1:200.pr_auc", "1:200.obj_iou0.3_precision", "1:200.obj_iou0.3_recall",
                  "1:500.obj_iou0.3_precision", "1:500.obj_iou0.3_recall", "1:1000.obj_iou0.3_precision", "1:200.ap50"]


def seeds(runner: Runner, args: argparse.Namespace) -> int:
    """Run (unless --aggregate-only) and report the final configuration's seeds: test-realistic,
    once per seed, into metrics/seeds.json and seeds.md. Nothing is tuned on these numbers."""
    from rts.experiments.matrix import aggregate_seeds, seeds_table
    from rts.io import write_json_atomic, write_text_atomic

    exps = [Experiment(f"{args.prefix}-seed-{s}", [*args.set, f"seed={s}"]) for s in args.seeds]
    if not args.aggregate_only:
        rc = run_and_report(runner, exps, args.json_out)
        if rc:
            return rc
    refs = runner.exp_refs()
    missing = [e.name for e in exps if e.name not in refs]
    if missing:
        raise ValueError(f"experiment(s) {', '.join(missing)} not found for HEAD; run them first (without --aggregate-only)")
    metrics = {s: (runner.read_json(refs[e.name], "metrics/headline.json") or {}).get("test_realistic", {})
               for s, e in zip(args.seeds, exps)}
    summary_ = aggregate_seeds(metrics)
    write_json_atomic(runner.root / "metrics" / "seeds.json", summary_)
    table = seeds_table(summary_, SEEDS_HEADLINE) + "\nAll metrics: metrics/seeds.json\n"
    write_text_atomic(runner.root / "seeds.md", table)
    print(table)
    return 0


def run_and_report(runner: Runner, experiments: list[Experiment], json_out: Path | None) -> int:
    try:
        results = runner.run(experiments)
    except Interrupted as e:
        print(summary(e.results), flush=True)
        return 128 + e.signum
    print(summary(results), flush=True)
    if json_out:
        from rts.io import write_json_atomic

        write_json_atomic(json_out, results_json(results))
    return 0 if all(r.ok for r in results) else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        runner = Runner(args.repo, jobs=args.jobs, gpus=args.gpus, allow_dirty=args.allow_dirty)
        if args.command == "run":
            if args.phase:
                exps = [Experiment(n, o) for n, o in phase_experiments(args.phase, args.set)]
            else:
                exps = [Experiment(f"{args.prefix}-{slug(c, [*args.set, *c])}", [*args.set, *c]) for c in expand_grid(args.grid)]
            return run_and_report(runner, exps, args.json_out)
        if args.command == "seeds":
            return seeds(runner, args)
        if args.command == "folds":
            from rts.experiments import folds

            return folds.main(runner, k=args.k, seeds=args.seeds, base=args.set, prefix=args.prefix, out=args.out,
                              json_out=args.json_out)
        if args.command == "search":
            from rts.experiments import search

            return search.main(runner, space=args.space, trials=args.trials, base=args.set, out=args.out)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
