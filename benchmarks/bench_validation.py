"""Issue 18, P7: validation's metric CPU time per epoch against the epoch's GPU training time.

    OMP_NUM_THREADS=1 python benchmarks/bench_validation.py --tiles 300

Measured: the CPU seconds per 512 px tile of the accumulators that ``run_validation`` builds in
training (``rts.training.loop``: pixel counts on val-balanced and val-realistic, objects at the
operating threshold and the primary IoU on val-realistic; settings from ``params.yaml``), fed
synthetic model outputs (``bench_metrics.synthetic_tile``) with val-realistic's share of positive
tiles. The forward pass is not included: it runs on the GPU.

Computed from that rate and stated inputs (not measured on a GPU): the real val-realistic size
(~250 positive + 2,500 negative tiles) split over ``--world`` ranks, against one epoch of GPU
training at ``--gpu-rate`` images/s per GPU, where an epoch holds ``--train-positives x (1 +
train_ratio)`` tiles (``steps_per_epoch: 0``, the sampler's default). Prints both and the ratio;
the target is <= 10%.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_metrics import synthetic_tile  # noqa: E402

from rts.config import load_params  # noqa: E402
from rts.training.loop import validation_accumulator  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiles", type=int, default=300, help="tiles measured (default %(default)s)")
    parser.add_argument("--params", type=Path, default=HERE.parent / "params.yaml")
    parser.add_argument("--val-pos", type=int, default=250, help="val-realistic positive tiles (default %(default)s)")
    parser.add_argument("--val-neg", type=int, default=2500, help="val-realistic negative tiles (default %(default)s)")
    parser.add_argument("--train-positives", type=int, default=2000, help="positive training tiles (default %(default)s)")
    parser.add_argument("--world", type=int, default=8, help="GPUs (default %(default)s)")
    parser.add_argument("--gpu-rate", type=float, default=300.0, help="training images/s per GPU (default %(default)s)")
    args = parser.parse_args()
    params = load_params(args.params)
    ev = params.evaluate
    size = params.data.tile_size

    realistic, balanced = validation_accumulator(ev, objects=True), validation_accumulator(ev, objects=False)
    warm = synthetic_tile(10**6, size=size, positive=True)  # numba's first call loads or compiles its kernels: not timed
    validation_accumulator(ev, objects=True).update(*warm, positive_tile=True)
    balanced_every = max(1, round(args.val_neg / max(args.val_pos, 1) / max(params.prepare.val_balanced_ratio, 1)))
    pos_every = max(1, round((args.val_pos + args.val_neg) / args.val_pos))
    cpu = 0.0
    for i in range(args.tiles):
        positive = i % pos_every == 0
        prob, label = synthetic_tile(i, size=size, positive=positive)
        c = time.process_time()
        realistic.update(prob, label, positive_tile=positive, region=f"r{i % 3}")
        if positive or i % balanced_every == 0:  # val-balanced: every positive and a share of the negatives
            balanced.update(prob, label, positive_tile=positive, region=f"r{i % 3}")
        cpu += time.process_time() - c
    per_tile = cpu / args.tiles
    val_tiles = args.val_pos + args.val_neg
    val_s = per_tile * val_tiles / args.world
    epoch_tiles = int(args.train_positives * (1 + params.sampler.train_ratio))
    epoch_s = epoch_tiles / (args.gpu_rate * args.world)
    print(f"measured: {per_tile * 1e3:.2f} CPU ms per {size} px tile for validation's accumulators "
          f"({args.tiles} tiles, 1 positive in {pos_every})")
    print(f"computed: validation {val_tiles} tiles / {args.world} ranks -> {val_s:.2f} CPU s per rank per validation")
    print(f"computed: epoch {epoch_tiles} tiles at {args.gpu_rate:g} img/s x {args.world} GPUs -> {epoch_s:.2f} s of GPU training")
    ratio = val_s / epoch_s * (1 / max(params.train.val_every, 1))
    print(f"validation CPU / GPU epoch: {100 * ratio:.1f}% (val_every {params.train.val_every}; target <= 10%: "
          f"{'reached' if ratio <= 0.10 else 'not reached'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
