"""Run the experiment matrix of the training guide through the GPU-aware runner, phase by phase.

    python scripts/queue_experiments.py --phase losses [--set model.arch=deeplabv3plus] [-j 8] [--gpus 0,1,2,3] [--dry-run]
    dvc exp show --md        # then: dvc metrics diff A B; dvc plots diff $(dvc exp ls --name-only)

Each experiment of a phase is one DVC experiment (``dvc exp run -n NAME -S ...`` in a clone of its
own), one GPU each, as many at a time as there are GPUs (2 without GPUs); see
``rts.experiments.runner``. A phase finishes before the next one starts; pass the winner of a phase
with --set to the next one. A rerun skips what finished and resumes what was interrupted.
"""

import argparse
import sys

from rts.experiments import ORDER, PHASES, phase_experiments
from rts.experiments.__main__ import Parser, gpu_list
from rts.experiments.runner import Experiment, Interrupted, Runner, summary


def main() -> int:
    ap = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, fromfile_prefix_chars="@")
    ap.add_argument("--phase", default="all", choices=[*PHASES, "all"])
    ap.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE", help="base override for every run")
    ap.add_argument("-j", "--jobs", type=int, help="experiments at a time (default: one per visible GPU; 2 without GPUs)")
    ap.add_argument("--gpus", type=gpu_list, help="device ids to hand out, e.g. 0,1,2,3, or none")
    ap.add_argument("--dry-run", action="store_true", help="list the experiments only")
    ap.add_argument("--allow-dirty", action="store_true", help="run the committed HEAD although tracked files have uncommitted changes")
    args = ap.parse_args()
    phases = ORDER if args.phase == "all" else (args.phase,)
    if args.dry_run:
        for phase in phases:
            for name, overrides in phase_experiments(phase, args.set):
                print(name, " ".join(f"-S {o}" for o in overrides))
        return 0
    runner = Runner(".", jobs=args.jobs, gpus=args.gpus, allow_dirty=args.allow_dirty)
    ok = True
    for phase in phases:
        print(f"== phase {phase}", flush=True)
        try:
            results = runner.run([Experiment(n, o) for n, o in phase_experiments(phase, args.set)])
        except Interrupted as e:
            print(summary(e.results), flush=True)
            return 128 + e.signum
        except ValueError as e:  # the list or the workspace is refused before anything runs
            print(f"error: {e}", file=sys.stderr, flush=True)
            return 2
        print(summary(results), flush=True)
        ok = ok and all(r.ok for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
