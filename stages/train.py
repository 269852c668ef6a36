"""DVC stage `train`: ``torchrun --standalone --nproc-per-node=${train.nproc} -m stages.train``."""

import logging
import os
import sys
from pathlib import Path

from rts.config import load_params
from rts.training.loop import train


def main() -> int:
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s",
    )
    params = load_params("params.yaml")
    train(params, prepared=Path("prepared"), models_dir=Path("models/train"), ckpt_dir=Path("checkpoints"),
          metrics_path=Path("metrics/train.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
