"""Run the final configuration with seeds 42, 43, 44 as DVC experiments through the GPU-aware
runner (one GPU each, all at once on a GPU node) and aggregate the test metrics into
metrics/seeds.json and seeds.md (mean +/- std per metric).

    python scripts/seeds.py [--set key=value ...] [--seeds 42 43 44] [-j 3] [--aggregate-only]
    python scripts/seeds.py @experiments/studies/STUDY/best_params.txt   # the search's best trial as it is
"""

import argparse
import sys
from pathlib import Path

from rts.experiments import aggregate_seeds, seeds_table
from rts.experiments.__main__ import Parser, gpu_list
from rts.experiments.runner import Experiment, Interrupted, Runner, summary
from rts.io import write_json_atomic, write_text_atomic

HEADLINE = ["1:200.iou_rts", "1:200.pr_auc", "1:200.obj_iou0.3_precision", "1:200.obj_iou0.3_recall",
            "1:500.obj_iou0.3_precision", "1:500.obj_iou0.3_recall", "1:1000.obj_iou0.3_precision", "1:200.ap50"]


def exp_name(seed: int) -> str:
    return f"final-seed-{seed}"


def main() -> int:
    ap = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, fromfile_prefix_chars="@")
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    ap.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("-j", "--jobs", type=int, help="experiments at a time (default: one per visible GPU; 2 without GPUs)")
    ap.add_argument("--gpus", type=gpu_list, help="device ids to hand out, e.g. 0,1,2, or none")
    ap.add_argument("--aggregate-only", action="store_true")
    args = ap.parse_args()
    runner = Runner(".", jobs=args.jobs, gpus=args.gpus)
    exps = [Experiment(exp_name(s), [*args.set, f"seed={s}"]) for s in args.seeds]
    if not args.aggregate_only:
        try:
            results = runner.run(exps)
        except Interrupted as e:
            print(summary(e.results), flush=True)
            return 128 + e.signum
        print(summary(results), flush=True)
        if not all(r.ok for r in results):
            return 1
    refs = runner.exp_refs()
    missing = [e.name for e in exps if e.name not in refs]
    if missing:
        raise SystemExit(f"experiment(s) {', '.join(missing)} not found for HEAD; run them first (without --aggregate-only)")
    # the final configuration's report: test-realistic, once per seed (nothing is tuned on it)
    metrics = {s: (runner.read_json(refs[exp_name(s)], "metrics/headline.json") or {}).get("test_realistic", {}) for s in args.seeds}
    summary_ = aggregate_seeds(metrics)
    write_json_atomic(Path("metrics/seeds.json"), summary_)
    table = seeds_table(summary_, HEADLINE) + "\nAll metrics: metrics/seeds.json\n"
    write_text_atomic(Path("seeds.md"), table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
