"""Queue the experiment matrix as DVC experiments.

    python scripts/queue_experiments.py --phase losses [--set model.arch=deeplabv3plus] [--dry-run]
    dvc queue start -j 1 && dvc exp show --md

Phases run in order; pass the winner of a phase with --set to the next one.
"""

import argparse
import subprocess
import sys

from rts.experiments import PHASES, queue_commands


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phase", default="all", choices=[*PHASES, "all"])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="base override for every run")
    ap.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = ap.parse_args()
    for cmd in queue_commands(args.phase, args.set):
        print(" ".join(cmd), flush=True)
        if not args.dry_run:
            subprocess.run(cmd, check=True)
    if not args.dry_run:
        print("queued; start with: dvc queue start -j 1   (then: dvc exp show --md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
