"""Training pipeline overhead: a full step from files (loader workers, augmentation,
balanced sampler, loss with ignore mask, EMA, clipping, LR schedule) against the pure
forward/backward/step of the same model on a ready tensor batch.

    OMP_NUM_THREADS=2 python benchmarks/bench_train.py --data data --steps 30 --rounds 5 [--params params.yaml -S key=value ...]

Full and pure steps alternate in ``--rounds`` blocks; the overhead is the median of the rounds'
ratios (each round's is printed too).

Defaults to the demo configuration of scripts/demo.py (CPU). On a GPU it uses CUDA, AMP and
channels_last as configured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))


def main() -> int:
    from demo import DEMO_OVERRIDES

    from rts.config import load_params
    from rts.data.augment import Augmenter
    from rts.data.dataset import TileDataset
    from rts.data.normalization import Normalizer, compute_stats
    from rts.data.sampler import BalancedBatchSampler
    from rts.data.splits import resolve_splits
    from rts.data.store import TileStore
    from rts.training.losses import build_loss
    from rts.models import build_model, model_outputs_loss
    from rts.models.ema import ModelEMA
    from rts.precision import amp_settings
    from rts.training.loop import make_loader
    from rts.training.schedule import group_lrs

    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("data"))
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--steps", type=int, default=30, help="full steps (and as many pure steps) in all")
    ap.add_argument("--rounds", type=int, default=5, help="alternations of full and pure steps")
    ap.add_argument("-S", action="append", default=[], help="extra override key=value")
    args = ap.parse_args()
    overrides = {k: yaml.safe_load(str(v)) for k, v in DEMO_OVERRIDES.items()}
    overrides.update({s.split("=", 1)[0]: yaml.safe_load(s.split("=", 1)[1]) for s in args.S})
    p = load_params(args.params, overrides=overrides)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = amp_settings(device, p.train.mixed_precision)
    m = resolve_splits(args.data, val_balanced_ratio=1, realistic_ratios=[200], seed=0)["train"]
    store = TileStore(args.data, Path(tempfile.mkdtemp()) / "cache")
    ids = [t.tile_id for t in m.tiles]
    stats = compute_stats(ids[:50], tile_loader=lambda t: (store.load(t).rgb, store.load(t).extra), clip_percentiles=(1, 99),
                          sample_px_per_tile=500, dataset_version="bench")
    ds = TileDataset(store, m.tiles, Normalizer(stats, p.data.extra_channels), augmenter=Augmenter(p.augment),
                     boundary_ignore_width=p.data.boundary_ignore_width)
    for t in ids:
        store.load(t)  # the cache `prepare` fills
    sampler = BalancedBatchSampler(ds.positive_indices, ds.negative_indices, batch_size=p.train.batch_size,
                                   pos_fraction=p.sampler.pos_fraction_per_batch, ratio=p.sampler.train_ratio,
                                   steps_per_epoch=args.steps + 3 + args.rounds, seed=0)
    loader = make_loader(ds, batch_sampler=sampler, train_cfg=p.train, device=device)
    model = build_model(p.model, in_channels=p.data.in_channels, n_extra=len(p.data.extra_channels)).to(device)
    loss_fn = build_loss(p.loss, focal=p.focal, tversky=p.tversky, balanced_ce=p.balanced_ce, class_pixel_counts=(100, 1))
    opt = torch.optim.AdamW([{"params": list(model.parameters()), "name": "decoder"}], lr=p.optim.lr)
    ema = ModelEMA(model, p.train.ema_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=amp[2])

    def step(batch, i):
        for g in opt.param_groups:
            g["lr"] = group_lrs(i / 100, optim=p.optim, max_epochs=p.train.max_epochs)["decoder"]
        x = batch["image"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp[1], enabled=amp[0]):
            out = model(x)
        loss = model_outputs_loss(loss_fn, out, batch["target"].to(device), batch["valid"].to(device), 0.0)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), p.optim.grad_clip_norm)
        scaler.step(opt)
        scaler.update()
        ema.update(model)
        float(loss.detach())

    batch = next(iter(make_loader(ds, batch_sampler=sampler, train_cfg=p.train, device=device)))
    x, y, v = batch["image"].to(device), batch["target"].to(device), batch["valid"].to(device)

    def pure():
        with torch.autocast(device.type, dtype=amp[1], enabled=amp[0]):
            out = model(x)
        loss = loss_fn(out.float(), y, v)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        float(loss.detach())

    def timed(fn, n: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(n):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t) / n

    # Interleaved: full and pure steps alternate in rounds, so a machine whose speed drifts (a
    # shared VM) slows both alike; the overhead is the median of the rounds' ratios.
    it = iter(loader)
    counter = iter(range(10**9))
    load_s = []

    def full_step():
        t = time.perf_counter()
        batch = next(it)
        load_s.append(time.perf_counter() - t)
        step(batch, next(counter))

    timed(full_step, 3)
    timed(pure, 3)
    per_round = max(1, args.steps // args.rounds)
    rounds = []
    for _ in range(args.rounds):
        rounds.append((timed(full_step, per_round), timed(pure, per_round)))
    full = statistics.median(f for f, _ in rounds)
    bare = statistics.median(b for _, b in rounds)
    ratios = [f / b for f, b in rounds]
    load = statistics.median(load_s[3:])
    print(json.dumps({"device": str(device), "batch_size": p.train.batch_size, "tile_size": p.data.tile_size,
                      "arch": p.model.arch, "encoder": p.model.encoder, "num_workers": p.train.num_workers,
                      "full_step_s": round(full, 4), "pure_step_s": round(bare, 4),
                      "batch_wait_s": round(load, 4), "rounds": args.rounds, "steps_per_round": per_round,
                      "overhead_pct_per_round": [round(100 * (r - 1), 1) for r in ratios],
                      "overhead_pct": round(100 * (statistics.median(ratios) - 1), 1)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
