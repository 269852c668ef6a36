"""DVC stage `train`: ``python -m rts.training.launch --standalone --nproc-per-node=${train.nproc} -m stages.train``.

``python -m stages.train --check`` runs first (``dvc.yaml``): it validates ``params.yaml`` and the
prepared inputs in one process, so a bad param prints one line instead of one traceback per rank.
``rts.training.launch`` is torchrun that prints one line when a rank fails later (bad data found
while loading), in place of torchrun's failure report. ``--record-dir`` and ``--kill-at-step``
are test hooks (:class:`rts.training.loop.TrainHooks`); the pipeline never passes them.
"""

import argparse
import os
import sys
from pathlib import Path

from rts.config import load_params
from rts.errors import DataError, exit_on_error
from rts.logs import configure
from rts.training.launch import rank_exit_on_error

PREPARED = Path("prepared")
PREPARED_FILES = ("normalization_stats.json", "summary.json", "splits/train.json", "splits/val_balanced.json", "splits/val_realistic.json")


def check() -> int:
    """Runs before torchrun starts; imports neither torch nor the model libraries (~6-12 s per process
    on 2 cores), so a bad param or a missing input costs a second."""
    load_params("params.yaml")
    missing = [str(PREPARED / f) for f in PREPARED_FILES if not (PREPARED / f).is_file()]
    if missing:
        raise DataError(f"{missing[0]}: missing ({len(missing)} prepared file(s) in all); run `dvc repro prepare` first")
    return 0


def main(record_dir: Path | None, kill_at_step: int | None) -> int:
    from rts.training.loop import TrainHooks, train

    hooks = TrainHooks(record_dir=record_dir, kill_at_step=kill_at_step)
    rank = int(os.environ.get("RANK", "0"))
    configure(rank=rank)
    params = load_params("params.yaml")
    train(params, prepared=PREPARED, models_dir=Path("models/train"), ckpt_dir=Path("checkpoints"),
          metrics_path=Path("metrics/train.json"), hooks=hooks)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="stages.train")
    parser.add_argument("--check", action="store_true", help="validate params and prepared inputs, then exit")
    parser.add_argument("--record-dir", type=Path, help="test hook: per-rank record of the run")
    parser.add_argument("--kill-at-step", type=int, help="test hook: SIGTERM this process after that global step")
    args = parser.parse_args()
    if args.check:
        sys.exit(exit_on_error(check))
    sys.exit(rank_exit_on_error(lambda: main(args.record_dir, args.kill_at_step)))
