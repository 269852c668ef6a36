"""Run the final configuration with seeds 42, 43, 44 as DVC experiments and aggregate the test
metrics into metrics/seeds.json and seeds.md (mean +/- std per metric).

    python scripts/seeds.py [--set key=value ...] [--seeds 42 43 44] [--aggregate-only]
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

from rts.experiments import aggregate_seeds, seeds_table
from rts.io import write_json_atomic, write_text_atomic

HEADLINE = ["1:200.iou_rts", "1:200.pr_auc", "1:200.obj_iou0.3_precision", "1:200.obj_iou0.3_recall",
            "1:500.obj_iou0.3_precision", "1:500.obj_iou0.3_recall", "1:1000.obj_iou0.3_precision", "1:200.ap50"]


def exp_name(seed: int) -> str:
    return f"final-seed-{seed}"


def test_metrics_of(name: str) -> dict:
    rows = json.loads(subprocess.run(["dvc", "exp", "show", "--json", "--no-fetch"], check=True, capture_output=True, text=True).stdout)
    for row in rows:
        for exp in row.get("experiments") or []:
            for rev in exp.get("revs") or []:
                if rev.get("name") == name:
                    return rev["data"]["metrics"]["metrics/headline.json"]["data"]["test_realistic"]
    raise SystemExit(f"experiment {name} not found in `dvc exp show`; run it first")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--aggregate-only", action="store_true")
    args = ap.parse_args()
    if not args.aggregate_only:
        for seed in args.seeds:
            cmd = ["dvc", "exp", "run", "--name", exp_name(seed), "-S", f"seed={seed}"]
            for s in args.set:
                cmd += ["-S", s]
            print(" ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
    summary = aggregate_seeds({s: test_metrics_of(exp_name(s)) for s in args.seeds})
    write_json_atomic(Path("metrics/seeds.json"), summary)
    table = seeds_table(summary, HEADLINE) + "\nAll metrics: metrics/seeds.json\n"
    write_text_atomic(Path("seeds.md"), table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
