"""Run the final configuration with seeds 42, 43, 44 as DVC experiments through the GPU-aware
runner (one GPU each, all at once on a GPU node) and aggregate the test metrics into
metrics/seeds.json and seeds.md (mean +/- std per metric); ``make seeds`` runs it.

    python scripts/seeds.py [-S key=value ...] [--seeds 42 43 44] [-j 3] [--aggregate-only]
    python scripts/seeds.py @experiments/studies/STUDY/best_params.txt   # the search's best trial as it is

The same as ``python -m rts.experiments seeds ...``.
"""

import sys

from rts.experiments.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["seeds", *sys.argv[1:]]))
